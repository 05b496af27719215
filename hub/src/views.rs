//! Merged views over the log: space counts per school and region with the spec's merge and
//! roll-up rules, milestone submissions, nominations with quota checks, activities, and
//! withdrawals honoured.
//!
//! Each view-relevant entry becomes one item (`v/i/<log index>`: who, when, the record,
//! and whether it was withdrawn), written in the same atomic batch as the log append. On
//! restart the hub loads these items — no signature, chain or tree work — instead of
//! replaying the log. Figures are derived from the items by pure functions, so the
//! incremental views and a `rebuild` from the log agree by construction; a property test
//! holds them to it.
//!
//! The items are held in persistent maps (`imbl`): cloning the views is O(1) and shares
//! structure, and a change copies only the path to what it changes. That is what lets the
//! hub publish a snapshot to readers after every append at a cost that does not grow with
//! the log (see [`crate::hub::Snapshot`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use imbl::{OrdMap, OrdSet, Vector};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spacesync_shared::campaign::{Campaign, QuotaLedger, QuotaViolation};
use spacesync_shared::record::{
    Activity, Milestone, Population, Recommendation, SpaceCount, SpaceCounts, SpaceKind,
};
use spacesync_shared::region::{Directory, Level, SchoolCode, unit};
use spacesync_shared::{Record, RegionCode, SourceId};

use crate::store::{Store, StoreError, WriteBatch};

mod figures;
mod subjects;
pub use figures::{Coverage, Figures, Flag, Meta};
use subjects::{SchoolSum, Summary};

const ITEM_PREFIX: &[u8] = b"v/i/";
const EXTENSION_PREFIX: &[u8] = b"v/x/";

pub use crate::entries::{Extension, HUB_ENTRY_PAYLOAD_TYPE, HubEntry};

fn item_key(log_index: u64) -> Vec<u8> {
    [ITEM_PREFIX, &log_index.to_be_bytes()].concat()
}

#[derive(Serialize, Deserialize)]
struct StoredItem {
    meta: Meta,
    /// The record's JSON; read back through the same strict reader as on ingest.
    record: Value,
}

/// One view item in memory.
#[derive(Debug, Clone)]
pub struct Item {
    /// Who and when.
    pub meta: Meta,
    /// The record.
    pub record: Record,
}

/// Subject of a space count: a region's own total, or a school.
type Subject = (RegionCode, Option<SchoolCode>);

/// The merged views. A clone is cheap and independent: later changes to either do not
/// show in the other.
#[derive(Clone)]
pub struct Views {
    /// The campaign's baseline date (the merge rule's baseline figures depend on it).
    baseline: NaiveDate,
    /// Items by log index; shared with snapshots, copied on write (a withdrawal).
    items: OrdMap<u64, Arc<Item>>,
    /// Log index of each entry per source and seq, to find a withdrawal's target.
    by_source_seq: OrdMap<SourceId, OrdMap<u64, u64>>,
    /// Per subject: its snapshots' log indexes and their merged summary.
    subjects: OrdMap<Subject, Arc<SubjectState>>,
    /// Per region, the sum of its schools' merged figures, kept as they change.
    school_sums: OrdMap<RegionCode, SchoolSum>,
    /// Regions whose own total has a live snapshot.
    own_regions: OrdSet<RegionCode>,
    /// Subjects that raise flags of their own.
    flagged: OrdSet<Subject>,
    /// Per source: entries, last receive time.
    sources: OrdMap<SourceId, SourceActivity>,
    /// Deadline extensions, by log index.
    extensions: OrdMap<u64, Extension>,
}

/// One subject's snapshots and what they merge to.
#[derive(Clone, Default)]
struct SubjectState {
    /// Log indexes of its snapshots, in log order (withdrawn ones included).
    snapshots: Vector<u64>,
    /// Its live snapshots merged (see [`subjects`]).
    summary: Summary,
}

