//! Review 25: attacks on `verify` after b788543 (settled space counts skipped in the views
//! comparison), ae766dd (the registry replayed along the walk) and fc7420d (codes read
//! through a `&str` visitor).
//!
//! The views comparison before b788543 is `differing_items` / `differing_links` with no
//! key skipped (`same` naming none): each test below compares that with the new one
//! (`Rebuilt::reads_stored`) on the same damaged store, at several settle intervals.
//! Registry damage is judged by `verify` (serial and parallel must agree); set
//! `REVIEW25_OUT=<dir>` to write each report to `<dir>/<name>.txt` (the review diffed
//! those against the same tests run at 0e929fe).

mod common;

use common::*;
use serde_json::json;
use spacesync_hub::log_check::Checking;
use spacesync_hub::maintenance::{self, VerifyReport};
use spacesync_hub::registry::{SourceRecord, SourceStatus};
use spacesync_hub::store::{SledStore, Store, WriteBatch, keys};
use spacesync_hub::views;
use spacesync_shared::RegionCode;
use spacesync_shared::region::SchoolCode;
use spacesync_shared::wire::IngestBatch;

const EVERY: [u64; 8] = [1, 2, 3, 4, 8, 16, 32, u64::MAX];

fn put(s: &dyn Store, k: Vec<u8>, v: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.put(k, v);
    s.apply(b).expect("apply");
}

fn delete(s: &dyn Store, k: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.delete(k);
    s.apply(b).expect("apply");
}

fn count_key(i: u64) -> Vec<u8> {
    [b"v/c/".as_slice(), &i.to_be_bytes()].concat()
}

fn item_key(i: u64) -> Vec<u8> {
    [b"v/i/".as_slice(), &i.to_be_bytes()].concat()
}

fn counts(s: &dyn Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    s.scan(b"v/c/").map(|kv| kv.expect("read")).collect()
}

/// A varint as the views' codec writes it.
fn uint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_uint(b: &[u8]) -> (u64, usize) {
    let (mut v, mut n) = (0u64, 0usize);
    loop {
        let x = b[n];
        v |= u64::from(x & 0x7f) << (7 * n);
        n += 1;
        if x & 0x80 == 0 {
            return (v, n);
        }
    }
}

/// A block value's counts: (offset, the count's encoding).
fn parts(block: &[u8]) -> Vec<(u8, Vec<u8>)> {
    assert_eq!(block[0], 2, "a block");
    let mut out = Vec::new();
    let mut i = 1;
    while i < block.len() {
        let off = block[i];
        let (len, n) = read_uint(&block[i + 1..]);
        let start = i + 1 + n;
        out.push((off, block[start..start + len as usize].to_vec()));
        i = start + len as usize;
    }
    out
}

/// A count's encoding with its link back set to `back` (0: first of its subject).
fn relinked(count: &[u8], back: u64) -> Vec<u8> {
    assert_eq!(count[0], 3, "a linked count");
    let (_, n) = read_uint(&count[1..]);
    let mut out = vec![3];
    uint(back, &mut out);
    out.extend_from_slice(&count[1 + n..]);
    out
}

/// The views comparison as `verify` makes it, settling every `every` leaves: the items'
/// and the links' verdicts, old (no key skipped, as at 0e929fe) and new.
#[allow(clippy::type_complexity)]
fn compared(s: &dyn Store, every: u64) -> [(String, String); 2] {
    let baseline = views::stored_baseline(s).expect("baseline").expect("views");
    let stored = views::Views::load(s, baseline).expect("load");
    let rebuilt =
        maintenance::rebuild_views_settling(s, baseline, u64::MAX, every, |_| {}).expect("rebuild");
    [false, true].map(|new| {
        let same = |k: &[u8]| new && rebuilt.reads_stored(k);
        let items = views::differing_items(&rebuilt.views, &rebuilt.reader(s), &stored, s, &same);
        let links = views::differing_links(s, &rebuilt.reader(s), &same);
        (format!("{items:?}"), format!("{links:?}"))
    })
}

