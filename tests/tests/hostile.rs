//! Issue 10's attacks, each made as an attacker makes it: against the real `spacesync-hub`
//! and `spacesync-agent` processes on loopback, over raw sockets where a browser or a
//! hand-made request would differ from a well-behaved client. Each test checks the
//! refusal (exact status) and that nothing else changed: the hub's log size
//! (`/v1/checkpoint`), every source's head (`/v1/sources`) and the views (`/v1/progress`);
//! the agent's head, acked seq, buffered entries and unread notices (`/v1/status`).
//!
//! The floods (issue items 2 and 3) are in `hostile_load.rs`; webhook secrets (item 7) in
//! `hostile_hub_secrets.rs`. These complement the in-process router tests of
//! `hub/tests/hostile_clients.rs` and the agent's own `agent_intake.rs`: here every attack
//! crosses a real socket into a real process, and the hub is real where something could
//! have reached it.

mod hostile_kit;

use std::net::SocketAddr;
use std::time::Duration;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::VerifyingKey;
use hostile_kit::*;
use serde_json::{Value, json};
use spacesync_shared::dsse::{EnvelopeSignature, key_id, pae};
use spacesync_shared::entry::ENTRY_PAYLOAD_TYPE;
use spacesync_shared::keys::{parse_public_key, public_key_line};
use spacesync_shared::wire::{self, IngestBatch, IngestResponse, Receipt};
use spacesync_shared::{Digest, Entry, Envelope, SourceId};
use spacesync_tests::agent_harness::{self, AgentProc, stored_envelopes, titles, wait_for};
use spacesync_tests::cluster::{AgentNode, SITES, Site};
use spacesync_tests::hub_harness::{Chain, HubProc, NOW, Pushed, hub_bin, now, push};

/// A hub with an admin token, and an agent for `site` registered there,
/// pinning the hub's key; both running.
async fn hub_and_agent(
    site: Site,
    tweak: impl Fn(&mut spacesync_agent::config::Config),
) -> (HubProc, String, AgentNode) {
    let mut hub = HubProc::init();
    let admin = token(&hub, "admin");
    let mut agent = AgentNode::init(site, &hub.url(), &public_key_line(&hub.key), tweak);
    let key = parse_public_key(&agent.key_line).unwrap_or_else(|e| panic!("{e}"));
    hub.add_agent(site.source, site.scope, &key);
    hub.start().await;
    agent.start().await;
    (hub, admin, agent)
}

/// An activity about `site`'s county titled `title`, as one NDJSON line.
fn line(site: Site, title: &str) -> String {
    activity(site.county, title).to_string()
}

/// Waits until the agent reports `n` entries signed and receipted.
async fn wait_delivered(http: &reqwest::Client, agent: &AgentNode, n: u64) -> AgentState {
    wait_for(
        Duration::from_secs(30),
        &format!("{n} entries delivered"),
        async || {
            let s = agent_state(http, &agent.url(), &agent.token).await;
            (s.head_seq == n && s.acked_seq == n).then_some(s)
        },
    )
    .await
}

fn agent_addr(agent: &AgentNode) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], agent.port))
}

