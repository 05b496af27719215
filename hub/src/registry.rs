//! The registry of sources: who may send, with which key from which seq, about which scope.
//!
//! # Registry changes are log entries
//! `agents add`, `agents rotate` and `agents revoke` each append a hub-signed entry to the
//! log ([`SourceAdded`], [`KeyRotated`], [`SourceRevoked`]) in the same atomic write as the
//! `reg/` record they change (see [`crate::hub::Hub::add_source`]). The `reg/` records
//! are derived state, like the views: [`replay`] recomputes them from the log, and
//! [`as_of`] gives the registry as it stood when the log had a given size, which is what
//! a bulletin is recomputed with.
//!
//! **Stores from before registry changes were logged.** When the log holds no registry
//! entry at all, the registry as it stands (`reg/`) is the starting point, for every log
//! size. The first registry change on such a store is preceded, in the same write, by a
//! [`RegistryBaseline`] entry holding that registry; every prefix of the log, also one
//! from before the baseline, starts from it. Sources registered before the change are
//! thus taken as registered from their `added_at`, as they always were.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use spacesync_shared::keys::{parse_public_key, public_key_line};
use spacesync_shared::{RegionCode, SourceId};

pub use crate::entries::{
    HubEntry, KeyRotated, RegistryBaseline, SourceAdded, SourceKey, SourceRecord, SourceRevoked,
    SourceStatus,
};
use crate::log::{self, LogError};
use crate::store::{Store, StoreError, WriteBatch, keys};

/// Set (in the same write) by the first registry entry appended to the log, so later
/// changes need not scan the log to know a baseline is not needed.
pub const LOGGED_KEY: &[u8] = b"meta/registry-logged";

/// Why a registry change is refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log could not take the change's entry; nothing was changed.
    #[error("the registry change could not be appended to the log; nothing was changed ({0})")]
    Log(#[from] LogError),
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

/// Adds `rec` as the `reg/` record to `batch`.
pub fn put(batch: &mut WriteBatch, rec: &SourceRecord) {
    batch.put(
        keys::reg(&rec.id),
        serde_json::to_vec(rec).unwrap_or_default(),
    );
}

/// The registry change an `agents add` makes, checked against `registry`: the entry to
/// log (its `seq` and `at` are filled in by the caller).
pub fn plan_add(
    registry: &HashMap<SourceId, SourceRecord>,
    id: SourceId,
    scope: RegionCode,
    key_line: &str,
    seq: u64,
    at: DateTime<Utc>,
) -> Result<HubEntry, RegistryError> {
    let key = parse_public_key(key_line)?;
    if registry.contains_key(&id) {
        return Err(RegistryError::Exists(id));
    }
    let line = public_key_line(&key);
    key_unused(registry, &line)?;
    Ok(HubEntry::SourceAdded(SourceAdded {
        seq,
        source: id,
        scope,
        key: line,
        at,
    }))
}

fn key_unused(registry: &HashMap<SourceId, SourceRecord>, line: &str) -> Result<(), RegistryError> {
    match key_known(registry, line) {
        Some(other) => Err(RegistryError::KeyInUse(other)),
        None => Ok(()),
    }
}

fn known<'a>(
    registry: &'a HashMap<SourceId, SourceRecord>,
    id: &str,
) -> Result<&'a SourceRecord, RegistryError> {
    SourceId::parse(id)
        .ok()
        .and_then(|sid| registry.get(&sid))
        .ok_or_else(|| RegistryError::Unknown(id.to_string()))
}

/// The registry change an `agents rotate` makes: the new key signs seqs from `from_seq`
/// (default: the seq after `held`, the highest held) on; earlier seqs stay with the old key.
pub fn plan_rotate(
    registry: &HashMap<SourceId, SourceRecord>,
    id: &str,
    key_line: &str,
    from_seq: Option<u64>,
    held: u64,
    seq: u64,
    at: DateTime<Utc>,
) -> Result<HubEntry, RegistryError> {
    let key = parse_public_key(key_line)?;
    let rec = known(registry, id)?;
    if rec.status == SourceStatus::Revoked {
        return Err(RegistryError::Revoked(rec.id.clone()));
    }
    let from_seq = from_seq.unwrap_or(held + 1);
    if from_seq <= held {
        return Err(RegistryError::RotationSeq {
            id: rec.id.clone(),
            from_seq,
            held,
        });
    }
    let line = public_key_line(&key);
    // The source's own earlier key may be scheduled again: that is how an admin undoes a
    // rotation not in effect yet (one that named the key an agent's undelivered
    // transition names, which would otherwise refuse that transition for good). Another
    // source's key never.
    match key_known(registry, &line) {
        Some(owner) if owner != rec.id => return Err(RegistryError::KeyInUse(owner)),
        Some(_) if rec.keys.last().is_some_and(|k| k.key == line) => {
            return Err(RegistryError::KeyInUse(rec.id.clone()));
        }
        _ => {}
    }
    Ok(HubEntry::KeyRotated(KeyRotated {
        seq,
        source: rec.id.clone(),
        key: line,
        from_seq,
        at,
    }))
}

