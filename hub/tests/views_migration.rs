//! A store written in the older layout of the views (every item, space counts included,
//! under `v/i/` as JSON; no summaries, no per-source activity) is converted once when the
//! hub opens it: space counts moved to their subjects in bounded, flushed batches,
//! summaries and activity written, then `v/m`. A start killed half-way through is finished
//! by the next one. The converted hub answers exactly what the hub that wrote the store
//! answered, and `verify` finds nothing wrong.

mod common;

use std::sync::Arc;

use chrono::NaiveDate;
use common::layouts::*;
use common::*;
use serde_json::{Value, json};
use spacesync_hub::maintenance;
use spacesync_hub::store::{SledStore, Store, WriteBatch};
use spacesync_hub::views::{self, Extension, HubEntry, Views};
use spacesync_shared::{Campaign, Record, RegionCode};

/// Everything the hub answers about its views, and the items it holds.
async fn answers(th: &TestHub) -> (Vec<Value>, Vec<(Value, Value)>, usize, usize) {
    let mut pages = Vec::new();
    for path in [
        "/v1/progress",
        "/v1/regions/440000",
        "/v1/regions/440106",
        "/v1/regions/110000",
        "/v1/sources",
    ] {
        pages.push(th.get_json(path).await);
    }
    // `/v1/sources` lists the registry in hash order, which differs between processes.
    if let Some(list) = pages[4]["sources"].as_array_mut() {
        list.sort_by_key(|s| s["source"].to_string());
    }
    let snap = th.hub.snapshot();
    let items = snap
        .views
        .items(th.hub.store.as_ref())
        .expect("items")
        .into_iter()
        .map(|i| {
            (
                serde_json::to_value(&i.meta).expect("json"),
                i.record.to_value(),
            )
        })
        .collect();
    let campaign = Campaign::builtin_2018();
    let noms = snap.views.nominations(&campaign);
    (
        pages,
        items,
        snap.views.milestones().len() + snap.views.activities().len(),
        noms.counted.len() + noms.violations.len() + snap.views.extensions().count(),
    )
}

/// Rewrites the store's views in the older layout: every item under `v/i/` as
/// `{"meta", "record"}` JSON, extensions kept, nothing else.
fn to_older_layout(store: &dyn Store, views: &Views) -> usize {
    let items = views.items(store).expect("items");
    let mut wb = WriteBatch::new();
    for r in store.scan(b"v/") {
        let k = r.expect("scan").0;
        if !k.starts_with(b"v/x/") {
            wb.delete(k);
        }
    }
    let mut counts = 0;
    for i in &items {
        counts += usize::from(matches!(i.record, Record::SpaceCount(_)));
        let stored = json!({ "meta": i.meta, "record": i.record.to_value() });
        wb.put(
            [b"v/i/".as_slice(), &i.meta.log_index.to_be_bytes()].concat(),
            serde_json::to_vec(&stored).expect("json"),
        );
    }
    store.apply(wb).expect("apply");
    store.flush().expect("flush");
    counts
}

/// Space counts still under `v/i/`, and keys under `v/c/` and `v/s/`.
fn census(store: &dyn Store) -> (usize, usize, usize) {
    let in_items = store
        .scan(b"v/i/")
        .filter(|r| {
            let (_, v) = r.as_ref().expect("scan");
            let v: Value = serde_json::from_slice(v).expect("json");
            v["record"]["kind"] == "space_count"
        })
        .count();
    let counts = store
        .scan(b"v/c/")
        .map(|r| block_parts(&r.expect("scan").1).len())
        .sum();
    (in_items, counts, store.scan(b"v/s/").count())
}

