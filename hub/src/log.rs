//! The global append-only log and its RFC 9162 Merkle tree.
//!
//! Every accepted entry (and every hub-signed entry, such as a deadline extension) is one
//! leaf. The leaf data is `PAE(payloadType, payload)` — exactly the bytes that were
//! signed — so a province can prove inclusion of what it signed without depending on how
//! the hub lays out JSON. Perfect-subtree nodes are stored as they complete, so proofs
//! take O(log n) lookups and appends never rescan the log. Records are stored in the
//! compact binary layout of [`record`], a write batch's run of leaves packed into one value
//! ([`pack`]); the one-record values of older hubs (binary or JSON) still read.

pub mod index;
pub mod pack;
pub mod record;

use ed25519_dalek::SigningKey;
use spacesync_shared::merkle::{self, Checkpoint, Frontier, Hash, NodeSource};

use crate::store::{KvIter, Store, StoreError, WriteBatch, keys};

use pack::{PackWriter, Stored};

// A pack never spans two of the lowest stored tree nodes.
const _: () = assert!(pack::PACK_LEAVES == 1 << FIRST_STORED_LEVEL);
// A pack's tag is never a record's version byte.
const _: () = assert!(pack::PACK != record::VERSION_1);
pub use record::{LogRecord, RecordError, RecordRef, leaf_hash};

/// The tree's in-memory state, mirrored in the store.
#[derive(Clone)]
pub struct Log {
    frontier: Frontier,
    /// The batch's leaves not yet added to it: written as one value when the pack is full
    /// and by [`Log::put_frontier`], which ends every batch.
    pack: PackWriter,
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tree cannot grow (2^64 leaves) or its stored frontier is damaged.
    #[error("the log's tree state is damaged: {0}")]
    Tree(String),
    /// A proof request is out of range.
    #[error("{0}")]
    Proof(String),
    /// A record cannot be stored (a field beyond what the layout holds).
    #[error("the entry with seq {seq} cannot be stored: {error}")]
    Record {
        /// The entry's seq.
        seq: u64,
        /// What is too long.
        error: RecordError,
    },
}

impl Log {
    /// Loads the frontier from the store (empty tree when none).
    pub fn load(store: &dyn Store) -> Result<Log, LogError> {
        let frontier = match store.get(keys::FRONTIER)? {
            None => Frontier::new(),
            Some(b) => Frontier::from_bytes(&b).map_err(|e| LogError::Tree(e.to_string()))?,
        };
        Ok(Log {
            frontier,
            pack: if store.compresses_log() {
                PackWriter::default()
            } else {
                PackWriter::plain()
            },
        })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Current root.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Adds `record` as the next leaf; returns its index. The record goes into the batch's
    /// pack, which reaches `batch` when full and, at the latest, with
    /// [`Log::put_frontier`]: every batch of appends must end with it (one batch per
    /// frontier write, all of its appends into that batch). The in-memory frontier moves
    /// at once: callers that fail to apply the batch must reload with [`Log::load`] (or put
    /// back the `Log` they cloned before the batch).
    pub fn append(
        &mut self,
        batch: &mut WriteBatch,
        record: RecordRef<'_>,
    ) -> Result<u64, LogError> {
        let index = self.frontier.size();
        self.pack
            .push(index, record)
            .map_err(|e| LogError::Record {
                seq: record.seq,
                error: e,
            })?;
        let nodes = match self.frontier.push(leaf_hash(record.envelope)) {
            Ok(nodes) => nodes,
            Err(e) => {
                self.pack.pop();
                return Err(LogError::Tree(e.to_string()));
            }
        };
        for n in nodes.iter().filter(|n| n.level >= FIRST_STORED_LEVEL) {
            batch.put(keys::node(n.level, n.index), n.hash.to_vec());
        }
        if self.pack.full() {
            self.pack.write(batch);
        }
        Ok(index)
    }

    /// Adds to `batch` the leaves appended since the last pack was written, and the
    /// frontier as it now stands: once per batch, after its appends.
    pub fn put_frontier(&mut self, batch: &mut WriteBatch) {
        self.pack.write(batch);
        batch.put(keys::FRONTIER.to_vec(), self.frontier.to_bytes());
    }

    /// Signs a checkpoint of the current tree.
    pub fn checkpoint(&self, origin: &str, key: &SigningKey) -> Result<String, LogError> {
        let cp = Checkpoint {
            origin: origin.to_string(),
            size: self.size(),
            root: self.root(),
        };
        merkle::sign_checkpoint(&cp, origin, key).map_err(|e| LogError::Tree(e.to_string()))
    }
}

/// The index a `log/` key names, or why it names none.
fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    keys::tail_u64(key)
        .filter(|_| key.len() == keys::LOG.len() + 8)
        .ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            message: "log key without an index".into(),
        })
}

