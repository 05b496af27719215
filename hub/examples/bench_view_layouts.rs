//! What sled's disk costs per entry for the ways the views could lay out their keys.
//!
//! `cargo run --release -p spacesync-hub --example bench_view_layouts [schools]`
//!
//! Writes the scale benchmark's shape (`schools` schools over 32 units, 18 weekly snapshots
//! each, 500 entries and one flush per batch) into a fresh sled store once per layout, with
//! values of the sizes the hub writes (a 612-byte binary log record, the 48-byte source
//! index, a tree node every fourth entry, the frontier) and, per layout, the view keys:
//!
//! - `log-only`: no view key (the floor);
//! - `items-json`: `v/i/<log index>`, 500 bytes of JSON per entry (the layout before);
//! - `by-subject`: `v/c/<subject><log index>` (75 bytes) and `v/s/<subject>` (100 bytes),
//!   one subject's snapshots a prefix scan;
//! - `by-subject-index`: `v/c/<log index>`, an empty `v/k/<subject><log index>` index key,
//!   and `v/s/<subject>`;
//! - `by-log`: `v/c/<log index>`, `v/s/<subject>` and `v/l/<subject>` growing by 3 bytes a
//!   snapshot (the layout the views use).
//!
//! Reports the store's bytes per entry after the last flush, garbage included, as the scale
//! benchmark measures them. Keys inserted among older ones cost far more than their size:
//! sled rewrites the leaves they land in.

use std::path::Path;
use std::time::Instant;

use spacesync_hub::store::{SledStore, Store, WriteBatch, keys};
use spacesync_shared::SourceId;

const LAYOUTS: [&str; 5] = [
    "log-only",
    "items-json",
    "by-subject",
    "by-subject-index",
    "by-log",
];

fn dir_bytes(p: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() {
            dir_bytes(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(n)
}

fn main() -> anyhow::Result<()> {
    let schools: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let units = 32u64;
    let per_unit = (schools / units).max(1);
    let sources: Vec<SourceId> = (0..units)
        .map(|u| SourceId::parse(&format!("src-{u:02}")))
        .collect::<Result<_, _>>()?;
    for layout in LAYOUTS {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path())?;
        let started = Instant::now();
        let mut idx = 0u64;
        let mut seqs = vec![0u64; units as usize];
        for week in 1..=18usize {
            for u in 0..units {
                let mut s = 0;
                while s < per_unit {
                    let n = 500.min(per_unit - s);
                    let mut wb = WriteBatch::new();
                    for i in 0..n {
                        let school = (u * 1_000_000 + s + i).to_be_bytes();
                        let seq = &mut seqs[u as usize];
                        *seq += 1;
                        wb.put(keys::log(idx), vec![7u8; 612]);
                        wb.put(keys::src(&sources[u as usize], *seq), vec![1u8; 48]);
                        if idx % 4 == 3 {
                            wb.put(keys::node(2, idx / 4), vec![2u8; 32]);
                        }
                        wb.put(keys::FRONTIER.to_vec(), vec![3u8; 200]);
                        let at = idx.to_be_bytes();
                        let by_subject = [b"v/s/".as_slice(), &school].concat();
                        match layout {
                            "items-json" => {
                                wb.put([b"v/i/".as_slice(), &at].concat(), vec![4u8; 500])
                            }
                            "by-subject" => {
                                wb.put([b"v/c/".as_slice(), &school, &at].concat(), vec![5u8; 75]);
                                wb.put(by_subject, vec![6u8; 100]);
                            }
                            "by-subject-index" => {
                                wb.put([b"v/c/".as_slice(), &at].concat(), vec![5u8; 75]);
                                wb.put([b"v/k/".as_slice(), &school, &at].concat(), Vec::new());
                                wb.put(by_subject, vec![6u8; 100]);
                            }
                            "by-log" => {
                                wb.put([b"v/c/".as_slice(), &at].concat(), vec![5u8; 75]);
                                wb.put(by_subject, vec![6u8; 100]);
                                wb.put([b"v/l/".as_slice(), &school].concat(), vec![8u8; 3 * week]);
                            }
                            _ => {}
                        }
                        idx += 1;
                    }
                    store.apply(wb)?;
                    store.flush()?;
                    s += n;
                }
            }
        }
        drop(store);
        let bytes = dir_bytes(dir.path())?;
        println!(
            "{layout}: entries={idx} disk_bytes_per_entry={} secs={:.1}",
            bytes / idx.max(1),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
