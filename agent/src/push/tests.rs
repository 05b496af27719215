//! The delivery state machine driven by scripted hub answers: no processes, no sockets.
//! Each test writes entries to a real store, scripts what the hub answers to each request
//! in turn, and checks what was asked, what came of it, and what the store now holds.
//! The log audit's requests are answered 404 here (see `audit_tests` for the audit).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use spacesync_shared::Envelope;
use spacesync_shared::keys::public_key_line;
use spacesync_shared::wire::{
    BatchReceipt, IngestResponse, Receipt, ReceiptItem, Refusal, RefusalCode, SourceHead,
};
use tokio::sync::{Notify, watch};

use super::Pusher;
use super::classify::{Link, PushError};
use super::delivery::Delivery;
use super::state::{PushState, SharedPushState, lock};
use super::transport::{Answer, Request, Transport, Unreached};
use crate::config::Config;
use crate::intake::tests::{clock, identity, json, writer};
use crate::store::Store;

/// What the scripted hub answers to one request.
type Step = Box<dyn FnOnce(&Request) -> Result<Answer, Unreached> + Send>;

/// A hub that answers from a script, in order, and remembers what it was asked. Notice
/// requests not scripted are answered 404 (a hub without notices), so the pusher's loop can
/// run freely.
#[derive(Clone, Default)]
struct Scripted {
    steps: Arc<Mutex<VecDeque<Step>>>,
    /// Each request as `what`, with the (paused) tokio instant it came at.
    seen: Arc<Mutex<Vec<(String, tokio::time::Instant)>>>,
}

impl Scripted {
    fn then(&self, step: impl FnOnce(&Request) -> Result<Answer, Unreached> + Send + 'static) {
        self.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Box::new(step));
    }

    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(w, _)| w.clone())
            .collect()
    }

    fn left(&self) -> usize {
        self.steps.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Transport for Scripted {
    async fn send(&mut self, req: &Request) -> Result<Answer, Unreached> {
        // The log audit's requests are `audit_tests`'s: here a hub without the log
        // endpoints (an audit error, which never changes delivery).
        if matches!(
            req,
            Request::Checkpoint | Request::Consistency { .. } | Request::Inclusion { .. }
        ) {
            return Ok(answer(404, None, b"{\"error\":\"no log here\"}".to_vec()));
        }
        let step = {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((req.what(), tokio::time::Instant::now()));
            let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
            match req {
                Request::Notices { .. } if steps.is_empty() => None,
                _ => Some(
                    steps
                        .pop_front()
                        .unwrap_or_else(|| panic!("unscripted request: {}", req.what())),
                ),
            }
        };
        match step {
            Some(step) => step(req),
            None => Ok(answer(
                404,
                None,
                b"{\"error\":\"no notices here\"}".to_vec(),
            )),
        }
    }
}

fn answer(status: u16, retry_after: Option<u64>, body: Vec<u8>) -> Answer {
    Answer {
        status,
        retry_after: retry_after.map(Duration::from_secs),
        body,
    }
}

/// The hub's signing key, and another one.
fn hub_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}
fn wrong_key() -> SigningKey {
    SigningKey::from_bytes(&[10; 32])
}

/// Receipts signed by `key` for the entries of an ingest request, through seq `upto`.
fn receipts(req: &Request, upto: u64, key: &SigningKey) -> Vec<Envelope> {
    let Request::Ingest { first, batch, .. } = req else {
        panic!("expected an ingest request, got {}", req.what());
    };
    batch
        .entries
        .iter()
        .zip(*first..)
        .filter(|(_, seq)| *seq <= upto)
        .map(|(env, seq)| {
            Receipt {
                source: batch.source.clone(),
                seq,
                entry_hash: env.payload_hash(),
                log_index: seq,
                received_at: chrono::DateTime::UNIX_EPOCH,
            }
            .sign(key)
        })
        .collect()
}

