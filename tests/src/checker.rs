//! A Jepsen-style checker for multi-process runs: what clients attempted and were told,
//! against what the hub's log holds after the run.
//!
//! Every write carries a unique id ([`write_id`]): an activity's title, or for a space
//! count `sc:<source>:<school>:<as_of>` (the workload never repeats a school and date).
//! Clients record each write in a [`History`] before sending it (*attempted*), and when
//! the agent answers 2xx with its seq (*acknowledged*), or refuses it for certain
//! (*refused*: an error answer, or the connection was never made). After the run the
//! hub's log is read back ([`read_hub_log`]) and [`check`] computes:
//!
//! - `lost` = acknowledged − logged: the delivery guarantee broken;
//! - `unexpected` = logged − attempted (and leaves whose record carries no id);
//! - `duplicates`: an id logged twice, or a (source, seq) logged twice;
//! - `holes`: per source, seqs missing in `1..=max`;
//! - `moved`: an id acknowledged at one seq but logged at another;
//! - `altered`: the logged record differs from the one attempted under that id;
//! - `resurrected`: an id the agent refused (or never received) that is logged anyway.
//!
//! The run is valid only when all of these are empty. [`expected_views`] then recomputes
//! the merged figures independently from the attempted records of what was delivered, and
//! [`compare_views`] / [`compare_rollups`] hold the hub's views to them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use spacesync_hub::store::Store;
use spacesync_hub::views::{Rollup, Views};
use spacesync_shared::record::SpaceKind;
use spacesync_shared::region::SchoolCode;
use spacesync_shared::{Campaign, Entry, Record, RegionCode, SourceId};

/// The unique id of a write, read from the record itself.
pub fn write_id(source: &SourceId, record: &Record) -> Option<String> {
    match record {
        Record::Activity(a) => Some(a.title.clone()),
        Record::SpaceCount(s) => s
            .school
            .map(|school| format!("sc:{source}:{school}:{}", s.as_of)),
        _ => None,
    }
}

/// What clients did and were told.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Every write sent to an agent: id → (source, record).
    pub attempted: BTreeMap<String, (SourceId, Record)>,
    /// Writes answered 2xx: id → the seq the agent gave it.
    pub acknowledged: BTreeMap<String, u64>,
    /// Writes certainly not stored: refused with an error answer, or never sent.
    pub refused: BTreeSet<String>,
}

/// A history shared by client tasks.
pub type SharedHistory = Arc<Mutex<History>>;

impl History {
    /// Records writes as attempted (before they are sent).
    pub fn attempt(&mut self, source: &SourceId, writes: &[(String, Record)]) {
        for (id, r) in writes {
            let old = self
                .attempted
                .insert(id.clone(), (source.clone(), r.clone()));
            assert!(old.is_none(), "write id {id} attempted twice");
        }
    }

    /// Records writes as acknowledged with their seqs.
    pub fn acknowledge(&mut self, ids: impl IntoIterator<Item = String>, seqs: &[u64]) {
        let ids: Vec<String> = ids.into_iter().collect();
        assert_eq!(ids.len(), seqs.len(), "one seq per acknowledged write");
        for (id, seq) in ids.into_iter().zip(seqs) {
            self.acknowledged.insert(id, *seq);
        }
    }

    /// Records writes as certainly not stored.
    pub fn refuse(&mut self, ids: impl IntoIterator<Item = String>) {
        self.refused.extend(ids);
    }
}

/// One source leaf of the hub's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// Log index.
    pub index: u64,
    /// The source that signed it.
    pub source: SourceId,
    /// Its seq (as the log record and the entry both say; a mismatch is an error).
    pub seq: u64,
    /// The record.
    pub record: Record,
}

/// Reads every source leaf of a hub's log (hub-signed leaves are skipped). Fails on a
/// leaf that does not decode: the checker cannot judge a damaged log.
pub fn read_hub_log(store: &dyn Store) -> Result<Vec<Leaf>, String> {
    let mut out = Vec::new();
    for r in spacesync_hub::log::iter(store) {
        let (index, rec) = r.map_err(|e| e.to_string())?;
        let Some(source) = rec.source else {
            continue;
        };
        let entry = Entry::from_payload(&rec.envelope.payload)
            .map_err(|e| format!("log leaf {index}: {e}"))?;
        if entry.seq != rec.seq || entry.source != source {
            return Err(format!(
                "log leaf {index}: stored as {source} seq {} but the entry says {} seq {}",
                rec.seq, entry.source, entry.seq
            ));
        }
        out.push(Leaf {
            index,
            source,
            seq: rec.seq,
            record: entry.record,
        });
    }
    Ok(out)
}

