//! The campaign definition: a TOML file that says everything a campaign year needs
//! (milestones and deadlines, targets, quotas, units, bulletin schedule, lagging
//! thresholds), so a 2019 campaign is a new file, not new code.
//!
//! Loading validates the whole file and names the line of the first mistake. The quotas
//! it sets are counted by [`crate::quota`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;

use chrono::{Duration, FixedOffset, NaiveDate, NaiveTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use toml::Spanned;

use crate::region::{Level, RegionCode};

// The quota names were declared here before they had a module of their own.
pub use crate::quota::{NomineeType, Quota, QuotaLedger, QuotaViolation, Quotas};

/// The 2018 campaign as shipped in `deploy/campaigns/2018.toml`.
pub const CAMPAIGN_2018_TOML: &str = include_str!("../../deploy/campaigns/2018.toml");

/// The witness quorum of a campaign file of the 32 provincial units that sets none: the
/// smallest strict majority ([`majority`]), so no two trees of one size can both have it.
pub const DEFAULT_WITNESS_QUORUM: u32 = 17;

/// The smallest strict majority of `units` units: the least witness quorum allowed. Each
/// agent cosigns one tree per size, and a unit counts only when all its sources cosigned,
/// so two strict majorities share a unit that would have cosigned both trees.
pub fn majority(units: usize) -> u32 {
    u32::try_from(units / 2 + 1).unwrap_or(u32::MAX)
}

/// UTC+8, the default time zone of campaign dates.
pub const CHINA_STANDARD_TIME: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
    Some(o) => o,
    None => panic!("UTC+8 is a valid offset"),
};

/// A mistake in a campaign file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    /// The TOML itself does not parse, or a value has the wrong type or an unknown key.
    #[error("line {line}: {message}")]
    Syntax {
        /// 1-based line of the mistake.
        line: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// The file parses but a value is not acceptable.
    #[error("line {line}: {field}: {message}")]
    Invalid {
        /// 1-based line of the offending value.
        line: usize,
        /// Dotted path of the field, e.g. `milestones[2].due`.
        field: String,
        /// Why it is refused and what would be accepted.
        message: String,
    },
}

/// Whether a milestone is handed in by each unit or is a period of activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MilestoneKind {
    /// Submitted by every provincial unit as a `milestone` record; tracked for timeliness.
    Deliverable,
    /// A period (`opens` … `due`) in which activities happen; shown, not submitted.
    Window,
}

/// Structured details a deliverable must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// `details.contacts`: the contact list (personal data).
    Contacts,
    /// `details.years`: the rollout plan, regions per year.
    Years,
}

/// One milestone of the work ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MilestoneDef {
    /// Stable id used in records (`implementation_plan`).
    pub id: String,
    /// Chinese title.
    pub title: String,
    /// English title.
    pub title_en: String,
    /// Deliverable or window.
    pub kind: MilestoneKind,
    /// First day of a window; `None` for deliverables.
    pub opens: Option<NaiveDate>,
    /// Deadline (last day, inclusive) in the campaign's time zone.
    pub due: NaiveDate,
    /// Details a submission must include.
    pub requires: Vec<Requirement>,
}

/// The national target and optional per-province targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// New spaces nationwide between the baseline and `by`.
    pub new_spaces: u64,
    /// Date the target should be reached.
    pub by: NaiveDate,
    /// Per-province targets where the operator set them.
    pub provinces: BTreeMap<RegionCode, u64>,
}

/// When bulletins are issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BulletinSchedule {
    /// The date of bulletin No. 1.
    pub first: NaiveDate,
    /// Days between bulletins.
    pub every_days: u32,
    /// Local time of day bulletins are issued.
    pub at: NaiveTime,
}

/// What counts as lagging.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lagging {
    /// Days before a deadline on which reminders go out (e.g. `[7, 3]`).
    pub remind_days: Vec<u32>,
    /// A deliverable is "due soon" within this many days.
    pub due_soon_days: u32,
    /// Days after a missed deadline when the notice goes to the level above.
    pub escalate_after_days: u32,
    /// Below this share of the expected trajectory a unit is "behind".
    pub behind: f64,
    /// Below this share it is "far behind".
    pub far_behind: f64,
    /// The notice rules an admin may change on a running hub (`adjustable`; default none),
    /// in file order. The changes are hub-signed log entries; see [`NoticeRule`].
    pub adjustable: Vec<NoticeRule>,
}

/// Most day counts `remind_days` may hold when changed live.
pub const MAX_REMIND_DAYS: usize = 16;
/// Largest day count a notice rule may be changed to live (a year and a day).
pub const MAX_RULE_DAYS: u32 = 366;

/// A notice rule setting a campaign file may let an admin change on a running hub
/// (`[lagging] adjustable = [...]`): the `[lagging]` thresholds and `silent_after_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeRule {
    /// `lagging.remind_days`.
    RemindDays,
    /// `lagging.due_soon_days`.
    DueSoonDays,
    /// `lagging.escalate_after_days`.
    EscalateAfterDays,
    /// `lagging.behind`.
    Behind,
    /// `lagging.far_behind`.
    FarBehind,
    /// `silent_after_days`.
    SilentAfterDays,
}

