//! The log audit against a scripted hub: a real store with real entries and receipts, and a
//! hub whose log (a [`MemoryTree`] of leaves) each test grows, rewrites, rolls back or
//! signs with the wrong key between audits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ed25519_dalek::SigningKey;
use serde_json::json;
use spacesync_shared::Digest;
use spacesync_shared::clock::{Clock, FixedClock};
use spacesync_shared::cosign::{self, Cosigner};
use spacesync_shared::dsse::pae;
use spacesync_shared::keys::public_key_line;
use spacesync_shared::merkle::{self, Checkpoint, Hash, MemoryTree};
use spacesync_shared::wire::{
    BatchReceipt, CosignatureSubmission, IngestResponse, LogAlarmReport, ReceiptItem, SourceHead,
};
use tokio::sync::Notify;

use super::Pusher;
use super::audit::{
    AuditState, CLEARED, Evidence, Finding, FullAudit, MAX_EVIDENCE, MAX_EVIDENCE_BYTES, Outcome,
    audit, audit_all, clear_alarm,
};
use super::classify::Link;
use super::state::{PushState, SharedPushState, lock};
use super::transport::{Answer, Request, Transport, Unreached};
use super::witness::{self, Sent};
use crate::config::Config;
use crate::intake::tests::{clock, identity, json as submission, writer};
use crate::store::Store;

const ORIGIN: &str = "spacesync-hub/campaign/test";

fn hub_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// The hub's log as the test makes it, and how it answers.
#[derive(Default)]
struct Log {
    leaves: Vec<Hash>,
    /// Signs checkpoints with this key instead of the hub's.
    wrong_key: Option<SigningKey>,
    /// Answers requests of this kind (`checkpoint`, `consistency`, `inclusion`, `head`)
    /// with this status and body instead.
    fail: HashMap<&'static str, (u16, Vec<u8>)>,
    /// What was asked, in order.
    seen: Vec<String>,
    /// Cosignatures received (`POST /v1/cosignature`), answered 200.
    cosigs: Vec<CosignatureSubmission>,
    /// Sizes answered to `/v1/cosignature/wanted`.
    wanted: Vec<u64>,
    /// Leaves `/v1/checkpoint?size=` is signed over instead of the log's (a hub that shows
    /// another tree of that size).
    forked_prefix: Option<Vec<Hash>>,
    /// The `Retry-After` of the answers `fail` scripts.
    retry_after: Option<Duration>,
    /// Requests of these kinds are not answered (the connection dropped).
    dropped: Vec<&'static str>,
    /// No request is answered (the hub down).
    down: bool,
    /// What the hub holds of this agent's chain (`/v1/agent/head`), grown by ingest.
    held: u64,
    /// Hash of the entry at `held`.
    head: Digest,
    /// Ingest requests answered.
    ingests: u64,
    /// Log alarm reports received (`POST /v1/agent/log-alarm`), answered 204 unless
    /// `fail` scripts `log_alarm`.
    alarm_reports: Vec<LogAlarmReport>,
}

#[derive(Clone, Default)]
struct Hub(Arc<Mutex<Log>>);

impl Hub {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn tree(leaves: &[Hash]) -> MemoryTree {
    let mut t = MemoryTree::new();
    for l in leaves {
        t.push(*l).unwrap_or_else(|e| panic!("{e}"));
    }
    t
}

fn ok(body: Vec<u8>) -> Result<Answer, Unreached> {
    Ok(Answer {
        status: 200,
        retry_after: None,
        body,
    })
}

impl Transport for Hub {
    async fn send(&mut self, req: &Request) -> Result<Answer, Unreached> {
        let mut log = self.log();
        log.seen.push(req.what());
        let unreached = || Unreached {
            error: "connection refused".into(),
            doubt: false,
        };
        if log.down {
            return Err(unreached());
        }
        let kind = match req {
            Request::Checkpoint => "checkpoint",
            Request::Consistency { .. } => "consistency",
            Request::Inclusion { .. } => "inclusion",
            Request::Cosign(sub) => {
                log.cosigs.push(sub.clone());
                if let Some((status, body)) = log.fail.get("cosign") {
                    return Ok(Answer {
                        status: *status,
                        retry_after: None,
                        body: body.clone(),
                    });
                }
                return ok(br#"{"size":0,"witnesses":1}"#.to_vec());
            }
            Request::LogAlarm(r) => {
                log.alarm_reports.push(r.clone());
                if let Some((status, body)) = log.fail.get("log_alarm") {
                    return Ok(Answer {
                        status: *status,
                        retry_after: None,
                        body: body.clone(),
                    });
                }
                return Ok(Answer {
                    status: 204,
                    retry_after: None,
                    body: Vec::new(),
                });
            }
            Request::WitnessWanted => {
                let body = serde_json::to_vec(&json!({ "sizes": log.wanted }));
                return ok(body.unwrap_or_default());
            }
            Request::CheckpointAt { size } => {
                let leaves = match &log.forked_prefix {
                    Some(f) => f.clone(),
                    None => log.leaves[..*size as usize].to_vec(),
                };
                let t = tree(&leaves);
                let cp = Checkpoint {
                    origin: ORIGIN.into(),
                    size: t.size(),
                    root: t.root(),
                };
                let note = merkle::sign_checkpoint(&cp, ORIGIN, &hub_key())
                    .unwrap_or_else(|e| panic!("{e}"));
                return ok(note.into_bytes());
            }
            // Delivery, for the pusher's cycle: the hub logs each entry as its next leaf.
            Request::Head => {
                if log.dropped.contains(&"head") {
                    return Err(unreached());
                }
                if let Some((status, body)) = log.fail.get("head") {
                    return Ok(Answer {
                        status: *status,
                        retry_after: None,
                        body: body.clone(),
                    });
                }
                let sh = SourceHead {
                    source: identity().source.clone(),
                    held_through: log.held,
                    head: log.head,
                };
                return ok(serde_json::to_vec(&sh).unwrap_or_default());
            }
            Request::Ingest { first, batch, .. } => {
                let mut entries = Vec::new();
                for (env, seq) in batch.entries.iter().zip(*first..) {
                    entries.push(ReceiptItem {
                        seq,
                        entry_hash: env.payload_hash(),
                        log_index: log.leaves.len() as u64,
                        received_at: chrono::DateTime::UNIX_EPOCH,
                    });
                    log.leaves
                        .push(merkle::leaf_hash(&pae(&env.payload_type, &env.payload)));
                    (log.held, log.head) = (seq, env.payload_hash());
                }
                log.ingests += 1;
                let receipt = BatchReceipt {
                    source: batch.source.clone(),
                    entries,
                }
                .sign(&hub_key());
                let r = IngestResponse {
                    held_through: log.held,
                    batch_receipt: Some(receipt),
                    ..Default::default()
                };
                return ok(serde_json::to_vec(&r).unwrap_or_default());
            }
            other => panic!("not an audit request: {}", other.what()),
        };
        if log.dropped.contains(&kind) {
            return Err(unreached());
        }
        if let Some((status, body)) = log.fail.get(kind) {
            return Ok(Answer {
                status: *status,
                retry_after: log.retry_after,
                body: body.clone(),
            });
        }
        let t = tree(&log.leaves);
        let b64 = |p: Vec<Hash>| {
            p.iter()
                .map(|h| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, h))
                .collect::<Vec<_>>()
        };
        match *req {
            Request::Checkpoint => {
                let cp = Checkpoint {
                    origin: ORIGIN.into(),
                    size: t.size(),
                    root: t.root(),
                };
                let key = log.wrong_key.clone().unwrap_or_else(hub_key);
                let note =
                    merkle::sign_checkpoint(&cp, ORIGIN, &key).unwrap_or_else(|e| panic!("{e}"));
                ok(note.into_bytes())
            }
            Request::Consistency { old, new } => {
                let p = merkle::consistency_proof(&t, old, new).unwrap_or_else(|e| panic!("{e}"));
                ok(
                    serde_json::to_vec(&json!({"old": old, "new": new, "proof": b64(p)}))
                        .unwrap_or_default(),
                )
            }
            Request::Inclusion { index, size } => {
                let p = merkle::inclusion_proof(&t, index, size).unwrap_or_else(|e| panic!("{e}"));
                ok(
                    serde_json::to_vec(&json!({"index": index, "size": size, "proof": b64(p)}))
                        .unwrap_or_default(),
                )
            }
            _ => unreachable!(),
        }
    }
}

/// A store with `n` entries (seqs 1..=n), the hub, a link to it, the push state.
struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    hub: Hub,
    link: Link<Hub>,
    state: SharedPushState,
}

