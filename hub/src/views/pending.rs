//! Summaries written a batch at a time: `v/d/<views position after the batch><n>` hold
//! every summary the batch changed, [`PER_VALUE`] to a value; the oldest values are later
//! folded into the summaries' own keys (`v/s/<subject>`), a bounded slice a batch.
//!
//! Why: on sled, each key a batch changes among many (a summary a school: 178,000 at
//! 3.2 M entries, 500,000 in a national campaign) costs a fragment of its leaf page and
//! node copies, and a batch of 1,000 snapshots changed ~1,000 leaves: a quarter of the
//! hub's CPU in the drain (BENCHMARKS.md, session 23). The pending values are appended in
//! key order, as the log is. A fold writes a summary under its key only if it is still
//! the subject's latest; a subject that reports again within the window (up to
//! [`FOLD_AT`] summaries pending: weekly snapshots of every school) is written under its
//! key once a window instead of once a snapshot. Folding a whole window in one batch is
//! not an option: sled held gigabytes for a batch of 178,000 keys (BENCHMARKS.md).
//!
//! What is stored is always whole: a summary's latest form is its newest `v/d/` value that
//! names it, else its `v/s/` key ([`with_pending`], what every reader of the stored
//! summaries goes through). Each `v/d/` value is written in the atomic batch of the
//! entries that changed it, and a fold writes summaries and removes values in the same
//! atomic batch, so a crash at any point leaves them whole. At most [`FOLD_AT`] summaries
//! (plus one batch's) are pending: what a start reads besides `v/s/` is bounded, not
//! proportional to the history.
//!
//! A value: for each subject, its 13 key bytes (as in `v/s/`), the summary's length (u32,
//! big-endian) and the summary as `v/s/` stores it.

use std::collections::BTreeMap;

use super::codec::Damaged;
use super::subject::{SUBJECT_LEN, Subject, parse_subject};

/// Summaries pending in `v/d/` values beyond which each batch folds the oldest: the
/// window within which a subject's repeated changes cost one `v/s/` write. Bounds what a
/// start reads besides `v/s/` (~80 MB at 80 bytes a summary).
pub(super) const FOLD_AT: u64 = 1 << 20;

/// Summaries in one `v/d/` value: a batch's are split so (sled copies a leaf's values
/// whole each time it rewrites the leaf, and keeps up to 16 values in a leaf).
pub(super) const PER_VALUE: usize = 32;

/// A summary longer than this is damage (the longest a subject reaches is a few KB).
const MAX_SUMMARY: usize = 1 << 20;

/// A `v/d/` value holding `summaries` (each subject's key bytes and stored summary).
pub(super) fn encode<'a>(summaries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (subject, summary) in summaries {
        out.extend_from_slice(subject);
        out.extend_from_slice(&(summary.len() as u32).to_be_bytes());
        out.extend_from_slice(summary);
    }
    out
}

/// One summary of a `v/d/` value: the subject, its key bytes, the summary as stored.
pub(super) type Pending<'a> = (Subject, &'a [u8], &'a [u8]);

/// The summaries of a `v/d/` value, in the order written.
pub(super) fn decode(value: &[u8]) -> Result<Vec<Pending<'_>>, Damaged> {
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_at_checked(SUBJECT_LEN)
            .ok_or(Damaged("a pending summary's subject is cut short"))?;
        let subject = parse_subject(key)?;
        let (len, after) = after
            .split_at_checked(4)
            .ok_or(Damaged("a pending summary's length is cut short"))?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_SUMMARY {
            return Err(Damaged(
                "a pending summary is longer than any summary can be",
            ));
        }
        let (summary, after) = after
            .split_at_checked(len)
            .ok_or(Damaged("a pending summary is cut short"))?;
        out.push((subject, key, summary));
        rest = after;
    }
    Ok(out)
}

