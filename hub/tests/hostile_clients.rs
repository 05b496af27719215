//! Hostile clients at the hub's edge, each attacking as an attacker would, each checked for
//! both the refusal and that nothing else changed:
//! - a flood of junk naming a real source spends the attacker's address budget, never the
//!   source's: the attacker gets 429, the source keeps delivering (also from the
//!   attacker's own address, as behind a NAT or the TLS proxy), over the router and over
//!   a real socket;
//! - a captured signed request replays neither before nor after a hub restart;
//! - `recorded_at` before the campaign's start (less the slack) is refused;
//! - `/metrics` needs an admin token, or the separate metrics listener;
//! - a refusal reason quoting an attacker's JSON key cannot forge a log line.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use chrono::Duration;
use common::*;
use ed25519_dalek::SigningKey;
use serde_json::json;
use spacesync_hub::auth::Role;
use spacesync_hub::http::{self as hubhttp, AppState};
use spacesync_hub::ingest::{RECORDED_AT_SLACK, earliest_recorded_at};
use spacesync_shared::entry::ENTRY_PAYLOAD_TYPE;
use spacesync_shared::wire::{
    self, IngestBatch, IngestResponse, PATH_AGENT_HEAD, RefusalCode, SourceHead,
};
use spacesync_shared::{Campaign, Envelope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The attacker's address and the real agent's.
const ATTACKER: &str = "203.0.113.9";
const AGENT: &str = "198.51.100.20";

/// `req` as if it came over a connection from `ip`.
fn from(ip: &str, mut req: Request<Body>) -> Request<Body> {
    let addr = SocketAddr::new(ip.parse().expect("ip"), 40_000);
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

fn batch_req(batch: &IngestBatch) -> Request<Body> {
    ingest_req(
        serde_json::to_vec(batch).expect("json"),
        Some("application/json"),
        None,
    )
}

/// A signed `GET /v1/agent/head` by `a` at `at`.
fn head_req(
    a: &Agent,
    key: &SigningKey,
    at: chrono::DateTime<chrono::Utc>,
    nonce: u8,
) -> Request<Body> {
    let mut b = Request::get(PATH_AGENT_HEAD);
    for (k, v) in wire::sign_request(key, &a.id, "GET", PATH_AGENT_HEAD, at, [nonce; 16], b"") {
        b = b.header(k, v);
    }
    b.body(Body::empty()).expect("request")
}

/// The four kinds of junk an attacker who knows only the source's name can send.
fn junk(i: usize, victim: &Agent, attacker_key: &SigningKey) -> Request<Body> {
    match i % 4 {
        // A well-formed batch naming the victim, signed by the attacker's key.
        0 => batch_req(&IngestBatch {
            source: victim.id.clone(),
            entries: vec![
                victim
                    .entry(&activity("110105", "2018-11-12", "伪造"))
                    .sign(attacker_key),
            ],
        }),
        // Not JSON at all.
        1 => ingest_req(
            format!("{{\"source\":\"{}\",\"entries\":[", victim.id).into_bytes(),
            Some("application/json"),
            None,
        ),
        // Unsigned: an envelope with no signature.
        2 => batch_req(&IngestBatch {
            source: victim.id.clone(),
            entries: vec![Envelope {
                payload_type: ENTRY_PAYLOAD_TYPE.into(),
                payload: victim
                    .entry(&activity("110105", "2018-11-12", "伪造"))
                    .to_payload(),
                signatures: vec![],
            }],
        }),
        // A signed pull in the victim's name, signed by the attacker's key.
        _ => head_req(victim, attacker_key, t0(), 100 + (i % 100) as u8),
    }
}

fn ingest_reply(r: &Reply) -> IngestResponse {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    serde_json::from_slice(&r.body).expect("ingest response")
}

fn assert_throttled(r: &Reply, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        r.text()
    );
    assert_eq!(r.json()["code"], "rate_limited", "{what}");
    assert!(
        r.headers.contains_key(header::RETRY_AFTER),
        "{what}: no Retry-After"
    );
}

/// Tight budgets so a short flood exhausts them: a source may make 4 requests, an address
/// 5 refused ones, and neither refills during the test.
fn tight_app(th: &TestHub) -> Router {
    hubhttp::app(
        AppState::new(th.hub.clone(), th.notices.clone(), 1e-6, 4.0).with_address_limit(1e-6, 5.0),
    )
}

#[tokio::test]
async fn a_flood_naming_a_real_source_spends_only_the_attackers_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut bj = Agent::new("bj-rrt", 2, "110000");
    th.register(&bj);
    let app = tight_app(&th);
    let attacker_key = SigningKey::from_bytes(&[0xee; 32]);

    // 1. The flood: the first 5 are judged (and refused) in full, the rest get 429.
    for i in 0..120 {
        let r = send(&app, from(ATTACKER, junk(i, &bj, &attacker_key))).await;
        if i < 5 {
            assert!(
                [400, 401, 422].contains(&r.status.as_u16()),
                "junk {i}: {} {}",
                r.status,
                r.text()
            );
        } else {
            assert_throttled(&r, &format!("junk {i}"));
        }
    }
    assert_eq!(th.source_leaves(), 0, "the flood appended nothing");
    assert_eq!(th.hub.head(&bj.id).held_through, 0);

    // 2. The real agent, from its own address: its whole budget is intact.
    let first = bj.batch(&[teachers("110105", "1111010501", "2018-11-01", 70)]);
    let resp = ingest_reply(&send(&app, from(AGENT, batch_req(&first))).await);
    assert_eq!(resp.held_through, 1);

    // 3. The attacker replays the captured batch: that spends only the source's resend
    //    budget (4), never its budget for new entries, and appends nothing.
    for i in 0..8 {
        let r = send(&app, from(ATTACKER, batch_req(&first))).await;
        if i < 4 {
            assert_eq!(ingest_reply(&r).receipts, resp.receipts, "replay {i}");
        } else {
            assert_throttled(&r, &format!("replay {i}"));
            assert!(
                r.text().contains("bj-rrt is sending too fast"),
                "{}",
                r.text()
            );
        }
    }
    assert_eq!(th.source_leaves(), 1);

    // 4. The agent behind the attacker's address (a NAT, the TLS proxy): the address is
    //    out of budget, but a batch and a signed pull that prove the source get through.
    let second = bj.batch(&[teachers("110105", "1111010501", "2018-11-02", 71)]);
    let resp = ingest_reply(&send(&app, from(ATTACKER, batch_req(&second))).await);
    assert_eq!(resp.held_through, 2);
    let r = send(&app, from(ATTACKER, head_req(&bj, &bj.key, t0(), 1))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h: SourceHead = serde_json::from_slice(&r.body).expect("head");
    assert_eq!(h.held_through, 2);

    // 5. The fourth request from the source is its last; the fifth is its own excess.
    let third = bj.batch(&[teachers("110105", "1111010501", "2018-11-03", 72)]);
    assert_eq!(
        ingest_reply(&send(&app, from(AGENT, batch_req(&third))).await).held_through,
        3
    );
    let fourth = bj.batch(&[teachers("110105", "1111010501", "2018-11-04", 73)]);
    let r = send(&app, from(AGENT, batch_req(&fourth))).await;
    assert_throttled(&r, "the source's fifth request");
    assert!(
        r.text().contains("source bj-rrt is sending too fast"),
        "{}",
        r.text()
    );
    assert_eq!(th.source_leaves(), 3, "exactly the agent's three entries");

    // 6. The attacker is still refused, and metrics show who was throttled.
    assert_throttled(
        &send(&app, from(ATTACKER, junk(0, &bj, &attacker_key))).await,
        "junk after",
    );
    let m = send(&app, get_req("/metrics", Some(&th.admin))).await;
    assert_eq!(m.status, 200);
    assert!(
        m.text()
            .contains("spacesync_hub_throttled_total{budget=\"source\"} 5"),
        "{}",
        m.text()
    );
}

#[tokio::test]
async fn unauthenticated_traffic_from_many_addresses_keeps_the_table_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let bj = Agent::new("bj-rrt", 2, "110000");
    th.register(&bj);
    let state =
        AppState::new(th.hub.clone(), th.notices.clone(), 1e-6, 4.0).with_address_limit(1e-6, 1.0);
    let app = hubhttp::app(state.clone());
    let key = SigningKey::from_bytes(&[0xee; 32]);
    let n = hubhttp::MAX_TRACKED_ADDRESSES + 500;
    for i in 0..n {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let r = send(&app, from(&ip, junk(1, &bj, &key))).await;
        assert_eq!(r.status, 400, "{}", r.text());
    }
    assert!(state.addr_limiter.tracked() <= hubhttp::MAX_TRACKED_ADDRESSES);
    // IPv6 addresses of one /64 share one budget.
    let r = send(&app, from("2001:db8:1:2::1", junk(1, &bj, &key))).await;
    assert_eq!(r.status, 400);
    assert_throttled(
        &send(&app, from("2001:db8:1:2:ffff::9", junk(1, &bj, &key))).await,
        "same /64",
    );
    assert_eq!(th.source_leaves(), 0);
}

