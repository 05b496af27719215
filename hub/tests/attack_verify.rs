//! Attacks on `verify` with damage the parallel-path tests do not make: stored tree nodes
//! (changed, deleted, cut short, lower levels kept wrong as older stores keep them), the
//! frontier and the checkpoint, log keys and records (an empty record, a version byte this
//! hub does not know, a JSON record that does not read, leaves swapped, a leaf past the
//! frontier, a record's unsigned fields changed) and the stored views (a count, a list, a
//! summary, the position). For each: no panic, no hang, the serial reference and 1, 2 and
//! 4 threads give the same report, and the report names the damage.

mod common;

use std::sync::OnceLock;

use common::*;
use spacesync_hub::log::{self, LogRecord};
use spacesync_hub::log_check::Checking;
use spacesync_hub::maintenance::{self, VerifyReport};
use spacesync_hub::store::{SledStore, Store, WriteBatch, keys};
use spacesync_hub::views;

/// A closed store of about 700 leaves (three chunks of the parallel path): two sources of
/// space counts over 30 schools and one of activities; the summaries folded into their
/// keys, then one more batch leaving school 29's pending (`v/d/`).
fn good() -> &'static (tempfile::TempDir, u64) {
    static GOOD: OnceLock<(tempfile::TempDir, u64)> = OnceLock::new();
    GOOD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let th = TestHub::open(dir.path());
        let mut a = Agent::new("gd-a", 1, "440000");
        let mut b = Agent::new("gd-b", 2, "440000");
        let mut c = Agent::new("bj-c", 3, "110000");
        th.register(&a);
        th.register(&b);
        th.register(&c);
        for round in 0..6u64 {
            for agent in [&mut a, &mut b, &mut c] {
                let n = 37 + 11 * round;
                let records: Vec<_> = (0..n)
                    .map(|i| {
                        let seq = agent.next + i;
                        if agent.id.as_str() == "bj-c" {
                            activity("110105", "2018-11-05", &format!("活动 {seq}"))
                        } else {
                            let day = 1 + (seq % 20);
                            teachers(
                                "440106",
                                &format!("44010600{:02}", seq % 30),
                                &format!("2018-11-{day:02}"),
                                seq,
                            )
                        }
                    })
                    .collect();
                let out = th.hub.ingest(agent.batch(&records)).expect("ingest");
                assert_eq!(out.status, 200, "{:?}", out.response);
            }
        }
        th.hub.fold_summaries().expect("fold");
        let records = vec![teachers("440106", "4401060029", "2018-11-25", 900)];
        let out = th.hub.ingest(a.batch(&records)).expect("ingest");
        assert_eq!(out.status, 200, "{:?}", out.response);
        assert_eq!(th.hub.store.scan(b"v/d/").count(), 1, "one batch pending");
        let size = th.log_size();
        assert!(size > 600, "{size}");
        (dir, size)
    })
}

fn size() -> u64 {
    good().1
}

fn put(s: &dyn Store, k: Vec<u8>, v: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.put(k, v);
    s.apply(b).expect("apply");
}

/// Stores `bytes` as leaf `index`'s record, inside the pack that holds it.
fn put_leaf(s: &dyn Store, index: u64, bytes: Vec<u8>) {
    log::replace_record(s, index, Some(bytes)).expect("replace");
}

fn delete(s: &dyn Store, k: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.delete(k);
    s.apply(b).expect("apply");
}

fn read(s: &dyn Store, index: u64) -> LogRecord {
    log::read(s, index).expect("read").expect("leaf")
}

fn first_key(s: &dyn Store, prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    s.scan(prefix).next().expect("a key").expect("read")
}

/// `verify` of a damaged copy of the good store by every way of checking; all must agree
/// line for line; returns the report.
fn check(name: &str, damage: impl FnOnce(&dyn Store)) -> VerifyReport {
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(good().0.path(), copy.path());
    let store = SledStore::open(copy.path()).expect("open copy");
    damage(&store);
    let key = hub_key().verifying_key();
    let mut reports = [1usize, 2, 4]
        .into_iter()
        .map(|t| Checking::Parallel {
            threads: t.try_into().expect("threads"),
        })
        .map(|how| {
            let r = maintenance::verify_with(&store, &key, ORIGIN, how, |_| {})
                .unwrap_or_else(|e| panic!("{name}: {how:?}: {e}"));
            (how, r)
        })
        .collect::<Vec<_>>();
    let serial = maintenance::verify_with(&store, &key, ORIGIN, Checking::Serial, |_| {})
        .unwrap_or_else(|e| panic!("{name}: serial: {e}"));
    for (how, r) in reports.drain(..) {
        assert_eq!(
            (r.leaves, r.sources, &r.problems),
            (serial.leaves, serial.sources, &serial.problems),
            "{name}: {how:?} differs from the serial reference"
        );
    }
    serial
}

