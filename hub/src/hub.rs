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

use crate::log::{Log, LogError};
use crate::registry::{self, SourceRecord};
use crate::store::{Store, StoreError, WriteBatch, keys};
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

pub(crate) use crate::log::index::Held;

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

/// How often a writer whose commit found the head moved catches up and tries again before
/// it answers with the conflict (503: the agent retries). Each retry means another
/// replica's commit landed, so the hub as a whole made progress.
pub const MAX_CONFLICT_RETRIES: u32 = 64;

/// Errors that can say "another writer moved the head first" ([`StoreError::Conflict`]),
/// so [`Hub::serialized`] knows to catch up and try again.
pub trait ConflictError {
    /// True for a commit that found the head moved.
    fn is_conflict(&self) -> bool;
}

impl ConflictError for StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

impl From<LoadError> for StoreError {
    fn from(e: LoadError) -> StoreError {
        load_to_store(e)
    }
}

/// A load error as the store error writers answer with.
pub(crate) fn load_to_store(e: LoadError) -> StoreError {
    match e {
        LoadError::Store(e) => e,
        LoadError::Log(e) => StoreError::Backend {
            op: "reload",
            message: e.to_string(),
        },
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

/// Everything guarded by the writer lock. A clone is cheap (persistent maps, `Arc`s, the
/// frontier): a writer keeps one to go back to when its commit finds the head moved.
#[derive(Clone)]
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
    /// The store's serialization point ([`Store::head`]) this state was read at: a write
    /// commits only if the store's head is still this, and catch-up starts from here.
    pub head: u64,
    /// The number the next stored alarm after the ones in memory has (catch-up reads from
    /// there).
    pub(crate) next_alarm: u64,
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
    /// The store head the state was read at ([`State::head`]).
    pub head: u64,
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
            head: st.head,
        }
    }
}

