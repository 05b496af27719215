//! Each subject's merged figures and flags, as the views keep them entry by entry
//! (`Summary::extend`, or a re-walk after an earlier-dated snapshot or a withdrawal),
//! against an independent model of the spec's merge rule computed from scratch after every
//! entry: per kind the latest `(as_of, log index)` wins, the baseline likewise among
//! snapshots dated on or before the baseline date, real-name counts and the population
//! from the latest snapshot that gives them; decreases along each kind's dates; a date
//! reported by several sources is a conflict. The views are driven through `Views::apply`
//! directly (no hub, no signatures; `DirectViews` writes the log records and the source
//! index a withdrawal is resolved through), so thousands of sequences run in seconds. The
//! maintained roll-up is checked, and the one merged afresh from the stored snapshots, also
//! for a baseline date other than the views' own.
//!
//! The views' rebuild test (`views_rebuild.rs`) compares live with rebuilt and reloaded
//! views, which all take the same incremental path; this one compares it with the rule.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, NaiveDate};
use common::*;
use serde_json::{Value, json};
use spacesync_hub::views::{Figures, Flag, Rollup};
use spacesync_shared::record::{Population, SpaceCounts, SpaceKind};
use spacesync_shared::region::SchoolCode;
use spacesync_shared::{Campaign, Record, RegionCode, SourceId};

/// The county whose schools report (its total is the sum of its schools).
const SCHOOLS_COUNTY: &str = "440106";
/// The county that reports its own total only.
const OWN_COUNTY: &str = "440105";

type Subject = (RegionCode, Option<SchoolCode>);

/// One entry of a sequence: a snapshot by a source, or a source's withdrawal of its seq.
#[derive(Debug, Clone)]
enum Op {
    Snap { source: usize, record: Value },
    Withdraw { source: usize, target_seq: u64 },
}

/// A snapshot as the model keeps it.
#[derive(Debug, Clone)]
struct Snap {
    idx: u64,
    source: SourceId,
    as_of: NaiveDate,
    spaces: SpaceCounts,
    real: Option<SpaceCounts>,
    pop: Option<Population>,
    live: bool,
}

/// The merge rule, from scratch over the live snapshots of each subject.
fn model(
    snaps: &BTreeMap<Subject, Vec<Snap>>,
    baseline: NaiveDate,
) -> (BTreeMap<Subject, Figures>, Vec<Flag>) {
    let mut figures = BTreeMap::new();
    let mut flags = Vec::new();
    for (subject, list) in snaps {
        let mut live: Vec<&Snap> = list.iter().filter(|s| s.live).collect();
        if live.is_empty() {
            continue;
        }
        live.sort_by_key(|s| (s.as_of, s.idx));
        let mut f = Figures::default();
        for k in SpaceKind::ALL {
            // Latest in (as_of, idx) order: the last in the sorted list that has it.
            f.spaces
                .set(k, live.iter().rev().find_map(|s| s.spaces.get(k)));
            f.baseline.set(
                k,
                live.iter()
                    .rev()
                    .filter(|s| s.as_of <= baseline)
                    .find_map(|s| s.spaces.get(k)),
            );
            f.real_name.set(
                k,
                live.iter()
                    .rev()
                    .find_map(|s| s.real.and_then(|r| r.get(k))),
            );
        }
        f.population = live.iter().rev().find_map(|s| s.pop).unwrap_or_default();
        figures.insert(*subject, f);
        for k in SpaceKind::ALL {
            let mut prev: Option<(NaiveDate, u64)> = None;
            for s in &live {
                let Some(v) = s.spaces.get(k) else { continue };
                if let Some((d, pv)) = prev
                    && d < s.as_of
                    && v < pv
                {
                    flags.push(Flag::Decrease {
                        region: subject.0,
                        school: subject.1,
                        kind: k,
                        before: (d, pv),
                        after: (s.as_of, v),
                        source: s.source.clone(),
                    });
                }
                prev = Some((s.as_of, v));
            }
        }
        let mut by_date: BTreeMap<NaiveDate, BTreeSet<SourceId>> = BTreeMap::new();
        for s in &live {
            by_date.entry(s.as_of).or_default().insert(s.source.clone());
        }
        for (as_of, sources) in by_date {
            if sources.len() > 1 {
                flags.push(Flag::Conflict {
                    region: subject.0,
                    school: subject.1,
                    as_of,
                    sources: sources.into_iter().collect(),
                });
            }
        }
    }
    (figures, flags)
}

