//! Storage behind a small trait: ordered keys, atomic batches, explicit flush.
//!
//! sled is the embedded default. Everything the hub keeps lives in one ordered key space
//! with prefixes (see [`keys`]), so a batch that appends to the log, indexes the entries,
//! moves the tree frontier and updates the views is one atomic write. Another backend
//! only needs these five operations.

pub mod pg;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// A storage failure. The message names the operation; the hub answers 503 and logs it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("storage {op} failed: {message}")]
    Backend {
        /// The operation (`get`, `apply`, `flush` …).
        op: &'static str,
        /// The backend's message.
        message: String,
    },
    /// Another process holds the data directory.
    #[error(
        "the data directory {0} is in use by another process (is `spacesync-hub serve` running?); stop it first"
    )]
    Locked(String),
    /// The serialization point moved: another writer (another replica on the same
    /// database, or a command run beside `serve`) committed since this writer's state was
    /// read. Nothing of the batch was written; the writer catches up and tries again.
    #[error(
        "another writer changed the store first (its head is {found}, this writer expected {expected}); nothing was written, catch up and retry"
    )]
    Conflict {
        /// The head the writer computed its batch from.
        expected: u64,
        /// The head found in the store.
        found: u64,
    },
    /// A stored value does not decode.
    #[error("stored value under {key} is damaged: {message}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// What failed to decode.
        message: String,
    },
}

/// One atomic write: the value (or removal) each key it touches will have. A later
/// operation on a key replaces an earlier one, as applying them in order would; applying
/// the batch is one atomic step whatever the order. The batch can be read while it is
/// built, over the store it will be applied to ([`Overlay`]).
#[derive(Debug, Default)]
pub struct WriteBatch {
    ops: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.insert(key.into(), Some(value.into()));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.insert(key.into(), None);
    }

    /// Adds `other`'s operations (applied after this batch's, in the same write).
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// Number of keys the batch writes or removes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// What the batch does to `key`: `None` when it does not touch it, `Some(None)` when
    /// it removes it, `Some(Some(value))` when it sets it.
    pub fn pending(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.ops.get(key).map(Option::as_deref)
    }

    /// The value the batch sets `key` to, to change where it lies; `None` when the batch
    /// does not set it (leaves it, or removes it).
    pub fn pending_mut(&mut self, key: &[u8]) -> Option<&mut Vec<u8>> {
        self.ops.get_mut(key).and_then(Option::as_mut)
    }

    /// Drops what the batch would do to `key` (as if it had never been put or deleted).
    pub fn forget(&mut self, key: &[u8]) {
        self.ops.remove(key);
    }

    /// The keys under `prefix` from `from` on that the batch touches, in key order, with
    /// what it does to each (as [`WriteBatch::pending`]).
    pub fn pending_from(
        &self,
        prefix: &[u8],
        from: &[u8],
    ) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        let prefix = prefix.to_vec();
        let from = from.max(prefix.as_slice()).to_vec();
        self.ops
            .range::<[u8], _>((Bound::Included(from.as_slice()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// The keys under `prefix` the batch touches, in key order, with what it does to each
    /// (as [`WriteBatch::pending`]).
    pub fn pending_under(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        let prefix = prefix.to_vec();
        self.ops
            .range::<[u8], _>((Bound::Included(prefix.as_slice()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }
}

/// One key/value pair.
pub type Kv = (Vec<u8>, Vec<u8>);

/// Key/value pairs in key order.
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<Kv, StoreError>> + 'a>;

/// What the hub needs from storage.
pub trait Store: Send + Sync + 'static {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> KvIter<'_>;
    /// The pairs whose key starts with `prefix` and is at least `from`, in key order: a
    /// long scan taken up again where it stopped (after writes in between).
    fn scan_from(&self, prefix: &[u8], from: &[u8]) -> KvIter<'_> {
        let from = from.to_vec();
        Box::new(
            self.scan(prefix)
                .filter(move |r| r.as_ref().map_or(true, |(k, _)| *k >= from)),
        )
    }
    /// The first pair whose key starts with `prefix` and is at least `from` (a point
    /// lookup of the next key: backends that page their scans override it).
    fn first_from(&self, prefix: &[u8], from: &[u8]) -> Result<Option<Kv>, StoreError> {
        self.scan_from(prefix, from).next().transpose()
    }
    /// The last pair whose key starts with `prefix`.
    fn last(&self, prefix: &[u8]) -> Result<Option<Kv>, StoreError>;
    /// Applies a batch atomically (all or nothing, also across a crash).
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError>;
    /// Makes every applied batch durable. Nothing is acknowledged before this returns.
    fn flush(&self) -> Result<(), StoreError>;

    /// Whether the log's packs are written LZ4-compressed (`log/pack.rs`). Yes, unless the
    /// backend compresses values itself and reads the packs in its own language
    /// (PostgreSQL: TOAST, and the analyst view `spacesync_log` unpacks them in SQL).
    fn compresses_log(&self) -> bool {
        true
    }

    /// Whether the views store the summaries a batch changed as one value a batch, folded
    /// into one key a subject later (`views/pending.rs`), instead of one key a subject in
    /// every batch. Yes on sled, where each key changed among many costs a leaf page's
    /// fragment and node copies, ~a quarter of the hub's CPU in the drain; PostgreSQL
    /// updates a row in place of that and replicas read the summaries of each other's
    /// batches by key, so it keeps one key a subject.
    fn batches_summaries(&self) -> bool {
        true
    }

    /// Whether other processes commit to this store (hub replicas on one PostgreSQL
    /// database), so that a commit's head is often found moved. Within one process the
    /// writer lock orders the commits; a conflict there is rare.
    fn shared_by_processes(&self) -> bool {
        false
    }

    /// Runs `f` while no other process on the store runs its own `exclusively`: how hub
    /// replicas starting together on one database let one of them convert the stored views
    /// ([`crate::views::prepare`]) while the others wait, instead of converting the same
    /// keys at once (the slower one overwriting what the faster one then ingested). A store
    /// only one process opens (sled locks its directory) just runs `f`.
    fn exclusively(&self, f: &mut dyn FnMut() -> Result<(), StoreError>) -> Result<(), StoreError> {
        f()
    }

    /// The serialization point: the head every change to the log (and to what is derived
    /// from it, or numbered after it: bulletins, their slots) moves by one through
    /// [`Store::commit`]. 0 on a store no commit has touched.
    fn head(&self) -> Result<u64, StoreError> {
        read_head(self)
    }

    /// Applies `batch` and moves the head from `expected` to `expected + 1`, atomically
    /// and durably, only if the head is still `expected`; otherwise
    /// [`StoreError::Conflict`] and nothing is written. Returns the new head. This default
    /// keeps the head under [`keys::HEAD`] and is only as atomic as its callers are
    /// serialized: the backends override it (sled and memory under a lock, PostgreSQL in
    /// one transaction holding the head row's lock).
    fn commit(&self, expected: u64, batch: WriteBatch) -> Result<u64, StoreError> {
        commit_unlocked(self, expected, batch)
    }

    /// Writes `value` under `key` unless the key exists, atomically across every process
    /// on the store, and durably; true when this call wrote it. (Claims shared by
    /// replicas: a signed request's nonce.)
    fn insert_if_absent(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        insert_unlocked(self, key, value)
    }

    /// Holds back every write to the store made through this process until the guard
    /// drops, for a copy of one instant (a serving hub's backup); writes already under
    /// way finish first. `None` where the backend has its own tools for that (PostgreSQL:
    /// `pg_dump` takes a snapshot).
    fn hold_writes(&self) -> Option<std::sync::RwLockWriteGuard<'_, ()>> {
        None
    }

    /// The views checkpoint the last clean stop left ([`Store::put_views_checkpoint`]), at
    /// most once per open: the backend sets it aside when it opens, and puts it back at the
    /// close only if that open wrote no view key and did not move the head, so no later
    /// open finds one the store has moved past (a process that ends without closing the
    /// store leaves it set aside, and the next open removes it). `None` when there is none, or where
    /// the backend keeps none. The bytes are unchecked: `crate::views::checkpoint` checks
    /// them and their match with the store.
    fn take_views_checkpoint(&self) -> Option<Vec<u8>> {
        None
    }

    /// Removes the views checkpoint set aside by this open (it was refused: damaged, or
    /// written for another state of the store), so no later open reads it again.
    fn discard_views_checkpoint(&self) {}

    /// Keeps `bytes` as the views checkpoint for the next open, durably; false where the
    /// backend keeps none (PostgreSQL: replicas write the store while one stops).
    fn put_views_checkpoint(&self, bytes: &[u8]) -> Result<bool, StoreError> {
        let _ = bytes;
        Ok(false)
    }
}

/// The head as the default [`Store::head`] keeps it (under [`keys::HEAD`]).
fn read_head<S: Store + ?Sized>(store: &S) -> Result<u64, StoreError> {
    match store.get(keys::HEAD)? {
        None => Ok(0),
        Some(b) => b
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                key: "meta/head".into(),
                message: format!("{} bytes, not 8", b.len()),
            }),
    }
}