fn ingest_answer(status: u16, r: &IngestResponse) -> Answer {
    answer(status, None, serde_json::to_vec(r).unwrap_or_default())
}

/// 200 with receipts through `upto` (the hub holds through `upto`).
fn receipted_through(upto: u64) -> impl FnOnce(&Request) -> Result<Answer, Unreached> + Send {
    move |req| {
        let r = IngestResponse {
            held_through: upto,
            receipts: receipts(req, upto, &hub_key()),
            ..Default::default()
        };
        Ok(ingest_answer(200, &r))
    }
}

/// One batch receipt signed by `key` for the seqs of an ingest request that `covers`, each
/// entry's part changed by `alter` (before signing).
fn batch_receipt(
    req: &Request,
    key: &SigningKey,
    covers: impl Fn(u64) -> bool,
    alter: impl Fn(&mut ReceiptItem),
) -> Envelope {
    let entries = receipts(req, u64::MAX, key)
        .iter()
        .filter_map(|env| Receipt::open(env, &key.verifying_key()).ok())
        .filter(|r| covers(r.seq))
        .map(|r| {
            let mut item = ReceiptItem {
                seq: r.seq,
                entry_hash: r.entry_hash,
                log_index: r.log_index,
                received_at: r.received_at,
            };
            alter(&mut item);
            item
        })
        .collect();
    let Request::Ingest { batch, .. } = req else {
        panic!("expected an ingest request, got {}", req.what());
    };
    BatchReceipt {
        source: batch.source.clone(),
        entries,
    }
    .sign(key)
}

/// 200, the hub holding the whole batch, with `receipt` as its batch receipt.
fn batch_receipted(
    receipt: impl FnOnce(&Request) -> Envelope + Send + 'static,
) -> impl FnOnce(&Request) -> Result<Answer, Unreached> + Send {
    move |req| {
        let Request::Ingest { last, .. } = req else {
            panic!("expected an ingest request, got {}", req.what());
        };
        let r = IngestResponse {
            held_through: *last,
            batch_receipt: Some(receipt(req)),
            ..Default::default()
        };
        Ok(ingest_answer(200, &r))
    }
}

/// 200 with receipts for the whole batch.
fn receipted() -> impl FnOnce(&Request) -> Result<Answer, Unreached> + Send {
    |req| {
        let Request::Ingest { last, .. } = req else {
            panic!("expected an ingest request, got {}", req.what());
        };
        receipted_through(*last)(req)
    }
}

/// A setup: a store with entries, a delivery, and the scripted hub behind a link.
struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    cfg: Arc<Config>,
    state: SharedPushState,
    hub: Scripted,
    delivery: Delivery,
    link: Link<Scripted>,
}

fn rig(entries: usize, pin: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
    let r = rig_on(dir, store, pin);
    r.append(entries);
    r
}

/// A rig over an existing store (`dir` is kept as long as the rig).
fn rig_on(dir: tempfile::TempDir, store: Store, pin: bool) -> Rig {
    let ident = identity();
    let mut cfg = Config::new(ident.source.clone(), ident.scope, "http://hub.test".into());
    if pin {
        cfg.hub_key = Some(public_key_line(&hub_key().verifying_key()));
    }
    cfg.push.max_entries = 100;
    let cfg = Arc::new(cfg);
    let state: SharedPushState = Arc::default();
    let hub = Scripted::default();
    let link = Link::new(hub.clone(), state.clone(), clock(), ident.clone());
    let delivery = Delivery::new(cfg.clone(), ident, store.clone(), state.clone());
    Rig {
        _dir: dir,
        store,
        cfg,
        state,
        hub,
        delivery,
        link,
    }
}

