//! Whole-log operations for operators: `rebuild` recomputes every view from the log;
//! `verify` re-checks every signature, every chain and the Merkle root against the latest
//! signed checkpoint. Both report progress through a callback (the CLI draws a bar).
//!
//! `verify` judges each source's chain with the same verifier as ingest
//! ([`spacesync_shared::chain`]), in its audit mode: every link fault of a leaf is named,
//! and the chain continues from that leaf. `rebuild` replays what ingest admitted without
//! judging it again (that is `verify`'s job): it must reproduce the views of any log the
//! hub holds.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use chrono::NaiveDate;
use ed25519_dalek::VerifyingKey;
use spacesync_shared::SourceId;
use spacesync_shared::chain::{ChainError, ChainVerifier};
use spacesync_shared::entry::Entry;
use spacesync_shared::merkle::{self, Frontier, NoteVerifier};

use crate::ingest::key_schedule;
use crate::log;
use crate::log::index as src_index;
use crate::log_check::{self, Checker, Checking, Signed, Verdict, WorkerPanicked};
use crate::registry;
use crate::store::{Overlay, Store, StoreError, WriteBatch, keys};
use crate::views::{self, HubEntry, ItemDifference, Meta, Settled, Views};

/// How many log leaves a rebuild takes between two looks at which of the space counts it
/// wrote the store already holds (see [`views::settle`]): what it keeps in memory beyond
/// the summaries and lists.
pub const SETTLE_EVERY: u64 = 1 << 16;

/// Views recomputed from the log, and what they wrote: `batch`, every view key they make
/// except the space counts found equal to the stored ones (`settled`, read from the
/// store). Read the rebuilt views' keys through [`Rebuilt::reader`].
pub struct Rebuilt {
    /// The views.
    pub views: Views,
    /// Their keys, less the settled space counts.
    pub batch: WriteBatch,
    settled: Arc<Settled>,
}

impl Rebuilt {
    /// What the rebuilt views read: the batch over the store, without the store's own
    /// view keys but for the settled space counts, which are the same.
    pub fn reader<'a>(&'a self, store: &'a dyn Store) -> Overlay<'a> {
        Overlay::hiding_except(store, &self.batch, keys::VIEW, self.settled.as_ref())
    }

    /// Whether the store's `key` is one of the rebuilt views' own (a settled space count).
    pub fn keeps(&self, key: &[u8]) -> bool {
        self.settled.keeps_key(key)
    }

    /// Whether [`Rebuilt::reader`] reads `key` from the store itself: a settled space
    /// count the batch does not write again (a later withdrawal or a late snapshot may
    /// have changed it after it settled). There the rebuilt and the stored views read one
    /// value.
    pub fn reads_stored(&self, key: &[u8]) -> bool {
        self.keeps(key) && self.batch.pending(key).is_none()
    }
}

/// Recomputes the views from the log alone, merged for a campaign whose baseline date is
/// `baseline` (see [`Rebuilt`]).
pub fn rebuild_views(
    store: &dyn Store,
    baseline: NaiveDate,
    progress: impl FnMut(u64),
) -> Result<Rebuilt, StoreError> {
    rebuild_views_upto(store, baseline, u64::MAX, progress)
}

/// The views as they were when the log had `size` leaves.
pub fn rebuild_views_upto(
    store: &dyn Store,
    baseline: NaiveDate,
    size: u64,
    progress: impl FnMut(u64),
) -> Result<Rebuilt, StoreError> {
    rebuild_views_settling(store, baseline, size, SETTLE_EVERY, progress)
}

/// [`rebuild_views_upto`], letting go of the space counts the store holds alike every
/// `every` leaves (tests use a small `every`; the figures must not depend on it).
pub fn rebuild_views_settling(
    store: &dyn Store,
    baseline: NaiveDate,
    size: u64,
    every: u64,
    mut progress: impl FnMut(u64),
) -> Result<Rebuilt, StoreError> {
    let mut rebuilding = Rebuilding::new(store, baseline, every);
    for r in log::iter(store) {
        let (index, rec) = r?;
        if index >= size {
            break;
        }
        progress(index);
        let corrupt = |e: String| StoreError::Corrupt {
            key: format!("log/{index}"),
            message: e,
        };
        let leaf = match rec.source {
            None => ViewLeaf::Hub(
                serde_json::from_slice(&rec.envelope.payload)
                    .map_err(|e| corrupt(e.to_string()))?,
            ),
            Some(source) => ViewLeaf::Source {
                received_at: rec.received_at,
                source,
                entry: Entry::from_payload(&rec.envelope.payload)
                    .map_err(|e| corrupt(e.to_string()))?,
            },
        };
        rebuilding.push(index, leaf)?;
    }
    Ok(rebuilding.finish())
}

