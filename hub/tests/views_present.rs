//! The views keep the present, not the history: space counts live only in the store, each
//! subject's merged summary in memory and in the store, written in the same batch as the
//! entries. Property tests over random sequences of snapshots (in date order, out of it,
//! from several sources, of several subjects) and withdrawals (of snapshots, of ledger
//! items, of withdrawals, of an entry of the same batch), written in random batch splits:
//! after every batch the roll-up kept incrementally equals the one merged afresh from the
//! stored snapshots, and the views loaded from the store equal the live ones; at the end
//! both equal the views rebuilt from the log.

mod common;

use std::collections::BTreeMap;

use chrono::Duration;
use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use spacesync_hub::maintenance;
use spacesync_hub::store::Reader;
use spacesync_hub::views::{Figures, Flag, Meta, Views};
use spacesync_shared::region::SchoolCode;
use spacesync_shared::{Campaign, Record, RegionCode, SourceId};

const SOURCES: [&str; 3] = ["gd-a", "gd-b", "gd-c"];
/// Counties whose schools and own totals report.
const COUNTIES: [&str; 2] = ["440106", "440105"];

/// One entry to write.
#[derive(Debug, Clone)]
enum Op {
    /// A snapshot by `source` of subject `subject` (0‥2 a county's own total, else a
    /// school), dated `day` × 5 days from the baseline, with `kinds` (kind index, count).
    Snap {
        source: usize,
        subject: usize,
        day: i64,
        kinds: Vec<(usize, u64)>,
        real: bool,
    },
    /// An activity (a ledger item).
    Activity { source: usize },
    /// A withdrawal by `source` of its `back`-th latest seq (0: the one just before).
    Withdraw { source: usize, back: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            0..3usize,
            0..8usize,
            -2..4i64,
            prop::collection::vec((0..8usize, 0..60u64), 1..4),
            any::<bool>(),
        )
            .prop_map(|(source, subject, day, kinds, real)| Op::Snap {
                source,
                subject,
                day,
                kinds,
                real,
            }),
        1 => (0..3usize).prop_map(|source| Op::Activity { source }),
        2 => (0..3usize, 0..6usize).prop_map(|(source, back)| Op::Withdraw { source, back }),
    ]
}

fn record(op: &Op, next_seq: u64) -> Option<Value> {
    let baseline = Campaign::builtin_2018().baseline;
    Some(match op {
        Op::Snap {
            subject,
            day,
            kinds,
            real,
            ..
        } => {
            let county = COUNTIES[subject % 2];
            let school = if *subject < 2 {
                String::new()
            } else {
                format!("{county}{:04}", subject / 2)
            };
            let mut spaces = serde_json::Map::new();
            for (k, v) in kinds {
                let kind = spacesync_shared::record::SpaceKind::ALL[*k];
                spaces.insert(kind.as_str().into(), json!(v));
            }
            let date = (baseline + Duration::days(5 * day)).to_string();
            let mut v = space_count(county, &school, &date, Value::Object(spaces.clone()));
            if *real {
                v["real_name"] = Value::Object(spaces);
                v["population"] = json!({ "teachers": 90, "students": 900 });
            }
            v
        }
        Op::Activity { .. } => activity("440106", "2018-11-05", "应用培训"),
        Op::Withdraw { back, .. } => {
            let target = next_seq.checked_sub(1 + *back as u64).filter(|s| *s >= 1)?;
            withdrawal(target)
        }
    })
}

/// Everything the views answer, owned.
#[derive(Debug, PartialEq)]
struct Answers {
    items: Vec<(Meta, Value)>,
    nation: Figures,
    totals: BTreeMap<RegionCode, Figures>,
    schools: BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>>,
    flags: Vec<Flag>,
    activities: usize,
    sources: Value,
    entries: u64,
}

/// What `v` answers, its items read from `r`; the maintained roll-up checked against the
/// one merged afresh from the stored snapshots on the way.
fn answers<R: Reader + ?Sized>(what: &str, v: &Views, r: &R) -> Answers {
    let campaign = Campaign::builtin_2018();
    let rollup = v.rollup(&campaign);
    let afresh = v.rollup_afresh(r, &campaign).expect("afresh");
    assert_eq!(
        rollup.nation, afresh.nation,
        "{what}: maintained vs afresh nation"
    );
    assert_eq!(
        rollup.totals, afresh.totals,
        "{what}: maintained vs afresh totals"
    );
    assert_eq!(
        rollup.schools(),
        afresh.schools(),
        "{what}: maintained vs afresh schools"
    );
    assert_eq!(
        rollup.flags, afresh.flags,
        "{what}: maintained vs afresh flags"
    );
    for region in afresh.totals.keys() {
        assert_eq!(
            rollup.schools_in(*region),
            afresh.schools_in(*region),
            "{what}: maintained vs afresh schools of {region}"
        );
    }
    Answers {
        items: v
            .items(r)
            .expect("items")
            .into_iter()
            .map(|i| (i.meta, i.record.to_value()))
            .collect(),
        nation: rollup.nation.clone(),
        totals: rollup.totals.clone(),
        schools: rollup.schools(),
        flags: rollup.flags.clone(),
        activities: v.activities().len(),
        sources: serde_json::to_value(v.sources()).expect("json"),
        entries: v.entries(),
    }
}

