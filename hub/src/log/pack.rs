//! The stored values of the log (`log/<index>`): a **pack** of a write batch's run of
//! leaves, or a single record.
//!
//! A batch's leaves are stored as one value, keyed by the index of its last leaf, so a
//! leaf is found with one lookup of the first key at or after `log/<index>`
//! ([`crate::store::Store::first_from`]). One value per pack instead of one per leaf:
//! sled keeps tens of bytes of memory per stored value, whatever its size (BENCHMARKS.md,
//! session 11: the serving hub's memory fell by ~0.2 KB per value saved at 360,000 entries).
//!
//! A pack ends where the next index is a multiple of [`PACK_LEAVES`] — the leaves below a
//! stored tree node (`2^FIRST_STORED_LEVEL` of them) never span two batches' packs, so a
//! node computed for a proof reads from at most one pack — or once its records pass
//! [`PACK_BYTES`]. The byte cap is sled's: sled 0.34 splits a leaf node above 16 keys and
//! writes a node larger than about 128 KiB to a blob file of its own, rewritten whole each
//! time the node is; 64-leaf packs (about 42 KB each at the bench's entry size) made the
//! nodes of the log such blobs and cost more disk and `verify` memory than they saved
//! (measured, BENCHMARKS.md). A point read copies at most a pack, a few KB.
//!
//! A pack, every integer big-endian:
//!
//! | field | bytes |
//! |---|---|
//! | tag | `0x02` ([`PACK`]) |
//! | first index | u64 (the key holds the last: last − first + 1 = count) |
//! | count | u16, at least 1 |
//! | ends | count × u32: where each record ends, from the start of the records |
//! | records | each in the binary layout of [`super::record`] (version byte included) |
//!
//! Any other value is a single record — version 1 of [`super::record`], the JSON of
//! older hubs, or a lone leaf of this layout (a pack of one is written as its record) —
//! for the leaf its key names. The first byte tells them apart: `0x01`, `{` or `0x02`.
//! Hubs before session 11 wrote one record per key; such a store reads and appends without
//! migration.
//!
//! The reader takes hostile bytes: the head and the ends are checked against the key and
//! the value's length before any record is read, and a record that does not read is an
//! error for its leaf only.

use super::record::{self, LogRecord, RecordError, RecordRef};
use crate::store::{WriteBatch, keys};

/// First byte of a pack.
pub const PACK: u8 = 2;

/// A pack ends where the next leaf's index is a multiple of this: `2^FIRST_STORED_LEVEL`,
/// the leaves of the lowest stored tree node (`log.rs` asserts the two agree at compile
/// time; the number is written here so this module does not import its parent).
pub const PACK_LEAVES: u64 = 16;

/// A pack ends once its records hold this many bytes: seventeen packs (a sled leaf node
/// before it splits) of this size plus one record stay below sled's blob threshold.
pub const PACK_BYTES: usize = 4 * 1024;

/// Bytes before a pack's ends: tag, first index, count.
const HEAD: usize = 1 + 8 + 2;

/// Why a stored pack's head does not read (its records are judged one by one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// The value ends inside the head or the ends.
    #[error("the pack ends inside its {0}")]
    Truncated(&'static str),
    /// A pack of no records.
    #[error("the pack holds no records")]
    Empty,
    /// The first index and count do not end at the key's index.
    #[error("the pack holds leaves {first}.. ({count} of them) but is stored under leaf {last}")]
    Misplaced {
        /// The first index the pack gives.
        first: u64,
        /// Its count.
        count: u16,
        /// The index its key gives.
        last: u64,
    },
    /// An end before the one before it, or past the records.
    #[error("the pack's end of record {at} ({end}) is out of order or past its {len} bytes")]
    Ends {
        /// Which record (0-based).
        at: usize,
        /// The end found.
        end: u32,
        /// Bytes of records.
        len: usize,
    },
    /// Bytes after the last record's end.
    #[error("{0} bytes follow the pack's last record")]
    Trailing(usize),
}

/// The pack being filled: the current batch's leaves since the last pack was written.
#[derive(Debug, Clone, Default)]
pub struct PackWriter {
    /// Index of the first leaf held.
    first: u64,
    /// Where each record ends in `records`.
    ends: Vec<u32>,
    /// The records, encoded, one after another.
    records: Vec<u8>,
}

impl PackWriter {
    /// Leaves held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when no leaf waits to be written.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Adds the record of leaf `index`, the next after those held (the first when empty).
    /// An oversized field is refused and leaves the pack as it was.
    pub fn push(&mut self, index: u64, r: RecordRef<'_>) -> Result<(), RecordError> {
        if self.ends.is_empty() {
            self.first = index;
            self.records.clear();
        }
        record::encode_into(r, &mut self.records)?;
        self.ends.push(end_of(self.records.len()));
        Ok(())
    }

    /// Takes back the last record pushed.
    pub fn pop(&mut self) {
        self.ends.pop();
        let end = self.ends.last().map_or(0, |e| *e as usize);
        self.records.truncate(end);
    }