/// A log leaf as the views take it: its payload read.
// Nearly every leaf is a `Source`, the large variant: boxing it would add an allocation per
// leaf and save no memory.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ViewLeaf {
    /// One of the hub's own entries.
    Hub(HubEntry),
    /// A source's entry.
    Source {
        /// When the hub received it.
        received_at: chrono::DateTime<chrono::Utc>,
        /// The source the log records for it.
        source: SourceId,
        /// Its payload read.
        entry: Entry,
    },
}

/// Views being recomputed from the log, leaf by leaf in log order (what
/// [`rebuild_views_settling`] does with the leaves it reads, and `verify`'s views thread
/// with the leaves its walk has read and parsed already).
pub struct Rebuilding<'a> {
    store: &'a dyn Store,
    views: Views,
    batch: WriteBatch,
    settled: Arc<Settled>,
    every: u64,
    settled_to: u64,
}

impl<'a> Rebuilding<'a> {
    /// Empty views for a campaign whose baseline date is `baseline`, letting go of the
    /// space counts `store` holds alike every `every` leaves.
    pub fn new(store: &'a dyn Store, baseline: NaiveDate, every: u64) -> Rebuilding<'a> {
        let mut batch = WriteBatch::new();
        let views = Views::rebuilding(baseline, &mut batch);
        let settled = views.settled();
        Rebuilding {
            store,
            views,
            batch,
            settled,
            every: every.max(1),
            settled_to: 0,
        }
    }

    /// Applies log leaf `index` (the leaves must come in log order, none left out).
    pub fn push(&mut self, index: u64, leaf: ViewLeaf) -> Result<(), StoreError> {
        if index > 0 && index.is_multiple_of(self.every) {
            views::settle(self.store, &mut self.batch, &self.settled, self.settled_to)?;
            self.settled_to = index;
        }
        match leaf {
            ViewLeaf::Hub(hub_entry) => self.views.apply_hub(index, &hub_entry, &mut self.batch),
            ViewLeaf::Source {
                received_at,
                source,
                entry,
            } => self.views.apply(
                self.store,
                Meta {
                    log_index: index,
                    received_at,
                    source,
                    seq: entry.seq,
                    recorded_at: entry.recorded_at,
                    withdrawn_by: None,
                },
                &entry.record,
                &mut self.batch,
            )?,
        }
        Ok(())
    }

    /// The views recomputed from the leaves pushed.
    pub fn finish(mut self) -> Rebuilt {
        self.views.seal_rebuilt(&mut self.batch);
        Rebuilt {
            views: self.views,
            batch: self.batch,
            settled: self.settled,
        }
    }
}

/// `rebuild`: replaces the stored views with ones recomputed from the log, merged for
/// `baseline` (the campaign's), and the registry with the one its registry entries give
/// (on a store whose log holds none, the registry as it stands is kept: see
/// [`crate::registry`]). One atomic write. Returns the number of view items.
pub fn rebuild(
    store: &dyn Store,
    baseline: NaiveDate,
    progress: impl FnMut(u64),
) -> Result<u64, StoreError> {
    let Rebuilt {
        views,
        mut batch,
        settled,
    } = rebuild_views(store, baseline, progress)?;
    let mut stale = Vec::new();
    for r in store.scan(keys::VIEW) {
        let (k, _) = r?;
        if batch.pending(&k).is_none() && !settled.keeps_key(&k) {
            stale.push(k);
        }
    }
    for k in stale {
        batch.delete(k);
    }
    if let Some(reg) = registry::replay(store)? {
        batch.extend(registry::replace_batch(store, &reg)?);
    }
    store.apply(batch)?;
    store.flush()?;
    Ok(views.entries())
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Leaves read.
    pub leaves: u64,
    /// Sources seen.
    pub sources: usize,
    /// Every problem, one line each, naming the log index, source and seq.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Why `verify` could not finish (the damage it finds is its report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A checking thread panicked.
    #[error(transparent)]
    Worker(#[from] WorkerPanicked),
}

/// `verify`: every signature, chain, index entry, and the tree root against the checkpoint,
/// with signatures checked on every core ([`Checking::all_cores`]).
pub fn verify(
    store: &dyn Store,
    hub_key: &VerifyingKey,
    origin: &str,
    progress: impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    let mut report = verify_with(store, hub_key, origin, Checking::all_cores(), progress)?;
    // What a start would serve instead of the summaries just checked.
    report
        .problems
        .extend(crate::views::check_checkpoint(store)?);
    Ok(report)
}

/// `verify`, checking signatures as `how` says; the report is the same either way.
///
/// [`Checking::Serial`] is the reference: each leaf on the calling thread, single
/// verification, then the views. In parallel the signatures are checked in batches on
/// worker threads, pipelined with the walk over the leaves ([`log_check::walk`]), and the
/// views are recomputed on a thread of their own meanwhile, from the leaves the walk hands
/// it with their payloads already read (each payload is parsed once, by the signature
/// workers, and the log read once); their verdict counts only when the log itself is
/// sound, as in the serial path, which rebuilds them from the log afterwards.
pub fn verify_with(
    store: &dyn Store,
    hub_key: &VerifyingKey,
    origin: &str,
    how: Checking,
    progress: impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    if how == Checking::Serial {
        return verify_log(store, hub_key, origin, how, None, progress, |report| {
            verify_views(store, report, SETTLE_EVERY).map_err(VerifyError::from)
        });
    }
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(FEED_DEPTH);
        let mut views = std::thread::Builder::new()
            .name("verify-views".into())
            .spawn_scoped(s, move || views_fed(store, rx, SETTLE_EVERY))
            .ok();
        // Without a views thread the views are rebuilt from the log afterwards.
        let feed = views.is_some().then(|| Feed::new(tx));
        let report = verify_log(store, hub_key, origin, how, feed, progress, |report| {
            let found = match views.take() {
                Some(h) => h
                    .join()
                    .map_err(|p| WorkerPanicked::from_payload(p.as_ref()))??,
                // No thread could be started for them.
                None => views_problems(store, SETTLE_EVERY)?,
            };
            report.problems.extend(found);
            Ok(())
        });
        // A damaged log leaves the views' verdict unread; their thread is still joined
        // here, so that a panic in it cannot panic the scope.
        if let Some(h) = views.take() {
            let _ = h.join();
        }
        report
    })
}

