//! Retention: delivered entries (receipted) older than `retention.delivered_days` leave the
//! store; the chain head and the last pruned hash stay, so the chain still continues.

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::store::Store;

/// Entries removed per store call, so a large backlog does not hold the store long.
const STEP: usize = 10_000;

/// The instant before which delivered entries go, `days` before `now`.
pub fn cutoff(days: f64, now: DateTime<Utc>) -> DateTime<Utc> {
    let keep = chrono::Duration::milliseconds((days.max(0.0) * 86_400_000.0).min(1e15) as i64);
    now - keep
}

/// Prunes delivered entries recorded before `cutoff`; failures are logged and left for the
/// next time.
pub fn prune(store: &Store, cutoff: DateTime<Utc>) {
    loop {
        match store.prune(cutoff, STEP) {
            Ok(0) => break,
            Ok(n) => info!(pruned = n, "Pruned delivered entries past retention."),
            Err(e) => {
                warn!(error = %e, "Pruning failed; will try again later.");
                break;
            }
        }
    }
}
