//! Signed, hash-chained entries: what an agent makes of each accepted record.
//!
//! An entry wraps a record with its `source`, a gap-free `seq` from 1, `prev` (the
//! SHA-256 of the previous entry's payload; zeros for seq 1), `recorded_at` (agent clock,
//! UTC) and the `campaign` id. Its JSON is the payload of a DSSE envelope signed with the
//! source's Ed25519 key. The entry hash is the SHA-256 of that payload.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize, Serializer};

use crate::dsse::{Digest, DsseError, Envelope};
use crate::record::{KeyTransition, Problem, Record};

/// DSSE payload type of a source's entry.
pub const ENTRY_PAYLOAD_TYPE: &str = "application/vnd.spacesync.entry+json";

/// First line of the statement a key-transition's new key signs.
pub const TRANSITION_DOMAIN: &str = "spacesync key-transition v1";

/// Why a key-transition entry does not prove its new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// `new_key` is not an acceptable key.
    #[error("its new_key is not an acceptable Ed25519 key")]
    Key,
    /// `proof` is not the new key's signature over the statement.
    #[error(
        "its proof is not the new key's signature over this entry's statement (source, seq, prev, new key): whoever made it does not hold the new key"
    )]
    Proof,
}

/// A source id: `[a-z0-9][a-z0-9-]{1,62}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SourceId(String);

/// Why a source id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "source id {0:?} must be 2–63 characters of a-z, 0-9 and '-', starting with a letter or digit"
)]
pub struct SourceIdError(pub String);

impl SourceId {
    /// Checks and wraps a source id.
    pub fn parse(s: &str) -> Result<SourceId, SourceIdError> {
        let b = s.as_bytes();
        let ok = (2..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(SourceId(s.to_string()))
        } else {
            Err(SourceIdError(s.to_string()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SourceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SourceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for SourceId {
    type Err = SourceIdError;
    fn from_str(s: &str) -> Result<Self, SourceIdError> {
        SourceId::parse(s)
    }
}

/// One entry of a source's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The agent that made it.
    pub source: SourceId,
    /// Gap-free, from 1.
    pub seq: u64,
    /// SHA-256 of the previous entry's payload; zeros for seq 1.
    pub prev: Digest,
    /// Agent clock when the record was accepted (UTC). Agents write it with milliseconds
    /// (`to_payload`); every reader takes what RFC 3339 allows, up to nanoseconds, and the
    /// hub keeps the signed bytes as sent, so a finer time is never written back rounded.
    #[serde(serialize_with = "ser_time")]
    pub recorded_at: DateTime<Utc>,
    /// Campaign id.
    pub campaign: String,
    /// The record.
    pub record: Record,
}

fn ser_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

mod fast;

/// The entry's fields, with the record read by `R`. The same shape as the full reader's
/// (unknown and repeated fields refused by the derive).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry<R> {
    source: SourceId,
    seq: u64,
    prev: Digest,
    recorded_at: DateTime<Utc>,
    campaign: String,
    record: R,
}

impl<R> RawEntry<R> {
    /// The entry these fields make with `record` (read from `self.record`); seq 0 is
    /// refused by both readers, so it is checked here once.
    fn into_entry(
        self,
        record: impl FnOnce(R) -> Result<Record, EntryError>,
    ) -> Result<Entry, EntryError> {
        if self.seq == 0 {
            return Err(EntryError::Malformed("seq must be ≥ 1".into()));
        }
        Ok(Entry {
            record: record(self.record)?,
            source: self.source,
            seq: self.seq,
            prev: self.prev,
            recorded_at: self.recorded_at,
            campaign: self.campaign,
        })
    }
}

/// The entry in `payload` when it is a space count this reader takes; `None` sends the
/// payload to the full reader.
fn space_count_entry(payload: &[u8]) -> Option<Entry> {
    plain_entry(payload).or_else(|| serde_entry(payload))
}

/// [`space_count_entry`] by the reader without serde ([`fast::plain`]): agents' entries.
fn plain_entry(payload: &[u8]) -> Option<Entry> {
    let p = fast::plain(payload)?;
    RawEntry {
        source: SourceId::parse(p.source).ok()?,
        seq: p.seq,
        prev: p.prev,
        recorded_at: p.recorded_at,
        campaign: p.campaign.to_owned(),
        record: p.record,
    }
    .into_entry(|r| Ok(Record::SpaceCount(r)))
    .ok()
}

/// [`space_count_entry`] through serde ([`fast::Fast`]): plain space counts in whatever
/// whitespace and key order JSON allows, escapes only outside the record.
fn serde_entry(payload: &[u8]) -> Option<Entry> {
    let raw: RawEntry<fast::Fast> = serde_json::from_slice(payload).ok()?;
    raw.into_entry(|r| Ok(Record::SpaceCount(r.0))).ok()
}

/// Why an envelope is not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The envelope's signature or type is wrong.
    #[error("{0}")]
    Signature(#[from] DsseError),
    /// The payload is not an entry.
    #[error("payload is not a valid entry: {0}")]
    Malformed(String),
    /// The record inside is invalid.
    #[error("record is invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Record(Vec<Problem>),
    /// The envelope carries other than exactly one signature.
    #[error(
        "an entry carries exactly one signature, by its source's key; this one carries {0} (sign it again with the agent)"
    )]
    SignatureCount(usize),
}

impl Entry {
    /// The payload bytes (compact JSON).
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Signs the entry as a DSSE envelope.
    pub fn sign(&self, key: &SigningKey) -> Envelope {
        Envelope::sign(key, ENTRY_PAYLOAD_TYPE, self.to_payload())
    }

