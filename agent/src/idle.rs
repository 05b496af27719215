//! Giving memory back at rest: once the store's head, delivered seq and pruned seq have
//! not moved for [`QUIET`] after moving, [`Store::settle_memory`] runs once (on a
//! blocking thread), reopening the store; once they have not moved while the process's
//! resident memory grew [`GROWTH`] past what it was after the last settling (bursts of
//! reads: the log audit, `verify`; sled's segment cleaner after an open) or since the
//! start, it runs without reopening. Not again within [`MIN_GAP`] of the last time. Why
//! it is needed: the store's module doc, "Memory at rest". [`tune_allocator`] is the
//! other half: fewer glibc arenas to leave holes in, and large blocks always mapped apart.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::store::Store;

/// How long the store must be still before memory is given back.
pub const QUIET: Duration = Duration::from_secs(5);

/// How often the store's seqs are looked at (three reads of `meta`).
const POLL: Duration = Duration::from_secs(1);

/// Least time between two settlings, so a trickle of batches a few seconds apart does not
/// pay for one after each (one after a 1 M-entry intake cost 0.07 s of CPU).
pub const MIN_GAP: Duration = Duration::from_secs(60);

/// Growth of resident memory, with no seq moving, that calls for a settling (one
/// without a reopen: reads alone leave nothing a reopen would find, and sled's segment
/// cleaner grows the memory of a freshly opened store by ~10 MiB, which a reopen would
/// only start again).
pub const GROWTH: u64 = 4 << 20;

/// glibc malloc arenas the agent allows itself ([`tune_allocator`]).
pub const ARENAS: i32 = 2;

/// Blocks from this size up are mapped on their own and unmapped when freed
/// ([`tune_allocator`]).
pub const MMAP_THRESHOLD: i32 = 256 << 10;

/// Sets glibc's malloc up for an agent that rests between bursts, before any thread
/// starts; a setting the operator gave in the environment (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`) is left alone. (BENCHMARKS.md, session 13.)
///
/// - [`ARENAS`] arenas: glibc gives threads their own (up to 8 per core), each keeping
///   its own free memory and holes; a restarted agent with 1 M entries buffered held
///   2.3 MiB less with one than with glibc's default. Two, not one: with one, the intake's
///   writer and the request handlers contend for its lock — batched intake fell from
///   54,500–58,800 to 44,600–46,900 entries/s (`agent`, alternated), while idle memory
///   was the same with two (31.6 against 31.5 MiB after a 1 M intake).
/// - a fixed [`MMAP_THRESHOLD`]: glibc otherwise raises the threshold to the size of each
///   mapped block freed (the intake's bodies, sled's page table at a reopen: 4 and 2 MiB),
///   after which such blocks come from the heap — a page table allocated zeroed there is
///   written whole, where a fresh mapping is touched only where used. After a reopen at
///   rest: 2–3 MiB less.
///
/// What it cannot set, [`run_with_tcache_off`] does: glibc's per-thread caches of freed
/// blocks (tcache: up to 7 blocks of each size to 1 KiB per thread, kept for that thread's
/// next allocations, which `malloc_trim` does not see). After a large intake the dozen threads that live on
/// (sled's 7 pool threads, which never end, and tokio's workers among them) keep
/// 1.5–1.7 MiB of blocks there, spread over the heap the intake grew, and that heap
/// keeps 11–14 MiB resident after a reopen at rest where it keeps 3.4 without them: the
/// most of what a reopened agent holds above a fresh process. glibc reads the setting
/// only from `GLIBC_TUNABLES` when the process starts; `glibc.malloc.tcache_count=0` in
/// the agent's environment took it from 27.3–34.0 to 22.3–26.0 MiB idle after a 1 M-entry
/// intake, for 2–7 % more CPU per entry (BENCHMARKS.md, session 14).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (var, param, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENAS),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: mallopt only sets glibc's own parameters under its lock; called
            // before the runtime's threads exist.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// The glibc tunable [`run_with_tcache_off`] adds: no per-thread caches of freed blocks.
pub const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";

/// Set in the environment of the image [`run_with_tcache_off`] executes, so that image
/// never executes itself again (were glibc to drop `GLIBC_TUNABLES`, as it does for a
/// set-user-ID program, the agent would otherwise loop).
pub const REEXECUTED: &str = "SPACESYNC_AGENT_REEXECUTED";