impl Rig {
    /// Appends `n` entries and flushes them, as intake does before it answers.
    fn append(&self, n: usize) {
        self.append_unflushed(n);
        self.store.flush().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Appends `n` entries that no flush has covered yet.
    fn append_unflushed(&self, n: usize) {
        let act = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;
        let mut w = writer(&self.store, Default::default());
        for _ in 0..n {
            w.submit(&json(act), &mut |_| {})
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// The hub's answer to `GET /v1/agent/head` when it holds through `held` (of this
    /// agent's chain).
    fn head(&self, held: u64) -> impl FnOnce(&Request) -> Result<Answer, Unreached> + Send + use<> {
        let head = match held {
            0 => spacesync_shared::Digest::ZERO,
            s => self
                .store
                .entry(s)
                .ok()
                .flatten()
                .map(|e| e.payload_hash())
                .unwrap_or(spacesync_shared::Digest::ZERO),
        };
        let source = self.cfg.source.clone();
        move |req| {
            assert_eq!(*req, Request::Head, "expected a head request");
            let sh = SourceHead {
                source,
                held_through: held,
                head,
            };
            Ok(answer(
                200,
                None,
                serde_json::to_vec(&sh).unwrap_or_default(),
            ))
        }
    }

    async fn deliver(&mut self) -> Result<(), PushError> {
        self.delivery.deliver(&mut self.link).await
    }

    fn acked(&self) -> u64 {
        self.store.acked().unwrap_or_else(|e| panic!("{e}"))
    }

    fn state(&self) -> PushState {
        lock(&self.state).clone()
    }
}

/// A transient error's parts, or a panic naming what came instead.
fn transient(r: Result<(), PushError>) -> (String, Option<Duration>, bool) {
    match r {
        Err(PushError::Transient {
            error,
            retry_after,
            doubt,
        }) => (error, retry_after, doubt),
        other => panic!("expected a transient fault, got {other:?}"),
    }
}

/// An alarm's code and reason, or a panic naming what came instead.
fn alarm(r: Result<(), PushError>) -> (String, String) {
    match r {
        Err(PushError::Alarm { code, reason }) => (code, reason),
        other => panic!("expected an alarm, got {other:?}"),
    }
}

#[tokio::test]
async fn a_200_with_receipts_delivers_the_batch() {
    let mut r = rig(5, true);
    r.hub.then(r.head(0));
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        r.hub.seen(),
        ["asking the hub for its head", "pushing seqs 1–5"]
    );
    assert_eq!(r.acked(), 5);
    let s = r.state();
    assert_eq!((s.pushes, s.receipts, s.hub_held_through), (1, 5, Some(5)));
    assert_eq!(s.hub_reachable, Some(true));
    // Nothing left: the next delivery asks nothing.
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.hub.seen().len(), 2);
}

#[tokio::test]
async fn entries_not_yet_flushed_never_leave_the_agent() {
    let mut r = rig(2, true);
    // Three more appended, as intake's writer does before its committer's flush
    // completes: a power cut could still take them back, and a hub holding them would
    // then see this agent reuse their seqs.
    r.append_unflushed(3);
    assert_eq!(r.store.head().unwrap_or_else(|e| panic!("{e}")).0, 5);
    assert_eq!(r.store.durable_head(), 2);
    r.hub.then(r.head(0));
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        r.hub.seen(),
        ["asking the hub for its head", "pushing seqs 1–2"]
    );
    assert_eq!(r.acked(), 2);
    // Nothing more goes until a flush covers them.
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.hub.seen().len(), 2);
    r.store
        .flush_async()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.store.durable_head(), 5);
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.hub.seen()[2..], ["pushing seqs 3–5"]);
    assert_eq!(r.acked(), 5);
}

#[tokio::test]
async fn a_200_with_fewer_receipts_than_sent_is_retried_from_the_hubs_head() {
    let mut r = rig(5, true);
    r.hub.then(r.head(0));
    r.hub.then(receipted_through(3));
    let (error, _, doubt) = transient(r.deliver().await);
    assert!(error.contains("receipts only through seq 3"), "{error}");
    assert!(doubt, "the hub may hold more than it receipted");
    assert_eq!(r.acked(), 3, "what was receipted counts");
    // The pusher marks the doubt; the next cycle asks the hub first.
    r.delivery.doubt();
    r.hub.then(r.head(3));
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        r.hub.seen()[2..],
        ["asking the hub for its head", "pushing seqs 4–5"]
    );
    assert_eq!(r.acked(), 5);
}