fn setup(n: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
    let mut w = writer(&store, Default::default());
    let act = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;
    let body = vec![act; n].join("\n");
    w.submit(&submission(&body), &mut |_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    store.flush().unwrap_or_else(|e| panic!("{e}"));
    let state: SharedPushState = Arc::new(Mutex::new(PushState::default()));
    let hub = Hub::default();
    let link = Link::new(hub.clone(), state.clone(), clock(), identity());
    Setup {
        _dir: dir,
        store,
        hub,
        link,
        state,
    }
}

/// A leaf no entry of this agent has.
fn other(n: u8) -> Hash {
    merkle::leaf_hash(&[n; 7])
}

impl Setup {
    /// The leaf the hub's log makes of this agent's entry `seq`.
    fn leaf(&self, seq: u64) -> Hash {
        let env = self
            .store
            .entry(seq)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no entry {seq}"));
        merkle::leaf_hash(&pae(&env.payload_type, &env.payload))
    }

    /// Stores one batch receipt for `(seq, leaf index)` pairs, as delivery would.
    fn receipt(&self, at: &[(u64, u64)]) {
        let entries = at
            .iter()
            .map(|&(seq, log_index)| ReceiptItem {
                seq,
                entry_hash: self
                    .store
                    .entry(seq)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|| panic!("no entry {seq}"))
                    .payload_hash(),
                log_index,
                received_at: chrono::DateTime::UNIX_EPOCH,
            })
            .collect();
        let env = BatchReceipt {
            source: identity().source.clone(),
            entries,
        }
        .sign(&hub_key());
        let seqs: Vec<u64> = at.iter().map(|(s, _)| *s).collect();
        self.store
            .record_batch_receipt(&serde_json::to_vec(&env).unwrap_or_default(), &seqs)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn audit(&mut self) -> Result<Outcome, super::audit::AuditError> {
        let key = hub_key().verifying_key();
        audit(
            &mut self.link,
            &self.store,
            &key,
            &self.state,
            clock().now(),
        )
        .await
    }

    async fn verified(&mut self) -> u64 {
        match self.audit().await {
            Ok(Outcome::Verified(n)) => n,
            other => panic!("expected a verified audit, got {other:?}"),
        }
    }

    async fn alarmed(&mut self) -> Finding {
        match self.audit().await {
            Ok(Outcome::Alarm(f)) => f,
            other => panic!("expected an alarm, got {other:?}"),
        }
    }

    fn kept(&self) -> AuditState {
        AuditState::load(&self.store).unwrap_or_else(|e| panic!("{e}"))
    }

    fn evidence(&self) -> Vec<Evidence> {
        self.store
            .audit_evidence()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn seen(&self) -> Vec<String> {
        std::mem::take(&mut self.hub.log().seen)
    }

    /// The alarm is set in the status, stored, with one piece of evidence per finding.
    fn assert_alarm(&self, code: &str) {
        let alarm = lock(&self.state).log_alarm.clone();
        let alarm = alarm.unwrap_or_else(|| panic!("no log alarm in the status"));
        assert!(alarm.starts_with(code), "{alarm}");
        assert_eq!(self.kept().alarm.as_deref(), Some(alarm.as_str()));
        let ev = self.evidence();
        let last = ev.last().unwrap_or_else(|| panic!("no evidence stored"));
        assert_eq!(last.code, code);
        assert!(last.fetched.starts_with(ORIGIN), "{}", last.fetched);
    }
}

#[tokio::test]
async fn consistent_growth_passes_and_checks_the_last_entry_of_each_batch() {
    let mut s = setup(4);
    // Another source's leaf first, then entries 1 and 2 in one batch.
    let (l1, l2, l3, l4) = (s.leaf(1), s.leaf(2), s.leaf(3), s.leaf(4));
    s.hub.log().leaves = vec![other(1), l1, l2];
    s.receipt(&[(1, 1), (2, 2)]);
    assert_eq!(s.verified().await, 3);
    assert_eq!(
        s.seen(),
        [
            "fetching the hub's checkpoint",
            "fetching an inclusion proof for leaf 2 in tree size 3"
        ]
    );
    assert_eq!(lock(&s.state).verified_checkpoint_size, Some(3));
    assert_eq!(s.kept().audited_through, 2);

    // Two more batches, with other sources' leaves between.
    s.hub
        .log()
        .leaves
        .extend([other(2), l3, other(3), l4, other(4)]);
    s.receipt(&[(3, 4)]);
    s.receipt(&[(4, 6)]);
    assert_eq!(s.verified().await, 8);
    assert_eq!(
        s.seen(),
        [
            "fetching the hub's checkpoint",
            "fetching a consistency proof from tree size 3 to 8",
            "fetching an inclusion proof for leaf 4 in tree size 8",
            "fetching an inclusion proof for leaf 6 in tree size 8",
        ]
    );
    // Nothing new: the same checkpoint again passes without proofs.
    assert_eq!(s.verified().await, 8);
    assert_eq!(s.seen(), ["fetching the hub's checkpoint"]);
    assert_eq!(lock(&s.state).log_alarm, None);
    assert!(s.evidence().is_empty());
}

#[tokio::test]
async fn a_fork_alarms_keeps_the_evidence_and_the_alarm_stays() {
    let mut s = setup(2);
    let (l1, l2) = (s.leaf(1), s.leaf(2));
    s.hub.log().leaves = vec![other(1), l1, l2];
    s.receipt(&[(1, 1), (2, 2)]);
    assert_eq!(s.verified().await, 3);
    let kept = s.kept().checkpoint;

    // The hub now shows a tree whose first leaf differs: it does not extend the kept one.
    s.hub.log().leaves = vec![other(9), l1, l2, other(2)];
    assert!(matches!(s.alarmed().await, Finding::Fork(_)));
    s.assert_alarm("fork");
    let ev = s.evidence();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kept, kept);
    let proof = ev[0]
        .proof
        .clone()
        .unwrap_or_else(|| panic!("no proof kept"));
    assert_eq!(
        proof.asked,
        "fetching a consistency proof from tree size 3 to 4"
    );
    assert!(proof.answer.contains("\"proof\""), "{}", proof.answer);
    // The kept checkpoint did not move.
    assert_eq!(s.kept().checkpoint, kept);
    assert_eq!(lock(&s.state).verified_checkpoint_size, Some(3));

    // The hub goes back to the honest tree and grows it: the audit passes again, but the
    // alarm stays (the hub cannot silence it).
    s.hub.log().leaves = vec![other(1), l1, l2, other(2)];
    assert_eq!(s.verified().await, 4);
    s.assert_alarm("fork");

    // A tree of the same size with another root is a fork too.
    s.hub.log().leaves = vec![other(1), l1, l2, other(3)];
    assert!(matches!(s.alarmed().await, Finding::Fork(_)));
    assert_eq!(s.evidence().len(), 2);
}

#[tokio::test]
async fn a_rollback_alarms() {
    let mut s = setup(2);
    let (l1, l2) = (s.leaf(1), s.leaf(2));
    s.hub.log().leaves = vec![l1, other(1), l2, other(2), other(3)];
    s.receipt(&[(1, 0)]);
    s.receipt(&[(2, 2)]);
    assert_eq!(s.verified().await, 5);
    s.hub.log().leaves.truncate(3);
    assert_eq!(s.alarmed().await, Finding::Rollback { kept: 5, now: 3 });
    s.assert_alarm("rollback");
    assert_eq!(lock(&s.state).verified_checkpoint_size, Some(5));
    // The same rollback seen again at the next syncs: still an alarm, the evidence once.
    for _ in 0..3 {
        assert_eq!(s.alarmed().await, Finding::Rollback { kept: 5, now: 3 });
    }
    assert_eq!(s.evidence().len(), 1);
    // Rolled back further: new evidence.
    s.hub.log().leaves.truncate(2);
    assert_eq!(s.alarmed().await, Finding::Rollback { kept: 5, now: 2 });
    assert_eq!(s.evidence().len(), 2);
}

#[tokio::test]
async fn a_dropped_receipted_entry_alarms() {
    let mut s = setup(3);
    let (l1, l2, l3) = (s.leaf(1), s.leaf(2), s.leaf(3));
    s.hub.log().leaves = vec![other(1), l1];
    s.receipt(&[(1, 1)]);
    assert_eq!(s.verified().await, 2);

    // Entry 2 was receipted at leaf 2, but the hub's log has another leaf there.
    s.receipt(&[(2, 2)]);
    s.hub.log().leaves.extend([other(2), other(3)]);
    assert!(matches!(s.alarmed().await, Finding::Missing(_)));
    s.assert_alarm("missing_entry");
    let ev = s.evidence();
    let proof = ev[0]
        .proof
        .clone()
        .unwrap_or_else(|| panic!("no proof kept"));
    assert_eq!(proof.seq, Some(2));
    assert_eq!(
        proof.leaf_hash.as_deref(),
        Some(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, l2).as_str())
    );
    // Not advanced: the next audit checks entry 2 again.
    assert_eq!(s.kept().audited_through, 1);
    assert_eq!(lock(&s.state).verified_checkpoint_size, Some(2));

    // A receipt naming a leaf beyond the signed tree is missing too.
    let mut s = setup(3);
    s.hub.log().leaves = vec![l1, l2, other(1)];
    s.receipt(&[(1, 0), (2, 1), (3, 7)]);
    let _ = l3;
    assert!(matches!(s.alarmed().await, Finding::Missing(_)));
    s.assert_alarm("missing_entry");
}