    /// Whether the pack is to end after the leaves it holds.
    pub fn full(&self) -> bool {
        let next = self.first.wrapping_add(self.ends.len() as u64);
        (!self.is_empty() && next.is_multiple_of(PACK_LEAVES)) || self.records.len() >= PACK_BYTES
    }

    /// Adds the pack to `batch` (nothing when empty) and empties it.
    pub fn write(&mut self, batch: &mut WriteBatch) {
        if self.ends.is_empty() {
            return;
        }
        let last = self.first + (self.ends.len() as u64 - 1);
        if self.ends.len() == 1 {
            batch.put(keys::log(last), self.records.as_slice());
        } else {
            batch.put(
                keys::log(last),
                encode(self.first, &self.ends, &self.records),
            );
        }
        self.ends.clear();
        self.records.clear();
    }
}

/// A record's end as stored. A pack's records stay far below 4 GiB: it ends once past
/// [`PACK_BYTES`], and one record holds at most about [`record::MAX_PAYLOAD`].
fn end_of(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn encode(first: u64, ends: &[u32], records: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEAD + 4 * ends.len() + records.len());
    v.push(PACK);
    v.extend_from_slice(&first.to_be_bytes());
    // At most PACK_LEAVES records (or one more past PACK_BYTES): far below u16::MAX.
    v.extend_from_slice(&(ends.len() as u16).to_be_bytes());
    for e in ends {
        v.extend_from_slice(&e.to_be_bytes());
    }
    v.extend_from_slice(records);
    v
}

/// Adds to `batch` the leaves `first..` with these stored record bytes (any bytes: tools
/// and tests that damage the log write through it), as one value keyed by the last.
pub fn put_raw(batch: &mut WriteBatch, first: u64, records: &[Vec<u8>]) {
    let Some(n) = (records.len() as u64).checked_sub(1) else {
        return;
    };
    let last = first + n;
    // A lone record is stored as itself, unless its bytes would read as a pack.
    if let [one] = records
        && one.first() != Some(&PACK)
    {
        batch.put(keys::log(last), one.as_slice());
        return;
    }
    let mut body = Vec::new();
    let mut ends = Vec::with_capacity(records.len());
    for r in records {
        body.extend_from_slice(r);
        ends.push(end_of(body.len()));
    }
    batch.put(keys::log(last), encode(first, &ends, &body));
}

/// One stored value read: the leaves `first..=last` and where their records lie.
#[derive(Debug, Clone)]
pub struct Stored {
    first: u64,
    last: u64,
    bytes: Vec<u8>,
    /// Where the records start in `bytes` (0 for a single record), and where the ends
    /// table starts (unused for a single record).
    body: usize,
    /// Whether `bytes` is a pack.
    pack: bool,
}

impl Stored {
    /// Reads the value stored under `log/<last>`: a pack's head is checked here, its
    /// records when they are read.
    pub fn parse(last: u64, bytes: Vec<u8>) -> Result<Stored, PackError> {
        if bytes.first() != Some(&PACK) {
            return Ok(Stored {
                first: last,
                last,
                bytes,
                body: 0,
                pack: false,
            });
        }
        let head = bytes.get(..HEAD).ok_or(PackError::Truncated("head"))?;
        let first = u64::from_be_bytes(
            head[1..9]
                .try_into()
                .map_err(|_| PackError::Truncated("head"))?,
        );
        let count = u16::from_be_bytes([head[9], head[10]]);
        if count == 0 {
            return Err(PackError::Empty);
        }
        if first.checked_add(u64::from(count) - 1) != Some(last) {
            return Err(PackError::Misplaced { first, count, last });
        }
        let body = HEAD + 4 * count as usize;
        let len = bytes
            .len()
            .checked_sub(body)
            .ok_or(PackError::Truncated("ends"))?;
        let mut before = 0u32;
        for at in 0..count as usize {
            let end = read_u32(&bytes, HEAD + 4 * at);
            if end < before || end as usize > len {
                return Err(PackError::Ends { at, end, len });
            }
            before = end;
        }
        if before as usize != len {
            return Err(PackError::Trailing(len - before as usize));
        }
        Ok(Stored {
            first,
            last,
            bytes,
            body,
            pack: true,
        })
    }

    /// The first leaf held.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The last leaf held (the key's index).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The stored bytes of leaf `index`'s record, if the value holds it.
    pub fn record_bytes(&self, index: u64) -> Option<&[u8]> {
        if index < self.first || index > self.last {
            return None;
        }
        if !self.pack {
            return Some(&self.bytes);
        }
        let at = usize::try_from(index - self.first).ok()?;
        let start = match at {
            0 => 0,
            _ => read_u32(&self.bytes, HEAD + 4 * (at - 1)) as usize,
        };
        let end = read_u32(&self.bytes, HEAD + 4 * at) as usize;
        self.bytes.get(self.body + start..self.body + end)
    }

