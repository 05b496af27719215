//! Attacks on `views::prepare` at a start: a start killed while it merges the subjects
//! again for a changed baseline date, then a start under the baseline of before (the
//! operator put campaign.toml back). Whatever start comes next must serve the figures a
//! merge from the stored snapshots gives for its baseline, as `rebuild` would.

mod common;

use std::sync::Arc;

use chrono::Duration;
use common::*;
use spacesync_hub::store::{MemStore, Store, WriteBatch};
use spacesync_hub::views::{self, Views};
use spacesync_shared::{Campaign, Record, SourceId};

/// Views over twelve schools, each with a snapshot before the baseline and one five days
/// after it (so the baseline values differ between the two dates).
fn views_of_twelve_schools() -> (DirectViews, chrono::NaiveDate) {
    let baseline = Campaign::builtin_2018().baseline;
    let mut dv = DirectViews::new(baseline);
    let a = SourceId::parse("gd-a").expect("id");
    let day = |d: i64| (baseline + Duration::days(d)).to_string();
    let mut entries: Vec<(SourceId, u64, Record)> = Vec::new();
    for school in 0..12u64 {
        for (d, n) in [(-3, 10 + school), (5, 100 + school)] {
            let seq = entries.len() as u64 + 1;
            entries.push((
                a.clone(),
                seq,
                record_of(&teachers(
                    "440106",
                    &format!("41440106{:02}", school),
                    &day(d),
                    n,
                )),
            ));
        }
    }
    dv.apply_batch(0, &entries, t0());
    (dv, baseline)
}

/// A copy of every key of `store`.
fn copy(store: &MemStore) -> Arc<MemStore> {
    let mut all = WriteBatch::new();
    for kv in store.scan(b"") {
        let (k, v) = kv.expect("read");
        all.put(k, v);
    }
    let copy = MemStore::new();
    copy.apply(all).expect("apply");
    Arc::new(copy)
}

/// The views a start over `store` for `baseline` serves, against a merge afresh of the
/// stored snapshots for that baseline.
fn served_equals_afresh(what: &str, store: &MemStore, baseline: chrono::NaiveDate) {
    views::prepare(store, baseline).expect("prepare");
    let loaded = Views::load(store, baseline).expect("load");
    let mut campaign = Campaign::builtin_2018();
    campaign.baseline = baseline;
    let afresh = loaded.rollup_afresh(store, &campaign).expect("afresh");
    let served = loaded.rollup(&campaign);
    assert_eq!(served.nation, afresh.nation, "{what}: nation");
    assert_eq!(served.schools(), afresh.schools(), "{what}: schools");
    let rebuilt = spacesync_hub::maintenance::rebuild_views(store, baseline, |_| {})
        .expect("rebuild")
        .views;
    assert_eq!(
        loaded.differing_subjects(&rebuilt),
        Vec::<String>::new(),
        "{what}: summaries against a rebuild"
    );
}

#[test]
fn a_start_killed_while_merging_for_a_new_baseline_then_one_under_the_old_baseline() {
    let (dv, old) = views_of_twelve_schools();
    let new = old + Duration::days(5);
    for killed_after in 0..6 {
        let leaked = copy(&dv.store);
        let killed = stores::KilledAfter::new(leaked.clone(), killed_after);
        // Two summaries a write: six writes for twelve subjects, then the last one.
        assert!(
            views::prepare_in_batches(&killed, new, 2).is_err(),
            "killed after {killed_after} writes"
        );
        served_equals_afresh(
            &format!("killed after {killed_after} writes, started under the old baseline"),
            &leaked,
            old,
        );
        served_equals_afresh(
            &format!("killed after {killed_after} writes, then the new baseline"),
            &leaked,
            new,
        );
    }
}

/// Whatever damage a start refuses in the stored views (`v/m` garbled or of an unknown
/// layout, `v/n` not 8 bytes, a summary that does not decode, a space count among the
/// ledger items), `rebuild` — what the refusal tells the operator to run — makes a store
/// a start opens and serves as the snapshots say.
#[test]
fn rebuild_repairs_what_a_start_refuses() {
    let (dv, baseline) = views_of_twelve_schools();
    type Damage = (&'static str, fn(&MemStore));
    let damages: [Damage; 5] = [
        ("v/m garbled", |s| put(s, b"v/m".to_vec(), b"{".to_vec())),
        ("v/m of another layout", |s| {
            put(
                s,
                b"v/m".to_vec(),
                br#"{"layout":99,"baseline":"2018-09-20"}"#.to_vec(),
            )
        }),
        ("v/n cut", |s| put(s, b"v/n".to_vec(), vec![1, 2])),
        ("a summary garbled", |s| {
            let (k, _) = s.scan(b"v/s/").next().expect("summary").expect("read");
            put(s, k, vec![0xee; 5]);
        }),
        ("a space count among the items", |s| {
            let (k, v) = s.scan(b"v/c/").next().expect("count").expect("read");
            let mut item = b"v/i/".to_vec();
            item.extend_from_slice(&k[4..]);
            put(s, item, v);
        }),
    ];
    for (what, damage) in damages {
        let store = copy(&dv.store);
        damage(&store);
        let refused = views::prepare(store.as_ref(), baseline)
            .and_then(|_| Views::load(store.as_ref(), baseline));
        let said = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!said.is_empty(), "{what}: a start refuses nothing");
        // The refusal names the key as people read it (it said `v/i/Some(0)`).
        assert!(!said.contains("Some("), "{what}: {said}");
        spacesync_hub::maintenance::rebuild(store.as_ref(), baseline, |_| {})
            .unwrap_or_else(|e| panic!("{what}: rebuild: {e}"));
        served_equals_afresh(&format!("{what}, rebuilt"), &store, baseline);
    }
}

fn put(s: &MemStore, k: Vec<u8>, v: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.put(k, v);
    s.apply(b).expect("apply");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Random bytes in place of stored views — a summary, a space count, a list, a ledger
    /// item, an activity, an extension, a notice rule change, the position — make a start, `rollup_afresh`,
    /// `rebuild` and `verify`'s comparisons answer an error or a value, never panic.
    #[test]
    fn random_bytes_in_the_stored_views_never_panic(
        which in 0usize..8,
        nth in 0usize..40,
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
    ) {
        let (dv, baseline) = views_of_twelve_schools();
        let store = copy(&dv.store);
        let prefix: &[u8] = [&b"v/s/"[..], b"v/c/", b"v/l/", b"v/i/", b"v/a/", b"v/x/", b"v/r/", b"v/n"][which];
        let keys: Vec<Vec<u8>> = store.scan(prefix).map(|r| r.expect("read").0).collect();
        let key = if keys.is_empty() {
            [prefix, &nth.to_be_bytes()[..]].concat()
        } else {
            keys[nth % keys.len()].clone()
        };
        put(&store, key, bytes);
        let mut campaign = Campaign::builtin_2018();
        campaign.baseline = baseline;
        if let Ok(v) = Views::load(store.as_ref(), baseline) {
            let _ = v.rollup(&campaign);
            let _ = v.rules(&campaign);
            let _ = v.rollup_afresh(store.as_ref(), &campaign);
            let _ = v.items(store.as_ref());
        }
        let _ = views::prepare(store.as_ref(), baseline);
        let _ = spacesync_hub::maintenance::rebuild_views(store.as_ref(), baseline, |_| {});
    }
}
