//! An agent run from a backup older than what the hub holds takes back the hub's entries
//! of its own chain — and only what it can check: each entry signed by its key in force at
//! that seq and chained from its head, its own entries below the head unchanged, the batch
//! receipt by the pinned hub key covering every entry. Anything else is a fork (or a bad
//! receipt): nothing of the page is kept and intake stays closed. A page that is not what
//! was asked for (too many entries or bytes, not numbered from the seq asked in order, or
//! empty while the hub says it holds more) is the hub's fault, asked for again; a hub that
//! keeps sending nothing stops taking back with an alarm that names both heads.

use spacesync_shared::entry::{ENTRY_PAYLOAD_TYPE, Entry};
use spacesync_shared::wire::{EntriesPage, MAX_ENTRIES_PAGE_BYTES, ReceiptItem};
use spacesync_shared::{Digest, SourceId};

use super::super::delivery::TAKE_BACK_STALLS;
use super::*;

/// The agent's story: seqs 1–3 delivered, 4–5 appended, a backup, 6–8 appended (and, at
/// the hub, delivered). The rig runs the backup; `hub` is the chain the hub holds.
struct Restored {
    rig: Rig,
    hub: Vec<Envelope>,
    caught_up: watch::Receiver<bool>,
    /// The agent the backup was made of (its directory holds the backup).
    _old: Rig,
}

async fn restored() -> Restored {
    let mut old = rig(3, true);
    old.hub.then(old.head(0));
    old.hub.then(batch_receipted(|req| {
        batch_receipt(req, &hub_key(), |_| true, |_| {})
    }));
    assert!(old.deliver().await.is_ok());
    old.append(2);
    let backup = old._dir.path().join("backup");
    old.store.backup(&backup).unwrap_or_else(|e| panic!("{e}"));
    old.append(3);
    let hub: Vec<Envelope> = (1..=8)
        .map(|seq| {
            old.store
                .entry(seq)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("seq {seq}"))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&backup).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        store.catching_up().unwrap_or(false),
        "a backup copy catches up"
    );
    let mut rig = rig_on(dir, store, true);
    let (tx, caught_up) = watch::channel(false);
    rig.delivery.catching_up(tx);
    Restored {
        rig,
        hub,
        caught_up,
        _old: old,
    }
}

