//! An entry's envelope carries exactly one signature: a key holder (or anyone relaying a
//! genuine entry) cannot make the log keep unverified bytes beside it — extra signatures
//! with junk key ids or any length, or none at all. Such an entry is refused as invalid,
//! nothing after it is held, and the same entry with its one signature is then accepted.

mod common;

use common::*;
use spacesync_shared::dsse::EnvelopeSignature;
use spacesync_shared::wire::{IngestBatch, IngestResponse, RefusalCode};

#[tokio::test]
async fn an_envelope_with_other_than_one_signature_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut a = Agent::new("gd-a", 1, "440000");
    th.register(&a);
    th.ingest_ok(&a.batch(&[teachers("440106", "4144010601", "2018-11-01", 100)]))
        .await;
    let genuine = a.entry(&teachers("440106", "4144010601", "2018-11-02", 120));
    let genuine = genuine.sign(&a.key);

    let junk = EnvelopeSignature {
        keyid: "junk\n".repeat(200),
        sig: vec![0xAB; 4096],
    };
    let mut padded = genuine.clone();
    padded.signatures.push(junk.clone());
    let mut junk_first = genuine.clone();
    junk_first.signatures.insert(0, junk);
    let mut twice = genuine.clone();
    twice.signatures.push(genuine.signatures[0].clone());
    let mut none = genuine.clone();
    none.signatures.clear();

    for (what, env, count) in [
        ("junk after", padded, 2),
        ("junk before", junk_first, 2),
        ("the same twice", twice, 2),
        ("none", none, 0),
    ] {
        let before = (th.log_size(), th.source_leaves());
        let r = th
            .ingest(&IngestBatch {
                source: a.id.clone(),
                entries: vec![env],
            })
            .await;
        assert_eq!(r.status.as_u16(), 422, "{what}: {}", r.text());
        let resp: IngestResponse = serde_json::from_slice(&r.body).expect("ingest response");
        assert_eq!(resp.refused.len(), 1, "{what}");
        assert_eq!(resp.refused[0].code, RefusalCode::Invalid, "{what}");
        assert!(
            resp.refused[0].reason.contains(&format!(
                "exactly one signature, by its source's key; this one carries {count}"
            )),
            "{what}: {}",
            resp.refused[0].reason
        );
        assert!(resp.receipts.is_empty(), "{what}");
        assert_eq!((th.log_size(), th.source_leaves()), before, "{what}");
    }

    // The genuine entry alone is accepted at that seq.
    a.advance(&genuine);
    let resp = th
        .ingest_ok(&IngestBatch {
            source: a.id.clone(),
            entries: vec![genuine],
        })
        .await;
    assert_eq!(resp.receipts.len(), 1);
    assert_eq!(resp.held_through, 2);
}