    /// Reads an entry from payload bytes without checking any signature.
    pub fn from_payload(payload: &[u8]) -> Result<Entry, EntryError> {
        // Most entries are space counts as agents write them: read those directly. Any
        // other payload, and any doubt, goes the full way (which names what is wrong).
        if let Some(entry) = space_count_entry(payload) {
            return Ok(entry);
        }
        Entry::from_payload_fully(payload)
    }

    /// [`Entry::from_payload`] without the direct reader: the record read as a JSON tree
    /// (duplicate keys refused) and checked field by field. The reference the direct
    /// reader is held to (its tests, the `envelope` fuzz target); use `from_payload`.
    pub fn from_payload_fully(payload: &[u8]) -> Result<Entry, EntryError> {
        // The record read with duplicate keys refused, like every record.
        let raw: RawEntry<crate::json::StrictJson> =
            serde_json::from_slice(payload).map_err(|e| EntryError::Malformed(e.to_string()))?;
        raw.into_entry(|r| Record::from_value(&r.0).map_err(EntryError::Record))
    }

    /// The statement a key-transition's new key signs (its `proof`): what the old key signs
    /// too, as part of the entry. Domain-separated, and bound to the source, the seq and
    /// `prev`, so a proof cannot be carried to another chain or another place in this one.
    pub fn transition_statement(&self, new_key_line: &str) -> Vec<u8> {
        format!(
            "{TRANSITION_DOMAIN}\nsource {}\nseq {}\nprev {}\nnew_key {new_key_line}\n",
            self.source, self.seq, self.prev
        )
        .into_bytes()
    }

    /// A key-transition entry at `seq` after `prev`: `new` signs every seq after it. The
    /// proof is made here with `new`; the caller signs the entry with the key in force at
    /// `seq` ([`Entry::sign`]).
    pub fn key_transition(
        source: SourceId,
        seq: u64,
        prev: Digest,
        recorded_at: DateTime<Utc>,
        campaign: String,
        new: &SigningKey,
    ) -> Entry {
        use base64::Engine as _;
        use ed25519_dalek::Signer as _;
        let new_key = crate::keys::public_key_line(&new.verifying_key());
        let mut entry = Entry {
            source,
            seq,
            prev,
            recorded_at,
            campaign,
            record: Record::KeyTransition(KeyTransition {
                new_key: new_key.clone(),
                proof: String::new(),
            }),
        };
        let sig = new.sign(&entry.transition_statement(&new_key));
        entry.record = Record::KeyTransition(KeyTransition {
            new_key,
            proof: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        });
        entry
    }

