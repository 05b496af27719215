//! The hub's state and how readers and the one writer share it: the log's tree, heads
//! per source, the registry, the merged views, the latest checkpoint and the alarms.
//!
//! The algorithm that changes it (verified ingest, hub-signed entries, registry changes)
//! lives in [`crate::ingest`]; this module only holds the state, loads it from the store,
//! and hands it out.
//!
//! One writer at a time holds the state lock ([`Hub::state`]). Readers never take it:
//! after every durable change the writer publishes a [`Snapshot`] (views, registry, heads,
//! alarms, log size and checkpoint), and [`Hub::snapshot`] hands out the latest one. Views
//! and heads are persistent maps (`imbl`), so publishing shares structure with the
//! previous snapshot: its cost does not grow with the log.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use spacesync_shared::clock::Clock;
use spacesync_shared::dsse::Digest;
use spacesync_shared::wire::{RefusalCode, SourceHead};
use spacesync_shared::{Campaign, SourceId};
use tracing::error;

use crate::log::{Log, LogError};
use crate::registry::{self, SourceRecord};
use crate::store::{Store, StoreError, keys};
use crate::views::Views;

/// How far ahead of the hub's clock an entry's `recorded_at` may be.
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(10);

/// What the hub holds of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    /// Highest seq held (0 = none).
    pub seq: u64,
    /// Hash of that entry.
    pub hash: Digest,
}

/// A stored index entry for (source, seq).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    pub(crate) log_index: u64,
    pub(crate) hash: Digest,
    pub(crate) received_at: DateTime<Utc>,
}

impl Held {
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&self.log_index.to_be_bytes());
        v.extend_from_slice(&self.hash.0);
        v.extend_from_slice(&self.received_at.timestamp_millis().to_be_bytes());
        v
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Option<Held> {
        if b.len() != 48 {
            return None;
        }
        let log_index = u64::from_be_bytes(b[0..8].try_into().ok()?);
        let hash = Digest(b[8..40].try_into().ok()?);
        let ms = i64::from_be_bytes(b[40..48].try_into().ok()?);
        Some(Held {
            log_index,
            hash,
            received_at: DateTime::from_timestamp_millis(ms)?,
        })
    }
}

/// An equivocation or other fault admins must see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// When it was raised.
    pub at: DateTime<Utc>,
    /// The source.
    pub source: SourceId,
    /// The seq concerned.
    pub seq: u64,
    /// Refusal code.
    pub code: RefusalCode,
    /// What happened.
    pub detail: String,
}

/// Hub configuration that ingest needs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most entries per ingest request.
    pub max_batch_entries: usize,
    /// How far ahead of the hub clock an entry's `recorded_at` may be.
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_batch_entries: 1000,
            max_clock_skew: MAX_CLOCK_SKEW,
        }
    }
}

