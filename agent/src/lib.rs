//! spacesync-agent: runs beside a provincial platform, takes its records, signs them into
//! the source's hash chain, keeps them durably, and pushes them to the hub until the hub
//! has receipted every one.
//!
//! # Layout
//! - [`config`]: the data directory's layout, its permissions and the commented `agent.toml`.
//! - [`token`]: the intake token (`<data>/intake.token`) every API request must carry.
//! - [`store`]: the sled store — entries, receipts, chain head, quota records, notices —
//!   and the one transaction that appends a batch.
//! - [`intake`]: validation, quota checks, signing (on every core), the single writer and
//!   its committer (group commit: batches queued together share one transaction and one
//!   flush).
//! - [`http`]: the local HTTP API (`POST /v1/records`, `/v1/status`, `/healthz`, `/metrics` …).
//! - [`spool`]: the watched spool folder.
//! - [`tls`]: TLS to the hub — system roots plus `ca_file`, the optional client
//!   certificate, and naming a certificate the agent cannot verify.
//! - [`retry`]: the shared retry policy with the agent's randomness and waiting; the only
//!   user of `backoff`.
//! - [`enrol`]: `init --enrol CODE` — registers the new key with the hub the code names.
//! - [`evidence`]: `evidence --seq N --out FILE` — the dispute evidence file of one entry.
//! - [`rotate`]: `rotate-key` — a new key by a key-transition entry in the chain (offline), swapped in crash-safely.
//! - [`hub_key`]: which key the hub's receipts must verify with (pinned, or first use).
//! - [`push`]: the pusher — transport, the one classification of hub answers, the delivery
//!   state machine (batches, receipts, head probing, alarms), notices, retention.
//! - [`notices`]: forwards stored notices to the optional local webhook.
//! - [`status`]: the status report, its human form and the Prometheus metrics.
//! - [`verify`]: the offline fsck of the local store.
//! - [`idle`]: gives memory back once the store has been quiet a while.
//! - [`server`]: wires the tasks together behind `run(listener, shutdown)`.
//! - [`backup`]: `backup` / `restore` of the data directory, while running (asked on
//!   `control.sock`) or stopped.
//! - [`bundle`]: the offline bundle — `export-bundle` and `import-receipts`.
//! - [`cli`]: the subcommands; `src/bin/spacesync-agent.rs` only parses and calls it.
//!
//! # Delivery guarantee
//!
//! | event | guarantee |
//! |---|---|
//! | intake answered 2xx | the entries are signed, chained and flushed to disk |
//! | intake answered 4xx/5xx | nothing of the batch was stored |
//! | kill -9 at any instant | every answered entry survives; no seq reused or skipped; chain intact |
//! | hub down, flaky, slow | entries wait in the buffer and are retried forever, in seq order |
//! | hub refuses permanently | pushing stops with an alarm; nothing is dropped; it resumes when fixed |
//! | hub receipted | the entry counts as delivered only with a receipt that verifies with the hub key |
//!
//! Architecture invariant: nothing here reads the wall clock except through
//! [`spacesync_shared::clock::Clock`]; tokio's timers are used only for waiting.

pub mod backup;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod enrol;
pub mod evidence;
pub mod http;
pub mod hub_key;
pub mod idle;
pub mod intake;
pub mod notices;
pub mod push;
pub mod retry;
pub mod rotate;
pub mod server;
pub mod spool;
pub mod status;
pub mod store;
pub mod tls;
pub mod token;
pub mod verify;