/// The report is not sound and one of its lines holds every one of `words`.
fn names(name: &str, r: &VerifyReport, words: &[&str]) {
    assert!(
        r.problems
            .iter()
            .any(|p| words.iter().all(|w| p.contains(w))),
        "{name}: no problem names {words:?}: {:#?}",
        r.problems
    );
}

#[test]
fn the_good_store_verifies() {
    let r = check("good", |_| {});
    assert!(r.ok(), "{:#?}", r.problems);
    assert_eq!(r.leaves, size());
}

#[test]
fn damaged_upper_tree_nodes_are_named() {
    let r = check("level 2 changed", |s| {
        put(s, keys::node(2, 5), vec![7; 32]);
    });
    names("level 2 changed", &r, &["level 2, index 5"]);
    let r = check("level 4 deleted", |s| delete(s, keys::node(4, 2)));
    names("level 4 deleted", &r, &["level 4, index 2"]);
    // Nodes are stored from level 4 (`log::FIRST_STORED_LEVEL`).
    let r = check("level 5 cut short", |s| {
        let (k, v) = (keys::node(5, 1), s.get(&keys::node(5, 1)).expect("get"));
        put(s, k, v.expect("stored")[..31].to_vec());
    });
    names("level 5 cut short", &r, &["level 5, index 1"]);
    let r = check("level 4 lengthened", |s| {
        let mut v = s.get(&keys::node(4, 9)).expect("get").expect("stored");
        v.push(0);
        put(s, keys::node(4, 9), v);
    });
    names("level 4 lengthened", &r, &["level 4, index 9"]);
}

#[test]
fn lower_level_nodes_kept_as_older_stores_keep_them_are_checked() {
    // A correct level-0 and level-1 node, as a store written before kept them: sound.
    let r = check("lower levels right", |s| {
        let l0 = log::leaf_hash(&read(s, 10).envelope);
        let l1 = spacesync_shared::merkle::node_hash(
            &log::leaf_hash(&read(s, 20).envelope),
            &log::leaf_hash(&read(s, 21).envelope),
        );
        put(s, keys::node(0, 10), l0.to_vec());
        put(s, keys::node(1, 10), l1.to_vec());
    });
    assert!(r.ok(), "{:#?}", r.problems);
    let r = check("level 1 wrong", |s| put(s, keys::node(1, 40), vec![1; 32]));
    names("level 1 wrong", &r, &["level 1, index 40"]);
    let r = check("level 0 wrong", |s| put(s, keys::node(0, 333), vec![1; 32]));
    names("level 0 wrong", &r, &["level 0, index 333"]);
}

#[test]
fn a_damaged_frontier_or_checkpoint_is_named() {
    let r = check("frontier garbled", |s| {
        put(s, keys::FRONTIER.to_vec(), vec![1, 2, 3]);
    });
    assert!(!r.ok(), "frontier garbled: verify found nothing");
    let r = check("frontier deleted", |s| delete(s, keys::FRONTIER.to_vec()));
    assert!(!r.ok(), "frontier deleted: verify found nothing");
    let r = check("checkpoint garbled", |s| {
        put(s, keys::CHECKPOINT.to_vec(), b"not a note".to_vec());
    });
    assert!(!r.ok(), "checkpoint garbled: verify found nothing");
    let r = check("checkpoint deleted", |s| {
        delete(s, keys::CHECKPOINT.to_vec())
    });
    assert!(!r.ok(), "checkpoint deleted: verify found nothing");
}