/// What the views answer for the two counties' subjects: per-subject figures and the
/// decrease and conflict flags, in rollup order.
fn answered(rollup: Rollup) -> (BTreeMap<Subject, Figures>, Vec<Flag>) {
    let schools_county = RegionCode::parse(SCHOOLS_COUNTY).expect("code");
    let own_county = RegionCode::parse(OWN_COUNTY).expect("code");
    let mut figures = BTreeMap::new();
    for (school, f) in rollup.schools_in(schools_county) {
        figures.insert((schools_county, Some(school)), f);
    }
    // The own-total county has no schools: its total is its own figures.
    if let Some(f) = rollup.totals.get(&own_county)
        && *f != Figures::default()
    {
        figures.insert((own_county, None), f.clone());
    }
    let flags = rollup
        .flags
        .into_iter()
        .filter(|f| matches!(f, Flag::Decrease { .. } | Flag::Conflict { .. }))
        .collect();
    (figures, flags)
}

const SOURCES: [&str; 3] = ["gd-a", "gd-b", "gd-c"];

/// Applies `ops` in log order to views for `view_baselines`, one entry per batch (or all
/// of a step's group in one batch, see `batches`), checking every views' answer against
/// the model after each batch, for each of `ask_baselines`: the maintained roll-up when the
/// baselines agree, and always the roll-up merged afresh from the stored snapshots.
fn check(name: &str, ops: &[Op], view_baselines: &[NaiveDate], ask_baselines: &[NaiveDate]) {
    check_in_batches(
        name,
        ops,
        &vec![1; ops.len()],
        view_baselines,
        ask_baselines,
    );
}

/// [`check`], with `ops` written in batches of the sizes in `batches` (the rest one by one).
fn check_in_batches(
    name: &str,
    ops: &[Op],
    batches: &[usize],
    view_baselines: &[NaiveDate],
    ask_baselines: &[NaiveDate],
) {
    let mut views: Vec<DirectViews> = view_baselines
        .iter()
        .map(|b| DirectViews::new(*b))
        .collect();
    let mut snaps: BTreeMap<Subject, Vec<Snap>> = BTreeMap::new();
    // (source, seq) -> (subject, position) of snapshots; seqs of every entry.
    let mut where_is: BTreeMap<(usize, u64), Option<(Subject, usize)>> = BTreeMap::new();
    let mut next_seq = [1u64; 3];
    let t = t0();
    let mut step = 0;
    let mut sizes = batches.iter().copied().chain(std::iter::repeat(1));
    while step < ops.len() {
        let n = sizes.next().unwrap_or(1).clamp(1, ops.len() - step);
        let group = &ops[step..step + n];
        let entries: Vec<(SourceId, u64, Record)> = group
            .iter()
            .map(|op| {
                let (source, record) = match op {
                    Op::Snap { source, record } => (*source, record_of(record)),
                    Op::Withdraw { source, target_seq } => {
                        (*source, record_of(&withdrawal(*target_seq)))
                    }
                };
                let seq = next_seq[source];
                next_seq[source] += 1;
                (SourceId::parse(SOURCES[source]).expect("id"), seq, record)
            })
            .collect();
        // Hub entries leave gaps in the log.
        let gap = u64::from(step.is_multiple_of(3));
        let mut indexes = Vec::new();
        for v in &mut views {
            indexes = v.apply_batch(gap, &entries, t);
        }
        for ((source_id, seq, record), idx) in entries.iter().zip(indexes) {
            let source = SOURCES
                .iter()
                .position(|s| *s == source_id.as_str())
                .expect("source");
            match record {
                Record::SpaceCount(s) => {
                    let subject = (s.region, s.school);
                    let list = snaps.entry(subject).or_default();
                    list.push(Snap {
                        idx,
                        source: source_id.clone(),
                        as_of: s.as_of,
                        spaces: s.spaces,
                        real: s.real_name,
                        pop: s.population,
                        live: true,
                    });
                    where_is.insert((source, *seq), Some((subject, list.len() - 1)));
                }
                Record::Withdrawal(w) => {
                    if let Some(Some((subject, at))) = where_is.get(&(source, w.target_seq))
                        && let Some(list) = snaps.get_mut(subject)
                    {
                        list[*at].live = false;
                    }
                    where_is.insert((source, *seq), None);
                }
                _ => {
                    where_is.insert((source, *seq), None);
                }
            }
        }
        let last = &group[group.len() - 1];
        for b in ask_baselines {
            let mut campaign = Campaign::builtin_2018();
            campaign.baseline = *b;
            let want = model(&snaps, *b);
            for (v, vb) in views.iter().zip(view_baselines) {
                let afresh = v.views.rollup_afresh(&v.store, &campaign).expect("afresh");
                let mut asked = vec![("afresh", answered(afresh))];
                if b == vb {
                    asked.push(("maintained", answered(v.views.rollup(&campaign))));
                }
                for (how, got) in asked {
                    assert_eq!(
                        got.0, want.0,
                        "{name}: figures ({how}) after step {step} ({last:?}), views for {vb}, asked for {b}"
                    );
                    assert_eq!(
                        got.1, want.1,
                        "{name}: flags ({how}) after step {step} ({last:?}), views for {vb}, asked for {b}"
                    );
                }
            }
        }
        step += n;
    }
}

