//! The real hub SIGKILLed at random moments while two clients push space counts (dated in
//! and out of order, so earlier-dated snapshots make the views re-walk a subject inside
//! the batch being written) and withdrawals, asking for batch receipts. After every kill,
//! before the next start, the views a start loads (`Views::load`, what `serve` serves)
//! must equal the views `rebuild` computes from the log, subject by subject and in the
//! roll-up; every batch receipt must cover exactly the held seqs of its batch with rising
//! leaves; at the end every entry is held and `spacesync-hub verify` passes.
//!
//! `SPACESYNC_SEED` changes the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use spacesync_hub::maintenance;
use spacesync_hub::store::SledStore;
use spacesync_hub::views::Views;
use spacesync_shared::wire::{self, BatchReceipt, IngestResponse};
use spacesync_shared::{Campaign, Digest, Entry, Envelope, Record};
use spacesync_tests::hub_harness::{Chain, HubProc, head, now};

const KILLS: usize = 16;

/// A chain of `n` entries: space counts of 12 schools of `county`, dated over six weeks in
/// a shuffled order, and every seventh entry a withdrawal of an earlier space count.
fn chain(source: &str, seed: u8, scope: &str, county: &str, n: u64, rng: &mut StdRng) -> Chain {
    let mut c = Chain::new(source, seed, scope);
    let mut withdrawable: Vec<u64> = Vec::new();
    for seq in 1..=n {
        let record = if seq % 7 == 0 && !withdrawable.is_empty() {
            let target = withdrawable.swap_remove(rng.random_range(0..withdrawable.len()));
            json!({ "kind": "withdrawal", "target_seq": target, "reason": "entered twice" })
        } else {
            withdrawable.push(seq);
            let day = rng.random_range(0..42);
            let date = chrono::NaiveDate::from_ymd_opt(2018, 10, 1).expect("date")
                + chrono::Duration::days(day);
            json!({ "kind": "space_count", "region": county,
                "school": format!("{county}{:04}", rng.random_range(0..12)),
                "as_of": date.to_string(),
                "spaces": { "teacher": rng.random_range(0..500), "student": seq } })
        };
        let prev = c
            .entries
            .last()
            .map_or(Digest::ZERO, Envelope::payload_hash);
        let entry = Entry {
            source: c.source.clone(),
            seq,
            prev,
            recorded_at: now() - chrono::Duration::hours(1),
            campaign: "2018".into(),
            record: Record::from_value(&record).unwrap_or_else(|p| panic!("{p:?}")),
        };
        c.entries.push(entry.sign(&c.key));
    }
    c
}