/// Whether the rebuild settling every `every` leaves reads any stored count from the
/// store (the new code skips something).
fn skips_any(s: &dyn Store, every: u64) -> bool {
    let baseline = views::stored_baseline(s).expect("baseline").expect("views");
    let rebuilt =
        maintenance::rebuild_views_settling(s, baseline, u64::MAX, every, |_| {}).expect("rebuild");
    counts(s).iter().any(|(k, _)| rebuilt.reads_stored(k))
}

/// Old and new views comparison agree, and the views are named damaged, at every settle
/// interval (`damaged`: whether the store is; `None`: not asked, old and new only agree).
fn old_and_new_agree(name: &str, s: &dyn Store, damaged: impl Into<Option<bool>>) {
    let damaged = damaged.into();
    for every in EVERY {
        let [old, new] = compared(s, every);
        assert_eq!(
            old, new,
            "{name}, settling every {every}: the views comparison before b788543 (left) and after (right) differ"
        );
        let found = maintenance::views_problems(s, every).expect("compare");
        if let Some(damaged) = damaged {
            assert_eq!(
                !found.is_empty(),
                damaged,
                "{name}, settling every {every}: {found:?}"
            );
        }
    }
}

/// One source, 40 counts over 5 schools of 440106 (blocks 15 and 31 full, 47 partial),
/// an activity at leaf 20 or so, then the hub of it (kept open).
fn counts_hub(dir: &std::path::Path) -> (TestHub, Agent) {
    let th = TestHub::open(dir);
    let mut a = Agent::new("gd-a", 1, "440000");
    th.register(&a);
    for round in 0..4u64 {
        let records: Vec<_> = (0..10u64)
            .map(|i| {
                if round == 2 && i == 3 {
                    activity("440106", "2018-11-05", "活动")
                } else {
                    teachers(
                        "440106",
                        &format!("44010600{:02}", i % 5),
                        &format!("2018-11-{:02}", 1 + round * 3 + i / 5),
                        10 + round * 10 + i,
                    )
                }
            })
            .collect();
        let out = th.hub.ingest(a.batch(&records)).expect("ingest");
        assert_eq!(out.status, 200, "{:?}", out.response);
    }
    (th, a)
}

#[test]
fn sound_stores_agree_old_and_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (th, _) = counts_hub(dir.path());
    let s = &*th.hub.store;
    assert!(skips_any(s, 16), "the new comparison skips settled blocks");
    old_and_new_agree("sound", s, false);
}

/// Every stored count block changed in one byte, deleted, or kept from before a later
/// batch: the old and the new comparison say the same, and the views are named.
#[test]
fn each_count_block_damaged_is_named_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (th, _) = counts_hub(dir.path());
    let s = &*th.hub.store;
    for (k, v) in counts(s) {
        for at in [v.len() - 1, v.len() / 2, 3] {
            let mut bad = v.clone();
            bad[at] ^= 0x01;
            put(s, k.clone(), bad);
            let damaged = !maintenance::views_problems(s, u64::MAX)
                .expect("c")
                .is_empty();
            // Not every byte is read (a flag byte may read alike); what the old comparison
            // says the new one must say.
            for every in EVERY {
                let [old, new] = compared(s, every);
                assert_eq!(old, new, "byte {at} of {k:?}, every {every}");
                let found = maintenance::views_problems(s, every).expect("compare");
                assert_eq!(
                    !found.is_empty(),
                    damaged,
                    "byte {at} of {k:?}, every {every}"
                );
            }
        }
        delete(s, k.clone());
        old_and_new_agree(&format!("{k:?} deleted"), s, true);
        put(s, k, v);
    }
    old_and_new_agree("restored", s, false);
}