    /// Leaf `index`'s record, if the value holds it.
    pub fn record(&self, index: u64) -> Option<Result<LogRecord, RecordError>> {
        self.record_bytes(index).map(record::decode)
    }
}

/// The u32 at `at` (checked by [`Stored::parse`] to lie within the ends).
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use spacesync_shared::dsse::Envelope;

    fn env(i: u64) -> Envelope {
        Envelope {
            payload_type: "text/plain".into(),
            payload: format!("leaf {i}").into_bytes(),
            signatures: Vec::new(),
        }
    }

    fn rec(i: u64, e: &Envelope) -> RecordRef<'_> {
        RecordRef {
            received_at: DateTime::from_timestamp(1_546_394_400, 0).unwrap_or_default(),
            source: None,
            seq: i,
            envelope: e,
        }
    }

    fn packed(first: u64, n: u64) -> (Vec<u8>, Vec<u8>) {
        let mut w = PackWriter::default();
        for i in first..first + n {
            w.push(i, rec(i, &env(i))).expect("push");
        }
        let mut b = WriteBatch::new();
        w.write(&mut b);
        assert!(w.is_empty());
        let (k, v) = b.pending_under(keys::LOG).next().expect("written");
        (k.to_vec(), v.expect("a value").to_vec())
    }

    #[test]
    fn a_pack_reads_back_each_record_and_is_keyed_by_its_last_leaf() {
        let (k, v) = packed(10, 5);
        assert_eq!(k, keys::log(14));
        assert_eq!(v[0], PACK);
        let s = Stored::parse(14, v).expect("parse");
        assert_eq!((s.first(), s.last()), (10, 14));
        for i in 10..15 {
            let r = s.record(i).expect("held").expect("reads");
            assert_eq!(r.envelope, env(i));
            assert_eq!(r.seq, i);
        }
        assert!(s.record(9).is_none() && s.record(15).is_none());
        // A pack of one is its record.
        let (k, v) = packed(7, 1);
        assert_eq!((k, v[0]), (keys::log(7), record::VERSION_1));
        let s = Stored::parse(7, v).expect("parse");
        assert_eq!(s.record(7).expect("held").expect("reads").seq, 7);
    }

    #[test]
    fn a_damaged_head_is_refused_with_what_is_wrong() {
        let (_, good) = packed(10, 3);
        let check = |last: u64, bytes: Vec<u8>, want: PackError| {
            assert_eq!(
                Stored::parse(last, bytes.clone()).err(),
                Some(want),
                "{bytes:?}"
            );
        };
        check(12, good[..5].to_vec(), PackError::Truncated("head"));
        check(12, good[..HEAD + 5].to_vec(), PackError::Truncated("ends"));
        check(
            13,
            good.clone(),
            PackError::Misplaced {
                first: 10,
                count: 3,
                last: 13,
            },
        );
        let mut zero = good.clone();
        zero[9..11].copy_from_slice(&0u16.to_be_bytes());
        check(12, zero, PackError::Empty);
        let mut trailing = good.clone();
        trailing.push(0);
        check(12, trailing, PackError::Trailing(1));
        let len = good.len() - HEAD - 12;
        let mut order = good.clone();
        order[HEAD + 4..HEAD + 8].copy_from_slice(&0u32.to_be_bytes());
        let first_end = read_u32(&good, HEAD);
        assert!(first_end > 0);
        check(12, order, PackError::Ends { at: 1, end: 0, len });
        let mut past = good.clone();
        past[HEAD + 8..HEAD + 12].copy_from_slice(&u32::MAX.to_be_bytes());
        check(
            12,
            past,
            PackError::Ends {
                at: 2,
                end: u32::MAX,
                len,
            },
        );
        // An overflowing first index is misplaced, not a panic.
        let mut wrap = good;
        wrap[1..9].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            Stored::parse(12, wrap),
            Err(PackError::Misplaced { .. })
        ));
    }

    #[test]
    fn a_pack_ends_at_a_multiple_of_its_leaves_or_past_its_bytes() {
        let mut w = PackWriter::default();
        for i in 12..16 {
            assert!(!w.full());
            w.push(i, rec(i, &env(i))).expect("push");
        }
        assert!(w.full(), "leaf 15 ends the pack");
        let mut w = PackWriter::default();
        let big = Envelope {
            payload: vec![0; PACK_BYTES],
            ..env(0)
        };
        w.push(1, rec(1, &big)).expect("push");
        assert!(w.full());
        w.pop();
        assert!(w.is_empty() && !w.full());
    }

    proptest::proptest! {
        /// Random bytes under any key never panic the reader.
        #[test]
        fn random_values_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), last in 0u64..100, tag in proptest::prelude::any::<bool>()) {
            let mut v = bytes;
            if tag {
                v.insert(0, PACK);
            }
            if let Ok(s) = Stored::parse(last, v) {
                for i in s.first()..=s.last() {
                    let _ = s.record(i);
                }
            }
        }
    }
}
