//! The durable store: one sled database with these trees.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `entries` | last seq of the pack (u64 BE) | a pack of consecutive entries' DSSE envelopes (JSON), see below; or, written before packs, one entry's envelope keyed by its own seq |
//! | `receipts` | last seq of the run (u64 BE) | a run of consecutive seqs one batch receipt covers: `0x02` ‖ the run's first seq (u64 BE) ‖ the id (u64 BE) of the batch receipt; or, keyed by its own seq, one entry's receipt: the hub's receipt envelope (JSON), or (written before runs) `0x01` ‖ the batch receipt's id ([`StoredReceipt`]); kept forever |
//! | `batch_receipts` | id (u64 BE) | a hub batch receipt envelope (JSON), stored once for every seq it covers; kept forever, as the runs pointing at it are |
//! | `meta` | name | chain head, delivered seq, buffered bytes, pruned prefix, hub key, cursors, the log audit's state (`audit`: the last verified checkpoint, the seq audited through, the alarm), `catch_up` (a backup copy: see [`Store::catching_up`]) |
//! | `audit_evidence` | number (u64 BE) | what a failed log audit saw: both checkpoint notes and the proof (JSON, see `push::audit`); kept forever |
//! | `quota` | seq (u64 BE) | recommendation records held and not withdrawn (record JSON) |
//! | `notices` | notice id (u64 BE) | the notice (JSON) |
//! | `idem` | `k/` + idempotency key | when it was first seen, what it was bound to, the answer given (JSON, see `intake`) |
//! | `idem` | `t/` + first seen (ms, u64 BE) + key | empty: the expiry index [`Store::prune_idem`] walks |
//! | `idle_sweep` | i (u32 BE), 0..4096 | empty: what [`Store::settle_memory`] reads; made on first use, not backed up |
//!
//! Architecture invariant: the chain only grows through [`Store::append_all`] (one batch:
//! [`Store::append`]), one sled transaction over `entries`, `meta`, `quota` and `idem`; so
//! after a crash at any instant either the whole group of batches with its new head is
//! there or none of it. Callers answer only after [`Store::flush_async`]. The one other way
//! it grows is [`Store::adopt`]: entries this source signed that the hub already holds and
//! receipted (an agent restored from an older backup takes them back before intake opens).
//!
//! Entries are stored in packs: the entries one [`Store::append_all`] writes (one intake
//! batch, or one group commit of many), cut into values of at most [`PACK_MAX_ENTRIES`]
//! entries and [`PACK_MAX_BYTES`] bytes. A pack is `0x01`, the first seq (u64 BE), the
//! count (u32 BE), one end offset per entry (u32 BE, from the start of the envelopes), then
//! the envelopes' JSON bytes; its key is its last seq, so the value holding seq `s` is the
//! first at or after `s` (`range(seq_key(s)..).next()`). A value not starting with `0x01`
//! is one envelope stored before packs (JSON, starting with `{`), under its own seq: stores
//! from before packs read as they are, and new appends add packs beside their values.
//!
//! Why packs: sled 0.34 holds memory for every leaf node it has on disk (the places of
//! the node's fragments, up to 10), whatever its cache; a leaf holds at most 16 or 17
//! values, so one value per buffered entry cost ~36 B an entry (a bare store of 1 M values
//! of 900 B: 38 MiB after a reopen). Why packs this small: sled also holds memory in
//! proportion to the bytes of the nodes it writes and reads (not bounded by its cache), so
//! larger values hold more while an agent fills its buffer or delivers it; at 1 M buffered
//! entries of ~800 B, 7 KiB packs gave 26 MiB after a restart but 84–91 MiB idle after the
//! intake, 5 KiB 29.6 and 59.9 (one value an entry: 52–56 and 60–68); past ~7.5 KiB a node
//! goes to a blob file of its own (measured in BENCHMARKS.md, session 11).
//!
//! Pruning removes a pack once every entry in it is at or below the pruned seq; a pack
//! holding the pruned seq and later ones stays whole until a later prune passes its last
//! seq (one pack at most kept a while longer). No reader hands out an entry at
//! or below the pruned seq, so what callers see is what they saw when pruning removed each
//! entry: `entry` answers `None`, iteration starts after the pruned seq. Rewriting the
//! pack trimmed instead would cost a write of up to a pack at each prune for no reader's
//! benefit.
//!
//! Receipts are stored as runs for the same reason as entries are packed: a batch receipt
//! covers a few hundred consecutive seqs, and one value per seq (9 bytes each, kept
//! forever) made sled hold memory for ~60 leaf nodes per 1000 delivered entries. A run is
//! keyed by its last seq like a pack, so the value covering seq `s` is the first at or
//! after `s` when it starts at or below `s`. Values written before runs (one per seq) read
//! as they are, and new receipts add runs beside them. A seq some stored value already
//! covers is not stored again (the first verified receipt stays; the hub holds an entry
//! once, so a later receipt says the same), so no two values cover one seq. sled
//! transactions cannot read ranges, so what a recording writes is worked out before its
//! transaction, under a lock only receipt writers take ([`Store::record_receipts`]).
//!
//! Memory at rest: after a burst of writes (a large intake) or reads (delivery), sled
//! 0.34 keeps more than its cache: its page cache is 256 shards that evict only once 64
//! accesses are queued in a shard (and keep at least the last page each), replaced page
//! versions wait in crossbeam-epoch's collector until threads pin often enough, the page
//! table and segment accounting keep what the burst made them, and glibc keeps the freed
//! holes resident. An agent at rest does none of that, so [`idle`] calls
//! [`Store::settle_memory`] once the store has been quiet a while: it closes the database
//! and opens it again ([`Store::reopen`]: every method holds the handles it started with,
//! a reopen happens only when nobody holds them, after a flush, and methods called
//! meanwhile wait for the new ones), which drops all sled grew; then it collects the
//! garbage and trims the allocator. When the store cannot be reopened now, or when only
//! memory grew (reads; sled's segment cleaner after an open) it reads a small tree of its
//! own instead (`idle_sweep`, 4096 empty values, not backed up) so every shard evicts
//! down to its share (measured in BENCHMARKS.md, sessions 12 and 13).
//!
//! [`idle`]: crate::idle
//!
//! Why these sled settings: sled's default page cache is 1 GiB, far more than an agent that
//! appends a few thousand small entries a day needs; [`CACHE_BYTES`] keeps an idle agent
//! with 100k buffered entries small. `Mode::LowSpace` because the workload is append at the
//! tail and prune at the head at a low rate: reclaiming pruned space matters more than write
//! throughput, which the single writer with group commit already makes sufficient.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use spacesync_shared::dsse::{Digest, Envelope};
use spacesync_shared::entry::{Entry, SourceId};
use spacesync_shared::record::Record;
use spacesync_shared::wire::{BatchReceipt, Notice, Receipt};

/// sled page cache size.
pub const CACHE_BYTES: u64 = 8 << 20;

/// A tree of [`SWEEP_KEYS`] empty values that [`Store::settle_memory`] reads: small leaves
/// spread over all of sled's 256 cache shards. Not copied by [`Store::backup`].
const SWEEP_TREE: &str = "idle_sweep";
/// Keys of [`SWEEP_TREE`]: ~480 leaves of ~8 keys (sled splits a leaf past 16).
const SWEEP_KEYS: u32 = 4096;
/// Reads of the whole [`SWEEP_TREE`] per [`Store::settle_memory`]: each shard needs 64
/// accesses queued before it evicts.
const SWEEP_PASSES: usize = 64;
/// Collection rounds per [`Store::settle_memory`] (each frees up to 8 bags of 64 items).
const RELEASE_ROUNDS: usize = 4096;

/// How long [`Store::reopen`] tries to open the database again while the closed one's
/// lock is still held.
const REOPEN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long [`Store::open`], holding the store's process lock, waits for sled's own lock
/// to be let go by a handle of this process that was just dropped.
const OPEN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Frees what sled handed to crossbeam-epoch's global collector: it frees 8 bags of
/// such garbage per 128 pins of a thread, so a backlog is left after a burst, and nothing
/// pins at rest. Each round pins, moves this thread's garbage on and collects up to 8
/// bags.
fn release_garbage() {
    for _ in 0..RELEASE_ROUNDS {
        crossbeam_epoch::pin().flush();
    }
}

/// Returns the allocator's free pages to the system (glibc keeps them otherwise: freed
/// node versions leave holes in its heaps that count as resident).
fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heaps under its locks; no Rust
    // invariant is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

const HEAD_SEQ: &[u8] = b"head_seq";
const HEAD_HASH: &[u8] = b"head_hash";
const ACKED_SEQ: &[u8] = b"acked_seq";
const BUFFERED_BYTES: &[u8] = b"buffered_bytes";
const PRUNED_SEQ: &[u8] = b"pruned_seq";
const PRUNED_HASH: &[u8] = b"pruned_hash";
const HUB_KEY: &[u8] = b"hub_key";
const NOTICE_CURSOR: &[u8] = b"notice_cursor";
const NOTICE_READ: &[u8] = b"notice_read";
const WEBHOOK_CURSOR: &[u8] = b"webhook_cursor";
const PUSH_STATE: &[u8] = b"push_state";
const IDENTITY: &[u8] = b"identity";
const KEY_HISTORY: &[u8] = b"key_history";
const BATCH_RECEIPT_ID: &[u8] = b"batch_receipt_id";
const AUDIT: &[u8] = b"audit";
/// Present while the store may be behind the hub (every backup copy carries it): the
/// agent takes back from the hub what it holds of this chain before intake appends.
const CATCH_UP: &[u8] = b"catch_up";

/// First byte of a `receipts` value that points at a batch receipt (a receipt envelope's
/// JSON starts with `{`).
const IN_BATCH: u8 = 1;

/// First byte of a `receipts` value that covers a run of seqs with one batch receipt.
const RUN: u8 = 2;

/// What the `receipts` tree holds for one seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredReceipt {
    /// The entry's own receipt envelope (JSON): what the hub sends an agent that does not
    /// ask for batch receipts, and all that agents before them stored.
    Own(Vec<u8>),
    /// The id of the stored batch receipt that covers the entry ([`Store::batch_receipt`]).
    InBatch(u64),
}

impl StoredReceipt {
    fn decode(v: &[u8]) -> StoredReceipt {
        match v.split_first() {
            Some((&IN_BATCH, id)) if id.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(id);
                StoredReceipt::InBatch(u64::from_be_bytes(b))
            }
            _ => StoredReceipt::Own(v.to_vec()),
        }
    }

    /// The value of a run from `first` (its key is the run's last seq) covered by the
    /// batch receipt `id`.
    fn run(first: u64, id: u64) -> [u8; 17] {
        let mut v = [RUN; 17];
        v[1..9].copy_from_slice(&first.to_be_bytes());
        v[9..].copy_from_slice(&id.to_be_bytes());
        v
    }
}

/// One value of the `receipts` tree: the seqs it covers (first, last) and what it holds
/// for each. A value that is not a well-formed run covers its own key's seq (a damaged
/// value reads as an own receipt that does not parse, which `verify` names).
fn decode_receipt_row(k: &[u8], v: &[u8]) -> Result<(u64, u64, StoredReceipt), StoreError> {
    let last: [u8; 8] = k
        .try_into()
        .map_err(|_| StoreError::Corrupt("a receipt's key is not 8 bytes".into()))?;
    let last = u64::from_be_bytes(last);
    if let Some((&RUN, rest)) = v.split_first()
        && rest.len() == 16
    {
        let mut first = [0u8; 8];
        first.copy_from_slice(&rest[..8]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&rest[8..]);
        let first = u64::from_be_bytes(first);
        if first <= last {
            return Ok((first, last, StoredReceipt::InBatch(u64::from_be_bytes(id))));
        }
    }
    Ok((last, last, StoredReceipt::decode(v)))
}

/// Stored receipts one seq at a time, runs expanded ([`Store::raw_receipts_from`]).
struct ReceiptIter {
    /// The handles `values` reads through, held so [`Store::reopen`] waits for this.
    _held: Arc<Handles>,
    values: sled::Iter,
    /// The value being handed out: (last seq, its receipt).
    run: Option<(u64, StoredReceipt)>,
    /// The next seq to hand out; seqs below it are skipped (before the range asked for,
    /// or covered twice by a damaged store).
    next: u64,
}

impl Iterator for ReceiptIter {
    type Item = Result<(u64, StoredReceipt), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((last, r)) = &self.run {
                if self.next <= *last {
                    let seq = self.next;
                    let r = r.clone();
                    self.next = seq.saturating_add(1);
                    if seq == u64::MAX {
                        self.run = None;
                    }
                    return Some(Ok((seq, r)));
                }
                self.run = None;
            }
            let (k, v) = match self.values.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            match decode_receipt_row(&k, &v) {
                Ok((first, last, r)) => {
                    self.next = self.next.max(first);
                    self.run = Some((last, r));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// What one recording of receipts writes, worked out before its transaction (which cannot
/// read ranges) while the receipt writers' lock is held.
struct ReceiptPlan<'a> {
    /// Own receipts for seqs no stored value covers: (seq, envelope JSON).
    own: Vec<(u64, &'a [u8])>,
    /// The batch receipt envelope, stored when `runs` is not empty.
    batch: Option<&'a [u8]>,
    /// Runs (first, last) of the seqs the batch receipt covers that nothing stored covers.
    runs: Vec<(u64, u64)>,
    /// The delivered seq the plan was made from.
    acked: u64,
    /// Once the plan is written every seq from `acked + 1` through this has a receipt.
    covered_through: u64,
}

/// A store problem; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database.
    #[error(
        "{path}: the store is in use by another process (is `spacesync-agent run` running?); use its HTTP API (POST /v1/records, GET /v1/status) or stop it first"
    )]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The database cannot be opened.
    #[error(
        "{path}: cannot open the store: {error}; check the directory's permissions and free disk space"
    )]
    Open {
        /// The database directory.
        path: PathBuf,
        /// What sled said.
        error: sled::Error,
    },
    /// sled finds the files damaged (or fails reading them) and will not open them.
    #[error(
        "{path}: the store's files are damaged ({why}); nothing was changed. Keep a copy of the data directory and restore the latest backup; entries the hub has receipted are also held at the hub"
    )]
    Damaged {
        /// The database directory.
        path: PathBuf,
        /// What sled said.
        why: String,
    },
    /// A read or write failed.
    #[error("store I/O error: {0}; check free disk space and the data directory")]
    Sled(#[from] sled::Error),
    /// A write or flush failed, as reported to each batch it concerns.
    #[error("store I/O error: {0}; check free disk space and the data directory")]
    Failed(String),
    /// A stored value cannot be read.
    #[error("the store is damaged: {0}; run `spacesync-agent verify` for details")]
    Corrupt(String),
    /// The store was made for another source or key.
    #[error(
        "the store belongs to {stored}, but agent.toml and agent.key say {configured}; point --data at the right directory"
    )]
    Identity {
        /// What the store was made for.
        stored: String,
        /// What the configuration says.
        configured: String,
    },
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// The bytes added to a store by one accepted batch.
#[derive(Debug, Default)]
pub struct Append {
    /// First seq of the batch; the store's head must be `first - 1`.
    pub first: u64,
    /// Envelope JSON per entry, in seq order.
    pub envelopes: Vec<Vec<u8>>,
    /// Hash of the last envelope's payload (the new head).
    pub head_hash: Digest,
    /// Recommendations to count against quotas: (seq, record JSON).
    pub quota_add: Vec<(u64, Vec<u8>)>,
    /// Recommendations withdrawn by this batch (their seqs).
    pub quota_remove: Vec<u64>,
    /// Idempotency key to remember with this batch.
    pub idem: Option<IdemPut>,
}

