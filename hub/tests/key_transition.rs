//! Key rotation in the source's own chain (issue 14): a key-transition entry at seq N,
//! signed by the key in force and proved by the new key, is ingested like any entry (same
//! checks, idempotency, receipts); the source's registry record gains the new key from N+1
//! in the same write; `verify`, `rebuild`, a restart and another replica derive the same
//! schedule from the log. One batch may mix old-key entries, the transition and new-key
//! entries. After it only the new key signs; the hub's `agents rotate` (lost key) keeps
//! working after a transition, and a transition that an admin rotation already overruled
//! is refused.

mod common;

use ed25519_dalek::SigningKey;
use spacesync_hub::maintenance;
use spacesync_hub::registry::{self, SourceRecord};
use spacesync_hub::store::{Store, WriteBatch, keys};
use spacesync_shared::keys::public_key_line;
use spacesync_shared::wire::{self, IngestBatch, IngestResponse, RefusalCode};
use spacesync_shared::{Campaign, Envelope};

use common::{Agent, Backend, ORIGIN, TestHub, activity, hub_key, store_dir, teachers};

fn batch(a: &Agent, entries: Vec<Envelope>) -> IngestBatch {
    IngestBatch {
        source: a.id.clone(),
        entries,
    }
}

/// Posts a batch and expects it refused at its first entry with `code`: the refusal's
/// reason is returned.
async fn refused(th: &TestHub, b: &IngestBatch, code: RefusalCode) -> String {
    let r = th.ingest(b).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text());
    let resp: IngestResponse = serde_json::from_slice(&r.body).expect("ingest response");
    assert!(resp.receipts.is_empty(), "{:?}", resp.receipts);
    assert_eq!(resp.refused.len(), 1, "{:?}", resp.refused);
    assert_eq!(resp.refused[0].code, code, "{:?}", resp.refused);
    resp.refused[0].reason.clone()
}

fn record_of(th: &TestHub, id: &str) -> SourceRecord {
    let st = th.hub.snapshot();
    st.registry
        .iter()
        .find(|(k, _)| k.as_str() == id)
        .map(|(_, v)| v.clone())
        .expect("registered")
}

fn schedule(rec: &SourceRecord) -> Vec<(u64, String)> {
    rec.keys
        .iter()
        .map(|k| (k.from_seq, k.key.clone()))
        .collect()
}

fn log_verifies(store: &dyn Store) {
    let report =
        maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {}).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}

async fn a_transition_in_the_chain_hands_the_source_to_its_new_key(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let old = gd.clone();
    let new = SigningKey::from_bytes(&[7; 32]);

    // One batch: two old-key entries, the transition at 3, two new-key entries.
    let mut entries = vec![
        gd.sign_next(&teachers("440106", "4401060001", "2018-11-01", 10)),
        gd.sign_next(&activity("440106", "2018-11-02", "training")),
    ];
    entries.push(gd.transition(&new));
    entries.push(gd.sign_next(&teachers("440106", "4401060001", "2018-11-03", 12)));
    entries.push(gd.sign_next(&activity("440106", "2018-11-04", "meeting")));
    let first = batch(&gd, entries);
    let resp = th.ingest_ok(&first).await;
    assert_eq!(resp.receipts.len(), 5);
    assert_eq!(resp.held_through, 5);
    let want = vec![
        (1, old.key_line()),
        (4, public_key_line(&new.verifying_key())),
    ];
    assert_eq!(schedule(&record_of(&th, "gd-a")), want);
    // In the store too, written with the entry.
    let stored = registry::load_all(th.hub.store.as_ref()).expect("load");
    assert_eq!(schedule(&stored[0]), want);

    // Idempotent: the same batch again is answered with the same receipts, nothing added.
    let size = th.log_size();
    let again = th.ingest_ok(&first).await;
    assert_eq!(again.receipts, resp.receipts);
    assert_eq!(th.log_size(), size);
    assert_eq!(schedule(&record_of(&th, "gd-a")), want);

    // From seq 6 on the old key is refused by name; the new key signs.
    let mut stale = old.clone();
    stale.next = gd.next;
    stale.prev = gd.prev;
    let reason = refused(
        &th,
        &stale.batch(&[activity("440106", "2018-11-05", "late")]),
        RefusalCode::RevokedKey,
    )
    .await;
    assert!(
        reason.contains("retired key") && reason.contains("seq 4"),
        "{reason}"
    );
    th.ingest_ok(&gd.batch(&[activity("440106", "2018-11-05", "on time")]))
        .await;

    // The log verifies; a restart reads the same schedule; deleted, `reg/` is rebuilt
    // from the log with the transition's key.
    log_verifies(th.hub.store.as_ref());
    drop(th);
    let th = TestHub::open(dir.path());
    assert_eq!(schedule(&record_of(&th, "gd-a")), want);
    let store = th.hub.store.clone();
    let before = registry::load_all(store.as_ref()).expect("load");
    let mut wb = WriteBatch::new();
    for r in store.scan(keys::REG) {
        wb.delete(r.expect("scan").0);
    }
    store.apply(wb).expect("delete");
    let report = maintenance::verify(store.as_ref(), &hub_key().verifying_key(), ORIGIN, |_| {})
        .expect("verify");
    assert!(!report.ok(), "a deleted registry is noticed");
    maintenance::rebuild(store.as_ref(), Campaign::builtin_2018().baseline, |_| {})
        .expect("rebuild");
    assert_eq!(registry::load_all(store.as_ref()).expect("load"), before);
    log_verifies(store.as_ref());
}

