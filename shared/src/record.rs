//! The five record kinds a provincial platform hands its agent, as typed Rust, and the
//! strict reader that turns JSON into them.
//!
//! Reading is done by hand over `serde_json::Value` rather than by derived
//! `Deserialize`, so that *every* problem in a record is reported, each naming its
//! field (`spaces.teacher: must be ≥ 0`), and unknown fields are refused by name.
//! Writing uses serde's derived `Serialize`; `Record::from_value(&serde_json::to_value(r))`
//! is the identity (a property test holds it to that).

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::quota::{Nomination, NomineeType, QuotaViolation};
use crate::region::{CodeError, Level, RegionCode, SchoolCode};

/// Largest count accepted for one space kind in one snapshot. China has about 300 million
/// teachers and students; a figure above this is a unit error, not a count.
pub const MAX_COUNT: u64 = 1_000_000_000;
/// Longest free-text field, in characters.
pub const MAX_TEXT: usize = 500;

/// The eight kinds of learning space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpaceKind {
    /// Personal space of a teacher.
    Teacher,
    /// Personal space of a student.
    Student,
    /// Personal space of a parent.
    Parent,
    /// Personal space of a master teacher (名师).
    MasterTeacher,
    /// Institution space of a school.
    School,
    /// Institution space of a region.
    Region,
    /// Institution space of a class.
    Class,
    /// Institution space of a club (社团).
    Club,
}

impl SpaceKind {
    /// All kinds, in the order of the record spec.
    pub const ALL: [SpaceKind; 8] = [
        SpaceKind::Teacher,
        SpaceKind::Student,
        SpaceKind::Parent,
        SpaceKind::MasterTeacher,
        SpaceKind::School,
        SpaceKind::Region,
        SpaceKind::Class,
        SpaceKind::Club,
    ];

