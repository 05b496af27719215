//! The source index (`src/`): which log leaf holds a source's entry `seq`, the entry's hash
//! (resends, heads) and when the hub received it (a receipt re-issued for a resend).
//!
//! A batch's entries of one source are appended as consecutive leaves with one receive
//! time, so the index keeps one **run** per batch: `src/<source>\0<last seq>` →
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | layout version, `1` |
//! | 8 | first seq of the run (u64, big-endian) |
//! | 8 | log index of the first seq |
//! | 8 | receive time, ms since the epoch (i64) |
//! | 32 × n | each entry's hash, in seq order (n = last seq − first seq + 1) |
//!
//! One key per batch instead of one per entry, and 32 bytes per entry instead of a 48-byte
//! value under a 25-byte key. Keyed by the last seq, so the run holding `seq` is the first
//! key at or after `src/<source>\0<seq>`, and the source's head the last key under its
//! prefix. Hubs before session 9 wrote one key per entry, `src/<source>\0<seq>` → log index
//! ‖ hash ‖ receive time (48 bytes, no version byte); such a value reads as a run of one, so
//! a store may hold both and opens without migration (a value is 48 bytes only in that
//! layout: a run is 25 + 32·n).

use chrono::{DateTime, Utc};
use spacesync_shared::{Digest, SourceId};

use crate::store::{Reader, Store, StoreError, WriteBatch, keys};

/// The layout version of a run.
const RUN_VERSION: u8 = 1;
/// Bytes before a run's hashes.
const RUN_HEAD: usize = 25;
/// Length of a value in the per-entry layout of older hubs.
const ENTRY_LEN: usize = 48;

/// What the index holds for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The log leaf holding it.
    pub log_index: u64,
    /// SHA-256 of its payload.
    pub hash: Digest,
    /// When the hub received it (the receipt says so).
    pub received_at: DateTime<Utc>,
}

impl Held {
    /// The per-entry value of hubs before session 9 (tests build such stores with it).
    pub fn to_entry_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(ENTRY_LEN);
        v.extend_from_slice(&self.log_index.to_be_bytes());
        v.extend_from_slice(&self.hash.0);
        v.extend_from_slice(&self.received_at.timestamp_millis().to_be_bytes());
        v
    }
}

/// One stored value decoded: the entries `first_seq..=last_seq` at consecutive leaves from
/// `first_index`.
#[derive(Debug, Clone)]
pub struct Run {
    first_seq: u64,
    last_seq: u64,
    first_index: u64,
    received_at: DateTime<Utc>,
    /// The hashes, 32 bytes each, in seq order.
    hashes: Vec<u8>,
}

impl Run {
    /// Decodes the value stored under a key ending in `last_seq`, in either layout; `None`
    /// when it is neither (damaged).
    pub fn decode(last_seq: u64, value: &[u8]) -> Option<Run> {
        if value.len() == ENTRY_LEN {
            let ms = i64::from_be_bytes(value[40..48].try_into().ok()?);
            return Some(Run {
                first_seq: last_seq,
                last_seq,
                first_index: u64::from_be_bytes(value[0..8].try_into().ok()?),
                received_at: DateTime::from_timestamp_millis(ms)?,
                hashes: value[8..40].to_vec(),
            });
        }
        if value.first() != Some(&RUN_VERSION) || value.len() < RUN_HEAD + 32 {
            return None;
        }
        let first_seq = u64::from_be_bytes(value[1..9].try_into().ok()?);
        let first_index = u64::from_be_bytes(value[9..17].try_into().ok()?);
        let ms = i64::from_be_bytes(value[17..25].try_into().ok()?);
        let n = last_seq.checked_sub(first_seq)?.checked_add(1)?;
        let len = usize::try_from(n)
            .ok()?
            .checked_mul(32)?
            .checked_add(RUN_HEAD)?;
        if value.len() != len || first_index.checked_add(n - 1).is_none() {
            return None;
        }
        Some(Run {
            first_seq,
            last_seq,
            first_index,
            received_at: DateTime::from_timestamp_millis(ms)?,
            hashes: value[RUN_HEAD..].to_vec(),
        })
    }

    /// What the run holds for `seq`, if it covers it.
    pub fn held(&self, seq: u64) -> Option<Held> {
        if seq < self.first_seq || seq > self.last_seq {
            return None;
        }
        let at = usize::try_from(seq - self.first_seq).ok()?;
        let hash: [u8; 32] = self.hashes.get(at * 32..at * 32 + 32)?.try_into().ok()?;
        Some(Held {
            log_index: self.first_index + (seq - self.first_seq),
            hash: Digest(hash),
            received_at: self.received_at,
        })
    }