/// Rewrites the store's space counts as layout 2 held them, one value per count under
/// `v/c/<log index>`, and `v/m` as layout 2; returns how many.
fn to_layout_2(store: &dyn Store) -> usize {
    let mut wb = WriteBatch::new();
    let mut n = 0;
    for r in store.scan(b"v/c/") {
        let (k, v) = r.expect("scan");
        assert_eq!(v[0], 2, "a block");
        let last = u64::from_be_bytes(k[4..12].try_into().expect("8 bytes"));
        wb.delete(k.clone());
        for (off, bytes) in block_parts(&v) {
            wb.put(
                [b"v/c/".as_slice(), &(last - 15 + off).to_be_bytes()].concat(),
                bytes,
            );
            n += 1;
        }
    }
    let m = store.get(b"v/m").expect("get").expect("v/m");
    let m = String::from_utf8(m).expect("utf-8");
    assert!(m.contains(r#""layout":3"#), "{m}");
    wb.put(
        b"v/m".to_vec(),
        m.replace(r#""layout":3"#, r#""layout":2"#).into_bytes(),
    );
    store.apply(wb).expect("apply");
    store.flush().expect("flush");
    n
}

/// A store of layout 2 (one value per space count, lists per subject) is converted at
/// open: its counts put into blocks of 16 and linked, the lists removed. The same answers,
/// `verify` clean, and a withdrawal of an old count marks it in its block.
#[tokio::test]
async fn a_store_of_one_value_per_count_is_converted_into_linked_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut a = Agent::new("gd-a", 1, "440000");
    th.register(&a);
    for week in ["2018-09-24", "2018-10-08"] {
        let records: Vec<Value> = (1..=20)
            .map(|s| teachers("440106", &format!("41440106{s:02}"), week, 50 + s))
            .collect();
        th.ingest_ok(&a.batch(&records)).await;
    }
    let before = answers(&th).await;
    assert_eq!(to_layout_3(th.hub.store.as_ref()), 20);
    let singles = to_layout_2(th.hub.store.as_ref());
    assert_eq!(singles, 40);
    drop(th);

    let th = TestHub::open(dir.path());
    let store = th.hub.store.as_ref();
    let after = answers(&th).await;
    assert_eq!(after.0, before.0, "figures");
    assert_eq!(after.1, before.1, "items");
    let m = String::from_utf8(store.get(b"v/m").expect("get").expect("v/m")).expect("utf-8");
    assert!(
        m.contains(r#""layout":5"#),
        "marked with the new layout: {m}"
    );
    assert_eq!(store.scan(b"v/l/").count(), 0, "the lists removed");
    let ok = |store: &dyn Store| {
        let report = maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {})
            .expect("verify runs");
        assert!(report.ok(), "{:#?}", report.problems);
        // Settling every 2 leaves (blocks let go and read back from the mixed store) gives
        // the same verdict.
        assert_eq!(
            maintenance::views_problems(store, 2).expect("views verdict"),
            Vec::<String>::new()
        );
    };
    ok(store);

    // School 01's first snapshot (seq 1, once a count stored alone) withdrawn, and a week
    // more.
    let records: Vec<Value> = std::iter::once(withdrawal(1))
        .chain(
            (1..=20).map(|s| teachers("440106", &format!("41440106{s:02}"), "2018-10-15", 90 + s)),
        )
        .collect();
    th.ingest_ok(&a.batch(&records)).await;
    let items = answers(&th).await.1;
    let first = items
        .iter()
        .find(|(m, _)| m["seq"] == 1)
        .expect("seq 1 held");
    assert!(!first.0["withdrawn_by"].is_null(), "{first:?}");
    let (mut alone, mut in_blocks) = (0, 0);
    for r in store.scan(b"v/c/") {
        let (_, v) = r.expect("scan");
        if v[0] == 2 {
            in_blocks += block_parts(&v).len();
        } else {
            alone += 1;
        }
    }
    assert_eq!((alone, in_blocks), (0, 60));
    ok(store);
    let school = th.get_json("/v1/regions/440106").await;
    drop(th);
    // And the same after a rebuild, which writes every count in blocks.
    let sled = SledStore::open(dir.path()).expect("open");
    maintenance::rebuild(&sled, Campaign::builtin_2018().baseline, |_| {}).expect("rebuild");
    assert!(sled.scan(b"v/c/").all(|r| r.expect("scan").1[0] == 2));
    drop(sled);
    let th = TestHub::open(dir.path());
    assert_eq!(th.get_json("/v1/regions/440106").await, school);
    ok(th.hub.store.as_ref());
}

/// A store of layout 3 (counts in blocks, a list of log indexes per subject) is converted
/// at open: every count linked to its subject's previous one, each summary told where its
/// subject's chain starts (a subject whose every snapshot is withdrawn gets an empty one),
/// the lists removed, in bounded, flushed writes. A start killed part-way is finished by
/// the next. The hub answers as before, the stored views are byte for byte a rebuild's
/// (`verify`), and later snapshots, a late one and one of the withdrawn subject among
/// them, merge along the chains.
#[tokio::test]
async fn a_store_of_layout_3_is_linked_into_chains_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut a = Agent::new("gd-a", 1, "440000");
    th.register(&a);
    for week in ["2018-09-24", "2018-10-08", "2018-10-22"] {
        let records: Vec<Value> = (1..=20)
            .map(|s| teachers("440106", &format!("41440106{s:02}"), week, 50 + s))
            .collect();
        th.ingest_ok(&a.batch(&records)).await;
    }
    // School 21 reported twice, both withdrawn; school 01 once more, dated earlier.
    th.ingest_ok(&a.batch(&[
        teachers("440106", "4144010621", "2018-10-01", 9),
        teachers("440106", "4144010621", "2018-10-08", 10),
        teachers("440106", "4144010601", "2018-10-01", 7),
    ]))
    .await;
    th.ingest_ok(&a.batch(&[withdrawal(61), withdrawal(62)]))
        .await;
    let before = answers(&th).await;
    let lists = to_layout_3(th.hub.store.as_ref());
    assert_eq!(lists, 21);
    drop(th);

    let verify_clean = |store: &dyn Store| {
        let report = maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {})
            .expect("verify runs");
        assert!(report.ok(), "{:#?}", report.problems);
    };
    {
        let sled = Arc::new(SledStore::open(dir.path()).expect("open"));
        let baseline = Campaign::builtin_2018().baseline;
        let e = Views::load(sled.as_ref(), baseline).err().expect("refused");
        assert!(e.to_string().contains("start the hub once"), "{e}");
        // Killed after three writes: `v/m` says 5, two batches of 2 blocks linked.
        let failing = stores::KilledAfter::new(sled.clone(), 3);
        assert!(views::prepare_in_batches(&failing, baseline, 2).is_err());
        let m = String::from_utf8(sled.get(b"v/m").expect("get").expect("v/m")).expect("utf-8");
        assert!(
            m.contains(r#""layout":5,"#) && m.contains(r#""converting":true"#),
            "{m}"
        );
        let e = Views::load(sled.as_ref(), baseline).err().expect("refused");
        assert!(e.to_string().contains("part-way through"), "{e}");
        assert_eq!(views::stored_baseline(sled.as_ref()).expect("read"), None);
        let linked = sled
            .scan(b"v/c/")
            .filter(|r| block_parts(&r.as_ref().expect("scan").1)[0].1[0] == 3)
            .count();
        assert_eq!(linked, 4, "blocks linked before the kill");
        assert_eq!(sled.scan(b"v/l/").count(), lists, "no list removed yet");
    }

    // The next start finishes it.
    let th = TestHub::open(dir.path());
    let store = th.hub.store.as_ref();
    assert_eq!(store.scan(b"v/l/").count(), 0);
    let m = String::from_utf8(store.get(b"v/m").expect("get").expect("v/m")).expect("utf-8");
    assert!(!m.contains("converting"), "{m}");
    // 21 schools: school 21's summary is stored empty, for where its chain starts.
    assert_eq!(store.scan(b"v/s/").count(), 21);
    assert!(
        store.scan(b"v/c/").all(|r| block_parts(&r.expect("scan").1)
            .iter()
            .all(|(_, c)| c[0] == 3)),
        "every count linked"
    );
    let after = answers(&th).await;
    assert_eq!(after.0, before.0, "figures");
    assert_eq!(after.1, before.1, "items");
    verify_clean(store);
    assert_eq!(
        views::prepare(store, Campaign::builtin_2018().baseline).expect("prepare"),
        None,
        "once"
    );

    // School 21 again, school 02 late (dated before its latest), a new week for 03.
    th.ingest_ok(&a.batch(&[
        teachers("440106", "4144010621", "2018-10-29", 30),
        teachers("440106", "4144010602", "2018-10-01", 5),
        teachers("440106", "4144010603", "2018-10-29", 99),
    ]))
    .await;
    verify_clean(th.hub.store.as_ref());
    let region = th.get_json("/v1/regions/440106").await;
    let text = region.to_string();
    assert!(text.contains("4144010621"), "school 21 back: {text}");
    drop(th);
    // A rebuild from the log agrees with what the converted store went on to hold.
    let sled = SledStore::open(dir.path()).expect("open");
    maintenance::rebuild(&sled, Campaign::builtin_2018().baseline, |_| {}).expect("rebuild");
    drop(sled);
    let th = TestHub::open(dir.path());
    assert_eq!(th.get_json("/v1/regions/440106").await, region);
}

#[tokio::test]
async fn a_store_in_the_older_layout_is_converted_once_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut a = Agent::new("gd-a", 1, "440000");
    let mut b = Agent::new("gd-b", 2, "440000");
    let mut c = Agent::new("bj-c", 3, "110000");
    for x in [&a, &b, &c] {
        th.register(x);
    }
    for week in ["2018-09-24", "2018-10-08", "2018-11-05"] {
        let records: Vec<Value> = (1..=20)
            .map(|s| teachers("440106", &format!("41440106{s:02}"), week, 50 + s))
            .collect();
        th.ingest_ok(&a.batch(&records)).await;
    }
    th.ingest_ok(&b.batch(&[
        // Out of date order, a conflict, a county's own total, a decrease.
        teachers("440106", "4144010601", "2018-10-01", 40),
        teachers("440106", "4144010602", "2018-11-05", 70),
        teachers("440106", "", "2018-11-05", 2000),
        teachers("440106", "4144010603", "2018-11-12", 3),
        activity("440106", "2018-11-06", "应用培训"),
        milestone("contact_form", "440000", "2018-11-10"),
        recommendation("county", "440106", "4144010604", "440106"),
        withdrawal(4),
        withdrawal(5),
    ]))
    .await;
    th.ingest_ok(&c.batch(&[
        teachers("110105", "", "2018-11-05", 300),
        activity("110105", "2018-11-06", "应用培训"),
    ]))
    .await;
    th.hub
        .append_hub_entry(|seq, now| {
            HubEntry::Extension(Extension {
                seq,
                region: RegionCode::parse("440000").expect("code"),
                milestone: "contact_form".into(),
                until: NaiveDate::from_ymd_opt(2018, 12, 1).expect("date"),
                reason: "台风".into(),
                granted_at: now,
            })
        })
        .expect("extension");
    let before = answers(&th).await;
    assert!(before.1.len() > 70);

    let counts = to_older_layout(th.hub.store.as_ref(), &th.hub.snapshot().views);
    assert_eq!(census(th.hub.store.as_ref()), (counts, 0, 0));
    drop(th);

    {
        let sled = Arc::new(SledStore::open(dir.path()).expect("open"));
        let baseline = Campaign::builtin_2018().baseline;
        // Nothing reads it as it stands, and `verify` says how to convert it.
        let e = Views::load(sled.as_ref(), baseline).err().expect("refused");
        assert!(e.to_string().contains("older hub"), "{e}");
        let report = maintenance::verify(sled.as_ref(), &hub_key().verifying_key(), ORIGIN, |_| {})
            .expect("verify runs");
        assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
        assert!(
            report.problems[0].contains("older hub"),
            "{:#?}",
            report.problems
        );

        // A start killed after two of its writes: part moved, the rest still in `v/i/`.
        let failing = stores::KilledAfter::new(sled.clone(), 2);
        assert!(views::prepare_in_batches(&failing, baseline, 7).is_err());
        let (left, moved, summaries) = census(sled.as_ref());
        assert_eq!((left, moved, summaries), (counts - 14, 14, 0));
        assert_eq!(views::stored_baseline(sled.as_ref()).expect("read"), None);
    }

    // The next start finishes it.
    let th = TestHub::open(dir.path());
    let store = th.hub.store.as_ref();
    let (left, moved, summaries) = census(store);
    assert_eq!((left, moved), (0, counts));
    // 20 schools of 440106 and the own totals of 440106 and 110105.
    assert_eq!(summaries, 22);
    let after = answers(&th).await;
    assert_eq!(after.0, before.0, "figures");
    assert_eq!(after.1, before.1, "items");
    assert_eq!((after.2, after.3), (before.2, before.3), "ledger");
    let report = maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {})
        .expect("verify runs");
    assert!(report.ok(), "{:#?}", report.problems);
    // Once: the next start has nothing to do.
    assert_eq!(
        views::prepare(store, Campaign::builtin_2018().baseline).expect("prepare"),
        None
    );
}