#[test]
fn records_that_do_not_read_are_named_at_their_leaf() {
    for (name, at, bytes) in [
        ("empty", 300u64, Vec::new()),
        ("version byte only", 301, vec![1]),
        ("unknown version", 257, {
            let mut b = read_good(257);
            b[0] = 2;
            b
        }),
        ("json that does not read", 511, b"{\"seq\":".to_vec()),
        ("a trailing byte", 600, {
            let mut b = read_good(600);
            b.push(0);
            b
        }),
    ] {
        let r = check(name, |s| put_leaf(s, at, bytes.clone()));
        names(name, &r, &[&format!("log leaf {at}")]);
        assert_eq!(r.leaves, at, "{name}: the walk stops at the damaged leaf");
    }
}

/// A batch's leaves are one stored value (a pack): a pack whose head does not read (its
/// table of record ends, its first index, cut short) is named at its first leaf, where the
/// walk stops; the leaves before it were all read.
#[test]
fn a_pack_whose_head_does_not_read_is_named_at_its_first_leaf() {
    let (key, value) = {
        let d = tempfile::tempdir().expect("tempdir");
        copy_dir(good().0.path(), d.path());
        let s = SledStore::open(d.path()).expect("open");
        s.first_from(keys::LOG, &keys::log(300))
            .expect("read")
            .expect("a value at leaf 300")
    };
    // Written compressed since session 15: the same head, then the raw length at 11..15
    // (set past a pack's ceiling below) and the LZ4 block (a trailing byte does not decode).
    assert_eq!(
        value[0],
        log::pack::PACK_LZ4,
        "leaf 300 lies in a compressed pack"
    );
    let first = u64::from_be_bytes(value[1..9].try_into().expect("8 bytes"));
    assert!(first > 0 && first <= 300, "{first}");
    let mut misplaced = value.clone();
    misplaced[1..9].copy_from_slice(&(first + 1).to_be_bytes());
    let mut ends = value.clone();
    ends[11..15].copy_from_slice(&u32::MAX.to_be_bytes());
    for (name, bytes) in [
        ("cut inside the head", value[..7].to_vec()),
        ("first index moved", misplaced),
        ("an end past the records", ends),
        ("a trailing byte", [value.as_slice(), &[0]].concat()),
    ] {
        let r = check(name, |s| put(s, key.clone(), bytes.clone()));
        names(name, &r, &[&format!("log leaf {first}"), "pack"]);
        assert_eq!(r.leaves, first, "{name}: the walk stops at the pack");
    }
}

/// The stored bytes of leaf `at` of the good store (read once, from a copy of its own).
fn read_good(at: u64) -> Vec<u8> {
    static RECORDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        copy_dir(good().0.path(), d.path());
        let s = SledStore::open(d.path()).expect("open");
        (0..size())
            .map(|i| log::record_bytes(&s, i).expect("get").expect("stored"))
            .collect()
    })[at as usize]
        .clone()
}

#[test]
fn misplaced_and_extra_leaves_are_named() {
    let r = check("two leaves swapped", |s| {
        let (x, y) = (read(s, 400), read(s, 401));
        put_leaf(s, 400, y.encode().expect("encode"));
        put_leaf(s, 401, x.encode().expect("encode"));
    });
    assert!(!r.ok(), "swapped leaves: verify found nothing");
    let last = size() - 1;
    let r = check("a leaf past the frontier", |s| {
        let rec = read(s, last);
        put_leaf(s, last + 1, rec.encode().expect("encode"));
    });
    assert!(!r.ok(), "a leaf past the frontier: verify found nothing");
    let r = check("a log key without an index", |s| {
        put(s, b"log/x".to_vec(), read_good(5));
    });
    assert!(!r.ok(), "a log key without an index: verify found nothing");
    let r = check("a record's seq changed", |s| {
        let mut rec = read(s, 450);
        rec.seq += 1;
        put_leaf(s, 450, rec.encode().expect("encode"));
    });
    names("a record's seq changed", &r, &["log leaf 450"]);
    let r = check("a record's source changed", |s| {
        let mut rec = read(s, 451);
        rec.source = Some(if rec.source.as_ref().map(|x| x.as_str()) == Some("gd-a") {
            spacesync_shared::SourceId::parse("gd-b").expect("id")
        } else {
            spacesync_shared::SourceId::parse("gd-a").expect("id")
        });
        put_leaf(s, 451, rec.encode().expect("encode"));
    });
    names("a record's source changed", &r, &["log leaf 451"]);
}

