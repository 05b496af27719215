//! Crash safety: SIGKILL the agent at random moments while concurrent clients post, many
//! times over, then check the store like Jepsen would.
//!
//! Every record carries a unique title (its write id). A title is *attempted* before its
//! POST is sent and *acknowledged* when the POST answered 200 (with its seq). After the
//! run: `lost = acknowledged − stored` and `unexpected = stored − attempted` must be empty,
//! no title may be stored twice, every acknowledged title must sit at the seq it was
//! given, seqs must be 1..=head without holes, and `verify` must pass.
//!
//! `SPACESYNC_KILLS` (default 50) and `SPACESYNC_SEED` change the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spacesync_tests::agent_harness::{AgentProc, activity, free_port, stored_envelopes, titles};

const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_no_answered_record_and_reuses_no_seq() {
    let kills: usize = std::env::var("SPACESYNC_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("SPACESYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20181120);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut agent = AgentProc::init(&format!("http://127.0.0.1:{}", free_port()), |c| {
        c.push.retry_cap_secs = 0.2;
    });
    let attempted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut posts_ok = 0usize;
    let mut posts_failed = 0usize;

    for k in 0..kills {
        agent.start().await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (stop, attempted, acked) = (stop.clone(), attempted.clone(), acked.clone());
            let url = format!("{}/v1/records", agent.url());
            let token = agent.token.clone();
            let per = 1 + (k + c) % 3;
            clients.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"));
                let (mut ok, mut failed) = (0, 0);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<String> =
                        (0..per).map(|j| format!("k{k}-c{c}-n{n}-{j}")).collect();
                    n += 1;
                    attempted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(batch.iter().cloned());
                    let body = batch
                        .iter()
                        .map(|t| activity(t))
                        .collect::<Vec<_>>()
                        .join("\n");
                    let sent = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .await;
                    let answer = match sent {
                        Ok(r) if r.status().is_success() => {
                            r.json::<serde_json::Value>().await.ok()
                        }
                        _ => None,
                    };
                    match answer {
                        Some(v) => {
                            ok += 1;
                            let seqs: Vec<u64> =
                                serde_json::from_value(v["seqs"].clone()).unwrap_or_default();
                            assert_eq!(seqs.len(), batch.len(), "{v}");
                            let mut a = acked.lock().unwrap_or_else(|p| p.into_inner());
                            for (t, s) in batch.into_iter().zip(seqs) {
                                a.insert(t, s);
                            }
                        }
                        None => {
                            failed += 1;
                            // The agent is gone (killed); stop this round.
                            break;
                        }
                    }
                }
                (ok, failed)
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..250))).await;
        agent.kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let (ok, failed) = c.await.unwrap_or_else(|e| panic!("client: {e}"));
            posts_ok += ok;
            posts_failed += failed;
        }
    }

    // The checker.
    let out = agent.cli(&["verify"]);
    assert!(
        out.status.success(),
        "verify after {kills} kills:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stored = titles(&stored_envelopes(&agent.data()));
    let seqs: Vec<u64> = stored.iter().map(|s| s.0).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "holes or reordering in seqs"
    );
    let mut by_title: BTreeMap<&str, u64> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for (seq, t) in &stored {
        if by_title.insert(t, *seq).is_some() {
            duplicates.push(t.clone());
        }
    }
    let attempted = attempted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lost: Vec<_> = acked
        .keys()
        .filter(|t| !by_title.contains_key(t.as_str()))
        .collect();
    let moved: Vec<_> = acked
        .iter()
        .filter(|(t, s)| by_title.get(t.as_str()).is_some_and(|x| x != *s))
        .collect();
    let unexpected: Vec<_> = by_title
        .keys()
        .filter(|t| !attempted.contains(**t))
        .collect();
    let stored_unacked = by_title.keys().filter(|t| !acked.contains_key(**t)).count();
    eprintln!(
        "crash test: seed {seed}, {kills} SIGKILLs, {CLIENTS} clients; posts answered 200: {posts_ok}, posts cut by a kill: {posts_failed}; \
         records attempted {}, acknowledged {}, stored {} ({} stored but unanswered); lost {}, unexpected {}, duplicates {}, moved {}",
        attempted.len(),
        acked.len(),
        stored.len(),
        stored_unacked,
        lost.len(),
        unexpected.len(),
        duplicates.len(),
        moved.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(unexpected.is_empty(), "unexpected: {unexpected:?}");
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    assert!(
        moved.is_empty(),
        "answered seq differs from stored seq: {moved:?}"
    );
    assert!(
        posts_ok > kills,
        "too few writes were acknowledged to mean anything"
    );

    // And the chain goes on from where it stopped.
    agent.start().await;
    let (s, _, v) = agent
        .post(&activity("after-the-storm"), "application/json")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["seqs"], serde_json::json!([stored.len() as u64 + 1]));
    agent.stop();
    assert!(agent.cli(&["verify"]).status.success());
}
