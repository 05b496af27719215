//! What the pusher last saw, shared with the local API (`/v1/status`, `/metrics`) and kept
//! in the store so `status` can show it while the agent is stopped.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why pushing stopped and needs a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// Machine-readable cause (a hub refusal code, or `bad_receipt`, `fork`, `malformed` …).
    pub code: String,
    /// What happened and what to do.
    pub reason: String,
    /// When it was first raised.
    pub since: DateTime<Utc>,
}

/// What the pusher last saw; shown by `status`, `/v1/status` and `/metrics`, and persisted
/// so `status` can show it while the agent is stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushState {
    /// Last time a request to the hub was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Last time the whole buffer was delivered (every entry receipted) without fault.
    pub last_success_at: Option<DateTime<Utc>>,
    /// `ok`, `retrying` or `alarm`.
    pub last_result: Option<String>,
    /// The last fault, as a sentence.
    pub last_error: Option<String>,
    /// Whether the hub answered the last request at all.
    pub hub_reachable: Option<bool>,
    /// Highest seq the hub said it holds.
    pub hub_held_through: Option<u64>,
    /// Set while a permanent refusal stops pushing.
    pub alarm: Option<Alarm>,
    /// Ingest requests sent.
    pub pushes: u64,
    /// Transient failures that were retried.
    pub retries: u64,
    /// Valid receipts stored.
    pub receipts: u64,
    /// Size of the last hub checkpoint the log audit verified (`push::audit`); `None`
    /// before the first one.
    #[serde(default)]
    pub verified_checkpoint_size: Option<u64>,
    /// What the log audit detected (a fork, a rollback, a bad signature, a receipted entry
    /// missing), once detected; the hub's answers never clear it.
    #[serde(default)]
    pub log_alarm: Option<String>,
}

/// Shared view of the push state.
pub type SharedPushState = Arc<Mutex<PushState>>;

/// Locks the shared state, surviving a poisoned lock (the state is plain data).
pub fn lock(s: &SharedPushState) -> std::sync::MutexGuard<'_, PushState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}