/// Writes `ops` in batches of `splits` sizes and checks the views after each batch and
/// at the end.
fn run(ops: &[Op], splits: &[usize]) {
    let baseline = Campaign::builtin_2018().baseline;
    let mut dv = DirectViews::new(baseline);
    let mut next_seq = [1u64; 3];
    let mut at = 0;
    let mut sizes = splits.iter().copied().cycle();
    let mut batches = 0;
    while at < ops.len() {
        let n = sizes.next().unwrap_or(1).clamp(1, ops.len() - at);
        let mut entries = Vec::new();
        for op in &ops[at..at + n] {
            let (Op::Snap { source, .. } | Op::Activity { source } | Op::Withdraw { source, .. }) =
                op;
            let Some(v) = record(op, next_seq[*source]) else {
                continue;
            };
            let record: Record = record_of(&v);
            entries.push((
                SourceId::parse(SOURCES[*source]).expect("id"),
                next_seq[*source],
                record,
            ));
            next_seq[*source] += 1;
        }
        dv.apply_batch(u64::from(batches % 4 == 3), &entries, t0());
        batches += 1;
        at += n;

        let live = answers("live", &dv.views, &dv.store);
        let loaded = Views::load(&dv.store, baseline).expect("load");
        assert_eq!(
            loaded.differing_subjects(&dv.views),
            Vec::<String>::new(),
            "stored summaries after batch {batches}"
        );
        assert_eq!(
            answers("loaded", &loaded, &dv.store),
            live,
            "loaded vs live after batch {batches}"
        );
    }
    let live = answers("live", &dv.views, &dv.store);
    let rb = maintenance::rebuild_views(&dv.store, baseline, |_| {}).expect("rebuild");
    let rebuilt = &rb.views;
    assert_eq!(
        rebuilt.differing_subjects(&dv.views),
        Vec::<String>::new(),
        "rebuilt summaries"
    );
    assert_eq!(
        answers("rebuilt", rebuilt, &rb.reader(&dv.store)),
        live,
        "rebuilt vs live"
    );
    assert!(rebuilt.extensions().eq(dv.views.extensions()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn maintained_equals_afresh_equals_reloaded_equals_rebuilt(
        ops in prop::collection::vec(op(), 1..50),
        splits in prop::collection::vec(1..8usize, 1..6),
    ) {
        run(&ops, &splits);
    }
}

#[test]
fn a_withdrawal_of_an_entry_of_its_own_batch() {
    // Out of date order and withdrawn in the same batch, then another subject's, then a
    // withdrawal of a withdrawal, all in one batch.
    let snap = |source, subject, day, n| Op::Snap {
        source,
        subject,
        day,
        kinds: vec![(0, n)],
        real: false,
    };
    let ops = vec![
        snap(0, 2, 2, 30),
        snap(0, 2, 0, 20),
        snap(0, 2, 3, 10),
        Op::Withdraw { source: 0, back: 0 },
        snap(1, 3, 1, 5),
        Op::Withdraw { source: 1, back: 0 },
        Op::Withdraw { source: 1, back: 0 },
        snap(0, 0, 1, 400),
    ];
    run(&ops, &[ops.len()]);
    run(&ops, &[3, 1]);
    run(&ops, &[1]);
}

#[test]
fn views_merged_for_another_baseline_are_merged_again_at_load() {
    let baseline = Campaign::builtin_2018().baseline;
    let mut dv = DirectViews::new(baseline);
    let a = SourceId::parse("gd-a").expect("id");
    let day = |d: i64| (baseline + Duration::days(d)).to_string();
    let entries: Vec<(SourceId, u64, Record)> = [(-5, 10), (0, 20), (5, 30)]
        .iter()
        .enumerate()
        .map(|(i, (d, n))| {
            (
                a.clone(),
                i as u64 + 1,
                record_of(&teachers("440106", "4144010601", &day(*d), *n)),
            )
        })
        .collect();
    dv.apply_batch(0, &entries, t0());
    let later = baseline + Duration::days(5);
    let mut campaign = Campaign::builtin_2018();
    campaign.baseline = later;
    let want = dv
        .views
        .rollup_afresh(&dv.store, &campaign)
        .expect("afresh");
    // Loading for another baseline merges from the snapshots (read-only) …
    let loaded = Views::load(&dv.store, later).expect("load");
    assert_eq!(loaded.rollup(&campaign).nation, want.nation);
    assert_eq!(
        want.nation
            .baseline
            .get(spacesync_shared::record::SpaceKind::Teacher),
        Some(30)
    );
    // … and `prepare` stores them merged for it, so the next load reads summaries.
    let done = spacesync_hub::views::prepare(&dv.store, later)
        .expect("prepare")
        .expect("merged again");
    assert_eq!(done.subjects, 1);
    assert_eq!(
        spacesync_hub::views::stored_baseline(&dv.store).expect("read"),
        Some(later)
    );
    let reloaded = Views::load(&dv.store, later).expect("load");
    assert_eq!(reloaded.differing_subjects(&loaded), Vec::<String>::new());
    assert_eq!(
        spacesync_hub::views::prepare(&dv.store, later).expect("prepare"),
        None
    );
}