/// Leaves the walk hands the views thread in one message (small enough that the tests'
/// logs span several).
pub const FEED_CHUNK: usize = 256;

/// Messages waiting for the views thread at most: what the walk may run ahead of it
/// (16,384 leaves).
const FEED_DEPTH: usize = 64;

/// What the walk sends `verify`'s views thread.
enum Fed {
    /// The next leaves, in log order, their payloads read.
    Leaves(Vec<(u64, ViewLeaf)>),
    /// Every leaf was sent and the log is sound: the views' verdict counts.
    End,
}

/// The walk's end of the views thread's feed: every leaf, parsed once, in log order.
struct Feed {
    tx: SyncSender<Fed>,
    leaves: Vec<(u64, ViewLeaf)>,
}

impl Feed {
    fn new(tx: SyncSender<Fed>) -> Feed {
        Feed {
            tx,
            leaves: Vec::with_capacity(FEED_CHUNK),
        }
    }

    /// Sends `leaf`; false when the views thread takes no more (it has its verdict
    /// without the log, or stopped).
    fn push(&mut self, index: u64, leaf: ViewLeaf) -> bool {
        self.leaves.push((index, leaf));
        if self.leaves.len() < FEED_CHUNK {
            return true;
        }
        let full = std::mem::replace(&mut self.leaves, Vec::with_capacity(FEED_CHUNK));
        self.tx.send(Fed::Leaves(full)).is_ok()
    }

    /// Sends what is left and the end.
    fn end(self) {
        if !self.leaves.is_empty() && self.tx.send(Fed::Leaves(self.leaves)).is_err() {
            return;
        }
        let _ = self.tx.send(Fed::End);
    }
}