/// The stored value that holds leaf `index` if any: the first at or after its key (one
/// point lookup), which may start after `index` (then the leaf is not stored).
fn value_at(store: &dyn Store, index: u64) -> Result<Option<Stored>, StoreError> {
    let Some((k, v)) = store.first_from(keys::LOG, &keys::log(index))? else {
        return Ok(None);
    };
    let last = key_index(&k)?;
    Stored::parse(last, v)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            key: format!("log/{last}"),
            message: e.to_string(),
        })
}

fn damaged_record(index: u64, e: RecordError) -> StoreError {
    StoreError::Corrupt {
        key: format!("log/{index}"),
        message: e.to_string(),
    }
}

/// Reads one leaf.
pub fn read(store: &dyn Store, index: u64) -> Result<Option<LogRecord>, StoreError> {
    match value_at(store, index)?.and_then(|v| v.record(index)) {
        None => Ok(None),
        Some(r) => r.map(Some).map_err(|e| damaged_record(index, e)),
    }
}

/// The stored bytes of leaf `index`'s record, inside its pack or alone (for tools and
/// tests that inspect or damage the log).
pub fn record_bytes(store: &dyn Store, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(value_at(store, index)?.and_then(|v| v.record_bytes(index).map(<[u8]>::to_vec)))
}

/// Stores `bytes` (any bytes) as leaf `index`'s record, or removes the leaf (`None`),
/// rewriting the value that holds it: a pack loses the leaf by being split in two. A leaf
/// no value holds is written as a value of its own. For tools and tests that damage the
/// log; the tree and the index are left as they are.
pub fn replace_record(
    store: &dyn Store,
    index: u64,
    bytes: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    match value_at(store, index)?.filter(|v| v.first() <= index) {
        None => match bytes {
            Some(b) => batch.put(keys::log(index), b),
            None => batch.delete(keys::log(index)),
        },
        Some(v) => {
            batch.delete(keys::log(v.last()));
            let held = |i| v.record_bytes(i).unwrap_or_default().to_vec();
            let before: Vec<Vec<u8>> = (v.first()..index).map(held).collect();
            let after: Vec<Vec<u8>> = (index + 1..=v.last()).map(held).collect();
            match bytes {
                Some(b) => {
                    let all = [before, vec![b], after].concat();
                    pack::put_raw(&mut batch, v.first(), &all);
                }
                None => {
                    pack::put_raw(&mut batch, v.first(), &before);
                    pack::put_raw(&mut batch, index + 1, &after);
                }
            }
        }
    }
    store.apply(batch)
}

/// Every leaf in order.
pub fn iter(store: &dyn Store) -> Leaves<'_> {
    iter_from(store, 0)
}

/// The log's records from leaf `from` on, in order: the stored values from the one that
/// holds `from`, each opened in turn. A value that does not read is one error (its leaves
/// are not known), a record that does not read an error at its leaf; the walk goes on
/// after either.
pub fn iter_from(store: &dyn Store, from: u64) -> Leaves<'_> {
    Leaves {
        values: store.scan_from(keys::LOG, &keys::log(from)),
        from,
        open: None,
    }
}

/// The leaves of the stored values a scan yields ([`iter`], [`iter_from`]).
pub struct Leaves<'a> {
    values: KvIter<'a>,
    /// Leaves before it are skipped (the first value may start before).
    from: u64,
    /// The value being read, and its next leaf.
    open: Option<(Stored, u64)>,
}