/// Reading ordered keys, from a store or from a store with a batch over it ([`Overlay`]).
/// Its own method names, so a module using both traits calls `Store`'s unambiguously.
pub trait Reader {
    /// The value under `key`.
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn read_prefix(&self, prefix: &[u8]) -> KvIter<'_>;
    /// The first pair whose key starts with `prefix` and is at least `from`.
    fn read_first_from(&self, prefix: &[u8], from: &[u8]) -> Result<Option<Kv>, StoreError>;
}

impl<S: Store + ?Sized> Reader for S {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(key)
    }

    fn read_prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        self.scan(prefix)
    }

    fn read_first_from(&self, prefix: &[u8], from: &[u8]) -> Result<Option<Kv>, StoreError> {
        self.first_from(prefix, from)
    }
}

/// A store as it will read once `batch` is applied to it: the batch's keys over the
/// store's. With a hidden prefix, the store is read as if it held nothing under it (a
/// rebuild writing that part afresh into the batch).
#[derive(Clone, Copy)]
pub struct Overlay<'a> {
    store: &'a dyn Store,
    batch: &'a WriteBatch,
    hidden: Option<&'a [u8]>,
    keep: Option<&'a dyn Keep>,
}

/// Keys under an [`Overlay`]'s hidden prefix that are read from the store all the same
/// (a rebuild that found its value for them equal to the stored one and let it go).
pub trait Keep: Send + Sync {
    /// Whether `key`, under the hidden prefix, is read from the store.
    fn keeps(&self, key: &[u8]) -> bool;
}

impl<'a> Overlay<'a> {
    /// `batch` over `store`.
    pub fn new(store: &'a dyn Store, batch: &'a WriteBatch) -> Overlay<'a> {
        Overlay {
            store,
            batch,
            hidden: None,
            keep: None,
        }
    }

    /// `batch` over `store` without its keys under `hidden`.
    pub fn hiding(store: &'a dyn Store, batch: &'a WriteBatch, hidden: &'a [u8]) -> Overlay<'a> {
        Overlay {
            store,
            batch,
            hidden: Some(hidden),
            keep: None,
        }
    }

    /// `batch` over `store` without its keys under `hidden`, except those `keep` keeps.
    pub fn hiding_except(
        store: &'a dyn Store,
        batch: &'a WriteBatch,
        hidden: &'a [u8],
        keep: &'a dyn Keep,
    ) -> Overlay<'a> {
        Overlay {
            store,
            batch,
            hidden: Some(hidden),
            keep: Some(keep),
        }
    }

    fn hides(&self, key: &[u8]) -> bool {
        hidden_by(self.hidden, self.keep, key)
    }
}

/// Whether a store key is hidden by a hidden prefix and the keys kept under it.
fn hidden_by(hidden: Option<&[u8]>, keep: Option<&dyn Keep>, key: &[u8]) -> bool {
    hidden.is_some_and(|h| key.starts_with(h)) && !keep.is_some_and(|k| k.keeps(key))
}

impl Reader for Overlay<'_> {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.batch.pending(key) {
            Some(v) => Ok(v.map(<[u8]>::to_vec)),
            None if self.hides(key) => Ok(None),
            None => self.store.get(key),
        }
    }

    fn read_prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        let (hidden, keep) = (self.hidden, self.keep);
        let below: KvIter<'_> = if keep.is_none() && hidden.is_some_and(|h| prefix.starts_with(h)) {
            Box::new(std::iter::empty())
        } else {
            Box::new(self.store.scan(prefix).filter(move |r| {
                r.as_ref()
                    .map_or(true, |(k, _)| !hidden_by(hidden, keep, k))
            }))
        };
        Box::new(Merged {
            below: below.peekable(),
            above: self.batch.pending_under(prefix).peekable(),
        })
    }

    fn read_first_from(&self, prefix: &[u8], from: &[u8]) -> Result<Option<Kv>, StoreError> {
        let above = self
            .batch
            .pending_from(prefix, from)
            .find_map(|(k, v)| v.map(|v| (k, v)));
        // The store's first key, unless the batch removes it or it is hidden: then the
        // two are merged key by key (rare: only a rebuild hides, nothing removes an index).
        let below = self.store.first_from(prefix, from)?;
        let plain = below.as_ref().is_none_or(|(k, _)| {
            self.batch.pending(k).is_none() && !hidden_by(self.hidden, self.keep, k)
        });
        if !plain {
            let (hidden, keep) = (self.hidden, self.keep);
            let below: KvIter<'_> = Box::new(self.store.scan_from(prefix, from).filter(move |r| {
                r.as_ref()
                    .map_or(true, |(k, _)| !hidden_by(hidden, keep, k))
            }));
            let mut merged = Merged {
                below: below.peekable(),
                above: self.batch.pending_from(prefix, from).peekable(),
            };
            return merged.next().transpose();
        }
        Ok(match (below, above) {
            (Some((bk, bv)), Some((ak, _))) if bk.as_slice() < ak => Some((bk, bv)),
            (_, Some((ak, av))) => Some((ak.to_vec(), av.to_vec())),
            (below, None) => below,
        })
    }
}