    /// For a key-transition entry, the new key once its proof verifies (the one rule of
    /// [`crate::sig`]); `Ok(None)` for every other record.
    pub fn transition(&self) -> Result<Option<VerifyingKey>, TransitionError> {
        let Record::KeyTransition(t) = &self.record else {
            return Ok(None);
        };
        let key = t.key().map_err(|_| TransitionError::Key)?;
        let sig = t.proof_signature().ok_or(TransitionError::Proof)?;
        crate::sig::verify(&key, &self.transition_statement(&t.new_key), &sig)
            .map_err(|_| TransitionError::Proof)?;
        Ok(Some(key))
    }

    /// Verifies the envelope's signature by `key` (the one rule of [`crate::sig`]) and reads the entry.
    pub fn open(env: &Envelope, key: &VerifyingKey) -> Result<Entry, EntryError> {
        env.verify(ENTRY_PAYLOAD_TYPE, key)?;
        Entry::from_payload(&env.payload)
    }
}

/// Verifies many entry signatures by one key at once under the one rule of [`crate::sig`]
/// (batch verification as a fast path for exactly what single verification accepts).
/// Returns the index of the first envelope that does not verify, with why.
pub fn verify_signatures(envs: &[&Envelope], key: &VerifyingKey) -> Result<(), (usize, DsseError)> {
    verify_signatures_with(envs, key, None)
}

/// [`verify_signatures`] leaving the `R`s' torsion test in `debt`, as
/// [`crate::sig::verify_batch_deferring`] does: `Ok` holds only once `debt` settles clean.
pub fn verify_signatures_deferring(
    envs: &[&Envelope],
    key: &VerifyingKey,
    debt: &mut crate::sig::TorsionDebt,
) -> Result<(), (usize, DsseError)> {
    verify_signatures_with(envs, key, Some(debt))
}

fn verify_signatures_with(
    envs: &[&Envelope],
    key: &VerifyingKey,
    debt: Option<&mut crate::sig::TorsionDebt>,
) -> Result<(), (usize, DsseError)> {
    let mut sigs: Vec<Signature> = Vec::with_capacity(envs.len());
    // The signed messages, end to end in one buffer (one allocation a batch rather than
    // one an entry: at ingest the hub's threads contend for glibc's arena locks).
    let room: usize = envs
        .iter()
        .map(|e| e.payload_type.len() + e.payload.len() + 48)
        .sum();
    let mut paes: Vec<u8> = Vec::with_capacity(room);
    let mut ends: Vec<usize> = Vec::with_capacity(envs.len());
    // The first envelope whose signature does not even read. The ones before it must
    // still be verified before it is named: callers take every entry before the one named
    // as verified (an unverified prefix would be held on the strength of its successor's
    // refusal — the session 24 review's finding).
    let mut unreadable = None;
    for (i, env) in envs.iter().enumerate() {
        match env.signature_by(ENTRY_PAYLOAD_TYPE, key) {
            Ok(sig) => {
                sigs.push(sig);
                crate::dsse::pae_pieces(&env.payload_type, &env.payload, |piece| {
                    paes.extend_from_slice(piece)
                });
                ends.push(paes.len());
            }
            Err(e) => {
                unreadable = Some((i, e));
                break;
            }
        }
    }
    let msgs: Vec<&[u8]> = ends
        .iter()
        .scan(0, |start, &end| {
            let msg = &paes[*start..end];
            *start = end;
            Some(msg)
        })
        .collect();
    let keys = vec![*key; sigs.len()];
    match debt {
        Some(debt) => crate::sig::verify_batch_deferring(&msgs, &sigs, &keys, debt),
        None => crate::sig::verify_batch(&msgs, &sigs, &keys),
    }
    .map_err(|(i, _)| {
        (
            i,
            DsseError::BadSignature {
                keyid: crate::dsse::key_id(key),
            },
        )
    })?;
    match unreadable {
        Some(fault) => Err(fault),
        None => Ok(()),
    }
}

#[cfg(test)]
mod fast_tests {
    use chrono::TimeZone as _;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::record::{MAX_COUNT, Population, SpaceCount, SpaceCounts, SpaceKind};
    use crate::region::{Level, RegionCode, SchoolCode};
    use chrono::NaiveDate;

    /// A county, a city without counties' district, a city, a province (only without a
    /// school), and one the full reader refuses (no such province).
    const REGIONS: [&str; 5] = ["440106", "110101", "440100", "440000", "990101"];

