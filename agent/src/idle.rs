//! Giving memory back at rest: once the store's head, delivered seq and pruned seq have
//! not moved for [`QUIET`] after moving, [`Store::settle_memory`] runs once (on a blocking
//! thread), and not again within [`MIN_GAP`] of the last time. Why it is needed: the store's
//! module doc, "Memory at rest".

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::store::Store;

/// How long the store must be still before memory is given back.
pub const QUIET: Duration = Duration::from_secs(5);

/// Least time between two settlings, so a trickle of batches a few seconds apart does not
/// pay for one after each (one after a 1 M-entry intake cost 0.07 s of CPU).
pub const MIN_GAP: Duration = Duration::from_secs(60);

/// What moves when the store changes: head, delivered seq, pruned seq.
fn position(store: &Store) -> Option<(u64, u64, u64)> {
    Some((
        store.head().ok()?.0,
        store.acked().ok()?,
        store.pruned().ok()?.0,
    ))
}

/// Runs until `stop` turns true (or its sender goes), settling memory as the module doc
/// says.
pub async fn settle_when_quiet(store: Store, stop: watch::Receiver<bool>) {
    let settle = move |s: &Store| {
        if let Err(e) = s.settle_memory() {
            warn!(error = %e, "Giving memory back failed; the agent goes on.");
        }
    };
    settle_when_quiet_with(store, stop, QUIET, MIN_GAP, settle).await;
}

/// [`settle_when_quiet`] with its timing and the settling as seams for tests.
pub(crate) async fn settle_when_quiet_with<F>(
    store: Store,
    mut stop: watch::Receiver<bool>,
    quiet: Duration,
    min_gap: Duration,
    settle: F,
) where
    F: Fn(&Store) + Clone + Send + 'static,
{
    let mut seen = position(&store);
    // Nothing to give back right after opening: the store has done nothing yet.
    let mut settled = true;
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = tokio::time::sleep(quiet) => {}
        }
        let now = position(&store);
        if now != seen {
            seen = now;
            settled = false;
            continue;
        }
        if settled || last.is_some_and(|t| t.elapsed() < min_gap) {
            continue;
        }
        let (s, f) = (store.clone(), settle.clone());
        let started = tokio::time::Instant::now();
        if let Err(e) = tokio::task::spawn_blocking(move || f(&s)).await {
            warn!(error = %e, "Giving memory back failed; the agent goes on.");
        }
        debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "Gave memory back at rest."
        );
        settled = true;
        last = Some(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use spacesync_shared::dsse::Digest;

    use super::*;
    use crate::store::Append;

    fn append(s: &Store, n: u64) {
        let (head, _) = s.head().unwrap_or_else(|e| panic!("{e}"));
        s.append(&Append {
            first: head + 1,
            envelopes: (0..n).map(|_| b"{}".to_vec()).collect(),
            head_hash: Digest([1; 32]),
            ..Append::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Settles once per quiet period after a change, never while changes go on, not within
    /// the least gap, and not at all for a store that never changed.
    #[tokio::test(start_paused = true)]
    async fn memory_is_given_back_once_after_the_store_goes_quiet() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let count = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let c = count.clone();
        let task = tokio::spawn(settle_when_quiet_with(
            store.clone(),
            stop_rx,
            Duration::from_secs(5),
            Duration::from_secs(60),
            move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            },
        ));
        let settles = || count.load(Ordering::SeqCst);
        // Untouched: nothing to give back.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(settles(), 0);
        // Appends every 3 s: never quiet for a whole period.
        for _ in 0..5 {
            append(&store, 2);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        assert_eq!(settles(), 0);
        // Quiet: one settling, and only one.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(settles(), 1);
        // Another burst soon after: it waits for the least gap, then settles once more.
        append(&store, 1);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(settles(), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(settles(), 2);
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