/// A store's pairs merged with a batch's operations, both in key order: the batch's
/// value wins, its removals hide the store's pair.
struct Merged<'a, A: Iterator<Item = (&'a [u8], Option<&'a [u8]>)>> {
    below: std::iter::Peekable<KvIter<'a>>,
    above: std::iter::Peekable<A>,
}

impl<'a, A: Iterator<Item = (&'a [u8], Option<&'a [u8]>)>> Iterator for Merged<'a, A> {
    type Item = Result<Kv, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        loop {
            let order = match (self.below.peek(), self.above.peek()) {
                (Some(Err(_)), _) => return self.below.next(),
                (None, None) => return None,
                (Some(Ok(_)), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(Ok((b, _))), Some((a, _))) => b.as_slice().cmp(a),
            };
            match order {
                Ordering::Less => return self.below.next(),
                // The batch replaces or removes the store's pair.
                Ordering::Equal => {
                    self.below.next();
                }
                Ordering::Greater => {}
            }
            if let Some((k, Some(v))) = self.above.next() {
                return Some(Ok((k.to_vec(), v.to_vec())));
            }
        }
    }
}

/// A store in memory, for tests and for tools that need a scratch store: not durable
/// (`flush` does nothing).
#[derive(Default)]
pub struct MemStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Serializes [`Store::commit`] and [`Store::insert_if_absent`].
    commits: Mutex<()>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn range(&self, prefix: &[u8], from: &[u8]) -> Vec<Kv> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let start = if from > prefix { from } else { prefix };
        map.range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Store for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(key).cloned())
    }

    fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
        Box::new(self.range(prefix, prefix).into_iter().map(Ok))
    }

    fn scan_from(&self, prefix: &[u8], from: &[u8]) -> KvIter<'_> {
        Box::new(self.range(prefix, from).into_iter().map(Ok))
    }

    fn first_from(&self, prefix: &[u8], from: &[u8]) -> Result<Option<Kv>, StoreError> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let start = if from > prefix { from } else { prefix };
        Ok(map
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .next()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Kv>, StoreError> {
        Ok(self.range(prefix, prefix).pop())
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in batch.ops {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn commit(&self, expected: u64, batch: WriteBatch) -> Result<u64, StoreError> {
        let _one = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        commit_unlocked(self, expected, batch)
    }

    fn insert_if_absent(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let _one = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        insert_unlocked(self, key, value)
    }
}

/// [`Store::commit`]'s check and write, for a backend that serializes its callers itself.
fn commit_unlocked<S: Store + ?Sized>(
    store: &S,
    expected: u64,
    mut batch: WriteBatch,
) -> Result<u64, StoreError> {
    let found = read_head(store)?;
    if found != expected {
        return Err(StoreError::Conflict { expected, found });
    }
    let next = expected + 1;
    batch.put(keys::HEAD.to_vec(), next.to_be_bytes().to_vec());
    store.apply(batch)?;
    store.flush()?;
    Ok(next)
}

/// [`Store::insert_if_absent`]'s check and write, for a backend that serializes its callers.
fn insert_unlocked<S: Store + ?Sized>(
    store: &S,
    key: &[u8],
    value: &[u8],
) -> Result<bool, StoreError> {
    if store.get(key)?.is_some() {
        return Ok(false);
    }
    let mut b = WriteBatch::new();
    b.put(key.to_vec(), value.to_vec());
    store.apply(b)?;
    store.flush()?;
    Ok(true)
}

/// The sled backend.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Serializes [`Store::commit`] and [`Store::insert_if_absent`] within the process;
    /// sled's directory lock keeps every other process out, so this is the whole check.
    commits: Mutex<()>,
    /// Every write holds it shared; [`Store::hold_writes`] exclusively.
    writes: RwLock<()>,
    /// The store's directory.
    dir: PathBuf,
    /// The views checkpoint set aside at the open, until taken ([`Store::take_views_checkpoint`]).
    checkpoint: Mutex<Option<PathBuf>>,
    /// Whether a batch of this open wrote a view key (`v/`) or moved the head: then a
    /// checkpoint set aside and not taken is removed at the close, else put back.
    touched: std::sync::atomic::AtomicBool,
    /// Whether [`Store::take_views_checkpoint`] was called (it hands it out once).
    handed: std::sync::atomic::AtomicBool,
}

/// Whether `batch` writes a view key or the head (what a views checkpoint depends on).
fn touches_views(batch: &WriteBatch) -> bool {
    batch.ops.contains_key(keys::HEAD)
        || batch
            .ops
            .range(keys::VIEW.to_vec()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(keys::VIEW))
}

/// The views checkpoint a clean stop writes into the store's directory (see
/// [`Store::put_views_checkpoint`]); sled ignores files it does not know.
const CHECKPOINT_FILE: &str = "views.ckpt";
/// Where an open sets the checkpoint aside until the views take it.
const CHECKPOINT_TAKEN: &str = "views.ckpt.taken";
/// Where the checkpoint is written before it is renamed into place.
const CHECKPOINT_PARTIAL: &str = "views.ckpt.partial";

/// Sets aside the views checkpoint of the store in `dir` for this open: removes what an
/// earlier open or an interrupted write left (a leftover that will not go is only warned
/// about: nothing reads it), renames the checkpoint, and makes that durable, so no later
/// open finds it unless this one puts it back. The path set aside, if there was a
/// checkpoint. An error only when the checkpoint itself can be neither set aside nor
/// removed: a later open could find it after this one changed the store.
fn set_aside_checkpoint(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    for stale in [CHECKPOINT_TAKEN, CHECKPOINT_PARTIAL] {
        let path = dir.join(stale);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Could not remove what an earlier run left of the views checkpoint; remove it by hand.")
            }
        }
    }
    let ckpt = dir.join(CHECKPOINT_FILE);
    let taken = dir.join(CHECKPOINT_TAKEN);
    let found = match std::fs::rename(&ckpt, &taken) {
        Ok(()) => Some(taken),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::warn!(path = %ckpt.display(), error = %e, "Could not set the views checkpoint aside; removing it.");
            std::fs::remove_file(&ckpt)?;
            None
        }
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(found)
}

