//! The assessment: everything a bulletin says, as Rust types. [`crate::tracking::assess`]
//! produces it; bulletins sign it (serialized by serde, the only place it becomes JSON),
//! notices, the renderers, the dashboard and the API read its fields. Reading an issued
//! bulletin back gives the same types ([`Bulletin`]), for format 1 and format 2 alike:
//! members format 2 added are `Option`s that format 1 leaves out.
//!
//! The JSON these types write is the signed bulletin body: renaming or reshaping a field
//! changes what old bulletins verify against, so a change here needs a new [`FORMAT`] and
//! a way for `verify` to read the old one (see `tracking::as_format`).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use spacesync_shared::campaign::NomineeType;
use spacesync_shared::record::{Population, SpaceCounts, SpaceKind};
use spacesync_shared::region::Level;
use spacesync_shared::wire::{NoticeFacts, PlanProblem};
use spacesync_shared::{RegionCode, SourceId};

use crate::views::{Coverage, Extension, Figures, Flag};

/// The bulletin body's format, written as `format`. Format 2 added the structured facts
/// of the lagging list and plan problems (`milestone`, `due`, `days_late`, `received_at`,
/// pace `target` / `reached`); bulletins without a `format` are format 1.
pub const FORMAT: u64 = 2;

/// Everything a bulletin says, computed at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    /// [`FORMAT`]; absent in format 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u64>,
    /// The campaign id.
    pub campaign: String,
    /// The local date of the instant.
    pub as_of_date: NaiveDate,
    /// National figures, pace, milestone summary and trajectory.
    pub nation: Nation,
    /// Every provincial unit, ranked.
    pub provinces: Vec<UnitStatus>,
    /// Nominations that broke a quota, received by the instant.
    pub quota_violations: Vec<QuotaViolationItem>,
    /// Units whose latest implementation plan breaks the plan rules.
    pub plan_problems: Vec<PlanItem>,
    /// Units with at least one reason to be named.
    pub lagging: Vec<Lagging>,
    /// Active sources silent for longer than the campaign allows.
    pub silent_sources: Vec<SilentSource>,
    /// Every flag raised while merging space counts.
    pub flags: Vec<Flag>,
    /// Deadline extensions granted by the instant.
    pub extensions: Vec<Extension>,
    /// Activity windows and where they stand.
    pub windows: Vec<Window>,
    /// The deliverables, with their due dates.
    pub deliverables: Vec<Deliverable>,
    /// Activities reported per provincial unit.
    pub activities: Vec<ActivityCount>,
}

impl Assessment {
    /// The deliverable or window titled `id`, in Chinese and English.
    pub fn milestone_title(&self, id: &str) -> Option<(&str, &str)> {
        self.deliverables
            .iter()
            .map(|d| (&d.id, &d.title, &d.title_en))
            .chain(self.windows.iter().map(|w| (&w.id, &w.title, &w.title_en)))
            .find(|(i, _, _)| *i == id)
            .map(|(_, t, e)| (t.as_str(), e.as_str()))
    }

    /// The unit `code`, if the assessment covers it.
    pub fn unit(&self, code: RegionCode) -> Option<&UnitStatus> {
        self.provinces.iter().find(|u| u.code == code)
    }
}

/// Figures of a region or the nation as the bulletin states them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FigureSet {
    /// Spaces per kind (missing kinds unknown).
    pub spaces: SpaceCounts,
    /// Real-name spaces per kind.
    pub real_name: SpaceCounts,
    /// Spaces per kind at the baseline date.
    pub baseline: SpaceCounts,
    /// Denominators.
    pub population: Population,
    /// New spaces since the baseline, all kinds.
    pub new_spaces: i64,
    /// New spaces per known kind.
    pub new_by_kind: BTreeMap<String, i64>,
    /// Coverage ratios.
    pub coverage: Coverage,
}