impl NoticeRule {
    /// Every setting, in the order `notice-rules show` lists them.
    pub const ALL: [NoticeRule; 6] = [
        NoticeRule::RemindDays,
        NoticeRule::DueSoonDays,
        NoticeRule::EscalateAfterDays,
        NoticeRule::Behind,
        NoticeRule::FarBehind,
        NoticeRule::SilentAfterDays,
    ];

    /// Its name in the campaign file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NoticeRule::RemindDays => "remind_days",
            NoticeRule::DueSoonDays => "due_soon_days",
            NoticeRule::EscalateAfterDays => "escalate_after_days",
            NoticeRule::Behind => "behind",
            NoticeRule::FarBehind => "far_behind",
            NoticeRule::SilentAfterDays => "silent_after_days",
        }
    }

    /// The setting of this name.
    pub fn parse(name: &str) -> Result<NoticeRule, RuleError> {
        NoticeRule::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| RuleError {
                setting: name.chars().take(64).collect(),
                message: format!("is not a notice rule; the notice rules are {}", all_names()),
            })
    }

    /// What a value of it looks like, for error messages.
    fn form(self) -> String {
        match self {
            NoticeRule::RemindDays => format!(
                "days before a deadline, largest first, each once, at most {MAX_REMIND_DAYS} of them from 0 to {MAX_RULE_DAYS} (e.g. 7,3,1; none for no reminders)"
            ),
            NoticeRule::DueSoonDays | NoticeRule::EscalateAfterDays => {
                format!("a whole number of days from 0 to {MAX_RULE_DAYS}")
            }
            NoticeRule::SilentAfterDays => {
                format!("a whole number of days from 1 to {MAX_RULE_DAYS}")
            }
            NoticeRule::Behind | NoticeRule::FarBehind => {
                "a share of the expected trajectory between 0 and 1 (e.g. 0.75)".into()
            }
        }
    }
}

impl fmt::Display for NoticeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn all_names() -> String {
    NoticeRule::ALL.map(NoticeRule::name).join(", ")
}

/// The value of a [`NoticeRule`]: days, a list of days (`remind_days`) or a share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RuleValue {
    /// A number of days.
    Days(u32),
    /// Days before a deadline, largest first (`remind_days`).
    DayList(Vec<u32>),
    /// A share of the expected trajectory (`behind`, `far_behind`); always finite.
    Share(f64),
}

// Every share is checked finite before it is held, so equality is an equivalence.
impl Eq for RuleValue {}

impl fmt::Display for RuleValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleValue::Days(d) => write!(f, "{d}"),
            RuleValue::DayList(l) if l.is_empty() => f.write_str("none"),
            RuleValue::DayList(l) => {
                let parts: Vec<String> = l.iter().map(u32::to_string).collect();
                f.write_str(&parts.join(","))
            }
            RuleValue::Share(s) => write!(f, "{s}"),
        }
    }
}

impl RuleValue {
    fn days(&self) -> Option<u32> {
        match self {
            RuleValue::Days(d) => Some(*d),
            _ => None,
        }
    }

    fn share(&self) -> Option<f64> {
        match self {
            RuleValue::Share(s) => Some(*s),
            // A share of exactly 0 or 1 may have been written as an integer.
            RuleValue::Days(d) if *d <= 1 => Some(f64::from(*d)),
            _ => None,
        }
    }
}

/// A notice rule value that is refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("notice rule {setting}: {message}")]
pub struct RuleError {
    /// The setting's name as given.
    pub setting: String,
    /// Why it is refused and what would be accepted.
    pub message: String,
}

impl Campaign {
    /// The value of a notice rule in these rules.
    pub fn rule(&self, rule: NoticeRule) -> RuleValue {
        let l = &self.lagging;
        match rule {
            NoticeRule::RemindDays => RuleValue::DayList(l.remind_days.clone()),
            NoticeRule::DueSoonDays => RuleValue::Days(l.due_soon_days),
            NoticeRule::EscalateAfterDays => RuleValue::Days(l.escalate_after_days),
            NoticeRule::Behind => RuleValue::Share(l.behind),
            NoticeRule::FarBehind => RuleValue::Share(l.far_behind),
            NoticeRule::SilentAfterDays => RuleValue::Days(self.silent_after_days),
        }
    }