/// What the views know of a source's traffic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceActivity {
    /// Entries in the views from this source.
    pub entries: u64,
    /// Last hub receive time.
    pub last_received: Option<DateTime<Utc>>,
    /// Last agent recording time.
    pub last_recorded: Option<DateTime<Utc>>,
}

impl Views {
    /// Empty views for a campaign whose baseline date is `baseline`.
    pub fn new(baseline: NaiveDate) -> Views {
        Views {
            baseline,
            items: OrdMap::new(),
            by_source_seq: OrdMap::new(),
            subjects: OrdMap::new(),
            school_sums: OrdMap::new(),
            own_regions: OrdSet::new(),
            flagged: OrdSet::new(),
            sources: OrdMap::new(),
            extensions: OrdMap::new(),
        }
    }

    /// Loads the persisted items, for a campaign whose baseline date is `baseline`.
    pub fn load(store: &dyn Store, baseline: NaiveDate) -> Result<Views, StoreError> {
        let mut v = Views::new(baseline);
        for r in store.scan(EXTENSION_PREFIX) {
            let (k, bytes) = r?;
            let idx = crate::store::keys::tail_u64(&k).unwrap_or(0);
            let ext: Extension =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    key: format!("v/x/{idx}"),
                    message: e.to_string(),
                })?;
            v.extensions.insert(idx, ext);
        }
        for r in store.scan(ITEM_PREFIX) {
            let (k, bytes) = r?;
            let corrupt = |message: String| StoreError::Corrupt {
                key: format!("v/i/{:?}", crate::store::keys::tail_u64(&k)),
                message,
            };
            let stored: StoredItem =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            let record = Record::from_value(&stored.record).map_err(|p| {
                corrupt(
                    p.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
            v.insert(Item {
                meta: stored.meta,
                record,
            });
        }
        Ok(v)
    }

    fn insert(&mut self, item: Item) {
        let idx = item.meta.log_index;
        self.by_source_seq
            .entry(item.meta.source.clone())
            .or_default()
            .insert(item.meta.seq, idx);
        let act = self.sources.entry(item.meta.source.clone()).or_default();
        act.entries += 1;
        act.last_received = act.last_received.max(Some(item.meta.received_at));
        act.last_recorded = act.last_recorded.max(Some(item.meta.recorded_at));
        let item = Arc::new(item);
        self.items.insert(idx, item.clone());
        if let Record::SpaceCount(s) = &item.record {
            let subject = (s.region, s.school);
            let state = Arc::make_mut(self.subjects.entry(subject).or_default());
            state.snapshots.push_back(idx);
            if item.meta.withdrawn_by.is_some() {
                return;
            }
            let before = (!state.summary.is_empty()).then(|| state.summary.figures());
            if state.summary.extend(subject, &item.meta, s, self.baseline) {
                let after = Some(state.summary.figures());
                let flagged = state.summary.has_flags();
                self.account(subject, before, after, flagged);
            } else {
                self.resummarise(subject);
            }
        }
    }

    /// Rebuilds a subject's summary from its live snapshots (after one dated earlier than
    /// its latest arrived, or one was withdrawn).
    fn resummarise(&mut self, subject: Subject) {
        let summary = Summary::of(subject, self.snapshots(&subject), self.baseline);
        let Some(state) = self.subjects.get_mut(&subject) else {
            return;
        };
        let state = Arc::make_mut(state);
        let before = (!state.summary.is_empty()).then(|| state.summary.figures());
        let after = (!summary.is_empty()).then(|| summary.figures());
        let flagged = summary.has_flags();
        state.summary = summary;
        self.account(subject, before, after, flagged);
    }

    /// Keeps the region sums, the regions with own totals and the flagged subjects in step
    /// with a subject whose merged figures went from `before` to `after` (`None`: no live
    /// snapshot).
    fn account(
        &mut self,
        (region, school): Subject,
        before: Option<Figures>,
        after: Option<Figures>,
        flagged: bool,
    ) {
        if school.is_some() {
            let sum = self.school_sums.entry(region).or_default();
            if let Some(b) = &before {
                sum.change(b, false);
            }
            if let Some(a) = &after {
                sum.change(a, true);
            }
            if sum.is_empty() {
                self.school_sums.remove(&region);
            }
        } else if after.is_some() {
            self.own_regions.insert(region);
        } else {
            self.own_regions.remove(&region);
        }
        if flagged {
            self.flagged.insert((region, school));
        } else {
            self.flagged.remove(&(region, school));
        }
    }

    fn persist(item: &Item, batch: &mut WriteBatch) {
        let stored = StoredItem {
            meta: item.meta.clone(),
            record: item.record.to_value(),
        };
        batch.put(
            item_key(item.meta.log_index),
            serde_json::to_vec(&stored).unwrap_or_default(),
        );
    }

    /// Applies one accepted entry, adding the changed items to `batch`.
    pub fn apply(&mut self, meta: Meta, record: &Record, batch: &mut WriteBatch) {
        if let Record::Withdrawal(w) = record {
            let target = self
                .by_source_seq
                .get(&meta.source)
                .and_then(|seqs| seqs.get(&w.target_seq))
                .copied();
            if let Some(t) = target
                && self
                    .items
                    .get(&t)
                    .is_some_and(|i| i.meta.withdrawn_by.is_none())
                && let Some(item) = self.items.get_mut(&t)
            {
                // Copied here if a snapshot still shares it.
                let item = Arc::make_mut(item);
                item.meta.withdrawn_by = Some(meta.log_index);
                Self::persist(item, batch);
                if let Record::SpaceCount(s) = &item.record {
                    let subject = (s.region, s.school);
                    self.resummarise(subject);
                }
            }
        }
        let item = Item {
            meta,
            record: record.clone(),
        };
        Self::persist(&item, batch);
        self.insert(item);
    }

    /// Applies one of the hub's own entries.
    pub fn apply_hub(&mut self, log_index: u64, entry: &HubEntry, batch: &mut WriteBatch) {
        match entry {
            HubEntry::Extension(x) => {
                batch.put(
                    [EXTENSION_PREFIX, &log_index.to_be_bytes()].concat(),
                    serde_json::to_vec(x).unwrap_or_default(),
                );
                self.extensions.insert(log_index, x.clone());
            }
            // The registry is kept by `crate::registry`, not by the views.
            HubEntry::SourceAdded(_)
            | HubEntry::KeyRotated(_)
            | HubEntry::SourceRevoked(_)
            | HubEntry::RegistryBaseline(_) => {}
        }
    }

    /// Extensions in log order.
    pub fn extensions(&self) -> impl Iterator<Item = &Extension> {
        self.extensions.values()
    }

    /// Every item in log order.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.items.values().map(|i| &**i)
    }

    /// Items not withdrawn.
    pub fn live(&self) -> impl Iterator<Item = &Item> {
        self.items().filter(|i| i.meta.withdrawn_by.is_none())
    }

    /// Per-source traffic, in source order.
    pub fn sources(&self) -> &OrdMap<SourceId, SourceActivity> {
        &self.sources
    }

    fn snapshots(&self, subject: &Subject) -> Vec<(&Meta, &SpaceCount)> {
        self.subjects
            .get(subject)
            .into_iter()
            .flat_map(|st| st.snapshots.iter())
            .filter_map(|i| self.items.get(i))
            .filter(|i| i.meta.withdrawn_by.is_none())
            .filter_map(|i| match &i.record {
                Record::SpaceCount(s) => Some((&i.meta, s)),
                _ => None,
            })
            .collect()
    }

    /// Rolls every subject up to counties, cities, provinces and the nation, from the
    /// maintained region sums: O(regions + flagged subjects), whatever the number of schools.
    pub fn rollup(&self, campaign: &Campaign) -> Rollup {
        if campaign.baseline != self.baseline {
            return self.rollup_afresh(campaign);
        }
        let mut flags = Vec::new();
        for subject in &self.flagged {
            if let Some(state) = self.subjects.get(subject) {
                flags.extend(state.summary.flags(*subject));
            }
        }
        let mut own: HashMap<RegionCode, Figures> = HashMap::new();
        for &r in &self.own_regions {
            if let Some(state) = self.subjects.get(&(r, None)) {
                own.insert(r, state.summary.figures());
            }
        }
        let mut parts: HashMap<RegionCode, Figures> = self
            .school_sums
            .iter()
            .map(|(r, sum)| (*r, sum.figures()))
            .collect();
        let mut regions: BTreeSet<RegionCode> = BTreeSet::new();
        for &region in self.school_sums.keys().chain(self.own_regions.iter()) {
            let mut r = Some(region);
            while let Some(c) = r {
                if !regions.insert(c) {
                    break;
                }
                r = c.parent();
            }
        }
        let (nation, totals) = roll_up(&regions, &own, &mut parts, &mut flags);
        Rollup {
            nation,
            totals,
            schools: Schools::Maintained(self.subjects.clone()),
            flags,
        }
    }

    /// The roll-up merging every subject afresh: for a campaign whose baseline differs
    /// from the one these views were kept for, and the oracle the maintained roll-up is
    /// tested against. O(subjects × snapshots) when the baseline differs, O(subjects) else.
    pub fn rollup_afresh(&self, campaign: &Campaign) -> Rollup {
        let mut flags = Vec::new();
        let mut own: HashMap<RegionCode, Figures> = HashMap::new();
        let mut parts: HashMap<RegionCode, Figures> = HashMap::new();
        let mut schools: BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>> = BTreeMap::new();
        let mut regions: BTreeSet<RegionCode> = BTreeSet::new();
        for (subject, state) in &self.subjects {
            if state.summary.is_empty() {
                continue;
            }
            let f = if campaign.baseline == self.baseline {
                flags.extend(state.summary.flags(*subject));
                state.summary.figures()
            } else {
                // Views kept for another baseline (a campaign file changed under a running
                // reader): merged afresh, the same walk.
                let s = Summary::of(*subject, self.snapshots(subject), campaign.baseline);
                flags.extend(s.flags(*subject));
                s.figures()
            };
            let (region, school) = *subject;
            let mut r = Some(region);
            while let Some(c) = r {
                regions.insert(c);
                r = c.parent();
            }
            match school {
                Some(code) => {
                    parts.entry(region).or_default().add(&f);
                    schools.entry(region).or_default().push((code, f));
                }
                None => {
                    own.insert(region, f);
                }
            }
        }
        let (nation, totals) = roll_up(&regions, &own, &mut parts, &mut flags);
        Rollup {
            nation,
            totals,
            schools: Schools::Computed(schools),
            flags,
        }
    }

    /// Milestone submissions per province and milestone id, in log order (withdrawn ones
    /// excluded).
    pub fn milestones(&self) -> BTreeMap<(RegionCode, String), Vec<(&Meta, &Milestone)>> {
        let mut out: BTreeMap<(RegionCode, String), Vec<(&Meta, &Milestone)>> = BTreeMap::new();
        for i in self.live() {
            if let Record::Milestone(m) = &i.record {
                out.entry((m.region.province(), m.milestone.clone()))
                    .or_default()
                    .push((&i.meta, m));
            }
        }
        out
    }

    /// Nominations per province in log order, and those that broke a quota when they
    /// arrived (judged per province across all its sources).
    pub fn nominations(&self, campaign: &Campaign) -> Nominations<'_> {
        let mut ledgers: BTreeMap<RegionCode, QuotaLedger> = BTreeMap::new();
        let mut counted = Vec::new();
        let mut violations = Vec::new();
        for i in self.live() {
            if let Record::Recommendation(r) = &i.record {
                let ledger = ledgers.entry(r.by.province()).or_default();
                match ledger.add(&campaign.quotas, r) {
                    Ok(()) => counted.push((&i.meta, r)),
                    Err(v) => violations.push((i.meta.clone(), v)),
                }
            }
        }
        Nominations {
            counted,
            violations,
        }
    }

    /// Activities (not withdrawn), in log order.
    pub fn activities(&self) -> Vec<(&Meta, &Activity)> {
        self.live()
            .filter_map(|i| match &i.record {
                Record::Activity(a) => Some((&i.meta, a)),
                _ => None,
            })
            .collect()
    }
}

