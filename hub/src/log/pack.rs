//! The stored values of the log (`log/<index>`): a **pack** of a write batch's run of
//! leaves, compressed or not, or a single record.
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
//! [`PACK_BYTES`]. What is stored is bounded by sled: sled 0.34 splits a leaf node above 16
//! keys and writes a node larger than about 128 KiB to a blob file of its own, rewritten
//! whole each time the node is; 64-leaf packs (about 42 KB each at the bench's entry size)
//! made the nodes of the log such blobs and cost more disk and `verify` memory than they
//! saved (measured, BENCHMARKS.md). Since session 15 a pack is stored LZ4-compressed, so
//! the cap on its records is set for the compressed size: a pack whose stored form would
//! pass [`PACK_STORED`] (records that do not compress) is written as two, halved until each
//! fits, and seventeen stored packs stay below sled's blob threshold whatever the records.
//! A point read decompresses one pack, at most [`PACK_BYTES`] and one record.
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
//! A compressed pack (written since session 15; tag 3 is kept for a later record layout):
//!
//! | field | bytes |
//! |---|---|
//! | tag | `0x04` ([`PACK_LZ4`]) |
//! | first index | u64, as in a pack |
//! | count | u16, at least 1 |
//! | raw length | u32: bytes of the ends and records below, decompressed |
//! | block | an LZ4 block (lz4_flex's `block` format) of a pack's ends and records |
//!
//! The writer stores a pack compressed unless that would not make it smaller (then as a
//! pack), and a lone leaf as its record unless compressing it saves bytes.
//!
//! Any other value is a single record — version 1 of [`super::record`], the JSON of
//! older hubs, or a lone leaf of this layout — for the leaf its key names. The first byte
//! tells them apart: `0x01`, `{`, `0x02` or `0x04`. Hubs before session 11 wrote one record
//! per key, hubs before session 15 uncompressed packs; such a store reads and appends
//! without migration.
//!
//! The reader takes hostile bytes: the head and the ends are checked against the key and
//! the value's length before any record is read (a compressed pack's raw length against a
//! ceiling before anything is allocated, its decompressed length against the one stated),
//! and a record that does not read is an error for its leaf only.

use super::record::{self, LogRecord, RecordError, RecordRef};
use crate::store::{WriteBatch, keys};

/// First byte of a pack.
pub const PACK: u8 = 2;

/// First byte of a compressed pack. `3` is left for a later record layout
/// ([`record::VERSION_1`]).
pub const PACK_LZ4: u8 = 4;

const _: () = assert!(PACK_LZ4 != record::VERSION_1 && PACK_LZ4 != PACK && PACK_LZ4 != 3);

/// A pack ends where the next leaf's index is a multiple of this: `2^FIRST_STORED_LEVEL`,
/// the leaves of the lowest stored tree node (`log.rs` asserts the two agree at compile
/// time; the number is written here so this module does not import its parent).
pub const PACK_LEAVES: u64 = 16;

/// A pack ends once its records hold this many bytes: room for sixteen leaves of ~1 KB.
/// Measured on the bench's records (~612 bytes each, BENCHMARKS.md session 15): packs of
/// 16 leaves store 245 bytes an entry compressed, 4 KiB packs (5.3 leaves, the cap before
/// compression) 287, with three times the sled values; a point read decompresses ~10 KB in
/// ~2 µs instead of ~3 KB in ~0.5 µs. What is stored stays under [`PACK_STORED`].
pub const PACK_BYTES: usize = 16 * 1024;

/// The most a pack is stored as (head included) unless it is one leaf: a pack that would
/// take more is written as two. Seventeen of them (a sled leaf node before it splits) and
/// their keys stay below sled's blob threshold of about 128 KiB.
pub const PACK_STORED: usize = 6 * 1024;

/// Bytes before a pack's ends: tag, first index, count.
const HEAD: usize = 1 + 8 + 2;

/// Bytes before a compressed pack's block: tag, first index, count, raw length.
const HEAD_LZ4: usize = HEAD + 4;

/// The longest record the layout of [`super::record`] allows, rounded up: the payload, its
/// type and the signatures at their limits, each signature with its key id and lengths,
/// and the fixed fields.
const MAX_RECORD: usize = record::MAX_PAYLOAD
    + record::MAX_PAYLOAD_TYPE
    + record::MAX_SIGNATURES * (record::MAX_SIGNATURE + 2 + 2 + 255)
    + 512;