/// One HTTP/1.1 request over a fresh connection from `local` (an address on loopback).
async fn raw(hub: SocketAddr, local: &str, head: &str, body: &[u8]) -> (u16, String) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{local}:0").parse().expect("addr"))
        .expect("bind the client address");
    let mut s = sock.connect(hub).await.expect("connect");
    let req = format!(
        "{head}\r\nHost: {hub}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn over_a_real_socket_the_flooding_address_gets_429_and_the_source_delivers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut bj = Agent::new("bj-rrt", 2, "110000");
    th.register(&bj);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state =
        AppState::new(th.hub.clone(), th.notices.clone(), 1e-6, 4.0).with_address_limit(1e-6, 5.0);
    let server = tokio::spawn(hubhttp::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let post = "POST /v1/ingest HTTP/1.1\r\nContent-Type: application/json";
    let junk_body = serde_json::to_vec(&IngestBatch {
        source: bj.id.clone(),
        entries: vec![
            bj.entry(&activity("110105", "2018-11-12", "伪造"))
                .sign(&SigningKey::from_bytes(&[0xee; 32])),
        ],
    })
    .expect("json");
    // The attacker on 127.0.0.2, the agent on 127.0.0.1.
    let mut got = Vec::new();
    for _ in 0..12 {
        got.push(raw(addr, "127.0.0.2", post, &junk_body).await.0);
    }
    assert_eq!(&got[..5], &[422; 5], "{got:?}");
    assert!(got[5..].iter().all(|s| *s == 429), "{got:?}");
    let good = serde_json::to_vec(&bj.batch(&[teachers("110105", "1111010501", "2018-11-01", 70)]))
        .expect("json");
    let (status, text) = raw(addr, "127.0.0.1", post, &good).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(th.source_leaves(), 1);
    let _ = stop.send(());
    server.await.expect("join").expect("serve");
}

#[tokio::test]
async fn a_captured_signed_request_is_refused_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gd = Agent::new("gd-a", 1, "440000");
    let captured = {
        let th = TestHub::open(dir.path());
        th.register(&gd);
        th.ingest_ok(&gd.batch(&[activity("440100", "2018-11-02", "培训")]))
            .await;
        let r = th.send(head_req(&gd, &gd.key, t0(), 7)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let again = th.send(head_req(&gd, &gd.key, t0(), 7)).await;
        assert_eq!(
            again.status,
            401,
            "replay before the restart: {}",
            again.text()
        );
        head_req(&gd, &gd.key, t0(), 7)
    };
    // The hub restarts over the same store: the nonce was flushed before the answer.
    let th = TestHub::open(dir.path());
    let (log, head) = (th.source_leaves(), th.hub.head(&gd.id));
    let r = th.send(captured).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("already used"), "{}", r.text());
    // A fresh request from the agent is served; nothing changed.
    let r = th.send(head_req(&gd, &gd.key, t0(), 8)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(head.held_through, 1);
    assert_eq!((th.source_leaves(), th.hub.head(&gd.id)), (log, head));
}

#[tokio::test]
async fn recorded_at_before_the_campaign_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    th.ingest_ok(&gd.batch(&[activity("440100", "2018-11-02", "培训")]))
        .await;
    let earliest = earliest_recorded_at(&Campaign::builtin_2018());
    // 2018-10-01 00:00 +08:00, less 30 days.
    assert_eq!(earliest.to_rfc3339(), "2018-08-31T16:00:00+00:00");
    assert_eq!(RECORDED_AT_SLACK, Duration::days(30));
    let rec = activity("440100", "2018-11-12", "展示");
    for (name, at) in [
        ("1970", chrono::DateTime::UNIX_EPOCH),
        (
            "a millisecond too early",
            earliest - Duration::milliseconds(1),
        ),
    ] {
        let before = (
            th.source_leaves(),
            th.hub.head(&gd.id),
            th.get_json("/v1/progress").await,
        );
        let mut e = gd.entry(&rec);
        e.recorded_at = at;
        let r = th
            .ingest(&IngestBatch {
                source: gd.id.clone(),
                entries: vec![e.sign(&gd.key)],
            })
            .await;
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        let resp: IngestResponse = serde_json::from_slice(&r.body).expect("response");
        assert_eq!(resp.refused.len(), 1, "{name}");
        assert_eq!(resp.refused[0].code, RefusalCode::Invalid, "{name}");
        assert!(
            resp.refused[0]
                .reason
                .contains("before the campaign started"),
            "{name}: {}",
            resp.refused[0].reason
        );
        let after = (
            th.source_leaves(),
            th.hub.head(&gd.id),
            th.get_json("/v1/progress").await,
        );
        assert_eq!(after, before, "{name}: something changed");
    }
    // At the bound itself the entry is accepted.
    gd.recorded_at = earliest;
    assert_eq!(th.ingest_ok(&gd.batch(&[rec])).await.held_through, 2);
}