/// The registry change an `agents revoke` makes, or `None` when the source is revoked
/// already (revoking twice changes nothing and logs nothing).
pub fn plan_revoke(
    registry: &HashMap<SourceId, SourceRecord>,
    id: &str,
    seq: u64,
    at: DateTime<Utc>,
) -> Result<Option<HubEntry>, RegistryError> {
    let rec = known(registry, id)?;
    if rec.status == SourceStatus::Revoked {
        return Ok(None);
    }
    Ok(Some(HubEntry::SourceRevoked(SourceRevoked {
        seq,
        source: rec.id.clone(),
        revoked: true,
        at,
    })))
}

/// Applies one log entry to `registry`; returns the source it changed (`None` for entries
/// that are not registry changes, and for a baseline, which replaces the whole registry).
pub fn apply(registry: &mut HashMap<SourceId, SourceRecord>, entry: &HubEntry) -> Option<SourceId> {
    match entry {
        HubEntry::Extension(_) | HubEntry::NoticeRuleChanged(_) => None,
        HubEntry::RegistryBaseline(b) => {
            *registry = b
                .sources
                .iter()
                .map(|r| (r.id.clone(), r.clone()))
                .collect();
            None
        }
        HubEntry::SourceAdded(a) => {
            registry.insert(
                a.source.clone(),
                SourceRecord {
                    id: a.source.clone(),
                    scope: a.scope,
                    status: SourceStatus::Active,
                    keys: vec![SourceKey {
                        key: a.key.clone(),
                        from_seq: 1,
                        added_at: a.at,
                    }],
                    added_at: a.at,
                    revoked_at: None,
                },
            );
            Some(a.source.clone())
        }
        HubEntry::KeyRotated(r) => {
            let rec = registry.get_mut(&r.source)?;
            // A key not yet in effect is replaced rather than stacked.
            rec.keys.retain(|k| k.from_seq < r.from_seq);
            rec.keys.push(SourceKey {
                key: r.key.clone(),
                from_seq: r.from_seq,
                added_at: r.at,
            });
            Some(r.source.clone())
        }
        HubEntry::SourceRevoked(r) => {
            let rec = registry.get_mut(&r.source)?;
            if rec.status != SourceStatus::Revoked {
                rec.status = SourceStatus::Revoked;
                rec.revoked_at = Some(r.at);
            }
            Some(r.source.clone())
        }
    }
}

/// Applies a source's key-transition entry at `seq` (the agent's `rotate-key`, in the
/// source's own chain): `key_line` signs from `seq + 1`. A key registered for a later seq
/// would have refused the transition at ingest ([`spacesync_shared::chain::ChainError::TransitionConflict`]);
/// like a rotation, one not yet in effect is replaced rather than stacked.
pub fn apply_transition(rec: &mut SourceRecord, seq: u64, key_line: &str, at: DateTime<Utc>) {
    let from_seq = seq.saturating_add(1);
    rec.keys.retain(|k| k.from_seq < from_seq);
    rec.keys.push(SourceKey {
        key: key_line.to_string(),
        from_seq,
        added_at: at,
    });
}

/// The key transition a source's log record carries, if any: (seq, new key line). Only
/// payloads that spell the kind out, or hold any `\u` escape (which could spell it,
/// `"key\u005ftransition"`: the entry parser decodes escapes, so ingest reads that as a
/// transition too), are parsed, so replaying a log reads few entries whole.
pub fn transition_in(payload: &[u8]) -> Option<(u64, String)> {
    const KIND: &[u8] = b"\"key_transition\"";
    const ESCAPE: &[u8] = b"\\u";
    let has = |needle: &[u8]| memchr::memmem::find(payload, needle).is_some();
    if !has(KIND) && !has(ESCAPE) {
        return None;
    }
    let entry = spacesync_shared::entry::Entry::from_payload(payload).ok()?;
    match entry.record {
        spacesync_shared::Record::KeyTransition(t) => Some((entry.seq, t.new_key)),
        _ => None,
    }
}

