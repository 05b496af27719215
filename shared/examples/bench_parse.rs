//! Batch parsing time against body size: NDJSON, a JSON array and CSV of space counts at
//! 10,000 and 100,000 records. Linear parsing shows as a ratio near 10 between the two
//! sizes (the hardening issue measured 5.4 s for 10k NDJSON lines before the fix).
//!
//! `cargo run --release -p spacesync-shared --example bench_parse`

use std::time::Instant;

use spacesync_shared::batch::{Format, split_csv, split_json};

fn ndjson(n: usize) -> String {
    let mut s = String::with_capacity(n * 120);
    for i in 0..n {
        s.push_str(&format!(
            "{{\"kind\":\"space_count\",\"region\":\"440106\",\"school\":\"44010600{:04}\",\"as_of\":\"2018-11-20\",\"spaces\":{{\"teacher\":{i},\"student\":{}}}}}\n",
            i % 10_000,
            i * 3
        ));
    }
    s
}

fn csv(n: usize) -> String {
    let mut s = String::from("region,school,as_of,teacher,student\n");
    for i in 0..n {
        s.push_str(&format!(
            "440106,44010600{:04},2018-11-20,{i},{}\n",
            i % 10_000,
            i * 3
        ));
    }
    s
}

fn time(f: impl Fn() -> usize) -> (f64, usize) {
    let t = Instant::now();
    let n = f();
    (t.elapsed().as_secs_f64(), n)
}

fn main() {
    let _ = Format::Json;
    let mut line = String::from("parse:");
    for (name, make) in [
        ("ndjson", ndjson as fn(usize) -> String),
        ("array", |n| {
            let body = ndjson(n);
            format!("[{}]", body.trim_end().replace('\n', ","))
        }),
        ("csv", csv),
    ] {
        let small = make(10_000);
        let big = make(100_000);
        let parse = |b: &str| {
            if name == "csv" {
                split_csv(b.as_bytes(), usize::MAX).map_or(0, |v| v.len())
            } else {
                split_json(b.as_bytes(), usize::MAX).map_or(0, |v| v.len())
            }
        };
        let (ts, ns) = time(|| parse(&small));
        let (tb, nb) = time(|| parse(&big));
        assert_eq!((ns, nb), (10_000, 100_000), "{name}: parse failed");
        println!(
            "{name:>6}: 10k records {:.3} s ({:.1} MB), 100k records {:.3} s ({:.1} MB), ratio {:.1}",
            ts,
            small.len() as f64 / 1e6,
            tb,
            big.len() as f64 / 1e6,
            tb / ts
        );
        line.push_str(&format!(" {name}_ratio={:.1}", tb / ts));
    }
    println!("{line}");
}