/// What the checker found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Writes attempted.
    pub attempted: usize,
    /// Writes acknowledged.
    pub acknowledged: usize,
    /// Distinct attempted ids in the log.
    pub delivered: usize,
    /// Delivered though the client never heard the answer (allowed).
    pub delivered_unacknowledged: usize,
    /// Acknowledged but not in the log.
    pub lost: Vec<String>,
    /// In the log but never attempted (or without an id).
    pub unexpected: Vec<String>,
    /// Ids or (source, seq) pairs logged more than once.
    pub duplicates: Vec<String>,
    /// Seqs missing per source in `1..=max`.
    pub holes: BTreeMap<SourceId, Vec<u64>>,
    /// Acknowledged at one seq, logged at another.
    pub moved: Vec<String>,
    /// Logged record differs from the attempted one.
    pub altered: Vec<String>,
    /// Refused (or never sent), yet logged.
    pub resurrected: Vec<String>,
    /// Ids found in the log, with (source, seq): what the views must be made of.
    pub logged: BTreeMap<String, (SourceId, u64)>,
}

impl Report {
    /// True when nothing is wrong.
    pub fn valid(&self) -> bool {
        self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.duplicates.is_empty()
            && self.holes.is_empty()
            && self.moved.is_empty()
            && self.altered.is_empty()
            && self.resurrected.is_empty()
    }

    /// The one-line verdict CI keeps.
    pub fn line(&self, seed: u64, kills: u64, faults: u64) -> String {
        format!(
            "checker: seed={seed} attempted={} acknowledged={} delivered={} lost={} unexpected={} duplicates={} kills={kills} faults={faults}",
            self.attempted,
            self.acknowledged,
            self.delivered,
            self.lost.len(),
            self.unexpected.len(),
            self.duplicates.len()
        )
    }

    /// Every finding, a few examples each.
    pub fn details(&self) -> String {
        fn few<T: std::fmt::Debug>(v: &[T]) -> String {
            let shown: Vec<_> = v.iter().take(5).collect();
            let more = v.len().saturating_sub(5);
            if more > 0 {
                format!("{shown:?} and {more} more")
            } else {
                format!("{shown:?}")
            }
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
            "attempted {}, acknowledged {}, delivered {} ({} of them without an answer to the client), refused or never sent {}",
            self.attempted,
            self.acknowledged,
            self.delivered,
            self.delivered_unacknowledged,
            self.attempted.saturating_sub(self.acknowledged)
        );
        for (name, v) in [
            ("lost", &self.lost),
            ("unexpected", &self.unexpected),
            ("duplicates", &self.duplicates),
            ("moved", &self.moved),
            ("altered", &self.altered),
            ("resurrected", &self.resurrected),
        ] {
            let _ = writeln!(s, "{name}: {} {}", v.len(), few(v));
        }
        let holes: Vec<String> = self
            .holes
            .iter()
            .map(|(src, seqs)| {
                format!(
                    "{src}: {} missing, first {:?}",
                    seqs.len(),
                    &seqs[..seqs.len().min(5)]
                )
            })
            .collect();
        let _ = writeln!(s, "holes: {} {}", holes.len(), few(&holes));
        s
    }
}

