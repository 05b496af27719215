//! Acceptance for batch receipts: real agents push to a real hub (through a proxy that
//! cuts answers after the hub committed, resets and stalls, so batches are resent), then,
//! every process stopped, each entry an agent counts as delivered has a receipt that
//! verifies on its own — `open_entry_receipt` on what the agent stored, one signature per
//! batch — naming the agent's own entry, and the hub's log holds exactly that entry at
//! the receipt's index; `spacesync-agent verify` passes.

use std::time::{Duration, Instant};

use spacesync_agent::store::{Store, StoredReceipt};
use spacesync_hub::log;
use spacesync_hub::store::SledStore;
use spacesync_shared::keys::parse_public_key;
use spacesync_shared::wire::open_entry_receipt;
use spacesync_shared::{Entry, Envelope};
use spacesync_tests::cluster::{AgentNode, Cluster, Workload};
use spacesync_tests::fault_proxy::{Fault, FaultPlan};

/// Posts `batches` NDJSON batches of `per` records of `work` to `agent`; returns how many
/// records were acknowledged.
async fn post(agent: &AgentNode, work: &mut Workload, batches: usize, per: usize) -> u64 {
    let http = reqwest::Client::new();
    let api = agent.api();
    let mut acked = 0;
    for _ in 0..batches {
        let body = (0..per)
            .map(|_| work.next_write().1)
            .collect::<Vec<_>>()
            .join("\n");
        let r = http
            .post(format!("{}/v1/records", api.url))
            .bearer_auth(&api.token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
        acked += per as u64;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivered_entry_has_a_receipt_that_verifies_on_its_own() {
    let mut c = Cluster::start(2, 12, FaultPlan::NONE, |cfg| {
        cfg.push.max_entries = 40;
    })
    .await;
    let mut works: Vec<Workload> = c.agents.iter().map(|a| Workload::new(a.site)).collect();
    let mut acked = vec![0u64; c.agents.len()];
    for (i, a) in c.agents.iter().enumerate() {
        acked[i] += post(a, &mut works[i], 10, 25).await;
    }
    c.wait_drained(Duration::from_secs(60)).await;
    // With the hub out of reach the agents take more; then its answers are lost after it
    // committed (cut at once or part way), a request is reset and one stalls past the
    // agents' timeout: batches are resent, and their receipts name the index and time each
    // entry was first held with.
    c.proxy.partition();
    let start = Instant::now();
    for (i, a) in c.agents.iter().enumerate() {
        acked[i] += post(a, &mut works[i], 10, 25).await;
    }
    c.proxy.force([
        Fault::Cut { after: 0 },
        Fault::Cut { after: 90 },
        Fault::Reset { after: 300 },
        Fault::Cut { after: 0 },
        Fault::Stall { ms: 1_500 },
        Fault::Cut { after: 400 },
        Fault::Cut { after: 0 },
    ]);
    c.proxy.heal().await;
    c.wait_drained(Duration::from_secs(90)).await;
    let counts = c.proxy.counts();
    assert!(counts.cuts >= 3, "{counts:?}");
    eprintln!(
        "receipts_end_to_end: {counts:?} in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let hub_key = parse_public_key(&c.hub.key_line).unwrap_or_else(|e| panic!("{e}"));
    for a in &mut c.agents {
        a.stop();
    }
    c.hub.stop();
    let hub = SledStore::open(&c.hub.db()).unwrap_or_else(|e| panic!("{e}"));
    for (a, want) in c.agents.iter().zip(&acked) {
        let out = a.cli(&["verify"]);
        assert!(
            out.status.success(),
            "{}: spacesync-agent verify: {}{}",
            a.site.source,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let store = Store::open(&a.data().db()).unwrap_or_else(|e| panic!("{e}"));
        let delivered = store.acked().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(delivered, *want, "{}: every entry delivered", a.site.source);
        let batches = store.batch_receipt_count() as u64;
        assert!(
            batches > 0 && batches < delivered / 5,
            "{}: {batches} batch receipts for {delivered} entries",
            a.site.source
        );
        let mut stored = store.raw_receipts();
        for seq in 1..=delivered {
            assert!(store.has_receipt(seq).unwrap_or(false), "seq {seq}");
            let (at, held) = stored
                .next()
                .unwrap_or_else(|| panic!("no receipt row for seq {seq}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(at, seq, "one receipt row per seq");
            let bytes = match held {
                StoredReceipt::Own(bytes) => bytes,
                StoredReceipt::InBatch(id) => store
                    .batch_receipt(id)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|| panic!("seq {seq}: batch receipt {id} missing")),
            };
            let env: Envelope = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
            let r = open_entry_receipt(&env, &hub_key, seq)
                .unwrap_or_else(|e| panic!("{} seq {seq}: {e}", a.site.source));
            let mine = store
                .entry(seq)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("entry {seq}"));
            assert_eq!(
                (&r.source, r.entry_hash),
                (&a.source(), mine.payload_hash())
            );
            let leaf = log::read(&hub, r.log_index)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no log leaf {}", r.log_index));
            let entry =
                Entry::from_payload(&leaf.envelope.payload).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (
                    leaf.source.as_ref(),
                    entry.seq,
                    leaf.envelope.payload_hash()
                ),
                (Some(&r.source), seq, r.entry_hash),
                "the log's leaf {} is the receipted entry",
                r.log_index
            );
            assert_eq!(leaf.received_at, r.received_at);
        }
        assert!(stored.next().is_none(), "receipts beyond the delivered seq");
    }
}
