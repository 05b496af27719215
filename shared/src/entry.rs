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
    /// Agent clock when the record was accepted (UTC, millisecond precision).
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
        if let Some(entry) = fast::space_count_entry(payload) {
            return Ok(entry);
        }
        Entry::from_payload_fully(payload)
    }

    /// [`Entry::from_payload`] without the direct reader: the record read as a JSON tree
    /// (duplicate keys refused) and checked field by field. The reference the direct
    /// reader is held to (its tests, the `envelope` fuzz target); use `from_payload`.
    pub fn from_payload_fully(payload: &[u8]) -> Result<Entry, EntryError> {
        // The record read with duplicate keys refused, like every record.
        let raw: fast::RawEntry<crate::json::StrictJson> =
            serde_json::from_slice(payload).map_err(|e| EntryError::Malformed(e.to_string()))?;
        if raw.seq == 0 {
            return Err(EntryError::Malformed("seq must be ≥ 1".into()));
        }
        let record = Record::from_value(&raw.record.0).map_err(EntryError::Record)?;
        Ok(Entry {
            source: raw.source,
            seq: raw.seq,
            prev: raw.prev,
            recorded_at: raw.recorded_at,
            campaign: raw.campaign,
            record,
        })
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
    let mut sigs: Vec<Signature> = Vec::with_capacity(envs.len());
    let mut paes: Vec<Vec<u8>> = Vec::with_capacity(envs.len());
    for (i, env) in envs.iter().enumerate() {
        sigs.push(
            env.signature_by(ENTRY_PAYLOAD_TYPE, key)
                .map_err(|e| (i, e))?,
        );
        paes.push(crate::dsse::pae(&env.payload_type, &env.payload));
    }
    let msgs: Vec<&[u8]> = paes.iter().map(Vec::as_slice).collect();
    let keys = vec![*key; envs.len()];
    crate::sig::verify_batch(&msgs, &sigs, &keys).map_err(|(i, _)| {
        (
            i,
            DsseError::BadSignature {
                keyid: crate::dsse::key_id(key),
            },
        )
    })
}
