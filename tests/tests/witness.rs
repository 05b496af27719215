//! Issue 16, agents as witnesses, with real processes: three agents deliver to the real
//! hub, audit its log and cosign the checkpoint they verified; the hub's `/v1/checkpoint`
//! then carries each agent's `cosignature/v1` line on the hub-signed note — which a
//! verifier knowing only the hub key still opens — and each line verifies with that
//! agent's registered key. Behind a fault proxy the same holds (no false alarm, and the
//! cosignatures arrive).

use std::time::Duration;

use serde_json::Value;
use spacesync_shared::cosign::{self, Cosigner};
use spacesync_shared::keys::parse_public_key;
use spacesync_shared::merkle::{self, NoteVerifier};
use spacesync_tests::cluster::{AgentNode, Cluster, Workload};
use spacesync_tests::fault_proxy::FaultPlan;

/// Posts `n` records of `work` to `agent` in one batch.
async fn post(agent: &AgentNode, work: &mut Workload, n: usize) {
    let api = agent.api();
    let body = (0..n)
        .map(|_| work.next_write().1)
        .collect::<Vec<_>>()
        .join("\n");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/records", api.url))
        .bearer_auth(&api.token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/records: {e}"));
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
}

fn witness(a: &AgentNode) -> Cosigner {
    let key = parse_public_key(&a.key_line).unwrap_or_else(|e| panic!("{e}"));
    Cosigner::new(&cosign::witness_name(&a.source()), key).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until the hub's newest checkpoint carries a verifying cosignature of every agent;
/// returns the note.
async fn wait_witnessed(c: &Cluster, origin: &str) -> String {
    let hub_key = parse_public_key(&c.hub.key_line).unwrap_or_else(|e| panic!("{e}"));
    let verifier = NoteVerifier::new(origin, hub_key).unwrap_or_else(|e| panic!("{e}"));
    let trusted: Vec<Cosigner> = c.agents.iter().map(witness).collect();
    let url = format!("{}/v1/checkpoint", c.hub.url());
    let start = std::time::Instant::now();
    loop {
        let note = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET /v1/checkpoint: {e}"))
            .text()
            .await
            .unwrap_or_default();
        // Always a valid hub-signed checkpoint, however many lines it carries.
        merkle::open_checkpoint(&note, &verifier, origin).unwrap_or_else(|e| panic!("{e}: {note}"));
        let got = cosign::verify(&note, &trusted).unwrap_or_else(|e| panic!("{e}: {note}"));
        if got.len() == trusted.len() {
            return note;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the hub's checkpoint was not cosigned by every agent:\n{note}\nhub log:\n{}",
            c.hub.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn origin(c: &Cluster) -> String {
    let note = reqwest::get(format!("{}/v1/checkpoint", c.hub.url()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    note.lines().next().unwrap_or_default().to_string()
}

async fn run(plan: FaultPlan, seed: u64) {
    let c = Cluster::start(3, seed, plan, |_| {}).await;
    let mut works: Vec<Workload> = c.agents.iter().map(|a| Workload::new(a.site)).collect();
    for round in 0..4 {
        for (a, w) in c.agents.iter().zip(works.iter_mut()) {
            post(a, w, 1 + round).await;
        }
    }
    c.wait_drained(Duration::from_secs(90)).await;
    let origin = origin(&c).await;
    let note = wait_witnessed(&c, &origin).await;
    // Cosigned exactly the tree the hub serves now: the log is quiet.
    let size: u64 = note
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_default();
    for a in &c.agents {
        let s: Value = a.status().await.unwrap_or(Value::Null);
        assert!(s["log_alarm"].is_null(), "{s}");
        assert_eq!(s["verified_checkpoint_size"], size, "{s}");
    }
    // One line per witness, after the hub's own.
    let sig_lines = note.lines().filter(|l| l.starts_with('—')).count();
    assert_eq!(sig_lines, 1 + c.agents.len(), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_cosigns_the_checkpoint_it_verified() {
    run(FaultPlan::NONE, 17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosignatures_arrive_through_a_faulty_network() {
    run(FaultPlan::chaos(0.3, 1_000), 18).await;
}
