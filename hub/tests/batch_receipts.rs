//! Receipts in the form the sender asks for: without the `X-Spacesync-Receipts: batch`
//! header the answer is what hubs have always sent (one signed `Receipt` per entry, byte for
//! byte); with it, one signed `BatchReceipt` whose every entry says what that entry's own
//! receipt would.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use serde::Deserialize;
use spacesync_shared::Envelope;
use spacesync_shared::wire::{
    BATCH_RECEIPT_PAYLOAD_TYPE, BatchReceipt, HDR_RECEIPTS, IngestBatch, IngestResponse,
    PATH_INGEST, Receipt, Refusal, open_entry_receipt,
};

/// The ingest answer as agents before batch receipts read it: unknown fields refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct OldAnswer {
    held_through: u64,
    receipts: Vec<Envelope>,
    #[serde(default)]
    refused: Vec<Refusal>,
    #[serde(default)]
    resend_from: Option<u64>,
}

/// The receipt as agents before batch receipts read it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct OldReceipt {
    source: String,
    seq: u64,
    entry_hash: String,
    log_index: u64,
    received_at: String,
}

fn post(batch: &IngestBatch, ask: Option<&str>) -> Request<Body> {
    let mut b = Request::post(PATH_INGEST).header(header::CONTENT_TYPE, "application/json");
    if let Some(v) = ask {
        b = b.header(HDR_RECEIPTS, v);
    }
    b.body(Body::from(serde_json::to_vec(batch).expect("json")))
        .expect("request")
}

fn records(schools: std::ops::Range<u64>) -> Vec<serde_json::Value> {
    schools
        .map(|i| teachers("440106", &format!("440106{i:04}"), "2018-11-19", 100 + i))
        .collect()
}

/// The first two batches of the answers the hub of 2b8f10c gave (kept in `hub/testdata`):
/// seqs 1–2, then seq 2 resent with seq 3.
fn two_batches() -> (Agent, IngestBatch, IngestBatch) {
    let mut a = Agent::new("gd-a", 1, "440000");
    let first = a.batch(&[
        teachers("440106", "4401060001", "2018-11-19", 100),
        teachers("440106", "4401060002", "2018-11-19", 120),
    ]);
    let mut second = a.batch(&[teachers("440106", "4401060003", "2018-11-19", 130)]);
    second.entries.insert(0, first.entries[1].clone());
    (a, first, second)
}

#[tokio::test]
async fn without_the_ask_the_answer_is_byte_for_byte_what_hubs_answered_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let (a, first, second) = two_batches();
    th.register(&a);
    for (batch, golden) in [
        (
            &first,
            include_str!("../testdata/ingest_answer_2b8f10c_1.json"),
        ),
        (
            &second,
            include_str!("../testdata/ingest_answer_2b8f10c_2.json"),
        ),
    ] {
        let r = th.send(post(batch, None)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.text(), golden.trim(), "the answer changed");
        let old: OldAnswer = serde_json::from_slice(&r.body).expect("an old agent reads it");
        for env in &old.receipts {
            let _: OldReceipt = serde_json::from_slice(&env.payload).expect("old receipt");
            Receipt::open(env, &hub_key().verifying_key()).expect("signed by the hub");
        }
    }
    // An unknown value is no ask.
    let mut a = a;
    let third = a.batch(&records(4..6));
    let r = th.send(post(&third, Some("bundle"))).await;
    let old: OldAnswer = serde_json::from_slice(&r.body).expect("an old agent reads it");
    assert_eq!(old.receipts.len(), 2);
}

#[tokio::test]
async fn asked_for_one_the_hub_signs_one_batch_receipt_saying_what_each_receipt_would() {
    // Two hubs fed the same batches at the same times, one asked for batch receipts.
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (each, once) = (TestHub::open(d1.path()), TestHub::open(d2.path()));
    let mut a = Agent::new("gd-a", 1, "440000");
    each.register(&a);
    once.register(&a);
    let hub = hub_key().verifying_key();
    let first = a.batch(&records(1..40));
    let mut second = a.batch(&records(40..50));
    // Resent entries (held at the first batch's time) before new ones.
    second
        .entries
        .splice(0..0, first.entries[30..].iter().cloned());
    let later = t0() + chrono::Duration::minutes(7);
    for (i, batch) in [&first, &second].into_iter().enumerate() {
        if i == 1 {
            each.clock.set(later);
            once.clock.set(later);
        }
        let per_entry: IngestResponse = each.send(post(batch, None)).await.json_as();
        let r = once.send(post(batch, Some("batch"))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let batched: IngestResponse = r.json_as();
        assert!(per_entry.batch_receipt.is_none());
        assert!(
            batched.receipts.is_empty(),
            "no per-entry receipt when asked"
        );
        assert_eq!(batched.held_through, per_entry.held_through);
        let env = batched.batch_receipt.expect("a batch receipt");
        assert_eq!(env.payload_type, BATCH_RECEIPT_PAYLOAD_TYPE);
        let opened = BatchReceipt::open(&env, &hub).expect("signed by the hub");
        let want: Vec<Receipt> = per_entry
            .receipts
            .iter()
            .map(|e| Receipt::open(e, &hub).expect("receipt"))
            .collect();
        assert_eq!(want.len(), batch.entries.len());
        assert_eq!(opened.receipts().collect::<Vec<_>>(), want);
        for (r, e) in want.iter().zip(&batch.entries) {
            assert_eq!(r.entry_hash, e.payload_hash());
            assert_eq!(open_entry_receipt(&env, &hub, r.seq).as_ref(), Ok(r));
        }
        if i == 1 {
            let resent = opened.receipt(31).expect("seq 31");
            let fresh = opened.receipt(40).expect("seq 40");
            assert_eq!(
                resent.received_at,
                t0(),
                "a resend keeps when it was first held"
            );
            assert_eq!(fresh.received_at, later);
            assert!(resent.log_index < fresh.log_index);
        }
    }
}

#[tokio::test]
async fn a_batch_receipt_covers_only_what_is_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut a = Agent::new("gd-a", 1, "440000");
    th.register(&a);
    let hub = hub_key().verifying_key();
    // A gap: nothing held, so no receipt at all.
    let skipped = a.batch(&records(1..3));
    let gap = IngestBatch {
        source: a.id.clone(),
        entries: skipped.entries[1..].to_vec(),
    };
    let r = th.send(post(&gap, Some("batch"))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let resp: IngestResponse = r.json_as();
    assert!(resp.batch_receipt.is_none() && resp.receipts.is_empty());
    // Seqs 1–2, then seq 4 with a bad prev: the receipt covers the held prefix only.
    let mut batch = skipped;
    let mut bad = a.entry(&records(3..4)[0]);
    bad.seq += 1;
    batch.entries.push(bad.sign(&a.key));
    let r = th.send(post(&batch, Some("batch"))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let resp: IngestResponse = r.json_as();
    let opened = BatchReceipt::open(&resp.batch_receipt.expect("receipt"), &hub).expect("verifies");
    assert_eq!(
        opened.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(resp.held_through, 2);
}

/// Reads an answer's body as `T` (panics with the body when it does not).
trait JsonAs {
    fn json_as<T: serde::de::DeserializeOwned>(&self) -> T;
}

impl JsonAs for Reply {
    fn json_as<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}