async fn an_admin_rotation_and_an_old_key_transition_do_not_both_hold(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    let mut gz = Agent::new("gz-a", 2, "440000");
    th.register(&gd);
    th.register(&gz);
    th.ingest_ok(&gd.batch(&[activity("440106", "2018-11-01", "a")]))
        .await;
    th.ingest_ok(&gz.batch(&[activity("440106", "2018-11-01", "a")]))
        .await;
    let admin_key = Agent::new("gd-a", 9, "440000");

    // gd: the admin rotated the (lost) key from the next seq; an old-key transition at
    // that seq is signed by a retired key.
    th.hub
        .rotate_source("gd-a", &admin_key.key_line(), None)
        .expect("rotate");
    let t = gd.clone().transition(&SigningKey::from_bytes(&[3; 32]));
    let reason = refused(&th, &batch(&gd, vec![t]), RefusalCode::RevokedKey).await;
    assert!(reason.contains("retired key"), "{reason}");

    // gz: the admin recorded a rotation from a later seq; the old key may not choose
    // another key before it.
    let later = Agent::new("gz-a", 8, "440000");
    th.hub
        .rotate_source("gz-a", &later.key_line(), Some(10))
        .expect("rotate");
    let t = gz.clone().transition(&SigningKey::from_bytes(&[4; 32]));
    let reason = refused(&th, &batch(&gz, vec![t]), RefusalCode::Invalid).await;
    assert!(
        reason.contains("rotation from seq 10 is already recorded"),
        "{reason}"
    );
    // Neither refusal changed a key.
    assert_eq!(record_of(&th, "gd-a").keys.len(), 2);
    assert_eq!(record_of(&th, "gz-a").keys.len(), 2);

    // A transition to a key another source holds (or held) is refused.
    let mut gd_new = gd.clone();
    gd_new.key = admin_key.key.clone();
    let t = gd_new.clone().transition(&gz.key);
    let reason = refused(&th, &batch(&gd_new, vec![t]), RefusalCode::Invalid).await;
    assert!(reason.contains("registered for source gz-a"), "{reason}");
    log_verifies(th.hub.store.as_ref());
}

async fn agents_rotate_still_replaces_a_key_lost_after_a_transition(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let first = gd.key_line();
    let lost = SigningKey::from_bytes(&[7; 32]);
    let t = gd.transition(&lost);
    th.ingest_ok(&batch(&gd, vec![t])).await;
    // The new key is lost before it signed anything: the admin replaces it from seq 2.
    let replacement = Agent::new("gd-a", 9, "440000");
    th.hub
        .rotate_source("gd-a", &replacement.key_line(), None)
        .expect("rotate");
    assert_eq!(
        schedule(&record_of(&th, "gd-a")),
        vec![(1, first), (2, replacement.key_line())]
    );
    let mut stale = gd.clone();
    refused(
        &th,
        &stale.batch(&[activity("440106", "2018-11-01", "by the lost key")]),
        RefusalCode::BadSignature,
    )
    .await;
    gd.key = replacement.key.clone();
    th.ingest_ok(&gd.batch(&[activity("440106", "2018-11-01", "by the replacement")]))
        .await;
    log_verifies(th.hub.store.as_ref());
    let before = registry::load_all(th.hub.store.as_ref()).expect("load");
    maintenance::rebuild(th.hub.store.as_ref(), th.hub.campaign.baseline, |_| {}).expect("rebuild");
    assert_eq!(
        registry::load_all(th.hub.store.as_ref()).expect("load"),
        before
    );
}

