//! Ingest throughput against its physical limit on this machine.
//!
//! `cargo run --release -p spacesync-hub --example bench_ingest [entries] [batch]`
//!
//! Signs `entries` space-count entries for 32 sources, ingests them through `Hub::ingest`
//! (verification, chain checks, log append, views, one sled flush per batch) in batches of
//! `batch`, and reports entries/s next to raw Ed25519 verification of the same envelopes in
//! the same run, single (`verify_strict`) and batched (`verify_batch`), which is the ceiling
//! for a hub that must check every signature.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use serde_json::json;
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::store::SledStore;
use spacesync_shared::clock::FixedClock;
use spacesync_shared::entry::{ENTRY_PAYLOAD_TYPE, verify_signatures};
use spacesync_shared::keys::public_key_line;
use spacesync_shared::wire::IngestBatch;
use spacesync_shared::{Campaign, Digest, Entry, Envelope, Record, SourceId};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(64_000);
    let batch: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(500);
    // `ingest-only` skips the raw-verification baselines (for profiling the hub alone).
    let ingest_only = args.next().as_deref() == Some("ingest-only");
    let campaign = Campaign::builtin_2018();
    let now: DateTime<Utc> =
        DateTime::parse_from_rfc3339("2018-12-01T09:00:00+08:00")?.with_timezone(&Utc);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SledStore::open(dir.path())?);
    let hub = Hub::open(
        store.clone(),
        SigningKey::from_bytes(&[7; 32]),
        "bench".into(),
        campaign.clone(),
        Arc::new(FixedClock::new(now)),
        Limits::default(),
    )?;
    let units = campaign.units.clone();
    let per = total / units.len();
    let mut batches: Vec<(SigningKey, IngestBatch)> = Vec::new();
    let t_sign = Instant::now();
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
        for chunk in envs.chunks(batch) {
            batches.push((
                key.clone(),
                IngestBatch {
                    source: id.clone(),
                    entries: chunk.to_vec(),
                },
            ));
        }
    }
    hub.refresh_registry()?;
    let signed = per * units.len();
    eprintln!(
        "signed {signed} entries in {:.2} s",
        t_sign.elapsed().as_secs_f64()
    );

    // Raw verification of the same envelopes: the ceiling.
    let (mut single, mut batched) = (f64::NAN, f64::NAN);
    if !ingest_only {
        let t = Instant::now();
        for (key, b) in &batches {
            for e in &b.entries {
                e.verify(ENTRY_PAYLOAD_TYPE, &key.verifying_key())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        single = signed as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (key, b) in &batches {
            let refs: Vec<&Envelope> = b.entries.iter().collect();
            verify_signatures(&refs, &key.verifying_key())
                .map_err(|(i, e)| anyhow::anyhow!("{i}: {e}"))?;
        }
        batched = signed as f64 / t.elapsed().as_secs_f64();
    }

    // Interleave sources as 32 agents would.
    let mut order: Vec<usize> = (0..batches.len()).collect();
    let per_source = batches.len() / units.len();
    order.sort_by_key(|i| (i % per_source, i / per_source));
    let t = Instant::now();
    for i in order {
        let out = hub.ingest(batches[i].1.clone())?;
        anyhow::ensure!(out.status == 200, "{:?}", out.response.refused);
    }
    let secs = t.elapsed().as_secs_f64();
    let ingest = signed as f64 / secs;
    println!(
        "machine: {} cores; entries {signed}; batch {batch}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("raw verify_strict      {single:>10.0} entries/s");
    println!("raw batch verification {batched:>10.0} entries/s");
    println!(
        "hub ingest             {ingest:>10.0} entries/s  ({secs:.2} s, {:.0} flushes/s)",
        (signed / batch) as f64 / secs
    );
    println!("ingest / batch-verify ceiling = {:.2}", ingest / batched);
    println!("log size {}", hub.state().log.size());
    Ok(())
}