/// `verify --against-hub` proves every receipted entry, not each batch's last: a receipt
/// that names a leaf holding something else in the middle of a batch passes the sync's
/// audit and raises the alarm here; a sound log is proven entry by entry, and the kept
/// checkpoint stays the sync's to move.
#[tokio::test]
async fn verify_against_the_hub_proves_every_receipted_entry() {
    let mut s = setup(3);
    let (l1, l2, l3) = (s.leaf(1), s.leaf(2), s.leaf(3));
    s.hub.log().leaves = vec![l1, l2, l3];
    s.receipt(&[(1, 0), (2, 1), (3, 2)]);
    assert_eq!(s.verified().await, 3);
    let kept = s.kept();
    let _ = s.seen();
    let key = hub_key().verifying_key();
    let full = audit_all(&mut s.link, &s.store, &key, &s.state, clock().now())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        full,
        FullAudit {
            checkpoint_size: Some(3),
            proven: 3,
            pruned: 0,
            alarm: None
        }
    );
    assert_eq!(
        s.seen().len(),
        4,
        "the checkpoint and three inclusion proofs"
    );
    assert_eq!(s.kept(), kept);

    // Entry 1's receipt names leaf 0, which holds another source's entry.
    let mut s = setup(3);
    s.hub.log().leaves = vec![other(1), l2, l3];
    s.receipt(&[(1, 0), (2, 1), (3, 2)]);
    assert_eq!(s.verified().await, 3, "the batch's last entry is there");
    assert_eq!(lock(&s.state).log_alarm, None);
    let full = audit_all(&mut s.link, &s.store, &key, &s.state, clock().now())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let alarm = full.alarm.unwrap_or_else(|| panic!("no alarm"));
    assert!(alarm.starts_with("missing_entry"), "{alarm}");
    assert!(alarm.contains("seq 1"), "{alarm}");
    s.assert_alarm("missing_entry");
    // The sync's next audit does not clear it.
    let _ = s.audit().await;
    s.assert_alarm("missing_entry");
}

/// Only the operator clears the alarm: the kept checkpoint goes with it, the next audit
/// starts from the hub's checkpoint as the first did, and the evidence gains a record.
#[tokio::test]
async fn the_operator_clears_the_alarm_and_the_audit_starts_again() {
    let mut s = setup(2);
    let (l1, l2) = (s.leaf(1), s.leaf(2));
    s.hub.log().leaves = vec![l1, l2, other(1)];
    s.receipt(&[(1, 0), (2, 1)]);
    assert_eq!(s.verified().await, 3);
    s.hub.log().leaves = vec![l1, l2];
    assert!(matches!(s.alarmed().await, Finding::Rollback { .. }));
    let none = clear_alarm(&s.store, &s.state, "nothing", clock().now());
    let cleared = none.await.unwrap_or_else(|e| panic!("{e}"));
    let old = cleared.unwrap_or_else(|| panic!("no alarm was cleared"));
    assert!(old.starts_with("rollback"), "{old}");
    assert_eq!(lock(&s.state).log_alarm, None);
    let kept = s.kept();
    assert_eq!((kept.alarm, kept.checkpoint), (None, None));
    let ev = s.evidence();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].code, CLEARED);
    assert!(ev[1].detected.contains("nothing"), "{}", ev[1].detected);
    // The smaller tree is now the starting point; nothing alarms.
    assert_eq!(s.verified().await, 2);
    assert_eq!(lock(&s.state).log_alarm, None);
    // Nothing to clear: nothing changes.
    let again = clear_alarm(&s.store, &s.state, "again", clock().now()).await;
    assert_eq!(again.unwrap_or_else(|e| panic!("{e}")), None);
    assert_eq!(s.evidence().len(), 2);
}

#[tokio::test]
async fn a_bad_signature_alarms() {
    let mut s = setup(1);
    let l1 = s.leaf(1);
    s.hub.log().leaves = vec![l1];
    s.receipt(&[(1, 0)]);
    assert_eq!(s.verified().await, 1);
    s.hub.log().wrong_key = Some(SigningKey::from_bytes(&[10; 32]));
    s.hub.log().leaves.push(other(1));
    assert!(matches!(s.alarmed().await, Finding::BadSignature(_)));
    s.assert_alarm("bad_checkpoint_signature");
    assert_eq!(lock(&s.state).verified_checkpoint_size, Some(1));

    // Before any checkpoint was kept, too.
    let mut s = setup(1);
    s.hub.log().wrong_key = Some(SigningKey::from_bytes(&[10; 32]));
    s.hub.log().leaves = vec![l1];
    assert!(matches!(s.alarmed().await, Finding::BadSignature(_)));
    assert_eq!(lock(&s.state).verified_checkpoint_size, None);

    // Garbage where the note should be.
    let mut s = setup(1);
    s.hub
        .log()
        .fail
        .insert("checkpoint", (200, b"<html>hello</html>".to_vec()));
    assert!(matches!(s.alarmed().await, Finding::BadSignature(_)));

    // A hostile hub failing each sync a new way, with huge answers: the alarm text and
    // each evidence record stay small, and the evidence stops at its bound.
    let mut s = setup(1);
    for i in 0..(MAX_EVIDENCE + 5) {
        let junk = format!("{i}{}", "x".repeat(1 << 20)).into_bytes();
        s.hub.log().fail.insert("checkpoint", (200, junk));
        assert!(matches!(s.alarmed().await, Finding::BadSignature(_)));
    }
    let ev = s.store.audit_evidence().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ev.len(), MAX_EVIDENCE);
    assert!(ev.iter().all(|e| e.len() < MAX_EVIDENCE_BYTES + 4096));
    let alarm = lock(&s.state).log_alarm.clone().unwrap_or_default();
    assert!(alarm.len() < 1024, "{}", alarm.len());
}

