//! Notices over a scripted clock that advances day by day through the campaign: reminders,
//! overdue and escalation each exactly once, nothing after the cause is fixed, webhook
//! delivery with signatures through failures (verified as a receiver does: configured
//! key, signed timestamp, replays refused), webhook URLs kept from everyone but admins,
//! and agents catching up after being offline.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use common::{Agent, Backend, TestHub, milestone, store_dir};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde_json::Value;
use spacesync_hub::notices::Webhook;
use spacesync_hub::schedule::{self, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER};
use spacesync_shared::clock::Clock;
use spacesync_shared::wire::{self, Notice, NoticesPage, PATH_AGENT_NOTICES};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// The notices a role may read, as the API shows them (JSON).
fn listed(t: &TestHub, role: spacesync_hub::auth::Role) -> Vec<Value> {
    match serde_json::to_value(t.notices.list(role)) {
        Ok(Value::Array(list)) => list,
        other => panic!("the notice list is a JSON array: {other:?}"),
    }
}

/// Notices about the implementation plan (due 2018-11-15) per province: the rule names in
/// the order raised.
fn plan_rules(t: &TestHub) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut list = listed(t, spacesync_hub::auth::Role::Ministry);
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

async fn reminders_overdue_and_escalation_each_exactly_once(backend: Backend) {
    let dir = store_dir(backend);
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
            schedule::tick(&t.hub, &t.notices).expect("tick");
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
    let list = listed(&t, spacesync_hub::auth::Role::Ministry);
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
    let states: Vec<Value> = listed(&t, spacesync_hub::auth::Role::Province(bj.scope))
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
    serde_json::from_value(signed_get_json(t, a, path).await).expect("notices page")
}

/// [`signed_get`] as the raw JSON an agent receives.
async fn signed_get_json(t: &TestHub, a: &Agent, path: &str) -> Value {
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
    serde_json::from_slice(&body).expect("notices JSON")
}

fn rand_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).expect("random");
    n
}

/// The webhook key of the test hub (not the hub key: receipts and webhooks never share one).
fn webhook_key() -> SigningKey {
    SigningKey::from_bytes(&[0x57; 32])
}

/// How far from its clock a receiver accepts a delivery's timestamp.
const MAX_AGE_S: i64 = 300;

/// What a receiver does with a delivery, written from the documented format only (not the
/// hub's helper): the signature over `spacesync-webhook-v1\n<timestamp>\n<body>` with the
/// key it was configured with, and the timestamp within 5 minutes of its own clock.
/// No key is taken from the request.
fn receiver_accepts(
    key: &VerifyingKey,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), &'static str> {
    if headers.contains_key("x-spacesync-key") {
        return Err("the request offers a key of its own");
    }
    let ts = headers
        .get(WEBHOOK_TIMESTAMP_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or("no timestamp")?;
    let sig = headers
        .get(WEBHOOK_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| STANDARD.decode(s).ok())
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .ok_or("no signature")?;
    let mut message = format!("spacesync-webhook-v1\n{ts}\n").into_bytes();
    message.extend_from_slice(body);
    key.verify_strict(&message, &Signature::from_bytes(&sig))
        .map_err(|_| "bad signature")?;
    let ts: i64 = ts.parse().map_err(|_| "timestamp not a number")?;
    if (now.timestamp() - ts).abs() > MAX_AGE_S {
        return Err("stale timestamp");
    }
    Ok(())
}

/// One delivery as received: headers and body.
type Delivery = (HeaderMap, Bytes);

/// A webhook receiver on a loopback port that refuses the first `fail_first` attempts of
/// every notice, checks each delivery with [`receiver_accepts`] against `clock`, and keeps
/// what it accepted.
#[derive(Default)]
struct Receiver {
    attempts: BTreeMap<u64, u32>,
    accepted: Vec<(Notice, Delivery)>,
    refused: Vec<&'static str>,
}