// ---- issue item 1: the agent's intake from a web page ---------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_make_the_agent_sign_push_or_change_anything() {
    let site = SITES[0];
    let (hub, admin, agent) = hub_and_agent(site, |c| c.push.notices_secs = 0.3).await;
    let http = reqwest::Client::new();
    let (status, v) = post_records(&http, &agent.url(), &agent.token, &line(site, "honest")).await;
    assert_eq!(status, 200, "{v}");
    // The honest record is at the hub, and the hub's notices (every province is overdue at
    // the hub's clock) have reached the agent, unread.
    let before = wait_for(
        Duration::from_secs(30),
        "delivery and notices",
        async || {
            let s = agent_state(&http, &agent.url(), &agent.token).await;
            (s.head_seq == 1 && s.acked_seq == 1 && s.unread_notices > 0).then_some(s)
        },
    )
    .await;
    let hub_before = hub_state(&http, &hub.url(), &admin).await;
    assert_eq!(hub_before.heads[site.source], 1);

    let to = agent_addr(&agent);
    let from = lo(0, 1);
    let port = agent.port;
    let host = format!("Host: 127.0.0.1:{port}");
    let auth = format!("Authorization: Bearer {}", agent.token);
    let origin = "Origin: https://evil.example".to_string();
    let withdrawal = br#"{"kind":"withdrawal","target_seq":1,"reason":"forged by a web page"}"#;
    let h = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let json = "Content-Type: application/json".to_string();
    let plain = "Content-Type: text/plain".to_string();
    let form = "Content-Type: application/x-www-form-urlencoded".to_string();

    // The control: sent by the platform, the very same body would be taken (judged only).
    let (code, text) = raw_http(
        to,
        from,
        &request(
            "POST",
            "/v1/records?dry_run=true",
            &h(&[&host, &auth, &json]),
            withdrawal,
        ),
    )
    .await;
    assert_eq!(code, 200, "the withdrawal itself is valid: {text}");
    assert!(text.contains("\"dry_run\":true"), "{text}");

    // The cross-site form POST of the report, and its variants.
    let rebind = format!("Host: rebind.evil.example:{port}");
    let bare = "Host: evil.example".to_string();
    let wrong = format!(
        "Authorization: Bearer {}",
        &agent.token[..agent.token.len() - 1]
    );
    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        (
            "cross-site text/plain, no token",
            h(&[&host, &origin, &plain]),
            403,
        ),
        (
            "cross-site text/plain, token",
            h(&[&host, &origin, &plain, &auth]),
            403,
        ),
        (
            "cross-site JSON, token",
            h(&[&host, &origin, &json, &auth]),
            403,
        ),
        (
            "text/plain, token, no Origin",
            h(&[&host, &plain, &auth]),
            415,
        ),
        ("form, token, no Origin", h(&[&host, &form, &auth]), 415),
        ("no Content-Type, token", h(&[&host, &auth]), 415),
        (
            "DNS rebinding, JSON, token",
            h(&[&rebind, &json, &auth]),
            421,
        ),
        ("a Host without port, token", h(&[&bare, &json, &auth]), 421),
        ("no token", h(&[&host, &json]), 401),
        (
            "a token one character short",
            h(&[&host, &json, &wrong]),
            401,
        ),
    ];
    for (what, headers, want) in &cases {
        let (code, text) = raw_http(
            to,
            from,
            &request("POST", "/v1/records", headers, withdrawal),
        )
        .await;
        assert_eq!(code, *want, "{what}: {text}");
        assert!(text.contains("\"error\""), "{what}: {text}");
        assert!(!text.contains("\"seqs\""), "{what}: {text}");
    }

    // Every endpoint but /healthz: no token 401; an Origin 403, token or not; a foreign
    // Host 421. None of the refusals carries the data the endpoint serves.
    let read = "{\"up_to\":1000000}".as_bytes();
    let endpoints: [(&str, &str, &[u8]); 7] = [
        ("POST", "/v1/records", withdrawal),
        ("GET", "/v1/status", b""),
        ("GET", "/v1/notices", b""),
        ("POST", "/v1/notices/read", read),
        ("POST", "/v1/verify", b""),
        ("GET", "/v1/verify", b""),
        ("GET", "/metrics", b""),
    ];
    for (method, path, body) in endpoints {
        for (what, headers, want) in [
            ("no token", h(&[&host, &json]), 401),
            ("wrong token", h(&[&host, &json, &wrong]), 401),
            ("Origin, no token", h(&[&host, &json, &origin]), 403),
            ("Origin, token", h(&[&host, &json, &origin, &auth]), 403),
            ("rebinding, token", h(&[&rebind, &json, &auth]), 421),
        ] {
            let (code, text) = raw_http(to, from, &request(method, path, &headers, body)).await;
            assert_eq!(code, want, "{method} {path}, {what}: {text}");
            for leak in ["head_seq", "problems\":[]", "spacesync_agent_", "text_en"] {
                assert!(
                    !text.contains(leak),
                    "{method} {path}, {what} leaks {leak}: {text}"
                );
            }
        }
    }
    // /healthz answers anyone, and says nothing.
    let (code, text) = raw_http(
        to,
        from,
        &request("GET", "/healthz", &h(&[&bare, &origin]), b""),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    // The platform reading its notices does not mark them read.
    for _ in 0..2 {
        let (code, text) = raw_http(
            to,
            from,
            &request("GET", "/v1/notices", &h(&[&host, &auth]), b""),
        )
        .await;
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("text_en"), "the notices are served: {text}");
    }

    // Several push intervals later: the agent signed nothing and the hub received nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(agent_state(&http, &agent.url(), &agent.token).await, before);
    assert_eq!(hub_state(&http, &hub.url(), &admin).await, hub_before);
}

// ---- issue item 5: one signature rule, against a key holder ----------------------------

/// An Ed25519 signature by secret scalar `a` whose nonce point is `r`·B plus torsion point
/// `t` (0 is the identity: an honest signature). With `t` > 0 a cofactored or batch
/// verifier may accept it; the one rule (no small-order component in R) must not.
fn sign_raw(a: &Scalar, r: &Scalar, t: usize, msg: &[u8]) -> [u8; 64] {
    spacesync_shared::sig::sign_with_torsion_in_r(a, r, t, msg)
}

/// A key holder who knows its secret scalar (as anyone who generated the key does).
struct Holder {
    a: Scalar,
    key: VerifyingKey,
    source: SourceId,
    /// The county its activity records are about.
    region: &'static str,
}

impl Holder {
    fn new(source: &str) -> Holder {
        Holder::keyed(source, 0x42, "110105")
    }

