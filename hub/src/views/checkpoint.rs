//! The views checkpoint: every subject's summary in one sequential file, written at a clean
//! stop and read at the next start instead of the summaries' keys.
//!
//! Why: the summaries (`v/s/`, one key a school) are rewritten every week, so sled keeps
//! their pages in fragments scattered over its whole file. Reading them from a cold page
//! cache at 9 M entries read 1.4 GB for 52 MB of summaries and took 5 s of a 5.9 s start
//! (BENCHMARKS.md, session 15). The checkpoint holds the same bytes in a row.
//!
//! It is a cache of the store, never a source of truth. It is used only when all of this
//! holds, else the summaries are read from the store as before:
//!
//! - it is the one the last clean stop wrote, set aside by this open of the store (every
//!   open sets it aside and puts it back at its close only if it wrote no view key and did
//!   not move the head, so a command that changed the views since the stop leaves nothing
//!   to use: `crate::store::Store::take_views_checkpoint`);
//! - its SHA-256 holds (a torn or damaged file is refused as a whole);
//! - it was written at the store's head, views position (`v/n`) and layout and baseline
//!   date (`v/m`) that this start reads.
//!
//! Layout, every integer big-endian:
//!
//! | field | bytes |
//! |---|---|
//! | magic | `spacesync-views\0` |
//! | version | `0x01` |
//! | store head | u64 |
//! | views position (`v/n`) | u64 |
//! | layout (`v/m`) | u32 |
//! | baseline date | i32, days from 0001-01-01 (CE) |
//! | subjects | u64 |
//! | each subject | its 13 key bytes (as in `v/s/`), length u32, the summary as stored in `v/s/` |
//! | SHA-256 | of everything before it |

use chrono::{Datelike, NaiveDate};
use sha2::{Digest as _, Sha256};

use super::subject::{SUBJECT_LEN, Subject, parse_subject, subject_key};
use super::subjects::Summary;

const MAGIC: &[u8; 16] = b"spacesync-views\0";
const VERSION: u8 = 1;
/// Magic, version, head, position, layout, baseline, count.
const HEAD_LEN: usize = 16 + 1 + 8 + 8 + 4 + 4 + 8;
const HASH_LEN: usize = 32;
/// A summary longer than this is damage (the longest a subject reaches is a few KB).
const MAX_SUMMARY: usize = 1 << 20;

/// Why a checkpoint is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Shorter than its head and hash, or not a checkpoint at all.
    #[error("not a views checkpoint of this version ({0})")]
    Format(&'static str),
    /// The hash does not match: torn or damaged.
    #[error("its SHA-256 does not match its contents (torn or damaged)")]
    Hash,
    /// A subject's entry does not read.
    #[error("subject {at}: {why}")]
    Subject {
        /// Which entry (0-based).
        at: u64,
        /// What is wrong.
        why: String,
    },
    /// Written for another state of the store.
    #[error("written at {what} {written}, the store is at {found}")]
    Stale {
        /// Which position.
        what: &'static str,
        /// The checkpoint's.
        written: String,
        /// The store's.
        found: String,
    },
}

/// Where the views checkpoint stands against the store: what it must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    /// The store's head ([`crate::store::Store::head`]).
    pub head: u64,
    /// The views' position (`v/n`).
    pub next: u64,
    /// The stored layout (`v/m`).
    pub layout: u32,
    /// The baseline date the summaries were merged for (`v/m`).
    pub baseline: NaiveDate,
}

/// The checkpoint of the subjects' summaries, handed in subject order, written at `at`.
pub(super) fn encode<'a>(
    at: &Position,
    subjects: impl Iterator<Item = (&'a Subject, &'a Summary)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN + subjects.size_hint().0 * 112 + HASH_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&at.head.to_be_bytes());
    out.extend_from_slice(&at.next.to_be_bytes());
    out.extend_from_slice(&at.layout.to_be_bytes());
    out.extend_from_slice(&at.baseline.num_days_from_ce().to_be_bytes());
    // The count, filled in once they are all written.
    out.extend_from_slice(&0u64.to_be_bytes());
    let mut count = 0u64;
    for (subject, summary) in subjects {
        count += 1;
        out.extend_from_slice(&subject_key(b"", *subject));
        let bytes = summary.to_bytes();
        // A summary is a few KB at most: far below u32::MAX.
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out[HEAD_LEN - 8..HEAD_LEN].copy_from_slice(&count.to_be_bytes());
    let hash = Sha256::digest(&out);
    out.extend_from_slice(&hash);
    out
}

/// A checked checkpoint: its position and the bytes of its subjects.
#[derive(Debug)]
pub(super) struct Checkpoint {
    /// Where it was written.
    pub at: Position,
    count: u64,
    bytes: Vec<u8>,
}

/// Checks `bytes` as a checkpoint (format and hash; not yet its position).
pub(super) fn parse(bytes: Vec<u8>) -> Result<Checkpoint, CheckpointError> {
    if bytes.len() < HEAD_LEN + HASH_LEN {
        return Err(CheckpointError::Format("too short"));
    }
    if bytes[..16] != MAGIC[..] {
        return Err(CheckpointError::Format("no magic"));
    }
    if bytes[16] != VERSION {
        return Err(CheckpointError::Format("another version"));
    }
    let body = bytes.len() - HASH_LEN;
    if Sha256::digest(&bytes[..body])[..] != bytes[body..] {
        return Err(CheckpointError::Hash);
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        u32::from_be_bytes(b)
    };
    let days = u32_at(37) as i32;
    let baseline =
        NaiveDate::from_num_days_from_ce_opt(days).ok_or(CheckpointError::Format("baseline"))?;
    Ok(Checkpoint {
        at: Position {
            head: u64_at(17),
            next: u64_at(25),
            layout: u32_at(33),
            baseline,
        },
        count: u64_at(41),
        bytes,
    })
}

