//! Crash safety of the hub: SIGKILL the real `spacesync-hub serve` at random moments while
//! four clients push signed chains concurrently, many times over, then check the log like
//! Jepsen would.
//!
//! Each entry is a write with a unique id, (source, seq, entry hash). A write is
//! *attempted* when it is signed, *acknowledged* when the hub returns a receipt for it
//! (verified with the hub key). Clients retry after failures, resuming either from
//! `GET /v1/agent/head` (a signed request) or, optimistically, from where they were, in
//! which case the hub's 409 `resend_from` brings them back. After the run:
//! `lost = acknowledged − logged` and `unexpected = logged − attempted` must be empty, no
//! (source, seq) may be logged twice, each source's leaves must be seqs 1..=N in order,
//! every seq receipted twice must be receipted identically, every client must have
//! delivered everything, and `spacesync-hub verify` must pass.
//!
//! `SPACESYNC_HUB_KILLS` (default 36) and `SPACESYNC_SEED` change the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spacesync_hub::store::SledStore;
use spacesync_shared::{Digest, SourceId};
use spacesync_tests::hub_harness::{Acked, Chain, HubProc, Pushed, head, hub_bin, push};

/// (source, scope, county the entries are about).
const SOURCES: [(&str, &str, &str); 4] = [
    ("gd-a", "440000", "440106"),
    ("gd-b", "440000", "440303"),
    ("bj-a", "110000", "110105"),
    ("sc-a", "510000", "510104"),
];

#[derive(Debug, Default)]
struct ClientStats {
    pushes_ok: usize,
    unavailable: usize,
    head_resyncs: usize,
    gap_resends: usize,
    throttled: usize,
}