/// The most raw bytes a compressed pack may state: the ends of [`PACK_LEAVES`] records,
/// and records that passed [`PACK_BYTES`] only with their last one.
const MAX_RAW: usize = 4 * PACK_LEAVES as usize + PACK_BYTES + MAX_RECORD;

/// The most an LZ4 block decompresses to per byte (a match's length grows by 255 per
/// byte of its length field), and a margin for the shortest blocks.
const LZ4_MAX_RATIO: usize = 255;
const LZ4_MARGIN: usize = 64;

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
    /// A compressed pack states more raw bytes than a pack holds or its block can give:
    /// refused before anything is allocated.
    #[error(
        "the compressed pack states {raw} raw bytes (bytes 11..15), more than the {max} its {block}-byte block and a pack's limits allow"
    )]
    RawTooLong {
        /// The raw length stated.
        raw: u32,
        /// The most allowed.
        max: usize,
        /// Bytes of LZ4 block after the head.
        block: usize,
    },
    /// A compressed pack's block is not LZ4, or decompresses past the raw length stated.
    #[error(
        "the compressed pack's LZ4 block (its {block} bytes from byte 15) does not decompress to the {raw} bytes stated: {error}"
    )]
    Lz4 {
        /// The raw length stated.
        raw: u32,
        /// Bytes of block.
        block: usize,
        /// What the decompressor found.
        error: String,
    },
    /// A compressed pack's block decompresses to fewer bytes than its head states.
    #[error(
        "the compressed pack's LZ4 block decompresses to {got} bytes, not the {raw} its head states"
    )]
    RawShort {
        /// The raw length stated.
        raw: u32,
        /// Bytes the block gave.
        got: usize,
    },
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
    /// The ends and records of the pack being compressed, kept between packs.
    raw: Vec<u8>,
    /// Packs are written uncompressed ([`PackWriter::plain`]): for a store that compresses
    /// values itself and whose own readers unpack the log (PostgreSQL).
    plain: bool,
}

impl PackWriter {
    /// A writer of packs as hubs before session 15 wrote them: never compressed.
    pub fn plain() -> PackWriter {
        PackWriter {
            plain: true,
            ..PackWriter::default()
        }
    }

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

    /// Adds the pack to `batch` (nothing when empty), compressed unless [`PackWriter::plain`],
    /// and empties it.
    pub fn write(&mut self, batch: &mut WriteBatch) {
        if self.ends.is_empty() {
            return;
        }
        if self.plain {
            let last = self.first + (self.ends.len() as u64 - 1);
            if self.ends.len() == 1 {
                batch.put(keys::log(last), self.records.as_slice());
            } else {
                batch.put(
                    keys::log(last),
                    encode(self.first, &self.ends, &self.records),
                );
            }
        } else {
            put_packed(batch, self.first, &self.ends, &self.records, &mut self.raw);
        }
        self.ends.clear();
        self.records.clear();
    }
}