/// Judges a history against the hub's log.
pub fn check(history: &History, leaves: &[Leaf]) -> Report {
    let mut r = Report {
        attempted: history.attempted.len(),
        acknowledged: history.acknowledged.len(),
        ..Report::default()
    };
    let mut seqs: BTreeMap<SourceId, BTreeSet<u64>> = BTreeMap::new();
    for leaf in leaves {
        if !seqs
            .entry(leaf.source.clone())
            .or_default()
            .insert(leaf.seq)
        {
            r.duplicates.push(format!(
                "{} seq {} logged twice (again at leaf {})",
                leaf.source, leaf.seq, leaf.index
            ));
        }
        // The agent's own key rotation (`rotate-key`): in the chain (its seq counts for
        // holes and duplicates above), but no client's write.
        if let Record::KeyTransition(_) = leaf.record {
            continue;
        }
        let Some(id) = write_id(&leaf.source, &leaf.record) else {
            r.unexpected.push(format!(
                "leaf {} ({} seq {}): a {} record without a write id",
                leaf.index,
                leaf.source,
                leaf.seq,
                leaf.record.kind()
            ));
            continue;
        };
        if r.logged.contains_key(&id) {
            r.duplicates
                .push(format!("{id} logged twice (again at leaf {})", leaf.index));
            continue;
        }
        r.logged.insert(id.clone(), (leaf.source.clone(), leaf.seq));
        match history.attempted.get(&id) {
            None => r.unexpected.push(format!(
                "{id} at leaf {} ({} seq {})",
                leaf.index, leaf.source, leaf.seq
            )),
            Some((source, record)) => {
                if *source != leaf.source || *record != leaf.record {
                    r.altered.push(format!(
                        "{id} at leaf {}: logged {:?} from {}, attempted {record:?} from {source}",
                        leaf.index, leaf.record, leaf.source
                    ));
                }
                if history.refused.contains(&id) {
                    r.resurrected.push(format!("{id} at leaf {}", leaf.index));
                }
            }
        }
    }
    r.delivered = r
        .logged
        .keys()
        .filter(|id| history.attempted.contains_key(*id))
        .count();
    r.delivered_unacknowledged = r
        .logged
        .keys()
        .filter(|id| history.attempted.contains_key(*id) && !history.acknowledged.contains_key(*id))
        .count();
    for (id, seq) in &history.acknowledged {
        match r.logged.get(id) {
            None => r.lost.push(format!("{id} (acknowledged as seq {seq})")),
            Some((source, s)) if s != seq => r.moved.push(format!(
                "{id}: acknowledged as {source} seq {seq}, logged as seq {s}"
            )),
            Some(_) => {}
        }
    }
    for (source, held) in seqs {
        let max = held.last().copied().unwrap_or(0);
        let missing: Vec<u64> = (1..=max).filter(|s| !held.contains(s)).collect();
        if !missing.is_empty() {
            r.holes.insert(source, missing);
        }
    }
    r
}

/// The figures the hub's views must show, recomputed from the attempted records of the
/// delivered writes (not from the hub's copies), with the spec's merge rule: per school
/// and kind the snapshot with the latest `as_of` wins; the baseline is the latest on or
/// before the campaign's baseline date; schools sum up to counties, cities, provinces
/// and the nation.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ExpectedViews {
    /// Per (county, school): teacher and student spaces, and their baselines.
    pub schools: BTreeMap<(RegionCode, SchoolCode), [Option<u64>; 4]>,
    /// Per province: teacher and student spaces.
    pub provinces: BTreeMap<RegionCode, [u64; 2]>,
    /// The nation: teacher and student spaces.
    pub nation: [u64; 2],
    /// Titles of the delivered activities.
    pub activities: BTreeSet<String>,
    /// View items: one per delivered write.
    pub items: usize,
}

const KINDS: [SpaceKind; 2] = [SpaceKind::Teacher, SpaceKind::Student];

