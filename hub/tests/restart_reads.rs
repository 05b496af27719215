//! A restart reads the present, not the history: opening a hub reads no log record, no
//! tree node, no stored snapshot and, of the source index, one `last` per source; what it
//! reads does not grow with the number of entries. And a hub whose history trees were
//! removed (`log/`, `node/`, the stored snapshots `v/c/` and their lists per subject `v/l/`)
//! still starts and serves the same figures. After a clean stop it reads no summary key
//! either: the summaries come from the views checkpoint the stop wrote, until something changes, and only
//! while it matches the store.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::Value;
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::store::{Kv, KvIter, Store, StoreError, WriteBatch, keys};
use spacesync_shared::Campaign;
use spacesync_shared::clock::FixedClock;

/// One read the hub made: the operation, the key or prefix asked for, and the keys it got.
#[derive(Debug, Clone)]
struct Read {
    op: &'static str,
    asked: Vec<u8>,
    got: Vec<Vec<u8>>,
}

/// A store that records every read.
struct Counting {
    inner: Arc<dyn Store>,
    reads: Mutex<Vec<Read>>,
}

impl Counting {
    fn log(&self, op: &'static str, asked: &[u8], got: Vec<Vec<u8>>) {
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Read {
                op,
                asked: asked.to_vec(),
                got,
            });
    }
}

impl Store for Counting {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self.inner.get(key)?;
        self.log("get", key, v.iter().map(|_| key.to_vec()).collect());
        Ok(v)
    }

    fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
        // Collected, so every key the caller could read is counted.
        let all: Vec<Result<Kv, StoreError>> = self.inner.scan(prefix).collect();
        self.log(
            "scan",
            prefix,
            all.iter()
                .filter_map(|r| r.as_ref().ok().map(|(k, _)| k.clone()))
                .collect(),
        );
        Box::new(all.into_iter())
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Kv>, StoreError> {
        let v = self.inner.last(prefix)?;
        self.log("last", prefix, v.iter().map(|(k, _)| k.clone()).collect());
        Ok(v)
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.inner.apply(batch)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn take_views_checkpoint(&self) -> Option<Vec<u8>> {
        self.inner.take_views_checkpoint()
    }

    fn discard_views_checkpoint(&self) {
        self.inner.discard_views_checkpoint()
    }
}

/// What the hub answers a ministry reader about the figures.
async fn figures(th: &TestHub) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/v1/progress",
        "/v1/regions/440000",
        "/v1/regions/440106",
        "/v1/regions/440105",
        "/v1/sources",
    ] {
        out.push(th.get_json(path).await);
    }
    // `/v1/sources` lists the registry in hash order, which differs between processes.
    if let Some(list) = out[4]["sources"].as_array_mut() {
        list.sort_by_key(|s| s["source"].to_string());
    }
    out
}

/// A hub whose 30 schools and one county each have `weeks` weekly snapshots (the last
/// ones the same whatever `weeks`, all after the baseline date), one snapshot sent out of
/// date order, two activities, and a snapshot withdrawn: the same present, a history
/// `weeks` times as long. Returns the entries, the figures served and the hub.
async fn hub_with_history(dir: &std::path::Path, weeks: u64) -> (usize, Vec<Value>, TestHub) {
    let th = TestHub::open(dir);
    let mut a = Agent::new("gd-a", 1, "440000");
    let mut b = Agent::new("gd-b", 2, "440000");
    th.register(&a);
    th.register(&b);
    let day = |w: u64| {
        (chrono::NaiveDate::from_ymd_opt(2018, 11, 19).expect("date")
            - chrono::Duration::weeks(i64::try_from(w).expect("weeks")))
        .to_string()
    };
    let mut entries = 0;
    for w in (0..weeks).rev() {
        let mut records: Vec<Value> = (1..=30)
            .map(|s| teachers("440106", &format!("4144010{s:03}"), &day(w), 100 + s - w))
            .collect();
        records.push(teachers("440105", "", &day(w), 5000 - w));
        entries += records.len();
        th.ingest_ok(&a.batch(&records)).await;
    }
    // Out of date order (a day no one else reported), which the latest outranks.
    th.ingest_ok(&b.batch(&[teachers("440106", "4144010001", "2018-11-11", 100)]))
        .await;
    th.ingest_ok(&b.batch(&[
        activity("440106", "2018-11-05", "应用培训"),
        activity("440105", "2018-11-06", "应用培训"),
        teachers("440106", "4144010002", &day(0), 1),
        withdrawal(4),
    ]))
    .await;
    entries += 5;
    let seen = figures(&th).await;
    // The pending summaries folded into their keys, so a start reads the same keys
    // whatever the history's length. (Otherwise a start also reads the pending values, up
    // to `FOLD_AT` summaries: bounded, but in a short history all of them.)
    th.hub.fold_summaries().expect("fold");
    (entries, seen, th)
}