impl From<&Figures> for FigureSet {
    fn from(f: &Figures) -> FigureSet {
        FigureSet {
            spaces: f.spaces,
            real_name: f.real_name,
            baseline: f.baseline,
            population: f.population,
            new_spaces: f.new_spaces(),
            new_by_kind: SpaceKind::ALL
                .iter()
                .filter_map(|k| f.new_of(*k).map(|n| (k.as_str().to_string(), n)))
                .collect(),
            coverage: f.coverage(),
        }
    }
}

/// Where a unit stands on one deliverable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MilestoneStatus {
    /// Due later than the due-soon window.
    NotDue,
    /// Due within the due-soon window, not yet submitted.
    DueSoon,
    /// Submitted in time (or within grace, signed in time).
    OnTime,
    /// Submitted after the deadline.
    Late,
    /// Deadline passed, nothing submitted.
    Missing,
}

impl MilestoneStatus {
    /// Every status, in the order tables show them.
    pub const ALL: [MilestoneStatus; 5] = [
        MilestoneStatus::OnTime,
        MilestoneStatus::Late,
        MilestoneStatus::Missing,
        MilestoneStatus::DueSoon,
        MilestoneStatus::NotDue,
    ];

    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            MilestoneStatus::NotDue => "not_due",
            MilestoneStatus::DueSoon => "due_soon",
            MilestoneStatus::OnTime => "on_time",
            MilestoneStatus::Late => "late",
            MilestoneStatus::Missing => "missing",
        }
    }
}

/// One cell of the milestone matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MilestoneCell {
    /// Status at the bulletin's instant.
    pub status: MilestoneStatus,
    /// The deadline in force (the due date, or an extension).
    pub due: NaiveDate,
    /// When an extension moved the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_until: Option<NaiveDate>,
    /// Hub receive time of the first submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<DateTime<Utc>>,
    /// Local date of the first submission's receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_on: Option<NaiveDate>,
    /// Days late (status late), or days overdue (status missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_late: Option<i64>,
    /// Days until due (not_due, due_soon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
    /// Submissions received (resubmissions included).
    pub submissions: usize,
    /// Accepted on time only thanks to the grace period.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub within_grace: bool,
}

/// Pace class against the expected trajectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaceClass {
    /// At or above the `behind` share of the expected figure.
    OnTrack,
    /// Below `behind`.
    Behind,
    /// Below `far_behind`.
    FarBehind,
    /// No target can be set (no per-province target and no population known) or no time has passed.
    Unknown,
}

/// Pace of one unit or the nation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pace {
    /// Target new spaces by the target date.
    pub target: Option<u64>,
    /// New spaces expected by now on the straight line from baseline to target date.
    pub expected: Option<u64>,
    /// New spaces so far.
    pub actual: i64,
    /// actual / expected.
    pub ratio: Option<f64>,
    /// Class from the campaign's thresholds.
    pub class: PaceClass,
}

/// One provincial unit in the bulletin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitStatus {
    /// The unit.
    pub code: RegionCode,
    /// Its Chinese name.
    pub name: Option<String>,
    /// Its English name.
    pub name_en: Option<String>,
    /// Its figures.
    #[serde(flatten)]
    pub figures: FigureSet,
    /// Its pace.
    pub pace: Pace,
    /// Its deliverables, by milestone id.
    pub milestones: BTreeMap<String, MilestoneCell>,
    /// Real-name share of personal spaces.
    pub real_name_share: Option<f64>,
    /// Position in the ranking, from 1.
    pub rank: usize,
}

/// The national target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// New spaces.
    pub new_spaces: u64,
    /// By this date.
    pub by: NaiveDate,
}

/// The national trajectory: expected against actual at the bulletin date.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// The baseline date (0 new spaces expected).
    pub baseline: NaiveDate,
    /// The target date.
    pub target_date: NaiveDate,
    /// New spaces targeted.
    pub target: u64,
    /// The bulletin's local date.
    pub today: NaiveDate,
    /// Expected by today on the straight line.
    pub expected_today: u64,
    /// Reached by today.
    pub actual_today: i64,
}