#[tokio::test]
async fn a_409_gap_with_the_hubs_seq_below_ours_resends_from_there() {
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.acked(), 3);
    // The hub lost what it had receipted after seq 1 (restored from a backup): it holds
    // seq 1 only and asks for seq 2 on.
    r.append(3);
    r.hub.then(|_| {
        let refusal = Refusal {
            seq: Some(4),
            code: RefusalCode::Gap,
            reason: "seq 4 follows nothing held; resend from 2".into(),
        };
        Ok(ingest_answer(
            409,
            &IngestResponse {
                held_through: 1,
                refused: vec![refusal],
                resend_from: Some(2),
                ..Default::default()
            },
        ))
    });
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        r.hub.seen()[2..],
        ["pushing seqs 4–6", "pushing seqs 2–6"],
        "resent from the hub's seq, receipted entries included"
    );
    assert_eq!(r.acked(), 6);
    assert_eq!(r.delivery.cursor().resend_from, None);
    assert_eq!(r.state().receipts, 3 + 5);
}

#[tokio::test]
async fn a_409_with_the_hubs_seq_above_ours_stops_with_a_fork_alarm() {
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    // The hub holds through seq 7 of this source: more than this agent ever wrote.
    r.hub.then(|_| {
        let refusal = Refusal {
            seq: Some(1),
            code: RefusalCode::Gap,
            reason: "held through 7".into(),
        };
        Ok(ingest_answer(
            409,
            &IngestResponse {
                held_through: 7,
                refused: vec![refusal],
                resend_from: Some(8),
                ..Default::default()
            },
        ))
    });
    let (error, _, doubt) = transient(r.deliver().await);
    assert!(error.contains("asks for seq 8"), "{error}");
    assert!(doubt, "resending cannot help: ask the hub where it stands");
    r.delivery.doubt();
    r.hub.then(r.head(7));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "fork");
    assert!(
        reason.contains("holds seq 7") && reason.contains("ends at seq 3"),
        "{reason}"
    );
    assert_eq!(r.acked(), 0, "nothing counts as delivered");
    assert_eq!(r.hub.left(), 0);
}

#[tokio::test]
async fn a_422_permanent_refusal_raises_an_alarm_and_keeps_what_was_receipted() {
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(|req| {
        let refusal = Refusal {
            seq: Some(2),
            code: RefusalCode::OutOfScope,
            reason: "region 110000 is outside scope 440000".into(),
        };
        Ok(ingest_answer(
            422,
            &IngestResponse {
                held_through: 1,
                receipts: receipts(req, 1, &hub_key()),
                refused: vec![refusal],
                ..Default::default()
            },
        ))
    });
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "out_of_scope");
    assert!(
        reason.contains("refused seq 2") && reason.contains("outside scope"),
        "{reason}"
    );
    assert_eq!(r.acked(), 1);
}

#[tokio::test]
async fn a_429_and_a_503_are_retried_with_their_retry_after() {
    let mut r = rig(2, true);
    r.hub.then(r.head(0));
    r.hub
        .then(|_| Ok(answer(429, Some(7), b"{\"error\":\"slow down\"}".to_vec())));
    let (error, retry_after, doubt) = transient(r.deliver().await);
    assert!(error.contains("rate limiting"), "{error}");
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert!(!doubt, "a 429 did nothing");
    r.hub
        .then(|_| Ok(answer(503, Some(30), b"{\"error\":\"busy\"}".to_vec())));
    let (error, retry_after, doubt) = transient(r.deliver().await);
    assert!(error.contains("503"), "{error}");
    assert_eq!(retry_after, Some(Duration::from_secs(30)));
    assert!(doubt, "a 5xx may come after the work was done");
    assert_eq!(r.acked(), 0);
}