/// Recomputes the expected views of `report`'s delivered writes from `history`.
pub fn expected_views(history: &History, report: &Report, campaign: &Campaign) -> ExpectedViews {
    let mut out = ExpectedViews::default();
    // Per school and kind: (as_of, value) of the winner and of the baseline winner.
    type Best = Option<(NaiveDate, u64)>;
    let mut best: BTreeMap<(RegionCode, SchoolCode), [Best; 4]> = BTreeMap::new();
    let later = |slot: &mut Best, cand: (NaiveDate, u64)| {
        if slot.is_none_or(|b| cand.0 > b.0) {
            *slot = Some(cand);
        }
    };
    for id in report.logged.keys() {
        let Some((_, record)) = history.attempted.get(id) else {
            continue;
        };
        out.items += 1;
        match record {
            Record::Activity(a) => {
                out.activities.insert(a.title.clone());
            }
            Record::SpaceCount(s) => {
                let Some(school) = s.school else { continue };
                let slots = best.entry((s.region, school)).or_default();
                for (i, k) in KINDS.iter().enumerate() {
                    if let Some(v) = s.spaces.get(*k) {
                        later(&mut slots[i], (s.as_of, v));
                        if s.as_of <= campaign.baseline {
                            later(&mut slots[2 + i], (s.as_of, v));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for (key, slots) in best {
        let figures = slots.map(|b| b.map(|(_, v)| v));
        let province = out.provinces.entry(key.0.province()).or_default();
        for i in 0..2 {
            let v = figures[i].unwrap_or(0);
            province[i] += v;
            out.nation[i] += v;
        }
        out.schools.insert(key, figures);
    }
    out
}

/// Differences between the hub's views and the expected ones; empty when they agree.
pub fn compare_views(expected: &ExpectedViews, views: &Views, campaign: &Campaign) -> Vec<String> {
    let mut diffs = Vec::new();
    let items = usize::try_from(views.entries()).unwrap_or(usize::MAX);
    if items != expected.items {
        diffs.push(format!(
            "the views hold {items} items; {} writes were delivered",
            expected.items
        ));
    }
    let titles: BTreeSet<String> = views
        .activities()
        .into_iter()
        .map(|(_, a)| a.title.clone())
        .collect();
    if titles != expected.activities {
        let missing = expected.activities.difference(&titles).count();
        let extra = titles.difference(&expected.activities).count();
        diffs.push(format!(
            "activities: {missing} delivered ones missing from the views, {extra} in the views but not delivered"
        ));
    }
    let rollup = views.rollup(campaign);
    let mut seen = 0;
    for (county, list) in &rollup.schools() {
        for (school, f) in list {
            seen += 1;
            let got = [
                f.spaces.get(SpaceKind::Teacher),
                f.spaces.get(SpaceKind::Student),
                f.baseline.get(SpaceKind::Teacher),
                f.baseline.get(SpaceKind::Student),
            ];
            match expected.schools.get(&(*county, *school)) {
                Some(want) if *want == got => {}
                want => diffs.push(format!(
                    "school {school} in {county}: views say [teacher, student, baseline teacher, baseline student] = {got:?}, recomputed {want:?}"
                )),
            }
        }
    }
    if seen != expected.schools.len() {
        diffs.push(format!(
            "the views have {seen} schools, the delivered records {}",
            expected.schools.len()
        ));
    }
    for (province, want) in &expected.provinces {
        let f = rollup.region(*province);
        let got = [
            f.spaces.get(SpaceKind::Teacher).unwrap_or(0),
            f.spaces.get(SpaceKind::Student).unwrap_or(0),
        ];
        if got != *want {
            diffs.push(format!(
                "province {province}: views say {got:?}, recomputed {want:?}"
            ));
        }
    }
    let nation = [
        rollup.nation.spaces.get(SpaceKind::Teacher).unwrap_or(0),
        rollup.nation.spaces.get(SpaceKind::Student).unwrap_or(0),
    ];
    if nation != expected.nation {
        diffs.push(format!(
            "nation: views say {nation:?}, recomputed {:?}",
            expected.nation
        ));
    }
    diffs
}

/// Differences between two roll-ups (e.g. the stored views and a rebuild from the log).
pub fn compare_rollups(a: &Rollup, b: &Rollup) -> Vec<String> {
    let mut diffs = Vec::new();
    if a.nation != b.nation {
        diffs.push(format!("nation: {:?} vs {:?}", a.nation, b.nation));
    }
    let regions: BTreeSet<&RegionCode> = a.totals.keys().chain(b.totals.keys()).collect();
    for r in regions {
        if a.totals.get(r) != b.totals.get(r) {
            diffs.push(format!(
                "region {r}: {:?} vs {:?}",
                a.totals.get(r),
                b.totals.get(r)
            ));
        }
    }
    if a.schools() != b.schools() {
        diffs.push("school figures differ".into());
    }
    if a.flags != b.flags {
        diffs.push(format!(
            "flags differ: {} vs {}",
            a.flags.len(),
            b.flags.len()
        ));
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> SourceId {
        SourceId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn act(title: &str) -> Record {
        Record::from_value(&serde_json::json!({"kind": "activity", "region": "440106",
            "date": "2018-11-20", "category": "training", "title": title}))
        .unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn sc(school: &str, as_of: &str, teacher: u64) -> Record {
        Record::from_value(&serde_json::json!({"kind": "space_count", "region": "440106",
            "school": school, "as_of": as_of, "spaces": {"teacher": teacher, "student": teacher * 10}}))
        .unwrap_or_else(|p| panic!("{p:?}"))
    }

    /// A history: `a` attempted titles, `k` those acknowledged at seq = position in `a`
    /// (1-based), `x` refused; and the log as (seq, title) of source `s`.
    fn run(a: &[&str], k: &[&str], x: &[&str], log: &[(u64, &str)]) -> Report {
        let s = src("gd-rrt");
        let mut h = History::default();
        let writes: Vec<(String, Record)> = a.iter().map(|t| (t.to_string(), act(t))).collect();
        h.attempt(&s, &writes);
        for t in k {
            let seq = a.iter().position(|x| x == t).unwrap_or(0) as u64 + 1;
            h.acknowledge([t.to_string()], &[seq]);
        }
        h.refuse(x.iter().map(|t| t.to_string()));
        let leaves: Vec<Leaf> = log
            .iter()
            .enumerate()
            .map(|(i, (seq, t))| Leaf {
                index: i as u64,
                source: s.clone(),
                seq: *seq,
                record: act(t),
            })
            .collect();
        check(&h, &leaves)
    }

    /// One row per finding: the run, and the counts (lost, unexpected, duplicates, holes,
    /// moved, resurrected) it must produce.
    #[test]
    fn each_anomaly_is_found_and_only_it() {
        type Row<'a> = (&'a str, Report, [usize; 6]);
        let rows: Vec<Row> = vec![
            (
                "clean",
                run(&["a", "b"], &["a", "b"], &[], &[(1, "a"), (2, "b")]),
                [0; 6],
            ),
            (
                "unanswered but delivered is fine",
                run(&["a", "b"], &["a"], &[], &[(1, "a"), (2, "b")]),
                [0; 6],
            ),
            (
                "lost",
                run(&["a", "b"], &["a", "b"], &[], &[(1, "a")]),
                [1, 0, 0, 0, 0, 0],
            ),
            (
                "unexpected",
                run(&["a"], &["a"], &[], &[(1, "a"), (2, "zzz")]),
                [0, 1, 0, 0, 0, 0],
            ),
            (
                "duplicate id",
                run(&["a"], &["a"], &[], &[(1, "a"), (2, "a")]),
                [0, 0, 1, 0, 0, 0],
            ),
            (
                "duplicate seq",
                run(&["a", "b"], &["a", "b"], &[], &[(1, "a"), (1, "b")]),
                [0, 0, 1, 0, 1, 0],
            ),
            (
                "hole",
                run(&["a", "b"], &["a"], &[], &[(1, "a"), (3, "b")]),
                [0, 0, 0, 1, 0, 0],
            ),
            (
                "moved",
                run(&["a", "b"], &["b"], &[], &[(1, "b"), (2, "a")]),
                [0, 0, 0, 0, 1, 0],
            ),
            (
                "resurrected",
                run(&["a", "b"], &["a"], &["b"], &[(1, "a"), (2, "b")]),
                [0, 0, 0, 0, 0, 1],
            ),
        ];
        for (name, r, want) in rows {
            let got = [
                r.lost.len(),
                r.unexpected.len(),
                r.duplicates.len(),
                r.holes.len(),
                r.moved.len(),
                r.resurrected.len(),
            ];
            assert_eq!(got, want, "{name}: {}", r.details());
            assert_eq!(r.valid(), want == [0; 6], "{name}");
        }
    }

    #[test]
    fn the_verdict_line_has_the_ci_form() {
        let r = run(&["a", "b", "c"], &["a", "b"], &[], &[(1, "a"), (2, "b")]);
        assert_eq!(
            r.line(42, 201, 999),
            "checker: seed=42 attempted=3 acknowledged=2 delivered=2 lost=0 unexpected=0 duplicates=0 kills=201 faults=999"
        );
    }

    #[test]
    fn expected_views_take_the_latest_snapshot_per_school() {
        let s = src("gd-rrt");
        let mut h = History::default();
        let writes = vec![
            ("x1".to_string(), sc("4401060001", "2018-09-20", 5)),
            ("x2".to_string(), sc("4401060001", "2018-11-01", 9)),
            ("x3".to_string(), sc("4401060002", "2018-10-20", 7)),
            ("x4".to_string(), sc("4401060002", "2018-11-20", 8)),
            ("t".to_string(), act("t")),
        ];
        h.attempt(&s, &writes);
        let mut report = Report::default();
        // x4 was never delivered.
        for (i, id) in ["x1", "x2", "x3", "t"].iter().enumerate() {
            report
                .logged
                .insert(id.to_string(), (s.clone(), i as u64 + 1));
        }
        let v = expected_views(&h, &report, &Campaign::builtin_2018());
        let county = RegionCode::parse("440106").unwrap_or_else(|e| panic!("{e}"));
        let school = |c: &str| SchoolCode::parse(c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v.schools[&(county, school("4401060001"))],
            [Some(9), Some(90), Some(5), Some(50)]
        );
        assert_eq!(
            v.schools[&(county, school("4401060002"))],
            [Some(7), Some(70), None, None]
        );
        assert_eq!(v.nation, [16, 160]);
        assert_eq!(v.items, 4);
        assert_eq!(v.activities.len(), 1);
    }
}