impl Leaves<'_> {
    /// The next leaf, its record decoded into `rec` (reusing what `rec` holds: see
    /// [`record::decode_into`]): its index, or why it does not read (then `rec` holds parts
    /// of it, not to be read).
    pub fn next_into(&mut self, rec: &mut LogRecord) -> Option<Result<u64, StoreError>> {
        loop {
            if let Some((v, at)) = &mut self.open {
                let index = *at;
                if let Some(r) = v.record_into(index, rec) {
                    if index < v.last() {
                        *at = index + 1;
                    } else {
                        self.open = None;
                    }
                    return Some(r.map(|()| index).map_err(|e| damaged_record(index, e)));
                }
                self.open = None;
            }
            let (k, bytes) = match self.values.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e)),
            };
            let last = match key_index(&k) {
                Ok(last) => last,
                Err(e) => return Some(Err(e)),
            };
            match Stored::parse(last, bytes) {
                Ok(v) => {
                    let start = v.first().max(self.from);
                    self.open = Some((v, start));
                }
                Err(e) => {
                    return Some(Err(StoreError::Corrupt {
                        key: format!("log/{last}"),
                        message: e.to_string(),
                    }));
                }
            }
        }
    }
}

impl Iterator for Leaves<'_> {
    type Item = Result<(u64, LogRecord), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut rec = LogRecord::empty();
        let index = self.next_into(&mut rec)?;
        Some(index.map(|index| (index, rec)))
    }
}

/// The lowest tree level whose nodes are stored (`node/…`). A node below it covers at most
/// [`1 << FIRST_STORED_LEVEL`] leaves and is computed from their records when a proof needs
/// it — a proof needs at most one per level, so at most fifteen record reads, each of one
/// pack of at most sixteen leaves ([`pack`]) —
/// which spares the writer all but an eighth of a key per entry (levels 2 and 3, stored
/// until session 9, were three eighths of a key an entry; levels 0 and 1, stored before,
/// one and a half). Stores written before keep those levels, and a node stored at a lower
/// level is read (and checked by `verify`) as before.
pub const FIRST_STORED_LEVEL: u8 = 4;

/// The lowest level below [`FIRST_STORED_LEVEL`] at which the store holds any node (a
/// store written by an older hub), else [`FIRST_STORED_LEVEL`]: `verify` looks up the
/// nodes of the levels below it only where some may be stored.
pub fn lowest_stored_level(store: &dyn Store) -> Result<u8, StoreError> {
    for level in 0..FIRST_STORED_LEVEL {
        let prefix = [keys::NODE, &[level]].concat();
        if store.scan(&prefix).next().transpose()?.is_some() {
            return Ok(level);
        }
    }
    Ok(FIRST_STORED_LEVEL)
}

/// Stored nodes as a [`NodeSource`] for proofs; nodes below [`FIRST_STORED_LEVEL`] that are
/// not stored are computed from the log's records.
pub struct StoredNodes<'a>(pub &'a dyn Store);

impl NodeSource for StoredNodes<'_> {
    type Error = StoreError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let key = || format!("node/{level}/{index}");
        match self.0.get(&keys::node(level, index))? {
            Some(v) => v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                key: key(),
                message: "tree node is not 32 bytes".into(),
            }),
            None if level == 0 => match read(self.0, index)? {
                Some(rec) => Ok(rec.leaf_hash()),
                None => Err(StoreError::Corrupt {
                    key: format!("log/{index}"),
                    message: "missing log leaf, which a proof needs".into(),
                }),
            },
            None if level < FIRST_STORED_LEVEL => {
                let child = |i| self.node(level - 1, i);
                Ok(merkle::node_hash(
                    &child(2 * index)?,
                    &child(2 * index + 1)?,
                ))
            }
            None => Err(StoreError::Corrupt {
                key: key(),
                message: "missing tree node".into(),
            }),
        }
    }
}

/// Inclusion proof of leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof(store: &dyn Store, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
    merkle::inclusion_proof(&StoredNodes(store), index, size).map_err(|e| match e {
        merkle::ProofBuildError::Source(s) => LogError::Store(s),
        other => LogError::Proof(other.to_string()),
    })
}

/// Consistency proof between tree sizes `old` and `new`.
pub fn consistency_proof(store: &dyn Store, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
    merkle::consistency_proof(&StoredNodes(store), old, new).map_err(|e| match e {
        merkle::ProofBuildError::Source(s) => LogError::Store(s),
        other => LogError::Proof(other.to_string()),
    })
}