    /// Reads a value for `rule` as an admin types it (`7,3,1`, `none`, `5`, `0.75`) and
    /// checks it against these rules as they stand ([`Campaign::check_rule`]).
    pub fn parse_rule(&self, rule: NoticeRule, text: &str) -> Result<RuleValue, RuleError> {
        let text = text.trim();
        let refuse = || RuleError {
            setting: rule.name().into(),
            message: format!(
                "{:?} is not {}",
                text.chars().take(80).collect::<String>(),
                rule.form()
            ),
        };
        if text.len() > 256 {
            return Err(refuse());
        }
        let value = match rule {
            NoticeRule::RemindDays => {
                let list = text.trim_start_matches('[').trim_end_matches(']').trim();
                if list.is_empty() || list == "none" {
                    RuleValue::DayList(Vec::new())
                } else {
                    let days: Result<Vec<u32>, _> =
                        list.split(',').map(|d| d.trim().parse::<u32>()).collect();
                    RuleValue::DayList(days.map_err(|_| refuse())?)
                }
            }
            NoticeRule::DueSoonDays
            | NoticeRule::EscalateAfterDays
            | NoticeRule::SilentAfterDays => RuleValue::Days(text.parse().map_err(|_| refuse())?),
            NoticeRule::Behind | NoticeRule::FarBehind => {
                RuleValue::Share(text.parse().map_err(|_| refuse())?)
            }
        };
        self.check_rule(rule, &value)?;
        Ok(value)
    }