/// Nominations, split by whether they fit the quotas.
pub struct Nominations<'a> {
    /// Counted nominations.
    pub counted: Vec<(&'a Meta, &'a Recommendation)>,
    /// Nominations that broke a quota on arrival.
    pub violations: Vec<(Meta, QuotaViolation)>,
}

fn merge_own(
    own: Option<&Figures>,
    sum: Option<&Figures>,
    region: RegionCode,
    flags: &mut Vec<Flag>,
) -> Figures {
    match (own, sum) {
        (None, None) => Figures::default(),
        (Some(o), None) => o.clone(),
        (None, Some(s)) => s.clone(),
        (Some(o), Some(s)) => {
            let mut t = Figures::default();
            let pick = |a: &SpaceCounts, b: &SpaceCounts, k: SpaceKind| a.get(k).or(b.get(k));
            for k in SpaceKind::ALL {
                t.spaces.set(k, pick(&o.spaces, &s.spaces, k));
                t.real_name.set(k, pick(&o.real_name, &s.real_name, k));
                t.baseline.set(k, pick(&o.baseline, &s.baseline, k));
                if let (Some(r), Some(p)) = (o.spaces.get(k), s.spaces.get(k)) {
                    let diff = r.abs_diff(p) as f64;
                    if diff > 0.01 * (r.max(p) as f64) {
                        flags.push(Flag::Discrepancy {
                            region,
                            kind: k,
                            reported: r,
                            sum_of_parts: p,
                        });
                    }
                }
            }
            t.population = Population {
                teachers: o.population.teachers.or(s.population.teachers),
                students: o.population.students.or(s.population.students),
                schools: o.population.schools.or(s.population.schools),
            };
            t
        }
    }
}