async fn start_receiver(
    key: VerifyingKey,
    clock: Arc<spacesync_shared::clock::FixedClock>,
    fail_first: u32,
) -> (
    Arc<Mutex<Receiver>>,
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
) {
    let rx = Arc::new(Mutex::new(Receiver::default()));
    let rx2 = rx.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let rx = rx2.clone();
            let now = clock.now();
            async move {
                let mut r = rx.lock().expect("lock");
                if let Err(why) = receiver_accepts(&key, &headers, &body, now) {
                    r.refused.push(why);
                    return StatusCode::UNAUTHORIZED;
                }
                let Ok(n) = serde_json::from_slice::<Notice>(&body) else {
                    return StatusCode::BAD_REQUEST;
                };
                let a = r.attempts.entry(n.id).or_default();
                *a += 1;
                if *a <= fail_first {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                r.accepted.push((n, (headers, body)));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (rx, addr, server)
}

async fn webhooks_get_each_notice_once_signed_despite_failures(backend: Backend) {
    let dir = store_dir(backend);
    let t = TestHub::open_at(dir.path(), at("2018-11-16T09:00:00+08:00"));
    let bj = Agent::new("bj-rrt", 2, "110000");
    t.register(&bj);
    schedule::tick(&t.hub, &t.notices).expect("tick");
    let raised = t.notices.list(spacesync_hub::auth::Role::Ministry).len();
    assert!(raised > 0);

    // A receiver configured with the webhook key's public line, refusing the first two
    // attempts of every notice.
    let (rx, addr, server) =
        start_receiver(webhook_key().verifying_key(), t.clock.clone(), 2).await;
    let hooks = vec![Webhook {
        url: format!("http://{addr}/hook"),
        scope: None,
    }];
    let client = reqwest::Client::new();
    // Delivery rounds until every notice is accepted (bounded: backoff is capped and the
    // first retries come within seconds).
    for _ in 0..600 {
        schedule::deliver_webhooks(&t.hub, &t.notices, &client, &hooks, &webhook_key()).await;
        if rx.lock().expect("lock").accepted.len() >= raised {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A few more rounds must not deliver anything twice.
    for _ in 0..5 {
        schedule::deliver_webhooks(&t.hub, &t.notices, &client, &hooks, &webhook_key()).await;
    }
    server.abort();
    let r = rx.lock().expect("lock");
    assert!(r.refused.is_empty(), "receiver refused: {:?}", r.refused);
    let mut ids: Vec<u64> = r.accepted.iter().map(|(n, _)| n.id).collect();
    ids.sort_unstable();
    let expected: Vec<u64> = (1..=raised as u64).collect();
    assert_eq!(ids, expected, "each notice accepted exactly once");
    assert!(r.attempts.values().all(|a| *a == 3), "{:?}", r.attempts);
    // Signed with the webhook key, not the hub key that signs receipts and checkpoints.
    let (_, (headers, body)) = &r.accepted[0];
    assert_eq!(
        receiver_accepts(&t.hub.key.verifying_key(), headers, body, t.clock.now()),
        Err("bad signature")
    );
    let list = listed(&t, spacesync_hub::auth::Role::Ministry);
    assert!(list.iter().all(|n| n["state"] == "delivered"), "{list:?}");
}

/// The notice in `list` with this rule, subject and deadline.
fn find<'a>(list: &'a [Value], rule: &str, subject: &str, deadline: &str) -> &'a Value {
    list.iter()
        .find(|n| {
            n["rule"] == rule
                && n["subject"] == subject
                && (n["deadline"] == deadline || deadline.is_empty() && n["deadline"].is_null())
        })
        .unwrap_or_else(|| panic!("no {rule} notice for {subject} ({deadline}) in {list:?}"))
}

/// The facts a program acts on, as every channel carries them: a missing implementation
/// plan names its milestone, due date and days late; a pace notice its figures.
fn check_facts(channel: &str, list: &[Value]) {
    let overdue = find(list, "milestone_overdue", "110000", "2018-11-15");
    assert_eq!(
        overdue["milestone"], "implementation_plan",
        "{channel}: {overdue}"
    );
    assert_eq!(overdue["due"], "2018-11-15", "{channel}: {overdue}");
    assert_eq!(overdue["days_late"], 5, "{channel}: {overdue}");
    assert!(overdue.get("days_left").is_none(), "{channel}: {overdue}");
    let escalated = find(list, "milestone_escalated", "110000", "2018-11-15");
    assert_eq!(escalated["milestone"], "implementation_plan", "{channel}");
    assert_eq!(escalated["days_late"], 5, "{channel}");
    let pace = find(list, "behind_pace", "110000", "2018-12-31");
    assert!(pace.get("milestone").is_none(), "{channel}: {pace}");
    assert_eq!(pace["due"], "2018-12-31", "{channel}: {pace}");
    assert_eq!(pace["days_left"], 41, "{channel}: {pace}");
    assert_eq!(pace["reached"], 0, "{channel}: {pace}");
    // Beijing is the only unit with people on record, so it carries the whole target.
    assert_eq!(pace["target"], 10_000_000, "{channel}: {pace}");
    let expected = pace["expected"].as_u64().unwrap_or(0);
    assert!(expected > 0 && expected < 10_000_000, "{channel}: {pace}");
    // The prose states the same figures.
    let text = pace["text_en"].as_str().unwrap_or("");
    assert!(
        text.contains(&format!("{expected} expected")),
        "{channel}: {text}"
    );
}

async fn notices_carry_their_facts_for_programs_on_every_channel(backend: Backend) {
    let dir = store_dir(backend);
    let t = TestHub::open_at(dir.path(), at("2018-10-01T09:00:00+08:00"));
    let mut bj = Agent::new("bj-rrt", 2, "110000");
    t.register(&bj);
    bj.recorded_at = at("2018-10-02T10:00:00+08:00");
    t.clock.set(bj.recorded_at);
    let batch = bj.batch(&[
        serde_json::json!({"kind": "space_count", "region": "110101",
        "as_of": "2018-10-01", "spaces": {"teacher": 100, "student": 2_000},
        "population": {"teachers": 300, "students": 9_000}}),
    ]);
    let out = t.hub.ingest(batch).expect("ingest");
    assert_eq!(out.status, 200, "{:?}", out.response.refused);
    // Five days after the implementation plan was due (2018-11-15), none submitted.
    t.clock.set(at("2018-11-20T09:00:00+08:00"));
    schedule::tick(&t.hub, &t.notices).expect("tick");

    // GET /v1/notices.
    let ministry = t.token(spacesync_hub::auth::Role::Ministry);
    let r = t.get("/v1/notices", Some(&ministry)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let api = r.json()["notices"].as_array().cloned().unwrap_or_default();
    check_facts("GET /v1/notices", &api);

    // The signed agent pull, and what the typed client makes of it.
    let pulled = signed_get_json(&t, &bj, &format!("{PATH_AGENT_NOTICES}?after=0")).await;
    let pulled = pulled["notices"].as_array().cloned().unwrap_or_default();
    check_facts("agent pull", &pulled);
    let page = signed_get(&t, &bj, &format!("{PATH_AGENT_NOTICES}?after=0")).await;
    let typed_due = chrono::NaiveDate::from_ymd_opt(2018, 11, 15);
    let typed = page
        .notices
        .iter()
        .find(|n| n.rule == "milestone_overdue" && n.deadline == typed_due)
        .expect("overdue notice");
    assert_eq!(
        typed.facts.milestone.as_deref(),
        Some("implementation_plan")
    );
    assert_eq!(typed.facts.days_late, Some(5));

    // Webhook bodies.
    let (rx, addr, server) =
        start_receiver(webhook_key().verifying_key(), t.clock.clone(), 0).await;
    let hooks = vec![Webhook {
        url: format!("http://{addr}/hook"),
        scope: None,
    }];
    let client = reqwest::Client::new();
    for _ in 0..100 {
        schedule::deliver_webhooks(&t.hub, &t.notices, &client, &hooks, &webhook_key()).await;
        if rx.lock().expect("lock").accepted.len() >= api.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.abort();
    let bodies: Vec<Value> = rx
        .lock()
        .expect("lock")
        .accepted
        .iter()
        .map(|(_, (_, body))| serde_json::from_slice(body).expect("webhook JSON"))
        .collect();
    check_facts("webhook body", &bodies);
}

async fn plan_problems_carry_their_milestone_in_notices_and_bulletins(backend: Backend) {
    let dir = store_dir(backend);
    let t = TestHub::open_at(dir.path(), at("2018-10-01T09:00:00+08:00"));
    let mut bj = Agent::new("bj-rrt", 2, "110000");
    t.register(&bj);
    // A plan covering one year (two to three are required), two days late.
    bj.recorded_at = at("2018-11-17T10:00:00+08:00");
    t.clock.set(bj.recorded_at);
    let mut plan = milestone("implementation_plan", "110000", "2018-11-17");
    plan["details"] = serde_json::json!({ "years": { "2018": ["110101", "110102", "110105"] } });
    let out = t.hub.ingest(bj.batch(&[plan])).expect("ingest");
    assert_eq!(out.status, 200, "{:?}", out.response.refused);
    t.clock.set(at("2018-11-20T09:00:00+08:00"));
    schedule::tick(&t.hub, &t.notices).expect("tick");

    let list = listed(&t, spacesync_hub::auth::Role::Ministry);
    let n = find(&list, "plan_incomplete", "110000", "");
    assert_eq!(n["milestone"], "implementation_plan", "{n}");
    assert_eq!(n["due"], "2018-11-15", "{n}");
    assert_eq!(n["days_late"], 2, "{n}");
    assert_eq!(
        n["problems"],
        serde_json::json!([{ "problem": "years", "covered": 1, "min": 2, "max": 3 }]),
        "{n}"
    );
    // The same over the API, and in a province's own view.
    for role in [
        spacesync_hub::auth::Role::Ministry,
        spacesync_hub::auth::Role::Province(bj.scope),
    ] {
        let token = t.token(role);
        let r = t.get("/v1/notices", Some(&token)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let api = r.json()["notices"].as_array().cloned().unwrap_or_default();
        let n = find(&api, "plan_incomplete", "110000", "");
        assert_eq!(n["milestone"], "implementation_plan", "{role:?}: {n}");
        assert_eq!(n["due"], "2018-11-15", "{role:?}: {n}");
        assert_eq!(n["days_late"], 2, "{role:?}: {n}");
    }

    let doc = spacesync_hub::bulletin::issue(&t.hub, None, &t.notices.log()).expect("issue");
    // The bulletin's notice log carries the same facts.
    let logged = doc["notices"].as_array().cloned().unwrap_or_default();
    let n = find(&logged, "plan_incomplete", "110000", "");
    assert_eq!(n["milestone"], "implementation_plan", "{n}");
    assert_eq!(n["due"], "2018-11-15", "{n}");
    let item = doc["plan_problems"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["code"] == "110000"))
        .unwrap_or_else(|| panic!("no plan problem for 110000: {doc}"));
    assert_eq!(item["milestone"], "implementation_plan", "{item}");
    assert_eq!(item["due"], "2018-11-15", "{item}");
    assert_eq!(item["days_late"], 2, "{item}");
    let reasons = doc["lagging"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["code"] == "110000"))
        .map(|l| l["reasons"].clone())
        .unwrap_or_default();
    let plan = reasons
        .as_array()
        .and_then(|r| r.iter().find(|r| r["reason"] == "plan_incomplete"))
        .unwrap_or_else(|| panic!("no plan_incomplete reason: {reasons}"));
    assert_eq!(plan["milestone"], "implementation_plan", "{plan}");
    assert_eq!(plan["due"], "2018-11-15", "{plan}");
    let late = reasons
        .as_array()
        .and_then(|r| r.iter().find(|r| r["reason"] == "milestone_late"))
        .unwrap_or_else(|| panic!("no milestone_late reason: {reasons}"));
    assert_eq!(late["milestone"], "implementation_plan", "{late}");
    assert_eq!(late["days_late"], 2, "{late}");
    assert_eq!(late["submitted_on"], "2018-11-17", "{late}");
    let campaign = spacesync_shared::Campaign::builtin_2018();
    spacesync_hub::bulletin::verify(
        t.hub.store.as_ref(),
        &campaign,
        &t.hub.key.verifying_key(),
        common::ORIGIN,
        &doc,
    )
    .expect("the bulletin verifies");
}

async fn a_replayed_webhook_delivery_is_refused_by_its_signed_timestamp(backend: Backend) {
    let dir = store_dir(backend);
    let t = TestHub::open_at(dir.path(), at("2018-11-16T09:00:00+08:00"));
    let bj = Agent::new("bj-rrt", 2, "110000");
    t.register(&bj);
    schedule::tick(&t.hub, &t.notices).expect("tick");
    let (rx, addr, server) =
        start_receiver(webhook_key().verifying_key(), t.clock.clone(), 0).await;
    let url = format!("http://{addr}/hook");
    let hooks = vec![Webhook {
        url: url.clone(),
        scope: None,
    }];
    let client = reqwest::Client::new();
    schedule::deliver_webhooks(&t.hub, &t.notices, &client, &hooks, &webhook_key()).await;
    let (headers, body) = {
        let r = rx.lock().expect("lock");
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        r.accepted.first().expect("a delivery").1.clone()
    };
    let accepted = rx.lock().expect("lock").accepted.len();

    // An attacker who captured that delivery sends it again an hour later, byte for byte.
    t.clock.set(t.clock.now() + Duration::hours(1));
    let replay = |ts: Option<String>| {
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in &headers {
            if *k == WEBHOOK_SIGNATURE_HEADER || (*k == WEBHOOK_TIMESTAMP_HEADER && ts.is_none()) {
                req = req.header(k, v);
            }
        }
        if let Some(ts) = ts {
            req = req.header(WEBHOOK_TIMESTAMP_HEADER, ts);
        }
        req.send()
    };
    let r = replay(None).await.expect("replay");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A fresh timestamp on the captured signature does not verify: the signature binds it.
    let r = replay(Some(t.clock.now().timestamp().to_string()))
        .await
        .expect("replay");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    server.abort();
    let r = rx.lock().expect("lock");
    assert_eq!(r.refused, ["stale timestamp", "bad signature"]);
    assert_eq!(
        r.accepted.len(),
        accepted,
        "nothing accepted from the replays"
    );
}

async fn webhook_urls_are_shown_to_admins_only(backend: Backend) {
    use spacesync_hub::auth::Role;
    use std::io::Write;

    /// Log lines written while the test runs.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Captured::default();
    let sink = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_max_level(tracing::Level::DEBUG)
            .finish(),
    );

    let dir = store_dir(backend);
    let t = TestHub::open_at(dir.path(), at("2018-11-16T09:00:00+08:00"));
    let bj = Agent::new("bj-rrt", 2, "110000");
    t.register(&bj);
    schedule::tick(&t.hub, &t.notices).expect("tick");
    const SECRET: &str = "s3cr3t-api-key-123";
    // One hook that accepts after a refusal, one nobody listens on (connection refused:
    // the HTTP client's own error names the URL).
    let (rx, addr, server) =
        start_receiver(webhook_key().verifying_key(), t.clock.clone(), 1).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let hooks = vec![
        Webhook {
            url: format!("http://{addr}/hook?apikey={SECRET}"),
            scope: None,
        },
        Webhook {
            url: format!("http://user:{SECRET}@{dead}/hook/{SECRET}?apikey={SECRET}"),
            scope: None,
        },
    ];
    let client = reqwest::Client::new();
    for _ in 0..200 {
        schedule::deliver_webhooks(&t.hub, &t.notices, &client, &hooks, &webhook_key()).await;
        let list = listed(&t, Role::Ministry);
        if rx.lock().expect("lock").accepted.len() >= list.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.abort();
    let ids: Vec<String> = hooks.iter().map(Webhook::id).collect();
    assert!(
        ids[0].starts_with(&format!("http://{addr}/… (")),
        "{}",
        ids[0]
    );
    assert!(
        ids[1].starts_with(&format!("http://{dead}/… (")),
        "{}",
        ids[1]
    );
    assert!(!format!("{hooks:?}").contains(SECRET), "Debug of a webhook");

    // Admin: the URLs. Ministry and province tokens: the ids only.
    let admin = t.get_json("/v1/notices").await.to_string();
    assert!(admin.contains(SECRET), "admins see the URLs");
    for role in [
        Role::Ministry,
        Role::Province("110000".parse().expect("code")),
    ] {
        let token = t.token(role);
        let r = t.get("/v1/notices", Some(&token)).await;
        assert_eq!(r.status, StatusCode::OK);
        let text = r.text();
        assert!(!text.contains(SECRET), "{role}: {text}");
        assert!(
            text.contains(&ids[0]) && text.contains(&ids[1]),
            "{role}: {text}"
        );
        assert!(
            text.contains("\"last_error\""),
            "{role}: failures are still reported"
        );
    }
    // The dashboard's notice page.
    let page = t.get("/notices?lang=en", Some(&t.admin.clone())).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.text().contains(SECRET));

    // Bulletins, every format, and they still verify against the log.
    let doc = spacesync_hub::bulletin::issue(&t.hub, None, &t.notices.log()).expect("issue");
    let n = doc["number"].as_u64().expect("number");
    assert!(doc["notices"].to_string().contains(&ids[1]));
    let ministry = t.token(Role::Ministry);
    for (f, lang) in [
        ("json", "zh"),
        ("html", "zh"),
        ("html", "en"),
        ("md", "en"),
        ("csv", "zh"),
    ] {
        let r = t
            .get(
                &format!("/v1/bulletins/{n}.{f}?lang={lang}"),
                Some(&ministry),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{f}");
        assert!(!r.text().contains(SECRET), "bulletin {n}.{f}");
    }
    let served: Value = t
        .get(&format!("/v1/bulletins/{n}.json"), Some(&ministry))
        .await
        .json();
    let campaign = spacesync_shared::Campaign::builtin_2018();
    spacesync_hub::bulletin::verify(
        t.hub.store.as_ref(),
        &campaign,
        &t.hub.key.verifying_key(),
        common::ORIGIN,
        &served,
    )
    .expect("the bulletin verifies");

    // Agents' pulls carry the notice only.
    let pulled = serde_json::to_string(
        &t.notices
            .fetch(
                t.hub.store.as_ref(),
                &bj.id,
                bj.scope,
                0,
                100,
                t.clock.now(),
            )
            .expect("fetch"),
    )
    .expect("json");
    assert!(!pulled.contains(SECRET) && !pulled.contains("webhook"));

    // The logs: failures were logged (with the id), the URL never.
    drop(_guard);
    let logs = String::from_utf8_lossy(&logs.0.lock().expect("lock")).to_string();
    assert!(logs.contains("Webhook delivery failed"), "{logs}");
    assert!(logs.contains(&ids[1]), "{logs}");
    assert!(!logs.contains(SECRET), "{logs}");

    // Reopened from the store, the same.
    drop(t);
    let t = TestHub::open_at(dir.path(), at("2018-11-16T09:00:00+08:00"));
    assert!(
        !serde_json::to_string(&t.notices.list(Role::Ministry))
            .expect("json")
            .contains(SECRET)
    );
    assert!(
        serde_json::to_string(&t.notices.list(Role::Admin))
            .expect("json")
            .contains(SECRET)
    );
}

backends!(async reminders_overdue_and_escalation_each_exactly_once, webhooks_get_each_notice_once_signed_despite_failures, notices_carry_their_facts_for_programs_on_every_channel, plan_problems_carry_their_milestone_in_notices_and_bulletins, a_replayed_webhook_delivery_is_refused_by_its_signed_timestamp, webhook_urls_are_shown_to_admins_only);