/// One idempotency key to store with a batch.
#[derive(Debug, Default, Clone)]
pub struct IdemPut {
    /// The key as the client sent it.
    pub key: Vec<u8>,
    /// What to remember for it (opaque to the store).
    pub value: Vec<u8>,
    /// When it was first seen, milliseconds since the epoch (agent clock); the expiry index
    /// is ordered by it.
    pub at_ms: u64,
}

/// What the store holds for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemStored {
    /// When it was first seen (ms since the epoch, agent clock); `None` for a key stored by
    /// an agent from before keys expired (its value is the bare answer JSON).
    pub at_ms: Option<u64>,
    /// The value given to [`IdemPut`].
    pub value: Vec<u8>,
}

/// Version byte of a stored idempotency value: `1`, then the time (u64 BE), then the
/// value. Older agents stored the answer JSON alone, which starts with `{`.
const IDEM_V1: u8 = 1;

impl IdemStored {
    fn encode(p: &IdemPut) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + p.value.len());
        v.push(IDEM_V1);
        v.extend_from_slice(&p.at_ms.to_be_bytes());
        v.extend_from_slice(&p.value);
        v
    }

    fn decode(v: &[u8]) -> IdemStored {
        match v.split_first() {
            Some((&IDEM_V1, rest)) if rest.len() >= 8 => {
                let (t, value) = rest.split_at(8);
                let mut b = [0u8; 8];
                b.copy_from_slice(t);
                IdemStored {
                    at_ms: Some(u64::from_be_bytes(b)),
                    value: value.to_vec(),
                }
            }
            _ => IdemStored {
                at_ms: None,
                value: v.to_vec(),
            },
        }
    }
}

const IDEM_KEY: &[u8] = b"k/";
const IDEM_TIME: &[u8] = b"t/";

fn idem_key(key: &[u8]) -> Vec<u8> {
    [IDEM_KEY, key].concat()
}

fn idem_time(at_ms: u64, key: &[u8]) -> Vec<u8> {
    [IDEM_TIME, &at_ms.to_be_bytes()[..], key].concat()
}

/// One stored entry.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its seq.
    pub seq: u64,
    /// Its envelope.
    pub envelope: Envelope,
    /// Stored size in bytes (the envelope JSON).
    pub size: usize,
}

/// What [`Store::backup`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Copied {
    /// Keys copied, over every tree.
    pub keys: u64,
    /// The copy's chain head (last seq).
    pub head: u64,
    /// The copy's delivered seq (receipted by the hub).
    pub acked: u64,
}

/// The agent's sled database.
#[derive(Debug, Clone)]
pub struct Store {
    /// The open database and its trees, shared by every clone; replaced by
    /// [`Store::reopen`] at rest (see "Memory at rest" in the module doc). Every method
    /// takes one clone of the `Arc` for its whole run, so a reopen sees whether anyone
    /// still uses the old handles (an iterator handed out holds one too).
    handles: Arc<std::sync::RwLock<Option<Arc<Handles>>>>,
    /// Where the database lives, for [`Store::reopen`].
    path: PathBuf,
    /// Every entry up to this seq is on disk: the head as it stood when the last completed
    /// flush started (or at open). Shared by every clone, so the pusher, which must never
    /// send an entry a power cut could still take back, sees what intake's committer
    /// flushed.
    durable: Arc<AtomicU64>,
    /// Every change takes it shared; [`Store::backup`] takes it alone, so a backup copies
    /// the trees as of one instant (sled has no snapshots across trees).
    gate: Arc<std::sync::RwLock<()>>,
    /// Held by whoever stores receipts from planning to commit: a recording reads the
    /// `receipts` tree outside its transaction ([`ReceiptPlan`]), so no other may change
    /// it meanwhile.
    receipting: Arc<std::sync::Mutex<()>>,
    /// An exclusive lock on `<store>.lock`, held for as long as any clone lives. sled's own
    /// lock goes with its handles, so during a [`Store::reopen`] it is briefly free; this
    /// one is not, so a command-line tool never takes a reopening agent for a stopped one.
    _process_lock: Arc<std::fs::File>,
}