/// The log, its tree and checkpoint; then, when they are sound, `views` adds what the
/// views comparison finds. Every leaf, its payload read, goes to `feed` while the log
/// is sound so far; the feed ends (or is dropped, when it is not) before `views` runs.
fn verify_log(
    store: &dyn Store,
    hub_key: &VerifyingKey,
    origin: &str,
    how: Checking,
    mut feed: Option<Feed>,
    mut progress: impl FnMut(u64),
    views: impl FnOnce(&mut VerifyReport) -> Result<(), VerifyError>,
) -> Result<VerifyReport, VerifyError> {
    // Keys and scopes come from the registry the log gives. On a sound store that is the
    // stored one, so the log is walked once, checked under `reg/` while its registry
    // entries are replayed along the way (a replay of its own, before the walk, was ~5 %
    // of `verify` at 9 M entries, on one core). Only when the replay disagrees is the log
    // walked again, under the registry it gives. A log whose registry entries do not
    // decode is reported at their leaf, and checked against `reg/`.
    let stored = registry::load_all(store)?;
    let (mut report, replayed) = walk_log(
        store,
        hub_key,
        origin,
        how,
        &stored,
        &mut feed,
        &mut progress,
    )?;
    // A walk that stopped short of the end replayed only part of the log.
    let replayed = match replayed {
        Some(replayed) => replayed,
        None => registry::replay(store).ok().flatten(),
    };
    if let Some(replayed) = replayed
        && replayed != stored
    {
        // The views' verdict does not count for a log checked under the wrong keys.
        drop(feed);
        let differs = replayed
            .iter()
            .map(|r| &r.id)
            .chain(stored.iter().map(|r| &r.id))
            .find(|id| {
                replayed.iter().find(|r| r.id == **id) != stored.iter().find(|r| r.id == **id)
            })
            .map_or_else(String::new, |id| format!(" (first at source {id})"));
        let (mut again, _) = walk_log(
            store,
            hub_key,
            origin,
            how,
            &replayed,
            &mut None,
            &mut progress,
        )?;
        again.problems.insert(0, format!(
            "the stored registry disagrees with the registry entries of the log{differs}; run `spacesync-hub rebuild`"
        ));
        return Ok(again);
    }
    // Views follow from the log; with the log damaged they would only repeat its faults.
    if report.problems.is_empty() {
        if let Some(f) = feed.take() {
            f.end();
        }
        views(&mut report)?;
    }
    Ok(report)
}