/// Another replica on the same database follows a transition it did not admit: its
/// registry catches up from the log, so it accepts the new key at once.
#[tokio::test]
async fn a_replica_follows_a_transition_another_admitted() {
    let dir = store_dir(Backend::Postgres);
    let a = TestHub::open(dir.path());
    let b = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    a.register(&gd);
    let new = SigningKey::from_bytes(&[7; 32]);
    let entries = vec![
        gd.sign_next(&activity("440106", "2018-11-01", "a")),
        gd.transition(&new),
    ];
    a.ingest_ok(&batch(&gd, entries)).await;
    // b has not seen the transition; the ingest catches it up before judging.
    b.ingest_ok(&gd.batch(&[activity("440106", "2018-11-02", "by the new key")]))
        .await;
    assert_eq!(
        schedule(&record_of(&b, "gd-a")),
        schedule(&record_of(&TestHub::open(dir.path()), "gd-a"))
    );
    log_verifies(a.hub.store.as_ref());
}

backends!(
    async a_transition_in_the_chain_hands_the_source_to_its_new_key,
    an_admin_rotation_and_an_old_key_transition_do_not_both_hold,
    agents_rotate_still_replaces_a_key_lost_after_a_transition
);

/// The request-based rotation (`POST /v1/agent/rotate-key`) is gone: rotation from the
/// agent is the chain's own entry, nothing else changes a key but `agents rotate`.
#[tokio::test]
async fn the_old_rotation_request_is_not_served() {
    let dir = store_dir(Backend::Sled);
    let th = TestHub::open(dir.path());
    let r = th
        .send(
            axum::http::Request::post("/v1/agent/rotate-key")
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{}"))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status.as_u16(), 404, "{}", r.text());
}

/// Sends a request to `path` signed by `signer`'s key `key` with a fresh nonce.
async fn signed_by(
    th: &TestHub,
    id: &spacesync_shared::SourceId,
    key: &SigningKey,
    method: &str,
    path: &str,
    body: &[u8],
) -> common::Reply {
    use spacesync_shared::clock::Clock as _;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("random");
    let headers = wire::sign_request(key, id, method, path, th.clock.now(), nonce, body);
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    th.send(
        req.body(axum::body::Body::from(body.to_vec()))
            .expect("request"),
    )
    .await
}

/// After a key transition, a key the source had before still signs the reads of its own
/// chain (`/v1/agent/head`, `/v1/agent/entries`): an agent restored from a backup made
/// before the rotation takes its chain back and learns of the rotation there. Nothing
/// else takes it: not ingest (each entry is checked against the key in force at its seq),
/// not notices, their acknowledgement, cosignatures or log alarm reports — each of which
/// the new key passes.
#[tokio::test]
async fn an_older_key_reads_its_own_chain_and_nothing_else() {
    let dir = store_dir(Backend::Sled);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let old = gd.clone();
    let new = SigningKey::from_bytes(&[7; 32]);
    let entries = vec![
        gd.sign_next(&activity("440106", "2018-11-01", "a")),
        gd.transition(&new),
    ];
    th.ingest_ok(&batch(&gd, entries)).await;
    th.ingest_ok(&gd.batch(&[activity("440106", "2018-11-02", "by the new key")]))
        .await;
    let stranger = SigningKey::from_bytes(&[9; 32]);

    // The reads of its own chain: the old key and the new one, never another.
    let entries_path = format!("{}?from=1&limit=10", wire::PATH_AGENT_ENTRIES);
    for path in [wire::PATH_AGENT_HEAD, entries_path.as_str()] {
        for (who, key, want) in [
            ("old", &old.key, 200),
            ("new", &new, 200),
            ("stranger", &stranger, 401),
        ] {
            let r = signed_by(&th, &gd.id, key, "GET", path, b"").await;
            assert_eq!(
                r.status.as_u16(),
                want,
                "{who} key, GET {path}: {}",
                r.text()
            );
        }
    }
    let r = signed_by(&th, &gd.id, &old.key, "GET", &entries_path, b"").await;
    let page: wire::EntriesPage = serde_json::from_slice(&r.body).expect("page");
    assert_eq!((page.entries.len(), page.held_through), (3, 3));

    // Everything else: the old key is refused as a signature that does not verify; the
    // new key gets past the signature (to the body's own checks).
    let notices = format!("{}?after=0", wire::PATH_AGENT_NOTICES);
    let writes: [(&str, &str, &[u8]); 4] = [
        ("GET", notices.as_str(), b""),
        ("POST", wire::PATH_AGENT_NOTICES_ACK, b"{}"),
        ("POST", wire::PATH_COSIGNATURE, b"{}"),
        ("POST", wire::PATH_AGENT_LOG_ALARM, b"{}"),
    ];
    for (method, path, body) in writes {
        let r = signed_by(&th, &gd.id, &old.key, method, path, body).await;
        assert_eq!(
            r.status.as_u16(),
            401,
            "old key, {method} {path}: {}",
            r.text()
        );
        assert!(
            r.text().contains("does not verify"),
            "{method} {path}: {}",
            r.text()
        );
        let r = signed_by(&th, &gd.id, &new, method, path, body).await;
        assert_ne!(
            r.status.as_u16(),
            401,
            "new key, {method} {path}: {}",
            r.text()
        );
    }
    // Ingest: an entry the old key signs after the transition is refused by name.
    let mut stale = old.clone();
    stale.next = gd.next;
    stale.prev = gd.prev;
    let reason = refused(
        &th,
        &stale.batch(&[activity("440106", "2018-11-03", "late")]),
        RefusalCode::RevokedKey,
    )
    .await;
    assert!(reason.contains("retired key"), "{reason}");
    assert_eq!(th.source_leaves(), 3);
}

/// A key the admin replaced (`agents rotate`: lost or stolen) reads nothing of the chain,
/// even where an earlier key handed over in the chain still may: only a key that signed
/// its own successor's transition keeps reading.
#[tokio::test]
async fn a_key_the_admin_replaced_reads_nothing() {
    let dir = store_dir(Backend::Sled);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let first = gd.clone();
    let second = SigningKey::from_bytes(&[7; 32]);
    let entries = vec![
        gd.sign_next(&activity("440106", "2018-11-01", "a")),
        gd.transition(&second),
    ];
    th.ingest_ok(&batch(&gd, entries)).await;
    th.ingest_ok(&gd.batch(&[activity("440106", "2018-11-02", "by the second key")]))
        .await;
    // The second key is stolen: the admin replaces it from the next seq.
    let replacement = Agent::new("gd-a", 9, "440000");
    th.hub
        .rotate_source("gd-a", &replacement.key_line(), None)
        .expect("rotate");
    for (who, key, want) in [
        ("first (handed over in the chain)", &first.key, 200),
        ("second (replaced by the admin)", &second, 401),
        ("replacement", &replacement.key, 200),
    ] {
        let r = signed_by(&th, &gd.id, key, "GET", wire::PATH_AGENT_HEAD, b"").await;
        assert_eq!(r.status.as_u16(), want, "{who}: {}", r.text());
    }
}

/// A witness policy follows hand-overs its witnesses signed in their own chains, in chain
/// order, and only from keys it lists without a bound: a bounded key (retired, lost or
/// stolen) hands over nothing, and a hand-over for another campaign counts for nothing.
#[tokio::test]
async fn a_witness_policy_follows_only_hand_overs_its_keys_may_sign() {
    use spacesync_shared::cosign::{Cosigner, witness_name};
    use spacesync_shared::witness_policy::{FORMAT, Policy};
    let dir = store_dir(Backend::Sled);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let k0 = gd.key.clone();
    let (k1, k2) = (
        SigningKey::from_bytes(&[7; 32]),
        SigningKey::from_bytes(&[8; 32]),
    );
    let entries = vec![
        gd.sign_next(&activity("440106", "2018-11-01", "a")),
        gd.transition(&k1),
        gd.sign_next(&activity("440106", "2018-11-02", "b")),
        gd.transition(&k2),
    ];
    th.ingest_ok(&batch(&gd, entries)).await;
    let name = witness_name(&gd.id);
    let vkey = |k: &SigningKey| {
        Cosigner::new(&name, k.verifying_key())
            .expect("cosigner")
            .to_vkey()
    };
    let bj = Cosigner::new(
        "spacesync-witness/bj-a",
        SigningKey::from_bytes(&[9; 32]).verifying_key(),
    )
    .expect("cosigner")
    .to_vkey();
    let policy = |lines: &str| {
        Policy::parse(&format!(
            "format {FORMAT}\nlog {ORIGIN} {}\nquorum 2\nwitness 110000 {bj}\n{lines}",
            public_key_line(&hub_key().verifying_key())
        ))
        .expect("policy")
    };
    let keys = |p: &Policy| -> Vec<(String, Option<u64>)> {
        p.witnesses[&name]
            .keys
            .iter()
            .map(|k| (k.cosigner.to_vkey(), k.until))
            .collect()
    };
    let store = th.hub.store.as_ref();
    // Listed k0: k0 → k1 → k2 followed, each old key bounded at its hand-over's leaf.
    let mut p = policy(&format!("witness 440000 {}\n", vkey(&k0)));
    assert_eq!(
        spacesync_hub::witness::extend_by_transitions(store, &mut p, "2018").expect("extend"),
        2
    );
    let got = keys(&p);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].1.is_some() && got[1].1.is_some() && got[2].1.is_none(),
        "{got:?}"
    );
    assert!(got[0].1 < got[1].1, "{got:?}");
    // Another campaign's id: the hand-overs are not this log's witnesses'.
    let mut p = policy(&format!("witness 440000 {}\n", vkey(&k0)));
    assert_eq!(
        spacesync_hub::witness::extend_by_transitions(store, &mut p, "2019").expect("extend"),
        0
    );
    // k0 listed with a bound (retired): it hands over nothing, so k1 and k2 stay out …
    let mut p = policy(&format!("witness 440000 {} until 1\n", vkey(&k0)));
    assert_eq!(
        spacesync_hub::witness::extend_by_transitions(store, &mut p, "2018").expect("extend"),
        0
    );
    assert_eq!(keys(&p).len(), 1);
    // … unless the policy lists k1 itself: then k1 → k2 is followed.
    let mut p = policy(&format!(
        "witness 440000 {} until 1\nwitness 440000 {}\n",
        vkey(&k0),
        vkey(&k1)
    ));
    assert_eq!(
        spacesync_hub::witness::extend_by_transitions(store, &mut p, "2018").expect("extend"),
        1
    );
    assert_eq!(keys(&p).last().map(|k| k.0.clone()), Some(vkey(&k2)));
}

