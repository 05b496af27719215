//! `verify` next to batch verification of the same log's signatures, in one run, with the
//! CPU each spends per leaf (the figure that survives a machine shared with other work).
//!
//! `cargo run --release -p spacesync-hub --example bench_verify -- <dir> [entries] [serial|<threads>]`
//!
//! Fills a store in `<dir>` with `entries` (64,000) space-count entries from 32 sources
//! through `Hub::ingest` (batches of 500, sources interleaved as 32 agents send them)
//! unless it already holds a log; measures batch verification of its entries on every
//! core (`verify_signatures`, batches of 500 by source, two seconds), then times
//! `maintenance::verify_with` over it: on every core by default, `serial` for the
//! leaf-by-leaf reference, or a number of worker threads. The spacesync-bench harness
//! measures the `spacesync-hub verify` command itself; this is for profiling
//! (`perf record -g -- …/bench_verify <dir>` on a store filled beforehand).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::json;
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::log_check::Checking;
use spacesync_hub::store::SledStore;
use spacesync_hub::{log, maintenance};
use spacesync_shared::clock::FixedClock;
use spacesync_shared::entry::verify_signatures;
use spacesync_shared::keys::{parse_public_key, public_key_line};
use spacesync_shared::wire::IngestBatch;
use spacesync_shared::{Campaign, Digest, Entry, Envelope, Record, SourceId};

const ORIGIN: &str = "bench";

fn hub_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn fill(store: Arc<SledStore>, total: usize) -> anyhow::Result<()> {
    let campaign = Campaign::builtin_2018();
    let now: DateTime<Utc> =
        DateTime::parse_from_rfc3339("2018-12-01T09:00:00+08:00")?.with_timezone(&Utc);
    let hub = Hub::open(
        store,
        hub_key(),
        ORIGIN.into(),
        campaign.clone(),
        Arc::new(FixedClock::new(now)),
        Limits::default(),
    )?;
    let units = campaign.units.clone();
    let per = total / units.len();
    let mut batches: Vec<IngestBatch> = Vec::new();
    for (i, unit) in units.iter().enumerate() {
        let key = SigningKey::from_bytes(&[i as u8 + 1; 32]);
        let id = SourceId::parse(&format!("bench-{unit}"))?;
        hub.add_source(id.clone(), *unit, &public_key_line(&key.verifying_key()))?;
        let mut prev = Digest::ZERO;
        let mut envs = Vec::with_capacity(per);
        for seq in 1..=per as u64 {
            let record =
                Record::from_value(&json!({"kind":"space_count","region":unit.to_string(),
                "as_of":"2018-11-30","spaces":{"teacher":seq,"student":seq * 10}}))
                .map_err(|p| anyhow::anyhow!("{p:?}"))?;
            let env = Entry {
                source: id.clone(),
                seq,
                prev,
                recorded_at: now,
                campaign: "2018".into(),
                record,
            }
            .sign(&key);
            prev = env.payload_hash();
            envs.push(env);
        }
        for chunk in envs.chunks(500) {
            batches.push(IngestBatch {
                source: id.clone(),
                entries: chunk.to_vec(),
            });
        }
    }
    hub.refresh_registry()?;
    let mut order: Vec<usize> = (0..batches.len()).collect();
    let per_source = batches.len() / units.len();
    order.sort_by_key(|i| (i % per_source, i / per_source));
    let t = Instant::now();
    for i in order {
        let out = hub.ingest(batches[i].clone())?;
        anyhow::ensure!(out.status == 200, "{:?}", out.response.refused);
    }
    eprintln!(
        "filled {} entries in {:.1} s",
        per * units.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: bench_verify <dir> [entries] [serial|<threads>]")
    })?);
    let total: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(64_000);
    let store = Arc::new(SledStore::open(&dir)?);
    if log::Log::load(store.as_ref())?.size() == 0 {
        fill(store.clone(), total)?;
    }
    // `serial` (the reference path), or worker threads (default: every core).
    let how = match args.next().as_deref() {
        None => Checking::all_cores(),
        Some("serial") => Checking::Serial,
        Some(n) => Checking::Parallel {
            threads: n.parse()?,
        },
    };
    let limit = batch_limit(store.as_ref())?;
    let cpu = cpu_s();
    let t = Instant::now();
    let report = maintenance::verify_with(
        store.as_ref(),
        &hub_key().verifying_key(),
        ORIGIN,
        how,
        |_| {},
    )?;
    let s = t.elapsed().as_secs_f64();
    let cpu = cpu_s() - cpu;
    anyhow::ensure!(report.ok(), "{:?}", report.problems);
    println!(
        "verify ({how:?}): {} leaves in {s:.2} s, {:.0} leaves/s, {:.1} µs CPU a leaf ({:.2} cores busy)",
        report.leaves,
        report.leaves as f64 / s,
        cpu / report.leaves as f64 * 1e6,
        cpu / s
    );
    println!(
        "batch verification of the same signatures on {} cores: {limit:.0}/s; ratio {:.3}",
        cores(),
        report.leaves as f64 / s / limit
    );
    Ok(())
}

/// This process's user + system CPU seconds (`/proc/self/stat`, 100 ticks a second).
fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Batch verification (the one rule, `verify_signatures`) of the log's source entries, in
/// batches of 500 by source, on every core, for at least two seconds; signatures a second.
fn batch_limit(store: &dyn spacesync_hub::store::Store) -> anyhow::Result<f64> {
    let registry = spacesync_hub::registry::load_all(store)?;
    let mut by_source: std::collections::HashMap<SourceId, Vec<Envelope>> = Default::default();
    for r in log::iter(store) {
        let (_, rec) = r?;
        if let Some(s) = rec.source {
            by_source.entry(s).or_default().push(rec.envelope);
        }
    }
    let mut batches: Vec<(VerifyingKey, Vec<Envelope>)> = Vec::new();
    for (id, envs) in by_source {
        let reg = registry
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| anyhow::anyhow!("{id} is not registered"))?;
        let key = parse_public_key(&reg.keys[0].key)?;
        for c in envs.chunks(500) {
            batches.push((key, c.to_vec()));
        }
    }
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let cpu = cpu_s();
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < 2.0 {
        next.store(0, Ordering::Relaxed);
        std::thread::scope(|s| {
            for _ in 0..cores() {
                s.spawn(|| {
                    while let Some((key, envs)) = batches.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        let refs: Vec<&Envelope> = envs.iter().collect();
                        if verify_signatures(&refs, key).is_ok() {
                            done.fetch_add(envs.len(), Ordering::Relaxed);
                        }
                    }
                });
            }
        });
    }
    let n = done.load(Ordering::Relaxed) as f64;
    eprintln!(
        "batch verification: {:.1} µs CPU a signature",
        (cpu_s() - cpu) / n * 1e6
    );
    Ok(n / t.elapsed().as_secs_f64())
}