/// The file beside the store that [`Store::open`] locks: `<store>.lock`.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// Takes the process lock of the store at `path` (see [`Store::_process_lock`]).
fn lock_store(path: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let lock = lock_path(path);
    let open_error = |e: std::io::Error| StoreError::Open {
        path: lock.clone(),
        error: sled::Error::Io(e),
    };
    if let Some(parent) = lock.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(open_error)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock)
        .map_err(open_error)?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor this function owns (open above); no memory involved.
    // (std's File::try_lock needs Rust 1.89, above this workspace's MSRV.)
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(file);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Err(StoreError::Locked {
            path: path.to_path_buf(),
        })
    } else {
        Err(open_error(e))
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `path`, if known.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` is a writable statvfs; statvfs only
    // writes into it, and it is read only when the call succeeded.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    Some(free)
}

/// What a reopen may write: sled writes a fresh snapshot of its page table at every open
/// that follows writes, so twice the current snapshot files' size, plus a margin.
fn reopen_needs_bytes(path: &Path) -> u64 {
    let snapshots: u64 = std::fs::read_dir(path)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("snap."))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    snapshots
        .saturating_mul(2)
        .saturating_add(REOPEN_FREE_MARGIN)
}

/// Free space a reopen leaves beyond what its snapshot needs.
const REOPEN_FREE_MARGIN: u64 = 64 << 20;

/// The sled database and its trees, as one open of the store holds them.
#[derive(Debug)]
struct Handles {
    db: sled::Db,
    entries: sled::Tree,
    receipts: sled::Tree,
    batch_receipts: sled::Tree,
    meta: sled::Tree,
    quota: sled::Tree,
    notices: sled::Tree,
    idem: sled::Tree,
    audit_evidence: sled::Tree,
}

/// Big-endian key of a seq, so sled's order is seq order.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn read_u64(v: Option<sled::IVec>) -> Result<u64, StoreError> {
    match v {
        None => Ok(0),
        Some(b) => {
            let arr: [u8; 8] = b
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("a counter is not 8 bytes".into()))?;
            Ok(u64::from_be_bytes(arr))
        }
    }
}

fn read_digest(v: Option<sled::IVec>) -> Result<Digest, StoreError> {
    match v {
        None => Ok(Digest::ZERO),
        Some(b) => {
            let arr: [u8; 32] = b
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("a stored hash is not 32 bytes".into()))?;
            Ok(Digest(arr))
        }
    }
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

/// Reads an envelope from stored JSON.
pub fn parse_envelope(seq: u64, bytes: &[u8]) -> Result<Envelope, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("seq {seq}: stored envelope is unreadable: {e}")))
}

/// First byte of an `entries` value that is a pack (layout 1). A value written before
/// packs is one envelope's JSON, which starts with `{`; any value not starting with this
/// byte is read as such a single entry, keyed by its own seq.
const PACK_V1: u8 = 1;

/// A pack's header: the layout byte, the first seq (u64 BE), the count (u32 BE); then
/// `count` end offsets (u32 BE, from the start of the envelopes), then the envelopes.
const PACK_HEADER: usize = 1 + 8 + 4;

/// Most entries in one pack. Also what lets a transaction, which has no range reads, find
/// the value holding a seq: its key is at most this far above the seq.
pub const PACK_MAX_ENTRIES: usize = 256;

/// A pack is closed before it would pass this size (header and table included), unless
/// it holds a single entry. A trade-off measured with sled 0.34 (see the module doc): fewer,
/// larger values hold less memory once reopened, but sled holds more memory while it writes
/// and reads larger tree nodes; past ~7.5 KiB a leaf (split only past 16 keys) passes a
/// quarter of sled's 512 KiB segment and goes to a blob file of its own.
pub const PACK_MAX_BYTES: usize = 5 * 1024;

/// One `entries` value, read: entries `first..=last`.
#[derive(Debug, Clone)]
struct Pack {
    first: u64,
    last: u64,
    /// The value as sled returned it; entries are handed out as sub-slices of it.
    value: sled::IVec,
    /// Where the envelopes start (0 for a single entry stored before packs).
    data_at: usize,
}

impl Pack {
    /// Reads the value stored under `key`.
    fn decode(key: &[u8], value: sled::IVec) -> Result<Pack, StoreError> {
        let last = u64::from_be_bytes(
            key.try_into()
                .map_err(|_| StoreError::Corrupt("an entries key is not 8 bytes".into()))?,
        );
        if value.first() != Some(&PACK_V1) {
            return Ok(Pack {
                first: last,
                last,
                value,
                data_at: 0,
            });
        }
        let bad =
            |why: &str| StoreError::Corrupt(format!("the entries stored up to seq {last}: {why}"));
        let head = value
            .get(..PACK_HEADER)
            .ok_or_else(|| bad("the pack header is cut short"))?;
        let mut first = [0u8; 8];
        first.copy_from_slice(&head[1..9]);
        let first = u64::from_be_bytes(first);
        let mut count = [0u8; 4];
        count.copy_from_slice(&head[9..13]);
        let count = u32::from_be_bytes(count) as usize;
        if count == 0
            || count > PACK_MAX_ENTRIES
            || first.checked_add(count as u64 - 1) != Some(last)
        {
            return Err(bad(&format!(
                "the pack says {count} entries from seq {first}"
            )));
        }
        let data_at = PACK_HEADER + 4 * count;
        let data_len = value
            .len()
            .checked_sub(data_at)
            .ok_or_else(|| bad("the pack's offset table is cut short"))?;
        let p = Pack {
            first,
            last,
            value,
            data_at,
        };
        let mut prev = 0;
        for i in 0..count {
            let end = p.end(i);
            if end < prev {
                return Err(bad("the pack's offset table is out of order"));
            }
            if end > data_len {
                return Err(bad("the pack is cut short (an offset points past its end)"));
            }
            prev = end;
        }
        if prev != data_len {
            return Err(bad("the pack's length disagrees with its offset table"));
        }
        Ok(p)
    }

    /// End of entry `i` (from the start of the envelopes); checked by `decode`.
    fn end(&self, i: usize) -> usize {
        let at = PACK_HEADER + 4 * i;
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.value[at..at + 4]);
        u32::from_be_bytes(b) as usize
    }

    /// The bytes of `seq`'s envelope; `seq` must be in `first..=last`.
    fn get(&self, seq: u64) -> sled::IVec {
        if self.data_at == 0 {
            return self.value.clone();
        }
        let i = (seq - self.first) as usize;
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        self.value
            .subslice(self.data_at + start, self.end(i) - start)
    }

    /// The size of `seq`'s envelope; `seq` must be in `first..=last`.
    fn len_of(&self, seq: u64) -> usize {
        if self.data_at == 0 {
            return self.value.len();
        }
        let i = (seq - self.first) as usize;
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        self.end(i) - start
    }
}

/// Packs envelopes starting at seq `first`: (key, value) per pack, in seq order, each
/// under [`PACK_MAX_ENTRIES`] and [`PACK_MAX_BYTES`] (a larger envelope alone).
fn encode_packs<'a>(
    first: u64,
    envelopes: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<(sled::IVec, sled::IVec)> {
    fn close(out: &mut Vec<(sled::IVec, sled::IVec)>, first: u64, group: &[&[u8]]) {
        let data: usize = group.iter().map(|e| e.len()).sum();
        let mut v = Vec::with_capacity(PACK_HEADER + 4 * group.len() + data);
        v.push(PACK_V1);
        v.extend_from_slice(&first.to_be_bytes());
        v.extend_from_slice(&(group.len() as u32).to_be_bytes());
        let mut end = 0usize;
        for e in group {
            end += e.len();
            v.extend_from_slice(&(end as u32).to_be_bytes());
        }
        for e in group {
            v.extend_from_slice(e);
        }
        let last = first + group.len() as u64 - 1;
        out.push((sled::IVec::from(&seq_key(last)), sled::IVec::from(v)));
    }
    let mut out = Vec::new();
    let mut group: Vec<&[u8]> = Vec::new();
    let mut size = PACK_HEADER;
    let mut start = first;
    for e in envelopes {
        if !group.is_empty()
            && (group.len() >= PACK_MAX_ENTRIES || size + 4 + e.len() > PACK_MAX_BYTES)
        {
            close(&mut out, start, &group);
            start += group.len() as u64;
            group.clear();
            size = PACK_HEADER;
        }
        size += 4 + e.len();
        group.push(e);
    }
    if !group.is_empty() {
        close(&mut out, start, &group);
    }
    out
}

/// The entries held from a seq on, in seq order, each once: walks the `entries` values
/// (packs, and single entries stored before packs).
struct EntryIter {
    /// The handles `values` reads through, held so [`Store::reopen`] waits for this.
    _held: Arc<Handles>,
    values: sled::Iter,
    pack: Option<Pack>,
    /// The next seq to hand out; seqs below it are skipped (pruned, or before the range
    /// asked for, or held twice by a damaged store).
    next: u64,
    /// The last seq to hand out.
    through: u64,
}

impl Iterator for EntryIter {
    type Item = Result<(u64, sled::IVec), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(p) = &self.pack {
                if self.next <= p.last {
                    let seq = self.next.max(p.first);
                    if seq > self.through {
                        return None;
                    }
                    self.next = seq.saturating_add(1);
                    return Some(Ok((seq, p.get(seq))));
                }
                self.pack = None;
            }
            if self.next > self.through {
                return None;
            }
            match self.values.next()? {
                Err(e) => return Some(Err(e.into())),
                Ok((k, v)) => match Pack::decode(&k, v) {
                    Ok(p) => self.pack = Some(p),
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }
}

/// Sizes of the entries `from..=through` (for the buffered bytes), within a transaction.
/// A transaction has no range reads, so the value holding a seq is found by probing keys
/// upward from it: its key (its last seq) is less than [`PACK_MAX_ENTRIES`] above it. One
/// get per seq in all, as when every entry had its own key. A value that cannot be read
/// counts as nothing (`verify` names it).
fn entry_bytes_tx(
    entries: &sled::transaction::TransactionalTree,
    from: u64,
    through: u64,
) -> Result<u64, ConflictableTransactionError<StoreError>> {
    let mut bytes = 0u64;
    let mut seq = from;
    let mut probe = from;
    while seq <= through {
        if probe >= seq.saturating_add(PACK_MAX_ENTRIES as u64) {
            // No value holds `seq` (a damaged store).
            seq += 1;
            continue;
        }
        let key = seq_key(probe);
        let Some(v) = entries.get(key)? else {
            probe += 1;
            continue;
        };
        if let Ok(p) = Pack::decode(&key, v) {
            for s in seq.max(p.first)..=p.last.min(through) {
                bytes += p.len_of(s) as u64;
            }
        }
        seq = probe + 1;
        probe = seq;
    }
    Ok(bytes)
}

/// Entries the hub holds of this chain, for [`Store::adopt`].
#[derive(Debug, Default, Clone)]
pub struct Adopt {
    /// Seq of the first new entry (the head + 1).
    pub first: u64,
    /// Envelope JSON of each new entry, in seq order (may be empty: receipts only).
    pub envelopes: Vec<Vec<u8>>,
    /// Payload hash of the last new entry (the new head).
    pub head_hash: Digest,
    /// Recommendations among them: (seq, record JSON).
    pub quota_add: Vec<(u64, Vec<u8>)>,
    /// Recommendations they withdraw (seqs).
    pub quota_remove: Vec<u64>,
    /// The verified batch receipt (envelope JSON).
    pub receipt: Vec<u8>,
    /// The seqs it covers that the caller checked against the entries (held or new).
    pub receipted: Vec<u64>,
    /// The key history after the key transitions among the new entries, when there are.
    pub key_history: Option<Vec<(u64, String)>>,
}

/// Writes a [`ReceiptPlan`] within a transaction and advances the delivered seq over
/// every contiguous receipted seq (see [`Store::record_receipts`]); returns it.
fn note_receipts(
    rtree: &sled::transaction::TransactionalTree,
    btree: &sled::transaction::TransactionalTree,
    meta: &sled::transaction::TransactionalTree,
    entries: &sled::transaction::TransactionalTree,
    plan: &ReceiptPlan<'_>,
) -> Result<u64, ConflictableTransactionError<StoreError>> {
    for (seq, r) in &plan.own {
        rtree.insert(&seq_key(*seq), *r)?;
    }
    if let Some(env) = plan.batch
        && !plan.runs.is_empty()
    {
        let id = read_u64(meta.get(BATCH_RECEIPT_ID)?).map_err(abort)? + 1;
        meta.insert(BATCH_RECEIPT_ID, &id.to_be_bytes())?;
        btree.insert(&seq_key(id), env)?;
        for &(first, last) in &plan.runs {
            rtree.insert(&seq_key(last), &StoredReceipt::run(first, id)[..])?;
        }
    }
    let old = read_u64(meta.get(ACKED_SEQ)?).map_err(abort)?;
    if old != plan.acked {
        // Only receipt writers move it, and they hold the lock the plan was made under.
        return Err(abort(StoreError::Failed(format!(
            "the delivered seq moved from {} to {old} while receipts were being stored",
            plan.acked
        ))));
    }
    let head = read_u64(meta.get(HEAD_SEQ)?).map_err(abort)?;
    let acked = plan.covered_through.min(head).max(old);
    if acked != old {
        let freed = entry_bytes_tx(entries, old + 1, acked)?;
        meta.insert(ACKED_SEQ, &acked.to_be_bytes())?;
        let bytes = read_u64(meta.get(BUFFERED_BYTES)?).map_err(abort)?;
        meta.insert(BUFFERED_BYTES, &bytes.saturating_sub(freed).to_be_bytes())?;
    }
    Ok(acked)
}

/// [`open_handles`], trying again every 20 ms (after `between`) while sled's lock is
/// taken, for up to `patience`: with the store's process lock held, only a handle of this
/// process that is still letting go can hold it.
fn open_handles_waiting(
    path: &Path,
    patience: std::time::Duration,
    between: impl Fn(),
) -> Result<Handles, StoreError> {
    let started = std::time::Instant::now();
    loop {
        match open_handles(path) {
            Err(StoreError::Locked { .. }) if started.elapsed() < patience => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                between();
            }
            other => return other,
        }
    }
}

/// Opens the sled database at `path` and its trees (see [`Store::open`]).
fn open_handles(path: &Path) -> Result<Handles, StoreError> {
    // sled would create the directory with the umask's mode (often 0755); the store
    // holds every record, so it is created 0700 from the start.
    crate::config::private_dir(path).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        error: sled::Error::Io(e),
    })?;
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES)
        .mode(sled::Mode::LowSpace);
    // A kill during sled's own open leaves a snapshot file that would refuse every
    // later open; removing it loses nothing (see spacesync_http::sled_dir).
    let cleared = spacesync_http::sled_dir::remove_unfinished_snapshots(path).map_err(|e| {
        StoreError::Open {
            path: path.to_path_buf(),
            error: sled::Error::Io(e),
        }
    })?;
    for removed in cleared {
        tracing::warn!(path = %removed.display(), "removed the unfinished snapshot an interrupted start left; sled rebuilds it from the log");
    }
    // sled 0.34 panics on some damaged files (an index out of bounds while reading
    // segments) instead of returning an error; both mean the same to an operator.
    let opened =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).map_err(|p| {
            StoreError::Damaged {
                path: path.to_path_buf(),
                why: p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "sled failed reading them".into()),
            }
        })?;
    let db = opened.map_err(|error| match &error {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: path.to_path_buf(),
            }
        }
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => StoreError::Damaged {
            path: path.to_path_buf(),
            why: error.to_string(),
        },
        _ => StoreError::Open {
            path: path.to_path_buf(),
            error,
        },
    })?;
    let tree = |name: &str| db.open_tree(name);
    Ok(Handles {
        entries: tree("entries")?,
        receipts: tree("receipts")?,
        batch_receipts: tree("batch_receipts")?,
        meta: tree("meta")?,
        quota: tree("quota")?,
        notices: tree("notices")?,
        idem: tree("idem")?,
        audit_evidence: tree("audit_evidence")?,
        db,
    })
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let process_lock = lock_store(path)?;
        // With the process lock held, sled's lock can only be held by a handle of this
        // process that is still letting go (sled joins its threads lazily): a short wait.
        let handles = open_handles_waiting(path, OPEN_PATIENCE, || {})?;
        let store = Store {
            handles: Arc::new(std::sync::RwLock::new(Some(Arc::new(handles)))),
            path: path.to_path_buf(),
            durable: Arc::default(),
            gate: Arc::default(),
            receipting: Arc::default(),
            _process_lock: Arc::new(process_lock),
        };
        // What sled recovered at open is on disk: `remove_unfinished_snapshots` synced
        // its log file first (a killed writer's unsynced tail included).
        let (head, _) = store.head()?;
        store.durable.store(head, Ordering::Release);
        Ok(store)
    }

    /// The handles every method reads and writes through (one clone for its whole run).
    fn h(&self) -> Arc<Handles> {
        let slot = self
            .handles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*slot {
            Some(h) => h.clone(),
            // `reopen` puts handles back before it lets go of the lock, or ends the
            // process; only a panic inside it (in sled's drop or open) leaves the slot
            // empty, and then no call can work: the agent stops as a crash would, for
            // its service manager to start it again (everything acknowledged is on disk).
            None => {
                tracing::error!(path = %self.path.display(), "The store's handles were lost while it was being reopened at rest; the agent stops (everything it acknowledged is on disk) — start it again.");
                std::process::exit(1)
            }
        }
    }

    /// The source and key the store is bound to (`source <id> with key <line>`), if any.
    pub fn identity(&self) -> Result<Option<String>, StoreError> {
        let h = self.h();
        Ok(h.meta
            .get(IDENTITY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The source's keys along its chain, `(first seq, key line)` in rotation order; empty
    /// while the first key was never rotated (it signs everything).
    pub fn key_history(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let h = self.h();
        match h.meta.get(KEY_HISTORY)? {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("the key history: {e}"))),
        }
    }

    /// Records that `new_line` signs from `from_seq` on, instead of `old_line`: the
    /// identity the store is bound to and the key history change in one flushed write.
    pub fn rotate_identity(
        &self,
        source: &SourceId,
        old_line: &str,
        new_line: &str,
        from_seq: u64,
    ) -> Result<(), StoreError> {
        let h = self.h();
        let mut history = self.key_history()?;
        if history.is_empty() {
            history.push((1, old_line.to_string()));
        }
        history.push((from_seq, new_line.to_string()));
        let history = serde_json::to_vec(&history)
            .map_err(|e| StoreError::Corrupt(format!("the key history: {e}")))?;
        let identity = format!("source {source} with key {new_line}");
        let _changing = self.changing();
        h.meta
            .transaction(|meta| {
                meta.insert(IDENTITY, identity.as_bytes())?;
                meta.insert(KEY_HISTORY, history.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Corrupt(format!("recording the key rotation: {e:?}")))?;
        h.db.flush()?;
        Ok(())
    }

    /// Appends the key-transition entry `envelope` (JSON, signed by `old_line`'s key) at
    /// `seq`, the next seq, and records that `new_line` signs from `seq + 1`: entry, head,
    /// buffered bytes, identity and key history in one transaction, flushed before this
    /// returns. Refused (nothing written) when the head is not `seq - 1`.
    pub fn append_transition(
        &self,
        source: &SourceId,
        seq: u64,
        envelope: &[u8],
        hash: Digest,
        old_line: &str,
        new_line: &str,
    ) -> Result<(), StoreError> {
        let h = self.h();
        let mut history = self.key_history()?;
        if history.is_empty() {
            history.push((1, old_line.to_string()));
        }
        history.push((seq + 1, new_line.to_string()));
        let history = serde_json::to_vec(&history)
            .map_err(|e| StoreError::Corrupt(format!("the key history: {e}")))?;
        let identity = format!("source {source} with key {new_line}");
        let packed = encode_packs(seq, [envelope]);
        let _changing = self.changing();
        (&h.entries, &h.meta).transaction(|(entries, meta)| {
            let head = read_u64(meta.get(HEAD_SEQ)?).map_err(abort)?;
            if head + 1 != seq {
                return Err(abort(StoreError::Corrupt(format!(
                    "the key transition was to be seq {seq}, but the head is {head}"
                ))));
            }
            for (k, v) in &packed {
                entries.insert(k.clone(), v.clone())?;
            }
            meta.insert(HEAD_SEQ, &seq.to_be_bytes())?;
            meta.insert(HEAD_HASH, &hash.0)?;
            let bytes = read_u64(meta.get(BUFFERED_BYTES)?).map_err(abort)?;
            meta.insert(
                BUFFERED_BYTES,
                &(bytes + envelope.len() as u64).to_be_bytes(),
            )?;
            meta.insert(IDENTITY, identity.as_bytes())?;
            meta.insert(KEY_HISTORY, history.as_slice())?;
            Ok(())
        })?;
        self.flush()
    }

    /// The shared side of the backup gate: held by every change.
    fn changing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies every tree into a new store at `out` (which must not exist), as of one
    /// instant: changes wait meanwhile (readers do not), the source is flushed first and
    /// the copy flushed before this returns.
    pub fn backup(&self, out: &Path) -> Result<Copied, StoreError> {
        let h = self.h();
        let _alone = self.gate.write().unwrap_or_else(|p| p.into_inner());
        h.db.flush()?;
        let copy = Store::open(out)?;
        let mut keys = 0u64;
        for name in h.db.tree_names() {
            if name == SWEEP_TREE.as_bytes() {
                continue;
            }
            let from = h.db.open_tree(&name)?;
            let to = copy.h().db.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let mut n = 0usize;
            for kv in from.iter() {
                let (k, v) = kv?;
                batch.insert(k, v);
                n += 1;
                keys += 1;
                if n == 4096 {
                    to.apply_batch(std::mem::take(&mut batch))?;
                    n = 0;
                }
            }
            to.apply_batch(batch)?;
        }
        // The copy is older than the hub's view as soon as this agent delivers more: an
        // agent run from it takes back what the hub holds before it appends.
        copy.h().meta.insert(CATCH_UP, &[1u8][..])?;
        copy.h().db.flush()?;
        Ok(Copied {
            keys,
            head: copy.head()?.0,
            acked: copy.acked()?,
        })
    }

    /// Binds the store to a source and key on first use; refuses another later, except the
    /// key the store's key history puts in force last (for the same source).
    pub fn bind_identity(&self, source: &SourceId, key_line: &str) -> Result<(), StoreError> {
        let h = self.h();
        let _changing = self.changing();
        let want = format!("source {source} with key {key_line}");
        match h.meta.get(IDENTITY)? {
            None => {
                h.meta.insert(IDENTITY, want.as_bytes())?;
                h.db.flush()?;
                Ok(())
            }
            Some(v) if v.as_ref() == want.as_bytes() => Ok(()),
            // The key the chain's last rotation put in force (a key transition this store
            // took back from the hub after a restore): the operator put its key file back.
            Some(v)
                if v.starts_with(format!("source {source} with key ").as_bytes())
                    && self
                        .key_history()?
                        .last()
                        .is_some_and(|(_, line)| line == key_line) =>
            {
                h.meta.insert(IDENTITY, want.as_bytes())?;
                h.db.flush()?;
                Ok(())
            }
            Some(v) => Err(StoreError::Identity {
                stored: String::from_utf8_lossy(&v).into_owned(),
                configured: want,
            }),
        }
    }

    /// Highest seq and its payload hash (0 and zeros when empty).
    pub fn head(&self) -> Result<(u64, Digest), StoreError> {
        let h = self.h();
        Ok((
            read_u64(h.meta.get(HEAD_SEQ)?)?,
            read_digest(h.meta.get(HEAD_HASH)?)?,
        ))
    }

    /// Highest seq such that it and every seq below have a verified receipt.
    pub fn acked(&self) -> Result<u64, StoreError> {
        let h = self.h();
        read_u64(h.meta.get(ACKED_SEQ)?)
    }

    /// Stored bytes of the entries above [`Store::acked`].
    pub fn buffered_bytes(&self) -> Result<u64, StoreError> {
        let h = self.h();
        read_u64(h.meta.get(BUFFERED_BYTES)?)
    }

    /// Highest pruned seq and its payload hash (0 and zeros when nothing was pruned).
    pub fn pruned(&self) -> Result<(u64, Digest), StoreError> {
        let h = self.h();
        Ok((
            read_u64(h.meta.get(PRUNED_SEQ)?)?,
            read_digest(h.meta.get(PRUNED_HASH)?)?,
        ))
    }

    /// Appends one accepted batch: entries, new head, buffered bytes, quota records and the
    /// idempotency answer, in one transaction. Not durable until [`Store::flush_async`].
    pub fn append(&self, a: &Append) -> Result<(), StoreError> {
        self.append_all(std::slice::from_ref(a))
    }

    /// Appends consecutive batches (each `first` follows the previous batch's last seq) in
    /// one transaction: all of them with the last one's head, or none. One transaction for
    /// many small batches matters: sled writes its log buffer out at every transaction.
    /// Not durable until [`Store::flush_async`].
    pub fn append_all(&self, batches: &[Append]) -> Result<(), StoreError> {
        let h = self.h();
        let _changing = self.changing();
        let (Some(first), Some(last_batch)) = (batches.first(), batches.last()) else {
            return Ok(());
        };
        let mut next = first.first;
        for a in batches {
            if a.first != next || a.envelopes.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "a batch starting at seq {} was to follow seq {}",
                    a.first,
                    next - 1
                )));
            }
            next += a.envelopes.len() as u64;
        }
        let last = next - 1;
        let added: u64 = batches
            .iter()
            .flat_map(|a| &a.envelopes)
            .map(|e| e.len() as u64)
            .sum();
        // The whole group in as few values as the pack limits allow (sled holds memory per
        // value, and a transaction's cost grows with its keys). Built once: sled copies a
        // borrowed value into the transaction's write set at every attempt, and shares an
        // `IVec` it is given.
        let values = encode_packs(
            first.first,
            batches.iter().flat_map(|a| &a.envelopes).map(Vec::as_slice),
        );
        (&h.entries, &h.meta, &h.quota, &h.idem).transaction(|(entries, meta, quota, idem)| {
            let head = read_u64(meta.get(HEAD_SEQ)?).map_err(abort)?;
            if head + 1 != first.first {
                return Err(abort(StoreError::Corrupt(format!(
                    "a batch starting at seq {} was to follow head {head}",
                    first.first
                ))));
            }
            for (k, v) in &values {
                entries.insert(k.clone(), v.clone())?;
            }
            meta.insert(HEAD_SEQ, &last.to_be_bytes())?;
            meta.insert(HEAD_HASH, &last_batch.head_hash.0)?;
            let bytes = read_u64(meta.get(BUFFERED_BYTES)?).map_err(abort)?;
            meta.insert(BUFFERED_BYTES, &(bytes + added).to_be_bytes())?;
            for a in batches {
                for (seq, rec) in &a.quota_add {
                    quota.insert(&seq_key(*seq), rec.as_slice())?;
                }
                for seq in &a.quota_remove {
                    quota.remove(&seq_key(*seq))?;
                }
                if let Some(p) = &a.idem {
                    idem.insert(idem_key(&p.key), IdemStored::encode(p))?;
                    idem.insert(idem_time(p.at_ms, &p.key), &[][..])?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        let h = self.h();
        let (head, _) = self.head()?;
        h.db.flush_async().await?;
        self.durable.fetch_max(head, Ordering::AcqRel);
        Ok(())
    }

    /// Gives back memory sled kept after a burst of writes or reads, for an agent that
    /// has gone quiet (see "Memory at rest" in the module doc): with `reopen`, closes the
    /// database and opens it again ([`Store::reopen`]), which drops everything sled grew
    /// since it was opened; without, or when that cannot be done now (a change, a backup
    /// or a reader under way), reads
    /// the small [`SWEEP_TREE`] [`SWEEP_PASSES`] times instead (made on first use), so each of
    /// sled's cache shards processes its pending accesses and pages out what it holds
    /// beyond its share of [`CACHE_BYTES`]. Then frees the node versions sled handed to
    /// crossbeam-epoch's collector and asks the allocator to return the free pages.
    /// Changes nothing stored but the sweep tree's keys (written once).
    pub fn settle_memory(&self, reopen: bool) -> Result<(), StoreError> {
        if !(reopen && self.reopen()?) {
            self.sweep()?;
        }
        release_garbage();
        trim_allocator();
        Ok(())
    }

    /// Reads [`SWEEP_TREE`] [`SWEEP_PASSES`] times (see [`Store::settle_memory`]).
    fn sweep(&self) -> Result<(), StoreError> {
        let h = self.h();
        let sweep = h.db.open_tree(SWEEP_TREE)?;
        if sweep.len() < SWEEP_KEYS as usize {
            let _changing = self.changing();
            for i in 0..SWEEP_KEYS {
                sweep.insert(i.to_be_bytes(), &[])?;
            }
        }
        for _ in 0..SWEEP_PASSES {
            for kv in sweep.iter() {
                kv?;
            }
        }
        Ok(())
    }

    /// Closes the database and opens it again, if nothing uses it now: no change or
    /// backup under way (they hold [`Store::changing`] or the gate alone) and no method
    /// or iterator holding its handles. Everything is flushed before it closes, so
    /// nothing acknowledged depends on it; a method called meanwhile waits for the new
    /// handles (the open, ~0.5 s with 1 M entries buffered). `Ok(false)`: not now.
    ///
    /// sled stops its threads and drops its page table, cache and segment accounting
    /// when the last handle goes, so what it grew since it was opened (the intake's pages
    /// and the holes they left) goes with it; an open holds what a restart would.
    /// If the database cannot be opened again within [`REOPEN_PATIENCE`], the process
    /// ends as a crash would (everything acknowledged is on disk) rather than run on
    /// without a store.
    pub fn reopen(&self) -> Result<bool, StoreError> {
        let _alone = match self.gate.try_write() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        // The open writes a new snapshot of sled's page table: on a nearly full disk it
        // would fail and leave the agent without a store, so there it is not tried.
        if free_bytes(&self.path).is_some_and(|free| free < reopen_needs_bytes(&self.path)) {
            return Ok(false);
        }
        let mut slot = self
            .handles
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(current) = slot.take() else {
            return Ok(false);
        };
        let handles = match Arc::try_unwrap(current) {
            Ok(h) => h,
            Err(in_use) => {
                *slot = Some(in_use);
                return Ok(false);
            }
        };
        if let Err(e) = handles.db.flush() {
            *slot = Some(Arc::new(handles));
            return Err(e.into());
        }
        drop(handles);
        release_garbage();
        // Something of the closed database (a thread sled has not joined yet) may still
        // hold its lock for a moment.
        match open_handles_waiting(&self.path, REOPEN_PATIENCE, release_garbage) {
            Ok(h) => {
                *slot = Some(Arc::new(h));
                Ok(true)
            }
            Err(e) => {
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "Cannot open the store again after closing it at rest; the agent stops (everything it acknowledged is on disk) — fix what the error names, then start it again."
                );
                std::process::exit(1);
            }
        }
    }

    /// Blocking flush, for the command-line tools.
    pub fn flush(&self) -> Result<(), StoreError> {
        let h = self.h();
        let (head, _) = self.head()?;
        h.db.flush()?;
        self.durable.fetch_max(head, Ordering::AcqRel);
        Ok(())
    }

    /// Highest seq known to be on disk with every seq below it: entries above it were
    /// appended but no flush that started after them has completed yet. Only these may
    /// leave the agent (a hub holding a seq that a power cut then takes from the agent
    /// would see the agent reuse it: a fork).
    pub fn durable_head(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// What is remembered for an idempotency key.
    pub fn idem_get(&self, key: &[u8]) -> Result<Option<IdemStored>, StoreError> {
        let h = self.h();
        Ok(h.idem.get(idem_key(key))?.map(|v| IdemStored::decode(&v)))
    }

    /// Every remembered idempotency key with what is stored for it (for the one-time
    /// rewrite of keys stored before keys expired).
    pub fn idem_all(&self) -> impl Iterator<Item = Result<(Vec<u8>, IdemStored), StoreError>> + '_ {
        let h = self.h();
        h.idem.scan_prefix(IDEM_KEY).map(move |kv| {
            // The handles the scan reads through stay held while it lasts.
            let _held = &h;
            let (k, v) = kv?;
            Ok((k[IDEM_KEY.len()..].to_vec(), IdemStored::decode(&v)))
        })
    }

    /// Replaces what is remembered for a key and indexes it, outside a batch (the rewrite
    /// of keys stored before keys expired).
    pub fn idem_put(&self, p: &IdemPut) -> Result<(), StoreError> {
        let h = self.h();
        let _changing = self.changing();
        h.idem.transaction(|idem| {
            idem.insert(idem_key(&p.key), IdemStored::encode(p))?;
            idem.insert(idem_time(p.at_ms, &p.key), &[][..])?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Forgets a key (its index entry is pruned in time).
    pub fn idem_remove(&self, key: &[u8]) -> Result<(), StoreError> {
        let h = self.h();
        let _changing = self.changing();
        h.idem.remove(idem_key(key))?;
        Ok(())
    }

    /// Number of idempotency keys remembered.
    pub fn idem_count(&self) -> usize {
        let h = self.h();
        h.idem.scan_prefix(IDEM_KEY).count()
    }

    /// Forgets up to `max` idempotency keys first seen before `cutoff_ms`, oldest first.
    /// A key stored again after it expired has a newer time; its old index entry then
    /// removes only itself. Returns how many keys were forgotten.
    pub fn prune_idem(&self, cutoff_ms: u64, max: usize) -> Result<usize, StoreError> {
        let h = self.h();
        let _changing = self.changing();
        let end = idem_time(cutoff_ms, b"");
        let mut doomed = Vec::new();
        for kv in h.idem.range(IDEM_TIME.to_vec()..end).take(max) {
            let (t, _) = kv?;
            doomed.push(t.to_vec());
        }
        let mut forgotten = 0;
        for t in doomed {
            let Some(at) = t
                .get(IDEM_TIME.len()..IDEM_TIME.len() + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
            else {
                h.idem.remove(&t)?;
                continue;
            };
            let k = idem_key(&t[IDEM_TIME.len() + 8..]);
            let removed = h.idem.transaction(|idem| {
                idem.remove(t.as_slice())?;
                let current = idem.get(&k)?.map(|v| IdemStored::decode(&v).at_ms);
                if current == Some(Some(at)) {
                    idem.remove(k.as_slice())?;
                    return Ok::<_, ConflictableTransactionError<StoreError>>(true);
                }
                Ok(false)
            })?;
            forgotten += removed as usize;
        }
        Ok(forgotten)
    }

    /// The entries held from `from` through `through`, in seq order, never one at or
    /// below the pruned seq (a pack partly pruned keeps those bytes until its last entry
    /// is pruned; no reader sees them).
    fn entries_in(&self, from: u64, through: u64) -> Result<EntryIter, StoreError> {
        let h = self.h();
        let from = from.max(self.get_u64(PRUNED_SEQ)?.saturating_add(1));
        Ok(EntryIter {
            values: h.entries.range(seq_key(from)..),
            _held: h.clone(),
            pack: None,
            next: from,
            through,
        })
    }

    /// The envelope at `seq`, if held.
    pub fn entry(&self, seq: u64) -> Result<Option<Envelope>, StoreError> {
        match self.entries_in(seq, seq)?.next() {
            Some(Ok((at, v))) if at == seq => parse_envelope(seq, &v).map(Some),
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }

    /// Entries from `from` through `through`, at most `max_n` and about `max_bytes` (at
    /// least one when any is in range).
    pub fn entries_from(
        &self,
        from: u64,
        through: u64,
        max_n: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        if from > through {
            return Ok(out);
        }
        for row in self.entries_in(from, through)? {
            let (seq, v) = row?;
            if !out.is_empty() && (out.len() >= max_n || bytes + v.len() > max_bytes) {
                break;
            }
            bytes += v.len();
            out.push(Stored {
                seq,
                envelope: parse_envelope(seq, &v)?,
                size: v.len(),
            });
        }
        Ok(out)
    }

    /// Every stored entry in seq order, as (seq, envelope JSON).
    pub fn raw_entries(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        let (rows, failed) = match self.entries_in(1, u64::MAX) {
            Ok(it) => (Some(it), None),
            Err(e) => (None, Some(e)),
        };
        failed.map(Err).into_iter().chain(
            rows.into_iter()
                .flatten()
                .map(|r| r.map(|(s, v)| (s, v.to_vec()))),
        )
    }

    /// Number of entries held (delivered ones not yet pruned included).
    pub fn entry_count(&self) -> usize {
        let h = self.h();
        let Ok(pruned) = self.pruned() else {
            return 0;
        };
        let mut next = pruned.0.saturating_add(1);
        let mut n = 0u64;
        for kv in h.entries.range(seq_key(next)..) {
            let Ok(p) = kv
                .map_err(StoreError::from)
                .and_then(|(k, v)| Pack::decode(&k, v))
            else {
                continue;
            };
            let from = next.max(p.first);
            if from <= p.last {
                n += p.last - from + 1;
                next = p.last.saturating_add(1);
            }
        }
        n as usize
    }

    /// Number of values in the `entries` tree (packs and single entries stored before
    /// packs): what sled holds memory for.
    pub fn entry_values(&self) -> usize {
        let h = self.h();
        h.entries.len()
    }

    /// Every stored receipt in seq order: the entry's own envelope, or the id of the batch
    /// receipt that covers it.
    pub fn raw_receipts(
        &self,
    ) -> impl Iterator<Item = Result<(u64, StoredReceipt), StoreError>> + '_ {
        self.raw_receipts_from(0)
    }

    /// Number of values in the `receipts` tree (runs, and receipts stored one per seq):
    /// what sled holds memory for.
    pub fn receipt_values(&self) -> usize {
        let h = self.h();
        h.receipts.len()
    }

    /// The first stored value covering `seq` or a later seq: (first, last, receipt).
    fn receipt_row_from(&self, seq: u64) -> Result<Option<(u64, u64, StoredReceipt)>, StoreError> {
        let h = self.h();
        match h.receipts.range(seq_key(seq)..).next() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv?;
                decode_receipt_row(&k, &v).map(Some)
            }
        }
    }

    /// What is stored for `seq`: its own receipt or the id of the batch receipt covering it.
    fn stored_receipt(&self, seq: u64) -> Result<Option<StoredReceipt>, StoreError> {
        Ok(self
            .receipt_row_from(seq)?
            .filter(|(first, _, _)| *first <= seq)
            .map(|(_, _, r)| r))
    }

    /// The batch receipt envelope (JSON) stored under `id`.
    pub fn batch_receipt(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let h = self.h();
        Ok(h.batch_receipts.get(seq_key(id))?.map(|v| v.to_vec()))
    }

    /// Number of batch receipts stored.
    pub fn batch_receipt_count(&self) -> usize {
        let h = self.h();
        h.batch_receipts.len()
    }

    /// The receipt stored for `seq`, read and not verified (it was verified when stored;
    /// `verify` checks it again): the entry's own, or its part of the batch receipt.
    pub fn receipt(&self, seq: u64) -> Result<Option<Receipt>, StoreError> {
        let Some(stored) = self.stored_receipt(seq)? else {
            return Ok(None);
        };
        let unreadable = |e: String| {
            StoreError::Corrupt(format!("seq {seq}: stored receipt is unreadable: {e}"))
        };
        let env = match stored {
            StoredReceipt::Own(v) => v,
            StoredReceipt::InBatch(id) => self.batch_receipt(id)?.ok_or_else(|| {
                unreadable(format!("the batch receipt {id} it points at is missing"))
            })?,
        };
        let env = parse_envelope(seq, &env)?;
        if env.payload_type == spacesync_shared::wire::BATCH_RECEIPT_PAYLOAD_TYPE {
            let b: BatchReceipt =
                serde_json::from_slice(&env.payload).map_err(|e| unreadable(e.to_string()))?;
            return b.receipt(seq).map(Some).ok_or_else(|| {
                unreadable("the batch receipt it points at does not cover it".into())
            });
        }
        serde_json::from_slice(&env.payload)
            .map(Some)
            .map_err(|e| unreadable(e.to_string()))
    }

    /// Stored receipts from `seq` on, in seq order, as [`Store::raw_receipts`].
    pub fn raw_receipts_from(
        &self,
        seq: u64,
    ) -> impl Iterator<Item = Result<(u64, StoredReceipt), StoreError>> + '_ {
        let h = self.h();
        ReceiptIter {
            values: h.receipts.range(seq_key(seq)..),
            _held: h.clone(),
            run: None,
            next: seq,
        }
    }

    /// The log audit's state (JSON, see `push::audit`), if an audit ever stored one.
    pub fn audit_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let h = self.h();
        Ok(h.meta.get(AUDIT)?.map(|v| v.to_vec()))
    }

    /// Stores the log audit's state and, when given, the evidence of what it detected (in
    /// one transaction), then flushes: a checkpoint is kept, and an alarm stands, only once
    /// it is on disk.
    pub async fn set_audit_state(
        &self,
        json: &[u8],
        evidence: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let h = self.h();
        {
            let _changing = self.changing();
            let next = match h.audit_evidence.last()? {
                Some((k, _)) => read_u64(Some(k))? + 1,
                None => 1,
            };
            (&h.meta, &h.audit_evidence).transaction(|(meta, ev)| {
                meta.insert(AUDIT, json)?;
                if let Some(e) = evidence {
                    ev.insert(&seq_key(next), e)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
        }
        self.flush_async().await
    }

    /// Number of log-audit evidence records stored.
    pub fn audit_evidence_count(&self) -> usize {
        let h = self.h();
        h.audit_evidence.len()
    }

    /// The log-audit evidence stored last (JSON), if any.
    pub fn last_audit_evidence(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let h = self.h();
        Ok(h.audit_evidence.last()?.map(|(_, v)| v.to_vec()))
    }

    /// Every piece of log-audit evidence stored, oldest first (JSON).
    pub fn audit_evidence(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let h = self.h();
        h.audit_evidence
            .iter()
            .values()
            .map(|v| Ok(v?.to_vec()))
            .collect()
    }

    /// Whether a receipt for `seq` is held.
    pub fn has_receipt(&self, seq: u64) -> Result<bool, StoreError> {
        Ok(self.stored_receipt(seq)?.is_some())
    }

    /// Stores verified receipts (seq, envelope JSON) and advances the delivered seq over
    /// every contiguous receipted seq. Returns the new delivered seq.
    pub fn record_receipts(&self, receipts: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
        self.record(receipts, None)
    }

    /// Stores a verified batch receipt (envelope JSON) once, as the receipt of each of
    /// `seqs` (the seqs it covers that the caller checked against its entries), and advances
    /// the delivered seq as [`Store::record_receipts`] does. Returns the new delivered seq.
    pub fn record_batch_receipt(&self, envelope: &[u8], seqs: &[u64]) -> Result<u64, StoreError> {
        self.record(&[], Some((envelope, seqs)))
    }

    /// Works out what storing `own` receipts and a batch receipt covering `batch`'s seqs
    /// writes: the seqs nothing stored covers, the batch's cut into runs of consecutive
    /// seqs, and how far the delivered seq then goes. The caller holds `receipting`.
    fn plan_receipts<'a>(
        &self,
        own: &'a [(u64, Vec<u8>)],
        batch: Option<(&'a [u8], &[u64])>,
    ) -> Result<ReceiptPlan<'a>, StoreError> {
        let acked = self.acked()?;
        let mut own: Vec<(u64, &[u8])> = own.iter().map(|(s, r)| (*s, r.as_slice())).collect();
        own.sort_by_key(|(s, _)| *s);
        own.dedup_by_key(|(s, _)| *s);
        let keep = self.uncovered(own.iter().map(|(s, _)| *s))?;
        own.retain(|(s, _)| keep.binary_search(s).is_ok());
        let mut seqs: Vec<u64> = batch.map(|(_, s)| s.to_vec()).unwrap_or_default();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.retain(|s| own.binary_search_by_key(s, |(o, _)| *o).is_err());
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for s in self.uncovered(seqs.into_iter())? {
            match runs.last_mut() {
                Some((_, last)) if last.checked_add(1) == Some(s) => *last = s,
                _ => runs.push((s, s)),
            }
        }
        // How far receipts, stored and new, reach without a gap from the delivered seq.
        let new: std::collections::BTreeMap<u64, u64> = own
            .iter()
            .map(|(s, _)| (*s, *s))
            .chain(runs.iter().copied())
            .collect();
        let mut next = acked.saturating_add(1);
        loop {
            let reach = match new.range(..=next).next_back() {
                Some((_, &last)) if last >= next => Some(last),
                _ => self
                    .receipt_row_from(next)?
                    .filter(|(first, _, _)| *first <= next)
                    .map(|(_, last, _)| last),
            };
            match reach.and_then(|last| last.checked_add(1)) {
                Some(n) => next = n,
                None => break,
            }
        }
        Ok(ReceiptPlan {
            own,
            batch: batch.map(|(env, _)| env),
            runs,
            acked,
            covered_through: next - 1,
        })
    }

    /// The seqs of `sorted` (ascending) that no stored value covers. One range read per
    /// stored value met, not per seq.
    fn uncovered(&self, sorted: impl Iterator<Item = u64>) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        // The first stored value ending at or after the seq looked at last, once looked up
        // (`Some(None)`: nothing is stored at or after it).
        let mut ahead: Option<Option<(u64, u64)>> = None;
        for s in sorted {
            let stale = match ahead {
                None => true,
                Some(Some((_, last))) => last < s,
                Some(None) => false,
            };
            if stale {
                ahead = Some(self.receipt_row_from(s)?.map(|(f, l, _)| (f, l)));
            }
            match ahead {
                Some(Some((first, last))) if first <= s && s <= last => {}
                _ => out.push(s),
            }
        }
        Ok(out)
    }

    fn record(
        &self,
        receipts: &[(u64, Vec<u8>)],
        batch: Option<(&[u8], &[u64])>,
    ) -> Result<u64, StoreError> {
        let h = self.h();
        let _changing = self.changing();
        let _receipting = self.receipting.lock().unwrap_or_else(|p| p.into_inner());
        let plan = self.plan_receipts(receipts, batch)?;
        let acked = (&h.receipts, &h.batch_receipts, &h.meta, &h.entries).transaction(
            |(rtree, btree, meta, entries)| note_receipts(rtree, btree, meta, entries, &plan),
        )?;
        Ok(acked)
    }

    /// Whether this store may be behind the hub: it is a backup copy (or was run from one)
    /// and has not yet learnt from the hub what it holds of this chain.
    pub fn catching_up(&self) -> Result<bool, StoreError> {
        let h = self.h();
        Ok(h.meta.contains_key(CATCH_UP)?)
    }

    /// Marks the store as possibly behind the hub (flushed), so that the next run takes
    /// back what the hub holds before intake appends.
    pub fn mark_catch_up(&self) -> Result<(), StoreError> {
        let h = self.h();
        let _changing = self.changing();
        h.meta.insert(CATCH_UP, &[1u8][..])?;
        self.flush()
    }

    /// Records that the store holds everything the hub holds of this chain (flushed).
    pub fn caught_up(&self) -> Result<(), StoreError> {
        let h = self.h();
        let _changing = self.changing();
        h.meta.remove(CATCH_UP)?;
        self.flush()
    }

    /// Takes back entries of this chain that the hub holds, checked by the caller (each
    /// signed by this source's key in force at its seq, chained from the head), with the
    /// verified batch receipt that covers them and, possibly, held entries below them:
    /// entries, head, quota records and receipts in one transaction, then flushed. Refused
    /// (nothing written) when the entries do not follow the head. Returns the delivered seq.
    pub fn adopt(&self, a: &Adopt) -> Result<u64, StoreError> {
        let h = self.h();
        let _changing = self.changing();
        let added: u64 = a.envelopes.iter().map(|e| e.len() as u64).sum();
        let last = a.first + a.envelopes.len() as u64;
        let history = a
            .key_history
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("the key history: {e}")))?;
        let packed = encode_packs(a.first, a.envelopes.iter().map(Vec::as_slice));
        let _receipting = self.receipting.lock().unwrap_or_else(|p| p.into_inner());
        let plan = self.plan_receipts(&[], Some((a.receipt.as_slice(), a.receipted.as_slice())))?;
        let acked = (
            &h.entries,
            &h.meta,
            &h.quota,
            &h.receipts,
            &h.batch_receipts,
        )
            .transaction(|(entries, meta, quota, rtree, btree)| {
                if !a.envelopes.is_empty() {
                    let head = read_u64(meta.get(HEAD_SEQ)?).map_err(abort)?;
                    if head + 1 != a.first {
                        return Err(abort(StoreError::Corrupt(format!(
                            "entries taken back from the hub start at seq {} but the head is {head}",
                            a.first
                        ))));
                    }
                    for (k, v) in &packed {
                        entries.insert(k.clone(), v.clone())?;
                    }
                    meta.insert(HEAD_SEQ, &(last - 1).to_be_bytes())?;
                    meta.insert(HEAD_HASH, &a.head_hash.0)?;
                    let bytes = read_u64(meta.get(BUFFERED_BYTES)?).map_err(abort)?;
                    meta.insert(BUFFERED_BYTES, &(bytes + added).to_be_bytes())?;
                    for (seq, rec) in &a.quota_add {
                        quota.insert(&seq_key(*seq), rec.as_slice())?;
                    }
                    for seq in &a.quota_remove {
                        quota.remove(&seq_key(*seq))?;
                    }
                    if let Some(h) = &history {
                        meta.insert(KEY_HISTORY, h.as_slice())?;
                    }
                }
                note_receipts(rtree, btree, meta, entries, &plan)
            })?;
        self.flush()?;
        Ok(acked)
    }

    /// When the hub received `seq`, from its stored receipt (read, not verified: `verify`
    /// does that). `batch` keeps the batch receipt last read, so a run of seqs it covers
    /// reads and parses it once.
    fn receipted_at(
        &self,
        seq: u64,
        stored: StoredReceipt,
        batch: &mut Option<(u64, BatchReceipt)>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let unreadable = |e: String| {
            StoreError::Corrupt(format!("seq {seq}: stored receipt is unreadable: {e}"))
        };
        match stored {
            StoredReceipt::Own(v) => {
                let renv = parse_envelope(seq, &v)?;
                let receipt: Receipt =
                    serde_json::from_slice(&renv.payload).map_err(|e| unreadable(e.to_string()))?;
                Ok(receipt.received_at)
            }
            StoredReceipt::InBatch(id) => {
                if batch.as_ref().is_none_or(|(held, _)| *held != id) {
                    let v = self.batch_receipt(id)?.ok_or_else(|| {
                        unreadable(format!("the batch receipt {id} it points at is missing"))
                    })?;
                    let env = parse_envelope(seq, &v)?;
                    let b: BatchReceipt = serde_json::from_slice(&env.payload)
                        .map_err(|e| unreadable(e.to_string()))?;
                    *batch = Some((id, b));
                }
                batch
                    .as_ref()
                    .and_then(|(_, b)| b.receipt(seq))
                    .map(|r| r.received_at)
                    .ok_or_else(|| unreadable(format!("the batch receipt {id} does not cover it")))
            }
        }
    }

    /// Prunes delivered entries whose receipt is older than `cutoff`, at most `max` of
    /// them, never the chain head. Returns how many were pruned. Receipts are never pruned,
    /// so a batch receipt stays for every entry it covers, kept or pruned.
    pub fn prune(&self, cutoff: DateTime<Utc>, max: usize) -> Result<usize, StoreError> {
        let h = self.h();
        let _changing = self.changing();
        let (head, _) = self.head()?;
        let limit = self.acked()?.min(head.saturating_sub(1));
        let mut pruned = 0usize;
        let mut last = None;
        let mut batch = None;
        for row in self.entries_in(1, limit)? {
            let (seq, v) = row?;
            if pruned >= max {
                break;
            }
            let Some(r) = self.stored_receipt(seq)? else {
                break;
            };
            // Receipts, batch receipts included, stay: only the entry goes.
            if self.receipted_at(seq, r, &mut batch)? >= cutoff {
                break;
            }
            pruned += 1;
            last = Some((seq, v));
        }
        let Some((last, v)) = last else {
            return Ok(0);
        };
        let hash = parse_envelope(last, &v)?.payload_hash();
        // A value goes once every entry it holds is pruned; the one holding `last` and
        // later seqs stays whole (readers skip what is at or below the pruned seq).
        let gone: Vec<sled::IVec> = h
            .entries
            .range(..=seq_key(last))
            .keys()
            .collect::<Result<_, _>>()?;
        (&h.entries, &h.meta).transaction(|(entries, meta)| {
            for k in &gone {
                entries.remove(k)?;
            }
            meta.insert(PRUNED_SEQ, &last.to_be_bytes())?;
            meta.insert(PRUNED_HASH, &hash.0)?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(pruned)
    }

    /// Recommendations held and not withdrawn, in seq order.
    pub fn quota_records(&self) -> Result<Vec<(u64, Record)>, StoreError> {
        let h = self.h();
        let mut out = Vec::new();
        for kv in h.quota.iter() {
            let (k, v) = kv?;
            let seq = read_u64(Some(k))?;
            let value: serde_json::Value = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("quota record {seq}: {e}")))?;
            let rec = Record::from_value(&value)
                .map_err(|p| StoreError::Corrupt(format!("quota record {seq}: {}", p.len())))?;
            out.push((seq, rec));
        }
        Ok(out)
    }

    /// The seq and `recorded_at` of the oldest entry not yet receipted.
    pub fn oldest_unsent(&self) -> Result<Option<(u64, DateTime<Utc>)>, StoreError> {
        let acked = self.acked()?;
        let Some(env) = self.entry(acked + 1)? else {
            return Ok(None);
        };
        let e = Entry::from_payload(&env.payload)
            .map_err(|e| StoreError::Corrupt(format!("seq {}: {e}", acked + 1)))?;
        Ok(Some((acked + 1, e.recorded_at)))
    }

    fn get_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        let h = self.h();
        read_u64(h.meta.get(key)?)
    }

    fn set_u64(&self, key: &[u8], v: u64) -> Result<(), StoreError> {
        let h = self.h();
        let _changing = self.changing();
        h.meta.insert(key, &v.to_be_bytes())?;
        Ok(())
    }

    /// The hub key line stored on first use.
    pub fn hub_key(&self) -> Result<Option<String>, StoreError> {
        let h = self.h();
        Ok(h.meta
            .get(HUB_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Stores the hub key line (trust on first use), durably.
    pub async fn set_hub_key(&self, line: &str) -> Result<(), StoreError> {
        let h = self.h();
        {
            let _changing = self.changing();
            h.meta.insert(HUB_KEY, line.as_bytes())?;
        }
        self.flush_async().await
    }

    /// The last persisted push state (JSON), for `status` while the agent is stopped.
    pub fn push_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let h = self.h();
        Ok(h.meta.get(PUSH_STATE)?.map(|v| v.to_vec()))
    }

    /// Persists the push state (flushed by sled's periodic flush).
    pub fn set_push_state(&self, json: &[u8]) -> Result<(), StoreError> {
        let h = self.h();
        let _changing = self.changing();
        h.meta.insert(PUSH_STATE, json)?;
        Ok(())
    }

    /// Highest notice id stored.
    pub fn notice_cursor(&self) -> Result<u64, StoreError> {
        self.get_u64(NOTICE_CURSOR)
    }

    /// Stores notices and advances the cursor, in one transaction. Returns the new cursor.
    pub fn put_notices(&self, list: &[Notice]) -> Result<u64, StoreError> {
        let h = self.h();
        let _changing = self.changing();
        let cursor = (&h.notices, &h.meta).transaction(|(nt, meta)| {
            let mut cursor = read_u64(meta.get(NOTICE_CURSOR)?).map_err(abort)?;
            for n in list {
                let json = serde_json::to_vec(n).unwrap_or_default();
                nt.insert(&seq_key(n.id), json)?;
                cursor = cursor.max(n.id);
            }
            meta.insert(NOTICE_CURSOR, &cursor.to_be_bytes())?;
            Ok(cursor)
        })?;
        Ok(cursor)
    }

    /// Stored notices with id above `after`, ascending.
    pub fn notices_after(&self, after: u64) -> Result<Vec<Notice>, StoreError> {
        let h = self.h();
        let mut out = Vec::new();
        for kv in h.notices.range(seq_key(after.saturating_add(1))..) {
            let (k, v) = kv?;
            let id = read_u64(Some(k))?;
            out.push(
                serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("notice {id}: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Notices not yet shown by `spacesync-agent notices`.
    pub fn unread_notices(&self) -> Result<u64, StoreError> {
        let h = self.h();
        let read = self.get_u64(NOTICE_READ)?;
        Ok(h.notices.range(seq_key(read.saturating_add(1))..).count() as u64)
    }

    /// Marks notices up to `through` as read (never beyond the highest stored notice, so
    /// notices that arrive later stay unread, and never backwards). Returns the new mark.
    pub fn mark_notices_read(&self, through: u64) -> Result<u64, StoreError> {
        let h = self.h();
        let changing = self.changing();
        let mark = h.meta.transaction(|meta| {
            let cursor = read_u64(meta.get(NOTICE_CURSOR)?).map_err(abort)?;
            let old = read_u64(meta.get(NOTICE_READ)?).map_err(abort)?;
            let new = old.max(through.min(cursor));
            if new != old {
                meta.insert(NOTICE_READ, &new.to_be_bytes())?;
            }
            Ok(new)
        })?;
        drop(changing);
        self.flush()?;
        Ok(mark)
    }

    /// The read mark: notices up to it were marked read.
    pub fn notices_read_through(&self) -> Result<u64, StoreError> {
        self.get_u64(NOTICE_READ)
    }

    /// Highest notice id forwarded to the webhook.
    pub fn webhook_cursor(&self) -> Result<u64, StoreError> {
        self.get_u64(WEBHOOK_CURSOR)
    }

    /// Replaces the stored bytes of the entry at `seq` (`Some`) or removes it (`None`),
    /// rewriting the value that holds it; head, counters and receipts stay as they are.
    /// Damage on purpose, for the tests of `verify` and of damaged stores: the agent never
    /// calls it. Returns whether an entry was held at `seq`.
    pub fn damage_entry(&self, seq: u64, bytes: Option<&[u8]>) -> Result<bool, StoreError> {
        let h = self.h();
        let _changing = self.changing();
        let Some(kv) = h.entries.range(seq_key(seq)..).next() else {
            return Ok(false);
        };
        let (k, v) = kv?;
        let p = Pack::decode(&k, v)?;
        if p.first > seq {
            return Ok(false);
        }
        let held: Vec<sled::IVec> = (p.first..=p.last).map(|s| p.get(s)).collect();
        let at = (seq - p.first) as usize;
        let mut values = Vec::new();
        match bytes {
            Some(b) => {
                let mut all: Vec<&[u8]> = held.iter().map(|v| v.as_ref()).collect();
                all[at] = b;
                values.extend(encode_packs(p.first, all));
            }
            None => {
                values.extend(encode_packs(p.first, held[..at].iter().map(|v| v.as_ref())));
                values.extend(encode_packs(
                    seq + 1,
                    held[at + 1..].iter().map(|v| v.as_ref()),
                ));
            }
        }
        let mut batch = sled::Batch::default();
        batch.remove(k);
        for (k, v) in values {
            batch.insert(k, v);
        }
        h.entries.apply_batch(batch)?;
        Ok(true)
    }

    /// Rewrites the `entries` tree as an agent from before packs wrote it: each entry's
    /// envelope JSON under its own seq. For the tests of old stores.
    #[cfg(test)]
    pub(crate) fn debug_unpack(&self) -> Result<(), StoreError> {
        let h = self.h();
        let rows: Vec<(u64, Vec<u8>)> = self.raw_entries().collect::<Result<_, _>>()?;
        h.entries.clear()?;
        for (seq, v) in rows {
            h.entries.insert(seq_key(seq), v)?;
        }
        Ok(())
    }

    /// Writes raw bytes under `key` in the `entries` tree, as an agent from before packs
    /// stored an envelope (key = its seq): for the tests of old stores.
    #[cfg(test)]
    pub(crate) fn debug_put_raw_entry(&self, key: u64, value: &[u8]) -> Result<(), StoreError> {
        let h = self.h();
        h.entries.insert(seq_key(key), value)?;
        Ok(())
    }

    /// Writes raw bytes as the `receipts` value keyed `seq` (what stores before runs held
    /// for one seq): damage for tests of delivery, and old layouts for tests of reading.
    #[cfg(test)]
    pub(crate) fn debug_put_raw_receipt(&self, seq: u64, value: &[u8]) -> Result<(), StoreError> {
        let h = self.h();
        h.receipts.insert(seq_key(seq), value)?;
        Ok(())
    }

    /// Stores raw bytes for an idempotency key, as an older agent did: for tests of the
    /// rewrite of old keys.
    #[cfg(test)]
    pub(crate) fn debug_put_raw_idem(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let h = self.h();
        h.idem.insert(idem_key(key), value)?;
        Ok(())
    }

    /// Records that notices up to `id` were forwarded.
    pub fn set_webhook_cursor(&self, id: u64) -> Result<(), StoreError> {
        self.set_u64(WEBHOOK_CURSOR, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        (dir, s)
    }

    #[test]
    fn a_batch_that_does_not_follow_the_head_leaves_nothing_behind() {
        let (_d, s) = open();
        let ok = Append {
            first: 1,
            envelopes: vec![b"{}".to_vec(), b"{ }".to_vec()],
            head_hash: Digest([7; 32]),
            quota_add: vec![(2, b"{}".to_vec())],
            idem: Some(IdemPut {
                key: b"k1".to_vec(),
                value: b"answer".to_vec(),
                at_ms: 5,
            }),
            ..Append::default()
        };
        s.append(&ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.head().ok(), Some((2, Digest([7; 32]))));
        assert_eq!(s.buffered_bytes().ok(), Some(5));
        // A second writer that thinks the head is 0: refused whole.
        let stale = Append {
            first: 1,
            envelopes: vec![b"x".to_vec()],
            head_hash: Digest([9; 32]),
            quota_add: vec![(1, b"y".to_vec())],
            idem: Some(IdemPut {
                key: b"k2".to_vec(),
                value: b"answer".to_vec(),
                at_ms: 5,
            }),
            ..Append::default()
        };
        assert!(matches!(s.append(&stale), Err(StoreError::Corrupt(_))));
        assert_eq!(s.head().ok(), Some((2, Digest([7; 32]))));
        assert_eq!(s.entry_count(), 2);
        assert_eq!(s.idem_get(b"k2").ok(), Some(None));
        assert_eq!(s.idem_count(), 1);
        assert_eq!(s.h().quota.len(), 1);
        assert_eq!(s.buffered_bytes().ok(), Some(5));
    }

    #[test]
    fn batches_appended_together_land_whole_and_must_follow_each_other() {
        let (_d, s) = open();
        let batch = |first, n: usize, tag: u8| Append {
            first,
            envelopes: vec![vec![tag; 3]; n],
            head_hash: Digest([tag; 32]),
            quota_add: vec![(first, vec![tag])],
            ..Append::default()
        };
        // A gap between the two: refused whole.
        assert!(matches!(
            s.append_all(&[batch(1, 2, 1), batch(4, 1, 2)]),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(
            (s.head().ok(), s.entry_count()),
            (Some((0, Digest::ZERO)), 0)
        );
        s.append_all(&[batch(1, 2, 1), batch(3, 1, 2)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.head().ok(),
            Some((3, Digest([2; 32]))),
            "the last batch's head"
        );
        assert_eq!(s.buffered_bytes().ok(), Some(9));
        assert_eq!((s.entry_count(), s.h().quota.len()), (3, 2));
        let stored: Vec<_> = s.raw_entries().filter_map(Result::ok).collect();
        assert_eq!(
            stored,
            vec![(1, vec![1; 3]), (2, vec![1; 3]), (3, vec![2; 3])]
        );
    }

    #[test]
    fn the_durable_head_follows_completed_flushes_and_is_the_head_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("db");
        let s = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let batch = |first, n: usize| Append {
            first,
            envelopes: vec![b"{}".to_vec(); n],
            head_hash: Digest([first as u8; 32]),
            ..Append::default()
        };
        s.append(&batch(1, 2)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.durable_head(), 0, "appended is not durable");
        s.flush().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.durable_head(), 2);
        s.append(&batch(3, 3)).unwrap_or_else(|e| panic!("{e}"));
        let clone = s.clone();
        assert_eq!(clone.durable_head(), 2, "clones share the mark");
        // Nothing past the bound is read (the entries here are not envelopes: reading one
        // would fail).
        let none = s
            .entries_from(3, s.durable_head(), 100, 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            none.is_empty(),
            "entries_from stops at the bound it is given"
        );
        drop((s, clone));
        let s = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.durable_head(), s.head().map(|h| h.0).unwrap_or(0));
    }

    #[test]
    fn receipts_advance_delivery_only_over_contiguous_seqs() {
        let (_d, s) = open();
        let a = Append {
            first: 1,
            envelopes: vec![b"aa".to_vec(), b"bbb".to_vec(), b"cccc".to_vec()],
            head_hash: Digest([1; 32]),
            ..Append::default()
        };
        s.append(&a).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.record_receipts(&[(2, b"r2".to_vec())]).ok(), Some(0));
        assert_eq!(s.buffered_bytes().ok(), Some(9));
        assert_eq!(s.record_receipts(&[(1, b"r1".to_vec())]).ok(), Some(2));
        assert_eq!(s.buffered_bytes().ok(), Some(4));
        assert_eq!(s.record_receipts(&[(3, b"r3".to_vec())]).ok(), Some(3));
        assert_eq!(s.buffered_bytes().ok(), Some(0));
    }

    #[test]
    fn idempotency_keys_expire_oldest_first_and_a_renewed_key_survives_its_old_time() {
        let (_d, s) = open();
        let put = |key: &[u8], at_ms| IdemPut {
            key: key.to_vec(),
            value: b"v".to_vec(),
            at_ms,
        };
        for (k, t) in [(&b"a"[..], 10), (b"b", 20), (b"c", 30)] {
            s.idem_put(&put(k, t)).unwrap_or_else(|e| panic!("{e}"));
        }
        // "a" is stored again later (it had expired): its old index entry must not remove it.
        s.idem_put(&put(b"a", 40)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.prune_idem(25, 100).ok(), Some(1));
        assert_eq!(s.idem_get(b"b").ok(), Some(None));
        assert_eq!(
            s.idem_get(b"a").ok().flatten().and_then(|v| v.at_ms),
            Some(40)
        );
        assert_eq!(s.idem_count(), 2);
        // At most `max` per call.
        assert_eq!(s.prune_idem(1000, 1).ok(), Some(1));
        assert_eq!(s.prune_idem(1000, 100).ok(), Some(1));
        assert_eq!(s.idem_count(), 0);
        assert_eq!(s.h().idem.len(), 0, "no index entries left behind");
    }

    #[test]
    fn notices_are_marked_read_up_to_what_is_held_and_never_backwards() {
        let (_d, s) = open();
        assert_eq!(s.mark_notices_read(5).ok(), Some(0), "nothing held yet");
        s.h()
            .meta
            .insert(NOTICE_CURSOR, &7u64.to_be_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.mark_notices_read(5).ok(), Some(5));
        assert_eq!(s.mark_notices_read(3).ok(), Some(5));
        assert_eq!(s.mark_notices_read(u64::MAX).ok(), Some(7));
    }

    /// An envelope that parses, `size` payload bytes, told apart by `tag`.
    fn envelope(tag: u64, size: usize) -> Vec<u8> {
        let mut payload = tag.to_be_bytes().to_vec();
        payload.resize(size.max(8), b'p');
        serde_json::to_vec(&Envelope {
            payload_type: "t".into(),
            payload,
            signatures: Vec::new(),
        })
        .unwrap_or_default()
    }

    /// A hub receipt envelope for `seq`, received at the epoch.
    fn receipt_for(seq: u64) -> Vec<u8> {
        let r = Receipt {
            source: SourceId::parse("gd-rrt").unwrap_or_else(|e| panic!("{e}")),
            seq,
            entry_hash: Digest::ZERO,
            log_index: seq,
            received_at: DateTime::UNIX_EPOCH,
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        serde_json::to_vec(&r.sign(&key)).unwrap_or_default()
    }

    /// A hub batch receipt envelope (JSON) for `seqs`, received `secs` after the epoch.
    fn batch_receipt_for(seqs: &[u64], secs: i64) -> Vec<u8> {
        use spacesync_shared::wire::ReceiptItem;
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        let b = BatchReceipt {
            source: SourceId::parse("gd-rrt").unwrap_or_else(|e| panic!("{e}")),
            entries: seqs
                .iter()
                .map(|&seq| ReceiptItem {
                    seq,
                    entry_hash: Digest::ZERO,
                    log_index: seq,
                    received_at: DateTime::UNIX_EPOCH + chrono::Duration::seconds(secs),
                })
                .collect(),
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        serde_json::to_vec(&b.sign(&key)).unwrap_or_default()
    }

    /// What stores before runs held for a seq a batch receipt covers.
    fn old_pointer(id: u64) -> Vec<u8> {
        let mut v = vec![IN_BATCH];
        v.extend_from_slice(&id.to_be_bytes());
        v
    }

    fn ok<T>(r: Result<T, StoreError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Seqs and what is stored for each, as every reader sees them.
    fn stored_receipts(s: &Store, from: u64) -> Vec<(u64, StoredReceipt)> {
        s.raw_receipts_from(from).map(ok).collect()
    }

    fn append_n(s: &Store, n: u64) {
        let (head, _) = ok(s.head());
        ok(s.append(&Append {
            first: head + 1,
            envelopes: (head + 1..=head + n).map(|t| envelope(t, 50)).collect(),
            head_hash: Digest([n as u8; 32]),
            ..Append::default()
        }));
    }

    #[test]
    fn a_batch_receipt_is_stored_as_one_value_per_run_of_seqs_and_read_per_seq() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("db");
        let mut s = ok(Store::open(&path));
        append_n(&s, 10);
        // Seq 5 is not covered (its entry did not match): two runs, one batch receipt.
        let first: Vec<u64> = (1..=10).filter(|&q| q != 5).collect();
        assert_eq!(
            s.record_batch_receipt(&batch_receipt_for(&first, 1), &first)
                .ok(),
            Some(4)
        );
        assert_eq!(s.receipt_values(), 2);
        assert_eq!(s.batch_receipt_count(), 1);
        assert!(!ok(s.has_receipt(5)));
        assert_eq!(ok(s.receipt(5)), None);
        for q in first.iter().copied() {
            assert!(ok(s.has_receipt(q)), "seq {q}");
            assert_eq!(ok(s.receipt(q)).map(|r| r.seq), Some(q));
        }
        assert!(!ok(s.has_receipt(11)));
        // A later batch receipt over 3–8 adds only seq 5; the delivered seq passes it.
        let second: Vec<u64> = (3..=8).collect();
        assert_eq!(
            s.record_batch_receipt(&batch_receipt_for(&second, 2), &second)
                .ok(),
            Some(10)
        );
        assert_eq!(s.receipt_values(), 3);
        assert_eq!(s.batch_receipt_count(), 2);
        assert_eq!(ok(s.buffered_bytes()), 0);
        // Nothing new: nothing stored, not even the batch receipt.
        assert_eq!(
            s.record_batch_receipt(&batch_receipt_for(&[1, 2], 3), &[1, 2])
                .ok(),
            Some(10)
        );
        assert_eq!(s.receipt_values(), 3);
        assert_eq!(s.batch_receipt_count(), 2);
        let ids = |s: &Store| -> Vec<(u64, StoredReceipt)> { stored_receipts(s, 0) };
        let want: Vec<(u64, StoredReceipt)> = (1..=10)
            .map(|q| (q, StoredReceipt::InBatch(if q == 5 { 2 } else { 1 })))
            .collect();
        assert_eq!(ids(&s), want);
        assert_eq!(stored_receipts(&s, 7), want[6..].to_vec());
        assert_eq!(stored_receipts(&s, 5), want[4..].to_vec());
        ok(s.flush());
        drop(s);
        s = ok(Store::open(&path));
        assert_eq!(ids(&s), want);
        assert_eq!(ok(s.receipt(5)).map(|r| r.received_at.timestamp()), Some(2));
        assert_eq!(ok(s.receipt(6)).map(|r| r.received_at.timestamp()), Some(1));
        // Pruning reads each entry's receipt time through the runs.
        let cutoff = DateTime::UNIX_EPOCH + chrono::Duration::days(1);
        assert_eq!(s.prune(cutoff, 100).ok(), Some(9));
        assert_eq!(ok(s.pruned()).0, 9);
    }

    #[test]
    fn giving_memory_back_changes_nothing_a_reader_or_a_backup_sees() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = ok(Store::open(&dir.path().join("db")));
        append_n(&s, 40);
        let seqs: Vec<u64> = (1..=30).collect();
        ok(s.record_batch_receipt(&batch_receipt_for(&seqs, 1), &seqs));
        let entries: Vec<(u64, Vec<u8>)> = s.raw_entries().map(ok).collect();
        let receipts = stored_receipts(&s, 0);
        let before = ok(s.backup(&dir.path().join("before")));
        // Reopening (nothing holds the store), sweeping (a reader holds it), sweeping.
        ok(s.settle_memory(true));
        let reading = s.raw_entries();
        ok(s.settle_memory(true));
        drop(reading);
        ok(s.settle_memory(false));
        assert_eq!(s.raw_entries().map(ok).collect::<Vec<_>>(), entries);
        assert_eq!(stored_receipts(&s, 0), receipts);
        assert_eq!((ok(s.head()).0, ok(s.acked())), (40, 30));
        // The sweep tree is the settling's own: a backup does not carry it.
        let after = ok(s.backup(&dir.path().join("after")));
        assert_eq!(after, before);
        let copy = ok(Store::open(&dir.path().join("after")));
        assert!(
            !copy
                .h()
                .db
                .tree_names()
                .iter()
                .any(|n| n == SWEEP_TREE.as_bytes())
        );
        assert!(
            s.h()
                .db
                .tree_names()
                .iter()
                .any(|n| n == SWEEP_TREE.as_bytes())
        );
    }

    /// Appends (each acknowledged only once flushed, as intake does) and reads go on
    /// while another thread closes and reopens the store over and over: every append
    /// succeeds, nothing is lost or doubled, and all of it is there after a plain
    /// reopen from disk.
    #[test]
    fn appends_and_reads_during_reopens_are_all_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("db");
        let s = ok(Store::open(&path));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reopens = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let reopener = {
            let (s, done, reopens) = (s.clone(), done.clone(), reopens.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if ok(s.reopen()) {
                        reopens.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        let reader = {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let (head, _) = ok(s.head());
                    let seen: Vec<u64> = s.raw_entries().map(|r| ok(r).0).collect();
                    assert!(
                        seen.len() as u64 >= head,
                        "{} entries under head {head}",
                        seen.len()
                    );
                    assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>());
                }
            })
        };
        // At least 300 appends, and on until the reopener got in at least twice (a busy
        // machine can starve it for a while).
        let mut total = 0u64;
        let started = std::time::Instant::now();
        while total < 300
            || (reopens.load(Ordering::SeqCst) < 2
                && started.elapsed() < std::time::Duration::from_secs(60))
        {
            append_n(&s, 1);
            ok(s.flush());
            total += 1;
        }
        done.store(true, Ordering::SeqCst);
        reopener
            .join()
            .unwrap_or_else(|_| panic!("the reopener panicked"));
        let reopened = reopens.load(Ordering::SeqCst);
        reader
            .join()
            .unwrap_or_else(|_| panic!("the reader panicked"));
        assert!(reopened > 0, "the store was never reopened");
        let want: Vec<(u64, Vec<u8>)> = (1..=total).map(|t| (t, envelope(t, 50))).collect();
        assert_eq!(s.raw_entries().map(ok).collect::<Vec<_>>(), want);
        assert_eq!((ok(s.head()).0, s.durable_head()), (total, total));
        drop(s);
        let s = ok(Store::open(&path));
        assert_eq!(s.raw_entries().map(ok).collect::<Vec<_>>(), want);
        assert_eq!(ok(s.head()).0, total);
    }

    /// sled's lock is free for a moment inside every reopen; a second open of the store
    /// (a command-line tool: `import`, `rotate-key`, `status`) must still find it taken,
    /// or it would write beside a running agent.
    #[test]
    fn a_running_store_stays_locked_through_its_reopens() {
        let (dir, s) = open();
        append_n(&s, 200);
        let path = dir.path().join("db");
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reopener = {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !done.load(Ordering::SeqCst) {
                    if ok(s.reopen()) {
                        n += 1;
                    }
                }
                n
            })
        };
        let mut tries = 0;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(3) {
            std::thread::sleep(std::time::Duration::from_millis(1));
            match Store::open(&path) {
                Err(StoreError::Locked { .. }) => tries += 1,
                Ok(_) => panic!("a second open got the store while its owner was reopening it"),
                Err(e) => panic!("{e}"),
            }
        }
        done.store(true, Ordering::SeqCst);
        let reopened = reopener
            .join()
            .unwrap_or_else(|_| panic!("the reopener panicked"));
        assert!(
            reopened > 0 && tries > 0,
            "{reopened} reopens, {tries} opens"
        );
        drop(s);
        assert_eq!(ok(ok(Store::open(&path)).head()).0, 200);
    }

    /// A reader or a change under way keeps the store open (its handles stay valid);
    /// once they are done it reopens, and clones see the reopened store.
    #[test]
    fn a_store_in_use_is_not_reopened() {
        let (_dir, s) = open();
        append_n(&s, 20);
        let other = s.clone();
        let mut reading = s.raw_entries();
        assert_eq!(reading.next().map(|r| ok(r).0), Some(1));
        assert!(!ok(s.reopen()));
        assert_eq!(
            reading.map(|r| ok(r).0).collect::<Vec<_>>(),
            (2..=20).collect::<Vec<_>>()
        );
        let changing = s.changing();
        assert!(!ok(s.reopen()));
        drop(changing);
        assert!(ok(s.reopen()));
        append_n(&other, 5);
        assert_eq!(ok(s.head()).0, 25);
        assert_eq!(s.raw_entries().count(), 25);
    }

    #[test]
    fn a_store_with_one_receipt_value_per_seq_reads_and_takes_runs_beside_them() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("db");
        let s = ok(Store::open(&path));
        append_n(&s, 8);
        // The layout before runs, written directly: seqs 1–4 point at batch receipt 1,
        // seq 5 holds its own receipt envelope, each under its own seq.
        ok(s.h()
            .batch_receipts
            .insert(seq_key(1), batch_receipt_for(&[1, 2, 3, 4], 1))
            .map_err(StoreError::from));
        ok(s.h()
            .meta
            .insert(BATCH_RECEIPT_ID, &1u64.to_be_bytes())
            .map_err(StoreError::from));
        for q in 1..=4 {
            ok(s.debug_put_raw_receipt(q, &old_pointer(1)));
        }
        ok(s.debug_put_raw_receipt(5, &receipt_for(5)));
        ok(s.flush());
        drop(s);
        let s = ok(Store::open(&path));
        for q in 1..=5 {
            assert!(ok(s.has_receipt(q)), "seq {q}");
            assert_eq!(ok(s.receipt(q)).map(|r| r.seq), Some(q));
        }
        assert!(!ok(s.has_receipt(6)));
        let mut want: Vec<(u64, StoredReceipt)> =
            (1..=4).map(|q| (q, StoredReceipt::InBatch(1))).collect();
        want.push((5, StoredReceipt::Own(receipt_for(5))));
        assert_eq!(stored_receipts(&s, 0), want);
        // Delivery walks the old values: nothing new, the delivered seq catches up.
        assert_eq!(s.record_receipts(&[]).ok(), Some(5));
        assert_eq!(ok(s.buffered_bytes()), 3 * envelope(6, 50).len() as u64);
        // A batch receipt over 4–8 adds one run for 6–8 beside the old values.
        let seqs: Vec<u64> = (4..=8).collect();
        assert_eq!(
            s.record_batch_receipt(&batch_receipt_for(&seqs, 2), &seqs)
                .ok(),
            Some(8)
        );
        assert_eq!(s.receipt_values(), 6);
        want.extend((6..=8).map(|q| (q, StoredReceipt::InBatch(2))));
        assert_eq!(stored_receipts(&s, 0), want);
        assert_eq!(stored_receipts(&s, 4), want[3..].to_vec());
        assert_eq!(ok(s.receipt(4)).map(|r| r.received_at.timestamp()), Some(1));
        assert_eq!(ok(s.receipt(7)).map(|r| r.received_at.timestamp()), Some(2));
        let cutoff = DateTime::UNIX_EPOCH + chrono::Duration::days(1);
        assert_eq!(s.prune(cutoff, 100).ok(), Some(7));
    }

    #[test]
    fn packs_keep_to_their_limits_and_read_back_byte_for_byte() {
        let c = PACK_MAX_BYTES;
        let sizes = [10, c / 3, c / 3, c / 3, c + 2000, 1, 1, c - 200, 100];
        let envs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![b'x'; n]).collect();
        let packs = encode_packs(5, envs.iter().map(Vec::as_slice));
        let mut next = 5u64;
        let mut got = Vec::new();
        for (k, v) in &packs {
            assert!(
                v.len() <= PACK_MAX_BYTES
                    || Pack::decode(k, v.clone())
                        .map(|p| p.first == p.last)
                        .unwrap_or(false),
                "a pack past the byte limit holds one entry"
            );
            let p = ok(Pack::decode(k, v.clone()));
            assert_eq!(p.first, next, "packs follow each other");
            for seq in p.first..=p.last {
                assert_eq!(p.len_of(seq), p.get(seq).len());
                got.push(p.get(seq).to_vec());
            }
            next = p.last + 1;
        }
        assert_eq!(got, envs);
        // 10 + c/3 + c/3 | c/3 | c + 2000 | 1 + 1 + (c - 200) + 100: the limit closes a
        // pack before it would pass, never splits an entry (c + 2000 alone).
        let counts: Vec<u64> = packs
            .iter()
            .map(|(k, v)| ok(Pack::decode(k, v.clone())))
            .map(|p| p.last - p.first + 1)
            .collect();
        assert_eq!(counts, vec![3, 1, 1, 4]);
        // The entry limit.
        let many = vec![b"{}".to_vec(); PACK_MAX_ENTRIES + 1];
        let packs = encode_packs(1, many.iter().map(Vec::as_slice));
        assert_eq!(packs.len(), 2);
        assert_eq!(packs[0].0.as_ref(), &seq_key(PACK_MAX_ENTRIES as u64)[..]);
    }

    #[test]
    fn a_damaged_pack_is_refused_with_the_seq_it_ends_at() {
        let envs = [b"{}".to_vec(), b"{ }".to_vec()];
        let (k, v) = encode_packs(7, envs.iter().map(Vec::as_slice))
            .pop()
            .unwrap_or_else(|| panic!("no pack"));
        let check = |key: &[u8], value: &[u8], want: Option<&str>| {
            let got = Pack::decode(key, sled::IVec::from(value));
            match (want, got) {
                (None, Ok(_)) => {}
                (Some(w), Err(StoreError::Corrupt(e))) => {
                    assert!(e.contains(w), "{e}");
                    assert!(e.contains("up to seq"), "{e}");
                }
                (w, g) => panic!("{w:?}: {g:?}"),
            }
        };
        check(&k, &v, None);
        check(&k, &v[..5], Some("header is cut short"));
        check(&k, &v[..v.len() - 1], Some("cut short"));
        let mut longer = v.to_vec();
        longer.push(b' ');
        check(&k, &longer, Some("length disagrees"));
        check(&seq_key(9), &v, Some("2 entries from seq 7"));
        let mut zero = v.to_vec();
        zero[9..13].copy_from_slice(&0u32.to_be_bytes());
        check(&k, &zero, Some("0 entries"));
        let mut swapped = v.to_vec();
        swapped[17..21].copy_from_slice(&1u32.to_be_bytes());
        check(&k, &swapped, Some("out of order"));
        // A value that is not a pack is one entry from before packs.
        let p = ok(Pack::decode(
            &seq_key(3),
            sled::IVec::from(&b"{\"a\":1}"[..]),
        ));
        assert_eq!(
            (p.first, p.last, p.get(3).as_ref()),
            (3, 3, &b"{\"a\":1}"[..])
        );
    }

    #[test]
    fn a_store_from_before_packs_reads_prunes_and_takes_new_appends() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("db");
        let old: Vec<Vec<u8>> = (1..=6).map(|s| envelope(s, 50)).collect();
        {
            // What an agent from before packs wrote: an envelope under its seq, and meta.
            let s = ok(Store::open(&path));
            for (seq, e) in (1..).zip(&old) {
                ok(s.debug_put_raw_entry(seq, e));
            }
            let bytes: u64 = old.iter().map(|e| e.len() as u64).sum();
            ok(s.h()
                .meta
                .insert(HEAD_SEQ, &6u64.to_be_bytes())
                .map_err(StoreError::from));
            ok(s.h()
                .meta
                .insert(HEAD_HASH, &[6u8; 32])
                .map_err(StoreError::from));
            ok(s.h()
                .meta
                .insert(BUFFERED_BYTES, &bytes.to_be_bytes())
                .map_err(StoreError::from));
            ok(s.flush());
        }
        let s = ok(Store::open(&path));
        assert_eq!((s.entry_count(), s.entry_values()), (6, 6));
        assert_eq!(
            ok(s.entry(4)).map(|e| e.payload),
            serde_json::from_slice::<Envelope>(&old[3])
                .ok()
                .map(|e| e.payload)
        );
        let read: Vec<_> = ok(s.entries_from(2, 5, 100, 1 << 20))
            .into_iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(read, vec![2, 3, 4, 5]);
        // New appends add packs beside the old values.
        let new: Vec<Vec<u8>> = (7..=10).map(|s| envelope(s, 50)).collect();
        ok(s.append(&Append {
            first: 7,
            envelopes: new.clone(),
            head_hash: Digest([10; 32]),
            ..Append::default()
        }));
        assert_eq!((s.entry_count(), s.entry_values()), (10, 7));
        let all: Vec<_> = s.raw_entries().map(ok).collect();
        let want: Vec<_> = (1..).zip(old.iter().chain(&new).cloned()).collect();
        assert_eq!(all, want);
        // Receipts free the buffered bytes of both kinds of value.
        let receipts: Vec<_> = (1..=8).map(|s| (s, receipt_for(s))).collect();
        assert_eq!(s.record_receipts(&receipts).ok(), Some(8));
        let left: u64 = new[2..].iter().map(|e| e.len() as u64).sum();
        assert_eq!(s.buffered_bytes().ok(), Some(left));
        // Pruning takes the old values and the first entries of the pack; the pack stays
        // whole, and nothing at or below the pruned seq is read.
        let cutoff = DateTime::UNIX_EPOCH + chrono::Duration::days(1);
        assert_eq!(s.prune(cutoff, 7).ok(), Some(7));
        assert_eq!(s.pruned().ok().map(|p| p.0), Some(7));
        assert_eq!((s.entry_count(), s.entry_values()), (3, 1));
        assert!(ok(s.entry(7)).is_none() && ok(s.entry(3)).is_none());
        assert!(ok(s.entry(8)).is_some());
        let read: Vec<_> = ok(s.entries_from(1, 10, 100, 1 << 20))
            .into_iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(read, vec![8, 9, 10]);
        assert_eq!(
            s.raw_entries().map(|r| ok(r).0).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        // Once its last delivered entry (never the head) is pruned, the pack goes... not
        // here: 10 is the head, so the pack holding 8–10 stays.
        assert_eq!(s.prune(cutoff, 100).ok(), Some(1));
        assert_eq!((s.entry_count(), s.entry_values()), (2, 1));
    }

    #[test]
    fn a_pack_goes_once_all_its_entries_are_pruned() {
        let (_d, s) = open();
        for (first, n) in [(1u64, 3usize), (4, 3), (7, 1)] {
            ok(s.append(&Append {
                first,
                envelopes: (first..first + n as u64).map(|s| envelope(s, 20)).collect(),
                head_hash: Digest([first as u8; 32]),
                ..Append::default()
            }));
        }
        assert_eq!(s.entry_values(), 3);
        let receipts: Vec<_> = (1..=7).map(|s| (s, receipt_for(s))).collect();
        assert_eq!(s.record_receipts(&receipts).ok(), Some(7));
        let cutoff = DateTime::UNIX_EPOCH + chrono::Duration::days(1);
        assert_eq!(s.prune(cutoff, 2).ok(), Some(2));
        assert_eq!(s.entry_values(), 3, "1–3 keeps seq 3");
        assert_eq!(s.prune(cutoff, 1).ok(), Some(1));
        assert_eq!(s.entry_values(), 2, "1–3 went with seq 3");
        assert_eq!(s.prune(cutoff, 100).ok(), Some(3));
        assert_eq!(
            (s.entry_values(), s.entry_count()),
            (1, 1),
            "the head stays"
        );
        assert_eq!(s.pruned().ok().map(|p| p.0), Some(6));
    }

    #[test]
    fn damage_to_one_entry_rewrites_only_its_pack() {
        let (_d, s) = open();
        let envs: Vec<Vec<u8>> = (1..=5).map(|s| envelope(s, 20)).collect();
        ok(s.append(&Append {
            first: 1,
            envelopes: envs.clone(),
            head_hash: Digest([5; 32]),
            ..Append::default()
        }));
        assert_eq!(s.damage_entry(3, Some(b"cut")).ok(), Some(true));
        assert_eq!(s.damage_entry(9, None).ok(), Some(false));
        let all: Vec<_> = s.raw_entries().map(ok).collect();
        assert_eq!(all[2], (3, b"cut".to_vec()));
        assert_eq!(all.len(), 5);
        assert_eq!(s.damage_entry(2, None).ok(), Some(true));
        let seqs: Vec<_> = s.raw_entries().map(|r| ok(r).0).collect();
        assert_eq!(seqs, vec![1, 3, 4, 5]);
        assert_eq!(s.entry_values(), 2);
    }

    /// One step of the model test.
    #[derive(Debug, Clone)]
    enum Step {
        /// An append group: batches of envelopes of these sizes.
        Append(Vec<Vec<usize>>),
        /// Receipts for these offsets above the delivered seq (wrapped into the held range):
        /// one batch receipt for them all, or (false) one receipt each.
        Receipts(Vec<u64>, bool),
        /// Prune at most this many.
        Prune(usize),
        /// Read one seq (wrapped into 0..=head+1).
        Entry(u64),
        /// `entries_from(from, through, max_n, max_bytes)` (seqs wrapped).
        Range(u64, u64, usize, usize),
        /// Close and open the store again.
        Reopen,
    }

    fn any_step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let size = prop_oneof![8 => 1usize..1500, 1 => 6000usize..9000];
        prop_oneof![
            3 => proptest::collection::vec(proptest::collection::vec(size, 1..40), 1..4).prop_map(Step::Append),
            2 => (proptest::collection::vec(0u64..60, 1..40), any::<bool>()).prop_map(|(o, b)| Step::Receipts(o, b)),
            2 => (1usize..50).prop_map(Step::Prune),
            2 => any::<u64>().prop_map(Step::Entry),
            2 => (any::<u64>(), any::<u64>(), 1usize..80, 1usize..20_000).prop_map(|(a, b, n, m)| Step::Range(a, b, n, m)),
            1 => Just(Step::Reopen),
        ]
    }

    /// What the store should hold.
    #[derive(Debug, Default)]
    struct Model {
        /// Envelope JSON by seq, 1-based (index seq - 1), pruned ones included.
        entries: Vec<Vec<u8>>,
        receipted: std::collections::BTreeSet<u64>,
        acked: u64,
        pruned: u64,
    }

    impl Model {
        fn head(&self) -> u64 {
            self.entries.len() as u64
        }
        fn held(&self, seq: u64) -> Option<&Vec<u8>> {
            (seq > self.pruned && seq >= 1)
                .then(|| self.entries.get(seq as usize - 1))
                .flatten()
        }
        fn buffered(&self) -> u64 {
            self.entries[self.acked as usize..]
                .iter()
                .map(|e| e.len() as u64)
                .sum()
        }
    }

    fn check_all(s: &Store, m: &Model) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::prop_assert_eq;
        prop_assert_eq!(ok(s.head()).0, m.head());
        prop_assert_eq!(ok(s.acked()), m.acked);
        prop_assert_eq!(ok(s.pruned()).0, m.pruned);
        prop_assert_eq!(ok(s.buffered_bytes()), m.buffered());
        prop_assert_eq!(s.entry_count() as u64, m.head() - m.pruned);
        let all: Vec<(u64, Vec<u8>)> = s.raw_entries().map(ok).collect();
        let want: Vec<(u64, Vec<u8>)> = (m.pruned + 1..=m.head())
            .map(|seq| (seq, m.entries[seq as usize - 1].clone()))
            .collect();
        prop_assert_eq!(all, want);
        let receipted: Vec<u64> = s.raw_receipts().map(|r| ok(r).0).collect();
        prop_assert_eq!(&receipted, &m.receipted.iter().copied().collect::<Vec<_>>());
        for seq in 1..=m.head() + 1 {
            let held = m.receipted.contains(&seq);
            prop_assert_eq!(ok(s.has_receipt(seq)), held);
            prop_assert_eq!(ok(s.receipt(seq)).map(|r| r.seq), held.then_some(seq));
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Random append groups of random sizes (some past the pack limit), receipts,
        /// prunes, reads by seq and by range, and reopens, over a store that may start
        /// with entries in the layout from before packs: the store reads as a plain list
        /// of entries would.
        #[test]
        fn the_store_reads_as_a_plain_list_of_entries(
            old in 0u64..30,
            steps in proptest::collection::vec(any_step(), 1..25),
        ) {
            use proptest::prop_assert_eq;
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let path = dir.path().join("db");
            let mut s = ok(Store::open(&path));
            let mut m = Model::default();
            let mut tag = 0u64;
            if old > 0 {
                for seq in 1..=old {
                    tag += 1;
                    let e = envelope(tag, 40 + (seq as usize * 37) % 900);
                    ok(s.debug_put_raw_entry(seq, &e));
                    m.entries.push(e);
                }
                ok(s.h().meta.insert(HEAD_SEQ, &old.to_be_bytes()).map_err(StoreError::from));
                // Receipts in the layout from before runs, one value per seq: the first
                // half point at one batch receipt, every third holds its own.
                let delivered: Vec<u64> = (1..=old / 2).collect();
                if !delivered.is_empty() {
                    ok(s.h().batch_receipts.insert(seq_key(1), batch_receipt_for(&delivered, 0)).map_err(StoreError::from));
                    ok(s.h().meta.insert(BATCH_RECEIPT_ID, &1u64.to_be_bytes()).map_err(StoreError::from));
                }
                for &q in &delivered {
                    let v = if q % 3 == 0 { receipt_for(q) } else { old_pointer(1) };
                    ok(s.debug_put_raw_receipt(q, &v));
                }
                m.receipted.extend(delivered.iter().copied());
                m.acked = old / 2;
                ok(s.h().meta.insert(ACKED_SEQ, &m.acked.to_be_bytes()).map_err(StoreError::from));
                ok(s.h().meta.insert(BUFFERED_BYTES, &m.buffered().to_be_bytes()).map_err(StoreError::from));
            }
            check_all(&s, &m)?;
            for step in &steps {
                match step {
                    Step::Append(group) => {
                        let mut first = m.head() + 1;
                        let mut batches = Vec::new();
                        for sizes in group {
                            let envelopes: Vec<Vec<u8>> = sizes.iter().map(|&n| { tag += 1; envelope(tag, n) }).collect();
                            m.entries.extend(envelopes.iter().cloned());
                            batches.push(Append { first, envelopes, head_hash: Digest([tag as u8; 32]), ..Append::default() });
                            first = m.head() + 1;
                        }
                        ok(s.append_all(&batches));
                    }
                    Step::Receipts(offsets, batch) => {
                        let held = m.head() - m.acked;
                        if held == 0 {
                            continue;
                        }
                        let seqs: Vec<u64> = offsets.iter().map(|o| m.acked + 1 + o % held).collect();
                        let rs: Vec<_> = seqs.iter().map(|&q| (q, receipt_for(q))).collect();
                        m.receipted.extend(seqs.iter().copied());
                        while m.acked < m.head() && m.receipted.contains(&(m.acked + 1)) {
                            m.acked += 1;
                        }
                        let got = if *batch {
                            s.record_batch_receipt(&batch_receipt_for(&seqs, 0), &seqs)
                        } else {
                            s.record_receipts(&rs)
                        };
                        prop_assert_eq!(got.ok(), Some(m.acked));
                    }
                    Step::Prune(max) => {
                        let cutoff = DateTime::UNIX_EPOCH + chrono::Duration::days(1);
                        let limit = m.acked.min(m.head().saturating_sub(1));
                        let n = (limit.saturating_sub(m.pruned) as usize).min(*max);
                        m.pruned += n as u64;
                        prop_assert_eq!(s.prune(cutoff, *max).ok(), Some(n));
                    }
                    Step::Entry(x) => {
                        let seq = x % (m.head() + 2);
                        let want = m.held(seq).and_then(|e| serde_json::from_slice::<Envelope>(e).ok());
                        prop_assert_eq!(ok(s.entry(seq)), want);
                    }
                    Step::Range(a, b, max_n, max_bytes) => {
                        let from = a % (m.head() + 2);
                        let through = b % (m.head() + 2);
                        let mut want = Vec::new();
                        let mut bytes = 0;
                        for seq in from.max(1)..=through {
                            let Some(e) = m.held(seq) else { continue };
                            if !want.is_empty() && (want.len() >= *max_n || bytes + e.len() > *max_bytes) {
                                break;
                            }
                            bytes += e.len();
                            want.push((seq, e.len()));
                        }
                        let got: Vec<_> = ok(s.entries_from(from, through, *max_n, *max_bytes))
                            .into_iter()
                            .map(|e| (e.seq, e.size))
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                    Step::Reopen => {
                        ok(s.flush());
                        drop(s);
                        s = ok(Store::open(&path));
                    }
                }
                check_all(&s, &m)?;
            }
        }
    }
}