/// Counts that settle and are changed afterwards by a later entry: a withdrawal of an
/// early count, a withdrawal of a count in the same block as a later one, and a late-dated
/// snapshot that relinks its subject's chain (the link of a count in an earlier block).
/// The store keeps each changed value as it stood before: named, old and new alike.
#[test]
fn counts_changed_after_they_settle_are_named() {
    for case in ["withdraw early", "withdraw same block", "late snapshot"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (th, mut a) = counts_hub(dir.path());
        let s = &*th.hub.store;
        let before = counts(s);
        let records = match case {
            // Seq 2: leaf 2 or so, block 15.
            "withdraw early" => vec![withdrawal(2)],
            // Seq 34 is in block 47 with the counts after it.
            "withdraw same block" => vec![
                teachers("440106", "4401060001", "2018-11-20", 77),
                withdrawal(34),
            ],
            // Dated before every snapshot of school 2: relinks its chain's first.
            _ => vec![teachers("440106", "4401060002", "2018-10-01", 5)],
        };
        let out = th.hub.ingest(a.batch(&records)).expect("ingest");
        assert_eq!(out.status, 200, "{case}: {:?}", out.response);
        old_and_new_agree(case, s, false);
        let after = counts(s);
        let mut changed = 0;
        for (k, v) in &before {
            let now = after.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.clone());
            if now.as_ref() == Some(v) {
                continue;
            }
            changed += 1;
            put(s, k.clone(), v.clone());
            old_and_new_agree(&format!("{case}: {k:?} as before"), s, true);
            put(s, k.clone(), now.expect("still stored"));
        }
        assert!(changed > 0, "{case}: a stored count changed");
        old_and_new_agree(case, s, false);
    }
}

/// Count keys the rebuild never writes: a block past the log, a block key holding one
/// count (layout 2's form), a count under a key that ends no block.
#[test]
fn extra_count_keys_are_named_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (th, _) = counts_hub(dir.path());
    let s = &*th.hub.store;
    let (k15, block) = counts(s).into_iter().next().expect("block 15");
    assert_eq!(k15, count_key(15));
    let three = parts(&block)
        .into_iter()
        .find(|(o, _)| *o == 3)
        .expect("count 3")
        .1;
    // A block past the log: named by neither (its counts are past the views' position,
    // and the links pair none of them); old and new alike.
    put(s, count_key(1023), block.clone());
    old_and_new_agree("block past the log", s, None);
    delete(s, count_key(1023));
    // Count 3 again under its own key, as layout 2 kept it (same link). Named by both
    // (the block it falls in is not let go of by the rebuild: a stray key lies among its
    // indexes, so the comparison reads the block as before).
    put(s, count_key(3), three.clone());
    for every in EVERY {
        let [old, new] = compared(s, every);
        assert!(
            old.0.starts_with("Ok((") && !old.0.starts_with("Ok((0,"),
            "{old:?}"
        );
        assert!(
            new.0.starts_with("Ok((") && !new.0.starts_with("Ok((0,"),
            "{new:?}"
        );
        assert_eq!(old.1, new.1, "links, every {every}");
        let found = maintenance::views_problems(s, every).expect("compare");
        assert!(
            !found.is_empty(),
            "count 3 under its own key, every {every}"
        );
    }
    delete(s, count_key(3));
    old_and_new_agree("clean", s, false);
}

/// The review's finding in b788543, mended: a count stored twice — in its block and under a
/// key of its own (the form of layout 2) with another link — is named by the old
/// comparison twice: its item, and its link to another previous snapshot than the log
/// gives. Had the rebuild let go of the block, the comparison would skip it on both sides
/// and the link comparison (which pairs only log indexes both sides hold) would find no
/// pair for the stray count: `views::settle` keeps a block that a stray key falls in.
#[test]
fn a_stray_count_with_another_link_is_still_named_by_the_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (th, _) = counts_hub(dir.path());
    let s = &*th.hub.store;
    let (_, block) = counts(s).into_iter().next().expect("block 15");
    let (_, eight) = parts(&block)
        .into_iter()
        .find(|(o, _)| *o == 8)
        .expect("count 8");
    // Count 8 (school 0's second, linked 5 back) under its own key, linked 1 back.
    put(s, count_key(8), relinked(&eight, 1));
    for every in EVERY {
        let [old, new] = compared(s, every);
        assert!(old.1.contains("Some(8)"), "old links name leaf 8: {old:?}");
        assert_eq!(
            old.1, new.1,
            "settling every {every}: the link comparison before b788543 named the stray count's link, after it does not (items old {} / new {})",
            old.0, new.0
        );
    }
}