/// The nation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nation {
    /// National figures.
    #[serde(flatten)]
    pub figures: FigureSet,
    /// National pace.
    pub pace: Pace,
    /// The national target.
    pub target: Target,
    /// Per deliverable: units per status word.
    pub milestones: BTreeMap<String, BTreeMap<MilestoneStatus, u32>>,
    /// Real-name share of personal spaces.
    pub real_name_share: Option<f64>,
    /// The trajectory.
    pub trajectory: Trajectory,
}

/// Figures a pace reason is about.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PaceFacts {
    /// actual / expected.
    pub ratio: Option<f64>,
    /// Expected by now.
    pub expected: Option<u64>,
    /// Reached by now.
    pub actual: i64,
    /// The unit's target (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// Reached by now, as notices name it (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<i64>,
    /// The target date (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<NaiveDate>,
}

/// The implementation plan's facts beside its problems (format 2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanFacts {
    /// The plan milestone's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milestone: Option<String>,
    /// Its deadline in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<NaiveDate>,
    /// How late the first plan came (or is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_late: Option<i64>,
    /// When the plan judged was received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
}

/// Why a unit is named in the lagging list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// A deliverable's deadline passed with nothing submitted.
    MilestoneMissing {
        /// The milestone id.
        milestone: String,
        /// The deadline in force.
        due: NaiveDate,
        /// Days overdue (format 1's name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        days_overdue: Option<i64>,
        /// Days overdue (format 2, the name notices use).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        days_late: Option<i64>,
    },
    /// A deliverable came after its deadline.
    MilestoneLate {
        /// The milestone id.
        milestone: String,
        /// The deadline in force.
        due: NaiveDate,
        /// Days late.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        days_late: Option<i64>,
        /// Local date of the receipt (format 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        submitted_on: Option<NaiveDate>,
    },
    /// The latest implementation plan breaks the plan rules.
    PlanIncomplete {
        /// The problems.
        problems: Vec<PlanProblem>,
        /// The plan's facts.
        #[serde(flatten)]
        facts: PlanFacts,
    },
    /// Below the `behind` share of the expected figure.
    BehindPace(PaceFacts),
    /// Below the `far_behind` share.
    FarBehindPace(PaceFacts),
    /// Nominations over quota.
    QuotaViolation {
        /// How many.
        count: usize,
    },
    /// Sources silent too long.
    SourceSilent {
        /// Their ids.
        sources: Vec<SourceId>,
    },
}

/// A unit and why it lags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lagging {
    /// The unit.
    pub code: RegionCode,
    /// Its Chinese name.
    pub name: Option<String>,
    /// Its English name.
    pub name_en: Option<String>,
    /// The reasons, deliverables first.
    pub reasons: Vec<Reason>,
}

/// A unit whose plan breaks the rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanItem {
    /// The unit.
    pub code: RegionCode,
    /// Its name.
    pub name: Option<String>,
    /// The problems.
    pub problems: Vec<PlanProblem>,
    /// The plan's facts.
    #[serde(flatten)]
    pub facts: PlanFacts,
}

/// A nomination over quota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaViolationItem {
    /// The recommender's provincial unit.
    pub province: RegionCode,
    /// The recommender's level.
    pub level: Level,
    /// The recommender.
    pub by: RegionCode,
    /// Schools or regions.
    pub nominee_type: NomineeType,
    /// The nominee refused.
    pub nominee: String,
    /// The quota.
    pub limit: u32,
    /// Nominees already counted.
    pub counted: Vec<String>,
    /// Who sent the nomination.
    pub source: SourceId,
    /// Its seq.
    pub seq: u64,
    /// The violation in words (English).
    pub text: String,
}

/// An active source silent too long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SilentSource {
    /// The source.
    pub source: SourceId,
    /// Its scope.
    pub scope: RegionCode,
    /// Last receive time, if it ever sent.
    pub last_seen: Option<DateTime<Utc>>,
    /// Days since it was last seen (or added).
    pub days_silent: i64,
}