/// The most a views checkpoint may hold: ~100 bytes a subject, far beyond a national
/// campaign's (52 MB at 500,000 schools).
const CHECKPOINT_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// How long [`SledStore::open`] waits for a store that another handle is closing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// sled's error when another handle holds the store's file lock.
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock"))
}

fn backend(op: &'static str) -> impl Fn(sled::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        message: e.to_string(),
    }
}

/// sled's cache for a serving hub (and every command but those below): the views and the
/// frontier live in memory, so the cache only needs the hot part of the log and the node
/// index.
pub const SERVING_CACHE: u64 = 64 * 1024 * 1024;

/// sled's cache for a command that reads the store once from end to end (`verify`,
/// `bulletin verify`): what it reads is not read again, so a larger cache only holds
/// memory. At 360,000 entries `verify` peaked at 272 MB with 64 MiB, 191 with 32, 158
/// with 16, 151 with 4, for the same CPU (BENCHMARKS.md, session 12).
pub const WALK_CACHE: u64 = 16 * 1024 * 1024;

/// A scan lets go of sled's iterator and seeks again from its last key once it has read
/// this many bytes since its last seek (see [`SledScan`]).
const RESEEK_BYTES: usize = 1024;

impl SledStore {
    /// Opens (or creates) the store in `dir`, with sled's cache at [`SERVING_CACHE`].
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with_cache(dir, SERVING_CACHE)
    }

    /// Opens (or creates) the store in `dir` with sled's cache at `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        SledStore::open_waiting(dir, cache_bytes, LOCK_WAIT, Checkpoint::SetAside)
    }

    /// [`SledStore::open_with_cache`], waiting up to `lock_wait` for a handle that is
    /// closing to let go of the store's lock.
    fn open_waiting(
        dir: &Path,
        cache_bytes: u64,
        lock_wait: std::time::Duration,
        checkpoint: Checkpoint,
    ) -> Result<SledStore, StoreError> {
        let config = sled::Config::new().path(dir).cache_capacity(cache_bytes);
        let damaged = |why: String| StoreError::Backend {
            op: "open",
            message: format!(
                "{}: the store's files are damaged ({why}); nothing was changed. Keep a copy of the data directory and restore the latest backup",
                dir.display()
            ),
        };
        // A kill during sled's own open leaves a snapshot file that would refuse every
        // later open; removing it loses nothing (see spacesync_http::sled_dir).
        let cleared = spacesync_http::sled_dir::remove_unfinished_snapshots(dir).map_err(|e| {
            StoreError::Backend {
                op: "open",
                message: format!(
                    "{}: could not remove the unfinished snapshot an interrupted start left: {e}; check the directory's permissions",
                    dir.display()
                ),
            }
        })?;
        for path in cleared {
            tracing::warn!(path = %path.display(), "removed the unfinished snapshot an interrupted start left; sled rebuilds it from the log");
        }
        // sled 0.34 panics on some damaged files instead of returning an error.
        let open = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).map_err(|p| {
                damaged(
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "sled failed reading them".into()),
                )
            })
        };
        let opening = std::time::Instant::now();
        let mut opened = open()?;
        // A store just closed (in this process, or by a process that is exiting) still holds
        // its file lock until sled's flusher thread lets go of it, a few milliseconds after the
        // last handle is dropped: wait a moment for that before saying another process has
        // it. A store held by a running `serve` is still refused, after LOCK_WAIT.
        let started = std::time::Instant::now();
        while opened.as_ref().is_err_and(is_lock_error) && started.elapsed() < lock_wait {
            std::thread::sleep(std::time::Duration::from_millis(50));
            opened = open()?;
        }
        let db = opened.map_err(|e| match e {
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => damaged(e.to_string()),
            e if is_lock_error(&e) => StoreError::Locked(dir.display().to_string()),
            e => StoreError::Backend {
                op: "open",
                message: format!("{}: {e}", dir.display()),
            },
        })?;
        let tree = db.open_tree("hub").map_err(backend("open"))?;
        // Only now, holding sled's lock: no other process can be writing or taking it.
        let checkpoint = match checkpoint {
            Checkpoint::SetAside => set_aside_checkpoint(dir).map_err(|e| StoreError::Backend {
                op: "open",
                message: format!(
                    "{}: could not set aside the views checkpoint of the last stop ({CHECKPOINT_FILE}): {e}; check the directory's permissions (the hub writes there)",
                    dir.display()
                ),
            })?,
            Checkpoint::Leave => None,
        };
        // sled's open reads its last snapshot (the page table) and replays the log written
        // since it; see [`SledStore::snapshot`].
        tracing::info!(
            path = %dir.display(),
            took_ms = opening.elapsed().as_millis() as u64,
            recovered = db.was_recovered(),
            "Opened the store."
        );
        Ok(SledStore {
            db,
            tree,
            commits: Mutex::new(()),
            writes: RwLock::new(()),
            dir: dir.to_path_buf(),
            checkpoint: Mutex::new(checkpoint),
            touched: std::sync::atomic::AtomicBool::new(false),
            handed: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// What an open does with the views checkpoint in the store's directory.
#[derive(Debug, Clone, Copy)]
enum Checkpoint {
    /// Sets it aside for this open (every open but the snapshot's).
    SetAside,
    /// Leaves it for the next open: [`SledStore::snapshot`], which runs right after the
    /// stop that wrote it and changes nothing the views hold.
    Leave,
}

impl SledStore {
    /// The views checkpoint this open set aside, no longer held.
    fn take_aside(&self) -> Option<PathBuf> {
        self.checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Set aside at the open (and maybe read): an open that wrote no view key and did not
        // move the head (`token create` on a stopped hub, `check`) puts it back for the next
        // start, the store being what it was written for; any other removes it. A process that ends without dropping the store leaves it set aside,
        // and the next open removes it.
        if let Some(path) = self.take_aside() {
            let untouched = !*self.touched.get_mut();
            if !(untouched && std::fs::rename(&path, self.dir.join(CHECKPOINT_FILE)).is_ok()) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// sled's cache for [`SledStore::snapshot`]'s open: it reads nothing through the cache.
const SNAPSHOT_CACHE: u64 = 1024 * 1024;

/// How long [`SledStore::snapshot`] waits for the store's lock: a handle of the same
/// process that was just dropped lets go of it only once sled has freed its page table,
/// which took 3–8 s at 9 M entries on a loaded machine (BENCHMARKS.md, session 13).
/// (`serve` does not wait for that: it hands over to a fresh process image, see
/// `cli::snapshot_after_stop`.)
const SNAPSHOT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl SledStore {
    /// Brings sled's snapshot of the store in `dir` up to now, so that the next open
    /// replays nothing: opens the store and closes it again. Returns how long that took.
    ///
    /// Why: sled 0.34 writes its snapshot (the page table, with the log position it is as
    /// of) only while it opens a store, after replaying the log written since the last
    /// one; its `snapshot_after_ops` does nothing. A hub that ingested for hours therefore
    /// replayed all of it at its next start — 16.8 GB at 9 M entries, 35.2 s before
    /// `/readyz` (BENCHMARKS.md, session 13). `serve` has it done after a clean stop, where
    /// the log just written is still in the page cache and nobody waits for an answer. A
    /// store the hub did not stop cleanly (SIGKILL, power loss) is replayed at its next
    /// open as before; one killed during this open is too (sled leaves an unfinished
    /// snapshot file, which [`SledStore::open_with_cache`] removes).
    pub fn snapshot(dir: &Path) -> Result<std::time::Duration, StoreError> {
        let started = std::time::Instant::now();
        drop(SledStore::snapshot_open(dir)?);
        Ok(started.elapsed())
    }

    /// [`SledStore::snapshot`]'s open, the store handed back: sled has written the
    /// snapshot by the time it returns. A process that ends right after may forget the
    /// handle instead of dropping it: dropping frees sled's page table piece by piece,
    /// seconds at 9 M entries (the snapshot is on disk either way).
    pub fn snapshot_open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_waiting(dir, SNAPSHOT_CACHE, SNAPSHOT_LOCK_WAIT, Checkpoint::Leave)
    }
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(key)
            .map_err(backend("get"))?
            .map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
        self.scan_from(prefix, prefix)
    }

    fn scan_from(&self, prefix: &[u8], from: &[u8]) -> KvIter<'_> {
        let start = if from > prefix { from } else { prefix };
        Box::new(SledScan {
            tree: &self.tree,
            prefix: prefix.to_vec(),
            after: Bound::Included(sled::IVec::from(start)),
            iter: None,
            since_seek: 0,
            done: false,
        })
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Kv>, StoreError> {
        match self.tree.scan_prefix(prefix).next_back() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r.map_err(backend("scan"))?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let _writing = self.writes.read().unwrap_or_else(|p| p.into_inner());
        self.apply_held(batch)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend("flush"))
    }

    fn commit(&self, expected: u64, mut batch: WriteBatch) -> Result<u64, StoreError> {
        let _writing = self.writes.read().unwrap_or_else(|p| p.into_inner());
        let _one = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        // commit_unlocked's steps, writing through apply_held: the shared hold is taken
        // once (taking it again could wait behind a backup waiting for this one).
        let found = read_head(self)?;
        if found != expected {
            return Err(StoreError::Conflict { expected, found });
        }
        let next = expected + 1;
        batch.put(keys::HEAD.to_vec(), next.to_be_bytes().to_vec());
        self.apply_held(batch)?;
        self.flush()?;
        Ok(next)
    }

    fn insert_if_absent(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let _writing = self.writes.read().unwrap_or_else(|p| p.into_inner());
        let _one = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        if self.get(key)?.is_some() {
            return Ok(false);
        }
        let mut b = WriteBatch::new();
        b.put(key.to_vec(), value.to_vec());
        self.apply_held(b)?;
        self.flush()?;
        Ok(true)
    }

    fn hold_writes(&self) -> Option<std::sync::RwLockWriteGuard<'_, ()>> {
        Some(self.writes.write().unwrap_or_else(|p| p.into_inner()))
    }

    fn take_views_checkpoint(&self) -> Option<Vec<u8>> {
        use std::sync::atomic::Ordering;
        if self.handed.swap(true, Ordering::Relaxed) {
            return None;
        }
        // Stays set aside: the close puts it back or removes it (see `Drop`).
        let path = self
            .checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        // Only a regular file of a sane size: a FIFO would hang the start, a link to a
        // device fill the memory.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= CHECKPOINT_MAX => {}
            Ok(m) => {
                tracing::warn!(path = %path.display(), file_type = ?m.file_type(), bytes = m.len(), "The views checkpoint is not a regular file of a sane size; not reading it.");
                self.discard_views_checkpoint();
                return None;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Cannot read the views checkpoint of the last stop; reading the views from the store instead.");
                return None;
            }
        }
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Could not read the views checkpoint of the last stop; reading the views from the store instead.");
                None
            }
        }
    }

    fn discard_views_checkpoint(&self) {
        if let Some(path) = self.take_aside() {
            let _ = std::fs::remove_file(path);
        }
    }

    fn put_views_checkpoint(&self, bytes: &[u8]) -> Result<bool, StoreError> {
        // One set aside by this open is older than this one: never put back.
        self.discard_views_checkpoint();
        let io = |e: std::io::Error| StoreError::Backend {
            op: "views checkpoint",
            message: format!(
                "{}: could not write {CHECKPOINT_FILE}: {e}; the next start reads the views from the store instead (slower, same figures)",
                self.dir.display()
            ),
        };
        let partial = self.dir.join(CHECKPOINT_PARTIAL);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            // The summaries are the campaign's figures: private, as sled's own files.
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&partial).map_err(io)?;
        std::io::Write::write_all(&mut f, bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&partial, self.dir.join(CHECKPOINT_FILE)).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(true)
    }
}