/// Why the hub's state could not be loaded from its store.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Storage failed.
    #[error("the hub could not read its store ({0})")]
    Store(#[from] StoreError),
    /// The tree state failed.
    #[error("the hub's log is damaged; an operator must run `spacesync-hub verify` ({0})")]
    Log(#[from] LogError),
}

/// Everything guarded by the writer lock.
pub struct State {
    /// The tree.
    pub log: Log,
    /// Heads per source (a persistent map: a snapshot shares it).
    pub heads: imbl::HashMap<SourceId, Head>,
    /// Registered sources (replaced whole on a registry change, which is rare, so a
    /// snapshot shares it).
    pub registry: Arc<HashMap<SourceId, SourceRecord>>,
    /// Merged views (persistent maps inside: a snapshot shares them).
    pub views: Views,
    /// Latest signed checkpoint note.
    pub checkpoint: String,
    /// Alarms raised.
    pub alarms: imbl::Vector<Alarm>,
    /// Bumped on every change; readers cache derived figures by it.
    pub version: u64,
    /// A write failed and reading the store back failed too: this state may hold what the
    /// write left in memory (a tree that counts leaves never written). It is not published,
    /// and writers read the store again before they go on ([`Hub::writer`]).
    pub(crate) stale: bool,
}

/// What readers see: an owned, immutable view of the hub's state as of its last durable
/// change. Taking one ([`Hub::snapshot`]) never waits for an append in progress, and
/// holding one never delays a writer; it does not change when the hub moves on.
#[derive(Clone)]
pub struct Snapshot {
    /// Leaves in the log.
    pub log_size: u64,
    /// The tree's root at `log_size` leaves.
    pub log_root: spacesync_shared::merkle::Hash,
    /// The latest signed checkpoint note (it covers `log_size` leaves).
    pub checkpoint: String,
    /// Heads per source.
    pub heads: imbl::HashMap<SourceId, Head>,
    /// Registered sources.
    pub registry: Arc<HashMap<SourceId, SourceRecord>>,
    /// Merged views.
    pub views: Views,
    /// Alarms raised.
    pub alarms: imbl::Vector<Alarm>,
    /// The state's [`State::version`] when this was taken: equal versions, equal snapshots.
    pub version: u64,
}

impl Snapshot {
    /// A snapshot of `st`: clones of persistent maps and `Arc`s, and the root from the
    /// frontier (at most 63 node hashes), so its cost does not grow with the log.
    pub(crate) fn of(st: &State) -> Snapshot {
        Snapshot {
            log_size: st.log.size(),
            log_root: st.log.root(),
            checkpoint: st.checkpoint.clone(),
            heads: st.heads.clone(),
            registry: st.registry.clone(),
            views: st.views.clone(),
            alarms: st.alarms.clone(),
            version: st.version,
        }
    }
}

/// The writer lock on the hub's [`State`], from [`Hub::state`]. A writer that changed the
/// state through it publishes a new [`Snapshot`] when it lets go (on success after its
/// flush, on failure after reloading from the store), so readers only ever see durable
/// state.
pub struct StateGuard<'a> {
    hub: &'a Hub,
    state: MutexGuard<'a, State>,
    /// Set by any mutable access.
    changed: bool,
}

impl Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.changed = true;
        &mut self.state
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        // Still under the writer lock, so snapshots are published in the order of changes.
        if self.changed && !self.state.stale {
            self.hub.publish(&self.state);
        }
    }
}

/// The hub.
pub struct Hub {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The hub's signing key (receipts, checkpoints, bulletins).
    pub key: SigningKey,
    /// Checkpoint origin line.
    pub origin: String,
    /// The campaign.
    pub campaign: Campaign,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Limits.
    pub limits: Limits,
    /// Paces the log lines about refused entries.
    pub(crate) refusal_log: LogThrottle,
    pub(crate) state: Mutex<State>,
    /// The latest snapshot; swapped (never held) by the writer after each change.
    pub(crate) published: RwLock<Arc<Snapshot>>,
}

/// Least time between two warnings about refused entries.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Counts events and lets one log line through per [`REFUSAL_LOG_EVERY`]. Monotonic real
/// time: it protects the log, not the campaign calendar.
#[derive(Default)]
pub(crate) struct LogThrottle(Mutex<(u64, Option<std::time::Instant>)>);

impl LogThrottle {
    /// Counts one event; the count to report now, or `None` within the quiet period.
    pub(crate) fn admit(&self) -> Option<u64> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let now = std::time::Instant::now();
        if g.1
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            return None;
        }
        let n = g.0;
        *g = (0, Some(now));
        Some(n)
    }
}