/// Opens a hub over `dir`, counting what it reads.
fn reads_at_open(dir: &std::path::Path) -> Vec<Read> {
    let store = Arc::new(Counting {
        inner: open_store(dir),
        reads: Mutex::new(Vec::new()),
    });
    let hub = Hub::open(
        store.clone(),
        hub_key(),
        ORIGIN.to_string(),
        Campaign::builtin_2018(),
        Arc::new(FixedClock::new(t0())),
        Limits::default(),
    )
    .expect("open hub");
    drop(hub);
    let Ok(store) = Arc::try_unwrap(store) else {
        panic!("the hub kept its store after it was dropped");
    };
    store.reads.into_inner().unwrap_or_else(|p| p.into_inner())
}

fn starts(k: &[u8], prefix: &[u8]) -> bool {
    k.starts_with(prefix)
}

async fn restart_reads_no_per_entry_history(backend: Backend) {
    let short = store_dir(backend);
    let long = store_dir(backend);
    let (short_entries, short_figures, th) = hub_with_history(short.path(), 1).await;
    drop(th);
    let (long_entries, long_figures, th) = hub_with_history(long.path(), 7).await;
    drop(th);
    assert!(long_entries > 5 * short_entries);
    // The same present (the log's size and the sources' heads aside).
    let present = |f: &[Value]| {
        let mut progress = f[0].clone();
        progress["log_size"] = Value::Null;
        (progress, f[1..4].to_vec())
    };
    let (a, b) = (present(&short_figures), present(&long_figures));
    for (i, (x, y)) in std::iter::once((&a.0, &b.0))
        .chain(a.1.iter().zip(&b.1))
        .enumerate()
    {
        if x != y {
            let (x, y) = (x.to_string(), y.to_string());
            let at = x.bytes().zip(y.bytes()).take_while(|(p, q)| p == q).count();
            panic!(
                "figures {i} differ at byte {at}: …{} vs …{}",
                &x[at.saturating_sub(300)..(at + 200).min(x.len())],
                &y[at.saturating_sub(300)..(at + 200).min(y.len())]
            );
        }
    }

    let short_reads = reads_at_open(short.path());
    let long_reads = reads_at_open(long.path());
    for r in &long_reads {
        for k in std::iter::once(&r.asked).chain(&r.got) {
            for history in [keys::LOG, keys::NODE, b"v/c/".as_slice(), b"v/l/"] {
                assert!(
                    !starts(k, history),
                    "opening the hub read per-entry history: {} {:?}",
                    r.op,
                    String::from_utf8_lossy(k)
                );
            }
        }
        if starts(&r.asked, keys::SRC) {
            assert_eq!(
                r.op, "last",
                "the source index is read only for each head: {r:?}"
            );
        }
    }
    let src_lasts = long_reads
        .iter()
        .filter(|r| starts(&r.asked, keys::SRC))
        .count();
    assert_eq!(src_lasts, 2, "one `last` per source");
    let keys_read = |reads: &[Read]| reads.iter().map(|r| r.got.len().max(1)).sum::<usize>();
    assert_eq!(
        keys_read(&long_reads),
        keys_read(&short_reads),
        "a history {}× as long read more at start:\nshort {short_reads:#?}\nlong {long_reads:#?}",
        long_entries / short_entries
    );
    assert!(keys_read(&long_reads) < long_entries / 4);
}

async fn a_hub_without_its_history_trees_serves_the_same_figures(backend: Backend) {
    let dir = store_dir(backend);
    let (_, before, th) = hub_with_history(dir.path(), 6).await;
    {
        let store = th.hub.store.as_ref();
        let mut wb = WriteBatch::new();
        for prefix in [keys::LOG, keys::NODE, b"v/c/".as_slice()] {
            let mut removed = 0;
            for r in store.scan(prefix) {
                wb.delete(r.expect("scan").0);
                removed += 1;
            }
            assert!(removed > 0, "no history under {prefix:?} to remove");
        }
        store.apply(wb).expect("apply");
        store.flush().expect("flush");
    }
    drop(th);
    let th = TestHub::open(dir.path());
    assert_eq!(figures(&th).await, before);
}

backends!(async restart_reads_no_per_entry_history, a_hub_without_its_history_trees_serves_the_same_figures);

/// What a clean stop does last (`serve`): the views checkpoint of the published state.
fn stop_with_checkpoint(th: &TestHub) {
    let snap = th.hub.snapshot();
    let bytes = snap.views.checkpoint(snap.head);
    assert!(
        th.hub
            .store
            .put_views_checkpoint(&bytes)
            .expect("write the checkpoint"),
        "sled keeps a views checkpoint"
    );
}

