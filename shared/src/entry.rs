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
use crate::record::{Problem, Record};
use crate::region::RegionCode;

/// DSSE payload type of a source's entry.
pub const ENTRY_PAYLOAD_TYPE: &str = "application/vnd.spacesync.entry+json";

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    source: SourceId,
    seq: u64,
    prev: Digest,
    recorded_at: DateTime<Utc>,
    campaign: String,
    /// Read with duplicate keys refused, like every record.
    record: crate::json::StrictJson,
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
        let raw: RawEntry =
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

/// A fault in a source's chain, named at the seq where it shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The envelope at this position does not verify.
    #[error("seq {seq}: bad signature: {error}")]
    BadSignature {
        /// Seq claimed by the entry, or the expected seq when the payload is unreadable.
        seq: u64,
        /// Why.
        error: DsseError,
    },
    /// The entry cannot be read.
    #[error("seq {seq}: {error}")]
    Malformed {
        /// The expected seq at this position.
        seq: u64,
        /// Why.
        error: EntryError,
    },
    /// The entry belongs to another source.
    #[error("seq {seq}: entry is from source {got}, expected {expected}")]
    WrongSource {
        /// Seq of the entry.
        seq: u64,
        /// Source expected.
        expected: SourceId,
        /// Source found.
        got: SourceId,
    },
    /// The entry is for another campaign.
    #[error("seq {seq}: entry is for campaign {got:?}, expected {expected:?}")]
    WrongCampaign {
        /// Seq of the entry.
        seq: u64,
        /// Campaign expected.
        expected: String,
        /// Campaign found.
        got: String,
    },
    /// Seqs skip forward: entries are missing (or were reordered).
    #[error("gap at seq {expected}: next entry has seq {got}")]
    Gap {
        /// The seq that should come next.
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// A second, different entry for a seq already seen: equivocation.
    #[error("fork at seq {seq}: a different entry was already seen for this seq")]
    Fork {
        /// The seq.
        seq: u64,
    },
    /// An identical entry for a seq already seen.
    #[error("seq {seq}: duplicate of an entry already seen")]
    Duplicate {
        /// The seq.
        seq: u64,
    },
    /// `prev` does not name the previous entry.
    #[error("seq {seq}: prev {got} does not match the hash of seq {} ({expected})", .seq - 1)]
    BadPrev {
        /// The seq.
        seq: u64,
        /// The previous entry's hash.
        expected: Digest,
        /// The `prev` found.
        got: Digest,
    },
    /// A record about a region outside the source's scope.
    #[error("seq {seq}: {field}: {code} is outside the source's scope {scope}")]
    OutOfScope {
        /// The seq.
        seq: u64,
        /// The field.
        field: String,
        /// The region.
        code: RegionCode,
        /// The scope.
        scope: RegionCode,
    },
    /// A withdrawal that does not point to an earlier entry.
    #[error("seq {seq}: withdrawal target_seq {target} is not an earlier entry")]
    BadWithdrawal {
        /// The seq.
        seq: u64,
        /// Its target.
        target: u64,
    },
}

impl ChainError {
    /// The seq the fault is named at.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::BadSignature { seq, .. }
            | ChainError::Malformed { seq, .. }
            | ChainError::WrongSource { seq, .. }
            | ChainError::WrongCampaign { seq, .. }
            | ChainError::Fork { seq }
            | ChainError::Duplicate { seq }
            | ChainError::BadPrev { seq, .. }
            | ChainError::OutOfScope { seq, .. }
            | ChainError::BadWithdrawal { seq, .. } => *seq,
            ChainError::Gap { expected, .. } => *expected,
        }
    }
}

/// Checks a run of one source's envelopes in order: signature, source, campaign, scope,
/// seq continuity and the `prev` chain.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    source: SourceId,
    key: VerifyingKey,
    scope: RegionCode,
    campaign: String,
    /// Seq expected next.
    next: u64,
    /// Hash of the last accepted entry (zeros before seq 1).
    head: Digest,
    /// Hashes of the entries seen from `known_from` on, to tell a replay from a fork.
    hashes: Vec<Digest>,
    /// Seq of `hashes[0]`.
    known_from: u64,
}