#[test]
fn a_records_receive_time_changed_is_named() {
    // The receive time is outside the signed bytes and the leaf hash; the source index and
    // the stored views hold it too.
    let r = check("received_at changed", |s| {
        let mut rec = read(s, 320);
        rec.received_at += chrono::Duration::days(40);
        put_leaf(s, 320, rec.encode().expect("encode"));
    });
    assert!(!r.ok(), "a changed receive time: verify found nothing");
}

#[test]
fn damaged_stored_views_are_named() {
    let r = check("count garbled", |s| {
        let (k, v) = first_key(s, b"v/c/");
        put(s, k, v[..v.len() / 2].to_vec());
    });
    assert!(!r.ok(), "count garbled: verify found nothing");
    let r = check("count deleted", |s| delete(s, first_key(s, b"v/c/").0));
    assert!(!r.ok(), "count deleted: verify found nothing");
    // A block: [2, offset, length, count...]; a count: [3, link back, ...] (the link one
    // byte here). Its subject's chain broken at the first count of a block: linked to the
    // log index before it (a count of another subject, or no count), or cut.
    let relink = |s: &dyn Store, to: &dyn Fn(u8) -> Option<u8>| {
        for r in s.scan(b"v/c/") {
            let (k, mut v) = r.expect("scan");
            assert_eq!((v[0], v[3]), (2, 3), "a block of linked counts");
            if let Some(link) = to(v[4]) {
                v[4] = link;
                put(s, k, v);
                return;
            }
        }
        panic!("no count to relink");
    };
    let r = check("link to the index before", |s| {
        relink(s, &|l| (l == 0).then_some(1))
    });
    names(
        "link to the index before",
        &r,
        &["link to another previous snapshot"],
    );
    let r = check("link cut", |s| {
        relink(s, &|l| (l > 0 && l < 0x80).then_some(0))
    });
    names("link cut", &r, &["link to another previous snapshot"]);
    let r = check("link to an older count", |s| {
        relink(s, &|l| (l > 0 && l < 0x40).then_some(l * 2))
    });
    assert!(!r.ok(), "link to an older count: verify found nothing");
    let r = check("chain start moved", |s| {
        let (k, mut v) = first_key(s, b"v/s/");
        assert_eq!(v[0], 2, "a summary with where its chain starts");
        v[1] ^= 1;
        put(s, k, v);
    });
    names(
        "chain start moved",
        &r,
        &["stored subject summaries disagree"],
    );
    let r = check("summary garbled", |s| {
        let (k, _) = first_key(s, b"v/s/");
        put(s, k, vec![1, 2, 3]);
    });
    assert!(!r.ok(), "summary garbled: verify found nothing");
    let r = check("summary deleted", |s| delete(s, first_key(s, b"v/s/").0));
    assert!(!r.ok(), "summary deleted: verify found nothing");
    let r = check("pending summary garbled", |s| {
        let (k, mut v) = first_key(s, b"v/d/");
        let last = v.len() - 1;
        v[last] ^= 0x55;
        put(s, k, v);
    });
    assert!(!r.ok(), "pending summary garbled: verify found nothing");
    let r = check("pending summary cut short", |s| {
        let (k, v) = first_key(s, b"v/d/");
        put(s, k, v[..v.len() - 1].to_vec());
    });
    assert!(!r.ok(), "pending summary cut short: verify found nothing");
    // The older summary under `v/s/` then reads: one snapshot short.
    let r = check("pending summary deleted", |s| {
        delete(s, first_key(s, b"v/d/").0)
    });
    names(
        "pending summary deleted",
        &r,
        &["stored subject summaries disagree"],
    );
    let r = check("position garbled", |s| put(s, b"v/n".to_vec(), vec![9]));
    assert!(!r.ok(), "position garbled: verify found nothing");
    let r = check("layout garbled", |s| put(s, b"v/m".to_vec(), b"{".to_vec()));
    assert!(!r.ok(), "layout garbled: verify found nothing");
    let r = check("activity deleted", |s| delete(s, first_key(s, b"v/a/").0));
    assert!(!r.ok(), "activity deleted: verify found nothing");
}