impl Checkpoint {
    /// Refuses a checkpoint written at another position than `store`'s.
    pub(super) fn matches(&self, store: &Position) -> Result<(), CheckpointError> {
        fn same<T: PartialEq + std::fmt::Display>(
            what: &'static str,
            written: T,
            found: T,
        ) -> Result<(), CheckpointError> {
            if written == found {
                return Ok(());
            }
            Err(CheckpointError::Stale {
                what,
                written: written.to_string(),
                found: found.to_string(),
            })
        }
        let at = &self.at;
        same("head", at.head, store.head)?;
        same("views position", at.next, store.next)?;
        same("layout", at.layout, store.layout)?;
        same("baseline date", at.baseline, store.baseline)?;
        Ok(())
    }

    /// Hands every subject's summary to `each`, in subject order, as it reads them (no
    /// second copy of them all: 552 bytes a subject decoded); an error may come after
    /// some were handed over, and then the caller drops what it took.
    pub(super) fn each_subject(
        &self,
        mut each: impl FnMut(Subject, Summary),
    ) -> Result<(), CheckpointError> {
        let end = self.bytes.len() - HASH_LEN;
        let mut at = HEAD_LEN;
        let mut before: Option<&[u8]> = None;
        for n in 0..self.count {
            let bad = |why: String| CheckpointError::Subject { at: n, why };
            let key = self
                .bytes
                .get(at..at + SUBJECT_LEN)
                .filter(|_| at + SUBJECT_LEN + 4 <= end)
                .ok_or_else(|| bad("ends early".into()))?;
            let subject = parse_subject(key).map_err(|e| bad(e.0.to_string()))?;
            if before.is_some_and(|b| b >= key) {
                return Err(bad("out of order".into()));
            }
            before = Some(key);
            at += SUBJECT_LEN;
            let mut len = [0u8; 4];
            len.copy_from_slice(&self.bytes[at..at + 4]);
            let len = u32::from_be_bytes(len) as usize;
            at += 4;
            if len > MAX_SUMMARY || end - at < len {
                return Err(bad(format!("a summary of {len} bytes past the end")));
            }
            let summary = Summary::from_bytes(subject, &self.bytes[at..at + len])
                .map_err(|e| bad(e.0.to_string()))?;
            at += len;
            each(subject, summary);
        }
        if at != end {
            return Err(CheckpointError::Format("bytes after the last subject"));
        }
        Ok(())
    }

    /// Every subject's summary (tests).
    #[cfg(test)]
    fn subjects(&self) -> Result<Vec<(Subject, Summary)>, CheckpointError> {
        let mut out = Vec::new();
        self.each_subject(|s, m| out.push((s, m)))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> NaiveDate {
        NaiveDate::from_ymd_opt(2018, 9, 1).unwrap_or_default()
    }

    fn at(head: u64) -> Position {
        Position {
            head,
            next: 0,
            layout: 3,
            baseline: baseline(),
        }
    }

    fn empty(head: u64) -> Vec<u8> {
        encode(&at(head), std::iter::empty())
    }

    fn rehash(mut b: Vec<u8>) -> Vec<u8> {
        let body = b.len() - HASH_LEN;
        let hash = Sha256::digest(&b[..body]);
        b[body..].copy_from_slice(&hash);
        b
    }

    #[test]
    fn a_checkpoint_reads_back_at_the_position_it_was_written() {
        let c = parse(empty(7)).expect("parse");
        let at = at(7);
        assert_eq!(c.at, at);
        assert!(c.subjects().expect("subjects").is_empty());
        c.matches(&at).expect("matches");
        for other in [
            Position { head: 8, ..at },
            Position { next: 1, ..at },
            Position { layout: 2, ..at },
            Position {
                baseline: at.baseline.succ_opt().unwrap_or_default(),
                ..at
            },
        ] {
            assert!(matches!(
                c.matches(&other),
                Err(CheckpointError::Stale { .. })
            ));
        }
    }

    #[test]
    fn damage_is_refused_and_named() {
        let good = empty(1);
        for len in 0..good.len() {
            assert!(parse(good[..len].to_vec()).is_err(), "cut at {len}");
        }
        let mut b = good.clone();
        b[0] ^= 1;
        assert_eq!(parse(b).err(), Some(CheckpointError::Format("no magic")));
        let mut b = good.clone();
        b[16] = 2;
        assert_eq!(
            parse(b).err(),
            Some(CheckpointError::Format("another version"))
        );
        let mut b = good.clone();
        b[20] ^= 1;
        assert_eq!(parse(b).err(), Some(CheckpointError::Hash));
        // Hashed again, so only the structure can tell: a subject that is not there, and
        // bytes after the last one.
        let mut b = good.clone();
        b[48] = 1;
        let c = parse(rehash(b)).expect("head reads");
        assert!(matches!(
            c.subjects(),
            Err(CheckpointError::Subject { at: 0, .. })
        ));
        let mut b = good.clone();
        b.splice(HEAD_LEN..HEAD_LEN, [0u8; 3]);
        let c = parse(rehash(b)).expect("head reads");
        assert_eq!(
            c.subjects().err(),
            Some(CheckpointError::Format("bytes after the last subject"))
        );
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            count in 0u64..5,
        ) {
            let mut b = empty(3);
            b.truncate(HEAD_LEN);
            b[41..49].copy_from_slice(&count.to_be_bytes());
            b.extend_from_slice(&tail);
            b.extend_from_slice(&[0u8; HASH_LEN]);
            let b = rehash(b);
            if let Ok(c) = parse(b) {
                let _ = c.each_subject(|_, _| {});
            }
        }
    }
}