    /// A holder of the secret scalar made of `secret` bytes, reporting about `region`.
    fn keyed(source: &str, secret: u8, region: &'static str) -> Holder {
        let a = Scalar::from_bytes_mod_order([secret; 32]);
        let key = VerifyingKey::from_bytes(&(ED25519_BASEPOINT_POINT * a).compress().to_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        Holder {
            a,
            key,
            source: SourceId::parse(source).unwrap_or_else(|e| panic!("{e}")),
            region,
        }
    }

    /// `entry` signed with nonce scalar `r` and torsion point `t`.
    fn envelope(&self, entry: &Entry, r: u64, t: usize) -> Envelope {
        let payload = entry.to_payload();
        let sig = sign_raw(
            &self.a,
            &Scalar::from(r),
            t,
            &pae(ENTRY_PAYLOAD_TYPE, &payload),
        );
        Envelope {
            payload_type: ENTRY_PAYLOAD_TYPE.into(),
            payload,
            signatures: vec![EnvelopeSignature {
                keyid: key_id(&self.key),
                sig: sig.to_vec(),
            }],
        }
    }

    fn entry(&self, seq: u64, prev: Digest) -> Entry {
        entry(
            &self.source,
            seq,
            prev,
            activity(self.region, &format!("培训 {seq}")),
        )
    }
}

async fn ingest(http: &reqwest::Client, url: &str, batch: &IngestBatch) -> (u16, Value) {
    let r = http
        .post(format!("{url}{}", wire::PATH_INGEST))
        .json(batch)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ingest: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torsion_signatures_from_the_key_holder_never_enter_the_log() {
    let holder = Holder::new("bj-rrt");
    let mut hub = HubProc::init();
    let admin = token(&hub, "admin");
    hub.add_agent("bj-rrt", "110000", &holder.key);
    hub.start().await;
    let http = reqwest::Client::new();
    let url = hub.url();
    let before = hub_state(&http, &url, &admin).await;
    assert_eq!(before.heads["bj-rrt"], 0);

    // 30 batches, every torsion point of order 2, 4 and 8, varying nonces: one entry, or
    // two (so the batch verifier is asked too).
    for i in 0..30u64 {
        let t = 1 + (i % 7) as usize;
        let first = holder.envelope(&holder.entry(1, Digest::ZERO), 1000 + i, t);
        let mut entries = vec![first.clone()];
        if i >= 15 {
            let second = holder.entry(2, first.payload_hash());
            entries.push(holder.envelope(&second, 5000 + i, 8 - t));
        }
        let (status, v) = ingest(
            &http,
            &url,
            &IngestBatch {
                source: holder.source.clone(),
                entries,
            },
        )
        .await;
        assert_eq!(status, 422, "torsion attempt {i} (T[{t}]): {v}");
        let r: IngestResponse =
            serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
        assert!(r.receipts.is_empty(), "attempt {i}: {v}");
        assert_eq!(r.held_through, 0, "attempt {i}: {v}");
        assert!(!r.refused.is_empty(), "attempt {i}: {v}");
        for refusal in &r.refused {
            assert_eq!(
                refusal.code,
                wire::RefusalCode::BadSignature,
                "attempt {i}: {v}"
            );
        }
    }
    assert_eq!(
        hub_state(&http, &url, &admin).await,
        before,
        "a torsion entry changed the hub"
    );

    // The same key signing honestly (no torsion) is accepted, receipted with the hub key.
    let mut prev = Digest::ZERO;
    let mut honest = Vec::new();
    for seq in 1..=3 {
        let env = holder.envelope(&holder.entry(seq, prev), 77 + seq, 0);
        prev = env.payload_hash();
        honest.push(env);
    }
    let (status, v) = ingest(
        &http,
        &url,
        &IngestBatch {
            source: holder.source.clone(),
            entries: honest,
        },
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let r: IngestResponse =
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    assert_eq!(r.held_through, 3, "{v}");
    for env in &r.receipts {
        Receipt::open(env, &hub.key).unwrap_or_else(|e| panic!("receipt: {e}"));
    }
    // An honest entry and a torsion one in one batch: the torsion one is refused, never held.
    let fourth = holder.envelope(&holder.entry(4, prev), 91, 0);
    let fifth = holder.envelope(&holder.entry(5, fourth.payload_hash()), 92, 4);
    let (status, v) = ingest(
        &http,
        &url,
        &IngestBatch {
            source: holder.source.clone(),
            entries: vec![fourth, fifth],
        },
    )
    .await;
    let r: IngestResponse =
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{status} {e}: {v}"));
    assert!(
        r.refused
            .iter()
            .any(|x| x.seq == Some(5) && x.code == wire::RefusalCode::BadSignature),
        "{status}: {v}"
    );
    assert!(r.held_through <= 4, "{v}");
    let after = hub_state(&http, &url, &admin).await;
    assert_eq!(after.heads["bj-rrt"], r.held_through);
    assert_eq!(after.log_size, before.log_size + r.held_through);

    // What ingest accepted, verify calls sound.
    hub.kill();
    let out = hub.cli(&["verify"]);
    let said = text(&out);
    assert!(out.status.success(), "verify: {said}");
    assert!(said.contains("ok: "), "{said}");
    assert!(!said.contains("DAMAGE"), "{said}");
}

/// The hub tests the signatures' `R` points of the batches checked at about the same time
/// together (one aggregate torsion test for many). A torsion entry hidden deep in large
/// batches, sent while three other sources send honest batches: every time, its batch is
/// refused at that entry with the entries before it held, and every honest batch is held
/// whole — one source's torsion never costs another its batch, nor slips through with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torsion_entries_checked_alongside_honest_batches_are_refused_and_only_they() {
    const BATCH: u64 = 250;
    const ROUNDS: u64 = 6;
    let attacker = Holder::keyed("bj-rrt", 0x42, "110105");
    let honest = [
        Holder::keyed("tj-rrt", 0x43, "120101"),
        Holder::keyed("he-rrt", 0x44, "130102"),
        Holder::keyed("sx-rrt", 0x45, "140105"),
    ];
    let mut hub = HubProc::init();
    let admin = token(&hub, "admin");
    hub.add_agent("bj-rrt", "110000", &attacker.key);
    for (h, scope) in honest.iter().zip(["120000", "130000", "140000"]) {
        hub.add_agent(h.source.as_str(), scope, &h.key);
    }
    hub.start().await;
    let url = hub.url();
    let hub_key = hub.key;
    let before = hub_state(&reqwest::Client::new(), &url, &admin).await;

    // Each source's batches in turn, all sources at once. The attacker's round `i` puts a
    // torsion point of order 2, 4 or 8 into the R of its entry at position `at`.
    let send = |h: Holder, torsion: bool| {
        let url = url.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut head, mut prev) = (0u64, Digest::ZERO);
            for round in 0..ROUNDS {
                let at = 1 + (round * 97) % BATCH;
                let t = [4, 2, 6, 1, 4, 7][round as usize];
                let mut entries = Vec::new();
                let mut p = prev;
                for i in 1..=BATCH {
                    let seq = head + i;
                    let torsion_here = if torsion && i == at { t } else { 0 };
                    let env = h.envelope(&h.entry(seq, p), 10_000 * round + seq, torsion_here);
                    p = env.payload_hash();
                    entries.push(env);
                }
                let batch = IngestBatch {
                    source: h.source.clone(),
                    entries: entries.clone(),
                };
                let (status, v) = ingest(&http, &url, &batch).await;
                let r: IngestResponse = serde_json::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("{} round {round}: {status} {e}: {v}", h.source));
                if torsion {
                    assert_eq!(status, 422, "round {round} (T[{t}] at {at}): {v}");
                    assert_eq!(r.held_through, head + at - 1, "round {round}: {v}");
                    assert_eq!(r.refused.len(), 1, "round {round}: {v}");
                    assert_eq!(r.refused[0].seq, Some(head + at), "round {round}: {v}");
                    assert_eq!(r.refused[0].code, wire::RefusalCode::BadSignature);
                    if at > 1 {
                        prev = entries[at as usize - 2].payload_hash();
                    }
                    head += at - 1;
                } else {
                    assert_eq!(status, 200, "{} round {round}: {v}", h.source);
                    assert_eq!(r.held_through, head + BATCH, "{v}");
                    for env in &r.receipts {
                        Receipt::open(env, &hub_key).unwrap_or_else(|e| panic!("receipt: {e}"));
                    }
                    head += BATCH;
                    prev = p;
                }
            }
            (h.source.clone(), head)
        })
    };
    let mut runs = vec![send(attacker, true)];
    for h in honest {
        runs.push(send(h, false));
    }
    let mut heads = Vec::new();
    for run in runs {
        heads.push(run.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let http = reqwest::Client::new();
    let state = hub_state(&http, &url, &admin).await;
    let held: u64 = (0..ROUNDS).map(|round| (round * 97) % BATCH).sum();
    assert_eq!(heads[0].1, held);
    assert_eq!(state.heads["bj-rrt"], held);
    for (source, head) in &heads[1..] {
        assert_eq!(*head, ROUNDS * BATCH);
        assert_eq!(state.heads[source.as_str()], ROUNDS * BATCH, "{source}");
    }
    assert_eq!(state.log_size, before.log_size + held + 3 * ROUNDS * BATCH);

    // What ingest accepted, verify calls sound.
    hub.kill();
    let out = hub.cli(&["verify"]);
    let said = text(&out);
    assert!(out.status.success(), "verify: {said}");
    assert!(!said.contains("DAMAGE"), "{said}");
}

// ---- issue item 6: idempotency keys -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_idempotency_key_never_drops_or_replaces_data() {
    let site = SITES[0];
    let (hub, admin, mut agent) = hub_and_agent(site, |_| {}).await;
    let http = reqwest::Client::new();
    let hub_before = hub_state(&http, &hub.url(), &admin).await;
    let url = agent.url();
    let agent_token = agent.token.clone();
    let keyed = async |key: &str, body: String| {
        let r = http
            .post(format!("{url}/v1/records"))
            .bearer_auth(&agent_token)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST: {e}"));
        let code = r.status().as_u16();
        (code, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (code, first) = keyed("k1", line(site, "A")).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["seqs"], json!([1]));
    let state = agent_state(&http, &url, &agent.token).await;

    // New data under a used key: 422 naming the key; nothing stored.
    let (code, v) = keyed("k1", line(site, "B")).await;
    assert_eq!(code, 422, "{v}");
    let e = v["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("Idempotency-Key \"k1\"") && e.contains("nothing was stored"),
        "{v}"
    );
    assert_eq!(
        agent_state(&http, &url, &agent.token).await.head_seq,
        state.head_seq
    );
    // The first batch again: the first answer, marked replayed.
    let (code, v) = keyed("k1", line(site, "A")).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (&v["seqs"], &v["accepted"], &v["replayed"]),
        (&first["seqs"], &first["accepted"], &json!(true))
    );
    // A 60 KB key: 400, not echoed.
    let (code, v) = keyed(&"k".repeat(60 * 1024), line(site, "huge key")).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v.to_string().len() < 1000,
        "the key is echoed: {} bytes",
        v.to_string().len()
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("61440 bytes long"),
        "{v}"
    );

    // Racing: eight clients, one key, eight different batches at once — exactly one is
    // stored, the other seven are told the key is taken.
    let racers = (0..8).map(|i| keyed("race", line(site, &format!("race-{i}"))));
    let answers = futures_util::future::join_all(racers).await;
    let codes: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        codes.iter().filter(|c| **c == 200).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == 422).count(),
        7,
        "{answers:?}"
    );
    let winner = answers
        .iter()
        .position(|a| a.0 == 200)
        .unwrap_or_else(|| panic!("{answers:?}"));
    // Eight retries of one batch at once: one store, one seq, all told the same.
    let same = line(site, "same");
    let answers = futures_util::future::join_all((0..8).map(|_| keyed("same", same.clone()))).await;
    for (code, v) in &answers {
        assert_eq!(*code, 200, "{v}");
        assert_eq!(v["seqs"], json!([3]), "{v}");
    }
    assert_eq!(
        answers.iter().filter(|a| a.1["replayed"] == true).count(),
        7,
        "{answers:?}"
    );

    // Keys outlive a crash of the agent.
    agent.kill();
    agent.start().await;
    let (code, v) = keyed("k1", line(site, "B")).await;
    assert_eq!(code, 422, "after a restart: {v}");
    let (code, v) = keyed("k1", line(site, "A")).await;
    assert_eq!(
        (code, &v["seqs"], &v["replayed"]),
        (200, &json!([1]), &json!(true)),
        "{v}"
    );

    // Exactly the three accepted batches, each once, at the agent and at the hub.
    wait_delivered(&http, &agent, 3).await;
    let at_hub = hub_state(&http, &hub.url(), &admin).await;
    assert_eq!(
        (at_hub.log_size, at_hub.heads[site.source]),
        (hub_before.log_size + 3, 3)
    );
    agent.stop();
    let stored: Vec<String> = titles(&stored_envelopes(&agent.data()))
        .into_iter()
        .map(|t| t.1)
        .collect();
    assert_eq!(
        stored,
        [
            "A".to_string(),
            format!("race-{winner}"),
            "same".to_string()
        ]
    );
}