fn baseline() -> NaiveDate {
    Campaign::builtin_2018().baseline
}

fn day(offset: i64) -> String {
    (baseline() + Duration::days(offset)).to_string()
}

fn school(n: u64) -> String {
    format!("{SCHOOLS_COUNTY}{n:04}")
}

fn snap(source: usize, school_n: Option<u64>, offset: i64, spaces: Value) -> Op {
    let (region, s) = match school_n {
        Some(n) => (SCHOOLS_COUNTY, school(n)),
        None => (OWN_COUNTY, String::new()),
    };
    Op::Snap {
        source,
        record: space_count(region, &s, &day(offset), spaces),
    }
}

fn with(mut op: Op, field: &str, v: Value) -> Op {
    if let Op::Snap { record, .. } = &mut op {
        record[field] = v;
    }
    op
}

fn withdraw(source: usize, target_seq: u64) -> Op {
    Op::Withdraw { source, target_seq }
}

/// The baseline date, a day before and after it, for the views and for the question.
fn all_baselines() -> Vec<NaiveDate> {
    vec![
        baseline(),
        baseline() - Duration::days(5),
        baseline() + Duration::days(5),
    ]
}

#[test]
fn named_sequences_match_the_rule_after_every_entry() {
    let t = |n: u64| json!({ "teacher": n });
    let cases: Vec<(&str, Vec<Op>)> = vec![
        (
            "equal dates from three sources, then a later date",
            vec![
                snap(0, Some(1), 0, t(10)),
                snap(1, Some(1), 0, t(12)),
                snap(2, Some(1), 0, t(9)),
                snap(0, Some(1), 5, t(8)),
            ],
        ),
        (
            "withdrawal of the latest snapshot",
            vec![
                snap(0, Some(1), 0, t(10)),
                snap(0, Some(1), 5, t(7)),
                withdraw(0, 2),
                snap(0, Some(1), 3, t(11)),
            ],
        ),
        (
            "withdrawal of a conflict participant, at the latest date and before it",
            vec![
                snap(0, Some(1), 0, t(10)),
                snap(1, Some(1), 0, t(10)),
                snap(0, Some(1), 5, t(12)),
                snap(1, Some(1), 5, t(13)),
                withdraw(1, 2),
                withdraw(1, 1),
            ],
        ),
        (
            "withdrawal of the baseline-dated snapshot",
            vec![
                snap(0, None, -5, t(4)),
                snap(0, None, 0, t(6)),
                snap(0, None, 5, t(9)),
                withdraw(0, 2),
            ],
        ),
        (
            "withdrawn, then a later snapshot dated between",
            vec![
                snap(0, Some(2), -5, t(3)),
                snap(0, Some(2), 10, t(30)),
                withdraw(0, 2),
                snap(1, Some(2), 5, t(2)),
                snap(0, Some(2), 5, t(1)),
                snap(0, Some(2), 10, t(0)),
            ],
        ),
        (
            "different kinds on different dates, real names and population on some",
            vec![
                with(
                    snap(0, Some(1), -5, json!({ "teacher": 5, "student": 50 })),
                    "real_name",
                    json!({ "student": 40 }),
                ),
                snap(0, Some(1), 0, json!({ "class": 2 })),
                with(
                    snap(1, Some(1), 0, json!({ "teacher": 4 })),
                    "population",
                    json!({ "teachers": 9, "students": 90 }),
                ),
                with(
                    snap(0, Some(1), -10, json!({ "student": 70, "class": 3 })),
                    "real_name",
                    json!({ "class": 1 }),
                ),
                snap(2, Some(1), 5, json!({ "student": 45 })),
                withdraw(1, 1),
                withdraw(0, 1),
            ],
        ),
        (
            "an earlier date after a later one, then equal dates in log order",
            vec![
                snap(0, Some(3), 5, t(9)),
                snap(1, Some(3), -5, t(20)),
                snap(1, Some(3), 5, t(8)),
                snap(0, Some(3), 5, t(7)),
            ],
        ),
        (
            "withdrawing a withdrawal, a missing seq, and a seq twice",
            vec![
                snap(0, Some(1), 0, t(5)),
                withdraw(0, 1),
                withdraw(0, 2),
                withdraw(0, 1),
                withdraw(0, 99),
                snap(0, Some(1), -5, t(6)),
            ],
        ),
    ];
    for (name, ops) in cases {
        check(name, &ops, &all_baselines(), &all_baselines());
    }
}