/// Requests signed by a retired key are charged to a budget of their own: a copy of an old
/// key (say from an old backup) spending it cannot throttle the source's own agent.
#[tokio::test]
async fn a_retired_key_spends_a_budget_of_its_own() {
    let dir = store_dir(Backend::Sled);
    let mut th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let old = gd.key.clone();
    let new = SigningKey::from_bytes(&[7; 32]);
    let entries = vec![
        gd.sign_next(&activity("440106", "2018-11-01", "a")),
        gd.transition(&new),
    ];
    th.ingest_ok(&batch(&gd, entries)).await;
    // A small budget: three requests, refilled far slower than the test runs.
    th.app = spacesync_hub::http::app(spacesync_hub::http::AppState::new(
        th.hub.clone(),
        th.notices.clone(),
        0.001,
        3.0,
    ));
    let head = |key: SigningKey| {
        let th = &th;
        let id = gd.id.clone();
        async move {
            signed_by(th, &id, &key, "GET", wire::PATH_AGENT_HEAD, b"")
                .await
                .status
                .as_u16()
        }
    };
    let mut old_answers = Vec::new();
    for _ in 0..5 {
        old_answers.push(head(old.clone()).await);
    }
    assert_eq!(
        old_answers,
        vec![200, 200, 200, 429, 429],
        "the old key's own budget"
    );
    // The current key still has all of its own.
    for _ in 0..3 {
        assert_eq!(
            head(new.clone()).await,
            200,
            "the current key was throttled by the old one"
        );
    }
    assert_eq!(head(new.clone()).await, 429);
}