/// Totals bottom-up — counties, then cities, then provinces — from each region's own total
/// and the sum of its parts (`parts` gains each total under its parent); the nation.
fn roll_up(
    regions: &BTreeSet<RegionCode>,
    own: &HashMap<RegionCode, Figures>,
    parts: &mut HashMap<RegionCode, Figures>,
    flags: &mut Vec<Flag>,
) -> (Figures, BTreeMap<RegionCode, Figures>) {
    let mut totals: BTreeMap<RegionCode, Figures> = BTreeMap::new();
    for level in [Level::County, Level::City, Level::Province] {
        for &r in regions.iter().filter(|r| r.level() == level) {
            let sum = parts.get(&r).cloned();
            let total = merge_own(own.get(&r), sum.as_ref(), r, flags);
            if let Some(p) = r.parent() {
                parts.entry(p).or_default().add(&total);
            }
            totals.insert(r, total);
        }
    }
    let mut nation = Figures::default();
    for (r, f) in &totals {
        if r.level() == Level::Province {
            nation.add(f);
        }
    }
    (nation, totals)
}

/// Where a roll-up finds its schools' figures.
enum Schools {
    /// The views' subjects as of the roll-up (an O(1) clone): read on demand.
    Maintained(OrdMap<Subject, Arc<SubjectState>>),
    /// Merged afresh when the roll-up was made.
    Computed(BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>>),
}