impl ChainVerifier {
    /// A verifier expecting seq 1 next.
    pub fn new(
        source: SourceId,
        key: VerifyingKey,
        scope: RegionCode,
        campaign: impl Into<String>,
    ) -> ChainVerifier {
        ChainVerifier {
            source,
            key,
            scope,
            campaign: campaign.into(),
            next: 1,
            head: Digest::ZERO,
            hashes: Vec::new(),
            known_from: 1,
        }
    }

    /// Resumes after a known head: entries up to `seq` are held, the last with hash `head`.
    pub fn resume(mut self, seq: u64, head: Digest) -> ChainVerifier {
        if seq > 0 {
            self.next = seq + 1;
            self.head = head;
            self.hashes = vec![head];
            self.known_from = seq;
        }
        self
    }

    /// The seq expected next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The hash of the last accepted entry (zeros before seq 1).
    pub fn head(&self) -> Digest {
        self.head
    }

    /// Replaces the signing key (after a rotation).
    pub fn set_key(&mut self, key: VerifyingKey) {
        self.key = key;
    }

    /// The envelope's signature by the source's key; a failure is named at `seq`.
    fn verify(&self, env: &Envelope, seq: u64) -> Result<(), ChainError> {
        env.verify(ENTRY_PAYLOAD_TYPE, &self.key)
            .map_err(|error| ChainError::BadSignature { seq, error })
    }

    /// Checks the next envelope and, when it is good, accepts it.
    pub fn push(&mut self, env: &Envelope) -> Result<Entry, ChainError> {
        let expected = self.next;
        let entry = match Entry::from_payload(&env.payload) {
            Ok(entry) => entry,
            Err(error) => {
                // Unreadable under a bad signature is damage, not a malformed entry.
                self.verify(env, expected)?;
                return Err(ChainError::Malformed {
                    seq: expected,
                    error,
                });
            }
        };
        let hash = env.payload_hash();
        if entry.source != self.source {
            return Err(ChainError::WrongSource {
                seq: entry.seq,
                expected: self.source.clone(),
                got: entry.source,
            });
        }
        // Before any judgement on seqs: an unsigned claim is no evidence of a fork.
        self.verify(env, entry.seq)?;
        if entry.seq < expected {
            let known = entry
                .seq
                .checked_sub(self.known_from)
                .and_then(|i| self.hashes.get(usize::try_from(i).ok()?));
            return Err(match known {
                Some(h) if *h == hash => ChainError::Duplicate { seq: entry.seq },
                _ => ChainError::Fork { seq: entry.seq },
            });
        }
        if entry.seq > expected {
            return Err(ChainError::Gap {
                expected,
                got: entry.seq,
            });
        }
        if entry.campaign != self.campaign {
            return Err(ChainError::WrongCampaign {
                seq: entry.seq,
                expected: self.campaign.clone(),
                got: entry.campaign,
            });
        }
        if entry.prev != self.head {
            return Err(ChainError::BadPrev {
                seq: entry.seq,
                expected: self.head,
                got: entry.prev,
            });
        }
        check_entry_scope(&entry, self.scope)?;
        self.hashes.push(hash);
        self.head = hash;
        self.next += 1;
        Ok(entry)
    }
}

/// Scope and withdrawal checks that need only the entry and the source's scope.
pub fn check_entry_scope(entry: &Entry, scope: RegionCode) -> Result<(), ChainError> {
    for (field, code) in entry.record.regions() {
        if !code.is_within(scope) {
            return Err(ChainError::OutOfScope {
                seq: entry.seq,
                field,
                code,
                scope,
            });
        }
    }
    if let Record::Withdrawal(w) = &entry.record
        && w.target_seq >= entry.seq
    {
        return Err(ChainError::BadWithdrawal {
            seq: entry.seq,
            target: w.target_seq,
        });
    }
    Ok(())
}