/// True when `line` is or was a key of any source: a transition to it is refused (every
/// source needs its own key, and a retired key is not taken back).
pub fn key_known(registry: &HashMap<SourceId, SourceRecord>, line: &str) -> Option<SourceId> {
    let mut owners: Vec<&SourceId> = registry
        .values()
        .filter(|r| r.keys.iter().any(|k| k.key == line))
        .map(|r| &r.id)
        .collect();
    owners.sort();
    owners.first().map(|id| (*id).clone())
}

/// True for the entries that change the registry.
pub fn is_registry_entry(entry: &HubEntry) -> bool {
    !matches!(
        entry,
        HubEntry::Extension(_) | HubEntry::NoticeRuleChanged(_)
    )
}

/// The registry replayed from the registry entries of the first `size` log leaves (see
/// [`as_of`]); `None` when the log holds no registry entry (the store predates logged
/// registry changes, and `reg/` is the registry).
fn replay_upto(
    store: &dyn Store,
    size: u64,
) -> Result<Option<HashMap<SourceId, SourceRecord>>, StoreError> {
    let mut replay = Replay::upto(size);
    let mut leaves = log::iter(store);
    // Every leaf decoded into this one record (see `log::Leaves::next_into`).
    let mut rec = log::LogRecord::empty();
    while let Some(r) = leaves.next_into(&mut rec) {
        replay.leaf(r?, &rec)?;
    }
    Ok(replay.registry)
}

/// A registry replay fed the log's leaves one by one, in order: what [`replay`] reads
/// the log for, for a caller that walks it anyway (`verify`).
#[derive(Debug, Default)]
pub struct Replay {
    registry: Option<HashMap<SourceId, SourceRecord>>,
    size: u64,
}

impl Replay {
    /// A replay of the whole log.
    pub fn new() -> Replay {
        Replay::upto(u64::MAX)
    }

    /// A replay of the first `size` leaves (a baseline counts wherever it stands).
    fn upto(size: u64) -> Replay {
        Replay {
            registry: None,
            size,
        }
    }

    /// The next leaf, at `index`. An error (a hub entry that does not read) ends the
    /// replay: [`replay`] gives that error.
    pub fn leaf(&mut self, index: u64, rec: &log::LogRecord) -> Result<(), StoreError> {
        if let Some(source) = &rec.source {
            // A key transition in a source's chain changes its keys. Before the first
            // registry entry there is nothing to apply it to: the baseline holds it.
            if index < self.size
                && let Some(reg) = self.registry.as_mut()
                && let Some(rec_) = reg.get_mut(source)
                && let Some((seq, line)) = transition_in(&rec.envelope.payload)
            {
                apply_transition(rec_, seq, &line, rec.received_at);
            }
            return Ok(());
        }
        let entry: HubEntry =
            serde_json::from_slice(&rec.envelope.payload).map_err(|e| StoreError::Corrupt {
                key: format!("log/{index}"),
                message: format!("hub entry {}: {e}", rec.seq),
            })?;
        if !is_registry_entry(&entry) {
            return Ok(());
        }
        let reg = self.registry.get_or_insert_with(HashMap::new);
        // A baseline is the starting point of every prefix, also of one that ends before it.
        if index < self.size || matches!(entry, HubEntry::RegistryBaseline(_)) {
            apply(reg, &entry);
        }
        Ok(())
    }

    /// The registry replayed, in id order; `None` when no leaf was a registry entry (as
    /// [`replay`]).
    pub fn finish(self) -> Option<Vec<SourceRecord>> {
        self.registry.map(sorted)
    }
}

fn sorted(registry: HashMap<SourceId, SourceRecord>) -> Vec<SourceRecord> {
    let sorted: BTreeMap<SourceId, SourceRecord> = registry.into_iter().collect();
    sorted.into_values().collect()
}

/// The registry as it stood when the log had `size` leaves, in id order: replayed from
/// the registry entries of the log (a [`RegistryBaseline`] being the starting point), or,
/// on a store whose log holds no registry entry, the registry as it stands.
pub fn as_of(store: &dyn Store, size: u64) -> Result<Vec<SourceRecord>, StoreError> {
    match replay_upto(store, size)? {
        Some(reg) => Ok(sorted(reg)),
        None => load_all(store),
    }
}

/// The registry recomputed from the whole log, in id order; `None` when the log holds no
/// registry entry (then `reg/` is the registry and there is nothing to recompute).
pub fn replay(store: &dyn Store) -> Result<Option<Vec<SourceRecord>>, StoreError> {
    Ok(replay_upto(store, u64::MAX)?.map(sorted))
}