/// Pushes `chain` until `stop` is set and everything signed so far is held, signing more
/// entries while the faults go on.
async fn client(
    mut chain: Chain,
    county: &'static str,
    url: String,
    hub_key: VerifyingKey,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    seed: u64,
) -> (Chain, ClientStats) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = ClientStats::default();
    let mut from = 1u64;
    let mut max_acked = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && chain.entries.len() < from as usize + 40 {
            chain.extend(60, county);
        }
        let len = chain.entries.len() as u64;
        if from > len {
            if !stopping {
                continue;
            }
            // Done as far as this client knows: confirm with the hub.
            match head(&http, &url, &chain).await {
                Ok(h) if h.held_through == len => break,
                Ok(h) => from = h.held_through + 1,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            continue;
        }
        let to = (from + rng.random_range(0..25)).min(len);
        match push(&http, &url, &hub_key, &chain, from, to).await {
            Pushed::Held {
                held_through,
                receipts,
            } => {
                stats.pushes_ok += 1;
                max_acked = max_acked.max(receipts.iter().map(|(r, _)| r.seq).max().unwrap_or(0));
                let conflicts = acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(receipts);
                assert!(
                    conflicts.is_empty(),
                    "contradicting receipts: {conflicts:?}"
                );
                from = held_through + 1;
            }
            Pushed::ResendFrom(n) => {
                stats.gap_resends += 1;
                assert!(
                    n > max_acked,
                    "{}: the hub asks to resend from {n} but receipted seq {max_acked}",
                    chain.source
                );
                from = n;
            }
            Pushed::Throttled(d) => {
                stats.throttled += 1;
                tokio::time::sleep(d).await;
            }
            Pushed::Unavailable(_) => {
                stats.unavailable += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
                if rng.random_bool(0.5) {
                    // Assume the batch got through; a 409 will say otherwise.
                    from = to + 1;
                    continue;
                }
                stats.head_resyncs += 1;
                loop {
                    match head(&http, &url, &chain).await {
                        Ok(h) => {
                            assert!(
                                h.held_through >= max_acked,
                                "{}: the hub holds through {} but receipted seq {max_acked}",
                                chain.source,
                                h.held_through
                            );
                            assert!(
                                h.held_through <= len,
                                "{}: head beyond what was signed",
                                chain.source
                            );
                            if h.held_through > 0 {
                                assert_eq!(
                                    h.head,
                                    chain.entries[(h.held_through - 1) as usize].payload_hash(),
                                    "{}: head hash",
                                    chain.source
                                );
                            }
                            from = h.held_through + 1;
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        }
    }
    (chain, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_ingest_loses_no_receipted_entry_and_duplicates_none() {
    let kills: usize = std::env::var("SPACESYNC_HUB_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(36);
    assert!(kills >= 30 || std::env::var_os("SPACESYNC_HUB_KILLS").is_some());
    let seed: u64 = std::env::var("SPACESYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_181_125);
    let started = Instant::now();
    tokio::task::spawn_blocking(hub_bin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let built = started.elapsed();
    let mut rng = StdRng::seed_from_u64(seed);

    let mut hub = HubProc::init();
    let chains: Vec<Chain> = SOURCES
        .iter()
        .enumerate()
        .map(|(i, (source, scope, _))| {
            let c = Chain::new(source, 10 + i as u8, scope);
            hub.add_agent(source, scope, &c.key.verifying_key());
            c
        })
        .collect();
    hub.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, chain) in chains.into_iter().enumerate() {
        tasks.push(tokio::spawn(client(
            chain,
            SOURCES[i].2,
            hub.url(),
            hub.key,
            stop.clone(),
            acked.clone(),
            seed + i as u64,
        )));
    }

    // The faults: SIGKILL during ingest, and now and then again while the hub is starting.
    let mut kills_during_ingest = 0;
    let mut kills_at_start = 0;
    let mut respawns = 0;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(40..400))).await;
        hub.kill();
        kills_during_ingest += 1;
        if rng.random_bool(0.2) {
            hub.spawn();
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
            hub.kill();
            kills_at_start += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        respawns += hub.start().await;
    }
    let faults_done = started.elapsed();
    stop.store(true, Ordering::Relaxed);

    let mut chains = Vec::new();
    let mut stats = Vec::new();
    for t in tasks {
        let (chain, s) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap_or_else(|_| panic!("a client did not finish delivering within 60 s"))
            .unwrap_or_else(|e| panic!("client: {e}"));
        chains.push(chain);
        stats.push(s);
    }

    // Resending everything is idempotent: every entry gets a receipt, identical to any it
    // was given before.
    let http = reqwest::Client::new();
    for c in &chains {
        let len = c.entries.len() as u64;
        let mut from = 1;
        while from <= len {
            let to = (from + 999).min(len);
            match push(&http, &hub.url(), &hub.key, c, from, to).await {
                Pushed::Held { receipts, .. } => {
                    let conflicts = acked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(receipts);
                    assert!(
                        conflicts.is_empty(),
                        "replay receipts differ: {conflicts:?}"
                    );
                }
                other => panic!("{}: replay of {from}..={to}: {other:?}", c.source),
            }
            from = to + 1;
        }
    }
    hub.kill();

    let out = hub.cli(&["verify"]);
    assert!(
        out.status.success(),
        "spacesync-hub verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The checker.
    let attempted: BTreeSet<(SourceId, u64, Digest)> = chains
        .iter()
        .flat_map(|c| {
            c.entries
                .iter()
                .enumerate()
                .map(|(i, e)| (c.source.clone(), i as u64 + 1, e.payload_hash()))
        })
        .collect();
    let store = SledStore::open(&hub.db()).unwrap_or_else(|e| panic!("{e}"));
    let mut logged: BTreeMap<u64, (SourceId, u64, Digest)> = BTreeMap::new();
    let mut per_source: BTreeMap<SourceId, Vec<u64>> = BTreeMap::new();
    for r in spacesync_hub::log::iter(&store) {
        let (index, rec) = r.unwrap_or_else(|e| panic!("{e}"));
        // The hub's own entries (the registry changes of `agents add`) are not deliveries.
        let Some(source) = rec.source.clone() else {
            continue;
        };
        per_source.entry(source.clone()).or_default().push(rec.seq);
        logged.insert(index, (source, rec.seq, rec.envelope.payload_hash()));
    }
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner());
    let lost: Vec<String> = acked
        .0
        .values()
        .filter(|(rc, _)| {
            logged.get(&rc.log_index) != Some(&(rc.source.clone(), rc.seq, rc.entry_hash))
        })
        .map(|(rc, _)| format!("{} seq {} at {}", rc.source, rc.seq, rc.log_index))
        .collect();
    let read: BTreeSet<(SourceId, u64, Digest)> = logged.values().cloned().collect();
    let unexpected: Vec<_> = read.difference(&attempted).collect();
    let duplicates = logged.len() - read.len();
    let mut holes = Vec::new();
    for c in &chains {
        let seqs = per_source.get(&c.source).cloned().unwrap_or_default();
        let want: Vec<u64> = (1..=c.entries.len() as u64).collect();
        if seqs != want {
            holes.push(format!(
                "{}: {} leaves, want seqs 1..={}",
                c.source,
                seqs.len(),
                want.len()
            ));
        }
    }
    let undelivered: Vec<_> = attempted.difference(&read).collect();
    eprintln!(
        "seed {seed}: {kills_during_ingest} SIGKILLs during ingest, {kills_at_start} more during \
         start-up ({respawns} starts); {} entries attempted, {} receipted, {} logged; lost {}, \
         unexpected {}, duplicates {duplicates}, holes {}, undelivered {}; clients {stats:?}; \
         build {:.1} s, faults {:.1} s, total {:.1} s",
        attempted.len(),
        acked.0.len(),
        logged.len(),
        lost.len(),
        unexpected.len(),
        holes.len(),
        undelivered.len(),
        built.as_secs_f64(),
        (faults_done - built).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(lost.is_empty(), "lost receipted entries: {lost:?}");
    assert!(unexpected.is_empty(), "unexpected entries: {unexpected:?}");
    assert_eq!(duplicates, 0, "duplicated entries");
    assert!(holes.is_empty(), "holes: {holes:?}");
    assert!(undelivered.is_empty(), "undelivered: {}", undelivered.len());
    assert_eq!(acked.0.len(), attempted.len(), "every entry receipted");
    assert!(kills_during_ingest >= 30.min(kills));
    assert!(
        stats.iter().all(|s| s.unavailable > 0),
        "every client saw the hub go away: {stats:?}"
    );
}