/// The hub's answer to the head request: it holds `hub` whole.
fn hub_head(hub: &[Envelope]) -> impl FnOnce(&Request) -> Result<Answer, Unreached> + Send + use<> {
    let head = hub.last().map_or(Digest::ZERO, |e| e.payload_hash());
    let held = hub.len() as u64;
    move |req| {
        assert_eq!(*req, Request::Head, "expected a head request");
        let sh = SourceHead {
            source: identity().source.clone(),
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

/// The hub's page of `hub` from the seq asked for, its batch receipt signed by `key`;
/// `alter` changes the page before it is sent (the receipt is made first, from the hub's
/// true entries, unless `alter` replaces it).
fn page(
    hub: Vec<Envelope>,
    key: SigningKey,
    alter: impl FnOnce(&mut EntriesPage) + Send + 'static,
) -> impl FnOnce(&Request) -> Result<Answer, Unreached> + Send {
    move |req| {
        let Request::Entries { from, limit } = *req else {
            panic!("expected an entries request, got {}", req.what());
        };
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        let entries: Vec<Envelope> = hub.iter().skip(from - 1).take(limit).cloned().collect();
        let receipt = BatchReceipt {
            source: identity().source.clone(),
            entries: (from as u64..)
                .zip(&entries)
                .map(|(seq, e)| ReceiptItem {
                    seq,
                    entry_hash: e.payload_hash(),
                    log_index: seq + 10,
                    received_at: chrono::DateTime::UNIX_EPOCH,
                })
                .collect(),
        };
        let mut p = EntriesPage {
            source: identity().source.clone(),
            held_through: hub.len() as u64,
            entries,
            batch_receipt: Some(receipt.sign(&key)),
        };
        alter(&mut p);
        Ok(answer(
            200,
            None,
            serde_json::to_vec(&p).unwrap_or_default(),
        ))
    }
}

#[tokio::test]
async fn a_restored_agent_takes_back_the_hubs_entries_with_their_receipts_and_opens_intake() {
    let mut t = restored().await;
    let r = &mut t.rig;
    assert_eq!(
        (r.store.head().map(|h| h.0).unwrap_or(0), r.acked()),
        (5, 3)
    );
    r.hub.then(hub_head(&t.hub));
    r.hub.then(page(t.hub.clone(), hub_key(), |_| {}));
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        r.hub.seen(),
        [
            "asking the hub for its head",
            "fetching the hub's entries of this source from seq 4"
        ],
        "nothing is pushed again: the hub's receipts cover it all"
    );
    let (head, hash) = r.store.head().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((head, hash), (8, t.hub[7].payload_hash()));
    assert_eq!(r.acked(), 8);
    for seq in 1..=8u64 {
        let held = r.store.entry(seq).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(held.as_ref(), t.hub.get(seq as usize - 1), "seq {seq}");
    }
    assert_eq!(r.verify(), Vec::<String>::new());
    assert!(*t.caught_up.borrow(), "intake opens");
    assert!(!r.store.catching_up().unwrap_or(true));
    // The next delivery asks nothing more: a restart of this store does not catch up.
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.hub.seen().len(), 2);
}

#[tokio::test]
async fn pages_are_kept_one_by_one_so_an_interruption_resumes_from_the_last() {
    let mut t = restored().await;
    let r = &mut t.rig;
    r.delivery = Delivery::new(
        Arc::new(Config {
            push: crate::config::PushConfig {
                max_entries: 2,
                ..r.cfg.push
            },
            ..(*r.cfg).clone()
        }),
        identity(),
        r.store.clone(),
        r.state.clone(),
    );
    let (tx, caught_up) = watch::channel(false);
    r.delivery.catching_up(tx);
    r.hub.then(hub_head(&t.hub));
    r.hub.then(page(t.hub.clone(), hub_key(), |_| {}));
    r.hub.then(page(t.hub.clone(), hub_key(), |_| {}));
    // The third page never comes: the hub is gone (as if the agent were killed here).
    r.hub.then(|_| {
        Err(Unreached {
            error: "connection reset".into(),
            doubt: true,
        })
    });
    let (error, _, _) = transient(r.deliver().await);
    assert!(error.contains("connection reset"), "{error}");
    // Pages 4–5 (held: receipts only) and 6–7 are on disk; intake is still closed.
    assert_eq!(r.store.head().map(|h| h.0).unwrap_or(0), 7);
    assert_eq!(r.acked(), 7);
    assert!(!*caught_up.borrow());
    assert!(r.store.catching_up().unwrap_or(false));
    assert_eq!(r.verify(), Vec::<String>::new());
    // The next start: a fresh delivery over the same store goes on from seq 8.
    let (tx, caught_up) = watch::channel(false);
    r.delivery = Delivery::new(r.cfg.clone(), identity(), r.store.clone(), r.state.clone());
    r.delivery.catching_up(tx);
    r.hub.then(hub_head(&t.hub));
    r.hub.then(page(t.hub.clone(), hub_key(), |_| {}));
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        r.hub.seen()[r.hub.seen().len() - 1],
        "fetching the hub's entries of this source from seq 8"
    );
    assert_eq!(
        (r.store.head().map(|h| h.0).unwrap_or(0), r.acked()),
        (8, 8)
    );
    assert!(*caught_up.borrow());
    assert_eq!(r.verify(), Vec::<String>::new());
}

/// Re-signs `env`'s entry after `change`, with `key`.
fn forged(env: &Envelope, key: &SigningKey, change: impl FnOnce(&mut Entry)) -> Envelope {
    let mut e = Entry::from_payload(&env.payload).unwrap_or_else(|e| panic!("{e}"));
    change(&mut e);
    Envelope::sign(key, ENTRY_PAYLOAD_TYPE, e.to_payload())
}

type Alter = Box<dyn FnOnce(&mut EntriesPage) + Send>;