/// Sorted `(key, value)` pairs of one prefix, with `pending` (full keys of that prefix,
/// newest values) read in place of the stored ones: a stored key that is pending yields
/// the pending value, a pending key not stored is yielded where it sorts.
pub(super) struct WithPending<I: Iterator> {
    stored: std::iter::Peekable<I>,
    pending: std::iter::Peekable<std::collections::btree_map::IntoIter<Vec<u8>, Vec<u8>>>,
}

/// See [`WithPending`].
pub(super) fn with_pending<I, E>(stored: I, pending: BTreeMap<Vec<u8>, Vec<u8>>) -> WithPending<I>
where
    I: Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
{
    WithPending {
        stored: stored.peekable(),
        pending: pending.into_iter().peekable(),
    }
}

impl<I, E> Iterator for WithPending<I>
where
    I: Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
{
    type Item = Result<(Vec<u8>, Vec<u8>), E>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        let order = match (self.stored.peek(), self.pending.peek()) {
            (None, None) => return None,
            (Some(Err(_)), _) | (Some(_), None) => return self.stored.next(),
            (None, Some(_)) => return self.pending.next().map(Ok),
            (Some(Ok((s, _))), Some((p, _))) => s.cmp(p),
        };
        match order {
            Ordering::Less => self.stored.next(),
            Ordering::Greater => self.pending.next().map(Ok),
            Ordering::Equal => {
                self.stored.next();
                self.pending.next().map(Ok)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::subject::subject_key;
    use proptest::prelude::*;
    use spacesync_shared::RegionCode;
    use spacesync_shared::region::SchoolCode;

    fn subject(i: u64) -> Subject {
        let region = RegionCode::parse("110105").expect("region");
        let school = SchoolCode::parse(&format!("11010{:05}", i % 100_000)).expect("school");
        (region, (!i.is_multiple_of(7)).then_some(school))
    }

    #[test]
    fn a_value_reads_back_and_damage_is_named() {
        let keys: Vec<Vec<u8>> = (1..4).map(|i| subject_key(b"", subject(i))).collect();
        let summaries: Vec<Vec<u8>> = vec![vec![1, 2, 3], Vec::new(), vec![9; 300]];
        let value = encode(
            keys.iter()
                .map(Vec::as_slice)
                .zip(summaries.iter().map(Vec::as_slice)),
        );
        let read = decode(&value).expect("reads");
        assert_eq!(read.len(), 3);
        for (i, (s, k, b)) in read.iter().enumerate() {
            assert_eq!(*s, subject(i as u64 + 1));
            assert_eq!(*k, keys[i].as_slice());
            assert_eq!(*b, summaries[i].as_slice());
        }
        assert!(decode(&value[..value.len() - 1]).is_err());
        assert!(decode(&value[..SUBJECT_LEN + 2]).is_err());
        let mut long = value.clone();
        long[SUBJECT_LEN..SUBJECT_LEN + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&long).is_err());
        assert_eq!(decode(&[]).expect("empty").len(), 0);
    }

    proptest! {
        /// The merge reads exactly what a map of the stored pairs with the pending ones
        /// written over them holds, in key order.
        #[test]
        fn the_merge_is_the_stored_map_with_the_pending_written_over(
            stored in proptest::collection::btree_map(0u16..200, 0u8..255, 0..60),
            pending in proptest::collection::btree_map(0u16..200, 0u8..255, 0..60),
        ) {
            let k = |x: &u16| x.to_be_bytes().to_vec();
            let mut want: BTreeMap<Vec<u8>, Vec<u8>> =
                stored.iter().map(|(a, b)| (k(a), vec![*b])).collect();
            let over: BTreeMap<Vec<u8>, Vec<u8>> =
                pending.iter().map(|(a, b)| (k(a), vec![*b, 1])).collect();
            want.extend(over.clone());
            let scan = stored.iter().map(|(a, b)| Ok::<_, ()>((k(a), vec![*b])));
            let got: Vec<(Vec<u8>, Vec<u8>)> =
                with_pending(scan, over).collect::<Result<_, _>>().expect("no error");
            prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        }
    }
}
