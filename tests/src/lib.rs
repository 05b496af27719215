//! Cross-crate and multi-process tests; shared helpers live here, one module per subject.

pub mod agent_fakehub;
pub mod agent_harness;
pub mod browser;
pub mod checker;
pub mod cluster;
pub mod fault_proxy;
pub mod hub_harness;
pub mod pki;
pub mod procs;
pub mod simulate;