/// Pushes `chain` until the hub holds all of it or `stop` is set, asking for batch
/// receipts and checking each; returns the highest seq the hub said it held.
async fn client(
    url: String,
    hub_key: ed25519_dalek::VerifyingKey,
    chain: Arc<Chain>,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicU64>,
    seed: u64,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut rng = StdRng::seed_from_u64(seed);
    let n = chain.entries.len() as u64;
    while !stop.load(Ordering::SeqCst) && held.load(Ordering::SeqCst) < n {
        let from = match head(&http, &url, &chain).await {
            Ok(h) => h.held_through + 1,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if from > n {
            held.fetch_max(n, Ordering::SeqCst);
            break;
        }
        let to = (from + rng.random_range(0..60)).min(n);
        let resp = http
            .post(format!("{url}{}", wire::PATH_INGEST))
            .header(wire::HDR_RECEIPTS, wire::RECEIPTS_BATCH)
            .json(&chain.batch(from, to))
            .send()
            .await;
        let Ok(resp) = resp else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if resp.status().as_u16() != 200 {
            assert!(
                resp.status().is_server_error() || resp.status().as_u16() == 429,
                "{}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let Ok(r) = resp.json::<IngestResponse>().await else {
            continue;
        };
        assert!(
            r.receipts.is_empty(),
            "per-entry receipts though batch asked"
        );
        let env = r.batch_receipt.expect("a batch receipt for a 200");
        let b = BatchReceipt::open(&env, &hub_key).unwrap_or_else(|e| panic!("{e}"));
        let seqs: Vec<u64> = b.entries.iter().map(|i| i.seq).collect();
        assert_eq!(
            seqs,
            (from..=to).collect::<Vec<_>>(),
            "what the receipt covers"
        );
        for i in &b.entries {
            assert_eq!(
                i.entry_hash,
                chain.entries[(i.seq - 1) as usize].payload_hash(),
                "seq {}",
                i.seq
            );
        }
        held.fetch_max(r.held_through, Ordering::SeqCst);
    }
}

/// The views a start loads equal the views rebuilt from the log.
fn loaded_equals_rebuilt(db: &std::path::Path, what: &str) -> u64 {
    let store = SledStore::open(db).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let campaign = Campaign::builtin_2018();
    let loaded = Views::load(&store, campaign.baseline).unwrap_or_else(|e| panic!("{what}: {e}"));
    let rb = maintenance::rebuild_views(&store, campaign.baseline, |_| {}).expect("rebuild");
    let rebuilt = &rb.views;
    assert_eq!(
        loaded.differing_subjects(rebuilt),
        Vec::<String>::new(),
        "{what}: summaries"
    );
    let (a, b) = (loaded.rollup(&campaign), rebuilt.rollup(&campaign));
    assert_eq!(a.nation, b.nation, "{what}: nation");
    assert_eq!(a.totals, b.totals, "{what}: totals");
    assert_eq!(a.schools(), b.schools(), "{what}: schools");
    assert_eq!(a.flags, b.flags, "{what}: flags");
    let rebuilt_store = rb.reader(&store);
    let items = |v: &Views, r: &dyn spacesync_hub::store::Reader| {
        v.items(r)
            .expect("items")
            .into_iter()
            .map(|i| (i.meta, i.record.to_value()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        items(&loaded, &store),
        items(rebuilt, &rebuilt_store),
        "{what}: items"
    );
    assert_eq!(
        serde_json::to_value(loaded.sources()).expect("json"),
        serde_json::to_value(rebuilt.sources()).expect("json"),
        "{what}: sources"
    );
    loaded.entries()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_after_every_kill_equal_a_rebuild() {
    let seed: u64 = std::env::var("SPACESYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0012);
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hub = HubProc::init();
    let chains = [
        Arc::new(chain("gd-a", 1, "440000", "440106", 4000, &mut rng)),
        Arc::new(chain("gd-b", 2, "440000", "440303", 4000, &mut rng)),
    ];
    for c in &chains {
        hub.add_agent(
            c.source.as_str(),
            &c.scope.to_string(),
            &c.key.verifying_key(),
        );
    }
    let held: Vec<Arc<AtomicU64>> = chains.iter().map(|_| Arc::default()).collect();
    for kill in 0..=KILLS {
        hub.start().await;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = chains
            .iter()
            .zip(&held)
            .enumerate()
            .map(|(i, (c, h))| {
                tokio::spawn(client(
                    hub.url(),
                    hub.key,
                    c.clone(),
                    stop.clone(),
                    h.clone(),
                    seed + (kill * 2 + i) as u64,
                ))
            })
            .collect();
        if kill < KILLS {
            tokio::time::sleep(Duration::from_millis(rng.random_range(30..400))).await;
            hub.kill();
            stop.store(true, Ordering::SeqCst);
        }
        for t in tasks {
            t.await.expect("client");
        }
        if kill == KILLS {
            hub.kill();
        }
        let db = hub.db();
        let entries = tokio::task::spawn_blocking(move || {
            loaded_equals_rebuilt(&db, &format!("after kill {kill}"))
        })
        .await
        .expect("check");
        eprintln!("kill {kill}: {entries} entries in the views");
    }
    for (c, h) in chains.iter().zip(&held) {
        assert_eq!(
            h.load(Ordering::SeqCst),
            c.entries.len() as u64,
            "{} delivered",
            c.source
        );
    }
    let out = hub.cli(&["verify"]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