#[tokio::test]
async fn a_connection_reset_is_retried_after_asking_the_head() {
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(|_| {
        Err(Unreached {
            error: "cannot reach the hub at http://hub.test: connection reset by peer".into(),
            doubt: true,
        })
    });
    let (error, _, doubt) = transient(r.deliver().await);
    assert!(
        error.starts_with("pushing seqs 1–3: cannot reach"),
        "{error}"
    );
    assert!(doubt);
    assert_eq!(r.state().hub_reachable, Some(false));
    // The hub had taken the batch before the connection broke: it re-sends the receipts.
    r.delivery.doubt();
    r.hub.then(r.head(3));
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        r.hub.seen(),
        [
            "asking the hub for its head",
            "pushing seqs 1–3",
            "asking the hub for its head",
            "pushing seqs 1–3"
        ]
    );
    assert_eq!(r.acked(), 3);
    assert_eq!(r.state().hub_reachable, Some(true));
}

#[tokio::test]
async fn a_receipt_that_does_not_verify_raises_an_alarm_and_counts_nothing() {
    let mut r = rig(2, true);
    r.hub.then(r.head(0));
    r.hub.then(|req| {
        let r = IngestResponse {
            held_through: 2,
            receipts: receipts(req, 2, &wrong_key()),
            ..Default::default()
        };
        Ok(ingest_answer(200, &r))
    });
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "bad_receipt");
    assert!(reason.contains("does not verify"), "{reason}");
    assert_eq!(r.acked(), 0);
    assert_eq!(r.state().receipts, 0);
}

impl Rig {
    /// What `spacesync-agent verify` finds, with the hub key.
    fn verify(&self) -> Vec<String> {
        crate::verify::verify(&self.store, &identity(), Some(&hub_key().verifying_key()))
            .unwrap_or_else(|e| panic!("{e}"))
            .problems
    }
}

#[tokio::test]
async fn a_batch_receipt_delivers_the_batch_and_is_stored_once() {
    let mut r = rig(5, true);
    r.hub.then(r.head(0));
    r.hub.then(batch_receipted(|req| {
        batch_receipt(req, &hub_key(), |_| true, |_| {})
    }));
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.acked(), 5);
    assert_eq!(r.state().receipts, 5, "the status counts receipted entries");
    assert_eq!(r.store.batch_receipt_count(), 1);
    for seq in 1..=5 {
        assert!(r.store.has_receipt(seq).unwrap_or(false), "seq {seq}");
    }
    assert_eq!(r.verify(), Vec::<String>::new());
}

#[tokio::test]
async fn a_batch_receipt_by_another_key_raises_an_alarm_and_counts_nothing() {
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(batch_receipted(|req| {
        batch_receipt(req, &wrong_key(), |_| true, |_| {})
    }));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "bad_receipt");
    assert!(reason.contains("does not verify"), "{reason}");
    assert_eq!((r.acked(), r.state().receipts), (0, 0));
    assert_eq!(r.store.batch_receipt_count(), 0);
    assert!(!r.store.has_receipt(1).unwrap_or(true));
}

#[tokio::test]
async fn an_altered_batch_receipt_is_refused_and_counts_nothing() {
    // An entry hash changed after the hub signed: the signature no longer verifies.
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(batch_receipted(|req| {
        let mut env = batch_receipt(req, &hub_key(), |_| true, |_| {});
        let mut b: BatchReceipt = serde_json::from_slice(&env.payload).unwrap_or_else(|e| {
            panic!("{e}");
        });
        b.entries[1].entry_hash = spacesync_shared::Digest::of(b"another entry");
        env.payload = serde_json::to_vec(&b).unwrap_or_default();
        env
    }));
    let (code, _) = alarm(r.deliver().await);
    assert_eq!(code, "bad_receipt");
    assert_eq!((r.acked(), r.state().receipts), (0, 0));

    // Signed by the hub with another entry's hash for seq 2: a fork, and nothing counts,
    // not even seq 1 before it.
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(batch_receipted(|req| {
        batch_receipt(
            req,
            &hub_key(),
            |_| true,
            |i| {
                if i.seq == 2 {
                    i.entry_hash = spacesync_shared::Digest::of(b"another entry");
                }
            },
        )
    }));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "fork");
    assert!(reason.contains("seq 2"), "{reason}");
    assert_eq!((r.acked(), r.state().receipts), (0, 0));
    assert_eq!(r.store.batch_receipt_count(), 0);
}