    /// Checks a new value for `rule` against these rules as they stand (the other
    /// settings unchanged): its shape and range, `remind_days` largest first and each
    /// once, `far_behind` below `behind`.
    pub fn check_rule(&self, rule: NoticeRule, value: &RuleValue) -> Result<(), RuleError> {
        let refuse = |message: String| RuleError {
            setting: rule.name().into(),
            message,
        };
        let shape = || refuse(format!("{value} is not {}", rule.form()));
        match rule {
            NoticeRule::RemindDays => {
                let RuleValue::DayList(days) = value else {
                    return Err(shape());
                };
                if days.len() > MAX_REMIND_DAYS || days.iter().any(|d| *d > MAX_RULE_DAYS) {
                    return Err(shape());
                }
                if days.windows(2).any(|w| w[0] <= w[1]) {
                    return Err(refuse(format!(
                        "{value} is not largest first with each day once; write e.g. 7,3,1"
                    )));
                }
            }
            NoticeRule::DueSoonDays | NoticeRule::EscalateAfterDays => {
                if value.days().filter(|d| *d <= MAX_RULE_DAYS).is_none() {
                    return Err(shape());
                }
            }
            NoticeRule::SilentAfterDays => {
                if !value
                    .days()
                    .is_some_and(|d| (1..=MAX_RULE_DAYS).contains(&d))
                {
                    return Err(shape());
                }
            }
            NoticeRule::Behind => {
                let Some(b) = value
                    .share()
                    .filter(|b| b.is_finite() && (0.0..=1.0).contains(b))
                else {
                    return Err(shape());
                };
                let far = self.lagging.far_behind;
                if b <= far {
                    return Err(refuse(format!(
                        "{b} is not above far_behind ({far}); give a value above {far} and at most 1, or lower far_behind first"
                    )));
                }
            }
            NoticeRule::FarBehind => {
                let Some(f) = value
                    .share()
                    .filter(|f| f.is_finite() && (0.0..=1.0).contains(f))
                else {
                    return Err(shape());
                };
                let behind = self.lagging.behind;
                if f >= behind {
                    return Err(refuse(format!(
                        "{f} is not below behind ({behind}); give a value from 0 up to below {behind}, or raise behind first"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Puts `value` in force for `rule` (checked when it was recorded; a value of
    /// another shape changes nothing and returns false).
    pub fn set_rule(&mut self, rule: NoticeRule, value: &RuleValue) -> bool {
        let l = &mut self.lagging;
        match (rule, value) {
            (NoticeRule::RemindDays, RuleValue::DayList(d)) => l.remind_days = d.clone(),
            (NoticeRule::DueSoonDays, RuleValue::Days(d)) => l.due_soon_days = *d,
            (NoticeRule::EscalateAfterDays, RuleValue::Days(d)) => l.escalate_after_days = *d,
            (NoticeRule::SilentAfterDays, RuleValue::Days(d)) => self.silent_after_days = *d,
            (NoticeRule::Behind, v) => match v.share() {
                Some(s) => l.behind = s,
                None => return false,
            },
            (NoticeRule::FarBehind, v) => match v.share() {
                Some(s) => l.far_behind = s,
                None => return false,
            },
            _ => return false,
        }
        true
    }

    /// May an admin change `rule` on a running hub (the file's `[lagging] adjustable`)?
    pub fn is_adjustable(&self, rule: NoticeRule) -> bool {
        self.lagging.adjustable.contains(&rule)
    }
}

/// Rules an implementation plan must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRules {
    /// Fewest years a plan may cover.
    pub min_years: u32,
    /// Most years a plan may cover.
    pub max_years: u32,
    /// Fewest regions that enter the rollout each year.
    pub min_regions_per_year: u32,
}

/// A loaded, validated campaign.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Campaign {
    /// Campaign id, carried in every entry (`2018`).
    pub id: String,
    /// Chinese name.
    pub name: String,
    /// English name.
    pub name_en: String,
    /// Time zone of every campaign date.
    #[serde(serialize_with = "ser_offset")]
    pub utc_offset: FixedOffset,
    /// Records dated earlier than one year before this are refused.
    pub starts_on: NaiveDate,
    /// "New spaces" are counted from this date.
    pub baseline: NaiveDate,
    /// Last day of the campaign.
    pub ends_on: NaiveDate,
    /// Late-delivery grace for deliverables signed in time, in days.
    pub grace_days: u32,
    /// A source silent for longer than this is flagged, in days.
    pub silent_after_days: u32,
    /// National and per-province targets.
    pub target: Target,
    /// How many regions and schools the ministry finally selects.
    pub selection: Quota,
    /// Nomination quotas per level.
    pub quotas: Quotas,
    /// The work ledger, in file order.
    pub milestones: Vec<MilestoneDef>,
    /// Implementation plan rules.
    pub plan: PlanRules,
    /// Bulletin schedule.
    pub bulletins: BulletinSchedule,
    /// Lagging thresholds.
    pub lagging: Lagging,
    /// The provincial units addressed, in file order.
    pub units: Vec<RegionCode>,
    /// How many provincial units must cosign a bulletin's checkpoint for it to count as
    /// witnessed (`witness_quorum`; default the smallest strict majority, [`majority`]).
    /// More than half of the units, at most all of them.
    pub witness_quorum: u32,
    /// The file these rules were read from, exactly (see [`Campaign::digest`]).
    #[serde(skip)]
    text: String,
}

fn ser_offset<S: serde::Serializer>(o: &FixedOffset, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(o)
}

impl Campaign {
    /// Parses and validates a campaign file.
    pub fn from_toml(text: &str) -> Result<Campaign, CampaignError> {
        let raw: RawCampaign = toml::from_str(text).map_err(|e| CampaignError::Syntax {
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().trim().to_string(),
        })?;
        raw.validate(text)
    }

    /// The 2018 campaign bundled with this build.
    pub fn builtin_2018() -> Campaign {
        match Campaign::from_toml(CAMPAIGN_2018_TOML) {
            Ok(c) => c,
            // The bundled file is checked by a unit test; reaching this is a build defect.
            Err(e) => panic!("bundled 2018 campaign is invalid: {e}"),
        }
    }

    /// The campaign file these rules were read from, byte for byte.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// SHA-256 of [`Campaign::text`], lowercase hex: names the rules a bulletin was
    /// computed under, so it can be verified with them after the file changed.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.text.as_bytes()))
    }

    /// The milestone with this id.
    pub fn milestone(&self, id: &str) -> Option<&MilestoneDef> {
        self.milestones.iter().find(|m| m.id == id)
    }

    /// Deliverables only, in file order.
    pub fn deliverables(&self) -> impl Iterator<Item = &MilestoneDef> {
        self.milestones
            .iter()
            .filter(|m| m.kind == MilestoneKind::Deliverable)
    }

    /// Is `code` one of the campaign's provincial units?
    pub fn is_unit(&self, code: RegionCode) -> bool {
        self.units.contains(&code)
    }

    /// Earliest date a record may carry (`starts_on` minus one year).
    pub fn earliest_record_date(&self) -> NaiveDate {
        self.starts_on
            .checked_sub_months(chrono::Months::new(12))
            .unwrap_or(self.starts_on)
    }

    /// The calendar date of an instant in the campaign's time zone.
    pub fn local_date(&self, at: chrono::DateTime<chrono::Utc>) -> NaiveDate {
        at.with_timezone(&self.utc_offset).date_naive()
    }

    /// The first instant after the end of `date` in the campaign's time zone
    /// (a deadline "by 2018-11-15" ends at 2018-11-16T00:00 local).
    pub fn end_of_day(&self, date: NaiveDate) -> chrono::DateTime<chrono::Utc> {
        let next = date + Duration::days(1);
        let local = next.and_time(NaiveTime::MIN);
        let utc = local - self.utc_offset_duration();
        chrono::DateTime::from_naive_utc_and_offset(utc, chrono::Utc)
    }

    fn utc_offset_duration(&self) -> Duration {
        Duration::seconds(i64::from(self.utc_offset.local_minus_utc()))
    }
}

impl fmt::Display for Campaign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id, self.name)
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    let end = byte.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

// ---- raw file form -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    id: Spanned<String>,
    name: String,
    name_en: String,
    #[serde(default)]
    utc_offset: Option<Spanned<String>>,
    starts_on: Spanned<toml::value::Datetime>,
    baseline: Spanned<toml::value::Datetime>,
    ends_on: Spanned<toml::value::Datetime>,
    #[serde(default)]
    grace_days: u32,
    silent_after_days: u32,
    target: RawTarget,
    selection: Quota,
    quotas: Quotas,
    milestones: Vec<RawMilestone>,
    plan: PlanRules,
    bulletins: RawBulletins,
    lagging: RawLagging,
    units: RawUnits,
    #[serde(default)]
    witness_quorum: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    new_spaces: u64,
    by: Spanned<toml::value::Datetime>,
    #[serde(default)]
    provinces: HashMap<Spanned<String>, u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMilestone {
    id: Spanned<String>,
    title: String,
    title_en: String,
    kind: MilestoneKind,
    #[serde(default)]
    opens: Option<Spanned<toml::value::Datetime>>,
    due: Spanned<toml::value::Datetime>,
    #[serde(default)]
    requires: Vec<Requirement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBulletins {
    first: Spanned<toml::value::Datetime>,
    every_days: Spanned<u32>,
    at: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLagging {
    remind_days: Vec<u32>,
    due_soon_days: u32,
    #[serde(default = "default_escalate")]
    escalate_after_days: u32,
    behind: Spanned<f64>,
    far_behind: Spanned<f64>,
    #[serde(default)]
    adjustable: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnits {
    codes: Spanned<Vec<Spanned<String>>>,
}

fn default_escalate() -> u32 {
    3
}

struct Checker<'t> {
    text: &'t str,
}

impl Checker<'_> {
    fn err(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> CampaignError {
        CampaignError::Invalid {
            line: line_of(self.text, span.start),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn date(
        &self,
        v: &Spanned<toml::value::Datetime>,
        field: &str,
    ) -> Result<NaiveDate, CampaignError> {
        let dt = v.get_ref();
        match (dt.date, dt.time, dt.offset) {
            (Some(d), None, None) => {
                NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                    .ok_or_else(|| self.err(v.span(), field, "not a calendar date"))
            }
            _ => Err(self.err(
                v.span(),
                field,
                "must be a plain date such as 2018-11-15 (no time, no offset)",
            )),
        }
    }

    fn region(&self, v: &Spanned<String>, field: &str) -> Result<RegionCode, CampaignError> {
        RegionCode::parse(v.get_ref()).map_err(|e| self.err(v.span(), field, e.to_string()))
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl RawCampaign {
    fn validate(self, text: &str) -> Result<Campaign, CampaignError> {
        let c = Checker { text };
        if !is_id(self.id.get_ref()) {
            return Err(c.err(
                self.id.span(),
                "id",
                "must be 1–64 characters of a-z, 0-9, '_' or '-'",
            ));
        }
        let utc_offset = match &self.utc_offset {
            None => CHINA_STANDARD_TIME,
            Some(s) => s.get_ref().parse::<FixedOffset>().map_err(|_| {
                c.err(
                    s.span(),
                    "utc_offset",
                    "must be an offset such as \"+08:00\"",
                )
            })?,
        };
        let starts_on = c.date(&self.starts_on, "starts_on")?;
        let baseline = c.date(&self.baseline, "baseline")?;
        let ends_on = c.date(&self.ends_on, "ends_on")?;
        if ends_on < starts_on {
            return Err(c.err(self.ends_on.span(), "ends_on", "is before starts_on"));
        }
        let by = c.date(&self.target.by, "target.by")?;
        if by < baseline {
            return Err(c.err(self.target.by.span(), "target.by", "is before the baseline"));
        }

        let mut units = Vec::new();
        for (i, code) in self.units.codes.get_ref().iter().enumerate() {
            let field = format!("units.codes[{i}]");
            let r = c.region(code, &field)?;
            if r.level() != Level::Province {
                return Err(c.err(code.span(), &field, "must be a provincial code (PP0000)"));
            }
            if units.contains(&r) {
                return Err(c.err(code.span(), &field, format!("{r} is listed twice")));
            }
            units.push(r);
        }
        if units.is_empty() {
            return Err(c.err(self.units.codes.span(), "units.codes", "lists no unit"));
        }

        let mut provinces = BTreeMap::new();
        for (code, n) in &self.target.provinces {
            let field = format!("target.provinces.{}", code.get_ref());
            let r = c.region(code, &field)?;
            if !units.contains(&r) {
                return Err(c.err(code.span(), &field, "is not one of units.codes"));
            }
            provinces.insert(r, *n);
        }

        let mut milestones: Vec<MilestoneDef> = Vec::new();
        for (i, m) in self.milestones.into_iter().enumerate() {
            let field = format!("milestones[{i}]");
            if !is_id(m.id.get_ref()) {
                return Err(c.err(
                    m.id.span(),
                    &format!("{field}.id"),
                    "must be 1–64 characters of a-z, 0-9, '_' or '-'",
                ));
            }
            if milestones.iter().any(|x| &x.id == m.id.get_ref()) {
                return Err(c.err(
                    m.id.span(),
                    &format!("{field}.id"),
                    format!("{:?} is defined twice", m.id.get_ref()),
                ));
            }
            let due = c.date(&m.due, &format!("{field}.due"))?;
            let opens = match &m.opens {
                Some(o) => Some(c.date(o, &format!("{field}.opens"))?),
                None => None,
            };
            match (m.kind, opens) {
                (MilestoneKind::Window, None) => {
                    return Err(c.err(
                        m.due.span(),
                        &format!("{field}.opens"),
                        "a window needs an opening date",
                    ));
                }
                (MilestoneKind::Window, Some(o)) if o > due => {
                    return Err(c.err(m.due.span(), &format!("{field}.due"), "is before opens"));
                }
                (MilestoneKind::Deliverable, Some(_)) => {
                    return Err(c.err(
                        m.due.span(),
                        &format!("{field}.opens"),
                        "deliverables have a due date only",
                    ));
                }
                _ => {}
            }
            milestones.push(MilestoneDef {
                id: m.id.into_inner(),
                title: m.title,
                title_en: m.title_en,
                kind: m.kind,
                opens,
                due,
                requires: m.requires,
            });
        }
        if !milestones
            .iter()
            .any(|m| m.kind == MilestoneKind::Deliverable)
        {
            return Err(CampaignError::Invalid {
                line: 1,
                field: "milestones".into(),
                message: "at least one milestone must be a deliverable".into(),
            });
        }

        if self.plan.min_years == 0 || self.plan.min_years > self.plan.max_years {
            return Err(CampaignError::Invalid {
                line: 1,
                field: "plan".into(),
                message: "needs 1 ≤ min_years ≤ max_years".into(),
            });
        }

        let first = c.date(&self.bulletins.first, "bulletins.first")?;
        if *self.bulletins.every_days.get_ref() == 0 {
            return Err(c.err(
                self.bulletins.every_days.span(),
                "bulletins.every_days",
                "must be at least 1",
            ));
        }
        let at = NaiveTime::parse_from_str(self.bulletins.at.get_ref(), "%H:%M").map_err(|_| {
            c.err(
                self.bulletins.at.span(),
                "bulletins.at",
                "must be a local time such as \"09:00\"",
            )
        })?;

        let (behind, far) = (
            *self.lagging.behind.get_ref(),
            *self.lagging.far_behind.get_ref(),
        );
        if !(0.0..=1.0).contains(&behind) {
            return Err(c.err(
                self.lagging.behind.span(),
                "lagging.behind",
                "must be between 0 and 1",
            ));
        }
        if !(0.0..=behind).contains(&far) {
            return Err(c.err(
                self.lagging.far_behind.span(),
                "lagging.far_behind",
                "must be between 0 and lagging.behind",
            ));
        }
        let mut remind_days = self.lagging.remind_days;
        remind_days.sort_unstable_by(|a, b| b.cmp(a));
        remind_days.dedup();
        let mut adjustable = Vec::new();
        for (i, name) in self.lagging.adjustable.iter().enumerate() {
            let field = format!("lagging.adjustable[{i}]");
            let rule = NoticeRule::parse(name.get_ref()).map_err(|_| {
                c.err(
                    name.span(),
                    &field,
                    format!(
                        "{:?} is not a notice rule; list some of {}",
                        name.get_ref(),
                        all_names()
                    ),
                )
            })?;
            if adjustable.contains(&rule) {
                return Err(c.err(name.span(), &field, format!("{rule} is listed twice")));
            }
            adjustable.push(rule);
        }

        let witness_quorum = match &self.witness_quorum {
            None => majority(units.len()),
            Some(q) => {
                let n = *q.get_ref();
                let least = majority(units.len());
                if n < least || n as usize > units.len() {
                    return Err(c.err(
                        q.span(),
                        "witness_quorum",
                        format!(
                            "must be more than half of the {} units and at most all of them ({least}–{}): with half or fewer, a hub that shows one tree to some provinces and another tree of the same size to the rest gets both witnessed",
                            units.len(),
                            units.len()
                        ),
                    ));
                }
                n
            }
        };

        Ok(Campaign {
            id: self.id.into_inner(),
            name: self.name,
            name_en: self.name_en,
            utc_offset,
            starts_on,
            baseline,
            ends_on,
            grace_days: self.grace_days,
            silent_after_days: self.silent_after_days,
            target: Target {
                new_spaces: self.target.new_spaces,
                by,
                provinces,
            },
            selection: self.selection,
            quotas: self.quotas,
            milestones,
            plan: self.plan,
            bulletins: BulletinSchedule {
                first,
                every_days: *self.bulletins.every_days.get_ref(),
                at,
            },
            lagging: Lagging {
                remind_days,
                due_soon_days: self.lagging.due_soon_days,
                escalate_after_days: self.lagging.escalate_after_days,
                behind,
                far_behind: far,
                adjustable,
            },
            units,
            witness_quorum,
            text: text.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_2018_campaign_loads_with_the_notice_facts() {
        let c = Campaign::builtin_2018();
        assert_eq!(c.id, "2018");
        assert_eq!(c.units.len(), 32);
        assert_eq!(c.target.new_spaces, 10_000_000);
        assert_eq!(c.selection.regions, Some(40));
        assert_eq!(c.selection.schools, Some(200));
        assert_eq!(c.quotas.county.schools, Some(5));
        assert_eq!(c.quotas.city.schools, Some(10));
        assert_eq!(c.quotas.province.regions, Some(3));
        assert_eq!(c.quotas.province.schools, Some(15));
        let due = |id: &str| c.milestone(id).map(|m| m.due.to_string());
        assert_eq!(due("contact_form").as_deref(), Some("2018-10-19"));
        assert_eq!(due("implementation_plan").as_deref(), Some("2018-11-15"));
        assert_eq!(due("recommendations").as_deref(), Some("2018-11-30"));
        assert_eq!(due("ministry_evaluation").as_deref(), Some("2018-12-30"));
        let ids: Vec<_> = c.deliverables().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            ["contact_form", "implementation_plan", "recommendations"]
        );
        assert_eq!(c.utc_offset.local_minus_utc(), 8 * 3600);
        // Deadline 2018-11-15 CST ends at 2018-11-15T16:00Z.
        let end = c.end_of_day(NaiveDate::from_ymd_opt(2018, 11, 15).unwrap_or_default());
        assert_eq!(end.to_rfc3339(), "2018-11-15T16:00:00+00:00");
    }

    fn with(replace: &str, by: &str) -> Result<Campaign, CampaignError> {
        assert!(CAMPAIGN_2018_TOML.contains(replace), "{replace}");
        Campaign::from_toml(&CAMPAIGN_2018_TOML.replacen(replace, by, 1))
    }

    fn line_containing(text: &str) -> usize {
        let pos = CAMPAIGN_2018_TOML.find(text).unwrap_or(0);
        line_of(CAMPAIGN_2018_TOML, pos)
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases: &[(&str, &str, &str)] = &[
            ("due = 2018-11-15", "due = 2018-11-31", "invalid date"),
            ("due = 2018-11-15", "due = \"soon\"", "type"),
            (
                "due = 2018-11-15",
                "due = 2018-11-15T10:00:00",
                "plain date",
            ),
            ("every_days = 7", "every_days = 0", "at least 1"),
            (
                "every_days = 7",
                "every_days = 7\nevery_week = true",
                "unknown field",
            ),
            ("\"440000\", \"450000\"", "\"440000\", \"440000\"", "twice"),
            (
                "\"440000\", \"450000\"",
                "\"440100\", \"450000\"",
                "provincial",
            ),
            ("behind = 0.8", "behind = 1.8", "between 0 and 1"),
            ("at = \"09:00\"", "at = \"nine\"", "local time"),
            (
                "id = \"recommendations\"",
                "id = \"contact_form\"",
                "defined twice",
            ),
            (
                "witness_quorum = 17",
                "witness_quorum = 0",
                "more than half of the 32 units and at most all of them (17–32)",
            ),
            (
                "witness_quorum = 17",
                "witness_quorum = 16",
                "a hub that shows one tree to some provinces and another tree of the same size to the rest gets both witnessed",
            ),
            (
                "witness_quorum = 17",
                "witness_quorum = 33",
                "more than half of the 32 units and at most all of them (17–32)",
            ),
        ];
        for (from, to, want) in cases {
            let err = with(from, to).expect_err(to);
            let msg = err.to_string();
            assert!(msg.contains(want), "{to}: {msg}");
            let line = match err {
                CampaignError::Syntax { line, .. } | CampaignError::Invalid { line, .. } => line,
            };
            let expected = line_containing(from);
            assert!(
                line == expected || line == expected + 1,
                "{to}: line {line}, expected {expected}: {msg}"
            );
        }
    }

    /// The 2018 file sets a quorum of 17; a file without one gets the smallest strict
    /// majority of its units.
    #[test]
    fn the_witness_quorum_has_a_documented_default() {
        assert_eq!(Campaign::builtin_2018().witness_quorum, 17);
        let c = with("witness_quorum = 17", "witness_quorum = 32").expect("32");
        assert_eq!(c.witness_quorum, 32);
        let c = with("witness_quorum = 17\n", "").expect("no quorum");
        assert_eq!(c.witness_quorum, DEFAULT_WITNESS_QUORUM);
        assert_eq!(majority(32), DEFAULT_WITNESS_QUORUM);
        let few = CAMPAIGN_2018_TOML.replace("witness_quorum = 17\n", "");
        let start = few.find("[units]").expect("units");
        let three = format!(
            "{}[units]\ncodes = [\"110000\", \"120000\", \"130000\"]\n",
            &few[..start]
        );
        let c = Campaign::from_toml(&three).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.witness_quorum, 2);
    }

    #[test]
    fn adjustable_names_notice_rules_once_with_their_line() {
        let c = Campaign::builtin_2018();
        assert!(c.is_adjustable(NoticeRule::Behind));
        assert!(c.is_adjustable(NoticeRule::SilentAfterDays));
        assert!(!c.is_adjustable(NoticeRule::DueSoonDays));
        // Default: nothing may change live, so older files keep their meaning.
        let none = CAMPAIGN_2018_TOML
            .lines()
            .filter(|l| !l.starts_with("adjustable"))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Campaign::from_toml(&none).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.lagging.adjustable.is_empty());
        let from = "adjustable = [\"remind_days\"";
        for (to, want) in [
            (
                "adjustable = [\"remind_dayz\"",
                "\"remind_dayz\" is not a notice rule",
            ),
            (
                "adjustable = [\"behind\", \"behind\"",
                "behind is listed twice",
            ),
            ("adjustable = [7", "invalid type"),
        ] {
            let err = with(from, to).expect_err(to);
            let msg = err.to_string();
            assert!(msg.contains(want), "{to}: {msg}");
            let line = match err {
                CampaignError::Syntax { line, .. } | CampaignError::Invalid { line, .. } => line,
            };
            assert_eq!(line, line_containing(from), "{to}: {msg}");
        }
    }

    #[test]
    fn live_rule_values_are_checked_for_shape_range_and_order() {
        let c = Campaign::builtin_2018();
        let ok = |rule, text: &str| {
            c.parse_rule(rule, text)
                .unwrap_or_else(|e| panic!("{rule} {text}: {e}"))
        };
        assert_eq!(
            ok(NoticeRule::RemindDays, "14, 7,1"),
            RuleValue::DayList(vec![14, 7, 1])
        );
        assert_eq!(
            ok(NoticeRule::RemindDays, "none"),
            RuleValue::DayList(vec![])
        );
        assert_eq!(ok(NoticeRule::Behind, "0.9"), RuleValue::Share(0.9));
        assert_eq!(ok(NoticeRule::FarBehind, "0"), RuleValue::Share(0.0));
        assert_eq!(ok(NoticeRule::SilentAfterDays, "3"), RuleValue::Days(3));
        let refused: &[(NoticeRule, &str, &str)] = &[
            (NoticeRule::RemindDays, "3,7", "largest first"),
            (NoticeRule::RemindDays, "7,7", "largest first"),
            (NoticeRule::RemindDays, "7,-1", "not days before a deadline"),
            (NoticeRule::RemindDays, "400", "not days before a deadline"),
            (NoticeRule::RemindDays, &"9,".repeat(20), "not days before"),
            (NoticeRule::Behind, "NaN", "between 0 and 1"),
            (NoticeRule::Behind, "inf", "between 0 and 1"),
            (NoticeRule::Behind, "1.5", "between 0 and 1"),
            (NoticeRule::Behind, "0.5", "not above far_behind (0.5)"),
            (NoticeRule::FarBehind, "0.8", "not below behind (0.8)"),
            (NoticeRule::FarBehind, "-0.1", "between 0 and 1"),
            (NoticeRule::SilentAfterDays, "0", "from 1 to 366"),
            (NoticeRule::EscalateAfterDays, "-3", "from 0 to 366"),
            (NoticeRule::EscalateAfterDays, "4294967296", "from 0 to 366"),
            (NoticeRule::DueSoonDays, "1e9", "from 0 to 366"),
        ];
        for (rule, text, want) in refused {
            let e = c.parse_rule(*rule, text).expect_err(text).to_string();
            assert!(e.starts_with(&format!("notice rule {rule}: ")), "{e}");
            assert!(e.contains(want), "{rule} {text}: {e}");
        }
        assert!(NoticeRule::parse("lateness").is_err());
    }

    #[test]
    fn a_rule_set_is_in_force_and_reads_back() {
        let mut c = Campaign::builtin_2018();
        for (rule, text) in [
            (NoticeRule::RemindDays, "10,2"),
            (NoticeRule::EscalateAfterDays, "5"),
            (NoticeRule::Behind, "0.9"),
            (NoticeRule::FarBehind, "0.6"),
            (NoticeRule::SilentAfterDays, "4"),
            (NoticeRule::DueSoonDays, "2"),
        ] {
            let v = c.parse_rule(rule, text).unwrap_or_else(|e| panic!("{e}"));
            assert!(c.set_rule(rule, &v));
            assert_eq!(c.rule(rule), v);
            assert_eq!(c.rule(rule).to_string(), text);
            // Through the log's JSON and back.
            let again: RuleValue =
                serde_json::from_str(&serde_json::to_string(&v).unwrap_or_default())
                    .unwrap_or(RuleValue::Days(u32::MAX));
            assert!(c.set_rule(rule, &again));
            assert_eq!(c.rule(rule), v);
        }
        assert_eq!(c.lagging.remind_days, [10, 2]);
        assert_eq!(c.silent_after_days, 4);
        assert!(!c.set_rule(NoticeRule::RemindDays, &RuleValue::Days(3)));
    }

    #[test]
    fn a_new_year_is_a_new_file() {
        let c2019 = CAMPAIGN_2018_TOML
            .replace("id = \"2018\"", "id = \"2019\"")
            .replace("2019-", "2020-")
            .replace("2018-", "2019-");
        let c = Campaign::from_toml(&c2019).unwrap();
        assert_eq!(c.id, "2019");
        assert_eq!(
            c.milestone("implementation_plan")
                .map(|m| m.due.to_string()),
            Some("2019-11-15".into())
        );
    }
}