impl SledStore {
    /// [`Store::apply`] by a caller holding `writes` shared.
    fn apply_held(&self, batch: WriteBatch) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if !self.touched.load(Ordering::Relaxed) && touches_views(&batch) {
            self.touched.store(true, Ordering::Relaxed);
        }
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(backend("apply"))
    }
}

/// A forward scan of the sled tree that seeks again (a new iterator from its last key)
/// every [`RESEEK_BYTES`] read, instead of walking one iterator to the end.
///
/// Why: sled 0.34 counts a page against its cache only when the page is looked up, and
/// only in batches of 64 lookups per shard of 256 (`lru.rs`): one iterator looks up each
/// leaf node once, so a long scan leaves up to 16,128 nodes read but not yet counted —
/// resident beyond the cache, and more the larger the nodes. With the log packed (nodes of
/// 8–17 packs, ~36 KB) `bulletin verify` held ~210 MB of sled nodes with a 64 MiB cache at 360,000
/// entries (heaptrack, BENCHMARKS.md session 12). Each seek looks the node up again, so a
/// node is counted about once per [`RESEEK_BYTES`] of it read and the cache holds to its
/// size. Like sled's iterator, the scan is not a snapshot: a key written behind it is not
/// seen, one written ahead of it is seen once the scan has sought again (the node it walks
/// is a copy); none is read twice or out of order.
struct SledScan<'a> {
    tree: &'a sled::Tree,
    prefix: Vec<u8>,
    /// Where the next seek starts: the scan's start, then after the last key returned.
    after: Bound<sled::IVec>,
    /// The iterator since the last seek; `None` when the next item seeks again.
    iter: Option<sled::Iter>,
    /// Bytes of keys and values read since the last seek.
    since_seek: usize,
    /// Past the prefix, the end, or an error.
    done: bool,
}