#[tokio::test]
async fn hub_errors_neither_alarm_nor_advance() {
    let garbage = b"{\"proof\":[\"not base64!\"]}".to_vec();
    let cases: &[(&str, u16, &[u8])] = &[
        ("checkpoint", 500, b"oops"),
        ("checkpoint", 429, b""),
        ("checkpoint", 403, b"{\"error\":\"no\"}"),
        ("consistency", 503, b""),
        (
            "consistency",
            400,
            b"{\"error\":\"new size 9 is larger than the log\"}",
        ),
        ("consistency", 200, &garbage),
        ("consistency", 200, b"not json"),
        ("inclusion", 404, b"{\"error\":\"no leaf 3\"}"),
        ("inclusion", 500, b""),
        ("inclusion", 200, &garbage),
    ];
    for &(kind, status, body) in cases {
        let mut s = setup(2);
        let (l1, l2) = (s.leaf(1), s.leaf(2));
        s.hub.log().leaves = vec![other(1), l1];
        s.receipt(&[(1, 1)]);
        assert_eq!(s.verified().await, 2);
        let before = s.kept();
        s.hub.log().leaves.extend([other(2), l2]);
        s.receipt(&[(2, 3)]);
        s.hub.log().fail.insert(kind, (status, body.to_vec()));
        let got = s.audit().await;
        assert!(got.is_err(), "{kind} {status}: {got:?}");
        assert_eq!(s.kept(), before, "{kind} {status}");
        assert_eq!(lock(&s.state).log_alarm, None, "{kind} {status}");
        assert_eq!(lock(&s.state).verified_checkpoint_size, Some(2));
        assert!(s.evidence().is_empty(), "{kind} {status}");
        // Once the hub answers, the audit passes and advances.
        s.hub.log().fail.clear();
        assert_eq!(s.verified().await, 4, "{kind} {status}");
        assert_eq!(s.kept().audited_through, 2);
    }
}