fn load_state(
    store: &dyn Store,
    origin: &str,
    key: &SigningKey,
    campaign: &Campaign,
) -> Result<State, LoadError> {
    let log = Log::load(store)?;
    let mut registry = HashMap::new();
    let mut heads = imbl::HashMap::new();
    for rec in registry::load_all(store)? {
        if let Some((k, v)) = store.last(&keys::src_prefix(&rec.id))? {
            let seq = keys::tail_u64(&k).unwrap_or(0);
            let held = Held::from_bytes(&v).ok_or_else(|| StoreError::Corrupt {
                key: format!("src/{}/{seq}", rec.id),
                message: "index entry is not 48 bytes".into(),
            })?;
            heads.insert(
                rec.id.clone(),
                Head {
                    seq,
                    hash: held.hash,
                },
            );
        }
        registry.insert(rec.id.clone(), rec);
    }
    // Once per store: the views in this version's layout, merged for the campaign's baseline.
    crate::views::prepare(store, campaign.baseline)?;
    let views = Views::load(store, campaign.baseline)?;
    let checkpoint = match store.get(keys::CHECKPOINT)? {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => log.checkpoint(origin, key)?,
    };
    let mut alarms = imbl::Vector::new();
    for r in store.scan(keys::ALARM) {
        let (_, v) = r?;
        if let Ok(a) = serde_json::from_slice(&v) {
            alarms.push_back(a);
        }
    }
    Ok(State {
        log,
        heads,
        registry: Arc::new(registry),
        views,
        checkpoint,
        alarms,
        version: 0,
        stale: false,
    })
}

impl Hub {
    /// Opens the hub over a store.
    pub fn open(
        store: Arc<dyn Store>,
        key: SigningKey,
        origin: String,
        campaign: Campaign,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Result<Hub, LoadError> {
        let state = load_state(store.as_ref(), &origin, &key, &campaign)?;
        let published = RwLock::new(Arc::new(Snapshot::of(&state)));
        Ok(Hub {
            published,
            refusal_log: LogThrottle::default(),
            store,
            key,
            origin,
            campaign,
            clock,
            limits,
            state: Mutex::new(state),
        })
    }

    /// The writer lock on the state. Writers only: it waits for an append in progress, and
    /// every other writer waits while it is held. Readers take a [`Hub::snapshot`].
    pub fn state(&self) -> StateGuard<'_> {
        StateGuard {
            hub: self,
            state: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            changed: false,
        }
    }

    /// The state as of the last durable change, for readers: cheap (an `Arc`), never waits
    /// for an append in progress, and unchanged by later ones.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes `st` what [`Hub::snapshot`] returns. Called under the writer lock.
    pub(crate) fn publish(&self, st: &State) {
        let snap = Arc::new(Snapshot::of(st));
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = snap;
    }

    /// Reloads the state from the store (after a failed write left memory ahead of disk).
    pub(crate) fn reload(&self, st: &mut State) {
        match load_state(self.store.as_ref(), &self.origin, &self.key, &self.campaign) {
            Ok(fresh) => *st = fresh,
            Err(e) => {
                error!(error = %e, "Reloading hub state after a storage failure failed; nothing more is written until it reads.");
                st.stale = true;
            }
        }
    }

    /// The writer lock, for a change: a state left stale by a failed reload is read from
    /// the store again first, and while that fails nothing is written (the error says so).
    pub(crate) fn writer(&self) -> Result<StateGuard<'_>, StoreError> {
        let mut st = self.state();
        if st.stale {
            match load_state(self.store.as_ref(), &self.origin, &self.key, &self.campaign) {
                Ok(fresh) => *st = fresh,
                Err(LoadError::Store(e)) => return Err(e),
                Err(LoadError::Log(e)) => {
                    return Err(StoreError::Backend {
                        op: "reload",
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(st)
    }

    /// What the hub holds of `source`.
    pub fn head(&self, source: &SourceId) -> SourceHead {
        let h = self
            .snapshot()
            .heads
            .get(source)
            .copied()
            .unwrap_or_default();
        SourceHead {
            source: source.clone(),
            held_through: h.seq,
            head: h.hash,
        }
    }

    /// Re-reads the registry after a change made through the store.
    pub fn refresh_registry(&self) -> Result<(), StoreError> {
        let all = registry::load_all(self.store.as_ref())?;
        let mut st = self.state();
        st.registry = Arc::new(all.into_iter().map(|r| (r.id.clone(), r)).collect());
        st.version += 1;
        Ok(())
    }

    pub(crate) fn held(&self, source: &SourceId, seq: u64) -> Result<Option<Held>, StoreError> {
        Ok(self
            .store
            .get(&keys::src(source, seq))?
            .and_then(|b| Held::from_bytes(&b)))
    }
}