    fn entry(record: SpaceCount, seq: u64) -> Entry {
        Entry {
            source: SourceId::parse("gd-agent").unwrap(),
            seq,
            prev: Digest([7; 32]),
            recorded_at: Utc.timestamp_millis_opt(1_543_622_400_123).unwrap(),
            campaign: "2018-online-learning-space".into(),
            record: Record::SpaceCount(record),
        }
    }

    fn counts() -> impl Strategy<Value = SpaceCounts> {
        proptest::array::uniform8(proptest::option::of(0..=MAX_COUNT)).prop_map(SpaceCounts)
    }

    /// Space counts the full reader takes, in every optional shape.
    fn valid() -> impl Strategy<Value = SpaceCount> {
        (
            0..4usize,
            proptest::option::of(1_000_000_000u64..=9_999_999_999),
            (0i32..=9999, 1u32..=12, 1u32..=31),
            counts().prop_filter("one kind at least", |c| !c.is_empty()),
            proptest::option::of(proptest::array::uniform8(0.0..=1.0f64)),
            proptest::option::of((
                proptest::option::of(0..=MAX_COUNT),
                proptest::option::of(0..=MAX_COUNT),
                proptest::option::of(0..=MAX_COUNT),
            )),
        )
            .prop_filter_map(
                "a valid record",
                |(r, school, (y, m, d), spaces, real, pop)| {
                    let region = RegionCode::parse(REGIONS[r]).ok()?;
                    let school = school.map(|s| SchoolCode::parse(&s.to_string()).ok());
                    if school.is_some() && region.level() == Level::Province {
                        return None;
                    }
                    // Real-name counts are a share of each known kind.
                    let real_name = real.map(|share| {
                        let mut out = SpaceCounts::default();
                        for (k, v) in spaces.iter() {
                            out.set(k, Some((v as f64 * share[k.index()]) as u64));
                        }
                        out
                    });
                    Some(SpaceCount {
                        region,
                        school: school.flatten(),
                        as_of: NaiveDate::from_ymd_opt(y, m, d)?,
                        spaces,
                        real_name,
                        population: pop.map(|(teachers, students, schools)| Population {
                            teachers,
                            students,
                            schools,
                        }),
                    })
                },
            )
    }

    /// Dates in canonical and near-canonical forms.
    const DATES: [&str; 18] = [
        "2018-11-30",
        "2018/11-30",
        "2018-11/30",
        "2018-2-28",
        "2018-02-29",
        "2020-02-29",
        "+2018-11-30",
        "-018-11-30",
        "0000-01-01",
        "0999-12-31",
        "2018-11-30 ",
        "2018/11/30",
        "20181130",
        "2018-11-3x",
        "2018-13-01",
        "2018-00-10",
        "2018-11-00",
        "9999-12-31",
    ];

    /// Codes, good and bad, and other strings.
    const TEXTS: [&str; 12] = [
        "440106",
        "4401060001",
        "44010600011",
        "440000",
        "440100",
        "990101",
        "440190",
        "44010a",
        "space_count",
        "milestone",
        "",
        " ",
    ];