/// The log walked and checked under `registry`: its leaves, its tree and checkpoint, each
/// sound leaf sent to `feed` while the log is sound so far (the feed is dropped at the
/// first problem). Returns the report and, when every leaf was walked, the registry the
/// log's own entries give (`Some(None)` when it holds none, or one does not decode: as
/// [`registry::replay`] reads it).
#[allow(clippy::type_complexity)]
fn walk_log(
    store: &dyn Store,
    hub_key: &VerifyingKey,
    origin: &str,
    how: Checking,
    registry: &[registry::SourceRecord],
    feed: &mut Option<Feed>,
    progress: &mut dyn FnMut(u64),
) -> Result<(VerifyReport, Option<Option<Vec<registry::SourceRecord>>>), VerifyError> {
    let mut report = VerifyReport::default();
    let registry: HashMap<SourceId, &registry::SourceRecord> =
        registry.iter().map(|r| (r.id.clone(), r)).collect();
    let checker = Checker::new(
        registry
            .iter()
            .map(|(id, reg)| (id.clone(), key_schedule(reg)))
            .collect(),
        hub_key,
    );
    // The log's registry entries, replayed as the walk goes (`None` once one does not
    // decode).
    let mut replay = Some(registry::Replay::new());
    // One verifier per source, keeping only its head (a whole log need not be held).
    let mut chains: HashMap<SourceId, ChainVerifier> = HashMap::new();
    let mut frontier = Frontier::new();
    let mut node_damage = false;
    // The index run of the leaves being walked (a batch's entries share one).
    let mut run: Option<(SourceId, src_index::Run)> = None;
    // Below this level no node is stored: nothing to look up (only stores written by older
    // hubs keep nodes of the lowest levels).
    let lowest_stored = log::lowest_stored_level(store)?;
    let mut expected_index = 0u64;
    let walked = log_check::walk(store, &checker, how, |r| -> Result<_, VerifyError> {
        // The views' verdict counts only for a sound log: no use feeding them past damage.
        if !report.problems.is_empty() {
            *feed = None;
        }
        let (index, rec, checked) = match r {
            Ok(x) => x,
            Err(e) => {
                let at = indexed_as(store, expected_index)?;
                report
                    .problems
                    .push(format!("log leaf {expected_index}{at}: {e}"));
                return Ok(ControlFlow::Break(()));
            }
        };
        progress(index);
        if index != expected_index {
            let at = indexed_as(store, expected_index)?;
            report.problems.push(format!(
                "log leaf {expected_index}{at} is missing (next stored leaf is {index})"
            ));
            return Ok(ControlFlow::Break(()));
        }
        expected_index += 1;
        report.leaves += 1;
        if let Some(r) = &mut replay
            && r.leaf(index, rec).is_err()
        {
            replay = None;
        }
        match frontier.push(checked.leaf_hash) {
            Err(e) => report.problems.push(format!("log leaf {index}: {e}")),
            // Proofs are served from the stored nodes, so each must be what the log implies.
            // Only the first mismatch is reported: the nodes above it follow from it. Nodes
            // below the first stored level are computed from the log unless a store written
            // before kept them.
            Ok(nodes) if !node_damage => {
                for n in nodes.iter().filter(|n| n.level >= lowest_stored) {
                    let stored = store.get(&keys::node(n.level, n.index))?;
                    let sound = match stored.as_deref() {
                        Some(v) => v == &n.hash[..],
                        None => n.level < log::FIRST_STORED_LEVEL,
                    };
                    if !sound {
                        report.problems.push(format!(
                            "log leaf {index}: the stored tree node (level {}, index {}) does not match the log; proofs through it will not verify",
                            n.level, n.index
                        ));
                        node_damage = true;
                        break;
                    }
                }
            }
            Ok(_) => {}
        }
        // The signature rule finds the one signature by the expected key among any; the
        // others are bytes no one signed, which ingest refuses (exactly one signature)
        // and which the leaf hash does not cover: only this check sees them added.
        let count = rec.envelope.signatures.len();
        if count > 1 {
            let who = match &rec.source {
                Some(s) => format!("{s} seq {}", rec.seq),
                None => format!("hub entry {}", rec.seq),
            };
            report.problems.push(format!(
                "log leaf {index} ({who}): the envelope carries {count} signatures where an entry carries exactly one; the stored record was changed"
            ));
        }
        let Some(source) = &rec.source else {
            if let Verdict::Hub(Err(e)) = checked.verdict {
                report
                    .problems
                    .push(format!("log leaf {index} (hub entry {}): {e}", rec.seq));
            } else {
                match serde_json::from_slice::<HubEntry>(&rec.envelope.payload) {
                    Err(e) => report.problems.push(format!(
                        "log leaf {index} (hub entry {}): signed by this hub but not an entry this version reads ({e}); is the hub older than the log?",
                        rec.seq
                    )),
                    Ok(hub_entry) => {
                        if let Some(f) = feed
                            && !f.push(index, ViewLeaf::Hub(hub_entry))
                        {
                            *feed = None;
                        }
                    }
                }
            }
            return Ok(ControlFlow::Continue(()));
        };
        // Named only for a problem: most leaves have none.
        let at = LeafAt {
            index,
            source,
            seq: rec.seq,
        };
        let Some(reg) = registry.get(source) else {
            report
                .problems
                .push(format!("{at}: source is not in the registry"));
            return Ok(ControlFlow::Continue(()));
        };
        if !chains.contains_key(source) {
            chains.insert(
                source.clone(),
                ChainVerifier::with_keys(source.clone(), key_schedule(reg), reg.scope, None)
                    .without_memory(),
            );
        }
        let Some(chain) = chains.get_mut(source) else {
            return Ok(ControlFlow::Continue(()));
        };
        // The key in force at the seq the log records, before the payload is read.
        let verdict = match checked.verdict {
            Verdict::Source(verdict) => verdict,
            // Not reached (the checker holds the keys of every registered source); judged
            // here as the checker would.
            Verdict::Unregistered | Verdict::Hub(_) => chain
                .keys()
                .verify(&rec.envelope, rec.seq)
                .map(|_| Signed::read(rec)),
        };
        let signed = match verdict {
            Ok(signed) => signed,
            Err(ChainError::NoKey { .. } | ChainError::UnreadableKey { .. }) => {
                report
                    .problems
                    .push(format!("{at}: no registered key signs this seq"));
                return Ok(ControlFlow::Continue(()));
            }
            Err(e) => {
                let why = match e {
                    ChainError::BadSignature { error, .. } => error.to_string(),
                    other => other.to_string(),
                };
                report.problems.push(format!("{at}: {why}"));
                skip_damaged(store, chain, source, rec.seq)?;
                return Ok(ControlFlow::Continue(()));
            }
        };
        let entry = match signed.entry {
            Ok(e) => e,
            Err(e) => {
                report.problems.push(format!("{at}: {e}"));
                skip_damaged(store, chain, source, rec.seq)?;
                return Ok(ControlFlow::Continue(()));
            }
        };
        let held = chain.next_seq() - 1;
        let hash = signed.hash;
        let faults = chain.audit(&entry, hash);
        let misplaced = faults.iter().any(|f| {
            matches!(
                f,
                ChainError::Gap { .. } | ChainError::Fork { .. } | ChainError::Duplicate { .. }
            )
        });
        if misplaced || entry.seq != rec.seq {
            report.problems.push(format!(
                "{at}: seq {} does not follow seq {held}",
                entry.seq
            ));
        }
        for fault in &faults {
            match fault {
                ChainError::BadPrev { .. } => report.problems.push(format!(
                    "{at}: prev does not match the hash of the previous entry"
                )),
                ChainError::OutOfScope { .. } | ChainError::BadWithdrawal { .. } => {
                    report.problems.push(format!("{at}: {fault}"))
                }
                _ => {}
            }
        }
        // A batch's entries share one index run: read once for all of them.
        if !run
            .as_ref()
            .is_some_and(|(s, r)| s == source && r.held(entry.seq).is_some())
        {
            run = match src_index::run(store, source, entry.seq) {
                Ok(r) => r.map(|r| (source.clone(), r)),
                Err(StoreError::Corrupt { .. }) => None,
                Err(e) => return Err(e.into()),
            };
        }
        let held = run.as_ref().and_then(|(_, r)| r.held(entry.seq));
        match held {
            Some(h) if h.log_index == index && h.hash == hash => {
                // The receive time a receipt re-issued for a resent entry says.
                if h.received_at.timestamp_millis() != rec.received_at.timestamp_millis() {
                    report.problems.push(format!(
                        "{at}: the source index gives another receive time than the leaf; a receipt re-issued for this entry would contradict the first"
                    ));
                }
            }
            _ => report.problems.push(format!(
                "{at}: the source index does not point at this leaf"
            )),
        }
        if let Some(f) = feed
            && !f.push(
                index,
                ViewLeaf::Source {
                    received_at: rec.received_at,
                    source: source.clone(),
                    entry,
                },
            )
        {
            *feed = None;
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if walked.is_break() {
        return Ok((report, None));
    }
    // Sources with a chain: at least one leaf read, or re-synchronised after damage.
    report.sources = chains.values().filter(|c| c.next_seq() > 1).count();

    match store.get(keys::FRONTIER)? {
        Some(b) => match Frontier::from_bytes(&b) {
            Ok(stored) if stored.size() == frontier.size() && stored.root() == frontier.root() => {}
            Ok(stored) if stored.size() > frontier.size() => report.problems.push(format!(
                "log leaf {}{} is missing: the stored tree state counts {} leaves",
                frontier.size(),
                indexed_as(store, frontier.size())?,
                stored.size()
            )),
            Ok(stored) if stored.size() == frontier.size() => report.problems.push(format!(
                "the stored tree root does not match the root recomputed from the log ({} leaves)",
                frontier.size()
            )),
            Ok(stored) => report.problems.push(format!(
                "the stored tree state (size {}) does not match the log (size {})",
                stored.size(),
                frontier.size()
            )),
            Err(e) => report
                .problems
                .push(format!("the stored tree state is damaged: {e}")),
        },
        None if frontier.size() == 0 => {}
        None => report
            .problems
            .push("the stored tree state is missing".into()),
    }
    match store.get(keys::CHECKPOINT)? {
        None if frontier.size() == 0 => {}
        None => report
            .problems
            .push("no signed checkpoint is stored".into()),
        Some(note) => {
            let note = String::from_utf8_lossy(&note);
            let verifier = NoteVerifier::new(origin, *hub_key);
            match verifier.and_then(|v| merkle::open_checkpoint(&note, &v, origin)) {
                Err(e) => report
                    .problems
                    .push(format!("the latest checkpoint does not verify: {e}")),
                Ok(cp) if cp.size != frontier.size() => report.problems.push(format!(
                    "the latest checkpoint covers {} leaves but the log has {}",
                    cp.size,
                    frontier.size()
                )),
                Ok(cp) if cp.root != frontier.root() => report.problems.push(
                    "the Merkle root recomputed from the log differs from the signed checkpoint"
                        .into(),
                ),
                Ok(_) => {}
            }
        }
    }
    Ok((report, Some(replay.and_then(registry::Replay::finish))))
}

/// The views are derived state: the stored items, the subjects' summaries, the sources'
/// activity, the extensions and the notice rule changes must be exactly what the log
/// implies, or the hub serves figures that miss (or invent) entries.
/// What `verify` says of the views (empty: they are what the log implies), the rebuild it
/// compares with letting go of equal space counts every `settle_every` leaves.
pub fn views_problems(store: &dyn Store, settle_every: u64) -> Result<Vec<String>, StoreError> {
    let mut found = VerifyReport::default();
    verify_views(store, &mut found, settle_every)?;
    Ok(found.problems)
}

fn verify_views(
    store: &dyn Store,
    report: &mut VerifyReport,
    settle_every: u64,
) -> Result<(), StoreError> {
    let Some((baseline, stored)) = stored_views(store, report)? else {
        return Ok(());
    };
    // A log that does not decode is reported above; there is nothing to compare with.
    let Ok(rebuilt) = rebuild_views_settling(store, baseline, u64::MAX, settle_every, |_| {})
    else {
        return Ok(());
    };
    compare_views(store, report, rebuilt, &stored);
    Ok(())
}

/// What `verify`'s views thread says of the views (empty: they are what the log implies),
/// rebuilding them from the leaves the walk `fed` it, already read and parsed, instead of
/// reading and parsing the log again. The feed must end with [`Fed::End`] for a verdict:
/// a walk that stops feeding found the log damaged, and then the views' verdict is unread.
fn views_fed(
    store: &dyn Store,
    fed: Receiver<Fed>,
    settle_every: u64,
) -> Result<Vec<String>, StoreError> {
    let mut found = VerifyReport::default();
    let Some((baseline, stored)) = stored_views(store, &mut found)? else {
        return Ok(found.problems);
    };
    let mut rebuilding = Rebuilding::new(store, baseline, settle_every);
    loop {
        match fed.recv() {
            Ok(Fed::Leaves(leaves)) => {
                for (index, leaf) in leaves {
                    // As [`verify_views`]: what does not rebuild leaves nothing to compare.
                    if rebuilding.push(index, leaf).is_err() {
                        return Ok(found.problems);
                    }
                }
            }
            Ok(Fed::End) => break,
            Err(_) => return Ok(Vec::new()),
        }
    }
    compare_views(store, &mut found, rebuilding.finish(), &stored);
    Ok(found.problems)
}

/// The baseline the stored views were merged for and the views themselves, or `None`
/// (with what is wrong in `report`) when there are none to compare or they do not load.
fn stored_views(
    store: &dyn Store,
    report: &mut VerifyReport,
) -> Result<Option<(NaiveDate, Views)>, StoreError> {
    let baseline = match crate::views::stored_baseline(store) {
        Ok(Some(b)) => b,
        Ok(None) => {
            if store.scan(keys::VIEW).next().is_some() {
                report.problems.push(
                    "the stored views are in the layout of an older hub; start the hub once (it converts them) or run `spacesync-hub rebuild`".into(),
                );
            }
            return Ok(None);
        }
        Err(e) => {
            report.problems.push(format!(
                "the stored views are damaged: {e}; run `spacesync-hub rebuild`"
            ));
            return Ok(None);
        }
    };
    match Views::load(store, baseline) {
        Ok(v) => Ok(Some((baseline, v))),
        Err(e) => {
            report.problems.push(format!(
                "the stored views are damaged: {e}; run `spacesync-hub rebuild`"
            ));
            Ok(None)
        }
    }
}

/// What differs between the views `rebuilt` from the log and the `stored` ones, into
/// `report`.
fn compare_views(store: &dyn Store, report: &mut VerifyReport, rebuilt: Rebuilt, stored: &Views) {
    const REBUILD: &str = "figures are wrong until `spacesync-hub rebuild`";
    // Three walks over the stored and the rebuilt views, each on a thread of its own: the
    // items and the links each read every stored space count, and nothing else is left to
    // do by then (run one after another they were a quarter of `verify` at 9 M entries,
    // on one core).
    // The settled space counts: the rebuild and the store read the same value there.
    let same = |k: &[u8]| rebuilt.reads_stored(k);
    let links = || views::differing_links(store, &rebuilt.reader(store), &same);
    let summaries = || views::differing_summaries(store, &rebuilt.reader(store));
    let (items, links, summaries) = std::thread::scope(|s| {
        let spawn = |name: &str| std::thread::Builder::new().name(format!("verify-{name}"));
        let links = spawn("links").spawn_scoped(s, links).map_err(|_| links);
        let summaries = spawn("summaries")
            .spawn_scoped(s, summaries)
            .map_err(|_| summaries);
        let items =
            views::differing_items(&rebuilt.views, &rebuilt.reader(store), stored, store, &same);
        // Where no thread could be started, here; a panic in one is this thread's.
        fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        }
        let links = links.map_or_else(|f| f(), join);
        let summaries = summaries.map_or_else(|f| f(), join);
        (items, links, summaries)
    });
    let (count, first) = match items {
        Ok(d) => d,
        Err(e) => {
            report.problems.push(format!(
                "the stored views are damaged: {e}; run `spacesync-hub rebuild`"
            ));
            return;
        }
    };
    if let Some((first, how)) = first {
        let how = match how {
            ItemDifference::Differs => "differs from",
            ItemDifference::OnlyFirst => "is missing from",
            ItemDifference::OnlySecond => "is not in",
        };
        report.problems.push(format!(
            "the stored views disagree with the log at {count} log leaves: the view item of log leaf {first} {how} what the log holds; {REBUILD}"
        ));
    }
    match links {
        Ok((n, Some(first))) => report.problems.push(format!(
            "{n} stored space counts link to another previous snapshot of their subject than the log gives (first: log leaf {first}); a late or withdrawn snapshot would be merged wrongly until `spacesync-hub rebuild`"
        )),
        Ok(_) => {}
        Err(e) => report.problems.push(format!(
            "the stored views are damaged: {e}; run `spacesync-hub rebuild`"
        )),
    }
    // The stored summaries, byte for byte: the figures the views were loaded with, and
    // where each subject's chain starts (empty summaries included).
    match summaries {
        Ok(subjects) if !subjects.is_empty() => report.problems.push(format!(
            "{} stored subject summaries disagree with the snapshots in the log (first: {}); {REBUILD}",
            subjects.len(),
            subjects[0]
        )),
        Ok(_) => {}
        Err(e) => report.problems.push(format!(
            "the stored views are damaged: {e}; run `spacesync-hub rebuild`"
        )),
    }
    let rebuilt_views = rebuilt.views;
    if stored.sources() != rebuilt_views.sources() {
        report.problems.push(format!(
            "the stored per-source activity (entries, last times) disagrees with the log; {REBUILD}"
        ));
    }
    if !stored.extensions().eq(rebuilt_views.extensions()) {
        report.problems.push(
            "the stored deadline extensions disagree with the log; run `spacesync-hub rebuild`"
                .into(),
        );
    }
    if !stored.rule_changes().eq(rebuilt_views.rule_changes()) {
        report.problems.push(
            "the stored notice rule changes disagree with the log; run `spacesync-hub rebuild`"
                .into(),
        );
    }
}

/// How a problem names a source's leaf: `log leaf <index> (<source> seq <seq>)`.
struct LeafAt<'a> {
    index: u64,
    source: &'a SourceId,
    seq: u64,
}

impl std::fmt::Display for LeafAt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "log leaf {} ({} seq {})",
            self.index, self.source, self.seq
        )
    }
}

/// ` (<source> seq <n>)` when the source index says log leaf `index` held that entry, for
/// naming a leaf that is missing or unreadable; empty otherwise.
fn indexed_as(store: &dyn Store, index: u64) -> Result<String, StoreError> {
    Ok(match src_index::entry_at(store, index)? {
        Some((source, seq)) => format!(" ({source} seq {seq})"),
        None => String::new(),
    })
}

/// After a leaf that does not verify, its source's chain continues from the hash the hub
/// recorded for it at ingest, so the next leaf is not blamed for its predecessor's damage.
fn skip_damaged(
    store: &dyn Store,
    chain: &mut ChainVerifier,
    source: &SourceId,
    seq: u64,
) -> Result<(), StoreError> {
    if let Ok(Some(held)) = src_index::held(store, source, seq) {
        chain.resync(seq, held.hash);
    }
    Ok(())
}