/// Every region's merged figures.
pub struct Rollup {
    /// The nation.
    pub nation: Figures,
    /// Each region with data (and its ancestors).
    pub totals: BTreeMap<RegionCode, Figures>,
    /// Schools' figures.
    schools: Schools,
    /// Flags raised while merging.
    pub flags: Vec<Flag>,
}

impl Rollup {
    /// The figures of a region (empty when nothing is known).
    pub fn region(&self, code: RegionCode) -> Figures {
        self.totals.get(&code).cloned().unwrap_or_default()
    }

    /// The schools of `region` with a live snapshot, in code order, with their figures.
    pub fn schools_in(&self, region: RegionCode) -> Vec<(SchoolCode, Figures)> {
        match &self.schools {
            Schools::Maintained(subjects) => subjects
                .range((region, None)..)
                .take_while(|((r, _), _)| *r == region)
                .filter_map(|((_, school), st)| {
                    let code = (*school)?;
                    (!st.summary.is_empty()).then(|| (code, st.summary.figures()))
                })
                .collect(),
            Schools::Computed(map) => map.get(&region).cloned().unwrap_or_default(),
        }
    }

    /// Every region's schools (as [`Rollup::schools_in`]); regions without schools left out.
    /// O(schools): for reports and tests, not for a page.
    pub fn schools(&self) -> BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>> {
        match &self.schools {
            Schools::Maintained(subjects) => {
                let mut out: BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>> = BTreeMap::new();
                for ((region, school), st) in subjects {
                    if let Some(code) = school
                        && !st.summary.is_empty()
                    {
                        out.entry(*region)
                            .or_default()
                            .push((*code, st.summary.figures()));
                    }
                }
                out
            }
            Schools::Computed(map) => map.clone(),
        }
    }
}