/// Removes every stored summary without moving the store's head: a start that still serves
/// them read them from the checkpoint.
fn remove_summaries(th: &TestHub) {
    let store = th.hub.store.as_ref();
    let mut wb = WriteBatch::new();
    let mut n = 0;
    for r in store.scan(b"v/s/") {
        wb.delete(r.expect("scan").0);
        n += 1;
    }
    assert!(n > 30, "only {n} summaries stored");
    store.apply(wb).expect("apply");
    store.flush().expect("flush");
}

#[tokio::test]
async fn after_a_clean_stop_the_summaries_come_from_the_checkpoint_until_something_changes() {
    let dir = store_dir(Backend::Sled);
    let (_, before, th) = hub_with_history(dir.path(), 3).await;
    stop_with_checkpoint(&th);
    drop(th);
    // The start reads no summary key (the rest as before: no history either).
    let reads = reads_at_open(dir.path());
    for r in &reads {
        for k in std::iter::once(&r.asked).chain(&r.got) {
            assert!(
                !starts(k, b"v/s/"),
                "a start after a clean stop read the summaries from the store: {} {:?}",
                r.op,
                String::from_utf8_lossy(k)
            );
        }
    }
    // That open changed nothing: the next one finds the checkpoint again (put back).
    let reads = reads_at_open(dir.path());
    assert!(
        !reads.iter().any(|r| starts(&r.asked, b"v/s/")),
        "an open that changed nothing lost the checkpoint"
    );

    // An open that writes no view key and moves no head (a token, say) leaves it for the
    // next start; one that writes a view key does not.
    let reads_after = |write: &[u8]| {
        let th = TestHub::open(dir.path());
        stop_with_checkpoint(&th);
        drop(th);
        let store = open_store(dir.path());
        let mut wb = WriteBatch::new();
        // The head as a head is stored (one more), anything else as a short value.
        let value = match write {
            b"meta/head" => (store.head().expect("head") + 1).to_be_bytes().to_vec(),
            _ => b"x".to_vec(),
        };
        wb.put(write.to_vec(), value);
        store.apply(wb).expect("apply");
        store.flush().expect("flush");
        drop(store);
        reads_at_open(dir.path())
            .iter()
            .any(|r| starts(&r.asked, b"v/s/"))
    };
    assert!(
        !reads_after(b"tok/other"),
        "a token's write lost the checkpoint"
    );
    assert!(
        reads_after(b"meta/head"),
        "a checkpoint outlived an open that moved the head"
    );
    assert!(
        reads_after(b"v/zz"),
        "a checkpoint outlived an open that wrote a view key"
    );

    // The figures come from it: with the stored summaries gone, the start after a clean
    // stop serves what it served; the one after that (no checkpoint) cannot.
    let th = TestHub::open(dir.path());
    remove_summaries(&th);
    stop_with_checkpoint(&th);
    drop(th);
    let th = TestHub::open(dir.path());
    assert_eq!(figures(&th).await, before);
    drop(th);
    std::fs::remove_file(dir.path().join("views.ckpt")).expect("the checkpoint, put back");
    let th = TestHub::open(dir.path());
    assert_ne!(
        figures(&th).await,
        before,
        "the summaries were removed: only a checkpoint could serve them"
    );
}

#[tokio::test]
async fn a_checkpoint_the_store_moved_past_or_a_damaged_one_is_not_used() {
    let dir = store_dir(Backend::Sled);
    let (_, _, th) = hub_with_history(dir.path(), 2).await;
    // Written, then the store moves on in the same open (a write after the stop's).
    stop_with_checkpoint(&th);
    let mut c = Agent::new("gd-c", 3, "440000");
    th.register(&c);
    th.ingest_ok(&c.batch(&[
        teachers("440106", "4144010777", "2018-11-19", 777),
        teachers("440106", "4144010001", "2018-11-19", 9_999),
    ]))
    .await;
    let moved = figures(&th).await;
    drop(th);
    let th = TestHub::open(dir.path());
    assert_eq!(
        figures(&th).await,
        moved,
        "a start used a checkpoint written before the store's last change"
    );
    // A damaged checkpoint is refused as a whole (its hash): with the stored summaries
    // removed, a start that used it would still serve them.
    remove_summaries(&th);
    stop_with_checkpoint(&th);
    drop(th);
    let path = dir.path().join("views.ckpt");
    let mut bytes = std::fs::read(&path).expect("the checkpoint");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&path, bytes).expect("damage it");
    let th = TestHub::open(dir.path());
    assert_ne!(
        figures(&th).await,
        moved,
        "a start used a damaged checkpoint"
    );
    assert!(
        !path.exists() && !dir.path().join("views.ckpt.taken").exists(),
        "the open left a checkpoint behind"
    );
}