/// The writer lock on the hub's [`State`], from [`Hub::state`]. A writer that changed the
/// state through it publishes a new [`Snapshot`] when it lets go (on success after its
/// flush, on failure after putting back the state it started from), so readers only ever see durable
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
        if self.changed {
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
    // The head first: everything read after it is at least as new, so a state read ahead
    // of its head is caught up again (harmlessly) and never taken for a newer one.
    let head = store.head()?;
    let log = Log::load(store)?;
    let mut registry = HashMap::new();
    let mut heads = imbl::HashMap::new();
    for rec in registry::load_all(store)? {
        if let Some((seq, held)) = crate::log::index::last(store, &rec.id)? {
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
    // Once per store: the views in this version's layout, merged for the campaign's
    // baseline; by one replica at a time (the others then find nothing to do).
    store.exclusively(&mut || crate::views::prepare(store, campaign.baseline).map(|_| ()))?;
    let views = Views::load_at(store, campaign.baseline, head)?;
    let checkpoint = match store.get(keys::CHECKPOINT)? {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => log.checkpoint(origin, key)?,
    };
    let mut alarms = imbl::Vector::new();
    let next_alarm = read_alarms(store, 0, &mut alarms)?;
    Ok(State {
        log,
        heads,
        registry: Arc::new(registry),
        views,
        checkpoint,
        alarms,
        version: 0,
        head,
        next_alarm,
    })
}

/// Appends the stored alarms numbered `from` on to `alarms`; the number after the last.
fn read_alarms(
    store: &dyn Store,
    from: u64,
    alarms: &mut imbl::Vector<Alarm>,
) -> Result<u64, StoreError> {
    let mut next = from;
    for r in store.scan_from(keys::ALARM, &keys::alarm(from)) {
        let (k, v) = r?;
        next = keys::tail_u64(&k).map_or(next, |n| n.saturating_add(1).max(next));
        if let Ok(a) = serde_json::from_slice::<Alarm>(&v) {
            // One alarm per fault: a replica that raised it too stored its own copy.
            if !alarms
                .iter()
                .any(|b| b.source == a.source && b.seq == a.seq && b.code == a.code)
            {
                alarms.push_back(a);
            }
        }
    }
    Ok(next)
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
        let started = std::time::Instant::now();
        let state = load_state(store.as_ref(), &origin, &key, &campaign)?;
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            log_size = state.log.size(),
            "Loaded the hub's state."
        );
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

    /// The writer lock, for a change, on a state caught up with the store: what other
    /// writers committed (another replica, an admin command, or this hub's own write whose
    /// answer was lost) is replayed first ([`Hub::catch_up`]: one primary-key read when
    /// nothing moved), and while the store cannot be read nothing is written (the error
    /// says so). A writer whose write fails puts back the state it started from, which is
    /// as of its head, so memory is never ahead of the store.
    pub(crate) fn writer(&self) -> Result<StateGuard<'_>, StoreError> {
        let mut st = self.state();
        self.catch_up(&mut st).map_err(load_to_store)?;
        Ok(st)
    }

    /// Every summary pending under `v/d/` folded into its own key, a bounded slice a
    /// flushed write (so the store holds each summary under its key, as tools that read
    /// `v/s/` directly expect); nothing when none is pending. Moves no head: only view keys
    /// change, to the same figures.
    pub fn fold_summaries(&self) -> Result<(), StoreError> {
        let mut st = self.writer()?;
        if self.store.shared_by_processes() {
            // Such a store keeps one key a subject (`views::prepare` wrote any values left
            // before the views loaded): nothing to fold. Folding there is refused, as its
            // writes do not move the head and another replica's commit could land between
            // a slice's read and its write.
            if st.views.pending_summaries() == 0 {
                return Ok(());
            }
            return Err(StoreError::Backend {
                op: "fold summaries",
                message: "summaries are pending on a store other processes write (PostgreSQL replicas); restart the hub (its start writes them under their keys)".into(),
            });
        }
        loop {
            let mut wb = WriteBatch::new();
            let mut views = st.views.clone();
            views.fold_oldest(self.store.as_ref(), &mut wb, 0, 10_000)?;
            if wb.is_empty() {
                st.views = views;
                return Ok(());
            }
            self.store.apply(wb)?;
            self.store.flush()?;
            st.views = views;
        }
    }

    /// Runs `write` under the writer lock against a state caught up with the store, and
    /// again (caught up once more) while its commit finds that another writer moved the
    /// head first, at most [`MAX_CONFLICT_RETRIES`] times. On any error the state goes
    /// back to what it was before the attempt (as of its head: a next writer catches up
    /// from there, finding the write in the store if it landed after all).
    pub fn serialized<T, E>(
        &self,
        mut write: impl FnMut(&Hub, &mut State) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError> + From<LoadError> + ConflictError,
    {
        let mut st = self.writer()?;
        let mut tries = 0;
        loop {
            let saved = State::clone(&st);
            match write(self, &mut st) {
                Ok(t) => return Ok(t),
                Err(e) => {
                    *st = saved;
                    // An attempt on state another writer's commit has moved past can fail
                    // before it reaches its own commit: a catch-up reads the views' keys as
                    // of their latest write, so the in-memory views may already hold what
                    // the attempt's log indexes now collide with (a subject's chain then
                    // runs through another subject's count). It would have conflicted:
                    // catch up and try again, as for a conflict.
                    let stale = !e.is_conflict() && self.stale_attempt(&st);
                    if (e.is_conflict() || stale) && tries < MAX_CONFLICT_RETRIES {
                        tries += 1;
                        self.catch_up(&mut st)?;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Whether an attempt made on `st` failed because other processes' commits moved the
    /// store past it: a catch-up reads the views' keys as of their latest write, so the
    /// views in memory may hold what the attempt's own log indexes then collide with (a
    /// subject's chain running through another subject's count). Such an attempt would
    /// have conflicted at its commit; it is made again after a catch-up. Never on a store
    /// one process writes (its head moves only under this hub's writer lock).
    pub(crate) fn stale_attempt(&self, st: &State) -> bool {
        self.store.shared_by_processes() && self.store.head().is_ok_and(|h| h != st.head)
    }

    /// For readers: when another writer (a replica on the same database, an admin command)
    /// moved the store's head past what this hub last read, catch up first, so no answer
    /// comes from state another replica's commit made stale. One primary-key read when
    /// nothing moved; blocking.
    pub fn sync(&self) -> Result<(), StoreError> {
        // Compared with the published snapshot, not under the writer lock: a request does
        // not wait for an append in progress unless it must catch up.
        if self.store.head()? == self.snapshot().head {
            return Ok(());
        }
        self.writer().map(drop)
    }

    /// Replays what other writers committed since `st.head` into `st`, without reloading
    /// the whole state: the log leaves past `st`'s tree (their heads per source, registry
    /// changes, extensions), the view keys those leaves touched (read back from the store,
    /// see [`Views::catch_up`]), the alarms raised since, the checkpoint of the new tree.
    /// True when something moved. The state is published at once (readers waiting on a
    /// [`Hub::sync`] see it). A store whose log shrank (a restored backup) is reloaded
    /// whole.
    pub(crate) fn catch_up(&self, st: &mut StateGuard<'_>) -> Result<bool, LoadError> {
        let store = self.store.as_ref();
        let head = store.head()?;
        if head == st.head {
            return Ok(false);
        }
        // Read after the head: it covers at least every commit up to it.
        let log = Log::load(store)?;
        let from = st.log.size();
        let to = log.size();
        if to < from {
            **st = load_state(store, &self.origin, &self.key, &self.campaign)?;
            self.publish(st);
            return Ok(true);
        }
        let mut heads = st.heads.clone();
        let mut registry: Option<HashMap<SourceId, SourceRecord>> = None;
        let mut views = st.views.clone();
        let mut touched = crate::views::Touched::default();
        if to > from {
            for r in crate::log::iter_from(store, from) {
                let (index, rec) = r?;
                if index >= to {
                    break;
                }
                let corrupt = |message: String| StoreError::Corrupt {
                    key: format!("log/{index}"),
                    message,
                };
                match &rec.source {
                    Some(source) => {
                        let entry =
                            spacesync_shared::entry::Entry::from_payload(&rec.envelope.payload)
                                .map_err(|e| corrupt(e.to_string()))?;
                        heads.insert(
                            source.clone(),
                            Head {
                                seq: entry.seq,
                                hash: rec.envelope.payload_hash(),
                            },
                        );
                        touched.entry(index, source, &entry.record);
                        // A key transition another writer admitted: its `reg/` record
                        // changed in that write, and the state follows it the same way.
                        if let spacesync_shared::Record::KeyTransition(t) = &entry.record {
                            let reg = registry.get_or_insert_with(|| (*st.registry).clone());
                            if let Some(rec_) = reg.get_mut(source) {
                                registry::apply_transition(
                                    rec_,
                                    entry.seq,
                                    &t.new_key,
                                    rec.received_at,
                                );
                            }
                        }
                    }
                    None => {
                        let entry: crate::entries::HubEntry =
                            serde_json::from_slice(&rec.envelope.payload)
                                .map_err(|e| corrupt(e.to_string()))?;
                        views.replay_hub(index, &entry);
                        registry::apply(
                            registry.get_or_insert_with(|| (*st.registry).clone()),
                            &entry,
                        );
                    }
                }
            }
        }
        views.catch_up(store, touched)?;
        let mut alarms = st.alarms.clone();
        let next_alarm = read_alarms(store, st.next_alarm, &mut alarms)?;
        let checkpoint = log.checkpoint(&self.origin, &self.key)?;
        let state: &mut State = st;
        state.log = log;
        state.heads = heads;
        if let Some(r) = registry {
            state.registry = Arc::new(r);
        }
        state.views = views;
        state.alarms = alarms;
        state.next_alarm = next_alarm;
        state.checkpoint = checkpoint;
        state.head = head;
        state.version += 1;
        self.publish(state);
        tracing::debug!(head, from, to, "Caught up with another writer's commits.");
        Ok(true)
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

    /// True when `source`'s entry at `seq` is a key transition to `key_line` (the key
    /// in force before it signed the hand-over in the chain, not an admin's rotation).
    pub fn handed_over(
        &self,
        source: &SourceId,
        seq: u64,
        key_line: &str,
    ) -> Result<bool, StoreError> {
        let Some(h) = self.held(source, seq)? else {
            return Ok(false);
        };
        let Some(rec) = crate::log::read(self.store.as_ref(), h.log_index)? else {
            return Ok(false);
        };
        Ok(rec.source.as_ref() == Some(source)
            && registry::transition_in(&rec.envelope.payload)
                .is_some_and(|(at, line)| at == seq && line == key_line))
    }

    /// What the source index holds for `source`'s `seq`; a damaged index value reads as
    /// nothing held (the chain verifier then judges the entry as new).
    pub(crate) fn held(&self, source: &SourceId, seq: u64) -> Result<Option<Held>, StoreError> {
        match crate::log::index::held(self.store.as_ref(), source, seq) {
            Err(StoreError::Corrupt { .. }) => Ok(None),
            r => r,
        }
    }
}