/// True when the log holds a registry entry (so a change needs no baseline).
pub fn logged(store: &dyn Store) -> Result<bool, StoreError> {
    if store.get(LOGGED_KEY)?.is_some() {
        return Ok(true);
    }
    for r in log::iter(store) {
        let (_, rec) = r?;
        if rec.source.is_none()
            && serde_json::from_slice::<HubEntry>(&rec.envelope.payload)
                .is_ok_and(|e| is_registry_entry(&e))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The batch that makes `reg/` exactly `registry` (deleting records the log does not hold).
pub fn replace_batch(
    store: &dyn Store,
    registry: &[SourceRecord],
) -> Result<WriteBatch, StoreError> {
    let mut batch = WriteBatch::new();
    for r in store.scan(keys::REG) {
        batch.delete(r?.0);
    }
    for rec in registry {
        put(&mut batch, rec);
    }
    batch.put(LOGGED_KEY.to_vec(), b"1".to_vec());
    Ok(batch)
}

#[cfg(test)]
mod transition_tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use spacesync_shared::entry::Entry;

    /// A transition whose kind is spelled with a JSON escape is still one on replay, as it
    /// is at ingest (which decodes escapes): otherwise the hub and `verify`, `rebuild` and
    /// `bulletin verify` would disagree about the source's keys from then on.
    #[test]
    fn a_transition_is_found_however_its_kind_is_spelled() {
        let new = SigningKey::from_bytes(&[9; 32]);
        let e = Entry::key_transition(
            SourceId::parse("gd-rrt").unwrap_or_else(|e| panic!("{e}")),
            7,
            spacesync_shared::Digest::of(b"prev"),
            chrono::DateTime::UNIX_EPOCH,
            "2018".into(),
            &new,
        );
        let plain = e.to_payload();
        let line = spacesync_shared::keys::public_key_line(&new.verifying_key());
        assert_eq!(transition_in(&plain), Some((7, line.clone())));
        let text = String::from_utf8(plain).unwrap_or_default();
        assert!(text.contains("\"key_transition\""), "{text}");
        let escaped = text.replace("\"key_transition\"", "\"key\\u005ftransition\"");
        assert_ne!(escaped, text);
        assert_eq!(
            Entry::from_payload(escaped.as_bytes()).map(|e| e.seq).ok(),
            Some(7),
            "the entry parser reads the escaped kind"
        );
        assert_eq!(transition_in(escaped.as_bytes()), Some((7, line)));
        // Other records are not transitions, escaped or not.
        let other = text.replace("\"key_transition\"", "\"activity\"");
        assert_eq!(transition_in(other.as_bytes()), None);
    }

    /// An admin rotation not in effect yet can be undone by scheduling the source's own
    /// earlier key again from the same seq; another source's key, or the key the source's
    /// schedule ends with, stays refused.
    #[test]
    fn an_admin_rotation_is_undone_with_the_sources_own_earlier_key() {
        let line = |b: u8| {
            spacesync_shared::keys::public_key_line(
                &ed25519_dalek::SigningKey::from_bytes(&[b; 32]).verifying_key(),
            )
        };
        let at = chrono::DateTime::UNIX_EPOCH;
        let rec = |id: &str, keys: Vec<(u64, String)>| SourceRecord {
            id: SourceId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            scope: spacesync_shared::RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}")),
            status: SourceStatus::Active,
            keys: keys
                .into_iter()
                .map(|(from_seq, key)| SourceKey {
                    key,
                    from_seq,
                    added_at: at,
                })
                .collect(),
            added_at: at,
            revoked_at: None,
        };
        let a = rec("gd-a", vec![(1, line(1)), (7, line(2))]);
        let b = rec("gd-b", vec![(1, line(3))]);
        let registry: HashMap<SourceId, SourceRecord> =
            [(a.id.clone(), a), (b.id.clone(), b)].into_iter().collect();
        let planned = plan_rotate(&registry, "gd-a", &line(1), Some(7), 6, 1, at);
        assert!(planned.is_ok(), "{planned:?}");
        assert!(matches!(
            plan_rotate(&registry, "gd-a", &line(3), Some(7), 6, 1, at),
            Err(RegistryError::KeyInUse(_))
        ));
        assert!(matches!(
            plan_rotate(&registry, "gd-a", &line(2), Some(8), 6, 1, at),
            Err(RegistryError::KeyInUse(_))
        ));
    }
}