/// Where an activity window stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowState {
    /// Not open yet.
    Upcoming,
    /// Open.
    Open,
    /// Closed.
    Closed,
}

/// An activity window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The milestone id.
    pub id: String,
    /// Chinese title.
    pub title: String,
    /// English title.
    pub title_en: String,
    /// First day.
    pub opens: Option<NaiveDate>,
    /// Last day.
    pub due: NaiveDate,
    /// Where it stands.
    pub state: WindowState,
}

/// A deliverable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deliverable {
    /// The milestone id.
    pub id: String,
    /// Chinese title.
    pub title: String,
    /// English title.
    pub title_en: String,
    /// Due date.
    pub due: NaiveDate,
}

/// Activities of one provincial unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActivityCount {
    /// The unit.
    pub code: RegionCode,
    /// Activities reported.
    pub activities: u64,
    /// Participants reported.
    pub participants: u64,
}

/// The checkpoint a bulletin was computed at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulletinCheckpoint {
    /// The log's origin line.
    pub origin: String,
    /// Log size.
    pub size: u64,
    /// Root hash, base64.
    pub root: String,
    /// The signed checkpoint note.
    pub note: String,
}

/// How far a bulletin's checkpoint is witnessed: which agents' cosignatures of exactly
/// that checkpoint verify, out of the sources registered then, against the campaign's
/// quorum. Not part of the signed document (cosignatures arrive after it is issued): the
/// reader computes it ([`crate::witness`]) and the renderers show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessStatus {
    /// The checkpoint's size.
    pub size: u64,
    /// The sources whose cosignature verifies, in id order.
    pub witnesses: Vec<String>,
    /// The provincial units witnessed (codes, in the campaign's order): each has a source
    /// registered and not revoked then, and every such source of it cosigned.
    #[serde(default)]
    pub units: Vec<String>,
    /// How many provincial units the campaign has (the quorum's "of").
    pub of: usize,
    /// The campaign's quorum, in provincial units.
    pub quorum: u32,
}

impl WitnessStatus {
    /// Has the quorum of provincial units cosigned?
    pub fn reached(&self) -> bool {
        self.units.len() >= self.quorum as usize
    }
}

/// One earlier bulletin's national figures, for the trajectory chart. Copied from the
/// earlier bulletins at issue time; `verify` checks each against the bulletin it names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// The earlier bulletin's number.
    pub number: u64,
    /// Its data date.
    pub as_of_date: NaiveDate,
    /// National new spaces it stated.
    pub new_spaces: i64,
    /// National new spaces expected by then.
    pub expected: Option<u64>,
}

impl HistoryPoint {
    /// The point a bulletin contributes to later bulletins' history.
    pub fn of(b: &Bulletin) -> HistoryPoint {
        HistoryPoint {
            number: b.number,
            as_of_date: b.assessment.as_of_date,
            new_spaces: b.assessment.nation.figures.new_spaces,
            expected: b.assessment.nation.pace.expected,
        }
    }
}

/// An issued bulletin: the assessment and what issuing added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bulletin {
    /// Its number, from 1.
    pub number: u64,
    /// Chinese title.
    pub title: String,
    /// English title.
    pub title_en: String,
    /// When it was issued (hub clock).
    pub issued_at: DateTime<Utc>,
    /// The schedule slot it was issued for.
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The log checkpoint its figures were computed at.
    pub checkpoint: BulletinCheckpoint,
    /// The notice log at issue time, oldest first (the signature covers it as issued).
    #[serde(default)]
    pub notices: Vec<NoticeEntry>,
    /// Every earlier bulletin's national figures, oldest first (absent before this
    /// member existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryPoint>,
    /// What the bulletin says.
    #[serde(flatten)]
    pub assessment: Assessment,
    /// How far its checkpoint is witnessed, when the reader computed it (never read from
    /// nor written to the signed document).
    #[serde(skip)]
    pub witnessed: Option<WitnessStatus>,
}