/// Proofs and roots from a store that keeps only the upper levels, at random sizes and
/// indexes across the whole log (lower nodes computed from records), equal those of a tree
/// keeping every node, and verify; the same with a few lower nodes kept as older stores
/// keep them.
#[test]
fn proofs_where_lower_levels_are_computed_equal_a_full_tree() {
    use spacesync_shared::merkle::{self, MemoryTree, NodeSource};
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(good().0.path(), copy.path());
    let store = SledStore::open(copy.path()).expect("open");
    let mut full = MemoryTree::new();
    for r in log::iter(&store) {
        let (_, rec) = r.expect("leaf");
        full.push(rec.leaf_hash()).expect("push");
    }
    let n = full.size();
    assert_eq!(n, size());
    let mut rng = Rng::new(12);
    let check = |store: &dyn Store, rng: &mut Rng| {
        for _ in 0..400 {
            let size = rng.range(1, n + 1);
            let index = rng.below(size);
            let root = log::root_at(store, size).expect("root");
            assert_eq!(
                root,
                merkle::root_at(&full, size).expect("full root"),
                "root at {size}"
            );
            let proof = log::inclusion_proof(store, index, size).expect("inclusion");
            assert_eq!(
                proof,
                merkle::inclusion_proof(&full, index, size).expect("full inclusion"),
                "inclusion of {index} in {size}"
            );
            let leaf = full.node(0, index).expect("leaf");
            merkle::verify_inclusion(&leaf, index, size, &proof, &root)
                .unwrap_or_else(|e| panic!("inclusion of {index} in {size}: {e}"));
            let old = rng.below(size + 1);
            let proof = log::consistency_proof(store, old, size).expect("consistency");
            assert_eq!(
                proof,
                merkle::consistency_proof(&full, old, size).expect("full consistency"),
                "consistency {old} -> {size}"
            );
            let old_root = log::root_at(store, old).expect("old root");
            merkle::verify_consistency(old, size, &old_root, &root, &proof)
                .unwrap_or_else(|e| panic!("consistency {old} -> {size}: {e}"));
        }
    };
    check(&store, &mut rng);
    // A few lower nodes kept (right), as a store written before keeps them.
    for i in (0..n).step_by(7) {
        put(
            &store,
            keys::node(0, i),
            full.node(0, i).expect("leaf").to_vec(),
        );
    }
    for i in (0..n / 2).step_by(5) {
        put(
            &store,
            keys::node(1, i),
            full.node(1, i).expect("node").to_vec(),
        );
    }
    check(&store, &mut rng);
    // Out-of-range asks are refused, not answered or panicked on.
    assert!(log::inclusion_proof(&store, n, n).is_err());
    assert!(log::consistency_proof(&store, n, n - 1).is_err());
    assert!(
        log::inclusion_proof(&store, 0, n + 5).is_err(),
        "a size past the log"
    );
}

/// One piece of damage of the kinds above, at a leaf or a node.
#[derive(Debug, Clone)]
enum Damage {
    NodeChanged(u8, u64),
    NodeDeleted(u8, u64),
    LowerNodeWrong(u8, u64),
    RecordCut(u64, usize),
    RecordVersion(u64),
    SeqChanged(u64),
    SigFlipped(u64),
    IndexDropped(u64),
    CountGarbled(u64),
    SummaryGarbled(u64),
}

fn damage() -> impl proptest::strategy::Strategy<Value = Damage> {
    use proptest::prelude::*;
    let n = size();
    prop_oneof![
        (2u8..7, 0u64..64).prop_map(|(l, i)| Damage::NodeChanged(l, i)),
        (2u8..7, 0u64..64).prop_map(|(l, i)| Damage::NodeDeleted(l, i)),
        (0u8..2, 0u64..300).prop_map(|(l, i)| Damage::LowerNodeWrong(l, i)),
        (0..n, 0usize..60).prop_map(|(i, k)| Damage::RecordCut(i, k)),
        (0..n).prop_map(Damage::RecordVersion),
        (0..n).prop_map(Damage::SeqChanged),
        (0..n).prop_map(Damage::SigFlipped),
        (0..n).prop_map(Damage::IndexDropped),
        (0u64..200).prop_map(Damage::CountGarbled),
        (0u64..40).prop_map(Damage::SummaryGarbled),
    ]
}