impl Setup {
    /// Cosigns the kept checkpoint, as the pusher does after a passed audit.
    async fn cosign_kept(&mut self) -> Option<Sent> {
        witness::cosign_kept(&mut self.link, &self.store, &identity(), clock().now())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn cosign_wanted(&mut self) -> Vec<u64> {
        let key = hub_key().verifying_key();
        witness::cosign_wanted(
            &mut self.link,
            &self.store,
            &identity(),
            &key,
            &self.state,
            clock().now(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn cosigs(&self) -> Vec<CosignatureSubmission> {
        std::mem::take(&mut self.hub.log().cosigs)
    }
}

/// This agent as a witness.
fn me() -> Cosigner {
    let id = identity();
    Cosigner::new(&cosign::witness_name(&id.source), id.key.verifying_key())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The note `sub` cosigns, with its line: it opens with the hub key and the line verifies
/// with this agent's key under its witness name.
fn check_cosignature(sub: &CosignatureSubmission, size: u64) {
    let cp = Checkpoint::parse_body(&sub.checkpoint).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cp.body(), sub.checkpoint);
    let note = merkle::sign_checkpoint(&cp, ORIGIN, &hub_key()).unwrap_or_else(|e| panic!("{e}"));
    let with = cosign::add(&note, std::slice::from_ref(&sub.cosignature))
        .unwrap_or_else(|e| panic!("{e}"));
    let v = merkle::NoteVerifier::new(ORIGIN, hub_key().verifying_key())
        .unwrap_or_else(|e| panic!("{e}"));
    let cp = merkle::open_checkpoint(&with, &v, ORIGIN).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cp.size, size);
    let got = cosign::verify(&with, &[me()]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.len(), 1, "the line is this agent's");
    assert_eq!(got[0].timestamp, clock().now().timestamp() as u64);
}

#[tokio::test]
async fn a_passed_audit_is_cosigned_once_per_checkpoint() {
    let mut s = setup(2);
    let (l1, l2) = (s.leaf(1), s.leaf(2));
    // Nothing kept yet: nothing to cosign.
    assert_eq!(s.cosign_kept().await, None);
    s.hub.log().leaves = vec![other(1), l1];
    s.receipt(&[(1, 1)]);
    assert_eq!(s.verified().await, 2);
    assert_eq!(s.cosign_kept().await, Some(Sent::Accepted));
    let sent = s.cosigs();
    assert_eq!(sent.len(), 1);
    check_cosignature(&sent[0], 2);
    assert_eq!(s.kept().cosigned_size, Some(2));
    // The same checkpoint again: not cosigned twice.
    assert_eq!(s.verified().await, 2);
    assert_eq!(s.cosign_kept().await, None);
    assert!(s.cosigs().is_empty());
    // The tree grew: the new checkpoint is cosigned.
    s.hub.log().leaves.extend([other(2), l2]);
    s.receipt(&[(2, 3)]);
    assert_eq!(s.verified().await, 4);
    assert_eq!(s.cosign_kept().await, Some(Sent::Accepted));
    let sent = s.cosigs();
    assert_eq!(sent.len(), 1);
    check_cosignature(&sent[0], 4);
}

/// A cosignature the hub cannot verify yet (signed with a key rotated offline while the
/// transition entry waits for delivery) is sent again at the next sync; any other refusal
/// is not.
#[tokio::test]
async fn a_cosignature_refused_as_bad_is_sent_again() {
    let mut s = setup(1);
    let l1 = s.leaf(1);
    s.hub.log().leaves = vec![other(1), l1];
    s.receipt(&[(1, 1)]);
    assert_eq!(s.verified().await, 2);
    let refuse = |code: &str| {
        (
            409,
            serde_json::to_vec(&json!({"error": "no", "code": code})).unwrap_or_default(),
        )
    };
    s.hub.log().fail.insert("cosign", refuse("bad_cosignature"));
    assert!(matches!(s.cosign_kept().await, Some(Sent::Refused(..))));
    assert_eq!(s.kept().cosigned_size, None, "to be sent again");
    s.hub.log().fail.clear();
    assert_eq!(s.cosign_kept().await, Some(Sent::Accepted));
    assert_eq!(s.cosigs().len(), 2);
    assert_eq!(s.kept().cosigned_size, Some(2));
    // Another refusal is final for that checkpoint.
    let mut s = setup(1);
    s.hub.log().leaves = vec![l1];
    s.receipt(&[(1, 0)]);
    assert_eq!(s.verified().await, 1);
    s.hub.log().fail.insert("cosign", refuse("unknown_source"));
    assert!(matches!(s.cosign_kept().await, Some(Sent::Refused(..))));
    assert_eq!(s.kept().cosigned_size, Some(1));
    assert_eq!(s.cosign_kept().await, None);
}

#[tokio::test]
async fn an_alarmed_agent_cosigns_nothing() {
    let mut s = setup(2);
    let (l1, l2) = (s.leaf(1), s.leaf(2));
    s.hub.log().leaves = vec![l1, other(1), l2];
    s.receipt(&[(1, 0)]);
    s.receipt(&[(2, 2)]);
    assert_eq!(s.verified().await, 3);
    s.hub.log().leaves.truncate(2);
    assert!(matches!(s.alarmed().await, Finding::Rollback { .. }));
    // The checkpoint kept before the rollback was never cosigned; now it never is.
    assert_eq!(s.cosign_kept().await, None);
    s.hub.log().wanted = vec![1, 2, 3];
    assert!(s.cosign_wanted().await.is_empty());
    // The hub shows the honest tree again and it grows: the audit passes, the alarm
    // stands, and still nothing is cosigned.
    s.hub.log().leaves = vec![l1, other(1), l2, other(2)];
    assert_eq!(s.verified().await, 4);
    assert_eq!(s.cosign_kept().await, None);
    assert!(s.cosign_wanted().await.is_empty());
    assert!(s.cosigs().is_empty());
    assert!(
        !s.seen().iter().any(|r| r.contains("cosign")),
        "no cosignature request was sent"
    );
}

#[tokio::test]
async fn an_earlier_checkpoint_is_cosigned_after_a_consistency_proof() {
    let mut s = setup(1);
    let l1 = s.leaf(1);
    s.hub.log().leaves = vec![other(1), other(2), l1, other(3), other(4), other(5)];
    s.receipt(&[(1, 2)]);
    assert_eq!(s.verified().await, 6);
    s.seen();
    // A bulletin pinned to size 3, one to size 6 (the kept one), one beyond the kept tree.
    s.hub.log().wanted = vec![3, 6, 9];
    assert_eq!(s.cosign_wanted().await, [3, 6]);
    // (Had the kept checkpoint been cosigned already, size 6 would not be sent again: see
    // below.)
    assert_eq!(
        s.seen(),
        [
            "asking which checkpoints the hub wants cosigned",
            "fetching the hub's checkpoint of tree size 3",
            "fetching a consistency proof from tree size 3 to 6",
            "sending this agent's cosignature of the checkpoint",
            "fetching the hub's checkpoint of tree size 6",
            "sending this agent's cosignature of the checkpoint",
        ]
    );
    let sent = s.cosigs();
    check_cosignature(&sent[0], 3);
    check_cosignature(&sent[1], 6);
    // Asked again: each was sent once.
    assert!(s.cosign_wanted().await.is_empty());
    assert!(s.cosigs().is_empty());

    // The kept checkpoint cosigned as the newest is not sent again when a bulletin asks.
    s.hub.log().leaves.push(other(6));
    assert_eq!(s.verified().await, 7);
    assert_eq!(s.cosign_kept().await, Some(Sent::Accepted));
    s.hub.log().wanted = vec![7];
    assert!(s.cosign_wanted().await.is_empty());
    assert_eq!(s.cosigs().len(), 1, "only cosign_kept's line");
}

#[tokio::test]
async fn a_wanted_checkpoint_off_the_verified_tree_is_a_fork() {
    let mut s = setup(1);
    let l1 = s.leaf(1);
    s.hub.log().leaves = vec![other(1), other(2), l1, other(3)];
    s.receipt(&[(1, 2)]);
    assert_eq!(s.verified().await, 4);
    // The hub signs a tree of 2 leaves that is not the prefix of the one verified.
    s.hub.log().forked_prefix = Some(vec![other(7), other(2)]);
    s.hub.log().wanted = vec![2];
    assert!(s.cosign_wanted().await.is_empty());
    s.assert_alarm("fork");
    assert!(s.cosigs().is_empty());
    let ev = s.evidence();
    assert_eq!(ev[0].fetched.lines().nth(1), Some("2"), "{}", ev[0].fetched);
    // And from then on the kept checkpoint is not cosigned either.
    assert_eq!(s.cosign_kept().await, None);
}

/// The pusher's sync cycle (audit, then delivery) against the scripted hub, on a clock the
/// test moves: a hub that answers deliveries but lets no audit finish.
struct Syncs {
    _dir: tempfile::TempDir,
    store: Store,
    hub: Hub,
    clock: Arc<FixedClock>,
    state: SharedPushState,
    pusher: Pusher<Hub>,
}

/// The pusher over `store`, the hub key pinned, with a fresh push state (as a started agent).
fn pusher(store: &Store, hub: &Hub, clock: &Arc<FixedClock>) -> (Pusher<Hub>, SharedPushState) {
    let ident = identity();
    let mut cfg = Config::new(ident.source.clone(), ident.scope, "http://hub.test".into());
    cfg.hub_key = Some(public_key_line(&hub_key().verifying_key()));
    let state: SharedPushState = Arc::default();
    let clock: Arc<dyn Clock> = clock.clone();
    let p = Pusher::with_transport(
        hub.clone(),
        Arc::new(cfg),
        ident,
        store.clone(),
        clock,
        state.clone(),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    );
    (p, state)
}

fn syncs() -> Syncs {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
    let hub = Hub::default();
    let clock = Arc::new(FixedClock::new(clock().now()));
    let (pusher, state) = pusher(&store, &hub, &clock);
    Syncs {
        _dir: dir,
        store,
        hub,
        clock,
        state,
        pusher,
    }
}

impl Syncs {
    /// `minutes` later, one sync cycle with `append` new entries buffered first: whether it
    /// delivered the buffer.
    async fn sync_at(&mut self, minutes: i64, append: usize) -> bool {
        let t0 = clock().now();
        self.clock.set(t0 + TimeDelta::minutes(minutes));
        if append > 0 {
            let act = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;
            let mut w = writer(&self.store, Default::default());
            w.submit(&submission(&vec![act; append].join("\n")), &mut |_| {})
                .unwrap_or_else(|e| panic!("{e}"));
            self.store.flush().unwrap_or_else(|e| panic!("{e}"));
        }
        self.pusher.cycle(false).await.is_ok()
    }

    /// The agent stopped and started again: a new pusher and push state over the store.
    fn restart(&mut self) {
        let (p, state) = pusher(&self.store, &self.hub, &self.clock);
        (self.pusher, self.state) = (p, state);
    }

    fn kept(&self) -> AuditState {
        AuditState::load(&self.store).unwrap_or_else(|e| panic!("{e}"))
    }

    fn log_alarm(&self) -> Option<String> {
        lock(&self.state).log_alarm.clone()
    }

    fn acked(&self) -> u64 {
        self.store.acked().unwrap_or_else(|e| panic!("{e}"))
    }

    fn head(&self) -> u64 {
        self.store.head().unwrap_or_else(|e| panic!("{e}")).0
    }

    fn evidence(&self) -> Vec<Evidence> {
        self.store
            .audit_evidence()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }
}

/// `minutes` after the test clock's start.
fn at(minutes: i64) -> DateTime<Utc> {
    clock().now() + TimeDelta::minutes(minutes)
}

/// A way to refuse audits: its name, how the hub is set to it, what the alarm then quotes.
type Refusal = (&'static str, fn(&mut Log), &'static str);

/// The ways a hub answers deliveries but refuses audits.
fn refusals() -> Vec<Refusal> {
    vec![
        (
            "403 to the checkpoint",
            |l: &mut Log| {
                let body = br#"{"error":"not for you"}"#.to_vec();
                l.fail.insert("checkpoint", (403, body));
            },
            "403",
        ),
        (
            "429 with Retry-After to the checkpoint",
            |l: &mut Log| {
                l.fail.insert("checkpoint", (429, Vec::new()));
                l.retry_after = Some(Duration::from_secs(60));
            },
            "rate limiting",
        ),
        (
            "503 to the consistency proof",
            |l: &mut Log| {
                l.fail.insert("consistency", (503, Vec::new()));
            },
            "503",
        ),
        (
            "garbage for the inclusion proof",
            |l: &mut Log| {
                l.fail.insert("inclusion", (200, b"not json".to_vec()));
            },
            "unreadable",
        ),
        (
            "the checkpoint's connection dropped",
            |l: &mut Log| l.dropped.push("checkpoint"),
            "connection refused",
        ),
    ]
}

/// Issue 16: the hub must not silence the log alarm by refusing audits. A hub that
/// delivers every sync but lets no audit finish, in any of the ways of [`refusals`], raises
/// `audit_refused` once an hour has passed with at least 3 such audits — not before —
/// delivery going on throughout; the alarm then stands like the others (the hub answering
/// again does not clear it, nothing is cosigned) until the operator clears it.
#[tokio::test]
async fn a_hub_refusing_audits_while_it_delivers_raises_audit_refused() {
    for (case, refuse, quoted) in refusals() {
        let mut s = syncs();
        // Two honest syncs: a checkpoint of one leaf is kept (the audit runs before the
        // delivery), so later audits ask for consistency proofs too.
        assert!(s.sync_at(0, 1).await, "{case}");
        assert!(s.sync_at(0, 1).await, "{case}");
        assert_eq!(lock(&s.state).verified_checkpoint_size, Some(1), "{case}");
        refuse(&mut s.hub.log());
        let ingests = s.hub.log().ingests;
        s.hub.log().seen.clear();
        // Refused at +20 (the run starts), +40, +60 (three audits, 40 minutes): no alarm.
        for (i, minutes) in [20, 40, 60].into_iter().enumerate() {
            assert!(s.sync_at(minutes, 1).await, "{case}: delivered");
            assert_eq!(s.log_alarm(), None, "{case} at +{minutes}");
            let kept = s.kept();
            assert_eq!(kept.unfinished_since, Some(at(20)), "{case}");
            assert_eq!(kept.unfinished_audits, i as u32 + 1, "{case}");
        }
        // +80: an hour since the first refusal, four audits.
        assert!(s.sync_at(80, 1).await, "{case}: delivered");
        assert_eq!(
            s.hub.log().ingests,
            ingests + 4,
            "{case}: one delivery a sync"
        );
        assert_eq!(s.acked(), s.head(), "{case}: everything delivered");
        assert_eq!(s.probes(), 0, "{case}: the receipted delivery is the proof");
        let alarm = s
            .log_alarm()
            .unwrap_or_else(|| panic!("{case}: no log alarm"));
        assert!(alarm.starts_with("audit_refused"), "{case}: {alarm}");
        assert!(alarm.contains("4 audits in a row"), "{case}: {alarm}");
        assert!(
            alarm.contains("while it receipted this agent's deliveries in each of those syncs"),
            "{case}: {alarm}"
        );
        assert!(!alarm.contains("signed requests"), "{case}: {alarm}");
        assert!(alarm.contains(quoted), "{case}: {alarm}");
        assert!(alarm.contains("429 or 503"), "{case}: {alarm}");
        assert_eq!(s.kept().alarm.as_deref(), Some(alarm.as_str()), "{case}");
        let ev = s.evidence();
        assert_eq!(ev.len(), 1, "{case}");
        assert_eq!(
            (ev[0].code.as_str(), ev[0].detected.as_str(), ev[0].at),
            ("audit_refused", alarm.as_str(), at(80)),
            "{case}"
        );
        assert_eq!(ev[0].kept, s.kept().checkpoint, "{case}");
        // Still refusing: delivery goes on, the evidence is not repeated.
        assert!(s.sync_at(100, 1).await, "{case}");
        assert_eq!(s.evidence().len(), 1, "{case}");

        // The hub answers again: the audit passes, the alarm stands, nothing is cosigned.
        {
            let mut log = s.hub.log();
            log.fail.clear();
            log.dropped.clear();
            log.cosigs.clear();
        }
        assert!(s.sync_at(120, 1).await, "{case}");
        assert_eq!(lock(&s.state).verified_checkpoint_size, Some(7), "{case}");
        assert_eq!(s.kept().unfinished_since, None, "{case}");
        assert_eq!(s.log_alarm().as_deref(), Some(alarm.as_str()), "{case}");
        assert!(
            s.hub.log().cosigs.is_empty(),
            "{case}: cosigned under the alarm"
        );
        // Restarted, the alarm is still there; the operator clears it.
        s.restart();
        assert_eq!(s.log_alarm().as_deref(), Some(alarm.as_str()), "{case}");
        let cleared = clear_alarm(&s.store, &s.state, "settled", at(121)).await;
        let cleared = cleared.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cleared.as_deref(), Some(alarm.as_str()), "{case}");
        assert_eq!(s.log_alarm(), None, "{case}");
    }
}

/// Time alone is not enough: two refused audits hours apart (one slow restart of the hub,
/// an agent that was off) raise nothing; the third does — in a sync with nothing to
/// deliver only once the hub answers the signed head probe (the 503 to the audit alone
/// proves nothing). The alarm says which syncs delivered and which only probed.
#[tokio::test]
async fn an_hour_needs_three_refused_audits() {
    let mut s = syncs();
    assert!(s.sync_at(0, 1).await);
    s.hub
        .log()
        .fail
        .insert("checkpoint", (503, b"restarting".to_vec()));
    assert!(s.sync_at(10, 1).await);
    assert!(s.sync_at(190, 1).await);
    assert_eq!(s.log_alarm(), None);
    assert_eq!(s.kept().unfinished_audits, 2);
    s.hub
        .log()
        .fail
        .insert("head", (503, b"restarting".to_vec()));
    assert!(s.sync_at(191, 0).await, "nothing to deliver");
    assert_eq!(s.log_alarm(), None, "the hub proved nothing: not counted");
    assert_eq!(s.kept().unfinished_audits, 2);
    assert_eq!(s.kept().unfinished_since, Some(at(10)));
    s.hub.log().fail.remove("head");
    assert!(
        s.sync_at(192, 0).await,
        "nothing to deliver: the 503 counts, the signed probe answered"
    );
    let alarm = s.log_alarm().unwrap_or_else(|| panic!("no log alarm"));
    assert!(alarm.starts_with("audit_refused"), "{alarm}");
    assert!(alarm.contains("3 audits in a row"), "{alarm}");
    assert!(
        alarm.contains(
            "while it receipted this agent's deliveries (2 of those syncs) or, with nothing to deliver, answered this agent's signed requests (1 of them)"
        ),
        "{alarm}"
    );
}

/// The hub down is not lying: audits that fail because the hub is not reached never count,
/// whether there was something to deliver (the delivery fails too) or not (the delivery
/// had nothing to send, so the hub answered nothing that sync).
#[tokio::test]
async fn a_hub_not_reached_raises_no_alarm() {
    let mut s = syncs();
    assert!(s.sync_at(0, 1).await);
    s.hub.log().down = true;
    for minutes in (20..=120).step_by(20) {
        assert!(s.sync_at(minutes, 0).await, "nothing to deliver");
    }
    for minutes in (140..=300).step_by(20) {
        assert!(!s.sync_at(minutes, 1).await, "not delivered");
    }
    assert_eq!(s.log_alarm(), None);
    let kept = s.kept();
    assert_eq!((kept.unfinished_since, kept.unfinished_audits), (None, 0));
    assert!(s.evidence().is_empty());
    // Back up: everything is delivered and audited; still no alarm.
    s.hub.log().down = false;
    assert!(s.sync_at(320, 0).await);
    assert_eq!(s.acked(), s.head());
    assert_eq!(lock(&s.state).verified_checkpoint_size, Some(1));
    assert_eq!(s.log_alarm(), None);
}

impl Syncs {
    /// Signed head probes asked since the last call.
    fn probes(&self) -> usize {
        let mut log = self.hub.log();
        let n = log
            .seen
            .iter()
            .filter(|w| *w == "asking the hub for its head")
            .count();
        log.seen.clear();
        n
    }
}

/// A way a hub breaks: its name, and how the hub is set to it.
type Broken = (&'static str, fn(&mut Log));

/// The ways a hub proves nothing, for an agent with nothing to deliver: the signed head
/// probe fails as the audit's requests do.
fn proves_nothing() -> Vec<Broken> {
    vec![
        // Review of session 10 (#1): the hub up, its PostgreSQL down.
        ("its database down (503 to everything)", |l: &mut Log| {
            for kind in ["checkpoint", "consistency", "inclusion", "head"] {
                let down = br#"{"error":"the hub could not complete the request; retry later (details are in the hub's log)"}"#;
                l.fail.insert(kind, (503, down.to_vec()));
            }
        }),
        (
            "a reverse proxy in front of a stopped hub (502)",
            |l: &mut Log| {
                for kind in ["checkpoint", "consistency", "inclusion", "head"] {
                    l.fail
                        .insert(kind, (502, b"<html>Bad Gateway</html>".to_vec()));
                }
            },
        ),
        ("a proxy's page answered 200 to the probe", |l: &mut Log| {
            l.fail.insert("checkpoint", (502, Vec::new()));
            l.fail
                .insert("head", (200, b"<html>maintenance</html>".to_vec()));
        }),
        (
            "the audit refused, the probe's connection dropped",
            |l: &mut Log| {
                l.fail
                    .insert("checkpoint", (403, b"{\"error\":\"no\"}".to_vec()));
                l.dropped.push("head");
            },
        ),
    ]
}

/// Review of session 10 (#1): with nothing to deliver a sync sends no ingest request, so
/// the audit's own answered error must not count — a hub whose database is down (or a
/// proxy answering for a stopped hub) is broken, not lying. Each sync probes the hub with
/// a signed request; when that fails too, nothing is counted: five hours, no alarm, and the
/// audit passes once the hub works again.
#[tokio::test]
async fn an_idle_agent_whose_hub_proves_nothing_raises_no_alarm() {
    for (case, broken) in proves_nothing() {
        let mut s = syncs();
        assert!(s.sync_at(0, 1).await, "{case}");
        assert!(s.sync_at(1, 0).await, "{case}");
        assert_eq!(lock(&s.state).verified_checkpoint_size, Some(1), "{case}");
        broken(&mut s.hub.log());
        s.probes();
        for minutes in (2..=300).step_by(2) {
            assert!(s.sync_at(minutes, 0).await, "{case}: nothing to deliver");
        }
        assert_eq!(s.log_alarm(), None, "{case}");
        assert_eq!(s.probes(), 150, "{case}: one probe a sync");
        let kept = s.kept();
        assert_eq!(
            (kept.unfinished_since, kept.unfinished_audits),
            (None, 0),
            "{case}"
        );
        assert!(s.evidence().is_empty(), "{case}");
        // The hub works again: the audit passes, and there was no run to end.
        {
            let mut log = s.hub.log();
            log.fail.clear();
            log.dropped.clear();
        }
        assert!(s.sync_at(302, 0).await, "{case}");
        assert_eq!(lock(&s.state).verified_checkpoint_size, Some(1), "{case}");
        assert_eq!(s.log_alarm(), None, "{case}");
    }
}

/// Review of session 10 (#2): a lying hub drops the audit's connections while the agent
/// has nothing to deliver, and answers everything else. The signed probe it answers proves
/// it works: the dropped audits count, and after an hour (5 audits) `audit_refused` is
/// raised — worded for what happened, never claiming deliveries. The last batch was never
/// proven (the kept checkpoint stays at the tree before it).
#[tokio::test]
async fn an_idle_agent_whose_hub_drops_only_the_audits_raises_audit_refused() {
    let mut s = syncs();
    assert!(s.sync_at(0, 1).await);
    assert!(s.sync_at(1, 1).await, "the last batch delivered");
    s.hub.log().dropped.push("checkpoint");
    let ingests = s.hub.log().ingests;
    for (i, minutes) in [10, 30, 50, 69].into_iter().enumerate() {
        assert!(s.sync_at(minutes, 0).await, "nothing to deliver");
        assert_eq!(s.log_alarm(), None, "+{minutes}");
        let kept = s.kept();
        assert_eq!(kept.unfinished_since, Some(at(10)));
        assert_eq!(kept.unfinished_audits, i as u32 + 1);
        assert_eq!(kept.unfinished_receipted, Some(0));
    }
    assert!(s.sync_at(70, 0).await);
    assert_eq!(s.hub.log().ingests, ingests, "nothing was delivered");
    let alarm = s.log_alarm().unwrap_or_else(|| panic!("no log alarm"));
    assert!(alarm.starts_with("audit_refused"), "{alarm}");
    assert!(alarm.contains("5 audits in a row"), "{alarm}");
    assert!(
        alarm.contains(
            "while it answered this agent's signed requests in each of those syncs (there was nothing to deliver)"
        ),
        "{alarm}"
    );
    assert!(!alarm.contains("deliveries"), "{alarm}");
    assert!(!alarm.contains("receipted"), "{alarm}");
    assert!(alarm.contains("connection refused"), "{alarm}");
    assert_eq!(lock(&s.state).verified_checkpoint_size, Some(1));
    assert_eq!(s.acked(), 2);
    let ev = s.evidence();
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].code.as_str(), ev[0].at), ("audit_refused", at(70)));
}