impl Bulletin {
    /// Reads an issued bulletin document (format 1 or 2): the signed document as stored
    /// (a `&serde_json::Value`, or a `serde_json::Deserializer` over its bytes).
    pub fn from_document<'de, D: serde::Deserializer<'de>>(doc: D) -> Result<Bulletin, D::Error> {
        Bulletin::deserialize(doc)
    }
}

/// A notice in a bulletin's notice log: the notice book's record at issue time as every
/// reader sees it (`GET /v1/notices` without the admin role: webhooks by id, never a URL).
/// [`crate::notices`] writes it, with the same JSON as its `NoticeView`; every member
/// has a default, so a notice an older hub wrote with fewer members still reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BulletinNotice {
    /// Its number in the notice book.
    #[serde(default)]
    pub id: u64,
    /// The rule that raised it.
    #[serde(default)]
    pub rule: String,
    /// The region it is about.
    #[serde(default)]
    pub subject: Option<RegionCode>,
    /// The region it is addressed to.
    #[serde(default)]
    pub addressee: Option<RegionCode>,
    /// Also sent to the level above.
    #[serde(default)]
    pub escalated: bool,
    /// When it was raised.
    #[serde(default)]
    pub created: Option<DateTime<Utc>>,
    /// The deadline it is about.
    #[serde(default)]
    pub deadline: Option<NaiveDate>,
    /// Chinese text.
    #[serde(default)]
    pub text: String,
    /// English text.
    #[serde(default)]
    pub text_en: String,
    /// `pending`, `delivered` or `acknowledged` at issue time (a string, so that a state
    /// a later hub adds still reads).
    #[serde(default)]
    pub state: String,
    /// First delivery (agent fetch or webhook 2xx).
    #[serde(default)]
    pub delivered: Option<DateTime<Utc>>,
    /// First acknowledgement.
    #[serde(default)]
    pub acknowledged: Option<DateTime<Utc>>,
    /// Agents that fetched it.
    #[serde(default)]
    pub fetched_by: Vec<SourceId>,
    /// Agents that acknowledged it.
    #[serde(default)]
    pub acked_by: Vec<SourceId>,
    /// Webhook deliveries by webhook id (by URL in bulletins issued before webhooks were
    /// named by id; see `notices::redact_legacy_webhooks`).
    #[serde(default)]
    pub webhooks: BTreeMap<String, BulletinWebhook>,
    /// The facts the texts state (`milestone`, `due`, `days_left`, …), beside the prose.
    #[serde(flatten)]
    pub facts: NoticeFacts,
}

/// A webhook delivery of a notice in a bulletin's notice log. There is no URL member:
/// bulletins go to every reader, and a URL is a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulletinWebhook {
    /// Attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// When it was accepted (2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    /// The last failure (URL replaced by the webhook's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One entry of a bulletin's notice log as read back. An entry this hub cannot read (a
/// damaged or foreign document) is `Unreadable`, so that it alone is shown as such and
/// the rest of the bulletin still reads.
#[derive(Debug, Clone, PartialEq)]
pub enum NoticeEntry {
    /// The notice (boxed: an entry is mostly this, and `Unreadable` is nothing).
    Notice(Box<BulletinNotice>),
    /// Not a notice this hub can read; written back as `null`. (The signed document,
    /// not a [`Bulletin`] written back, is the record of what was issued.)
    Unreadable,
}

impl<'de> Deserialize<'de> for NoticeEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NoticeEntry, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Notice(Box<BulletinNotice>),
            Other(serde::de::IgnoredAny),
        }
        Ok(match Entry::deserialize(d)? {
            Entry::Notice(n) => NoticeEntry::Notice(n),
            Entry::Other(_) => NoticeEntry::Unreadable,
        })
    }
}

impl Serialize for NoticeEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NoticeEntry::Notice(n) => n.serialize(s),
            NoticeEntry::Unreadable => s.serialize_unit(),
        }
    }
}