    /// A count at or around the edges the readers check.
    fn edge_count() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0..=3u64).prop_map(|n| json!(n)),
            (MAX_COUNT - 1..=MAX_COUNT + 1).prop_map(|n| json!(n)),
            (0..=MAX_COUNT + 1).prop_map(|n| json!(n)),
            (0..=MAX_COUNT + 1).prop_map(|n| json!(n as f64)),
            Just(json!(-1)),
            Just(json!(-0.0)),
            Just(json!(1.5)),
            Just(json!(u64::MAX)),
            Just(Value::Null),
            Just(json!("7")),
        ]
    }

    /// JSON values that stress each reader where they could part: types, number forms,
    /// dates in near-canonical forms, codes, empty and odd objects.
    fn hostile_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => edge_count(),
            3 => prop::sample::select(&DATES[..]).prop_map(|s| json!(s)),
            3 => prop::sample::select(&TEXTS[..]).prop_map(|s| json!(s)),
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::Bool),
            1 => any::<f64>().prop_map(|f| json!(f)),
            1 => Just(json!({})),
            1 => Just(json!([])),
            2 => (0..8usize, edge_count())
                .prop_map(|(k, v)| json!({ SpaceKind::ALL[k].as_str(): v })),
            1 => Just(json!({"teacher": 1, "student": null})),
            1 => Just(json!({"teachers": 5, "schools": 1})),
            1 => Just(json!({"nope": 1})),
        ]
    }

    /// The keys a mutation picks from: the record's own, the counts', the population's,
    /// and strangers.
    const KEYS: [&str; 16] = [
        "kind",
        "region",
        "school",
        "as_of",
        "spaces",
        "real_name",
        "population",
        "teacher",
        "student",
        "club",
        "teachers",
        "students",
        "schools",
        "Kind",
        "extra",
        "spaces ",
    ];

    #[derive(Debug, Clone)]
    enum Mutation {
        /// Sets a key of the record, or of one of its objects, to a value.
        Set(usize, usize, Value),
        /// Removes a key of the record or of one of its objects.
        Remove(usize, usize),
        /// Writes the payload's `n`th `"key":value` pair twice.
        Repeat(usize),
        /// Writes the `n`th string's first character as a `\u` escape.
        Escape(usize),
        /// Sets `as_of` to the `n`th of [`DATES`].
        Date(usize),
        /// Sets `region` (0) or `school` (1) to the `n`th of [`TEXTS`].
        Code(usize, usize),
        /// Sets a kind's real-name count to its spaces (0 when unknown) plus -1, 0 or 1.
        RealName(usize, i8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            6 => (0..4usize, 0..KEYS.len(), hostile_value())
                .prop_map(|(at, k, v)| Mutation::Set(at, k, v)),
            2 => (0..4usize, 0..KEYS.len()).prop_map(|(at, k)| Mutation::Remove(at, k)),
            1 => (0..40usize).prop_map(Mutation::Repeat),
            1 => (0..40usize).prop_map(Mutation::Escape),
            2 => (0..DATES.len()).prop_map(Mutation::Date),
            2 => (0..2usize, 0..TEXTS.len()).prop_map(|(f, n)| Mutation::Code(f, n)),
            2 => (0..8usize, -1i8..=1).prop_map(|(k, d)| Mutation::RealName(k, d)),
        ]
    }

    /// The object `at` picks (the record, its spaces, real_name or population), if there.
    fn object_at(record: &mut Value, at: usize) -> Option<&mut serde_json::Map<String, Value>> {
        let name = ["", "spaces", "real_name", "population"][at];
        let v = if name.is_empty() {
            record
        } else {
            record.get_mut(name)?
        };
        v.as_object_mut()
    }

    /// The payload text of `entry` with `mutations` applied.
    fn mutated(entry: &Entry, mutations: &[Mutation]) -> Vec<u8> {
        let mut v: Value = serde_json::to_value(entry).unwrap();
        let mut text_edits = Vec::new();
        for m in mutations {
            let record = &mut v["record"];
            match m {
                Mutation::Set(at, k, value) => {
                    if let Some(o) = object_at(record, *at) {
                        o.insert(KEYS[*k].to_string(), value.clone());
                    }
                }
                Mutation::Remove(at, k) => {
                    if let Some(o) = object_at(record, *at) {
                        o.remove(KEYS[*k]);
                    }
                }
                Mutation::Date(n) => record["as_of"] = json!(DATES[*n]),
                Mutation::Code(f, n) => record[["region", "school"][*f]] = json!(TEXTS[*n]),
                Mutation::RealName(k, d) => {
                    let kind = SpaceKind::ALL[*k].as_str();
                    let spaces = record["spaces"][kind].as_u64().unwrap_or(0);
                    let real = spaces.saturating_add_signed(i64::from(*d));
                    if !record["real_name"].is_object() {
                        record["real_name"] = json!({});
                    }
                    record["real_name"][kind] = json!(real);
                }
                other => text_edits.push(other.clone()),
            }
        }
        let mut text = serde_json::to_string(&v).unwrap();
        for edit in text_edits {
            text = match edit {
                Mutation::Repeat(n) => repeat_pair(&text, n),
                Mutation::Escape(n) => escape_string(&text, n),
                _ => text,
            };
        }
        text.into_bytes()
    }

    /// `text` with the `n`th (mod their number) `"key":<scalar>` pair written twice.
    fn repeat_pair(text: &str, n: usize) -> String {
        let pairs: Vec<(usize, usize)> = text
            .match_indices("\":")
            .filter_map(|(colon, _)| {
                let start = text[..colon].rfind([',', '{'])? + 1;
                let end = colon + 2 + text[colon + 2..].find([',', '}'])?;
                let value = &text[colon + 2..end];
                (!value.contains(['{', '['])).then_some((start, end))
            })
            .collect();
        if pairs.is_empty() {
            return text.to_string();
        }
        let (start, end) = pairs[n % pairs.len()];
        format!("{},{}{}", &text[..end], &text[start..end], &text[end..])
    }

    /// `text` with the first character of its `n`th (mod their number) string written as
    /// a `\u` escape: the same JSON, the same value.
    fn escape_string(text: &str, n: usize) -> String {
        let starts: Vec<usize> = text
            .match_indices('"')
            .map(|(i, _)| i + 1)
            .step_by(2)
            .filter(|i| text[*i..].starts_with(|c: char| c.is_ascii_alphanumeric()))
            .collect();
        if starts.is_empty() {
            return text.to_string();
        }
        let at = starts[n % starts.len()];
        let c = text.as_bytes()[at];
        format!("{}\\u{:04x}{}", &text[..at], c, &text[at + 1..])
    }

    /// Times in the forms chrono reads and near them.
    const TIMES: [&str; 24] = [
        "2018-11-02T02:00:00Z",
        "2018-11-02T02:00:00.000Z",
        "2018-11-02T02:00:00.1Z",
        "2018-11-02T02:00:00.123456789Z",
        "2018-11-02T02:00:00.1234567891Z",
        "2018-11-02T02:00:60Z",
        "2016-12-31T23:59:60.5Z",
        "2018-11-02T24:00:00Z",
        "2018-11-02T02:60:00Z",
        "2018-11-02t02:00:00z",
        "2018-11-02 02:00:00Z",
        "2018-11-02T02:00:00+08:00",
        "2018-11-02T02:00:00-00:00",
        "2018-02-30T02:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
        "2018-11-02T02:00Z",
        "2018-11-02T2:00:00Z",
        "2018-11-02T02:00:00.Z",
        "2018-11-02T02:00:00,5Z",
        "+2018-11-02T02:00:00Z",
        "2018-11-02T02:00:00.5",
        "2018-11-02T02:00:00.-5Z",
        "２018-11-02T02:00:00Z",
    ];

    /// Values for the entry's own fields, at their edges.
    const FIELD_VALUES: [&str; 20] = [
        "\"gd-agent\"",
        "\"GD-agent\"",
        "\"g\"",
        "\"-gd\"",
        "\"gd\\u002dagent\"",
        "\"0707070707070707070707070707070707070707070707070707070707070707\"",
        "\"0A07070707070707070707070707070707070707070707070707070707070707\"",
        "\"070707070707070707070707070707070707070707070707070707070707070\"",
        "0",
        "1",
        "01",
        "18446744073709551615",
        "18446744073709551616",
        "7.0",
        "-7",
        "\"7\"",
        "null",
        "\"二〇一八\"",
        "\"a\\\"b\"",
        "\"\"",
    ];

    /// The entry's keys an edit picks from, with strangers.
    const ENTRY_KEYS: [&str; 8] = [
        "source",
        "seq",
        "prev",
        "recorded_at",
        "campaign",
        "record",
        "Source",
        "extra",
    ];

    /// An edit of an entry's text outside its record.
    #[derive(Debug, Clone)]
    enum EntryEdit {
        /// Sets `recorded_at` to the `n`th of [`TIMES`].
        Time(usize),
        /// Sets `recorded_at` to a time chrono writes, in one of its forms.
        Written(i64, u32, usize),
        /// Sets (or adds) the `k`th of [`ENTRY_KEYS`] to the `v`th of [`FIELD_VALUES`].
        Field(usize, usize),
        /// Whitespace after the `n`th `{`, `,` or `:` (JSON allows it there).
        Space(usize),
        /// Bytes after the payload.
        Trailing(&'static str),
    }

    /// The payload text of `e` with `edits` applied: the fields' edits first (a field set
    /// where it is, or added first), then the text's, in order.
    fn edited(e: &Entry, edits: &[EntryEdit]) -> String {
        let mut fields: Vec<(&str, String)> = vec![
            ("source", serde_json::to_string(&e.source).unwrap()),
            ("seq", e.seq.to_string()),
            ("prev", serde_json::to_string(&e.prev).unwrap()),
            (
                "recorded_at",
                serde_json::to_string(&e.recorded_at).unwrap(),
            ),
            ("campaign", serde_json::to_string(&e.campaign).unwrap()),
            ("record", serde_json::to_string(&e.record).unwrap()),
        ];
        let mut set =
            |key: &'static str, value: String| match fields.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => *v = value,
                None => fields.insert(0, (key, value)),
            };
        for edit in edits {
            match edit {
                EntryEdit::Time(n) => set("recorded_at", format!("\"{}\"", TIMES[*n])),
                EntryEdit::Written(secs, nanos, form) => {
                    if let Some(t) = DateTime::<Utc>::from_timestamp(*secs, *nanos) {
                        let forms = [
                            chrono::SecondsFormat::Secs,
                            chrono::SecondsFormat::Millis,
                            chrono::SecondsFormat::Micros,
                            chrono::SecondsFormat::Nanos,
                            chrono::SecondsFormat::AutoSi,
                        ];
                        let written = t.to_rfc3339_opts(forms[*form % forms.len()], true);
                        set("recorded_at", format!("\"{written}\""));
                    }
                }
                EntryEdit::Field(k, v) => set(ENTRY_KEYS[*k], FIELD_VALUES[*v].to_string()),
                EntryEdit::Space(_) | EntryEdit::Trailing(_) => {}
            }
        }
        let pairs: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let mut text = format!("{{{}}}", pairs.join(","));
        for edit in edits {
            match edit {
                EntryEdit::Space(n) => {
                    let at = structural(&text);
                    let i = at[*n % at.len()];
                    text = format!("{} \n\t\r{}", &text[..i], &text[i..]);
                }
                EntryEdit::Trailing(t) => text.push_str(t),
                _ => {}
            }
        }
        text
    }

    /// Where whitespace may go in JSON `text`: after each `{`, `,` or `:` outside strings.
    fn structural(text: &str) -> Vec<usize> {
        let (mut at, mut in_string, mut escaped) = (Vec::new(), false, false);
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_string => escaped = true,
                '"' => in_string = !in_string,
                '{' | ',' | ':' if !in_string => at.push(i + 1),
                _ => {}
            }
        }
        at
    }

    fn entry_edit() -> impl Strategy<Value = EntryEdit> {
        prop_oneof![
            3 => (0..TIMES.len()).prop_map(EntryEdit::Time),
            3 => (-62_000_000_000i64..250_000_000_000, 0u32..2_000_000_000, 0..5usize)
                .prop_map(|(s, n, f)| EntryEdit::Written(s, n, f)),
            4 => (0..ENTRY_KEYS.len(), 0..FIELD_VALUES.len())
                .prop_map(|(k, v)| EntryEdit::Field(k, v)),
            2 => (0..200usize).prop_map(EntryEdit::Space),
            1 => prop::sample::select(&[" ", "\n", "x", "}", ",", "\u{0}"][..])
                .prop_map(EntryEdit::Trailing),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// Every space count an agent writes is read directly — by the reader without
        /// serde, and by serde's — as the full reader reads it.
        #[test]
        fn entries_as_agents_write_them_are_read_directly(record in valid(), seq in 1u64..) {
            let e = entry(record, seq);
            let payload = e.to_payload();
            prop_assert_eq!(plain_entry(&payload), Some(e.clone()));
            prop_assert_eq!(serde_entry(&payload), Some(e.clone()));
            prop_assert_eq!(space_count_entry(&payload), Some(e.clone()));
            prop_assert_eq!(Entry::from_payload_fully(&payload), Ok(e));
        }

        /// Whatever either direct reader takes, the full reader takes, as the same entry.
        #[test]
        fn the_direct_reader_takes_nothing_the_full_reader_refuses(
            record in valid(),
            mutations in proptest::collection::vec(mutation(), 1..4),
        ) {
            let payload = mutated(&entry(record, 1), &mutations);
            for fast in [plain_entry(&payload), serde_entry(&payload)].into_iter().flatten() {
                prop_assert_eq!(
                    Entry::from_payload_fully(&payload),
                    Ok(fast),
                    "{}",
                    String::from_utf8_lossy(&payload)
                );
            }
        }

        /// The same for the entry's own fields and the text around them: times in every
        /// form chrono reads or refuses, sources, digests, seqs and campaigns at the
        /// edges, whitespace, trailing bytes.
        #[test]
        fn the_entry_around_the_record_is_read_as_the_full_reader_reads_it(
            record in valid(),
            edits in proptest::collection::vec(entry_edit(), 1..4),
        ) {
            let e = entry(record, 7);
            let text = edited(&e, &edits);
            let full = Entry::from_payload_fully(text.as_bytes());
            for fast in [plain_entry(text.as_bytes()), serde_entry(text.as_bytes())]
                .into_iter()
                .flatten()
            {
                prop_assert_eq!(&full, &Ok(fast), "{}", text);
            }
            // An edit that leaves the JSON's meaning alone leaves the plain reader's
            // answer alone too (whitespace where JSON allows it).
            if edits.iter().all(|e| matches!(e, EntryEdit::Space(_))) {
                prop_assert_eq!(plain_entry(text.as_bytes()), Some(e), "{}", text);
            }
        }
    }

    #[test]
    fn near_misses_go_the_full_way() {
        let e = entry(
            SpaceCount {
                region: RegionCode::parse("440106").unwrap(),
                school: None,
                as_of: NaiveDate::from_ymd_opt(2018, 11, 30).unwrap(),
                spaces: SpaceCounts([Some(10), None, None, None, None, None, None, None]),
                real_name: None,
                population: None,
            },
            3,
        );
        let text = String::from_utf8(e.to_payload()).unwrap();
        assert!(space_count_entry(text.as_bytes()).is_some(), "{text}");
        // Each is accepted by the full reader (so the fast path must not differ from it)
        // or refused; either way the direct reader leaves it.
        for (from, to) in [
            ("\"teacher\":10", "\"teacher\":10.0"),
            ("\"teacher\":10", "\"teacher\":10,\"student\":null"),
            ("\"teacher\":10", "\"teacher\":1e1"),
            ("\"teacher\":10", "\"teacher\":10,\"teacher\":10"),
            (
                "\"as_of\":\"2018-11-30\"",
                "\"as_of\":\"2018-11-30\",\"school\":null",
            ),
            ("\"region\":\"440106\"", "\"region\":\"\\u003440106\""),
            ("\"teacher\":10", "\"teacher\":1000000001"),
            ("\"spaces\":{\"teacher\":10}", "\"spaces\":{}"),
            ("\"as_of\":\"2018-11-30\"", "\"as_of\":\"2018/11-30\""),
            ("\"as_of\":\"2018-11-30\"", "\"as_of\":\"2018-11/30\""),
            (
                "\"spaces\":{\"teacher\":10}",
                "\"spaces\":{\"teacher\":10},\"spaces\":{\"teacher\":10}",
            ),
            (
                "\"spaces\":{\"teacher\":10}",
                "\"spaces\":{\"teacher\":10},\"real_name\":{\"teacher\":5},\"real_name\":{\"teacher\":5}",
            ),
            (
                "\"spaces\":{\"teacher\":10}",
                "\"spaces\":{\"teacher\":10},\"population\":{\"teachers\":5},\"population\":{\"teachers\":5}",
            ),
            (
                "\"kind\":\"space_count\"",
                "\"kind\":\"space_count\",\"kind\":\"space_count\"",
            ),
            ("\"kind\":\"space_count\"", "\"kind\":\"milestone\""),
            ("\"seq\":3", "\"seq\":0"),
        ] {
            let changed = text.replacen(from, to, 1);
            assert_ne!(changed, text, "{from} not in {text}");
            assert_eq!(space_count_entry(changed.as_bytes()), None, "{changed}");
        }
        // And through the public door the full reader's verdict stands.
        let whole = text.replacen("\"teacher\":10", "\"teacher\":10.0", 1);
        assert_eq!(Entry::from_payload(whole.as_bytes()), Ok(e));
        let dup = text.replacen("\"teacher\":10", "\"teacher\":10,\"teacher\":10", 1);
        assert!(Entry::from_payload(dup.as_bytes()).is_err());
    }
}