#[tokio::test]
async fn entries_the_agent_cannot_check_are_a_fork_and_nothing_is_taken_back() {
    let other = SigningKey::from_bytes(&[5; 32]);
    // (what the hub does, the alarm, words it must say)
    let cases: Vec<(&str, Alter, &str, &str)> = vec![
        (
            "seq 6 signed by another key",
            Box::new(move |p| p.entries[2] = forged(&p.entries[2], &other, |_| {})),
            "fork",
            "seq 6",
        ),
        (
            "seq 6 signed by the agent's key but not chained to seq 5",
            Box::new(|p| {
                p.entries[2] = forged(&p.entries[2], &identity().key, |e| e.prev = Digest::ZERO)
            }),
            "fork",
            "seq 6",
        ),
        (
            "seq 7 of another source",
            Box::new(|p| {
                p.entries[3] = forged(&p.entries[3], &identity().key, |e| {
                    e.source = SourceId::parse("gd-gz").unwrap_or_else(|e| panic!("{e}"))
                })
            }),
            "fork",
            "seq 7",
        ),
        (
            "another entry at seq 4, which the agent holds",
            Box::new(|p| {
                p.entries[0] = forged(&p.entries[0], &identity().key, |e| {
                    e.recorded_at += chrono::Duration::seconds(1)
                })
            }),
            "fork",
            "seq 4",
        ),
        (
            "the page of another source",
            Box::new(|p| p.source = SourceId::parse("gd-gz").unwrap_or_else(|e| panic!("{e}"))),
            "fork",
            "page is of source gd-gz",
        ),
        (
            "the receipt signed by another key",
            Box::new(|p| {
                let b = p.batch_receipt.take().unwrap_or_else(|| panic!("receipt"));
                let r = BatchReceipt::open(&b, &hub_key().verifying_key())
                    .unwrap_or_else(|e| panic!("{e}"));
                p.batch_receipt = Some(r.sign(&wrong_key()));
            }),
            "bad_receipt",
            "does not verify",
        ),
        (
            "the receipt leaving out seq 7",
            Box::new(|p| {
                let b = p.batch_receipt.take().unwrap_or_else(|| panic!("receipt"));
                let mut r = BatchReceipt::open(&b, &hub_key().verifying_key())
                    .unwrap_or_else(|e| panic!("{e}"));
                r.entries.retain(|i| i.seq != 7);
                p.batch_receipt = Some(r.sign(&hub_key()));
            }),
            "bad_receipt",
            "seq 7",
        ),
        (
            "no receipt",
            Box::new(|p| p.batch_receipt = None),
            "",
            "without a receipt",
        ),
    ];
    for (case, alter, code, words) in cases {
        let mut t = restored().await;
        let r = &mut t.rig;
        r.hub.then(hub_head(&t.hub));
        r.hub.then(page(t.hub.clone(), hub_key(), alter));
        let (got_code, reason) = match r.deliver().await {
            Err(PushError::Alarm { code, reason }) => (code, reason),
            Err(PushError::Transient { error, .. }) => (String::new(), error),
            other => panic!("{case}: expected a refusal, got {other:?}"),
        };
        assert_eq!(got_code, code, "{case}: {reason}");
        assert!(reason.contains(words), "{case}: {reason}");
        assert_eq!(
            (r.store.head().map(|h| h.0).unwrap_or(0), r.acked()),
            (5, 3),
            "{case}: nothing taken back"
        );
        assert!(!r.store.has_receipt(4).unwrap_or(true), "{case}");
        assert!(!*t.caught_up.borrow(), "{case}: intake stays closed");
        assert!(r.store.catching_up().unwrap_or(false), "{case}");
        assert_eq!(r.verify(), Vec::<String>::new(), "{case}");
    }
}