/// Every way of refusing audits ([`refusals`]) counts for an agent with nothing to deliver
/// too, once the hub answers its signed probe: `audit_refused` after an hour and 3 audits,
/// not before, one probe a sync.
#[tokio::test]
async fn an_idle_agent_whose_hub_answers_signed_requests_but_refuses_audits_raises_audit_refused() {
    for (case, refuse, quoted) in refusals() {
        let mut s = syncs();
        assert!(s.sync_at(0, 1).await, "{case}");
        assert!(s.sync_at(0, 1).await, "{case}");
        refuse(&mut s.hub.log());
        s.probes();
        for minutes in [20, 40, 60] {
            assert!(s.sync_at(minutes, 0).await, "{case}: nothing to deliver");
            assert_eq!(s.log_alarm(), None, "{case} at +{minutes}");
            assert_eq!(s.kept().unfinished_since, Some(at(20)), "{case}");
        }
        assert!(s.sync_at(80, 0).await, "{case}");
        let alarm = s
            .log_alarm()
            .unwrap_or_else(|| panic!("{case}: no log alarm"));
        assert!(alarm.starts_with("audit_refused"), "{case}: {alarm}");
        assert!(alarm.contains("4 audits in a row"), "{case}: {alarm}");
        assert!(alarm.contains(quoted), "{case}: {alarm}");
        assert!(
            alarm.contains("answered this agent's signed requests in each of those syncs"),
            "{case}: {alarm}"
        );
        assert!(!alarm.contains("deliveries"), "{case}: {alarm}");
        assert_eq!(s.probes(), 4, "{case}: one probe a sync");
    }
}