#[tokio::test]
async fn metrics_need_an_admin_token_or_the_metrics_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    th.ingest_ok(&gd.batch(&[activity("440100", "2018-11-02", "培训")]))
        .await;
    let ministry = th.token(Role::Ministry);
    let province = th.token("province:440000".parse().expect("role"));
    let log = th.source_leaves();
    let r = th.get("/metrics", None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!r.text().contains("gd-a"));
    for t in [&ministry, &province, &"sst_not-a-token".to_string()] {
        let r = th.get("/metrics", Some(t)).await;
        assert!([401, 403].contains(&r.status.as_u16()), "{}", r.text());
        assert!(!r.text().contains("gd-a"), "{}", r.text());
    }
    let r = th.get("/metrics", Some(&th.admin.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text()
            .contains("spacesync_hub_source_head_seq{source=\"gd-a\"} 1"),
        "{}",
        r.text()
    );
    // The separate listener's router answers without a token, and serves nothing else.
    let m = hubhttp::metrics_app(AppState::new(th.hub.clone(), th.notices.clone(), 1e9, 1e9));
    let r = send(&m, get_req("/metrics", None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        // One registry entry (`register`) and the entry.
        r.text().contains("spacesync_hub_log_size 2"),
        "{}",
        r.text()
    );
    assert_eq!(send(&m, get_req("/v1/sources", None)).await.status, 404);
    assert_eq!(th.source_leaves(), log);
}

/// Captures what the hub logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_refusal_quoting_an_attackers_key_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let forged = "2026-12-02T00:00:00Z  INFO forged";
    let payload = json!({
        "source": "gd-a", "seq": 1, "prev": gd.prev, "recorded_at": "2018-11-20T01:00:00.000Z",
        "campaign": "2018",
        "record": { "kind": "activity", "region": "440100", "date": "2018-11-02",
                    "category": "training", "title": "培训", "participants": 3,
                    format!("x\n{forged}\r\n{forged}"): 1 }
    });
    let env = Envelope::sign(
        &gd.key,
        ENTRY_PAYLOAD_TYPE,
        serde_json::to_vec(&payload).expect("json"),
    );
    let buf = Captured::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, || {
        th.hub.ingest(IngestBatch {
            source: gd.id.clone(),
            entries: vec![env],
        })
    })
    .expect("ingest answers");
    assert_eq!(out.status, 422);
    assert!(
        out.response.refused[0].reason.contains(forged),
        "the answer quotes the key: {:?}",
        out.response.refused[0].reason
    );
    let log = String::from_utf8_lossy(&buf.0.lock().expect("log")).into_owned();
    assert!(log.contains("Refused an entry"), "{log}");
    for line in log.lines() {
        assert!(
            !line.trim_start().starts_with(forged),
            "forged line in:\n{log}"
        );
    }
    assert_eq!(log.lines().count(), 1, "one refusal, one line:\n{log}");
    assert_eq!(th.source_leaves(), 0);
}