/// A ledger item copied under a space count's log index (damage to `v/i/`): it loaded as
/// the item it was copied from, and neither comparison named it (the review's second old
/// gap); an item stored under another index than its own is now damage the load names.
#[test]
fn a_ledger_item_at_a_count_index_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (th, _) = counts_hub(dir.path());
    let s = &*th.hub.store;
    let (k, v) = s.scan(b"v/i/").next().expect("an item").expect("read");
    put(s, item_key(5), v.clone());
    for every in EVERY {
        let found = maintenance::views_problems(s, every).expect("compare");
        assert!(
            found
                .iter()
                .any(|p| p.contains("stored views are damaged") && p.contains("v/i/5")),
            "settling every {every}: {found:?}"
        );
    }
    delete(s, item_key(5));
    put(s, k, v);
    old_and_new_agree("clean", s, false);
}

// ----- registry (ae766dd) -----

/// Two sources; gd-a moves to a new key in its chain (a key transition) half way.
fn registry_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut a = Agent::new("gd-a", 1, "440000");
    let mut b = Agent::new("bj-b", 2, "110000");
    th.register(&a);
    th.register(&b);
    for round in 0..3u64 {
        let out = th
            .hub
            .ingest(a.batch(&[teachers("440106", "4401060001", "2018-11-01", 10 + round)]))
            .expect("ingest");
        assert_eq!(out.status, 200, "{:?}", out.response);
        let out = th
            .hub
            .ingest(b.batch(&[activity("110105", "2018-11-05", &format!("活动 {round}"))]))
            .expect("ingest");
        assert_eq!(out.status, 200, "{:?}", out.response);
        if round == 1 {
            let env = a.transition(&ed25519_dalek::SigningKey::from_bytes(&[77; 32]));
            let out = th
                .hub
                .ingest(IngestBatch {
                    source: a.id.clone(),
                    entries: vec![env],
                })
                .expect("ingest");
            assert_eq!(out.status, 200, "{:?}", out.response);
        }
    }
    drop(th);
    dir
}

fn verify_all(name: &str, s: &dyn Store) -> VerifyReport {
    let key = hub_key().verifying_key();
    let serial = maintenance::verify_with(s, &key, ORIGIN, Checking::Serial, |_| {})
        .unwrap_or_else(|e| panic!("{name}: serial: {e}"));
    for t in [1usize, 2, 4] {
        let how = Checking::Parallel {
            threads: t.try_into().expect("threads"),
        };
        let r = maintenance::verify_with(s, &key, ORIGIN, how, |_| {})
            .unwrap_or_else(|e| panic!("{name}: {how:?}: {e}"));
        assert_eq!(
            (r.leaves, r.sources, &r.problems),
            (serial.leaves, serial.sources, &serial.problems),
            "{name}: {how:?} differs from serial"
        );
    }
    if let Ok(out) = std::env::var("REVIEW25_OUT") {
        std::fs::create_dir_all(&out).expect("out dir");
        let text = format!(
            "leaves {} sources {}\n{}\n",
            serial.leaves,
            serial.sources,
            serial.problems.join("\n")
        );
        std::fs::write(format!("{out}/{name}.txt"), text).expect("write");
    }
    serial
}

fn with_copy(name: &str, damage: impl FnOnce(&dyn Store)) -> VerifyReport {
    static GOOD: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let good = GOOD.get_or_init(registry_store);
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(good.path(), copy.path());
    let s = SledStore::open(copy.path()).expect("open");
    damage(&s);
    verify_all(name, &s)
}

/// The `reg/` record stored under `id`'s key.
fn reg(s: &dyn Store, id: &str) -> SourceRecord {
    let v = s
        .get(&keys::reg(&id.parse().expect("id")))
        .expect("get")
        .expect("stored");
    serde_json::from_slice(&v).expect("a source record")
}

