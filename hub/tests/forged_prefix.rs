//! An entry without a valid signature by its source's key is never held, even when a
//! later entry of the same batch is malformed: entry 0 signed by another key under the
//! victim's key id, entry 1 with S ≥ L. The batch path once named entry 1 (rules 1–3 were
//! checked for every entry before any equation) and the chain verifier took entry 0 as
//! verified, so the hub held it and signed a receipt (found by an outside attack).

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use spacesync_shared::wire::IngestBatch;

#[tokio::test]
async fn an_entry_without_a_valid_signature_is_never_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut victim = Agent::new("gd-a", 1, "440000");
    th.register(&victim);
    th.ingest_ok(&victim.batch(&[teachers("440106", "4144010601", "2018-11-01", 100)]))
        .await;
    let before = th.source_leaves();

    // Mallory knows the source id, the next seq and the head hash (all public), not the key.
    let mallory = SigningKey::from_bytes(&[0x66; 32]);
    let mut forged = victim
        .entry(&teachers("440106", "4144010601", "2018-11-02", 9999))
        .sign(&mallory);
    // Labelled with the victim's key id: well-formed R (prime order) and S < L, wrong key.
    let victim_keyid = spacesync_shared::dsse::key_id(&victim.key.verifying_key());
    forged.signatures[0].keyid = victim_keyid.clone();
    victim.advance(&forged);
    let mut second = victim.entry(&teachers("440106", "4144010601", "2018-11-03", 1));
    second.seq = victim.next;
    let mut second = second.sign(&victim.key);
    // S ≥ L: a structural fault at index 1.
    second.signatures[0].sig[32..].fill(0xff);
    let batch = IngestBatch {
        source: victim.id.clone(),
        entries: vec![forged, second],
    };
    let r = th.ingest(&batch).await;
    eprintln!("status {} body {}", r.status, r.text());
    assert_eq!(
        th.source_leaves(),
        before,
        "an entry signed by another key was appended to gd-a's chain"
    );
}
