//! Notices over a scripted clock that advances day by day through the campaign: reminders,
//! overdue and escalation each exactly once, nothing after the cause is fixed, webhook
//! delivery with signatures through failures, and agents catching up after being offline.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use common::{Agent, TestHub, milestone};
use ed25519_dalek::Signature;
use serde_json::Value;
use spacesync_hub::notices::Webhook;
use spacesync_hub::schedule::{self, WEBHOOK_SIGNATURE_HEADER};
use spacesync_shared::clock::Clock;
use spacesync_shared::wire::{self, Notice, NoticesPage, PATH_AGENT_NOTICES};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// Notices about the implementation plan (due 2018-11-15) per province: the rule names in
/// the order raised.
fn plan_rules(t: &TestHub) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut list = t.hub.notices.list(spacesync_hub::auth::Role::Ministry);
    list.reverse();
    for n in list {
        if n["deadline"] == "2018-11-15" {
            out.entry(n["subject"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(n["rule"].as_str().unwrap_or("").to_string());
        }
    }
    out
}

#[tokio::test]
async fn reminders_overdue_and_escalation_each_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = TestHub::open_at(dir.path(), at("2018-10-01T09:00:00+08:00"));
    let mut gd = Agent::new("gd-rrt", 1, "440000");
    let bj = Agent::new("bj-rrt", 2, "110000");
    t.register(&gd);
    t.register(&bj);

    // Day by day from 2018-11-01 to 2018-11-25 at 09:00 China time. Guangdong submits on
    // T−2 (2018-11-13); Beijing never does.
    let mut day = at("2018-11-01T09:00:00+08:00");
    while day <= at("2018-11-25T09:00:00+08:00") {
        t.clock.set(day);
        if day == at("2018-11-13T09:00:00+08:00") {
            gd.recorded_at = day;
            let batch = gd.batch(&[milestone("implementation_plan", "440000", "2018-11-13")]);
            let out = t.hub.ingest(batch).expect("ingest");
            assert_eq!(out.status, 200, "{:?}", out.response.refused);
        }
        // Several ticks a day: deduplication, not the tick rate, keeps notices single.
        for _ in 0..3 {
            schedule::tick(&t.hub).expect("tick");
        }
        day += Duration::days(1);
    }
    let rules = plan_rules(&t);
    assert_eq!(
        rules.get("440000").cloned().unwrap_or_default(),
        ["milestone_due_7d", "milestone_due_3d"]
    );
    assert_eq!(
        rules.get("110000").cloned().unwrap_or_default(),
        [
            "milestone_due_7d",
            "milestone_due_3d",
            "milestone_overdue",
            "milestone_escalated"
        ]
    );
    // The escalation went to the level above and says so.
    let list = t.hub.notices.list(spacesync_hub::auth::Role::Ministry);
    let esc = list
        .iter()
        .find(|n| {
            n["rule"] == "milestone_escalated"
                && n["subject"] == "110000"
                && n["deadline"] == "2018-11-15"
        })
        .expect("escalation");
    assert_eq!(esc["escalated"], true);
    assert!(
        esc["text"].as_str().unwrap_or("").contains("上报教育部"),
        "{esc}"
    );
    assert!(
        esc["text_en"].as_str().unwrap_or("").contains("ministry"),
        "{esc}"
    );
    // Each names its rule, the facts (the deadline) and what to do.
    for n in list.iter().filter(|n| n["deadline"] == "2018-11-15") {
        let text = n["text"].as_str().unwrap_or("");
        assert!(text.contains("2018年11月15日"), "{text}");
        assert!(text.contains("报送"), "{text}");
    }
    // A reminder on T−7 (2018-11-08) and T−3 (2018-11-12): the created dates say when.
    let created = |rule: &str, subject: &str| -> String {
        list.iter()
            .find(|n| n["rule"] == rule && n["subject"] == subject && n["deadline"] == "2018-11-15")
            .and_then(|n| n["created"].as_str())
            .map(|s| s[..10].to_string())
            .unwrap_or_default()
    };
    assert_eq!(created("milestone_due_7d", "110000"), "2018-11-08");
    assert_eq!(created("milestone_due_3d", "110000"), "2018-11-12");
    assert_eq!(created("milestone_overdue", "110000"), "2018-11-16");
    assert_eq!(created("milestone_escalated", "110000"), "2018-11-18");

    // An agent that was offline all along gets every notice for its scope when it
    // reconnects, in order, and its acknowledgement is tracked.
    let page = signed_get(&t, &bj, &format!("{PATH_AGENT_NOTICES}?after=0")).await;
    assert!(!page.notices.is_empty());
    assert!(
        page.notices
            .iter()
            .all(|n| n.subject.is_within(bj.scope) || n.addressee.is_within(bj.scope))
    );
    assert!(page.notices.windows(2).all(|w| w[0].id < w[1].id));
    let last = page.notices.last().map_or(0, |n| n.id);
    let again = signed_get(&t, &bj, &format!("{PATH_AGENT_NOTICES}?after={last}")).await;
    assert!(again.notices.is_empty());
    let ack = serde_json::to_vec(&wire::NoticeAck { through: last }).expect("json");
    let r = signed_send(&t, &bj, "POST", wire::PATH_AGENT_NOTICES_ACK, ack).await;
    assert_eq!(r, StatusCode::NO_CONTENT);
    let states: Vec<Value> = t
        .hub
        .notices
        .list(spacesync_hub::auth::Role::Province(bj.scope))
        .into_iter()
        .filter(|n| n["id"].as_u64().is_some_and(|id| id <= last))
        .collect();
    assert!(!states.is_empty());
    assert!(
        states.iter().all(|n| n["state"] == "acknowledged"),
        "{states:?}"
    );
}