#[tokio::test]
async fn a_seq_the_batch_receipt_leaves_out_is_not_delivered() {
    let mut r = rig(5, true);
    r.hub.then(r.head(0));
    r.hub.then(batch_receipted(|req| {
        batch_receipt(req, &hub_key(), |s| s != 3, |_| {})
    }));
    let (error, _, doubt) = transient(r.deliver().await);
    assert!(error.contains("receipts only through seq 2"), "{error}");
    assert!(doubt);
    assert_eq!(r.acked(), 2, "delivery stops at the seq left out");
    assert!(!r.store.has_receipt(3).unwrap_or(true));
    assert!(r.store.has_receipt(4).unwrap_or(false));
    // Asked again, the hub receipts the rest; every receipt verifies per entry.
    r.delivery.doubt();
    r.hub.then(r.head(5));
    r.hub.then(batch_receipted(|req| {
        batch_receipt(req, &hub_key(), |_| true, |_| {})
    }));
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        r.hub.seen()[2..],
        ["asking the hub for its head", "pushing seqs 3–5"]
    );
    assert_eq!(r.acked(), 5);
    assert_eq!(r.verify(), Vec::<String>::new());
}

#[tokio::test]
async fn receipts_of_both_forms_verify_and_pruning_keeps_every_receipt() {
    // Seqs 1–3 receipted one by one (as by an older agent or hub), 4–8 by one batch
    // receipt, which covers both pruned and kept entries.
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    r.append(5);
    r.hub.then(batch_receipted(|req| {
        batch_receipt(req, &hub_key(), |_| true, |_| {})
    }));
    assert!(r.deliver().await.is_ok());
    assert_eq!((r.acked(), r.state().receipts), (8, 8));
    assert_eq!(r.verify(), Vec::<String>::new());
    // Every receipt is from 1970; pruning takes every entry but the head.
    let cutoff = chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(1);
    assert_eq!(r.store.prune(cutoff, 5).ok(), Some(5));
    assert_eq!(r.store.prune(cutoff, 100).ok(), Some(2));
    assert_eq!(r.store.entry_count(), 1);
    assert_eq!(
        r.store.batch_receipt_count(),
        1,
        "the kept head still needs it"
    );
    for seq in 1..=8 {
        assert!(r.store.has_receipt(seq).unwrap_or(false), "seq {seq}");
    }
    assert_eq!(r.verify(), Vec::<String>::new());
}

#[tokio::test]
async fn a_401_is_an_alarm_that_says_what_to_do() {
    let mut r = rig(1, true);
    r.hub.then(|_| {
        Ok(answer(
            401,
            None,
            br#"{"error":"unknown source gd-rrt","code":"unknown_source"}"#.to_vec(),
        ))
    });
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "unknown_source");
    assert!(
        reason.contains("register this source at the hub"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_413_halves_the_batch_until_it_fits() {
    let mut r = rig(4, true);
    r.hub.then(r.head(0));
    r.hub.then(|_| Ok(answer(413, None, Vec::new())));
    r.hub.then(receipted());
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        r.hub.seen()[1..],
        ["pushing seqs 1–4", "pushing seqs 1–2", "pushing seqs 3–4"]
    );
    assert_eq!(r.acked(), 4);
}

#[tokio::test]
async fn the_hub_key_is_trusted_on_first_use_and_stored() {
    let mut r = rig(1, false);
    let line = public_key_line(&hub_key().verifying_key());
    let l = line.clone();
    r.hub.then(move |req| {
        assert_eq!(*req, Request::HubKey);
        Ok(answer(200, None, format!("{l}\n").into_bytes()))
    });
    r.hub.then(r.head(0));
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.store.hub_key().ok().flatten(), Some(line));
    assert_eq!(r.acked(), 1);
}