/// Applies `d`; whether it changed anything (a node past the tree, a cut past a record's
/// end, an index entry of a hub entry are no damage).
fn apply(s: &dyn Store, d: &Damage) -> bool {
    let nth = |prefix: &[u8], k: u64| {
        let all: Vec<_> = s.scan(prefix).map(|r| r.expect("read")).collect();
        all.get((k as usize) % all.len().max(1)).cloned()
    };
    match *d {
        Damage::NodeChanged(l, i) => {
            if s.get(&keys::node(l, i)).expect("get").is_some() {
                put(s, keys::node(l, i), vec![0xab; 32]);
                return true;
            }
        }
        Damage::NodeDeleted(l, i) => {
            if s.get(&keys::node(l, i)).expect("get").is_some() {
                delete(s, keys::node(l, i));
                return true;
            }
        }
        Damage::LowerNodeWrong(l, i) => {
            if (i + 1) << l <= size() {
                put(s, keys::node(l, i), vec![0xcd; 32]);
                return true;
            }
        }
        Damage::RecordCut(i, k) => {
            if let Some(b) = log::record_bytes(s, i).expect("get")
                && k < b.len()
            {
                put_leaf(s, i, b[..k].to_vec());
                return true;
            }
        }
        Damage::RecordVersion(i) => {
            if let Some(mut b) = log::record_bytes(s, i).expect("get")
                && let Some(v) = b.first_mut()
            {
                *v = 7;
                put_leaf(s, i, b);
                return true;
            }
        }
        Damage::SeqChanged(i) => {
            if let Ok(Some(mut rec)) = log::read(s, i) {
                rec.seq = rec.seq.wrapping_add(3);
                put_leaf(s, i, rec.encode().expect("encode"));
                return true;
            }
        }
        Damage::SigFlipped(i) => {
            if let Ok(Some(mut rec)) = log::read(s, i)
                && let Some(sig) = rec.envelope.signatures.first_mut()
            {
                sig.sig[11] ^= 0x20;
                put_leaf(s, i, rec.encode().expect("encode"));
                return true;
            }
        }
        Damage::IndexDropped(i) => {
            if let Ok(Some(rec)) = log::read(s, i)
                && let Some(src) = &rec.source
                && let Ok(Some(key)) = spacesync_hub::log::index::key_of(s, src, rec.seq)
            {
                delete(s, key);
                return true;
            }
        }
        Damage::CountGarbled(k) => {
            if let Some((key, v)) = nth(b"v/c/", k) {
                put(s, key, v[..v.len() / 3].to_vec());
                return true;
            }
        }
        Damage::SummaryGarbled(k) => {
            // One a pending value (`v/d/`) shadows is no damage: the views read that one.
            if let Some((key, v)) = nth(b"v/s/", k) {
                let read = views::read_as_folded(s).expect("read the views");
                if read.get(&key) == Some(&v) {
                    put(s, key, vec![0xee; 9]);
                    return true;
                }
            }
        }
    }
    false
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Random mixtures of the damage above: the serial reference and 1, 2 and 4 threads
    /// give one report, and it is not sound.
    #[test]
    fn random_mixed_damage_gives_one_report_on_any_number_of_threads(
        ds in proptest::collection::vec(damage(), 1..6)
    ) {
        let mut damaged = false;
        let r = check(&format!("{ds:?}"), |s| {
            for d in &ds {
                damaged |= apply(s, d);
            }
        });
        proptest::prop_assert_eq!(r.ok(), !damaged, "{:?}: {:#?}", ds, r.problems);
    }
}