#[tokio::test]
async fn a_key_rotated_after_the_backup_is_taken_back_but_keeps_intake_closed() {
    let mut t = restored().await;
    // At the hub: seq 6 a key transition to a key this directory never held (the agent
    // rotated after the backup), 7 and 8 signed by that key.
    let (own, next) = (identity().key.clone(), SigningKey::from_bytes(&[6; 32]));
    let mut hub: Vec<Envelope> = t.hub[..5].to_vec();
    let at_6 = Entry::from_payload(&t.hub[5].payload).unwrap_or_else(|e| panic!("{e}"));
    let transition = Entry::key_transition(
        at_6.source.clone(),
        6,
        at_6.prev,
        at_6.recorded_at,
        at_6.campaign.clone(),
        &next,
    );
    hub.push(transition.sign(&own));
    for seq in 7..=8u64 {
        let mut e =
            Entry::from_payload(&t.hub[seq as usize - 1].payload).unwrap_or_else(|e| panic!("{e}"));
        e.prev = hub[seq as usize - 2].payload_hash();
        hub.push(e.sign(&next));
    }
    let r = &mut t.rig;
    r.hub.then(hub_head(&hub));
    r.hub.then(page(hub.clone(), hub_key(), |_| {}));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "key_not_held");
    assert!(
        reason.contains("cannot sign seq 9") && reason.contains("spacesync-hub agents rotate"),
        "{reason}"
    );
    // What the hub holds is this chain (checked under the transition): taken back.
    assert_eq!(
        (r.store.head().map(|h| h.0).unwrap_or(0), r.acked()),
        (8, 8)
    );
    assert_eq!(r.verify(), Vec::<String>::new());
    assert!(!*t.caught_up.borrow(), "intake stays closed");
    assert!(r.store.catching_up().unwrap_or(false));
    // The operator puts back the key of that rotation: the store takes it (the key its
    // history puts in force), and with it intake opens; another key stays refused.
    let line = public_key_line(&next.verifying_key());
    let source = identity().source.clone();
    // (The store was bound to the agent's first key, as `run` binds it.)
    r.store
        .bind_identity(&source, &identity().key_line())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.store
            .bind_identity(&source, &public_key_line(&wrong_key().verifying_key()))
            .is_err()
    );
    r.store
        .bind_identity(&source, &line)
        .unwrap_or_else(|e| panic!("{e}"));
    let base = identity();
    let ident = Arc::new(crate::intake::Identity {
        source: base.source.clone(),
        scope: base.scope,
        campaign: base.campaign.clone(),
        key: next,
    });
    r.delivery = Delivery::new(r.cfg.clone(), ident, r.store.clone(), r.state.clone());
    let (tx, caught_up) = watch::channel(false);
    r.delivery.catching_up(tx);
    r.hub.then(hub_head(&hub));
    assert!(r.deliver().await.is_ok());
    assert!(*caught_up.borrow(), "intake opens under the key in force");
    assert!(!r.store.catching_up().unwrap_or(true));
}

/// The restored rig asking pages of at most `limit` entries.
fn with_limit(t: &mut Restored, limit: usize) -> watch::Receiver<bool> {
    let r = &mut t.rig;
    r.delivery = Delivery::new(
        Arc::new(Config {
            push: crate::config::PushConfig {
                max_entries: limit,
                ..r.cfg.push
            },
            ..(*r.cfg).clone()
        }),
        identity(),
        r.store.clone(),
        r.state.clone(),
    );
    let (tx, caught_up) = watch::channel(false);
    r.delivery.catching_up(tx);
    caught_up
}

#[tokio::test]
async fn a_page_that_is_not_what_was_asked_for_is_refused_and_asked_for_again() {
    // (what the hub does, with pages of at most 3 entries; words the error must say)
    let cases: Vec<(&str, Alter, &str)> = vec![
        (
            "four entries for a limit of three",
            Box::new(|p| {
                let extra = p.entries[0].clone();
                p.entries.push(extra);
            }),
            "4 entries, more than the 3 asked for",
        ),
        (
            "the page starts at seq 5, asked from 4",
            Box::new(|p| {
                p.entries.remove(0);
            }),
            "holds seq 5 where seq 4 belongs",
        ),
        (
            "seq 5 missing: the page skips it",
            Box::new(|p| {
                p.entries.remove(1);
            }),
            "holds seq 6 where seq 5 belongs",
        ),
        (
            "seq 4 twice",
            Box::new(|p| p.entries[1] = p.entries[0].clone()),
            "holds seq 4 where seq 5 belongs",
        ),
        (
            "no entry while holding through 8",
            Box::new(|p| p.entries.clear()),
            "no entry from seq 4 on but says it holds through seq 8",
        ),
    ];
    for (case, alter, words) in cases {
        let mut t = restored().await;
        let caught_up = with_limit(&mut t, 3);
        let r = &mut t.rig;
        r.hub.then(hub_head(&t.hub));
        r.hub.then(page(t.hub.clone(), hub_key(), alter));
        let (error, _, _) = transient(r.deliver().await);
        assert!(error.contains(words), "{case}: {error}");
        assert!(
            error.contains("nothing of it was taken back"),
            "{case}: {error}"
        );
        assert_eq!(
            (r.store.head().map(|h| h.0).unwrap_or(0), r.acked()),
            (5, 3),
            "{case}: nothing taken back"
        );
        assert!(!r.store.has_receipt(4).unwrap_or(true), "{case}");
        assert!(!*caught_up.borrow(), "{case}: intake stays closed");
        // Asked for again, the hub's true pages are taken back and intake opens.
        r.hub.then(hub_head(&t.hub));
        r.hub.then(page(t.hub.clone(), hub_key(), |_| {}));
        r.hub.then(page(t.hub.clone(), hub_key(), |_| {}));
        assert!(r.deliver().await.is_ok(), "{case}");
        assert_eq!(
            (r.store.head().map(|h| h.0).unwrap_or(0), r.acked()),
            (8, 8),
            "{case}"
        );
        assert!(*caught_up.borrow(), "{case}: intake opens");
        assert_eq!(r.verify(), Vec::<String>::new(), "{case}");
    }
}

