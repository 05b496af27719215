//! The registry of sources: who may send, with which key from which seq, about which scope.

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use spacesync_shared::keys::{parse_public_key, public_key_line};
use spacesync_shared::{RegionCode, SourceId};

use crate::store::{Store, StoreError, WriteBatch, keys};

/// Whether a source may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceStatus {
    /// Entries are accepted.
    Active,
    /// Everything from it is refused.
    Revoked,
}

/// One key of a source and the seqs it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceKey {
    /// `ed25519:<base64>`.
    pub key: String,
    /// First seq this key signs.
    pub from_seq: u64,
    /// When it was registered.
    pub added_at: DateTime<Utc>,
}

/// A registered source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Its id.
    pub id: SourceId,
    /// The region it may report on.
    pub scope: RegionCode,
    /// Active or revoked.
    pub status: SourceStatus,
    /// Keys in rotation order; the last applies from its `from_seq` on.
    pub keys: Vec<SourceKey>,
    /// When it was added.
    pub added_at: DateTime<Utc>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Why a registry change is refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source exists already.
    #[error("source {0} is already registered; use `agents rotate` to change its key")]
    Exists(SourceId),
    /// The source does not exist.
    #[error("source {0} is not registered; see `spacesync-hub agents list`")]
    Unknown(String),
    /// The key line is not acceptable.
    #[error("--key: {0}")]
    Key(#[from] spacesync_shared::keys::PublicKeyError),
    /// The key is used by another source.
    #[error("this key is already registered for source {0}; every source needs its own key")]
    KeyInUse(SourceId),
    /// Rotation seq not after what is held.
    #[error(
        "--from-seq {from_seq} must be greater than {held}, the highest seq already held for {id}"
    )]
    RotationSeq {
        /// The source.
        id: SourceId,
        /// Seq asked for.
        from_seq: u64,
        /// Seq held.
        held: u64,
    },
    /// The source was revoked.
    #[error("source {0} is revoked; add it under a new id")]
    Revoked(SourceId),
}

impl SourceRecord {
    /// The key line that signs `seq`.
    pub fn key_line_for(&self, seq: u64) -> Option<&str> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.from_seq <= seq)
            .map(|k| k.key.as_str())
    }

    /// The key that signs `seq`, parsed.
    pub fn key_for(&self, seq: u64) -> Option<VerifyingKey> {
        self.key_line_for(seq)
            .and_then(|k| parse_public_key(k).ok())
    }

    /// The current key line.
    pub fn current_key(&self) -> Option<&str> {
        self.keys.last().map(|k| k.key.as_str())
    }
}

/// Loads every source record.
pub fn load_all(store: &dyn Store) -> Result<Vec<SourceRecord>, StoreError> {
    store
        .scan(keys::REG)
        .map(|r| {
            let (k, v) = r?;
            serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                message: e.to_string(),
            })
        })
        .collect()
}

fn put(batch: &mut WriteBatch, rec: &SourceRecord) {
    batch.put(
        keys::reg(&rec.id),
        serde_json::to_vec(rec).unwrap_or_default(),
    );
}

/// Registers a new source.
pub fn add(
    store: &dyn Store,
    id: SourceId,
    scope: RegionCode,
    key_line: &str,
    now: DateTime<Utc>,
) -> Result<SourceRecord, RegistryError> {
    let key = parse_public_key(key_line)?;
    let all = load_all(store)?;
    if all.iter().any(|r| r.id == id) {
        return Err(RegistryError::Exists(id));
    }
    let line = public_key_line(&key);
    if let Some(other) = all.iter().find(|r| r.keys.iter().any(|k| k.key == line)) {
        return Err(RegistryError::KeyInUse(other.id.clone()));
    }
    let rec = SourceRecord {
        id,
        scope,
        status: SourceStatus::Active,
        keys: vec![SourceKey {
            key: line,
            from_seq: 1,
            added_at: now,
        }],
        added_at: now,
        revoked_at: None,
    };
    let mut b = WriteBatch::new();
    put(&mut b, &rec);
    store.apply(b)?;
    store.flush()?;
    Ok(rec)
}

fn get(store: &dyn Store, id: &str) -> Result<SourceRecord, RegistryError> {
    let sid = SourceId::parse(id).map_err(|_| RegistryError::Unknown(id.to_string()))?;
    let v = store
        .get(&keys::reg(&sid))?
        .ok_or_else(|| RegistryError::Unknown(id.to_string()))?;
    serde_json::from_slice(&v).map_err(|e| {
        RegistryError::Store(StoreError::Corrupt {
            key: format!("reg/{id}"),
            message: e.to_string(),
        })
    })
}

/// Revokes a source: nothing more is accepted from it.
pub fn revoke(
    store: &dyn Store,
    id: &str,
    now: DateTime<Utc>,
) -> Result<SourceRecord, RegistryError> {
    let mut rec = get(store, id)?;
    if rec.status != SourceStatus::Revoked {
        rec.status = SourceStatus::Revoked;
        rec.revoked_at = Some(now);
        let mut b = WriteBatch::new();
        put(&mut b, &rec);
        store.apply(b)?;
        store.flush()?;
    }
    Ok(rec)
}

/// Rotates a source's key: the new key signs seqs from `from_seq` (default: the seq after
/// the highest held) on; earlier seqs stay with the old key.
pub fn rotate(
    store: &dyn Store,
    id: &str,
    key_line: &str,
    from_seq: Option<u64>,
    held: u64,
    now: DateTime<Utc>,
) -> Result<SourceRecord, RegistryError> {
    let key = parse_public_key(key_line)?;
    let mut rec = get(store, id)?;
    if rec.status == SourceStatus::Revoked {
        return Err(RegistryError::Revoked(rec.id));
    }
    let from_seq = from_seq.unwrap_or(held + 1);
    if from_seq <= held {
        return Err(RegistryError::RotationSeq {
            id: rec.id,
            from_seq,
            held,
        });
    }
    let line = public_key_line(&key);
    if let Some(other) = load_all(store)?
        .iter()
        .find(|r| r.keys.iter().any(|k| k.key == line))
    {
        return Err(RegistryError::KeyInUse(other.id.clone()));
    }
    // A key not yet in effect is replaced rather than stacked.
    rec.keys.retain(|k| k.from_seq < from_seq);
    rec.keys.push(SourceKey {
        key: line,
        from_seq,
        added_at: now,
    });
    let mut b = WriteBatch::new();
    put(&mut b, &rec);
    store.apply(b)?;
    store.flush()?;
    Ok(rec)
}