/// The `GLIBC_TUNABLES` value to run with, or `None` when `current` already sets the
/// per-thread cache (the operator's choice stands) and nothing needs to change.
pub fn tunables_with_tcache_off(current: Option<&str>) -> Option<String> {
    match current.filter(|c| !c.is_empty()) {
        Some(c)
            if c.split(':')
                .any(|t| t.starts_with("glibc.malloc.tcache_count=")) =>
        {
            None
        }
        Some(c) => Some(format!("{c}:{TCACHE_OFF}")),
        None => Some(TCACHE_OFF.to_string()),
    }
}

/// Makes `run` hold its memory at rest as a fresh process would: glibc reads its
/// per-thread caches' setting only from `GLIBC_TUNABLES` at the start of a process (see
/// [`tune_allocator`]), so when the environment does not set it, the agent executes its
/// own program again — same arguments, same process id, nothing open yet but what it
/// inherited — with [`TCACHE_OFF`] added. Call first thing in `run`, before any thread
/// exists. Returns when nothing needs doing, or when it cannot be done — no `/proc`, or
/// the process's image is not the agent's program (started through the dynamic loader,
/// `ld.so /usr/bin/spacesync-agent run`, or the file replaced by an upgrade since): the
/// agent then runs with glibc's caches, as it did before, and says so on stderr.
pub fn run_with_tcache_off() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let warn = |why: &str| {
            eprintln!(
                "warning: glibc's per-thread malloc caches stay on ({why}), which keeps several MiB more resident at rest; set GLIBC_TUNABLES={TCACHE_OFF} in the agent's environment to have them off"
            );
        };
        if std::env::var_os(REEXECUTED).is_some() {
            // The second image: glibc may have dropped the variable (secure execution), or
            // the marker came from outside; either way, no third start.
            let set = std::env::var("GLIBC_TUNABLES")
                .is_ok_and(|t| tunables_with_tcache_off(Some(&t)).is_none());
            if !set {
                warn(&format!(
                    "{REEXECUTED} is set but GLIBC_TUNABLES does not set the caches"
                ));
            }
            return;
        }
        let current = std::env::var_os("GLIBC_TUNABLES");
        let Some(current) = current
            .as_ref()
            .map_or(Some(None), |c| c.to_str().map(Some))
        else {
            // Not UTF-8: not ours to rewrite.
            return;
        };
        let Some(tunables) = tunables_with_tcache_off(current) else {
            return;
        };
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_else(|| "spacesync-agent".into());
        if !image_is(&argv0) {
            warn("this process's image is not the program it was started as");
            return;
        }
        let error = std::process::Command::new("/proc/self/exe")
            .arg0(argv0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .env(REEXECUTED, "1")
            .exec();
        warn(&format!("starting the agent again failed: {error}"));
    }
}