async fn signed_send(
    t: &TestHub,
    a: &Agent,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> StatusCode {
    use tower::ServiceExt;
    let headers = wire::sign_request(
        &a.key,
        &a.id,
        method,
        path,
        t.clock.now(),
        rand_nonce(),
        &body,
    );
    let mut req = axum::http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .expect("request");
    t.app.clone().oneshot(req).await.expect("response").status()
}

async fn signed_get(t: &TestHub, a: &Agent, path: &str) -> NoticesPage {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let headers = wire::sign_request(&a.key, &a.id, "GET", path, t.clock.now(), rand_nonce(), b"");
    let mut req = axum::http::Request::builder().method("GET").uri(path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = t
        .app
        .clone()
        .oneshot(req.body(axum::body::Body::empty()).expect("request"))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("notices page")
}

fn rand_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).expect("random");
    n
}

#[tokio::test]
async fn webhooks_get_each_notice_once_signed_despite_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = TestHub::open_at(dir.path(), at("2018-11-16T09:00:00+08:00"));
    let bj = Agent::new("bj-rrt", 2, "110000");
    t.register(&bj);
    schedule::tick(&t.hub).expect("tick");
    let raised = t
        .hub
        .notices
        .list(spacesync_hub::auth::Role::Ministry)
        .len();
    assert!(raised > 0);

    // A receiver that refuses the first two attempts of every notice.
    #[derive(Default)]
    struct Receiver {
        attempts: BTreeMap<u64, u32>,
        accepted: Vec<Notice>,
    }
    let rx = Arc::new(Mutex::new(Receiver::default()));
    let hub_pub = t.hub.key.verifying_key();
    let rx2 = rx.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let rx = rx2.clone();
            async move {
                let sig = headers
                    .get(WEBHOOK_SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| STANDARD.decode(s).ok())
                    .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok());
                let Some(sig) = sig else {
                    return StatusCode::UNAUTHORIZED;
                };
                if hub_pub
                    .verify_strict(&body, &Signature::from_bytes(&sig))
                    .is_err()
                {
                    return StatusCode::UNAUTHORIZED;
                }
                let Ok(n) = serde_json::from_slice::<Notice>(&body) else {
                    return StatusCode::BAD_REQUEST;
                };
                let mut r = rx.lock().expect("lock");
                let a = r.attempts.entry(n.id).or_default();
                *a += 1;
                if *a <= 2 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                r.accepted.push(n);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let hooks = vec![Webhook {
        url: format!("http://{addr}/hook"),
        scope: None,
    }];
    let client = reqwest::Client::new();
    // Delivery rounds until every notice is accepted (bounded: backoff is capped and the
    // first retries come within seconds).
    for _ in 0..600 {
        schedule::deliver_webhooks(&t.hub, &client, &hooks).await;
        if rx.lock().expect("lock").accepted.len() >= raised {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A few more rounds must not deliver anything twice.
    for _ in 0..5 {
        schedule::deliver_webhooks(&t.hub, &client, &hooks).await;
    }
    server.abort();
    let r = rx.lock().expect("lock");
    let mut ids: Vec<u64> = r.accepted.iter().map(|n| n.id).collect();
    ids.sort_unstable();
    let expected: Vec<u64> = (1..=raised as u64).collect();
    assert_eq!(ids, expected, "each notice accepted exactly once");
    assert!(r.attempts.values().all(|a| *a == 3), "{:?}", r.attempts);
    let list = t.hub.notices.list(spacesync_hub::auth::Role::Ministry);
    assert!(list.iter().all(|n| n["state"] == "delivered"), "{list:?}");
}
