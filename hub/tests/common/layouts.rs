//! Views as older layouts stored them, made from a store of this version's (layout 5):
//! what the conversion tests (`views_migration`, `attack_chains`) start from.

use std::collections::BTreeMap;

use spacesync_hub::store::{Store, WriteBatch};

/// The counts a `v/c/` value holds, as (offset, bytes): a block (first byte 2), or one
/// count of layout 2 (offset 15 for the caller to ignore).
pub fn block_parts(v: &[u8]) -> Vec<(u64, Vec<u8>)> {
    if v.first() != Some(&2) {
        return vec![(15, v.to_vec())];
    }
    let (mut i, mut out) = (1, Vec::new());
    while i < v.len() {
        let off = u64::from(v[i]);
        i += 1;
        let len = leb(v, &mut i) as usize;
        out.push((off, v[i..i + len].to_vec()));
        i += len;
    }
    out
}

/// A LEB128 integer of `v` at `*i`, which moves past it.
pub fn leb(v: &[u8], i: &mut usize) -> u64 {
    let (mut n, mut shift) = (0u64, 0);
    loop {
        let b = v[*i];
        *i += 1;
        n |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return n;
        }
    }
}

pub fn put_leb(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A block value (first byte 2) holding `parts`.
pub fn block_of(parts: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut v = vec![2];
    for (off, bytes) in parts {
        v.push(*off as u8);
        put_leb(&mut v, bytes.len() as u64);
        v.extend_from_slice(bytes);
    }
    v
}

/// Rewrites the store's views as layout 3 held them: each space count without the link
/// to its subject's previous one (format 1: the link's byte gone), each subject's log
/// indexes listed under `v/l/<subject>` (ascending, LEB128 differences), summaries without
/// where their chain starts (format 1) and none of a subject whose every snapshot is
/// withdrawn, `v/m` saying 3. Returns the lists written.
pub fn to_layout_3(store: &dyn Store) -> usize {
    let mut wb = WriteBatch::new();
    let mut lists: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    for r in store.scan(b"v/c/") {
        let (k, v) = r.expect("scan");
        assert_eq!(v[0], 2, "a block");
        let last = u64::from_be_bytes(k[4..12].try_into().expect("8 bytes"));
        let mut parts = Vec::new();
        for (off, bytes) in block_parts(&v) {
            assert_eq!(bytes[0], 3, "a linked count");
            let mut i = 1;
            leb(&bytes, &mut i);
            let mut older = vec![1];
            older.extend_from_slice(&bytes[i..]);
            let region = leb(&bytes, &mut i) as u32;
            let is_school = bytes[i];
            i += 1;
            let school = if is_school == 1 {
                leb(&bytes, &mut i)
            } else {
                0
            };
            let mut subject = region.to_be_bytes().to_vec();
            subject.push(is_school);
            subject.extend_from_slice(&school.to_be_bytes());
            lists.entry(subject).or_default().push(last - 15 + off);
            parts.push((off, older));
        }
        wb.put(k, block_of(&parts));
    }
    // The summaries as they read, the pending ones (`v/d/`, layout 5) folded in.
    for r in store.scan(b"v/d/") {
        wb.delete(r.expect("scan").0);
    }
    let folded = spacesync_hub::views::read_as_folded(store).expect("read the views");
    for (k, v) in folded.into_iter().filter(|(k, _)| k.starts_with(b"v/s/")) {
        assert_eq!(v[0], 2, "a summary with where its chain starts");
        let mut i = 1;
        leb(&v, &mut i);
        if v[i] == 0 {
            // No snapshot left: layout 3 kept no summary.
            wb.delete(k);
        } else {
            let mut older = vec![1];
            older.extend_from_slice(&v[i..]);
            wb.put(k, older);
        }
    }
    let n = lists.len();
    for (subject, list) in lists {
        let mut v = Vec::new();
        let mut prev = 0;
        for idx in list {
            put_leb(&mut v, idx - prev);
            prev = idx;
        }
        wb.put([b"v/l/".as_slice(), &subject].concat(), v);
    }
    let m = store.get(b"v/m").expect("get").expect("v/m");
    let m = String::from_utf8(m).expect("utf-8");
    assert!(m.contains(r#""layout":5"#), "{m}");
    wb.put(
        b"v/m".to_vec(),
        m.replace(r#""layout":5"#, r#""layout":3"#).into_bytes(),
    );
    store.apply(wb).expect("apply");
    store.flush().expect("flush");
    n
}