impl Iterator for SledScan<'_> {
    type Item = Result<Kv, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.iter.is_none() {
            self.iter = Some(self.tree.range((self.after.clone(), Bound::Unbounded)));
        }
        let (k, v) = match self.iter.as_mut()?.next() {
            None => {
                self.done = true;
                return None;
            }
            Some(Err(e)) => {
                self.done = true;
                return Some(Err(backend("scan")(e)));
            }
            Some(Ok(kv)) => kv,
        };
        if !k.starts_with(&self.prefix) {
            self.done = true;
            self.iter = None;
            return None;
        }
        self.since_seek += k.len() + v.len();
        if self.since_seek >= RESEEK_BYTES {
            self.since_seek = 0;
            self.iter = None;
        }
        let kv = (k.to_vec(), v.to_vec());
        self.after = Bound::Excluded(k);
        Some(Ok(kv))
    }
}

/// The key layout. Integers are big-endian so keys sort numerically.
pub mod keys {
    use spacesync_shared::SourceId;

    /// `log/<index>` → the records of a write batch's run of leaves ending at `index`,
    /// packed into one value ([`crate::log::pack`]), or the one record of leaf `index` in
    /// the binary layout of [`crate::log::record`] (hubs before session 11 wrote one per
    /// leaf; those of older hubs are JSON; all still read).
    pub const LOG: &[u8] = b"log/";
    /// `node/<level><index>` → 32-byte perfect-subtree hash, from level
    /// [`crate::log::FIRST_STORED_LEVEL`] up (stores written before also hold the lower ones).
    pub const NODE: &[u8] = b"node/";
    /// `meta/frontier` → the tree frontier.
    pub const FRONTIER: &[u8] = b"meta/frontier";
    /// `meta/checkpoint` → the latest signed checkpoint note.
    pub const CHECKPOINT: &[u8] = b"meta/checkpoint";
    /// `meta/hub` → the public key line of the hub whose state this is, written by `init`
    /// into a PostgreSQL database (claimed only if empty; a hub of another key is refused).
    pub const HUB: &[u8] = b"meta/hub";
    /// `meta/head` → the serialization point's head (u64, big-endian): moved by one by
    /// every [`super::Store::commit`] (sled and memory; PostgreSQL keeps it in a row of its
    /// own, `spacesync_head`).
    pub const HEAD: &[u8] = b"meta/head";
    /// `meta/migrating` → the progress record of a `migrate --to` copy not finished yet
    /// (`crate::migrate`); a database holding it is not opened to serve.
    pub const MIGRATING: &[u8] = b"meta/migrating";
    /// `meta/hubseq` → seq of the hub's own last entry.
    pub const HUB_SEQ: &[u8] = b"meta/hubseq";
    /// The latest hub-clock instant at which a signed request was accepted: requests
    /// signed more than a window before it are refused even if the clock has gone back
    /// (their nonces may have been pruned).
    pub const NONCE_HIGH_WATER: &[u8] = b"meta/nonce-hw";
    /// `src/<source>\0<last seq>` → one run of a batch's entries of the source: their
    /// first seq and log index, receive time and hashes (layout in [`crate::log::index`];
    /// hubs before session 9 wrote one 48-byte value per entry, which still reads).
    pub const SRC: &[u8] = b"src/";
    /// `reg/<source>` → the source's registry record (JSON).
    pub const REG: &[u8] = b"reg/";
    /// `tok/<sha256 hex>` → a token record (JSON).
    pub const TOK: &[u8] = b"tok/";
    /// `alarm/<n>` → an alarm (JSON).
    pub const ALARM: &[u8] = b"alarm/";
    /// `v/…` → the merged views (see [`crate::views`]): `v/m` their layout and baseline,
    /// `v/n` their position; `v/c/<index>` space counts in blocks, each linked to its
    /// subject's previous one; `v/s/<subject>` each subject's merged summary; `v/i/<index>`
    /// ledger items; `v/a/<source>` per-source activity; `v/x/<index>` deadline extensions.
    pub const VIEW: &[u8] = b"v/";
    /// `n/<sha256 hex of nonce>` → when the signed request it came with expires (i64 ms,
    /// big-endian): replay protection that survives a restart (see [`crate::auth`]).
    pub const NONCE: &[u8] = b"n/";
    /// `cos/<size, u64 big-endian><source>` → a witness's cosignature of the checkpoint of
    /// that size (JSON, [`crate::witness::Kept`]).
    pub const COSIG: &[u8] = b"cos/";
    /// `cosrc/<source>` → what the hub knows of a source as a witness (JSON,
    /// [`crate::witness::SourceWitness`]).
    pub const COSIG_SOURCE: &[u8] = b"cosrc/";
    /// `cospin/<size, u64 big-endian>` → the number of a bulletin whose checkpoint has that
    /// size (u64 big-endian): its cosignatures are kept (see [`crate::witness::prune`]).
    pub const COSIG_PIN: &[u8] = b"cospin/";

    /// Key of log leaf `index`.
    pub fn log(index: u64) -> Vec<u8> {
        [LOG, &index.to_be_bytes()].concat()
    }

    /// Key of a stored tree node.
    pub fn node(level: u8, index: u64) -> Vec<u8> {
        [NODE, &[level], &index.to_be_bytes()].concat()
    }

    /// Prefix of a source's entry index.
    pub fn src_prefix(source: &SourceId) -> Vec<u8> {
        [SRC, source.as_str().as_bytes(), b"\0"].concat()
    }

    /// Key of the index run whose last entry is the source's `seq`.
    pub fn src(source: &SourceId, seq: u64) -> Vec<u8> {
        [src_prefix(source).as_slice(), &seq.to_be_bytes()].concat()
    }

    /// Key of a source's registry record.
    pub fn reg(source: &SourceId) -> Vec<u8> {
        [REG, source.as_str().as_bytes()].concat()
    }