/// A captured genuine entry repeated a thousand times in one batch is refused before any
/// signature is checked, and nothing changes.
#[tokio::test]
async fn a_batch_repeating_one_entry_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let hub = TestHub::open(dir.path());
    let mut agent = Agent::new("gd-rrt", 31, "440000");
    hub.register(&agent);
    let first = agent.batch(&[teachers("440106", "4401060001", "2018-11-20", 5)]);
    hub.ingest_ok(&first).await;
    let size = hub.log_size();
    let repeated = spacesync_shared::wire::IngestBatch {
        source: first.source.clone(),
        entries: vec![first.entries[0].clone(); 1000],
    };
    let r = hub.ingest(&repeated).await;
    assert_eq!(
        r.status,
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        r.text()
    );
    assert!(r.text().contains("repeats seq 1"), "{}", r.text());
    assert_eq!(hub.log_size(), size);
    // Interleaved repeats too: [2, 3, 2, 3] names the first repeat.
    let two = agent.sign_next(&teachers("440106", "4401060002", "2018-11-20", 6));
    let three = agent.sign_next(&teachers("440106", "4401060003", "2018-11-20", 7));
    let r = hub
        .ingest(&spacesync_shared::wire::IngestBatch {
            source: first.source.clone(),
            entries: vec![two.clone(), three.clone(), two, three],
        })
        .await;
    assert_eq!(
        r.status,
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("entry 2 of the batch repeats seq 2"),
        "{}",
        r.text()
    );
    assert_eq!(hub.log_size(), size);
}

