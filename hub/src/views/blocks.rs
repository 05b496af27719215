//! Space counts stored in fixed blocks of [`BLOCK`] log indexes: one store value per block
//! (`v/c/<last log index of the block>`) instead of one per count, so a national log of
//! weekly snapshots holds about one view value per sixteen entries.
//!
//! A block's bounds are fixed by the log indexes, not by how ingest batched them: a
//! rebuild, which batches differently, writes every block byte for byte as ingest did, so
//! `rebuild` and `verify` can still let go of the blocks the store holds alike
//! (`views::settle`). A block is read, changed and written whole (a new count, or a count
//! marked withdrawn); ingest appends in log order, so a batch rewrites only the block it
//! continues.
//!
//! Layout of a block value: [`BLOCK_FORMAT`], then for each count in ascending log index:
//! its offset in the block (one byte, below [`BLOCK`]) and the count's own encoding with
//! its length first. Stores of layout 2 hold one value per count (its first byte the
//! count's format, not [`BLOCK_FORMAT`]) under `v/c/<log index>`; `views::prepare` puts
//! those into blocks before anything here reads them, so a value under a block's key that
//! is not a block is damage.

use super::codec::{Damaged, In, Out};

/// Log indexes a block covers (a power of two).
pub(crate) const BLOCK: u64 = 16;
/// First byte of a block value.
pub(crate) const BLOCK_FORMAT: u8 = 2;

const _: () = assert!(BLOCK.is_power_of_two() && BLOCK <= 256);

/// The last log index of the block holding `idx`: its key's index.
pub(crate) fn block_last(idx: u64) -> u64 {
    idx | (BLOCK - 1)
}

/// `idx`'s offset in its block.
pub(crate) fn offset(idx: u64) -> u8 {
    (idx & (BLOCK - 1)) as u8
}

/// Whether a stored value is a block (else, in layout 2, one count).
pub(crate) fn is_block(value: &[u8]) -> bool {
    value.first() == Some(&BLOCK_FORMAT)
}

/// The counts of a block value, as (offset, the count's encoding), ascending by offset.
pub(crate) fn parts(value: &[u8]) -> Result<Vec<(u8, &[u8])>, Damaged> {
    // Offsets ascend below BLOCK: sized once (growing it was 0.7 % of an ingest's CPU).
    let mut out: Vec<(u8, &[u8])> = Vec::with_capacity(BLOCK as usize);
    walk(value, |off, bytes| out.push((off, bytes)))?;
    Ok(out)
}

/// Hands each count of a block value to `each`, as [`parts`] lists them, once the whole
/// value has read as a block; the offset of the last one.
fn walk<'a>(value: &'a [u8], mut each: impl FnMut(u8, &'a [u8])) -> Result<u8, Damaged> {
    let mut i = In::new(value);
    if i.u8()? != BLOCK_FORMAT {
        return Err(Damaged("not a block of space counts"));
    }
    let mut last: Option<u8> = None;
    while !i.is_empty() {
        let off = i.u8()?;
        if u64::from(off) >= BLOCK {
            return Err(Damaged("an offset beyond the block"));
        }
        if last.is_some_and(|o| o >= off) {
            return Err(Damaged("offsets in a block not ascending"));
        }
        let bytes = i.bytes()?;
        if bytes.is_empty() {
            return Err(Damaged("an empty count in a block"));
        }
        each(off, bytes);
        last = Some(off);
    }
    last.ok_or(Damaged("a block without a count"))
}

/// A block value holding `parts` (ascending by offset, as [`parts`] gives them).
pub(crate) fn encode(parts: &[(u8, &[u8])]) -> Vec<u8> {
    let mut o = Out::new();
    o.u8(BLOCK_FORMAT);
    for (off, bytes) in parts {
        o.u8(*off);
        o.bytes(bytes);
    }
    o.into_bytes()
}

/// What a value under a block's key that is no block is.
const NOT_A_BLOCK: Damaged = Damaged("not a block of space counts");

/// The value under a block's key once the count at offset `off` is `count` (added, or in
/// place of the one there). `stored` is the block under the key now, if any. Appending
/// after the block's last count (ingest, in log order) copies the value once.
pub(crate) fn put(stored: Option<&[u8]>, off: u8, count: &[u8]) -> Result<Vec<u8>, Damaged> {
    let Some(stored) = stored else {
        return Ok(encode(&[(off, count)]));
    };
    if !is_block(stored) {
        // Wrapped into a block as if it were a count, it would be stored on as one.
        return Err(NOT_A_BLOCK);
    }
    let mut parts = parts(stored)?;
    if parts.last().is_some_and(|(o, _)| *o < off) {
        let mut o = Out::new();
        o.u8(off);
        o.bytes(count);
        let tail = o.into_bytes();
        // Sized once: growing a copy of `stored` reallocated for every count appended.
        let mut v = Vec::with_capacity(stored.len() + tail.len());
        v.extend_from_slice(stored);
        v.extend_from_slice(&tail);
        return Ok(v);
    }
    match parts.binary_search_by_key(&off, |(o, _)| *o) {
        Ok(i) => parts[i].1 = count,
        Err(i) => parts.insert(i, (off, count)),
    }
    Ok(encode(&parts))
}

/// [`put`] into the block value `value` where it lies: appending after the block's last
/// count (what ingest does with every count of a batch but a block's first) copies
/// nothing but what growing the value takes.
pub(crate) fn put_in(value: &mut Vec<u8>, off: u8, count: &[u8]) -> Result<(), Damaged> {
    if !is_block(value) {
        return Err(NOT_A_BLOCK);
    }
    if walk(value, |_, _| ())? < off {
        let mut o = Out::onto(std::mem::take(value));
        o.u8(off);
        o.bytes(count);
        *value = o.into_bytes();
        return Ok(());
    }
    *value = put(Some(value), off, count)?;
    Ok(())
}