/// `verify` on the closed store in `dir` (its open closed again when it returns).
fn verify(dir: &std::path::Path) -> spacesync_hub::maintenance::VerifyReport {
    let store = open_store(dir);
    spacesync_hub::maintenance::verify(store.as_ref(), &hub_key().verifying_key(), ORIGIN, |_| {})
        .expect("verify")
}

/// The checkpoint's entries: where each subject's summary length and bytes lie.
fn entries(b: &[u8]) -> Vec<(usize, usize)> {
    const HEAD: usize = 16 + 1 + 8 + 8 + 4 + 4 + 8;
    let count = u64::from_be_bytes(b[41..49].try_into().expect("count"));
    let mut at = HEAD;
    let mut out = Vec::new();
    for _ in 0..count {
        at += 13;
        let len = u32::from_be_bytes(b[at..at + 4].try_into().expect("len")) as usize;
        out.push((at, len));
        at += 4 + len;
    }
    out
}

#[tokio::test]
async fn verify_names_and_removes_a_checkpoint_that_differs_from_the_stored_summaries() {
    use sha2::Digest as _;
    let dir = store_dir(Backend::Sled);
    let (_, before, th) = hub_with_history(dir.path(), 2).await;
    stop_with_checkpoint(&th);
    drop(th);
    // Two schools' summaries swapped in the file, its hash made good again: only a
    // comparison with the store can tell.
    let path = dir.path().join("views.ckpt");
    let b = std::fs::read(&path).expect("the checkpoint");
    let e = entries(&b);
    let (x, y) = (e[1], e[2]);
    let sx = b[x.0..x.0 + 4 + x.1].to_vec();
    let sy = b[y.0..y.0 + 4 + y.1].to_vec();
    assert_ne!(sx, sy, "two schools with the same summary");
    let mut edited = b[..x.0].to_vec();
    edited.extend_from_slice(&sy);
    edited.extend_from_slice(&b[x.0 + 4 + x.1..y.0]);
    edited.extend_from_slice(&sx);
    edited.extend_from_slice(&b[y.0 + 4 + y.1..b.len() - 32]);
    let hash = sha2::Sha256::digest(&edited);
    edited.extend_from_slice(&hash);
    std::fs::write(&path, &edited).expect("edit");

    let report = verify(dir.path());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("views checkpoint")
            && report.problems[0].contains("another summary"),
        "{:?}",
        report.problems
    );
    assert!(
        !path.exists(),
        "verify left the edited checkpoint for the next start"
    );
    let th = TestHub::open(dir.path());
    assert_eq!(figures(&th).await, before);
    drop(th);

    // A checkpoint that matches the store passes and stays.
    let th = TestHub::open(dir.path());
    stop_with_checkpoint(&th);
    drop(th);
    let report = verify(dir.path());
    assert!(report.ok(), "{:?}", report.problems);
    assert!(path.exists(), "verify removed a sound checkpoint");
}

/// A school whose every snapshot is withdrawn keeps where its chain starts through a clean
/// stop (the checkpoint carries its empty summary) and through a start from the stored
/// summaries alike: its next snapshot links to its newest, and the stored views stay byte
/// for byte a rebuild's.
#[tokio::test]
async fn a_wholly_withdrawn_school_keeps_its_chain_across_starts() {
    for from_checkpoint in [true, false] {
        let dir = store_dir(Backend::Sled);
        let th = TestHub::open(dir.path());
        let mut a = Agent::new("gd-a", 1, "440000");
        th.register(&a);
        th.ingest_ok(&a.batch(&[
            teachers("440106", "4144010601", "2018-10-01", 9),
            teachers("440106", "4144010602", "2018-10-01", 20),
            teachers("440106", "4144010601", "2018-10-08", 10),
        ]))
        .await;
        th.ingest_ok(&a.batch(&[withdrawal(1), withdrawal(3)]))
            .await;
        if from_checkpoint {
            stop_with_checkpoint(&th);
        }
        drop(th);
        let th = TestHub::open(dir.path());
        th.ingest_ok(&a.batch(&[teachers("440106", "4144010601", "2018-10-15", 11)]))
            .await;
        let report = spacesync_hub::maintenance::verify(
            th.hub.store.as_ref(),
            &hub_key().verifying_key(),
            ORIGIN,
            |_| {},
        )
        .expect("verify runs");
        assert!(
            report.ok(),
            "from the checkpoint: {from_checkpoint}: {:#?}",
            report.problems
        );
        let region = th.get_json("/v1/regions/440106").await.to_string();
        assert!(region.contains("4144010601"), "{region}");
    }
}