fn random_ops(rng: &mut Rng, n: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut next_seq = [1u64; 3];
    for _ in 0..n {
        let source = rng.below(3) as usize;
        if next_seq[source] > 1 && rng.chance(20) {
            ops.push(withdraw(source, rng.range(1, next_seq[source] - 1)));
        } else {
            let subject = match rng.below(4) {
                0 => None,
                n => Some(n),
            };
            // Six dates five days apart, the baseline among them: ties are common.
            let offset = 5 * (rng.below(6) as i64 - 2);
            let mut spaces = serde_json::Map::new();
            let mut real = serde_json::Map::new();
            for k in SpaceKind::ALL {
                if rng.chance(35) {
                    let v = rng.range(0, 40);
                    spaces.insert(k.as_str().into(), json!(v));
                    if rng.chance(30) {
                        real.insert(k.as_str().into(), json!(rng.range(0, v)));
                    }
                }
            }
            if spaces.is_empty() {
                spaces.insert("teacher".into(), json!(rng.range(0, 40)));
            }
            let mut op = snap(source, subject, offset, Value::Object(spaces));
            if !real.is_empty() {
                op = with(op, "real_name", Value::Object(real));
            }
            if rng.chance(20) {
                op = with(op, "population", json!({ "teachers": rng.range(1, 99) }));
            }
            ops.push(op);
        }
        next_seq[source] += 1;
    }
    ops
}

#[test]
fn random_sequences_match_the_rule_after_every_entry() {
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let ops = random_ops(&mut rng, 40);
        check(
            &format!("seed {seed}"),
            &ops,
            &all_baselines(),
            &[baseline(), baseline() + Duration::days(5)],
        );
    }
}