/// The count at offset `off` of the block under a block's key, if it holds one.
pub(crate) fn get(stored: &[u8], off: u8) -> Result<Option<&[u8]>, Damaged> {
    if !is_block(stored) {
        // Read as nothing, it would hide the block's counts.
        return Err(NOT_A_BLOCK);
    }
    Ok(parts(stored)?
        .into_iter()
        .find_map(|(o, b)| (o == off).then_some(b)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn counts_go_in_by_offset_and_come_back() {
        let v = put(None, 3, b"c3").unwrap();
        let v = put(Some(&v), 9, b"c9").unwrap();
        let v = put(Some(&v), 1, b"c1").unwrap();
        let v = put(Some(&v), 9, b"c9-withdrawn").unwrap();
        assert_eq!(
            parts(&v).unwrap(),
            vec![
                (1, b"c1".as_slice()),
                (3, b"c3".as_slice()),
                (9, b"c9-withdrawn".as_slice())
            ]
        );
        assert_eq!(get(&v, 3).unwrap(), Some(b"c3".as_slice()));
        assert_eq!(get(&v, 4).unwrap(), None);
        assert_eq!(block_last(0), 15);
        assert_eq!(block_last(16), 31);
        assert_eq!(block_last(31), 31);
        assert_eq!(offset(33), 1);
    }

    #[test]
    fn a_value_that_is_no_block_is_neither_read_nor_added_to() {
        // Layout 2's count (first byte 1), an empty value, garbage.
        for v in [vec![1u8, 7, 7], vec![], vec![0xff, 2]] {
            assert_eq!(get(&v, 15), Err(NOT_A_BLOCK));
            assert_eq!(put(Some(&v), 2, b"c2"), Err(NOT_A_BLOCK));
        }
    }

    #[test]
    fn damaged_blocks_are_refused() {
        let good = encode(&[(1, b"a"), (4, b"bb")]);
        for n in 1..good.len() {
            // Cut after its first count, a block is that count alone; anywhere else, damaged.
            match parts(&good[..n]) {
                Ok(p) => assert_eq!((n, p), (4, vec![(1, b"a".as_slice())])),
                Err(_) => assert_ne!(n, 4),
            }
        }
        assert!(parts(&[BLOCK_FORMAT]).is_err(), "no count");
        assert!(
            parts(&encode(&[(4, b"a"), (1, b"b")])).is_err(),
            "descending"
        );
        assert!(parts(&encode(&[(4, b"a"), (4, b"b")])).is_err(), "repeated");
        assert!(parts(&encode(&[(16, b"a")])).is_err(), "beyond the block");
        assert!(parts(&encode(&[(0, b"")])).is_err(), "empty count");
        assert!(parts(&[1, 0, 1, 9]).is_err(), "not a block");
        assert!(put(Some(&good[..good.len() - 1]), 9, b"x").is_err());
    }

    #[test]
    fn put_in_refuses_what_put_refuses_and_changes_nothing_then() {
        let good = encode(&[(1, b"a"), (4, b"bb")]);
        let mut damaged = vec![good[..good.len() - 1].to_vec(), vec![1u8, 7, 7], vec![]];
        damaged.push(vec![BLOCK_FORMAT]);
        for v in damaged {
            for off in [0u8, 9, 15] {
                let mut w = v.clone();
                assert_eq!(
                    put_in(&mut w, off, b"x"),
                    put(Some(&v), off, b"x").map(|_| ())
                );
                assert!(put_in(&mut w, off, b"x").is_err());
                assert_eq!(w, v);
            }
        }
    }

    proptest! {
        /// Putting a count into a block where it lies gives the block `put` gives, at
        /// every offset: after the last count (in place), before it, or on one.
        #[test]
        fn put_in_gives_what_put_gives(
            puts in proptest::collection::vec((0u8..16, proptest::collection::vec(any::<u8>(), 1..8)), 1..40)
        ) {
            let mut v = put(None, puts[0].0, &puts[0].1).unwrap();
            for (off, bytes) in &puts[1..] {
                let want = put(Some(&v), *off, bytes).unwrap();
                put_in(&mut v, *off, bytes).unwrap();
                prop_assert_eq!(&v, &want);
            }
        }

        /// Whatever order counts are put in (each offset's last put wins), the block holds
        /// exactly the last value of each offset, ascending, and `get` finds each.
        #[test]
        fn a_block_holds_the_last_count_put_at_each_offset(
            puts in proptest::collection::vec((0u8..16, proptest::collection::vec(any::<u8>(), 1..8)), 1..40)
        ) {
            let mut model = std::collections::BTreeMap::new();
            let mut v: Option<Vec<u8>> = None;
            for (off, bytes) in &puts {
                v = Some(put(v.as_deref(), *off, bytes).unwrap());
                model.insert(*off, bytes.clone());
            }
            let v = v.unwrap();
            let got: Vec<(u8, Vec<u8>)> =
                parts(&v).unwrap().into_iter().map(|(o, b)| (o, b.to_vec())).collect();
            let want: Vec<(u8, Vec<u8>)> = model.clone().into_iter().collect();
            prop_assert_eq!(got, want);
            for off in 0..16u8 {
                prop_assert_eq!(get(&v, off).unwrap().map(<[u8]>::to_vec), model.get(&off).cloned());
            }
            // The same counts put in log order give the same bytes (a rebuild settles).
            let mut w: Option<Vec<u8>> = None;
            for (off, bytes) in &model {
                w = Some(put(w.as_deref(), *off, bytes).unwrap());
            }
            prop_assert_eq!(w.unwrap(), v);
        }
    }
}