/// An idle agent, audits refused `403` with the hub's own text, the probe answered: the
/// alarm is raised, and what the hub wrote appears only as the hub's words — quoted,
/// escaped (its quote and line break cannot end the quotation or start a line of the
/// agent's), cut to its first characters.
#[tokio::test]
async fn an_idle_agent_whose_hub_refuses_audits_403_quotes_the_hubs_words_as_its_own() {
    let mut s = syncs();
    assert!(s.sync_at(0, 1).await);
    let words = format!(
        "all is well\"; this is not a refusal.\nIgnore this alarm: run clear-alarm{}",
        " and carry on".repeat(20)
    );
    let body = serde_json::to_vec(&json!({ "error": words })).unwrap_or_default();
    s.hub.log().fail.insert("checkpoint", (403, body));
    for minutes in [10, 40, 70] {
        assert!(s.sync_at(minutes, 0).await, "nothing to deliver");
    }
    let alarm = s.log_alarm().unwrap_or_else(|| panic!("no log alarm"));
    assert!(alarm.starts_with("audit_refused"), "{alarm}");
    assert!(
        alarm.contains(
            "the hub refused (403 Forbidden, forbidden), the hub said: \"all is well\\\"; this is not a refusal.\\nIgnore this alarm: run clear-alarm and carry on"
        ),
        "{alarm}"
    );
    assert!(alarm.contains("(its first 120 characters)"), "{alarm}");
    assert!(!alarm.contains('\n'), "{alarm}");
    assert!(!alarm.contains("deliveries"), "{alarm}");
}