/// Adds to `batch` the leaves `first..` whose records are `records`, each ending at its
/// entry of `ends`, in the smaller stored form: compressed, else as they are (a lone leaf
/// as its record); halved while that passes [`PACK_STORED`]. `raw` is scratch.
fn put_packed(batch: &mut WriteBatch, first: u64, ends: &[u32], records: &[u8], raw: &mut Vec<u8>) {
    let Some(n) = (ends.len() as u64).checked_sub(1) else {
        return;
    };
    let last = first + n;
    raw.clear();
    for e in ends {
        raw.extend_from_slice(&e.to_be_bytes());
    }
    raw.extend_from_slice(records);
    let lone = ends.len() == 1;
    let plain = if lone {
        records.len()
    } else {
        HEAD + raw.len()
    };
    let mut packed = vec![0u8; HEAD_LZ4 + lz4_flex::block::get_maximum_output_size(raw.len())];
    let compressed = match lz4_flex::block::compress_into(raw, &mut packed[HEAD_LZ4..]) {
        Ok(len) => Some(HEAD_LZ4 + len).filter(|&stored| stored < plain),
        // Not reached: the buffer has the block's largest size. Stored as it is.
        Err(_) => None,
    };
    let stored = compressed.unwrap_or(plain);
    if stored > PACK_STORED && !lone {
        // Records that do not compress: two packs, so seventeen stay below sled's blob size.
        let half = ends.len() / 2;
        let cut = ends[half - 1];
        let after: Vec<u32> = ends[half..].iter().map(|e| e - cut).collect();
        put_packed(batch, first, &ends[..half], &records[..cut as usize], raw);
        put_packed(
            batch,
            first + half as u64,
            &after,
            &records[cut as usize..],
            raw,
        );
        return;
    }
    let value = match compressed {
        Some(len) => {
            packed.truncate(len);
            packed[0] = PACK_LZ4;
            packed[1..9].copy_from_slice(&first.to_be_bytes());
            // At most PACK_LEAVES records (or one more past PACK_BYTES): far below u16::MAX.
            packed[9..11].copy_from_slice(&(ends.len() as u16).to_be_bytes());
            packed[11..15].copy_from_slice(&end_of(raw.len()).to_be_bytes());
            packed
        }
        None if lone => records.to_vec(),
        None => encode(first, ends, records),
    };
    batch.put(keys::log(last), value);
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
        && !matches!(one.first(), Some(&PACK | &PACK_LZ4))
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

/// The value stored under `log/<last>` in a form every hub reads and plain SQL can unpack:
/// a compressed pack as the pack it compresses (checked as [`Stored::parse`] checks it),
/// any other value as it is. For copying a store into one written with
/// [`PackWriter::plain`] (`migrate` into PostgreSQL).
pub fn uncompressed(last: u64, bytes: Vec<u8>) -> Result<Vec<u8>, PackError> {
    if bytes.first() != Some(&PACK_LZ4) {
        return Ok(bytes);
    }
    let plain = decompress(last, &bytes)?;
    Stored::parse(last, plain).map(|s| s.bytes)
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
        if bytes.first() == Some(&PACK_LZ4) {
            return Stored::parse(last, decompress(last, &bytes)?);
        }
        if bytes.first() != Some(&PACK) {
            return Ok(Stored {
                first: last,
                last,
                bytes,
                body: 0,
                pack: false,
            });
        }
        let (first, count) = head(last, &bytes)?;
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

    /// [`Stored::record`] into `out` (see [`record::decode_into`]).
    pub fn record_into(&self, index: u64, out: &mut LogRecord) -> Option<Result<(), RecordError>> {
        self.record_bytes(index)
            .map(|bytes| record::decode_into(bytes, out))
    }
}

/// The first index and count of a pack or compressed pack stored under leaf `last`, checked.
fn head(last: u64, bytes: &[u8]) -> Result<(u64, u16), PackError> {
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
    Ok((first, count))
}

/// A compressed pack's bytes as the pack they compress (tag [`PACK`], its head, then the
/// block decompressed), for [`Stored::parse`] to check as any pack. The raw length is
/// checked before the buffer is allocated, and must be what the block gives.
fn decompress(last: u64, bytes: &[u8]) -> Result<Vec<u8>, PackError> {
    let (first, count) = head(last, bytes)?;
    let raw = bytes
        .get(HEAD..HEAD_LZ4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(PackError::Truncated("head"))?;
    let block = &bytes[HEAD_LZ4..];
    let max = MAX_RAW.min(
        block
            .len()
            .saturating_mul(LZ4_MAX_RATIO)
            .saturating_add(LZ4_MARGIN),
    );
    if raw as usize > max {
        return Err(PackError::RawTooLong {
            raw,
            max,
            block: block.len(),
        });
    }
    let mut v = vec![0u8; HEAD + raw as usize];
    v[0] = PACK;
    v[1..9].copy_from_slice(&first.to_be_bytes());
    v[9..11].copy_from_slice(&count.to_be_bytes());
    let got =
        lz4_flex::block::decompress_into(block, &mut v[HEAD..]).map_err(|e| PackError::Lz4 {
            raw,
            block: block.len(),
            error: e.to_string(),
        })?;
    if got != raw as usize {
        return Err(PackError::RawShort { raw, got });
    }
    Ok(v)
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

    /// What a writer holding leaves `first..first + n` of `envs` stores: (key, value) pairs.
    fn written(first: u64, envs: &[Envelope]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut w = PackWriter::default();
        for (i, e) in (first..).zip(envs) {
            w.push(i, rec(i, e)).expect("push");
        }
        let mut b = WriteBatch::new();
        w.write(&mut b);
        assert!(w.is_empty());
        b.pending_under(keys::LOG)
            .map(|(k, v)| (k.to_vec(), v.expect("a value").to_vec()))
            .collect()
    }

    fn packed(first: u64, n: u64) -> (Vec<u8>, Vec<u8>) {
        let envs: Vec<Envelope> = (first..first + n).map(env).collect();
        let mut all = written(first, &envs);
        assert_eq!(all.len(), 1, "one value");
        all.remove(0)
    }

    /// The uncompressed pack of leaves `first..first + n` (the form hubs before session 15
    /// wrote).
    fn plain(first: u64, n: u64) -> Vec<u8> {
        let mut records = Vec::new();
        let mut ends = Vec::new();
        for i in first..first + n {
            record::encode_into(rec(i, &env(i)), &mut records).expect("encode");
            ends.push(end_of(records.len()));
        }
        encode(first, &ends, &records)
    }

    /// A compressed pack stating `first` and `count`, of `raw` as its ends and records.
    fn lz4(first: u64, count: u16, raw: &[u8]) -> Vec<u8> {
        let mut v = vec![PACK_LZ4];
        v.extend_from_slice(&first.to_be_bytes());
        v.extend_from_slice(&count.to_be_bytes());
        v.extend_from_slice(&end_of(raw.len()).to_be_bytes());
        v.extend_from_slice(&lz4_flex::block::compress(raw));
        v
    }

    /// Bytes that do not compress (a fixed splitmix64 sequence).
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    }

    #[test]
    fn a_pack_is_written_compressed_reads_back_each_record_and_is_keyed_by_its_last_leaf() {
        let (k, v) = packed(10, 5);
        assert_eq!(k, keys::log(14));
        assert_eq!(v[0], PACK_LZ4);
        assert!(v.len() < plain(10, 5).len(), "compressed");
        let s = Stored::parse(14, v).expect("parse");
        assert_eq!((s.first(), s.last()), (10, 14));
        for i in 10..15 {
            let r = s.record(i).expect("held").expect("reads");
            assert_eq!(r.envelope, env(i));
            assert_eq!(r.seq, i);
        }
        assert!(s.record(9).is_none() && s.record(15).is_none());
        // A pack of one whose compressed form would not be smaller is its record.
        let (k, v) = packed(7, 1);
        assert_eq!((k, v[0]), (keys::log(7), record::VERSION_1));
        let s = Stored::parse(7, v).expect("parse");
        assert_eq!(s.record(7).expect("held").expect("reads").seq, 7);
        // One that compresses is stored compressed.
        let big = Envelope {
            payload: vec![b'x'; 2000],
            ..env(3)
        };
        let all = written(3, std::slice::from_ref(&big));
        let [(k, v)] = all.as_slice() else {
            panic!("one value: {all:?}")
        };
        assert_eq!((k, v[0]), (&keys::log(3), PACK_LZ4));
        assert!(v.len() < 200, "{}", v.len());
        let s = Stored::parse(3, v.clone()).expect("parse");
        assert_eq!(s.record(3).expect("held").expect("reads").envelope, big);
    }

    /// Every stored form a hub has written reads: the JSON record, the version-1 record, the
    /// pack and the compressed pack.
    #[test]
    fn every_stored_form_reads() {
        let check = |last: u64, first: u64, bytes: Vec<u8>, form: &str| {
            let s = Stored::parse(last, bytes).unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!((s.first(), s.last()), (first, last), "{form}");
            for i in first..=last {
                let r = s.record(i).expect("held").expect(form);
                assert_eq!((r.seq, &r.envelope), (i, &env(i)), "{form}");
            }
        };
        let json = LogRecord {
            received_at: DateTime::from_timestamp(1_546_394_400, 0).unwrap_or_default(),
            source: None,
            seq: 4,
            envelope: env(4),
        };
        check(
            4,
            4,
            serde_json::to_vec(&json).expect("json"),
            "JSON record",
        );
        let mut v1 = Vec::new();
        record::encode_into(rec(5, &env(5)), &mut v1).expect("encode");
        check(5, 5, v1, "version-1 record");
        check(22, 20, plain(20, 3), "pack");
        let (_, v) = packed(30, 6);
        assert_eq!(v[0], PACK_LZ4);
        check(35, 30, v, "compressed pack");
        let raw = plain(40, 1)[HEAD..].to_vec();
        check(40, 40, lz4(40, 1, &raw), "compressed pack of one");
    }

    #[test]
    fn a_damaged_head_is_refused_with_what_is_wrong() {
        let good = plain(10, 3);
        // Each damage, stored as a pack and as a compressed pack of the same bytes after
        // the head: after decompression the same checks give the same error.
        let check = |last: u64, bytes: Vec<u8>, want: PackError| {
            assert_eq!(
                Stored::parse(last, bytes.clone()).err(),
                Some(want.clone()),
                "{bytes:?}"
            );
            if let Some(raw) = bytes.get(HEAD..)
                && want != PackError::Truncated("head")
            {
                let first = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
                let count = u16::from_be_bytes([bytes[9], bytes[10]]);
                let z = lz4(first, count, raw);
                assert_eq!(
                    Stored::parse(last, z).err(),
                    Some(want),
                    "compressed {bytes:?}"
                );
            }
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
        // A count that disagrees with the ends: one fewer leaves the last end's table entry
        // and the last record trailing; one more takes 4 bytes of records into the ends.
        let mut fewer = good.clone();
        fewer[1..9].copy_from_slice(&11u64.to_be_bytes());
        fewer[9..11].copy_from_slice(&2u16.to_be_bytes());
        let third = read_u32(&good, HEAD + 8) - read_u32(&good, HEAD + 4);
        check(12, fewer, PackError::Trailing(4 + third as usize));
        let mut more = good.clone();
        more[1..9].copy_from_slice(&9u64.to_be_bytes());
        more[9..11].copy_from_slice(&4u16.to_be_bytes());
        check(
            12,
            more,
            PackError::Ends {
                at: 2,
                end: read_u32(&good, HEAD + 8),
                len: len - 4,
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

    /// A compressed pack whose block does not give the raw bytes its head states is refused
    /// with what is wrong, before allocating what a hostile length states.
    #[test]
    fn a_damaged_compressed_pack_is_refused_with_what_is_wrong() {
        let (_, good) = packed(10, 3);
        assert_eq!(good[0], PACK_LZ4);
        let raw = read_u32(&good, HEAD);
        let block = good.len() - HEAD_LZ4;
        let with_raw = |n: u32| {
            let mut v = good.clone();
            v[HEAD..HEAD_LZ4].copy_from_slice(&n.to_be_bytes());
            v
        };
        let check = |bytes: Vec<u8>, want: &dyn Fn(&PackError) -> bool, what: &str| {
            let got = Stored::parse(12, bytes).err();
            assert!(got.as_ref().is_some_and(want), "{what}: {got:?}");
            if let Some(e) = got {
                let msg = e.to_string();
                assert!(msg.contains("pack"), "{what}: {msg}");
            }
        };
        check(
            good[..HEAD].to_vec(),
            &|e| *e == PackError::Truncated("head"),
            "no raw length",
        );
        check(
            good[..HEAD + 2].to_vec(),
            &|e| *e == PackError::Truncated("head"),
            "raw length cut",
        );
        check(
            good[..good.len() - 3].to_vec(),
            &|e| matches!(e, PackError::Lz4 { .. } | PackError::RawShort { .. }),
            "block cut short",
        );
        check(
            good[..HEAD_LZ4].to_vec(),
            &|e| matches!(e, PackError::RawTooLong { block: 0, .. }),
            "no block",
        );
        check(
            with_raw(raw + 1),
            &|e| {
                *e == PackError::RawShort {
                    raw: raw + 1,
                    got: raw as usize,
                }
            },
            "raw length one more",
        );
        check(
            with_raw(raw - 1),
            &|e| matches!(e, PackError::Lz4 { raw: r, block: b, .. } if *r == raw - 1 && *b == block),
            "raw length one less",
        );
        check(
            with_raw(u32::MAX),
            &|e| matches!(e, PackError::RawTooLong { raw: u32::MAX, .. }),
            "a hostile raw length",
        );
        // Within the ratio an LZ4 block allows but past what a pack holds.
        check(
            lz4(10, 3, &vec![0u8; MAX_RAW + 1]),
            &|e| matches!(e, PackError::RawTooLong { max: MAX_RAW, .. }),
            "past a pack's ceiling",
        );
        let mut garbage = good[..HEAD_LZ4].to_vec();
        garbage.extend_from_slice(&[0xff; 40]);
        check(
            garbage,
            &|e| matches!(e, PackError::Lz4 { .. } | PackError::RawShort { .. }),
            "garbage block",
        );
        let mut offset = good[..HEAD_LZ4].to_vec();
        // A token of no literals and a match at offset 0x4000 before anything was written.
        offset.extend_from_slice(&[0x0f, 0x00, 0x40, 0x00]);
        check(
            offset,
            &|e| matches!(e, PackError::Lz4 { .. }),
            "a match before the start",
        );
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

    /// Records that do not compress: the pack is halved until each part is stored in at
    /// most PACK_STORED; every record reads back.
    #[test]
    fn a_pack_that_does_not_compress_is_split_to_fit() {
        let envs: Vec<Envelope> = (0..16u64)
            .map(|i| Envelope {
                payload: noise(900, i + 1),
                ..env(i)
            })
            .collect();
        let all = written(0, &envs);
        let lasts: Vec<u64> = all
            .iter()
            .map(|(k, _)| keys::tail_u64(k).expect("index"))
            .collect();
        assert_eq!(lasts, [3, 7, 11, 15], "16 leaves of ~1 KB halved twice");
        let mut first = 0;
        for ((_, v), last) in all.into_iter().zip(lasts) {
            assert!(v.len() <= PACK_STORED, "{}", v.len());
            let s = Stored::parse(last, v).expect("parse");
            assert_eq!(s.first(), first);
            for i in first..=last {
                let r = s.record(i).expect("held").expect("reads");
                assert_eq!(r.envelope, envs[i as usize]);
            }
            first = last + 1;
        }
        // A lone leaf is never split, whatever its size.
        let huge = Envelope {
            payload: noise(3 * PACK_STORED, 9),
            ..env(0)
        };
        let all = written(0, std::slice::from_ref(&huge));
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1[0], record::VERSION_1);
    }

    /// A plain writer stores packs as hubs before session 15 did; `uncompressed` turns a
    /// compressed pack into exactly that value.
    #[test]
    fn a_plain_writer_and_uncompressed_give_the_pack_older_hubs_wrote() {
        let mut w = PackWriter::plain();
        for i in 10..13 {
            w.push(i, rec(i, &env(i))).expect("push");
        }
        let mut b = WriteBatch::new();
        w.write(&mut b);
        let all: Vec<_> = b.pending_under(keys::LOG).collect();
        let [(k, Some(v))] = all.as_slice() else {
            panic!("one value: {all:?}")
        };
        assert_eq!((k.to_vec(), v.to_vec()), (keys::log(12), plain(10, 3)));
        let (_, z) = packed(10, 3);
        assert_eq!(z[0], PACK_LZ4);
        assert_eq!(uncompressed(12, z.clone()), Ok(plain(10, 3)));
        assert_eq!(uncompressed(12, plain(10, 3)), Ok(plain(10, 3)), "as it is");
        assert!(matches!(
            uncompressed(13, z),
            Err(PackError::Misplaced { .. })
        ));
    }

    /// A pack that compression would not make smaller is stored as a pack.
    #[test]
    fn a_pack_that_compression_would_grow_is_stored_as_it_is() {
        let records = noise(300, 5);
        let mut b = WriteBatch::new();
        put_packed(&mut b, 8, &[150, 300], &records, &mut Vec::new());
        let all: Vec<_> = b.pending_under(keys::LOG).collect();
        let [(k, Some(v))] = all.as_slice() else {
            panic!("one value: {all:?}")
        };
        assert_eq!(
            (k.to_vec(), v.to_vec()),
            (keys::log(9), encode(8, &[150, 300], &records))
        );
    }

    proptest::proptest! {
        /// Random bytes under any key never panic the reader, whatever their first byte.
        #[test]
        fn random_values_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), last in 0u64..100, tag in 0u8..3) {
            let mut v = bytes;
            match tag {
                1 => v.insert(0, PACK),
                2 => v.insert(0, PACK_LZ4),
                _ => {}
            }
            if let Ok(s) = Stored::parse(last, v) {
                for i in s.first()..=s.last() {
                    let _ = s.record(i);
                }
            }
        }

        /// A written compressed pack with bytes overwritten never panics the reader.
        #[test]
        fn damaged_compressed_packs_never_panic(at in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 1..6), n in 2u64..16) {
            let (_, mut v) = packed(16, n);
            proptest::prop_assert_eq!(v[0], PACK_LZ4);
            for (i, b) in at {
                let len = v.len();
                v[i % len] = b;
            }
            if let Ok(s) = Stored::parse(15 + n, v) {
                for i in s.first()..=s.last() {
                    let _ = s.record(i);
                }
            }
        }
    }
}