    /// The field name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            SpaceKind::Teacher => "teacher",
            SpaceKind::Student => "student",
            SpaceKind::Parent => "parent",
            SpaceKind::MasterTeacher => "master_teacher",
            SpaceKind::School => "school",
            SpaceKind::Region => "region",
            SpaceKind::Class => "class",
            SpaceKind::Club => "club",
        }
    }

    /// Parses a field name.
    pub fn parse(s: &str) -> Option<SpaceKind> {
        SpaceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Position in [`SpaceKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Personal spaces (teacher, student, parent, master teacher) as opposed to institution spaces.
    pub fn is_personal(self) -> bool {
        self.index() < 4
    }
}

impl fmt::Display for SpaceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SpaceKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Counts per space kind; a missing kind is *unknown*, not zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SpaceCounts(pub [Option<u64>; 8]);

impl SpaceCounts {
    /// The count of one kind, if known.
    pub fn get(&self, k: SpaceKind) -> Option<u64> {
        self.0[k.index()]
    }

    /// Sets one kind.
    pub fn set(&mut self, k: SpaceKind, v: Option<u64>) {
        self.0[k.index()] = v;
    }

    /// Known kinds with their counts.
    pub fn iter(&self) -> impl Iterator<Item = (SpaceKind, u64)> + '_ {
        SpaceKind::ALL
            .into_iter()
            .filter_map(|k| self.get(k).map(|v| (k, v)))
    }

    /// Sum of the known counts.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, v)| v).sum()
    }

    /// True when no kind is known.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

impl Serialize for SpaceCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

/// Reads what [`Serialize`] writes (a map of kind to count), for documents the hub issued
/// (bulletins); an unknown kind is an error.
impl<'de> Deserialize<'de> for SpaceCounts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, u64>::deserialize(d)?;
        let mut out = SpaceCounts::default();
        for (k, v) in map {
            let kind = SpaceKind::parse(&k)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown space kind {k:?}")))?;
            out.set(kind, Some(v));
        }
        Ok(out)
    }
}

/// Denominators for coverage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Population {
    /// Teachers in the region or school.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teachers: Option<u64>,
    /// Students in the region or school.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub students: Option<u64>,
    /// Schools in the region (1 for a school).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schools: Option<u64>,
}

/// Cumulative snapshot of spaces opened in a region or a school.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpaceCount {
    /// The region (county, or city for cities without counties) or, with `school`, the school's county.
    pub region: RegionCode,
    /// The school, when the figures are one school's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub school: Option<SchoolCode>,
    /// Date the figures describe.
    pub as_of: NaiveDate,
    /// Spaces opened, per kind.
    pub spaces: SpaceCounts,
    /// Of those, spaces whose owner passed real-name verification (实名制).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_name: Option<SpaceCounts>,
    /// Denominators for coverage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub population: Option<Population>,
}

/// The document behind a milestone submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Document {
    /// Title of the document.
    pub title: String,
    /// Lower-case hex SHA-256 of the document file.
    pub sha256: String,
    /// Where the document can be fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// A person on the contact form. Personal data: admins only, never in bulletins or logs.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Contact {
    /// Name.
    pub name: String,
    /// Role or title.
    pub role: String,
    /// Phone number.
    pub phone: String,
    /// E-mail address.
    pub email: String,
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; personal data must not.
        f.write_str("Contact(<redacted>)")
    }
}

/// Structured details of a milestone submission.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MilestoneDetails {
    /// Implementation plan: regions entering the rollout, per year.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub years: Option<BTreeMap<u16, Vec<RegionCode>>>,
    /// Contact form: the contacts (personal data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contacts: Option<Vec<Contact>>,
}

impl MilestoneDetails {
    fn is_empty(&self) -> bool {
        self.years.is_none() && self.contacts.is_none()
    }
}

/// A ledger deliverable was submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Milestone {
    /// The campaign's milestone id.
    pub milestone: String,
    /// The provincial unit submitting.
    pub region: RegionCode,
    /// Date the province submitted it.
    pub submitted_on: NaiveDate,
    /// The document.
    pub document: Document,
    /// Structured details the campaign requires for this milestone.
    #[serde(skip_serializing_if = "MilestoneDetails::is_empty")]
    pub details: MilestoneDetails,
}

/// Who is nominated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nominee {
    /// A school, with the county it sits in.
    School {
        /// School identification code.
        code: SchoolCode,
        /// The school's name.
        name: Option<String>,
        /// The county (or city) it sits in.
        region: RegionCode,
    },
    /// A region.
    Region {
        /// The region's code.
        code: RegionCode,
        /// The region's name.
        name: Option<String>,
    },
}

impl Nominee {
    /// School or region.
    pub fn nominee_type(&self) -> NomineeType {
        match self {
            Nominee::School { .. } => NomineeType::School,
            Nominee::Region { .. } => NomineeType::Region,
        }
    }

    /// The region the nominee lies in (the school's county, or the region itself).
    pub fn region(&self) -> RegionCode {
        match self {
            Nominee::School { region, .. } => *region,
            Nominee::Region { code, .. } => *code,
        }
    }

    /// The nominee's code as text.
    pub fn code(&self) -> String {
        match self {
            Nominee::School { code, .. } => code.to_string(),
            Nominee::Region { code, .. } => code.to_string(),
        }
    }

    /// The nominee's name, if given.
    pub fn name(&self) -> Option<&str> {
        match self {
            Nominee::School { name, .. } | Nominee::Region { name, .. } => name.as_deref(),
        }
    }
}

impl Serialize for Nominee {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            t: NomineeType,
            code: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            name: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            region: Option<RegionCode>,
        }
        let region = match self {
            Nominee::School { region, .. } => Some(*region),
            Nominee::Region { .. } => None,
        };
        Wire {
            t: self.nominee_type(),
            code: self.code(),
            name: self.name(),
            region,
        }
        .serialize(s)
    }
}

/// A nomination in the tiered selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recommendation {
    /// Level of the recommender.
    pub level: Level,
    /// The recommending region, at that level.
    pub by: RegionCode,
    /// Who is nominated.
    pub nominee: Nominee,
}

/// A recommendation counts against its recommender's quota as this nomination.
impl From<&Recommendation> for Nomination {
    fn from(r: &Recommendation) -> Nomination {
        Nomination {
            level: r.level,
            by: r.by,
            nominee_type: r.nominee.nominee_type(),
            nominee: r.nominee.code(),
        }
    }
}

/// Activity categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityCategory {
    /// Training.
    Training,
    /// Conference.
    Conference,
    /// Exhibition.
    Exhibition,
    /// Research visit.
    Research,
    /// Anything else.
    Other,
}

impl ActivityCategory {
    const NAMES: &'static [&'static str] =
        &["training", "conference", "exhibition", "research", "other"];

    fn parse(s: &str) -> Option<ActivityCategory> {
        Some(match s {
            "training" => ActivityCategory::Training,
            "conference" => ActivityCategory::Conference,
            "exhibition" => ActivityCategory::Exhibition,
            "research" => ActivityCategory::Research,
            "other" => ActivityCategory::Other,
            _ => return None,
        })
    }
}

/// A rollout or demonstration activity held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// Where it was held.
    pub region: RegionCode,
    /// When.
    pub date: NaiveDate,
    /// What kind of activity.
    pub category: ActivityCategory,
    /// Title.
    pub title: String,
    /// Number of participants, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participants: Option<u64>,
}

/// Retracts an earlier entry of the same source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Withdrawal {
    /// Seq of the retracted entry.
    pub target_seq: u64,
    /// Why.
    pub reason: String,
}

/// The source's key changes: from the seq after this entry's, only `new_key` signs. Made by
/// the agent's `rotate-key` (never sent by a platform: [`crate::batch`] refuses it), signed
/// like every entry by the key in force at its seq, so the source's own signature proves
/// the rotation and anyone replaying the chain derives the key schedule from it. `proof` is
/// the new key's signature over the same statement ([`crate::entry::Entry::transition_statement`]:
/// source, seq, `prev`, new key), so nobody can rotate to a key they do not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyTransition {
    /// The new public key line, `ed25519:<base64>` (checked as a registered key is).
    pub new_key: String,
    /// The new key's Ed25519 signature over the statement, standard base64 (64 bytes).
    pub proof: String,
}

impl KeyTransition {
    /// The new key, parsed (the reader checked it, so this fails only for a value built
    /// by hand).
    pub fn key(&self) -> Result<ed25519_dalek::VerifyingKey, crate::keys::PublicKeyError> {
        crate::keys::parse_public_key(&self.new_key)
    }

    /// The proof as a signature, if it decodes to 64 bytes.
    pub fn proof_signature(&self) -> Option<ed25519_dalek::Signature> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.proof)
            .ok()?;
        let arr: [u8; 64] = bytes.as_slice().try_into().ok()?;
        Some(ed25519_dalek::Signature::from_bytes(&arr))
    }
}

/// One record, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Cumulative snapshot of spaces opened.
    SpaceCount(SpaceCount),
    /// A ledger deliverable was submitted.
    Milestone(Milestone),
    /// A nomination.
    Recommendation(Recommendation),
    /// An activity held.
    Activity(Activity),
    /// Retraction of an earlier entry.
    Withdrawal(Withdrawal),
    /// The source's key changes from the next seq (agent-made; see [`KeyTransition`]).
    KeyTransition(KeyTransition),
}

impl Record {
    /// The record's `kind` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::SpaceCount(_) => "space_count",
            Record::Milestone(_) => "milestone",
            Record::Recommendation(_) => "recommendation",
            Record::Activity(_) => "activity",
            Record::Withdrawal(_) => "withdrawal",
            Record::KeyTransition(_) => "key_transition",
        }
    }

    /// Every region the record speaks about (for scope checks), with the field naming it.
    pub fn regions(&self) -> Vec<(String, RegionCode)> {
        match self {
            Record::SpaceCount(s) => vec![("region".into(), s.region)],
            Record::Milestone(m) => {
                let mut v = vec![("region".into(), m.region)];
                for (year, list) in m.details.years.iter().flatten() {
                    for (i, r) in list.iter().enumerate() {
                        v.push((format!("details.years.{year}[{i}]"), *r));
                    }
                }
                v
            }
            Record::Recommendation(r) => vec![
                ("by".into(), r.by),
                (
                    // The field that holds the nominee's region in the record.
                    match r.nominee {
                        Nominee::School { .. } => "nominee.region".into(),
                        Nominee::Region { .. } => "nominee.code".into(),
                    },
                    r.nominee.region(),
                ),
            ],
            Record::Activity(a) => vec![("region".into(), a.region)],
            Record::Withdrawal(_) | Record::KeyTransition(_) => vec![],
        }
    }

    /// Reads one record strictly: every problem is collected, each naming its field.
    pub fn from_value(v: &Value) -> Result<Record, Vec<Problem>> {
        let mut r = Reader::default();
        let rec = r.record(v);
        match rec {
            Some(rec) if r.problems.is_empty() => Ok(rec),
            _ => Err(r.problems),
        }
    }

    /// The record as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

// ---- problems ------------------------------------------------------------------------

/// Why a field is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    /// A required field is absent.
    #[error("is required")]
    Missing,
    /// The field is not part of this record kind.
    #[error("is not a field of {0} records")]
    UnknownField(&'static str),
    /// The record's `kind` is not one of the five.
    #[error(
        "unknown kind {0:?}; expected space_count, milestone, recommendation, activity or withdrawal"
    )]
    UnknownKind(String),
    /// The value has the wrong JSON type.
    #[error("must be {0}")]
    WrongType(&'static str),
    /// Not an Ed25519 public key line `ed25519:<base64>` acceptable as a source key.
    #[error("must be an Ed25519 public key line ed25519:<base64> (a valid, not weak, key)")]
    BadKey,
    /// Not a base64 Ed25519 signature.
    #[error("must be an Ed25519 signature: 64 bytes in standard base64")]
    BadProof,
    /// A record kind only the agent makes.
    #[error(
        "key_transition records are made by the agent itself (`spacesync-agent rotate-key`); a platform never sends one"
    )]
    AgentOnly,
    /// A count below zero.
    #[error("must be ≥ 0")]
    Negative,
    /// A count with a fractional part.
    #[error("must be a whole number")]
    NotWhole,
    /// A count beyond [`MAX_COUNT`].
    #[error("must be at most {MAX_COUNT}")]
    TooLarge,
    /// A malformed region or school code.
    #[error("{0}")]
    Code(#[from] CodeError),
    /// A malformed date.
    #[error("must be a date YYYY-MM-DD, got {0:?}")]
    BadDate(String),
    /// A blank string where text is needed.
    #[error("must not be empty")]
    Empty,
    /// A string longer than [`MAX_TEXT`] characters.
    #[error("must be at most {MAX_TEXT} characters")]
    TooLong,
    /// A value outside a fixed set.
    #[error("must be one of {allowed}, got {got:?}")]
    NotOneOf {
        /// The accepted values, comma-separated.
        allowed: String,
        /// What was given.
        got: String,
    },
    /// A real-name count above the matching spaces count.
    #[error("{real} real-name spaces exceed the {spaces} spaces reported in spaces.{kind}")]
    RealNameExceeds {
        /// The space kind.
        kind: SpaceKind,
        /// Real-name count.
        real: u64,
        /// Spaces count.
        spaces: u64,
    },
    /// A real-name count for a kind whose spaces count is not given.
    #[error("spaces.{0} must be given when real_name.{0} is")]
    RealNameWithoutSpaces(SpaceKind),
    /// No space kind given at all.
    #[error("must give at least one space kind")]
    NoCounts,
    /// A date after the agent's current date.
    #[error("{date} is after today ({today})")]
    FutureDate {
        /// The date given.
        date: NaiveDate,
        /// The agent's current date.
        today: NaiveDate,
    },
    /// A date before the earliest date the campaign accepts.
    #[error("{date} is before {earliest}, one year before the campaign starts")]
    TooEarly {
        /// The date given.
        date: NaiveDate,
        /// The earliest accepted.
        earliest: NaiveDate,
    },
    /// A region outside the source's scope.
    #[error("{code} is outside this source's scope {scope}")]
    OutOfScope {
        /// The region given.
        code: RegionCode,
        /// The source's scope.
        scope: RegionCode,
    },
    /// A region not inside another region it must lie in.
    #[error("{code} is not inside {container}")]
    NotInside {
        /// The region given.
        code: RegionCode,
        /// The region it must lie in.
        container: RegionCode,
    },
    /// A region nominating itself.
    #[error("{0} cannot nominate itself; a region is nominated by the level above")]
    SelfNomination(RegionCode),
    /// A region at the wrong level.
    #[error("{code} is a {got} code; expected a {expected} code")]
    WrongLevel {
        /// The region given.
        code: RegionCode,
        /// The level required.
        expected: &'static str,
        /// The level of the code given.
        got: Level,
    },
    /// A milestone id the campaign does not define as a deliverable.
    #[error("{got:?} is not a deliverable of campaign {campaign}; expected one of {known}")]
    UnknownMilestone {
        /// What was given.
        got: String,
        /// Campaign id.
        campaign: String,
        /// The campaign's deliverables, comma-separated.
        known: String,
    },
    /// A hex digest of the wrong form.
    #[error("must be 64 lower-case hex digits (SHA-256)")]
    BadSha256,
    /// A nomination that breaks a quota.
    #[error("{0}")]
    Quota(Box<QuotaViolation>),
    /// A year key that is not a year.
    #[error("must be a year such as \"2019\"")]
    BadYear,
    /// A withdrawal that does not point back to an earlier entry.
    #[error("must be an earlier seq of this source (1 … {0})")]
    BadTarget(u64),
    /// A CSV row whose cell count differs from the header's.
    #[error("the row has {got} cells but the header has {header}")]
    CellCount {
        /// Cells in the row.
        got: usize,
        /// Columns in the header.
        header: usize,
    },
    /// A seq of zero; seqs start at 1.
    #[error("must be ≥ 1 (seqs start at 1)")]
    ZeroSeq,
}

/// One refused field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `spaces.teacher`; empty for the record as a whole.
    pub field: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl Problem {
    /// A problem at `field`.
    pub fn new(field: impl Into<String>, kind: ProblemKind) -> Problem {
        Problem {
            field: field.into(),
            kind,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            // The path is built from the sender's JSON keys: control characters (a newline
            // that would forge a log line, an escape sequence) are written escaped.
            for c in self.field.chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            write!(f, ": {}", self.kind)
        }
    }
}

impl std::error::Error for Problem {}

#[cfg(test)]
mod problem_display_tests {
    use super::*;

    #[test]
    fn control_characters_in_a_field_path_are_escaped() {
        let v: Value =
            serde_json::json!({"kind": "activity", "x\n2026-12-02 INFO forged\u{1b}[2J": 1});
        let problems = Record::from_value(&v).err().unwrap_or_default();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(!text.is_empty());
        for t in &text {
            assert!(!t.contains('\n') && !t.contains('\u{1b}'), "{t:?}");
        }
        assert!(
            text.iter()
                .any(|t| t.contains("x\\n2026-12-02 INFO forged")),
            "{text:?}"
        );
    }
}

// ---- the strict reader -----------------------------------------------------------------

#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    fn problem(&mut self, field: impl Into<String>, kind: ProblemKind) {
        self.problems.push(Problem::new(field, kind));
    }

    /// An object with only `allowed` keys (unknown ones reported), or `None` with a problem.
    fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        kind: &'static str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = v.as_object() else {
            self.problem(path, ProblemKind::WrongType("an object"));
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.problem(join(path, key), ProblemKind::UnknownField(kind));
            }
        }
        Some(map)
    }

    fn required<'v>(
        &mut self,
        map: &'v Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<&'v Value> {
        match map.get(key) {
            Some(Value::Null) | None => {
                self.problem(join(path, key), ProblemKind::Missing);
                None
            }
            Some(v) => Some(v),
        }
    }

    fn optional<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
        match map.get(key) {
            Some(Value::Null) | None => None,
            Some(v) => Some(v),
        }
    }

    fn count(&mut self, v: &Value, field: String) -> Option<u64> {
        match v {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    if u > MAX_COUNT {
                        self.problem(field, ProblemKind::TooLarge);
                        None
                    } else {
                        Some(u)
                    }
                } else if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f < 0.0) {
                    self.problem(field, ProblemKind::Negative);
                    None
                } else if n.as_f64().is_some_and(|f| f.fract() != 0.0) {
                    self.problem(field, ProblemKind::NotWhole);
                    None
                } else if let Some(f) = n.as_f64().filter(|f| *f <= MAX_COUNT as f64) {
                    // A whole number written with a fraction part (`1200.0`, as Python
                    // and pandas write them) is a whole number.
                    Some(f as u64)
                } else {
                    self.problem(field, ProblemKind::TooLarge);
                    None
                }
            }
            _ => {
                self.problem(field, ProblemKind::WrongType("a whole number"));
                None
            }
        }
    }

    fn text(&mut self, v: &Value, field: String) -> Option<String> {
        match v.as_str() {
            None => {
                self.problem(field, ProblemKind::WrongType("a string"));
                None
            }
            Some(s) if s.trim().is_empty() => {
                self.problem(field, ProblemKind::Empty);
                None
            }
            Some(s) if s.chars().count() > MAX_TEXT => {
                self.problem(field, ProblemKind::TooLong);
                None
            }
            Some(s) => Some(s.to_string()),
        }
    }

    fn req_text(&mut self, map: &Map<String, Value>, path: &str, key: &str) -> Option<String> {
        let v = self.required(map, path, key)?;
        self.text(v, join(path, key))
    }

    fn opt_text(&mut self, map: &Map<String, Value>, path: &str, key: &str) -> Option<String> {
        let v = Self::optional(map, key)?;
        self.text(v, join(path, key))
    }

    fn date(&mut self, v: &Value, field: String) -> Option<NaiveDate> {
        let Some(s) = v.as_str() else {
            self.problem(field, ProblemKind::WrongType("a date string YYYY-MM-DD"));
            return None;
        };
        match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            // Only the canonical form: chrono's %Y also takes "-018", which would be
            // written back as "-0018" and then refused (found by the records fuzz target).
            Ok(d) if s.len() == 10 && d.format("%Y-%m-%d").to_string() == s => Some(d),
            _ => {
                self.problem(field, ProblemKind::BadDate(s.to_string()));
                None
            }
        }
    }

    fn req_date(&mut self, map: &Map<String, Value>, path: &str, key: &str) -> Option<NaiveDate> {
        let v = self.required(map, path, key)?;
        self.date(v, join(path, key))
    }

    fn region(&mut self, v: &Value, field: String) -> Option<RegionCode> {
        let Some(s) = v.as_str() else {
            self.problem(
                field,
                ProblemKind::WrongType("a 6-digit region code string"),
            );
            return None;
        };
        match RegionCode::parse(s) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem(field, e.into());
                None
            }
        }
    }

    fn req_region(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<RegionCode> {
        let v = self.required(map, path, key)?;
        self.region(v, join(path, key))
    }

    fn school(&mut self, v: &Value, field: String) -> Option<SchoolCode> {
        let Some(s) = v.as_str() else {
            self.problem(
                field,
                ProblemKind::WrongType("a 10-digit school code string"),
            );
            return None;
        };
        match SchoolCode::parse(s) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem(field, e.into());
                None
            }
        }
    }

    fn one_of<T>(
        &mut self,
        v: &Value,
        field: String,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let Some(s) = v.as_str() else {
            self.problem(field, ProblemKind::WrongType("a string"));
            return None;
        };
        let parsed = parse(s);
        if parsed.is_none() {
            self.problem(
                field,
                ProblemKind::NotOneOf {
                    allowed: names.join(", "),
                    got: s.to_string(),
                },
            );
        }
        parsed
    }

    fn record(&mut self, v: &Value) -> Option<Record> {
        let Some(map) = v.as_object() else {
            self.problem("", ProblemKind::WrongType("a JSON object"));
            return None;
        };
        let kind = match map.get("kind") {
            None | Some(Value::Null) => {
                self.problem("kind", ProblemKind::Missing);
                return None;
            }
            Some(Value::String(k)) => k.as_str(),
            Some(_) => {
                self.problem("kind", ProblemKind::WrongType("a string"));
                return None;
            }
        };
        match kind {
            "space_count" => self.space_count(v).map(Record::SpaceCount),
            "milestone" => self.milestone(v).map(Record::Milestone),
            "recommendation" => self.recommendation(v).map(Record::Recommendation),
            "activity" => self.activity(v).map(Record::Activity),
            "withdrawal" => self.withdrawal(v).map(Record::Withdrawal),
            "key_transition" => self.key_transition(v).map(Record::KeyTransition),
            other => {
                self.problem("kind", ProblemKind::UnknownKind(other.to_string()));
                None
            }
        }
    }

    fn counts(&mut self, v: &Value, path: &str) -> Option<SpaceCounts> {
        let names: Vec<&str> = SpaceKind::ALL.iter().map(|k| k.as_str()).collect();
        let map = self.object(v, path, "space_count", &names)?;
        let mut out = SpaceCounts::default();
        let before = self.problems.len();
        for k in SpaceKind::ALL {
            if let Some(v) = Self::optional(map, k.as_str()) {
                out.set(k, self.count(v, join(path, k.as_str())));
            }
        }
        (self.problems.len() == before).then_some(out)
    }

    fn space_count(&mut self, v: &Value) -> Option<SpaceCount> {
        let map = self.object(
            v,
            "",
            "space_count",
            &[
                "kind",
                "region",
                "school",
                "as_of",
                "spaces",
                "real_name",
                "population",
            ],
        )?;
        let region = self.req_region(map, "", "region");
        let school = Self::optional(map, "school").and_then(|s| self.school(s, "school".into()));
        let as_of = self.req_date(map, "", "as_of");
        let spaces = self
            .required(map, "", "spaces")
            .and_then(|s| self.counts(s, "spaces"));
        if spaces.is_some_and(|s| s.is_empty()) {
            self.problem("spaces", ProblemKind::NoCounts);
        }
        let real_name = Self::optional(map, "real_name").and_then(|r| self.counts(r, "real_name"));
        if let (Some(spaces), Some(real)) = (spaces, real_name) {
            for (k, r) in real.iter() {
                match spaces.get(k) {
                    None => self.problem(
                        format!("real_name.{k}"),
                        ProblemKind::RealNameWithoutSpaces(k),
                    ),
                    Some(s) if r > s => self.problem(
                        format!("real_name.{k}"),
                        ProblemKind::RealNameExceeds {
                            kind: k,
                            real: r,
                            spaces: s,
                        },
                    ),
                    _ => {}
                }
            }
        }
        let population = match Self::optional(map, "population") {
            None => None,
            Some(p) => {
                // No early return when it is not an object (the problem is reported):
                // the checks below still report theirs.
                self.object(
                    p,
                    "population",
                    "space_count",
                    &["teachers", "students", "schools"],
                )
                .map(|pmap| {
                    let mut pop = Population::default();
                    for (key, slot) in [
                        ("teachers", &mut pop.teachers),
                        ("students", &mut pop.students),
                        ("schools", &mut pop.schools),
                    ] {
                        if let Some(v) = Self::optional(pmap, key) {
                            *slot = self.count(v, format!("population.{key}"));
                        }
                    }
                    pop
                })
            }
        };
        if let (Some(r), Some(_)) = (region, school)
            && r.level() == Level::Province
        {
            self.problem(
                "region",
                ProblemKind::WrongLevel {
                    code: r,
                    expected: "county or city",
                    got: Level::Province,
                },
            );
        }
        Some(SpaceCount {
            region: region?,
            school,
            as_of: as_of?,
            spaces: spaces?,
            real_name,
            population,
        })
    }

    fn milestone(&mut self, v: &Value) -> Option<Milestone> {
        let map = self.object(
            v,
            "",
            "milestone",
            &[
                "kind",
                "milestone",
                "region",
                "submitted_on",
                "document",
                "details",
            ],
        )?;
        let milestone = self.req_text(map, "", "milestone");
        let region = self.req_region(map, "", "region");
        if let Some(r) = region
            && r.level() != Level::Province
        {
            self.problem(
                "region",
                ProblemKind::WrongLevel {
                    code: r,
                    expected: "provincial",
                    got: r.level(),
                },
            );
        }
        let submitted_on = self.req_date(map, "", "submitted_on");
        let document = self.required(map, "", "document").and_then(|d| {
            let dmap = self.object(d, "document", "milestone", &["title", "sha256", "uri"])?;
            let title = self.req_text(dmap, "document", "title");
            let sha = self.req_text(dmap, "document", "sha256");
            if let Some(s) = &sha
                && (s.len() != 64
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            {
                self.problem("document.sha256", ProblemKind::BadSha256);
            }
            let uri = self.opt_text(dmap, "document", "uri");
            Some(Document {
                title: title?,
                sha256: sha?,
                uri,
            })
        });
        let details = match Self::optional(map, "details") {
            None => Some(MilestoneDetails::default()),
            Some(d) => self.details(d),
        };
        Some(Milestone {
            milestone: milestone?,
            region: region?,
            submitted_on: submitted_on?,
            document: document?,
            details: details?,
        })
    }

    fn details(&mut self, v: &Value) -> Option<MilestoneDetails> {
        let map = self.object(v, "details", "milestone", &["years", "contacts"])?;
        let before = self.problems.len();
        let years = Self::optional(map, "years").and_then(|y| {
            let ymap = y.as_object().or_else(|| {
                self.problem(
                    "details.years",
                    ProblemKind::WrongType("an object of year → region codes"),
                );
                None
            })?;
            let mut out = BTreeMap::new();
            for (year, list) in ymap {
                let field = format!("details.years.{year}");
                let y = match year.parse::<u16>() {
                    Ok(y) if (2000..=2100).contains(&y) && year.len() == 4 => y,
                    _ => {
                        self.problem(field.clone(), ProblemKind::BadYear);
                        continue;
                    }
                };
                let Some(items) = list.as_array() else {
                    self.problem(field, ProblemKind::WrongType("an array of region codes"));
                    continue;
                };
                let codes: Vec<RegionCode> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| self.region(c, format!("{field}[{i}]")))
                    .collect();
                out.insert(y, codes);
            }
            Some(out)
        });
        let contacts = Self::optional(map, "contacts").and_then(|c| {
            let Some(items) = c.as_array() else {
                self.problem(
                    "details.contacts",
                    ProblemKind::WrongType("an array of contacts"),
                );
                return None;
            };
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("details.contacts[{i}]");
                let Some(cmap) = self.object(
                    item,
                    &path,
                    "milestone",
                    &["name", "role", "phone", "email"],
                ) else {
                    continue;
                };
                let name = self.req_text(cmap, &path, "name");
                let role = self.req_text(cmap, &path, "role");
                let phone = self.req_text(cmap, &path, "phone");
                let email = self.req_text(cmap, &path, "email");
                if let (Some(name), Some(role), Some(phone), Some(email)) =
                    (name, role, phone, email)
                {
                    out.push(Contact {
                        name,
                        role,
                        phone,
                        email,
                    });
                }
            }
            Some(out)
        });
        (self.problems.len() == before).then_some(MilestoneDetails { years, contacts })
    }

    fn recommendation(&mut self, v: &Value) -> Option<Recommendation> {
        let map = self.object(v, "", "recommendation", &["kind", "level", "by", "nominee"])?;
        let level = self.required(map, "", "level").and_then(|l| {
            self.one_of(l, "level".into(), &["county", "city", "province"], |s| {
                s.parse::<Level>().ok()
            })
        });
        let by = self.req_region(map, "", "by");
        if let (Some(level), Some(by)) = (level, by)
            && by.level() != level
        {
            self.problem(
                "by",
                ProblemKind::WrongLevel {
                    code: by,
                    expected: level.as_str(),
                    got: by.level(),
                },
            );
        }
        let nominee = self.required(map, "", "nominee").and_then(|n| {
            let nmap = self.object(
                n,
                "nominee",
                "recommendation",
                &["type", "code", "name", "region"],
            )?;
            let t = self.required(nmap, "nominee", "type").and_then(|t| {
                self.one_of(
                    t,
                    "nominee.type".into(),
                    &["school", "region"],
                    |s| match s {
                        "school" => Some(NomineeType::School),
                        "region" => Some(NomineeType::Region),
                        _ => None,
                    },
                )
            })?;
            let name = self.opt_text(nmap, "nominee", "name");
            let code = self.required(nmap, "nominee", "code")?;
            match t {
                NomineeType::School => {
                    let code = self.school(code, "nominee.code".into());
                    let region = self.req_region(nmap, "nominee", "region");
                    if let Some(r) = region
                        && r.level() == Level::Province
                    {
                        // A school sits in a county (or a city without counties).
                        self.problem(
                            "nominee.region",
                            ProblemKind::WrongLevel {
                                code: r,
                                expected: "county or city",
                                got: Level::Province,
                            },
                        );
                    }
                    Some(Nominee::School {
                        code: code?,
                        name,
                        region: region?,
                    })
                }
                NomineeType::Region => {
                    let code = self.region(code, "nominee.code".into());
                    if let Some(r) = Self::optional(nmap, "region") {
                        // A region nominee is its own region; a differing `region` is a mistake.
                        let given = self.region(r, "nominee.region".into());
                        if let (Some(g), Some(c)) = (given, code)
                            && g != c
                        {
                            self.problem(
                                "nominee.region",
                                ProblemKind::NotOneOf {
                                    allowed: c.to_string(),
                                    got: g.to_string(),
                                },
                            );
                        }
                    }
                    Some(Nominee::Region { code: code?, name })
                }
            }
        });
        if let (Some(by), Some(n)) = (by, &nominee) {
            let inside = match n {
                Nominee::Region { code, .. } => code.is_within(by) && *code != by,
                Nominee::School { region, .. } => region.is_within(by),
            };
            if matches!(n, Nominee::Region { code, .. } if *code == by) {
                self.problem("nominee.code", ProblemKind::SelfNomination(by));
            } else if !inside {
                self.problem(
                    match n {
                        Nominee::Region { .. } => "nominee.code",
                        Nominee::School { .. } => "nominee.region",
                    },
                    ProblemKind::NotInside {
                        code: n.region(),
                        container: by,
                    },
                );
            }
        }
        Some(Recommendation {
            level: level?,
            by: by?,
            nominee: nominee?,
        })
    }

    fn activity(&mut self, v: &Value) -> Option<Activity> {
        let map = self.object(
            v,
            "",
            "activity",
            &[
                "kind",
                "region",
                "date",
                "category",
                "title",
                "participants",
            ],
        )?;
        let region = self.req_region(map, "", "region");
        let date = self.req_date(map, "", "date");
        let category = self.required(map, "", "category").and_then(|c| {
            self.one_of(
                c,
                "category".into(),
                ActivityCategory::NAMES,
                ActivityCategory::parse,
            )
        });
        let title = self.req_text(map, "", "title");
        let participants =
            Self::optional(map, "participants").and_then(|p| self.count(p, "participants".into()));
        Some(Activity {
            region: region?,
            date: date?,
            category: category?,
            title: title?,
            participants,
        })
    }

    fn key_transition(&mut self, v: &Value) -> Option<KeyTransition> {
        let map = self.object(v, "", "key_transition", &["kind", "new_key", "proof"])?;
        let new_key = self.required(map, "", "new_key").and_then(|k| {
            let Some(line) = k.as_str() else {
                self.problem(
                    "new_key",
                    ProblemKind::WrongType("a key line ed25519:<base64>"),
                );
                return None;
            };
            match crate::keys::parse_public_key(line) {
                // Kept as its canonical line, so the entry's bytes say one thing.
                Ok(key) if crate::keys::public_key_line(&key) == line => Some(line.to_string()),
                Ok(_) | Err(_) => {
                    self.problem("new_key", ProblemKind::BadKey);
                    None
                }
            }
        });
        let proof = self.required(map, "", "proof").and_then(|p| {
            let s = p.as_str().unwrap_or_default();
            let t = KeyTransition {
                new_key: String::new(),
                proof: s.to_string(),
            };
            // One spelling only: padded standard base64 of exactly 64 bytes.
            let canonical = t.proof_signature().is_some_and(|sig| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()) == s
            });
            if canonical {
                Some(t.proof)
            } else {
                self.problem("proof", ProblemKind::BadProof);
                None
            }
        });
        Some(KeyTransition {
            new_key: new_key?,
            proof: proof?,
        })
    }

    fn withdrawal(&mut self, v: &Value) -> Option<Withdrawal> {
        let map = self.object(v, "", "withdrawal", &["kind", "target_seq", "reason"])?;
        let target = self.required(map, "", "target_seq").and_then(|t| {
            let n = self.count(t, "target_seq".into())?;
            if n == 0 {
                self.problem("target_seq", ProblemKind::ZeroSeq);
                None
            } else {
                Some(n)
            }
        });
        let reason = self.req_text(map, "", "reason");
        Some(Withdrawal {
            target_seq: target?,
            reason: reason?,
        })
    }
}
