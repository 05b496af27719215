//! Where the time of one intake batch goes, without HTTP: the same NDJSON space counts as
//! `spacesync-bench agent` sends (1,000 a batch), judged, signed and appended by
//! [`Writer::submit`] and flushed, next to its parts measured alone on this machine:
//! parsing and judging (`batch::parse`), Ed25519 signing of the entries' PAE bytes, and
//! the flush. For profiling the writer (`perf record -g` on this process) and for
//! before/after comparisons on one machine; the figures that count are `spacesync-bench`'s.
//!
//! `cargo run --release -p spacesync-agent --example bench_submit [batches] [batch size]`

use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey};
use spacesync_agent::config::BufferConfig;
use spacesync_agent::intake::{Identity, Submission, Writer};
use spacesync_agent::store::Store;
use spacesync_shared::batch::{self, Format};
use spacesync_shared::clock::{Clock, FixedClock};
use spacesync_shared::entry::{ENTRY_PAYLOAD_TYPE, Entry, SourceId};
use spacesync_shared::region::RegionCode;
use spacesync_shared::{Campaign, Digest, dsse};

/// Guangzhou's districts (all in the bundled directory, so no record draws a warning).
const COUNTIES: [u32; 10] = [
    440103, 440104, 440105, 440106, 440111, 440112, 440113, 440114, 440115, 440117,
];

/// One NDJSON body of `n` weekly school snapshots in Guangzhou's districts.
fn body(batch: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let k = batch * n + i;
        let (week, school) = (k / 5000, k % 5000);
        let county = COUNTIES[(school % 10) as usize];
        let t = 40 + week * 3 + school % 17;
        let s = 600 + week * 40 + school % 301;
        let line = format!(
            r#"{{"kind":"space_count","region":"{county}","school":"{county}{:04}","as_of":"2018-{:02}-{:02}","spaces":{{"teacher":{t},"student":{s},"parent":{},"school":1,"class":{}}},"real_name":{{"teacher":{},"student":{}}},"population":{{"teachers":{},"students":{},"schools":1}}}}"#,
            school / 10,
            9 + week / 4,
            1 + (week % 4) * 7,
            s / 3,
            12 + school % 30,
            t * 9 / 10,
            s * 7 / 10,
            t + 10,
            s + 200,
        );
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let batches: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    let size: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let bodies: Vec<Vec<u8>> = (0..batches).map(|b| body(b, size)).collect();
    let ident = Arc::new(Identity {
        source: SourceId::parse("bench-agent-440000").unwrap_or_else(|e| panic!("{e}")),
        scope: RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}")),
        campaign: Campaign::builtin_2018(),
        key: SigningKey::from_bytes(&[7; 32]),
    });
    let now = chrono::DateTime::parse_from_rfc3339("2019-01-02T10:00:00+08:00")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    let clock: Arc<dyn Clock> = Arc::new(FixedClock::new(now));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
    let buffer = BufferConfig {
        max_entries: u64::MAX / 2,
        max_bytes: u64::MAX / 2,
    };
    let mut w = Writer::open(
        store.clone(),
        ident.clone(),
        clock.clone(),
        buffer,
        size as usize,
        1,
        3600,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Parsing and judging alone (the shared checks, no quota ledger).
    let t = Instant::now();
    for b in &bodies {
        let recs = batch::parse(b, Format::Json, size as usize, |_, r| {
            spacesync_shared::validate::check(
                r,
                &spacesync_shared::validate::Context {
                    campaign: &ident.campaign,
                    scope: ident.scope,
                    today: ident.campaign.local_date(now),
                    next_seq: 1,
                },
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
        std::hint::black_box(recs);
    }
    let parse_s = t.elapsed().as_secs_f64();

    // Signing alone, one core: the PAE bytes of the first batch's entries.
    let recs = batch::parse(&bodies[0], Format::Json, size as usize, |_, _| vec![])
        .unwrap_or_else(|e| panic!("{e}"));
    let paes: Vec<Vec<u8>> = recs
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            let e = Entry {
                source: ident.source.clone(),
                seq: i as u64 + 1,
                prev: Digest::ZERO,
                recorded_at: now,
                campaign: ident.campaign.id.clone(),
                record,
            };
            dsse::pae(ENTRY_PAYLOAD_TYPE, &e.to_payload())
        })
        .collect();
    let t = Instant::now();
    for _ in 0..batches {
        for p in &paes {
            std::hint::black_box(ident.key.sign(p));
        }
    }
    let sign_s = t.elapsed().as_secs_f64();

    // The writer, each batch flushed.
    let (mut submit_s, mut flush_s) = (0.0, 0.0);
    for b in &bodies {
        let sub = Submission {
            body: b.clone(),
            format: Format::Json,
            dry_run: false,
            idempotency_key: None,
        };
        let t = Instant::now();
        let a = w
            .submit(&sub, &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.accepted as u64, size);
        let t2 = Instant::now();
        store.flush().unwrap_or_else(|e| panic!("{e}"));
        submit_s += (t2 - t).as_secs_f64();
        flush_s += t2.elapsed().as_secs_f64();
    }
    let n = (batches * size) as f64;
    let us = |s: f64| s / n * 1e6;
    println!(
        "per entry: submit {:.1} µs (of which alone: parse+judge {:.1} µs, sign {:.1} µs), flush {:.1} µs; entries_per_s={:.0} sign_per_s={:.0} ratio={:.3}",
        us(submit_s),
        us(parse_s),
        us(sign_s),
        us(flush_s),
        n / (submit_s + flush_s),
        n / sign_s,
        sign_s / (submit_s + flush_s),
    );
}