/// Half-sent ingest bodies cannot add up past the hub-wide body budget: while one client
/// holds most of it, another body is answered 503 with Retry-After at once; when the
/// first client goes, the budget comes back.
#[tokio::test]
async fn unfinished_bodies_cannot_hold_more_than_the_body_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut state =
        AppState::new(th.hub.clone(), th.notices.clone(), 1e9, 1e9).with_address_limit(1e9, 1e9);
    // A 64 KiB budget instead of 256 MiB, so the test stays small.
    state.body_budget = Arc::new(tokio::sync::Semaphore::new(64));
    let server = tokio::spawn(hubhttp::serve(listener, state, async {
        let _ = stopped.await;
    }));
    // The holder: a body announced as 1 MB, of which 48 KiB are sent, then nothing.
    let mut holder = tokio::net::TcpStream::connect(addr).await.expect("connect");
    holder
        .write_all(
            b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
        )
        .await
        .expect("write");
    holder.write_all(&[b' '; 48 * 1024]).await.expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let post = "POST /v1/ingest HTTP/1.1\r\nContent-Type: application/json";
    let body = vec![b' '; 32 * 1024];
    let (status, text) = raw(addr, "127.0.0.3", post, &body).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("too many batches at once"), "{text}");
    drop(holder);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The budget is back: the same body is now read and judged (it is not a batch).
    let (status, text) = raw(addr, "127.0.0.3", post, &body).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(th.log_size(), 0);
    let _ = stop.send(());
    let _ = server.await;
}