/// The pusher's loop waits at least the hub's `Retry-After` before trying again, asks the
/// hub's head after a 503, and clears the state once delivered.
#[tokio::test(start_paused = true)]
async fn the_pusher_waits_out_retry_after_then_delivers() {
    let r = rig(2, true);
    r.hub.then(r.head(0));
    r.hub
        .then(|_| Ok(answer(503, Some(30), b"{\"error\":\"busy\"}".to_vec())));
    r.hub.then(r.head(0));
    r.hub.then(receipted());
    let pusher = Pusher::with_transport(
        r.hub.clone(),
        r.cfg.clone(),
        identity(),
        r.store.clone(),
        clock(),
        r.state.clone(),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(pusher.run(stop_rx));
    for _ in 0..600 {
        if r.acked() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let _ = task.await;
    assert_eq!(r.acked(), 2);
    let seen = r.hub.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let whats: Vec<&str> = seen.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        whats[..4],
        [
            "asking the hub for its head",
            "pushing seqs 1–2",
            "asking the hub for its head",
            "pushing seqs 1–2"
        ]
    );
    let waited = seen[2].1 - seen[1].1;
    assert!(waited >= Duration::from_secs(30), "{waited:?}");
    let s = r.state();
    assert_eq!(s.last_result.as_deref(), Some("ok"));
    assert_eq!((s.retries, s.alarm), (1, None));
}

mod attack;
mod take_back;

#[tokio::test]
async fn a_store_from_before_packs_delivers_prunes_and_takes_packs_beside_its_entries() {
    let mut r = rig(6, true);
    // What an agent from before packs held: each envelope under its own seq.
    r.store.debug_unpack().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.store.entry_values(), r.store.entry_count()), (6, 6));
    assert_eq!(r.verify(), Vec::<String>::new());
    r.hub.then(r.head(0));
    r.hub.then(batch_receipted(|req| {
        batch_receipt(req, &hub_key(), |_| true, |_| {})
    }));
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.acked(), 6);
    assert_eq!(r.store.buffered_bytes().ok(), Some(0));
    // One intake batch of five: one pack beside the six old values.
    let act = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;
    let body = [act; 5].join("\n");
    let mut w = crate::intake::tests::writer(&r.store, Default::default());
    w.submit(&json(&body), &mut |_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    r.store.flush().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.store.entry_values(), r.store.entry_count()), (7, 11));
    assert!(r.store.buffered_bytes().unwrap_or(0) > 0);
    assert_eq!(r.verify(), Vec::<String>::new());
    r.hub.then(batch_receipted(|req| {
        batch_receipt(req, &hub_key(), |_| true, |_| {})
    }));
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.hub.seen()[2..], ["pushing seqs 7–11"]);
    assert_eq!(r.acked(), 11);
    assert_eq!(r.store.buffered_bytes().ok(), Some(0));
    // Pruning through seq 8 takes every old value; the pack holding 7–11 stays whole,
    // and no reader sees 7 or 8.
    let cutoff = chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(1);
    assert_eq!(r.store.prune(cutoff, 8).ok(), Some(8));
    assert_eq!((r.store.entry_values(), r.store.entry_count()), (1, 3));
    assert!(r.store.entry(8).ok().flatten().is_none());
    assert!(r.store.entry(9).ok().flatten().is_some());
    assert_eq!(r.verify(), Vec::<String>::new());
    assert_eq!(r.store.prune(cutoff, 100).ok(), Some(2), "never the head");
    assert_eq!(r.store.entry_count(), 1);
    assert_eq!(r.verify(), Vec::<String>::new());
}
