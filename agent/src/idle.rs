//! Giving memory back at rest: once the store's head, delivered seq and pruned seq have
//! not moved for [`QUIET`] after moving — or have not moved while the process's resident
//! memory grew [`GROWTH`] past what it was after the last settling (bursts of reads: the
//! log audit, `verify`) — [`Store::settle_memory`] runs once (on a blocking thread), and
//! not again within [`MIN_GAP`] of the last time. Why it is needed: the store's module
//! doc, "Memory at rest".

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::store::Store;

/// How long the store must be still before memory is given back.
pub const QUIET: Duration = Duration::from_secs(5);

/// Least time between two settlings, so a trickle of batches a few seconds apart does not
/// pay for one after each (one after a 1 M-entry intake cost 0.07 s of CPU).
pub const MIN_GAP: Duration = Duration::from_secs(60);

/// Growth of resident memory, with no seq moving, that calls for a settling.
pub const GROWTH: u64 = 16 << 20;

/// This process's resident memory in bytes (`VmRSS`), where the system says (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

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
    settle_when_quiet_with(store, stop, QUIET, MIN_GAP, resident_bytes, settle).await;
}

/// [`settle_when_quiet`] with its timing and the settling as seams for tests.
pub(crate) async fn settle_when_quiet_with<F>(
    store: Store,
    mut stop: watch::Receiver<bool>,
    quiet: Duration,
    min_gap: Duration,
    resident: impl Fn() -> Option<u64>,
    settle: F,
) where
    F: Fn(&Store) + Clone + Send + 'static,
{
    let mut seen = position(&store);
    // Nothing to give back right after opening: the store has done nothing yet.
    let mut settled = true;
    // Resident memory after the last settling (or at the start).
    let mut baseline = resident();
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
        let grown = resident()
            .zip(baseline)
            .is_some_and(|(now, base)| now > base.saturating_add(GROWTH));
        if (settled && !grown) || last.is_some_and(|t| t.elapsed() < min_gap) {
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
        baseline = resident();
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
            || Some(10 << 20),
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

    /// With no seq moving, a growth of resident memory past [`GROWTH`] over what it was
    /// after the last settling (or at the start) calls for one settling; memory that stays
    /// where it is does not call for another.
    #[tokio::test(start_paused = true)]
    async fn memory_grown_by_reads_alone_is_given_back_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let count = Arc::new(AtomicUsize::new(0));
        let rss = Arc::new(std::sync::atomic::AtomicU64::new(20 << 20));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (c, r) = (count.clone(), rss.clone());
        let task = tokio::spawn(settle_when_quiet_with(
            store,
            stop_rx,
            Duration::from_secs(5),
            Duration::from_secs(60),
            move || Some(r.load(Ordering::SeqCst)),
            move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            },
        ));
        let settles = || count.load(Ordering::SeqCst);
        // The task reads its baseline first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Grown, but not past the threshold: nothing.
        rss.store((20 << 20) + GROWTH, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(settles(), 0);
        // Past it: one settling; the memory then stays high (what settling could not give
        // back becomes the new baseline): no more.
        rss.store((21 << 20) + GROWTH, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(settles(), 1);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(settles(), 1);
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