/// Stores `rec` under `id`'s key (whatever its own id).
fn put_reg(s: &dyn Store, id: &str, rec: &SourceRecord) {
    put(
        s,
        keys::reg(&id.parse().expect("id")),
        serde_json::to_vec(rec).expect("json"),
    );
}

fn disagrees_first(name: &str, r: &VerifyReport, id: &str) {
    assert!(
        r.problems
            .first()
            .is_some_and(|p| p.contains("stored registry disagrees")
                && p.contains(&format!("first at source {id}"))),
        "{name}: {:#?}",
        r.problems
    );
    assert_eq!(
        r.problems
            .iter()
            .filter(|p| p.contains("stored registry disagrees"))
            .count(),
        1,
        "{name}"
    );
}

#[test]
fn registry_damage_is_named_first() {
    let r = with_copy("sound", |_| {});
    assert!(r.ok(), "{:#?}", r.problems);
    // A key of gd-a's changed (its first, and its transitioned one).
    for slot in [0usize, 1] {
        let name = format!("gd-a key {slot} changed");
        let r = with_copy(&name, |s| {
            let mut v = reg(s, "gd-a");
            v.keys[slot].key = Agent::new("gd-x", 9, "440000").key_line();
            put_reg(s, "gd-a", &v);
        });
        disagrees_first(&name, &r, "gd-a");
    }
    // The transition lost from reg/ (the old key signs on).
    let r = with_copy("transition lost", |s| {
        let mut v = reg(s, "gd-a");
        v.keys.truncate(1);
        put_reg(s, "gd-a", &v);
    });
    disagrees_first("transition lost", &r, "gd-a");
    assert!(r.problems.len() == 1, "{:#?}", r.problems);
    // Its from_seq moved.
    let r = with_copy("from_seq moved", |s| {
        let mut v = reg(s, "gd-a");
        v.keys[1].from_seq = 2;
        put_reg(s, "gd-a", &v);
    });
    disagrees_first("from_seq moved", &r, "gd-a");
    // Revoked in reg/ only; and its scope changed.
    let r = with_copy("revoked in reg", |s| {
        let mut v = reg(s, "bj-b");
        v.status = SourceStatus::Revoked;
        v.revoked_at = Some("2018-11-06T00:00:00Z".parse().expect("time"));
        put_reg(s, "bj-b", &v);
    });
    disagrees_first("revoked in reg", &r, "bj-b");
    let r = with_copy("scope changed", |s| {
        let mut v = reg(s, "bj-b");
        v.scope = RegionCode::parse("440000").expect("region");
        put_reg(s, "bj-b", &v);
    });
    disagrees_first("scope changed", &r, "bj-b");
    // A source deleted from reg/, one added.
    let r = with_copy("bj-b deleted", |s| {
        delete(s, keys::reg(&"bj-b".parse().expect("id")))
    });
    disagrees_first("bj-b deleted", &r, "bj-b");
    let r = with_copy("zz-z added", |s| {
        let mut v = reg(s, "bj-b");
        v.id = "zz-z".parse().expect("id");
        put_reg(s, "zz-z", &v);
    });
    disagrees_first("zz-z added", &r, "zz-z");
    // A record under another source's key: reg/ read in key order, not id order.
    let r = with_copy("record under another key", |s| {
        let v = reg(s, "bj-b");
        put_reg(s, "zz-z", &v);
        delete(s, keys::reg(&"bj-b".parse().expect("id")));
    });
    assert!(!r.ok(), "record under another key: {:#?}", r.problems);
}