/// Whether `/proc/self/exe` is the file `argv0` names (as the shell found it: a path, or
/// a name looked up in `PATH`), compared by device and inode.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn image_is(argv0: &std::ffi::OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let Ok(image) = std::fs::metadata("/proc/self/exe") else {
        return false;
    };
    let same = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.dev() == image.dev() && m.ino() == image.ino())
    };
    if argv0.as_bytes().contains(&b'/') {
        return same(std::path::Path::new(argv0));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| same(&dir.join(argv0))))
}

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
    let settle = move |s: &Store, reopen: bool| {
        if let Err(e) = s.settle_memory(reopen) {
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
    F: Fn(&Store, bool) + Clone + Send + 'static,
{
    let mut seen = position(&store);
    // Nothing of the store's own to give back right after opening (no reopen needed), but
    // sled's segment cleaner grows the memory of a freshly opened store: one settling
    // without a reopen once it is quiet.
    let mut settled = true;
    let mut opened = true;
    // Resident memory after the last settling (or at the start).
    let mut baseline = resident();
    let mut last: Option<tokio::time::Instant> = None;
    // The seqs are looked at every `poll`, so a settling comes `quiet` after the last
    // change, not up to twice that.
    let poll = quiet.min(POLL);
    let mut still_since = tokio::time::Instant::now();
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
            () = tokio::time::sleep(poll) => {}
        }
        let now = position(&store);
        if now != seen {
            seen = now;
            settled = false;
            still_since = tokio::time::Instant::now();
            continue;
        }
        if still_since.elapsed() < quiet {
            continue;
        }
        let grown = resident()
            .zip(baseline)
            .is_some_and(|(now, base)| now > base.saturating_add(GROWTH));
        if (settled && !grown && !opened) || last.is_some_and(|t| t.elapsed() < min_gap) {
            continue;
        }
        // A reopen only when the store changed: reads and the cleaner leave nothing of
        // the store's that a fresh open would not hold again.
        let reopen = !settled;
        let (s, f) = (store.clone(), settle.clone());
        let started = tokio::time::Instant::now();
        if let Err(e) = tokio::task::spawn_blocking(move || f(&s, reopen)).await {
            warn!(error = %e, "Giving memory back failed; the agent goes on.");
        }
        debug!(
            took_ms = started.elapsed().as_millis() as u64,
            reopen, "Gave memory back at rest."
        );
        settled = true;
        opened = false;
        baseline = resident();
        last = Some(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use spacesync_shared::dsse::Digest;

    use super::*;
    use crate::store::Append;

    #[test]
    fn the_tunable_is_added_once_and_an_operators_setting_stands() {
        assert_eq!(tunables_with_tcache_off(None).as_deref(), Some(TCACHE_OFF));
        assert_eq!(
            tunables_with_tcache_off(Some("")).as_deref(),
            Some(TCACHE_OFF)
        );
        assert_eq!(
            tunables_with_tcache_off(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")
        );
        assert_eq!(tunables_with_tcache_off(Some(TCACHE_OFF)), None);
        assert_eq!(
            tunables_with_tcache_off(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=7")),
            None
        );
    }

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

    /// Settles once per quiet period after a change, reopening the store, never while
    /// changes go on, not within the least gap; a store that never changed is settled
    /// once after the start, without a reopen (sled's cleaner after the open).
    #[tokio::test(start_paused = true)]
    async fn memory_is_given_back_once_after_the_store_goes_quiet() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let done = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let d = done.clone();
        let task = tokio::spawn(settle_when_quiet_with(
            store.clone(),
            stop_rx,
            Duration::from_secs(5),
            Duration::from_secs(60),
            || Some(10 << 20),
            move |_, reopen| {
                d.lock().unwrap_or_else(|e| panic!("{e}")).push(reopen);
            },
        ));
        let settles = || done.lock().unwrap_or_else(|e| panic!("{e}")).clone();
        // Untouched: one settling after the start, no reopen; then nothing more.
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert_eq!(settles(), [false]);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(settles(), [false]);
        // Appends every 3 s: never quiet for a whole period.
        for _ in 0..5 {
            append(&store, 2);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        assert_eq!(settles(), [false]);
        // Quiet: one settling with a reopen, and only one.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(settles(), [false, true]);
        // Another burst soon after: it waits for the least gap, then settles once more.
        append(&store, 1);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(settles(), [false, true]);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(settles(), [false, true, true]);
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
        let done = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rss = Arc::new(std::sync::atomic::AtomicU64::new(20 << 20));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (d, r) = (done.clone(), rss.clone());
        let task = tokio::spawn(settle_when_quiet_with(
            store,
            stop_rx,
            Duration::from_secs(5),
            Duration::from_secs(60),
            move || Some(r.load(Ordering::SeqCst)),
            move |_, reopen| {
                d.lock().unwrap_or_else(|e| panic!("{e}")).push(reopen);
            },
        ));
        let settles = || done.lock().unwrap_or_else(|e| panic!("{e}")).clone();
        // The task reads its baseline first; the settling after the start comes at 5 s.
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert_eq!(settles(), [false]);
        // Grown, but not past the threshold: nothing.
        rss.store((20 << 20) + GROWTH, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(settles(), [false]);
        // Past it: one settling, without a reopen; the memory then stays high (what
        // settling could not give back becomes the new baseline): no more.
        rss.store((21 << 20) + GROWTH, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(settles(), [false, false]);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(settles(), [false, false]);
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