    /// Key of a token record.
    pub fn tok(hash_hex: &str) -> Vec<u8> {
        [TOK, hash_hex.as_bytes()].concat()
    }

    /// Key of a seen signed-request nonce.
    pub fn nonce(hash_hex: &str) -> Vec<u8> {
        [NONCE, hash_hex.as_bytes()].concat()
    }

    /// Key of alarm `n`.
    pub fn alarm(n: u64) -> Vec<u8> {
        [ALARM, &n.to_be_bytes()].concat()
    }

    /// The log index a `src/` value points at (its first 8 bytes).
    pub fn src_log_index(value: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(value.get(0..8)?.try_into().ok()?))
    }

    /// Reads a big-endian u64 from the end of a key.
    pub fn tail_u64(key: &[u8]) -> Option<u64> {
        let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
        Some(u64::from_be_bytes(tail))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn batches_are_atomic_and_scans_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::new();
        for i in [3u64, 1, 2] {
            b.put(keys::log(i), i.to_string());
        }
        b.put(b"other".to_vec(), b"x".to_vec());
        s.apply(b).unwrap();
        s.flush().unwrap();
        let got: Vec<u64> = s
            .scan(keys::LOG)
            .map(|r| keys::tail_u64(&r.unwrap().0).unwrap())
            .collect();
        assert_eq!(got, [1, 2, 3]);
        let last = s.last(keys::LOG).unwrap().unwrap();
        assert_eq!(keys::tail_u64(&last.0), Some(3));
        let mut b = WriteBatch::new();
        b.delete(keys::log(2));
        s.apply(b).unwrap();
        assert_eq!(s.get(&keys::log(2)).unwrap(), None);
    }

    /// While a backup holds the store's writes, every kind of write (apply, commit,
    /// insert_if_absent) waits, and goes through once the hold ends.
    #[test]
    fn writes_wait_while_held_and_go_through_after() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let held = s.hold_writes().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let writers: Vec<_> = (0..3)
            .map(|kind| {
                let (s, tx) = (s.clone(), tx.clone());
                std::thread::spawn(move || {
                    let mut b = WriteBatch::new();
                    b.put(format!("k{kind}").into_bytes(), b"v".to_vec());
                    let done = match kind {
                        0 => s.apply(b).is_ok(),
                        1 => s.commit(0, b).is_ok(),
                        _ => s.insert_if_absent(b"k2", b"v").unwrap_or(false),
                    };
                    let _ = tx.send((kind, done));
                })
            })
            .collect();
        // None of them gets through while the hold lasts (a generous wait: this checks
        // that they block, not how fast they are).
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "a write went through a held store"
        );
        assert_eq!(s.get(b"k0").unwrap(), None);
        drop(held);
        let mut got: Vec<(i32, bool)> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, [(0, true), (1, true), (2, true)]);
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(s.head().unwrap(), 1);
        for k in ["k0", "k1", "k2"] {
            assert!(s.get(k.as_bytes()).unwrap().is_some(), "{k}");
        }
    }

    fn pairs(it: KvIter<'_>) -> Vec<(String, String)> {
        it.map(|r| {
            let (k, v) = r.unwrap();
            (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
        })
        .collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The batch's last word on a key wins; an overlay reads the store as it will be once
    /// the batch is applied, and a hidden prefix reads from the batch alone. (PostgreSQL:
    /// `pg::tests`, which calls [`overlay_contract`], so this module does not import `pg`.)
    #[test]
    fn an_overlay_reads_the_store_as_the_batch_will_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path()).unwrap();
        let mem = MemStore::new();
        for s in [&sled as &dyn Store, &mem] {
            overlay_contract(s);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// sled's scans (which seek again every [`RESEEK_BYTES`]) give what the in-memory
        /// store's give, for values on both sides of that size, any prefix and start.
        #[test]
        fn sled_scans_read_as_the_model(
            pairs in proptest::collection::btree_map(
                (0u8..3, proptest::prelude::any::<u16>()),
                0usize..2500,
                0..300,
            ),
            scans in proptest::collection::vec((0u8..4, proptest::prelude::any::<u16>()), 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let sled = SledStore::open(dir.path()).unwrap();
            let mem = MemStore::new();
            let key = |p: u8, n: u16| [&[b'a' + p, b'/'][..], &n.to_be_bytes()].concat();
            for s in [&sled as &dyn Store, &mem] {
                let mut b = WriteBatch::new();
                for ((p, n), len) in &pairs {
                    b.put(key(*p, *n), vec![*p; *len]);
                }
                s.apply(b).unwrap();
            }
            for (p, from) in scans {
                let prefix = [b'a' + p, b'/'];
                let from = key(p, from);
                let got: Vec<Kv> = sled.scan_from(&prefix, &from).map(Result::unwrap).collect();
                let want: Vec<Kv> = mem.scan_from(&prefix, &from).map(Result::unwrap).collect();
                proptest::prop_assert_eq!(got, want);
                let got: Vec<Kv> = sled.scan(&prefix).map(Result::unwrap).collect();
                let want: Vec<Kv> = mem.scan(&prefix).map(Result::unwrap).collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    /// A scan that seeks again goes on after its last key: a key written ahead of it
    /// during the scan is read (the scan seeks again every two values here), one written
    /// behind it is not, none is read twice.
    #[test]
    fn a_sled_scan_goes_on_after_its_last_key_across_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::new();
        for i in (0..40u64).step_by(2) {
            b.put(keys::log(i), vec![0; RESEEK_BYTES / 2]);
        }
        s.apply(b).unwrap();
        let mut scan = s.scan(keys::LOG);
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(keys::tail_u64(&scan.next().unwrap().unwrap().0).unwrap());
        }
        let mut b = WriteBatch::new();
        b.put(keys::log(1), vec![1]);
        b.put(keys::log(33), vec![1]);
        s.apply(b).unwrap();
        got.extend(scan.map(|r| keys::tail_u64(&r.unwrap().0).unwrap()));
        let mut want: Vec<u64> = (0..40).step_by(2).collect();
        want.push(33);
        want.sort();
        assert_eq!(got, want);
    }

    /// A store whose last handle is being dropped (sled lets go of its file lock a moment
    /// later) is waited for; one held the whole time is refused as in use. (Reopening right
    /// after a drop failed now and then with "in use" before the wait.)
    #[test]
    fn a_store_being_closed_is_waited_for_and_a_held_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStore::open(dir.path()).unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = SledStore::open(dir.path());
        closer.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
        let started = std::time::Instant::now();
        match SledStore::open(dir.path()) {
            Err(StoreError::Locked(d)) => assert_eq!(d, dir.path().display().to_string()),
            other => panic!("a held store opened twice: {:?}", other.err()),
        }
        assert!(started.elapsed() >= LOCK_WAIT);
    }

    /// The serialization point on sled and in memory (PostgreSQL: `pg::tests`, which calls
    /// [`commit_contract`]).
    #[test]
    fn a_commit_lands_only_at_the_head_it_was_computed_from() {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path()).unwrap();
        let mem = MemStore::new();
        for s in [&sled as &dyn Store, &mem] {
            commit_contract(s);
        }
    }

    /// The serialization point's contract: a commit at the head moves it by one and
    /// writes its batch; one at a head that moved writes nothing and says where the head
    /// is; racing committers at one head: exactly one lands. Claims: the first wins.
    /// `s` starts empty.
    pub(crate) fn commit_contract(s: &dyn Store) {
        assert_eq!(s.head().unwrap(), 0);
        let mut b = WriteBatch::new();
        b.put(b"log/a".to_vec(), b"1".to_vec());
        assert_eq!(s.commit(0, b).unwrap(), 1);
        assert_eq!(s.head().unwrap(), 1);
        let mut late = WriteBatch::new();
        late.put(b"log/b".to_vec(), b"2".to_vec());
        late.delete(b"log/a".to_vec());
        match s.commit(0, late) {
            Err(StoreError::Conflict {
                expected: 0,
                found: 1,
            }) => {}
            other => panic!("a commit at a moved head: {other:?}"),
        }
        assert_eq!(s.get(b"log/a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(b"log/b").unwrap(), None);
        assert_eq!(s.head().unwrap(), 1);
        // Eight writers computed from head 1 at once: one lands, seven are told.
        let landed: Vec<bool> = std::thread::scope(|t| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    t.spawn(move || {
                        let mut b = WriteBatch::new();
                        b.put(b"race".to_vec(), vec![i]);
                        match s.commit(1, b) {
                            Ok(2) => true,
                            // `found` is 2, or 1 when the engine aborted the racing
                            // transaction before it could read the head (SERIALIZABLE).
                            Err(StoreError::Conflict { expected: 1, .. }) => false,
                            other => panic!("racing commit: {other:?}"),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(landed.iter().filter(|l| **l).count(), 1, "{landed:?}");
        let winner = landed.iter().position(|l| *l).unwrap() as u8;
        assert_eq!(s.get(b"race").unwrap(), Some(vec![winner]));
        assert_eq!(s.head().unwrap(), 2);
        // Claims: the first insert wins, the value stays the first one's.
        let claimed: Vec<bool> = std::thread::scope(|t| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| t.spawn(move || s.insert_if_absent(b"n/x", &[i]).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(claimed.iter().filter(|c| **c).count(), 1, "{claimed:?}");
        let first = claimed.iter().position(|c| *c).unwrap() as u8;
        assert_eq!(s.get(b"n/x").unwrap(), Some(vec![first]));
        assert!(!s.insert_if_absent(b"n/x", b"again").unwrap());
        assert_eq!(s.head().unwrap(), 2, "a claim does not move the head");
    }

    /// The store contract every backend passes: overlay reads and scans agree with the
    /// store once the batch is applied; `s` starts empty.
    pub(crate) fn overlay_contract(s: &dyn Store) {
        {
            let mut b = WriteBatch::new();
            for (k, v) in [("a/1", "s1"), ("a/2", "s2"), ("a/4", "s4"), ("b/1", "t1")] {
                b.put(k.as_bytes().to_vec(), v.as_bytes().to_vec());
            }
            s.apply(b).unwrap();

            let mut batch = WriteBatch::new();
            batch.put(b"a/3".to_vec(), b"first".to_vec());
            batch.put(b"a/3".to_vec(), b"n3".to_vec());
            batch.delete(b"a/2".to_vec());
            batch.put(b"a/4".to_vec(), b"n4".to_vec());
            batch.delete(b"a/5".to_vec());
            batch.put(b"a/5".to_vec(), b"n5".to_vec());
            batch.put(b"c/1".to_vec(), b"u1".to_vec());
            assert_eq!(batch.len(), 5);
            assert_eq!(batch.pending(b"a/2"), Some(None));
            assert_eq!(batch.pending(b"a/3"), Some(Some(&b"n3"[..])));
            assert_eq!(batch.pending(b"a/1"), None);

            let o = Overlay::new(s, &batch);
            assert_eq!(o.read(b"a/1").unwrap(), Some(b"s1".to_vec()));
            assert_eq!(o.read(b"a/2").unwrap(), None);
            assert_eq!(o.read(b"a/4").unwrap(), Some(b"n4".to_vec()));
            assert_eq!(
                pairs(o.read_prefix(b"a/")),
                kv(&[("a/1", "s1"), ("a/3", "n3"), ("a/4", "n4"), ("a/5", "n5")])
            );
            assert_eq!(
                pairs(o.read_prefix(b"")),
                kv(&[
                    ("a/1", "s1"),
                    ("a/3", "n3"),
                    ("a/4", "n4"),
                    ("a/5", "n5"),
                    ("b/1", "t1"),
                    ("c/1", "u1"),
                ])
            );
            let hidden = Overlay::hiding(s, &batch, b"a/");
            assert_eq!(hidden.read(b"a/1").unwrap(), None);
            assert_eq!(hidden.read(b"b/1").unwrap(), Some(b"t1".to_vec()));
            assert_eq!(
                pairs(hidden.read_prefix(b"a/")),
                kv(&[("a/3", "n3"), ("a/4", "n4"), ("a/5", "n5")])
            );
            assert_eq!(
                pairs(hidden.read_prefix(b"")),
                kv(&[
                    ("a/3", "n3"),
                    ("a/4", "n4"),
                    ("a/5", "n5"),
                    ("b/1", "t1"),
                    ("c/1", "u1"),
                ])
            );

            // Applied, the store reads as the overlay did.
            s.apply(batch).unwrap();
            assert_eq!(
                pairs(s.scan(b"a/")),
                kv(&[("a/1", "s1"), ("a/3", "n3"), ("a/4", "n4"), ("a/5", "n5")])
            );
            assert_eq!(
                pairs(s.scan_from(b"a/", b"a/3")),
                kv(&[("a/3", "n3"), ("a/4", "n4"), ("a/5", "n5")])
            );
            assert_eq!(pairs(s.scan_from(b"a/", b"a/")).len(), 4);
            assert_eq!(pairs(s.scan_from(b"a/", b"b")).len(), 0);
            assert_eq!(
                s.last(b"a/").unwrap(),
                Some((b"a/5".to_vec(), b"n5".to_vec()))
            );
        }
    }
}