// ---- issue item 8: log injection -------------------------------------------------------

/// A record whose key is an attacker's forged log line.
fn forged_record(region: &str) -> Value {
    let mut r = activity(region, "培训");
    r[format!("x\n{FORGED} line\r\n{FORGED} line")] = json!(1);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacker_keys_and_spool_names_cannot_forge_log_lines() {
    // The hub: refusals quoting a key, a value, a source name, from a signed entry or junk.
    let mut hub = HubProc::init();
    let admin = token(&hub, "admin");
    let chain = Chain::new("bj-rrt", 2, "110000");
    hub.add_agent("bj-rrt", "110000", &chain.key.verifying_key());
    hub.start().await;
    let http = reqwest::Client::new();
    let url = hub.url();
    let before = hub_state(&http, &url, &admin).await;
    let payload = |record: Value| {
        serde_json::to_vec(&json!({
            "source": "bj-rrt", "seq": 1, "prev": Digest::ZERO,
            "recorded_at": "2018-11-25T01:00:00.000Z", "campaign": "2018", "record": record,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut bad_region = activity("110105", "x");
    bad_region["region"] = json!(format!("11\n{FORGED} line"));
    let signed = |record: Value| Envelope::sign(&chain.key, ENTRY_PAYLOAD_TYPE, payload(record));
    let unsigned = Envelope {
        payload_type: ENTRY_PAYLOAD_TYPE.into(),
        payload: payload(forged_record("110105")),
        signatures: vec![],
    };
    let batch = |env: Envelope| {
        serde_json::to_vec(&json!({"source": "bj-rrt", "entries": [env]}))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let bodies: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a signed entry with a forged key",
            batch(signed(forged_record("110105"))),
            422,
        ),
        (
            "a signed entry with a forged region",
            batch(signed(bad_region)),
            422,
        ),
        ("an unsigned entry with a forged key", batch(unsigned), 422),
        (
            "a forged source name",
            serde_json::to_vec(&json!({"source": format!("bj\n{FORGED} line"), "entries": []}))
                .unwrap_or_else(|e| panic!("{e}")),
            400,
        ),
        ("not JSON", format!("{{\n{FORGED} line\n").into_bytes(), 400),
    ];
    for (what, body, want) in bodies {
        let r = http
            .post(format!("{url}{}", wire::PATH_INGEST))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let code = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(code, want, "{what}: {text}");
    }
    assert_eq!(hub_state(&http, &url, &admin).await, before);
    let log = hub.log();
    assert!(
        log.contains("Refused an entry"),
        "the refusals are logged:\n{log}"
    );
    assert!(
        forged_lines(&log).is_empty(),
        "forged lines in the hub log:\n{log}"
    );

    // The agent: a POST whose record has the forged key, and spool files named with one.
    let mut agent = AgentProc::init(
        &format!("http://127.0.0.1:{}", agent_harness::free_port()),
        |_| {},
    );
    agent.start().await;
    let (code, _, v) = agent
        .post(&forged_record("440100").to_string(), "application/json")
        .await;
    assert_eq!(code, 422, "{v}");
    let spool = agent.data().spool();
    std::fs::create_dir_all(&spool).unwrap_or_else(|e| panic!("{e}"));
    let good = format!("ok\n{FORGED} line.json");
    let bad = format!("bad\n{FORGED} line.json");
    std::fs::write(spool.join(&good), activity("440100", "spooled").to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(spool.join(&bad), forged_record("440100").to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let done = agent.data().spool_done().join(&good);
    let failed = agent.data().spool_failed().join(&bad);
    wait_for(
        Duration::from_secs(20),
        "both spool files handled",
        async || (done.exists() && failed.exists()).then_some(()),
    )
    .await;
    let st = agent.status().await;
    assert_eq!(
        (st["head_seq"].clone(), st["buffered"].clone()),
        (json!(1), json!(1)),
        "{st}"
    );
    let log = agent.log();
    assert!(
        log.contains("Spool file imported.") && log.contains("Spool file refused."),
        "{log}"
    );
    assert!(
        forged_lines(&log).is_empty(),
        "forged lines in the agent log:\n{log}"
    );
    let errors = std::fs::read_to_string(
        agent
            .data()
            .spool_failed()
            .join(format!("{bad}.errors.txt")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        forged_lines(&errors).is_empty(),
        "forged lines in the spool's errors file:\n{errors}"
    );
}

// ---- issue item 9: replay after a restart -----------------------------------------------

/// A signed request of `chain`'s source with a fixed nonce: what an eavesdropper captures.
fn captured(
    http: &reqwest::Client,
    url: &str,
    chain: &Chain,
    method: reqwest::Method,
    path: &str,
    nonce: u8,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let mut r = http
        .request(method.clone(), format!("{url}{path}"))
        .body(body.to_vec());
    for (k, v) in wire::sign_request(
        &chain.key,
        &chain.source,
        method.as_str(),
        path,
        now(),
        [nonce; 16],
        body,
    ) {
        r = r.header(k, v);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_signed_requests_are_refused_after_the_hub_is_killed_and_restarted() {
    let mut hub = HubProc::init();
    let admin = token(&hub, "admin");
    let mut chain = Chain::new("gd-rrt", 1, "440000");
    chain.extend(2, "440106");
    hub.add_agent("gd-rrt", "440000", &chain.key.verifying_key());
    hub.start().await;
    let http = reqwest::Client::new();
    let url = hub.url();
    assert!(matches!(
        push(&http, &url, &hub.key, &chain, 1, 2).await,
        Pushed::Held {
            held_through: 2,
            ..
        }
    ));

    let notices = format!("{}?after=0&limit=10", wire::PATH_AGENT_NOTICES);
    let entries = format!("{}?from=1&limit=10", wire::PATH_AGENT_ENTRIES);
    let ack = br#"{"through":1}"#;
    let requests = |nonce_base: u8| {
        [
            (
                "head",
                captured(
                    &http,
                    &url,
                    &chain,
                    reqwest::Method::GET,
                    wire::PATH_AGENT_HEAD,
                    nonce_base,
                    b"",
                ),
                200,
            ),
            (
                "notices",
                captured(
                    &http,
                    &url,
                    &chain,
                    reqwest::Method::GET,
                    &notices,
                    nonce_base + 1,
                    b"",
                ),
                200,
            ),
            (
                "notices ack",
                captured(
                    &http,
                    &url,
                    &chain,
                    reqwest::Method::POST,
                    wire::PATH_AGENT_NOTICES_ACK,
                    nonce_base + 2,
                    ack,
                )
                .header("content-type", "application/json"),
                204,
            ),
            (
                "entries",
                captured(
                    &http,
                    &url,
                    &chain,
                    reqwest::Method::GET,
                    &entries,
                    nonce_base + 3,
                    b"",
                ),
                200,
            ),
        ]
    };
    let send = async |r: reqwest::RequestBuilder| {
        let r = r.send().await.unwrap_or_else(|e| panic!("{e}"));
        let code = r.status().as_u16();
        (code, r.text().await.unwrap_or_default())
    };
    let mut answers = Vec::new();
    for (what, r, want) in requests(7) {
        let (code, text) = send(r).await;
        assert_eq!(code, want, "{what}: {text}");
        answers.push(text);
    }
    assert!(answers[0].contains("\"held_through\":2"), "{}", answers[0]);
    for (what, r, _) in requests(7) {
        let (code, text) = send(r).await;
        assert_eq!(code, 401, "{what} replayed at once: {text}");
    }
    let before = hub_state(&http, &url, &admin).await;

    // SIGKILL, no goodbye: what was answered had its nonce on disk.
    hub.kill();
    hub.start().await;
    for (what, r, _) in requests(7) {
        let (code, text) = send(r).await;
        assert_eq!(code, 401, "{what} replayed after the restart: {text}");
        assert!(text.contains("already used"), "{what}: {text}");
    }
    assert_eq!(hub_state(&http, &url, &admin).await, before);
    // The agent's own next requests (fresh nonces) are served.
    for (what, r, want) in requests(17) {
        let (code, text) = send(r).await;
        assert_eq!(code, want, "{what} with a fresh nonce: {text}");
    }
    assert_eq!(hub_state(&http, &url, &admin).await, before);
}

// ---- issue item 9: permissions of the data directories ----------------------------------

#[cfg(unix)]
fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `out` is a refusal to start naming `path`, its mode and the `chmod` that fixes it.
#[cfg(unix)]
fn assert_refused(
    what: &str,
    out: &std::process::Output,
    path: &std::path::Path,
    loose: u32,
    fix: &str,
) {
    let said = text(out);
    assert!(
        !out.status.success(),
        "{what}: started although {} is {loose:o}: {said}",
        path.display()
    );
    assert!(
        said.contains(&format!("{fix} {}", path.display())),
        "{what}: names `{fix} {}`: {said}",
        path.display()
    );
    assert!(
        said.contains(&format!("{loose:o}")),
        "{what}: names the mode {loose:o}: {said}"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_open_to_others_stop_hub_and_agent_from_starting_and_nothing_changes() {
    // The hub, holding a source's entries.
    let mut hub = HubProc::init();
    let admin = token(&hub, "admin");
    let mut chain = Chain::new("gd-rrt", 1, "440000");
    chain.extend(2, "440106");
    hub.add_agent("gd-rrt", "440000", &chain.key.verifying_key());
    hub.start().await;
    let http = reqwest::Client::new();
    assert!(matches!(
        push(&http, &hub.url(), &hub.key, &chain, 1, 2).await,
        Pushed::Held { .. }
    ));
    let before = hub_state(&http, &hub.url(), &admin).await;
    hub.kill();
    let dir = hub.dir.path().to_path_buf();
    let listen = format!("127.0.0.1:{}", hub.port);
    for (path, loose, good, fix) in [
        (dir.join("hub.toml"), 0o644, 0o600, "chmod 600"),
        (dir.clone(), 0o755, 0o700, "chmod 700"),
        (dir.join("hub.key"), 0o640, 0o600, "chmod 600"),
        (dir.join("webhook.key"), 0o604, 0o600, "chmod 600"),
    ] {
        assert_eq!(mode(&path), good, "{}", path.display());
        chmod(&path, loose);
        let out = run_bounded(
            hub_bin(),
            &dir,
            &["serve", "--now", NOW, "--listen", &listen],
            Duration::from_secs(20),
        );
        assert_refused("hub serve", &out, &path, loose, fix);
        assert_eq!(
            mode(&path),
            loose,
            "serve changed the mode of {} itself",
            path.display()
        );
        chmod(&path, good);
    }
    hub.start().await;
    assert_eq!(hub_state(&http, &hub.url(), &admin).await, before);

    // The agent, holding an entry.
    let mut agent = AgentProc::init(
        &format!("http://127.0.0.1:{}", agent_harness::free_port()),
        |_| {},
    );
    agent.start().await;
    let (code, _, v) = agent
        .post(&activity("440100", "kept").to_string(), "application/json")
        .await;
    assert_eq!(code, 200, "{v}");
    let before = agent_state(&http, &agent.url(), &agent.token).await;
    agent.stop();
    let data = agent.data();
    for (path, loose, good, fix) in [
        (data.key(), 0o640, 0o600, "chmod 600"),
        (data.token(), 0o644, 0o600, "chmod 600"),
        (data.config(), 0o644, 0o600, "chmod 600"),
        (data.root.clone(), 0o755, 0o700, "chmod 700"),
    ] {
        assert_eq!(mode(&path), good, "{}", path.display());
        chmod(&path, loose);
        let out = run_bounded(
            agent_harness::agent_bin(),
            &data.root,
            &["run", "--now", agent_harness::NOW],
            Duration::from_secs(20),
        );
        assert_refused("agent run", &out, &path, loose, fix);
        assert_eq!(
            mode(&path),
            loose,
            "run changed the mode of {} itself",
            path.display()
        );
        chmod(&path, good);
    }
    agent.start().await;
    assert_eq!(agent_state(&http, &agent.url(), &agent.token).await, before);
}

// ---- issue item 9: recorded_at, /metrics, dashboard sessions ----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_recorded_before_the_campaign_are_refused_and_change_nothing() {
    let mut hub = HubProc::init();
    let admin = token(&hub, "admin");
    let mut chain = Chain::new("gd-rrt", 1, "440000");
    chain.extend(1, "440106");
    hub.add_agent("gd-rrt", "440000", &chain.key.verifying_key());
    hub.start().await;
    let http = reqwest::Client::new();
    let url = hub.url();
    assert!(matches!(
        push(&http, &url, &hub.key, &chain, 1, 1).await,
        Pushed::Held {
            held_through: 1,
            ..
        }
    ));
    let before = hub_state(&http, &url, &admin).await;
    // The campaign starts 2018-10-01 00:00 +08:00; the hub allows 30 days before it.
    let earliest = chrono::DateTime::parse_from_rfc3339("2018-08-31T16:00:00Z")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    let at = |t: chrono::DateTime<chrono::Utc>| {
        let mut e = entry(
            &chain.source,
            2,
            chain.entries[0].payload_hash(),
            activity("440106", "早"),
        );
        e.recorded_at = t;
        IngestBatch {
            source: chain.source.clone(),
            entries: vec![e.sign(&chain.key)],
        }
    };
    for (what, t) in [
        ("1970", chrono::DateTime::UNIX_EPOCH),
        (
            "a millisecond too early",
            earliest - chrono::Duration::milliseconds(1),
        ),
    ] {
        let (code, v) = ingest(&http, &url, &at(t)).await;
        assert_eq!(code, 422, "{what}: {v}");
        assert_eq!(v["refused"][0]["code"], "invalid", "{what}: {v}");
        let reason = v["refused"][0]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("before the campaign started"),
            "{what}: {v}"
        );
        assert_eq!(hub_state(&http, &url, &admin).await, before, "{what}");
    }
    let (code, v) = ingest(&http, &url, &at(earliest)).await;
    assert_eq!(
        (code, &v["held_through"]),
        (200, &json!(2)),
        "at the bound: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_to_admin_tokens_only() {
    let mut hub = HubProc::init();
    let admin = token(&hub, "admin");
    let ministry = token(&hub, "ministry");
    let province = token(&hub, "province:440000");
    let mut chain = Chain::new("gd-rrt", 1, "440000");
    chain.extend(1, "440106");
    hub.add_agent("gd-rrt", "440000", &chain.key.verifying_key());
    hub.start().await;
    let http = reqwest::Client::new();
    let url = hub.url();
    assert!(matches!(
        push(&http, &url, &hub.key, &chain, 1, 1).await,
        Pushed::Held { .. }
    ));
    let before = hub_state(&http, &url, &admin).await;
    for (what, token, want) in [
        ("no token", None, 401),
        ("an unknown token", Some("sst_not-a-token"), 401),
        ("a ministry token", Some(ministry.as_str()), 403),
        ("a province token", Some(province.as_str()), 403),
        ("an admin token", Some(admin.as_str()), 200),
    ] {
        let mut r = http.get(format!("{url}/metrics"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap_or_else(|e| panic!("{e}"));
        let code = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(code, want, "{what}: {body}");
        let names = body.contains("gd-rrt");
        assert_eq!(
            names,
            want == 200,
            "{what}: source ids shown only to admins: {body}"
        );
        if want == 200 {
            assert!(
                body.contains("spacesync_hub_source_head_seq{source=\"gd-rrt\"} 1"),
                "{body}"
            );
        }
    }
    assert_eq!(hub_state(&http, &url, &admin).await, before);
}

/// Logs in to the dashboard with `token`: the status and the session cookie set, if any.
async fn login(http: &reqwest::Client, url: &str, token: &str) -> (u16, Option<String>) {
    let enc: String = token
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let r = http
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={enc}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    (r.status().as_u16(), cookie)
}

/// `GET /` with a session cookie: 200 for a live session, 303 to the login page otherwise.
async fn home(http: &reqwest::Client, url: &str, cookie: &str) -> u16 {
    let r = http
        .get(format!("{url}/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /: {e}"));
    let code = r.status().as_u16();
    if code == 303 {
        let to = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(to.starts_with("/login"), "{to}");
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_again_and_again_evicts_only_ones_own_sessions_and_revocation_ends_them() {
    let mut hub = HubProc::init();
    let a = token(&hub, "ministry");
    let b = token(&hub, "province:440000");
    let admin = token(&hub, "admin");
    hub.start().await;
    let url = hub.url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let before = hub_state(&http, &url, &admin).await;
    let (code, b_cookie) = login(&http, &url, &b).await;
    assert_eq!(code, 303);
    let b_cookie = b_cookie.unwrap_or_else(|| panic!("no session cookie"));
    let mut a_cookies = Vec::new();
    for i in 0..20 {
        let (code, c) = login(&http, &url, &a).await;
        assert_eq!(code, 303, "login {i}");
        a_cookies.push(c.unwrap_or_else(|| panic!("login {i}: no session cookie")));
    }
    assert_eq!(
        home(&http, &url, &b_cookie).await,
        200,
        "the other token's session survives"
    );
    // The token's own oldest sessions made room: its latest 8 hold, the 12 before do not.
    for (i, c) in a_cookies.iter().enumerate() {
        let want = if i < 12 { 303 } else { 200 };
        assert_eq!(home(&http, &url, c).await, want, "A's session {i}");
    }
    let (code, _) = login(&http, &url, "sst_not-a-token").await;
    assert_eq!(code, 401);
    assert_eq!(
        hub_state(&http, &url, &admin).await,
        before,
        "logins write nothing"
    );

    // Revoked on the stopped hub: A can neither log in nor use its token or cookie.
    hub.kill();
    let out = hub.cli(&["token", "revoke", &a]);
    assert!(out.status.success(), "{}", text(&out));
    hub.start().await;
    let (code, c) = login(&http, &url, &a).await;
    assert_eq!((code, c), (401, None), "a revoked token logs in");
    let r = http
        .get(format!("{url}/v1/progress"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 401);
    for c in &a_cookies {
        assert_eq!(home(&http, &url, c).await, 303);
    }
    let (code, c) = login(&http, &url, &b).await;
    assert_eq!(code, 303);
    assert_eq!(home(&http, &url, &c.unwrap_or_default()).await, 200);
}
