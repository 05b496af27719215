//! What an idle agent's sled store costs in memory, without the agent: `N` values of
//! `SIZE` bytes keyed by a big-endian u64 (as the agent's `entries` tree), written in
//! transactions of 1,000 and flushed, then the process's `VmRSS` after a reopen and one
//! read of the last key, for a given page cache size and mode.
//!
//! `cargo run --release -p spacesync-bench --example sled_idle -- <dir> <n> <size> <cache_bytes> [small|fast]`
//! The first run with a new directory writes it and exits; later runs reopen it.
//! `SLED_SEGMENT=<bytes>` sets sled's segment size (default 512 KiB).

use std::time::Instant;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, n, size, cache, rest @ ..] = args.as_slice() else {
        return Err("usage: sled_idle <dir> <n> <size> <cache_bytes> [small|fast]".into());
    };
    let (n, size, cache): (u64, usize, u64) = (n.parse()?, size.parse()?, cache.parse()?);
    let mode = match rest.first().map(String::as_str) {
        Some("fast") => sled::Mode::HighThroughput,
        _ => sled::Mode::LowSpace,
    };
    // sled's default segment size is 512 KiB; a store keeps the size it was created with.
    let segment: usize = match std::env::var("SLED_SEGMENT") {
        Ok(v) => v.parse()?,
        Err(_) => 512 * 1024,
    };
    let existed = std::path::Path::new(dir).exists();
    let open = || {
        sled::Config::new()
            .path(dir)
            .cache_capacity(cache)
            .mode(mode)
            .segment_size(segment)
            .open()
    };
    if !existed {
        let db = open()?;
        let t = db.open_tree("entries")?;
        let value = vec![b'x'; size];
        let started = Instant::now();
        let mut seq = 0u64;
        while seq < n {
            let mut b = sled::Batch::default();
            for _ in 0..1000.min(n - seq) {
                seq += 1;
                b.insert(&seq.to_be_bytes(), value.as_slice());
            }
            t.apply_batch(b)?;
            db.flush()?;
        }
        println!(
            "wrote {n} values of {size} bytes in {:.1} s; resident {:.1} MiB",
            started.elapsed().as_secs_f64(),
            rss_mb()
        );
        return Ok(());
    }
    let before = rss_mb();
    let started = Instant::now();
    let db = open()?;
    let t = db.open_tree("entries")?;
    let last = t.last()?.map(|(k, _)| k.len());
    let opened = started.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_secs(2));
    println!(
        "cache {cache} bytes: reopened in {opened:.2} s (last key {last:?}); resident {before:.1} -> {:.1} MiB",
        rss_mb()
    );
    Ok(())
}