/// A finished audit ends the run: 59 minutes of refusals, one verified audit, then
/// refusals again — counted from the new start, so no alarm although the refusals span two
/// hours.
#[tokio::test]
async fn a_verified_audit_starts_the_count_again() {
    let mut s = syncs();
    let refuse = |s: &Syncs, on: bool| {
        let mut log = s.hub.log();
        log.fail.clear();
        if on {
            log.fail.insert("checkpoint", (403, b"no".to_vec()));
        }
    };
    refuse(&s, true);
    for minutes in [0, 20, 40, 59] {
        assert!(s.sync_at(minutes, 1).await);
    }
    assert_eq!(s.kept().unfinished_since, Some(at(0)));
    assert_eq!(s.kept().unfinished_audits, 4);
    refuse(&s, false);
    assert!(s.sync_at(60, 1).await);
    assert_eq!(lock(&s.state).verified_checkpoint_size, Some(4));
    let kept = s.kept();
    assert_eq!((kept.unfinished_since, kept.unfinished_audits), (None, 0));
    refuse(&s, true);
    for minutes in [61, 80, 100, 120] {
        assert!(s.sync_at(minutes, 1).await);
    }
    assert_eq!(s.log_alarm(), None);
    assert_eq!(s.kept().unfinished_since, Some(at(61)));
    assert!(s.evidence().is_empty());
}

/// The run is stored: a hub that makes the agent restart (or an operator restarting it)
/// does not start the count again.
#[tokio::test]
async fn a_restart_keeps_counting_from_the_stored_start() {
    let mut s = syncs();
    assert!(s.sync_at(0, 1).await);
    s.hub.log().dropped.push("checkpoint");
    for minutes in [10, 30, 50] {
        assert!(s.sync_at(minutes, 1).await);
    }
    s.restart();
    assert_eq!(s.log_alarm(), None);
    assert_eq!(s.kept().unfinished_since, Some(at(10)));
    assert_eq!(s.kept().unfinished_audits, 3);
    assert!(s.sync_at(70, 1).await);
    let alarm = s.log_alarm().unwrap_or_else(|| panic!("no log alarm"));
    assert!(alarm.starts_with("audit_refused"), "{alarm}");
    assert!(alarm.contains("2018-11-25T02:10:00Z"), "{alarm}");
    // And the alarm itself survives a restart.
    s.restart();
    assert_eq!(s.log_alarm().as_deref(), Some(alarm.as_str()));
}

impl Syncs {
    fn reports(&self) -> Vec<LogAlarmReport> {
        self.hub.log().alarm_reports.clone()
    }
}

/// Issue 16: the hub shows each province's log alarm. The alarm is reported once when it
/// is raised (not once a sync, though the hub keeps failing the audit), again only when
/// the hub did not take it (a 500: next sync), not again after a restart once taken; its
/// clearing by the operator is reported once too. Delivery goes on throughout.
#[tokio::test]
async fn the_log_alarm_is_reported_to_the_hub_once_and_its_clearing_too() {
    let mut s = syncs();
    assert!(s.sync_at(0, 1).await);
    assert!(s.sync_at(0, 1).await);
    assert!(s.reports().is_empty(), "no alarm, nothing reported");

    // The hub signs with another key: the alarm is raised, the hub fails the report.
    {
        let mut log = s.hub.log();
        log.wrong_key = Some(SigningKey::from_bytes(&[11; 32]));
        log.fail.insert("log_alarm", (500, b"busy".to_vec()));
    }
    assert!(
        s.sync_at(10, 1).await,
        "delivered despite the failed report"
    );
    let alarm = s.log_alarm().unwrap_or_else(|| panic!("no log alarm"));
    assert!(alarm.starts_with("bad_checkpoint_signature"), "{alarm}");
    assert_eq!(s.reports().len(), 1);
    assert_eq!(s.kept().reported_alarm, None, "a 500 is not remembered");

    // Next sync: sent again, taken.
    s.hub.log().fail.remove("log_alarm");
    assert!(s.sync_at(20, 1).await);
    let reports = s.reports();
    assert_eq!(reports.len(), 2);
    assert_eq!(
        reports[1],
        LogAlarmReport {
            code: "bad_checkpoint_signature".into(),
            detected: alarm.clone(),
            at: at(20),
            cleared: false,
        }
    );
    assert_eq!(s.kept().reported_alarm.as_deref(), Some(alarm.as_str()));

    // The audit keeps failing, the hub comes right, the agent restarts: not sent again.
    assert!(s.sync_at(30, 1).await);
    s.hub.log().wrong_key = None;
    assert!(s.sync_at(40, 1).await);
    s.restart();
    assert!(s.sync_at(50, 0).await);
    assert_eq!(
        s.reports().len(),
        2,
        "one report per alarm, not one per sync"
    );
    assert_eq!(s.log_alarm().as_deref(), Some(alarm.as_str()));

    // The operator clears it: the next sync says so, once.
    let cleared = clear_alarm(&s.store, &s.state, "settled", at(55)).await;
    assert!(cleared.unwrap_or_else(|e| panic!("{e}")).is_some());
    assert!(s.sync_at(60, 1).await);
    assert!(s.sync_at(70, 1).await);
    assert_eq!(s.log_alarm(), None);
    let reports = s.reports();
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert_eq!(
        reports[2],
        LogAlarmReport {
            code: "bad_checkpoint_signature".into(),
            detected: alarm.clone(),
            at: at(60),
            cleared: true,
        }
    );
    assert_eq!(s.kept().reported_alarm, None);
    assert_eq!(s.acked(), s.head(), "everything delivered");
}

/// A hub older than the report (404) is asked once while the agent runs, not every sync;
/// after a restart it is asked again (it may have been upgraded).
#[tokio::test]
async fn a_hub_without_alarm_reports_is_not_asked_every_sync() {
    let mut s = syncs();
    assert!(s.sync_at(0, 1).await);
    {
        let mut log = s.hub.log();
        log.wrong_key = Some(SigningKey::from_bytes(&[11; 32]));
        log.fail
            .insert("log_alarm", (404, b"{\"error\":\"no route\"}".to_vec()));
    }
    for minutes in [10, 20, 30] {
        assert!(s.sync_at(minutes, 1).await, "delivered");
    }
    assert!(s.log_alarm().is_some());
    assert_eq!(s.reports().len(), 1);
    assert_eq!(s.kept().reported_alarm, None);
    s.hub.log().fail.remove("log_alarm");
    s.restart();
    assert!(s.sync_at(40, 0).await);
    assert_eq!(s.reports().len(), 2);
    assert_eq!(s.kept().reported_alarm, s.log_alarm());
}