/// A registry entry of the log that no longer reads, a leaf missing (the walk stops
/// early: the registry replayed as before), each with and without reg/ damaged.
#[test]
fn registry_with_a_damaged_log() {
    let first_hub_leaf = |s: &dyn Store| -> u64 {
        (0..)
            .find(|i| {
                spacesync_hub::log::read(s, *i)
                    .expect("read")
                    .expect("leaf")
                    .source
                    .is_none()
            })
            .expect("a hub entry")
    };
    let change_key = |s: &dyn Store| {
        let mut v = reg(s, "gd-a");
        v.keys[0].key = Agent::new("gd-x", 9, "440000").key_line();
        put_reg(s, "gd-a", &v);
    };
    for reg_damaged in [false, true] {
        let name = format!("hub entry unreadable, reg damaged {reg_damaged}");
        let r = with_copy(&name, |s| {
            let i = first_hub_leaf(s);
            let mut rec = spacesync_hub::log::read(s, i).expect("r").expect("leaf");
            rec.envelope.payload = b"{\"not\":\"an entry\"}".to_vec();
            spacesync_hub::log::replace_record(s, i, Some(rec.encode().expect("encode")))
                .expect("replace");
            if reg_damaged {
                change_key(s);
            }
        });
        assert!(!r.ok(), "{name}");
        let name = format!("leaf 5 missing, reg damaged {reg_damaged}");
        let r = with_copy(&name, |s| {
            spacesync_hub::log::replace_record(s, 5, None).expect("delete leaf");
            if reg_damaged {
                change_key(s);
            }
        });
        assert!(
            r.problems.iter().any(|p| p.contains("log leaf 5")),
            "{name}: {:#?}",
            r.problems
        );
        if reg_damaged {
            disagrees_first(&name, &r, "gd-a");
        }
    }
}

// ----- codes (fc7420d, and from_u32 / from_u64 of b788543) -----

#[test]
fn codes_from_json_read_as_before() {
    let region = |s: &str| serde_json::from_str::<RegionCode>(s).map_err(|e| e.to_string());
    let school = |s: &str| serde_json::from_str::<SchoolCode>(s).map_err(|e| e.to_string());
    assert!(region(r#""440106""#).is_ok());
    assert!(region(r#""\u0034\u0034\u0030\u0031\u0030\u0036""#).is_ok());
    // An escaped NUL, a surrogate pair, a lone surrogate, a long string.
    for bad in [
        r#""44010\u0000""#,
        r#""\ud83d\ude00""#,
        r#""\ud800""#,
        "440106",
        "4.40106e5",
        "true",
        "null",
        "[\"440106\"]",
        "{\"a\":\"440106\"}",
    ] {
        assert!(region(bad).is_err(), "{bad}");
    }
    let huge = format!("\"{}\"", "4".repeat(1 << 20));
    assert!(region(&huge).is_err());
    assert!(school(&huge).is_err());
    assert!(school(r#""0000000000""#).is_ok());
    assert!(school(r#""\u0030000000000""#).is_ok());
    assert!(school("4144010601").is_err());
    assert_eq!(
        region("440106").unwrap_err(),
        "invalid type: integer `440106`, expected a string at line 1 column 6"
    );
    // Through a JSON tree, as map keys, and inside an untagged enum (buffered content).
    let v: std::collections::BTreeMap<RegionCode, u8> =
        serde_json::from_str(r#"{"440106":1,"\u0031\u0031\u0030\u0030\u0030\u0030":2}"#)
            .expect("map keys");
    assert_eq!(v.len(), 2);
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Either {
        Code { code: RegionCode },
        Other(serde_json::Value),
    }
    let e: Either = serde_json::from_str(r#"{"code":"\u0034\u0034\u0030\u0031\u0030\u0036"}"#)
        .expect("untagged");
    assert!(matches!(e, Either::Code { .. }));
    let tree: RegionCode = serde_json::from_value(json!("440106")).expect("tree");
    assert_eq!(tree.to_string(), "440106");
    for n in [0u64, 9_999_999_999, 10_000_000_000, u64::MAX] {
        assert_eq!(
            SchoolCode::from_u64(n).ok(),
            SchoolCode::parse(&format!("{n:010}")).ok()
        );
    }
    for n in [999_999u32, 1_000_000, 4_401_060, u32::MAX] {
        assert_eq!(
            RegionCode::from_u32(n).ok(),
            RegionCode::parse(&format!("{n:06}")).ok()
        );
    }
}
