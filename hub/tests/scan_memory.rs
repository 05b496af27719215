//! A scan of the whole sled store holds about sled's cache, not what it read.
//!
//! sled 0.34 counts a page against its cache only when the page is looked up, in batches
//! of 64 lookups per shard of 256: one iterator walked to the end looks each leaf node up
//! once, so up to ~16,000 nodes stay resident uncounted (BENCHMARKS.md, session 12: with
//! the log packed, `bulletin verify` held ~210 MB of sled nodes at 360,000 entries with a
//! 64 MiB cache). The hub's sled scans seek again every KiB read, so the nodes are counted
//! and evicted. Measured with a counting allocator (this file is its own test binary, so
//! the one test's figures are its own).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use spacesync_hub::store::{SledStore, Store, WriteBatch, keys};

/// Bytes allocated and not yet freed, and the most since the last reset.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Values: 72,000 of 1,100 bytes (~80 MB; sled's leaf nodes hold 9–17 of them), each
/// above the seek interval as a log pack is.
const VALUES: u64 = 72_000;
const VALUE_BYTES: usize = 1_100;

/// sled's cache for the scan.
const CACHE: u64 = 1024 * 1024;

#[test]
fn scanning_the_whole_store_holds_about_the_cache_not_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = SledStore::open_with_cache(dir.path(), CACHE).expect("open");
        for start in (0..VALUES).step_by(1000) {
            let mut b = WriteBatch::new();
            for i in start..start + 1000 {
                b.put(keys::log(i), vec![(i % 251) as u8; VALUE_BYTES]);
            }
            store.apply(b).expect("apply");
        }
        store.flush().expect("flush");
    }
    // Opened again: nothing of the log in memory before the scan.
    let store = SledStore::open_with_cache(dir.path(), CACHE).expect("reopen");
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let (mut n, mut bytes) = (0u64, 0usize);
    for r in store.scan(keys::LOG) {
        let (_, v) = r.expect("scan");
        n += 1;
        bytes += v.len();
    }
    let held = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    eprintln!("scan of {} bytes held {held} bytes at its peak", bytes);
    assert_eq!((n, bytes), (VALUES, VALUES as usize * VALUE_BYTES));
    // One iterator walked to the end held ~all of it (~80 MB); seeking every KiB, the
    // nodes not yet counted (at most 64 lookups × 256 shards, ~7 nodes a shard here) and
    // the node each shard keeps, ~20 MB.
    assert!(
        held < 40 << 20,
        "the scan of {} MB held {} MB at its peak",
        bytes >> 20,
        held >> 20
    );
}