/// The name of a region for display: the unit table for provinces, else the directory.
pub fn region_name(code: RegionCode) -> Option<String> {
    unit(code)
        .filter(|u| u.code == code.as_u32())
        .map(|u| u.name_zh.to_string())
        .or_else(|| Directory::bundled().name(code).map(str::to_string))
}

/// The columns of the flags CSV, the dashboard's and the bulletins' alike, so one program
/// reads both: machine-readable names, one per field of [`flag_csv_row`].
pub const FLAG_CSV_HEADER: [&str; 14] = [
    "flag",
    "region",
    "region_name",
    "school",
    "kind",
    "before_date",
    "before",
    "after_date",
    "after",
    "drop",
    "as_of",
    "sources",
    "reported",
    "sum_of_parts",
];

/// One flag as a row of the flags CSV (the columns of [`FLAG_CSV_HEADER`]), `label`
/// naming its region in the reader's language.
pub fn flag_csv_row(f: &Flag, region: RegionCode, label: String) -> [String; 14] {
    let mut row: [String; 14] = Default::default();
    row[1] = region.to_string();
    row[2] = label;
    match f {
        Flag::Decrease {
            school,
            kind,
            before,
            after,
            source,
            ..
        } => {
            row[0] = "decrease".into();
            row[3] = school.map(|s| s.to_string()).unwrap_or_default();
            row[4] = kind.as_str().into();
            row[5] = before.0.to_string();
            row[6] = before.1.to_string();
            row[7] = after.0.to_string();
            row[8] = after.1.to_string();
            row[9] = before.1.saturating_sub(after.1).to_string();
            row[11] = source.to_string();
        }
        Flag::Conflict {
            school,
            as_of,
            sources,
            ..
        } => {
            row[0] = "conflict".into();
            row[3] = school.map(|s| s.to_string()).unwrap_or_default();
            row[10] = as_of.to_string();
            row[11] = sources
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ");
        }
        Flag::Discrepancy {
            kind,
            reported,
            sum_of_parts,
            ..
        } => {
            row[0] = "discrepancy".into();
            row[4] = kind.as_str().into();
            row[12] = reported.to_string();
            row[13] = sum_of_parts.to_string();
        }
    }
    row
}