    /// The seq of the run's last entry.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The seq at log leaf `index`, if the run covers it.
    pub fn seq_at(&self, index: u64) -> Option<u64> {
        let off = index.checked_sub(self.first_index)?;
        (off <= self.last_seq - self.first_seq).then(|| self.first_seq + off)
    }
}

/// Adds to `batch` the run of a batch's entries of `source`: `hashes[i]` is the hash of
/// seq `first_seq + i`, held at leaf `first_index + i`, all received at `received_at`.
/// Nothing when `hashes` is empty.
pub fn put_run(
    batch: &mut WriteBatch,
    source: &SourceId,
    first_seq: u64,
    first_index: u64,
    received_at: DateTime<Utc>,
    hashes: &[Digest],
) {
    let Some(last) = (hashes.len() as u64)
        .checked_sub(1)
        .and_then(|n| first_seq.checked_add(n))
    else {
        return;
    };
    let mut v = Vec::with_capacity(RUN_HEAD + 32 * hashes.len());
    v.push(RUN_VERSION);
    v.extend_from_slice(&first_seq.to_be_bytes());
    v.extend_from_slice(&first_index.to_be_bytes());
    v.extend_from_slice(&received_at.timestamp_millis().to_be_bytes());
    for h in hashes {
        v.extend_from_slice(&h.0);
    }
    batch.put(keys::src(source, last), v);
}

/// The stored run that would hold `source`'s `seq` (the first key at or after its place),
/// as its key and value; it may not cover `seq` (see [`Run::held`]).
fn run_at<R: Reader + ?Sized>(
    reader: &R,
    source: &SourceId,
    seq: u64,
) -> Result<Option<(Vec<u8>, Run)>, StoreError> {
    let prefix = keys::src_prefix(source);
    let Some((k, v)) = reader.read_first_from(&prefix, &keys::src(source, seq))? else {
        return Ok(None);
    };
    let last = keys::tail_u64(&k).filter(|_| k.len() == prefix.len() + 8);
    match last.and_then(|last| Run::decode(last, &v)) {
        Some(run) => Ok(Some((k, run))),
        None => Err(damaged(source, last.unwrap_or(seq))),
    }
}

fn damaged(source: &SourceId, seq: u64) -> StoreError {
    StoreError::Corrupt {
        key: format!("src/{source}/{seq}"),
        message: "source index entry is neither a run nor a 48-byte entry".into(),
    }
}

/// What the index holds for `source`'s `seq`; a damaged value is
/// [`StoreError::Corrupt`].
pub fn held<R: Reader + ?Sized>(
    reader: &R,
    source: &SourceId,
    seq: u64,
) -> Result<Option<Held>, StoreError> {
    Ok(run_at(reader, source, seq)?.and_then(|(_, run)| run.held(seq)))
}

/// The run holding `source`'s `seq`, if any (a damaged value is an error).
pub fn run<R: Reader + ?Sized>(
    reader: &R,
    source: &SourceId,
    seq: u64,
) -> Result<Option<Run>, StoreError> {
    Ok(run_at(reader, source, seq)?
        .map(|(_, run)| run)
        .filter(|run| run.held(seq).is_some()))
}

/// The key of the stored value that holds `source`'s `seq` (for tools and tests that
/// damage or inspect the index).
pub fn key_of(
    store: &dyn Store,
    source: &SourceId,
    seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(run_at(store, source, seq)?
        .filter(|(_, run)| run.held(seq).is_some())
        .map(|(k, _)| k))
}

/// The source's highest seq held and what the index holds for it.
pub fn last(store: &dyn Store, source: &SourceId) -> Result<Option<(u64, Held)>, StoreError> {
    let prefix = keys::src_prefix(source);
    let Some((k, v)) = store.last(&prefix)? else {
        return Ok(None);
    };
    let seq = keys::tail_u64(&k).unwrap_or(0);
    Run::decode(seq, &v)
        .and_then(|run| run.held(seq))
        .map(|h| Some((seq, h)))
        .ok_or_else(|| damaged(source, seq))
}