/// Records that decode but whose envelope no verifier expects reach the checking threads:
/// a signature of the wrong length (short, long, empty), no signature, two, another key
/// id, another payload type, an empty payload. Named at their leaf by every way of
/// checking, and the walk goes on past them.
#[test]
fn envelopes_no_verifier_expects_are_named_at_their_leaf() {
    type Change = fn(&mut LogRecord);
    let changes: [(&str, Change); 8] = [
        ("a 3-byte signature", |r| {
            r.envelope.signatures[0].sig.truncate(3)
        }),
        ("a 200-byte signature", |r| {
            r.envelope.signatures[0].sig.resize(200, 7)
        }),
        ("an empty signature", |r| {
            r.envelope.signatures[0].sig.clear()
        }),
        ("no signature", |r| r.envelope.signatures.clear()),
        ("two signatures", |r| {
            let s = r.envelope.signatures[0].clone();
            r.envelope.signatures.push(s);
        }),
        ("another key id", |r| {
            r.envelope.signatures[0].keyid = "00".repeat(32);
        }),
        ("another payload type", |r| {
            r.envelope.payload_type = "application/octet-stream".into();
        }),
        ("an empty payload", |r| r.envelope.payload.clear()),
    ];
    let mut missed = Vec::new();
    for (i, (name, change)) in changes.into_iter().enumerate() {
        // Source entries at chunk edges and inside; and one hub entry (the first leaf).
        for at in [255u64, 256, 300 + i as u64, 0] {
            let r = check(name, |s| {
                let mut rec = read(s, at);
                change(&mut rec);
                put_leaf(s, at, rec.encode().expect("encode"));
            });
            if !r
                .problems
                .iter()
                .any(|p| p.contains(&format!("log leaf {at}")))
            {
                missed.push(format!("{name} at {at}: {:?}", r.problems));
            }
            assert_eq!(r.leaves, size(), "{name} at {at}: the walk goes on");
        }
    }
    assert_eq!(missed, Vec::<String>::new(), "damage verify did not name");
}

/// The source index holds, beside the leaf and the hash, the time the entry was received:
/// what a receipt re-issued for a resent entry says. Changed, the hub would answer a resend
/// with a receipt that contradicts the first one and the log. (One run per batch holds the
/// time of all its entries: bytes 17..25 of the layout in `hub/src/log/index.rs`.)
#[test]
fn a_source_index_entry_with_another_receive_time_is_named() {
    let at = 333u64;
    let r = check("index time changed", |s| {
        let rec = read(s, at);
        let source = rec.source.as_ref().expect("a source entry");
        let key = spacesync_hub::log::index::key_of(s, source, rec.seq)
            .expect("lookup")
            .expect("indexed");
        let mut v = s.get(&key).expect("get").expect("indexed");
        assert_eq!(v[0], 1, "a run of the current layout");
        let ms = i64::from_be_bytes(v[17..25].try_into().expect("8 bytes")) + 86_400_000;
        v[17..25].copy_from_slice(&ms.to_be_bytes());
        put(s, key, v);
    });
    names(
        "index time changed",
        &r,
        &[&format!("log leaf {at}"), "receive time"],
    );
}

/// A space count the rebuild finds equal to the stored one early (and then reads from the
/// store), which a later entry changes (its withdrawal), is compared again: a store that
/// kept the count as it stood before the withdrawal is named, however often the rebuild
/// lets go of equal counts.
#[test]
fn a_count_changed_after_it_settled_is_compared_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut a = Agent::new("gd-a", 1, "440000");
    th.register(&a);
    let count = teachers("440106", "4401060001", "2018-11-05", 10);
    let out = th.hub.ingest(a.batch(&[count])).expect("ingest");
    assert_eq!(out.status, 200, "{:?}", out.response);
    let counts = |s: &dyn Store| -> Vec<(Vec<u8>, Vec<u8>)> {
        s.scan(b"v/c/").map(|kv| kv.expect("read")).collect()
    };
    let before = counts(&*th.hub.store);
    assert_eq!(before.len(), 1, "one stored block of counts");
    let withdrawn = a.batch(&[withdrawal(a.next - 1)]);
    let out = th.hub.ingest(withdrawn).expect("ingest");
    assert_eq!(out.status, 200, "{:?}", out.response);
    let after = counts(&*th.hub.store);
    assert_eq!(after.len(), 1);
    assert_ne!(
        after[0].1, before[0].1,
        "the withdrawal marks the stored count"
    );
    for every in [1, 2, u64::MAX] {
        let found = maintenance::views_problems(&*th.hub.store, every).expect("compare");
        assert!(found.is_empty(), "sound, settling every {every}: {found:?}");
    }
    // The store loses the mark: the count reads as it did before its withdrawal.
    put(&*th.hub.store, before[0].0.clone(), before[0].1.clone());
    for every in [1, 2, u64::MAX] {
        let found = maintenance::views_problems(&*th.hub.store, every).expect("compare");
        assert!(
            found
                .iter()
                .any(|p| p.contains("stored views disagree with the log")),
            "settling every {every}: {found:?}"
        );
    }
}
