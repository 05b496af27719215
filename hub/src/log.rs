//! The global append-only log and its RFC 9162 Merkle tree.
//!
//! Every accepted entry (and every hub-signed entry, such as a deadline extension) is one
//! leaf. The leaf data is `PAE(payloadType, payload)` — exactly the bytes that were
//! signed — so a province can prove inclusion of what it signed without depending on how
//! the hub lays out JSON. Perfect-subtree nodes are stored as they complete, so proofs
//! take O(log n) lookups and appends never rescan the log. Records are stored in the
//! compact binary layout of [`record`]; the JSON records of older hubs still read.

pub mod index;
pub mod record;

use ed25519_dalek::SigningKey;
use spacesync_shared::merkle::{self, Checkpoint, Frontier, Hash, NodeSource};

use crate::store::{Store, StoreError, WriteBatch, keys};

pub use record::{LogRecord, RecordError, RecordRef, leaf_hash};

/// The tree's in-memory state, mirrored in the store.
#[derive(Clone)]
pub struct Log {
    frontier: Frontier,
    /// The record being encoded, reused from one append to the next.
    buf: Vec<u8>,
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
            buf: Vec::new(),
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

    /// Adds `record` to `batch` as the next leaf; returns its index. The in-memory frontier
    /// moves at once: callers that fail to apply the batch must reload with [`Log::load`],
    /// and must end the batch with [`Log::put_frontier`].
    pub fn append(
        &mut self,
        batch: &mut WriteBatch,
        record: RecordRef<'_>,
    ) -> Result<u64, LogError> {
        self.buf.clear();
        record::encode_into(record, &mut self.buf).map_err(|e| LogError::Record {
            seq: record.seq,
            error: e,
        })?;
        let index = self.frontier.size();
        let nodes = self
            .frontier
            .push(leaf_hash(record.envelope))
            .map_err(|e| LogError::Tree(e.to_string()))?;
        batch.put(keys::log(index), self.buf.as_slice());
        for n in nodes.iter().filter(|n| n.level >= FIRST_STORED_LEVEL) {
            batch.put(keys::node(n.level, n.index), n.hash.to_vec());
        }
        Ok(index)
    }

    /// Adds the frontier as it now stands to `batch`: once per batch, after its appends.
    pub fn put_frontier(&self, batch: &mut WriteBatch) {
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

/// Reads one leaf.
pub fn read(store: &dyn Store, index: u64) -> Result<Option<LogRecord>, StoreError> {
    match store.get(&keys::log(index))? {
        None => Ok(None),
        Some(b) => record::decode(&b)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("log/{index}"),
                message: e.to_string(),
            }),
    }
}

/// Every leaf in order, from `from`.
pub fn iter(store: &dyn Store) -> impl Iterator<Item = Result<(u64, LogRecord), StoreError>> + '_ {
    iter_from(store, 0)
}

/// The log's records from leaf `from` on, in order.
pub fn iter_from(
    store: &dyn Store,
    from: u64,
) -> impl Iterator<Item = Result<(u64, LogRecord), StoreError>> + '_ {
    store.scan_from(keys::LOG, &keys::log(from)).map(|r| {
        let (k, v) = r?;
        let index = keys::tail_u64(&k).ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            message: "log key without an index".into(),
        })?;
        let rec = record::decode(&v).map_err(|e| StoreError::Corrupt {
            key: format!("log/{index}"),
            message: e.to_string(),
        })?;
        Ok((index, rec))
    })
}

/// The lowest tree level whose nodes are stored (`node/…`). A node below it covers at most
/// [`1 << FIRST_STORED_LEVEL`] leaves and is computed from their records when a proof needs
/// it — a proof needs at most one per level, so at most fifteen record reads (about 9 KB) —
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