/// Which source's which seq the index places at log leaf `index` (a scan of the whole
/// index: for naming a damaged leaf only).
pub fn entry_at(store: &dyn Store, index: u64) -> Result<Option<(String, u64)>, StoreError> {
    for r in store.scan(keys::SRC) {
        let (k, v) = r?;
        let Some(last) = keys::tail_u64(&k) else {
            continue;
        };
        if let Some(seq) = Run::decode(last, &v).and_then(|run| run.seq_at(index))
            && let Some(rest) = k.get(keys::SRC.len()..k.len().saturating_sub(9))
        {
            return Ok(Some((String::from_utf8_lossy(rest).into_owned(), seq)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("time")
    }

    fn h(n: u8) -> Digest {
        Digest([n; 32])
    }

    #[test]
    fn runs_and_older_entries_are_found_by_seq() {
        let store = MemStore::new();
        let a = SourceId::parse("src-a").expect("id");
        let b = SourceId::parse("src-a2").expect("id");
        let mut wb = WriteBatch::new();
        // An older hub's per-entry values for seqs 1 and 2, then runs 3..=5 and 6..=6.
        for (seq, idx) in [(1u64, 10u64), (2, 11)] {
            let held = Held {
                log_index: idx,
                hash: h(seq as u8),
                received_at: t(1000),
            };
            wb.put(keys::src(&a, seq), held.to_entry_bytes());
        }
        put_run(&mut wb, &a, 3, 20, t(2000), &[h(3), h(4), h(5)]);
        put_run(&mut wb, &a, 6, 40, t(3000), &[h(6)]);
        put_run(&mut wb, &b, 1, 7, t(500), &[h(9)]);
        put_run(&mut wb, &b, 2, 8, t(500), &[]);
        store.apply(wb).expect("apply");

        let want = |seq: u64, idx: u64, ms: i64| {
            Some(Held {
                log_index: idx,
                hash: h(seq as u8),
                received_at: t(ms),
            })
        };
        assert_eq!(held(&store, &a, 1).expect("1"), want(1, 10, 1000));
        assert_eq!(held(&store, &a, 2).expect("2"), want(2, 11, 1000));
        assert_eq!(held(&store, &a, 3).expect("3"), want(3, 20, 2000));
        assert_eq!(held(&store, &a, 5).expect("5"), want(5, 22, 2000));
        assert_eq!(held(&store, &a, 6).expect("6"), want(6, 40, 3000));
        assert_eq!(held(&store, &a, 7).expect("7"), None);
        assert_eq!(held(&store, &a, 0).expect("0"), None);
        assert_eq!(
            held(&store, &b, 1).expect("b1").map(|x| x.log_index),
            Some(7)
        );
        assert_eq!(
            held(&store, &b, 2).expect("b2"),
            None,
            "an empty run is not written"
        );
        assert_eq!(
            last(&store, &a).expect("last"),
            Some((6, want(6, 40, 3000).expect("6")))
        );
        assert_eq!(entry_at(&store, 21).expect("at"), Some(("src-a".into(), 4)));
        assert_eq!(entry_at(&store, 11).expect("at"), Some(("src-a".into(), 2)));
        assert_eq!(entry_at(&store, 23).expect("at"), None);
        assert_eq!(
            key_of(&store, &a, 4).expect("key"),
            Some(keys::src(&a, 5)),
            "seq 4 lives in the run keyed by its last seq"
        );
        // One key per run, not per entry.
        assert_eq!(store.scan(&keys::src_prefix(&a)).count(), 4);
    }

    #[test]
    fn a_damaged_value_is_an_error_not_a_miss() {
        let store = MemStore::new();
        let a = SourceId::parse("src-a").expect("id");
        let mut wb = WriteBatch::new();
        put_run(&mut wb, &a, 3, 20, t(2000), &[h(3), h(4), h(5)]);
        store.apply(wb).expect("apply");
        let key = keys::src(&a, 5);
        let good = store.get(&key).expect("get").expect("stored");
        for bad in [
            good[..good.len() - 1].to_vec(),   // a hash cut short
            [good.as_slice(), &[0]].concat(),  // trailing byte
            [&[2u8][..], &good[1..]].concat(), // unknown version
            [&good[..1], &6u64.to_be_bytes(), &good[9..]].concat(), // first seq after the last
            Vec::new(),
        ] {
            let mut wb = WriteBatch::new();
            wb.put(key.clone(), bad.clone());
            store.apply(wb).expect("apply");
            assert!(
                matches!(held(&store, &a, 4), Err(StoreError::Corrupt { .. })),
                "{bad:?}"
            );
            assert!(last(&store, &a).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_batch_being_written_is_read_through_an_overlay() {
        let store = MemStore::new();
        let a = SourceId::parse("src-a").expect("id");
        let mut wb = WriteBatch::new();
        put_run(&mut wb, &a, 1, 0, t(1), &[h(1), h(2)]);
        store.apply(wb).expect("apply");
        let mut wb = WriteBatch::new();
        put_run(&mut wb, &a, 3, 2, t(2), &[h(3), h(4)]);
        let overlay = crate::store::Overlay::new(&store, &wb);
        assert_eq!(
            held(&overlay, &a, 2).expect("2").map(|x| x.log_index),
            Some(1)
        );
        assert_eq!(
            held(&overlay, &a, 4).expect("4").map(|x| x.log_index),
            Some(3)
        );
        assert_eq!(held(&store, &a, 4).expect("4"), None);
    }
}