#[test]
fn a_page_over_the_byte_limit_is_refused_unless_it_is_one_entry() {
    let big = |seq: u64| {
        let mut payload = format!("{{\"seq\":{seq}}}").into_bytes();
        payload.resize(MAX_ENTRIES_PAGE_BYTES / 2 + 1, b' ');
        Envelope::sign(&identity().key, ENTRY_PAYLOAD_TYPE, payload)
    };
    let page = |entries: Vec<Envelope>| EntriesPage {
        source: identity().source.clone(),
        held_through: 9,
        entries,
        batch_receipt: None,
    };
    let two = page(vec![big(4), big(5)]);
    let why = super::super::delivery::page_fault(&two, 4, 10).unwrap_or_default();
    assert!(why.contains("more than a page holds"), "{why}");
    // One entry always goes, whatever its size (the hub's rule too).
    let one = page(vec![big(4)]);
    let why = super::super::delivery::page_fault(&one, 4, 10).unwrap_or_default();
    assert!(!why.contains("more than a page holds"), "{why}");
}

#[tokio::test]
async fn a_hub_that_keeps_sending_nothing_stops_taking_back_with_an_alarm_naming_both_heads() {
    let mut t = restored().await;
    let caught_up = with_limit(&mut t, 2);
    let empty = |p: &mut EntriesPage| p.entries.clear();
    let r = &mut t.rig;
    // Four empty answers from seq 4: retried, each a hub fault.
    for i in 1..TAKE_BACK_STALLS {
        r.hub.then(hub_head(&t.hub));
        r.hub.then(page(t.hub.clone(), hub_key(), empty));
        let (error, _, _) = transient(r.deliver().await);
        assert!(error.contains("sent no entry"), "answer {i}: {error}");
    }
    // A page taken back (4–5) is progress: the count starts again from seq 6.
    r.hub.then(hub_head(&t.hub));
    r.hub.then(page(t.hub.clone(), hub_key(), |_| {}));
    r.hub.then(page(t.hub.clone(), hub_key(), empty));
    let (error, _, _) = transient(r.deliver().await);
    assert!(error.contains("from seq 6 on"), "{error}");
    for _ in 2..TAKE_BACK_STALLS {
        r.hub.then(hub_head(&t.hub));
        r.hub.then(page(t.hub.clone(), hub_key(), empty));
        transient(r.deliver().await);
    }
    // The fifth in a row from seq 6: an alarm that says what is wrong and what to do.
    r.hub.then(hub_head(&t.hub));
    r.hub.then(page(t.hub.clone(), hub_key(), empty));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "take_back_stalled");
    for words in [
        "holds source gd-rrt's chain through seq 8",
        "ends at seq 5",
        "5 answers in a row to take back seq 6 on",
        "intake stays closed",
        "spacesync-hub verify",
        "restore a newer backup",
    ] {
        assert!(reason.contains(words), "{words:?}: {reason}");
    }
    assert!(!*caught_up.borrow());
    assert!(r.store.catching_up().unwrap_or(false));
    // The hub serves again: everything is taken back and intake opens.
    r.hub.then(hub_head(&t.hub));
    r.hub.then(page(t.hub.clone(), hub_key(), |_| {}));
    r.hub.then(page(t.hub.clone(), hub_key(), |_| {}));
    assert!(r.deliver().await.is_ok());
    assert_eq!(
        (r.store.head().map(|h| h.0).unwrap_or(0), r.acked()),
        (8, 8)
    );
    assert!(*caught_up.borrow());
}