/// Root of the tree of `size` leaves.
pub fn root_at(store: &dyn Store, size: u64) -> Result<Hash, StoreError> {
    merkle::root_at(&StoredNodes(store), size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use chrono::DateTime;
    use proptest::prelude::*;
    use spacesync_shared::dsse::Envelope;
    use spacesync_shared::merkle::MemoryTree;

    /// The record of leaf `i` in these tests (its payload names it, of a length that varies).
    fn record(i: u64) -> LogRecord {
        LogRecord {
            received_at: DateTime::from_timestamp(1_546_394_400 + i as i64, 0).unwrap_or_default(),
            source: None,
            seq: i + 1,
            envelope: Envelope {
                payload_type: "text/plain".into(),
                payload: format!("leaf {i} {}", "x".repeat((i % 7) as usize)).into_bytes(),
                signatures: Vec::new(),
            },
        }
    }

    /// Appends `n` leaves as one batch.
    fn batch(store: &dyn Store, log: &mut Log, n: u64) {
        let mut wb = WriteBatch::new();
        for _ in 0..n {
            let rec = record(log.size());
            let at = log.append(&mut wb, rec.as_ref()).expect("append");
            assert_eq!(at, rec.seq - 1);
        }
        log.put_frontier(&mut wb);
        store.apply(wb).expect("apply");
    }

    fn reads_as(store: &dyn Store, size: u64) {
        for i in 0..size {
            assert_eq!(read(store, i).expect("read"), Some(record(i)), "leaf {i}");
        }
        assert_eq!(read(store, size).expect("read past the end"), None);
        let all: Vec<_> = iter(store).map(|r| r.expect("leaf")).collect();
        assert_eq!(all, (0..size).map(|i| (i, record(i))).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_is_one_value_per_block_of_leaves_keyed_by_its_last() {
        let store = MemStore::new();
        let mut log = Log::load(&store).expect("load");
        batch(&store, &mut log, 1);
        batch(&store, &mut log, 200);
        batch(&store, &mut log, 3);
        let keys: Vec<u64> = store
            .scan(keys::LOG)
            .map(|r| keys::tail_u64(&r.expect("scan").0).expect("index"))
            .collect();
        // Leaf 0 alone; 1..=15, then a pack per 16 leaves up to 200; then 201..=203.
        let mut want = vec![0u64];
        want.extend((15..200).step_by(16));
        want.extend([200, 203]);
        assert_eq!(keys, want);
        // Past the byte cap a pack ends early.
        let big = MemStore::new();
        let mut log = Log::load(&big).expect("load");
        let mut wb = WriteBatch::new();
        for i in 0..16u64 {
            let mut rec = record(i);
            rec.envelope.payload = vec![b'x'; 1500];
            log.append(&mut wb, rec.as_ref()).expect("append");
        }
        log.put_frontier(&mut wb);
        big.apply(wb).expect("apply");
        let keys: Vec<u64> = big
            .scan(keys::LOG)
            .map(|r| keys::tail_u64(&r.expect("scan").0).expect("index"))
            .collect();
        assert_eq!(keys, [10, 15], "eleven records of 1.5 KB pass 16 KiB");
        reads_as(&store, 204);
    }

    /// A store of one record per key (hubs before session 11: binary, and JSON before
    /// that), written directly, reads; appending to it packs the new leaves after the old;
    /// proofs and roots are those of the same tree in memory.
    #[test]
    fn a_store_of_one_record_per_key_reads_and_takes_packed_appends() {
        let store = MemStore::new();
        let mut tree = MemoryTree::new();
        let mut frontier = Frontier::new();
        let mut wb = WriteBatch::new();
        for i in 0..40u64 {
            let rec = record(i);
            let bytes = if i % 3 == 0 {
                serde_json::to_vec(&rec).expect("json")
            } else {
                rec.encode().expect("encode")
            };
            wb.put(keys::log(i), bytes);
            tree.push(rec.leaf_hash()).expect("push");
            for n in frontier.push(rec.leaf_hash()).expect("push") {
                wb.put(keys::node(n.level, n.index), n.hash.to_vec());
            }
        }
        wb.put(keys::FRONTIER.to_vec(), frontier.to_bytes());
        store.apply(wb).expect("apply");
        reads_as(&store, 40);
        let mut log = Log::load(&store).expect("load");
        assert_eq!(log.size(), 40);
        batch(&store, &mut log, 30);
        batch(&store, &mut log, 2);
        for i in 40..72 {
            tree.push(record(i).leaf_hash()).expect("push");
        }
        reads_as(&store, 72);
        assert_eq!(
            store.scan(keys::LOG).count(),
            40 + 3 + 1,
            "40 old keys, 40..=47, 48..=63 and 64..=69, 70..=71"
        );
        assert_eq!(log.root(), tree.root());
        for size in [1u64, 39, 40, 41, 64, 70, 72] {
            assert_eq!(
                root_at(&store, size).ok(),
                merkle::root_at(&tree, size).ok()
            );
            for index in [0, size / 2, size - 1] {
                assert_eq!(
                    inclusion_proof(&store, index, size).ok(),
                    merkle::inclusion_proof(&tree, index, size).ok(),
                    "inclusion of {index} in {size}"
                );
            }
        }
    }

    #[test]
    fn a_damaged_record_in_a_pack_is_an_error_at_its_leaf_and_the_others_read() {
        let store = MemStore::new();
        let mut log = Log::load(&store).expect("load");
        batch(&store, &mut log, 10);
        let good = record_bytes(&store, 4).expect("read").expect("held");
        replace_record(&store, 4, Some(good[..good.len() - 2].to_vec())).expect("replace");
        let err = read(&store, 4).expect_err("damaged").to_string();
        assert!(
            err.contains("log/4") && err.contains("ends inside"),
            "{err}"
        );
        for i in (0..10).filter(|i| *i != 4) {
            assert_eq!(read(&store, i).expect("read"), Some(record(i)));
        }
        let got: Vec<_> = iter(&store).map(|r| r.map(|(i, _)| i).ok()).collect();
        let want: Vec<_> = (0..10).map(|i| (i != 4).then_some(i)).collect();
        assert_eq!(got, want);
        // Put back, then removed: the pack is split around it.
        replace_record(&store, 4, Some(good)).expect("replace");
        reads_as(&store, 10);
        replace_record(&store, 4, None).expect("remove");
        assert_eq!(read(&store, 4).expect("read"), None);
        let got: Vec<u64> = iter(&store).map(|r| r.expect("leaf").0).collect();
        assert_eq!(got, [0, 1, 2, 3, 5, 6, 7, 8, 9]);
        // A damaged head: one error for the value, where its leaves would be.
        let mut wb = WriteBatch::new();
        wb.put(keys::log(9), vec![pack::PACK, 0, 0]);
        store.apply(wb).expect("apply");
        let err = read(&store, 7).expect_err("damaged").to_string();
        assert!(err.contains("log/9"), "{err}");
        let got: Vec<_> = iter(&store).map(|r| r.map(|(i, _)| i).ok()).collect();
        assert_eq!(got, [Some(0), Some(1), Some(2), Some(3), None]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Random batches of appends (runs crossing the pack boundaries), then random
        /// point reads and walks from random leaves, against a Vec of the records.
        #[test]
        fn packed_leaves_read_as_the_records_appended(
            batches in proptest::collection::vec(1u64..150, 1..12),
            reads in proptest::collection::vec(any::<proptest::sample::Index>(), 1..40),
            starts in proptest::collection::vec(any::<proptest::sample::Index>(), 1..6),
        ) {
            let store = MemStore::new();
            let mut log = Log::load(&store).expect("load");
            let mut model: Vec<LogRecord> = Vec::new();
            for n in batches {
                batch(&store, &mut log, n);
                model.extend((model.len() as u64..model.len() as u64 + n).map(record));
                // A reloaded log appends after what is stored, as a restarted hub does.
                log = Log::load(&store).expect("load");
            }
            let size = model.len();
            prop_assert_eq!(log.size(), size as u64);
            for at in reads {
                let i = at.index(size + 3);
                prop_assert_eq!(read(&store, i as u64).expect("read"), model.get(i).cloned());
            }
            for at in starts {
                let from = at.index(size + 2);
                let got: Vec<(u64, LogRecord)> = iter_from(&store, from as u64)
                    .map(|r| r.expect("leaf"))
                    .collect();
                let want: Vec<(u64, LogRecord)> = model
                    .iter()
                    .enumerate()
                    .skip(from)
                    .map(|(i, r)| (i as u64, r.clone()))
                    .collect();
                prop_assert_eq!(got, want);
            }
            // No value holds more than a block of leaves, nor crosses a block's end.
            for r in store.scan(keys::LOG) {
                let (k, v) = r.expect("scan");
                let last = keys::tail_u64(&k).expect("index");
                let s = Stored::parse(last, v).expect("parse");
                prop_assert_eq!(s.first() / pack::PACK_LEAVES, last / pack::PACK_LEAVES);
            }
        }
    }
}
