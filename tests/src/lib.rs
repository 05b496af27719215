//! Cross-crate and multi-process tests; shared helpers live here, one module per subject.

pub mod agent_fakehub;
pub mod agent_harness;
pub mod browser;
pub mod hub_harness;
pub mod simulate;
