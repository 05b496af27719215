//! Delivery from the real agent binary to the in-process fake hub: hub down, flaky hub,
//! full buffer, permanent refusals, notices, retention.
//!
//! The check is Jepsen's: every write has a unique title; after the run
//! `lost = acknowledged − held by the hub` and `unexpected = held − attempted` must be
//! empty, with no duplicates and seqs 1..=n in order.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use spacesync_shared::wire::NoticeFacts;
use spacesync_tests::agent_fakehub::{FakeHub, Faults};
use spacesync_tests::agent_harness::{AgentProc, activity, stored_envelopes, titles, wait_for};

/// Posts `n` batches of `per` records titled `<prefix>-<i>-<j>`; returns the titles acknowledged.
async fn post_batches(agent: &AgentProc, prefix: &str, n: usize, per: usize) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0..n {
        let batch: Vec<String> = (0..per).map(|j| format!("{prefix}-{i}-{j}")).collect();
        let body = batch
            .iter()
            .map(|t| activity(t))
            .collect::<Vec<_>>()
            .join("\n");
        let (s, _, v) = agent.post(&body, "application/x-ndjson").await;
        assert_eq!(s, 200, "{v}");
        acked.extend(batch);
    }
    acked
}

/// Checks that the hub holds exactly `acked`, in seq order 1..=n, once each, and that it
/// equals the agent's chain.
fn check_exactly_once(
    hub: &FakeHub,
    agent_entries: &[spacesync_shared::Envelope],
    acked: &[String],
) {
    let held = titles(&hub.entries("gd-rrt"));
    let seqs: Vec<u64> = held.iter().map(|h| h.0).collect();
    let expect: Vec<u64> = (1..=held.len() as u64).collect();
    assert_eq!(seqs, expect, "hub seqs are not 1..=n");
    let held_titles: Vec<&String> = held.iter().map(|h| &h.1).collect();
    let set: BTreeSet<&String> = held_titles.iter().copied().collect();
    assert_eq!(set.len(), held_titles.len(), "duplicates at the hub");
    let acked_set: BTreeSet<&String> = acked.iter().collect();
    let lost: Vec<_> = acked_set.difference(&set).collect();
    let unexpected: Vec<_> = set.difference(&acked_set).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(unexpected.is_empty(), "unexpected: {unexpected:?}");
    let local: Vec<_> = agent_entries.iter().map(|e| e.payload_hash()).collect();
    let remote: Vec<_> = hub
        .entries("gd-rrt")
        .iter()
        .map(|e| e.payload_hash())
        .collect();
    assert_eq!(local, remote, "hub and agent chains differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_hub_down_entries_wait_and_drain_in_order_when_it_returns() {
    let mut hub = FakeHub::down(1).await;
    let mut agent = AgentProc::init(&hub.url(), |_| {});
    hub.register("gd-rrt", &agent.key_line, "440000");
    agent.start().await;
    let acked = post_batches(&agent, "down", 20, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = agent.status().await;
    assert_eq!(
        (st["acked_seq"].clone(), st["buffered"].clone()),
        (Value::from(0), Value::from(100)),
        "{st}"
    );
    assert_eq!(st["hub_reachable"], false, "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot reach the hub"),
        "{st}"
    );
    assert!(st["oldest_unsent"]["seq"] == 1, "{st}");

    hub.restart().await;
    agent.wait_delivered(100, Duration::from_secs(30)).await;
    let st = agent.status().await;
    assert_eq!(
        (st["buffered"].clone(), st["last_result"].clone()),
        (Value::from(0), Value::from("ok")),
        "{st}"
    );
    agent.stop();
    check_exactly_once(&hub, &stored_envelopes(&agent.data()), &acked);
    // The trusted-on-first-use hub key checks every stored receipt.
    let out = agent.cli(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("and 100 receipts"), "{text}");
    assert!(agent.log().contains("Trusting the hub key on first use"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_hub_and_an_agent_crash_still_deliver_everything_exactly_once() {
    let hub = FakeHub::start(7).await;
    let key = hub.key_line();
    let mut agent = AgentProc::init(&hub.url(), |c| {
        c.hub_key = Some(key);
        c.push.max_entries = 15;
        c.push.timeout_secs = 1.0;
    });
    hub.register("gd-rrt", &agent.key_line, "440000");
    hub.set_faults(Faults {
        unavailable: 0.15,
        rate_limited: 0.05,
        reset_before: 0.1,
        reset_after: 0.15,
        slow: 0.05,
        slow_by: Duration::from_millis(1500),
    });
    agent.start().await;
    let mut acked = post_batches(&agent, "flaky-a", 15, 10).await;
    // kill -9 while pushing, then carry on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.kill();
    agent.start().await;
    acked.extend(post_batches(&agent, "flaky-b", 15, 10).await);
    agent.wait_delivered(300, Duration::from_secs(90)).await;
    hub.set_faults(Faults::default());
    let st = agent.status().await;
    agent.stop();
    let injected = hub.injected();
    eprintln!(
        "flaky hub: faults injected: {injected}; agent retries: {}",
        st["retries"]
    );
    assert!(injected.contains("reset_after"), "{injected}");
    check_exactly_once(&hub, &stored_envelopes(&agent.data()), &acked);
    assert!(agent.cli(&["verify"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_answers_503_with_retry_after_and_drops_nothing() {
    let mut hub = FakeHub::down(2).await;
    let mut agent = AgentProc::init(&hub.url(), |c| c.buffer.max_entries = 10);
    hub.register("gd-rrt", &agent.key_line, "440000");
    agent.start().await;
    let mut acked = post_batches(&agent, "full", 2, 5).await;
    let (s, retry, v) = agent
        .post(&activity("one-too-many"), "application/json")
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|n| n >= 1)));
    let err = v["error"].as_str().unwrap_or("");
    assert!(
        err.contains("buffer is full (10 entries wait for the hub, limit buffer.max_entries = 10)"),
        "{err}"
    );
    hub.restart().await;
    agent.wait_delivered(10, Duration::from_secs(30)).await;
    acked.extend(post_batches(&agent, "after", 1, 5).await);
    agent.wait_delivered(15, Duration::from_secs(30)).await;
    agent.stop();
    check_exactly_once(&hub, &stored_envelopes(&agent.data()), &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_stops_pushing_with_a_clear_status_until_fixed() {
    let hub = FakeHub::start(3).await;
    let mut agent = AgentProc::init(&hub.url(), |_| {});
    agent.start().await;
    let mut acked = post_batches(&agent, "unknown", 3, 4).await;
    // Not registered: alarm, nothing delivered, nothing lost.
    let st = wait_for(
        Duration::from_secs(10),
        "the unknown_source alarm",
        async || {
            let st = agent.status().await;
            (st["alarm"]["code"] == "unknown_source").then_some(st)
        },
    )
    .await;
    assert_eq!(st["last_result"], "alarm", "{st}");
    assert!(
        st["alarm"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("register this source at the hub"),
        "{st}"
    );
    assert_eq!(st["acked_seq"], 0);
    assert!(agent.log().contains("Hub refused permanently"));
    let metrics = agent
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let metrics = metrics.text().await.unwrap_or_default();
    assert!(metrics.contains("spacesync_agent_alarm 1"), "{metrics}");
    // The whole exposition as Prometheus reads it (`.ci/run` makes this required).
    spacesync_pgtest::promtool_accepts(&metrics);

    // Fixed: the re-probe resumes delivery.
    hub.register("gd-rrt", &agent.key_line, "440000");
    agent.wait_delivered(12, Duration::from_secs(20)).await;
    // The status is updated after the receipts are stored: wait for it rather than race it.
    wait_for(Duration::from_secs(10), "the alarm to clear", async || {
        agent.status().await["alarm"].is_null().then_some(())
    })
    .await;

    // Revoked: alarm again; restored: resumes.
    hub.set_revoked("gd-rrt", true);
    acked.extend(post_batches(&agent, "revoked", 2, 2).await);
    wait_for(
        Duration::from_secs(10),
        "the revoked_key alarm",
        async || (agent.status().await["alarm"]["code"] == "revoked_key").then_some(()),
    )
    .await;
    hub.set_revoked("gd-rrt", false);
    agent.wait_delivered(16, Duration::from_secs(20)).await;
    agent.stop();
    check_exactly_once(&hub, &stored_envelopes(&agent.data()), &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_are_stored_acknowledged_and_forwarded_to_the_webhook() {
    // A local webhook that records what it gets, failing the first call.
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let calls = Arc::new(Mutex::new(0u32));
    let (g, c) = (got.clone(), calls.clone());
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let (g, c) = (g.clone(), c.clone());
            async move {
                let mut n = c.lock().unwrap_or_else(|p| p.into_inner());
                *n += 1;
                if *n == 1 {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                g.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let hook_url = format!(
        "http://{}/hook",
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    tokio::spawn(async move { axum::serve(l, hook).await });

    let hub = FakeHub::start(4).await;
    let mut agent = AgentProc::init(&hub.url(), |c| c.notice_webhook = Some(hook_url));
    hub.register("gd-rrt", &agent.key_line, "440000");
    hub.add_notice_with_facts(
        "milestone_due_7d",
        "440000",
        "The recommendations are due on 2018-11-30.",
        NoticeFacts {
            milestone: Some("recommendations".into()),
            due: chrono::NaiveDate::from_ymd_opt(2018, 11, 30),
            days_left: Some(7),
            ..NoticeFacts::default()
        },
    );
    hub.add_notice("behind_pace", "440100", "Guangzhou is behind pace.");
    agent.start().await;
    wait_for(
        Duration::from_secs(20),
        "notices forwarded and acknowledged",
        async || {
            let n = got.lock().unwrap_or_else(|p| p.into_inner()).len();
            (n == 2 && hub.acked_notices() == 2).then_some(())
        },
    )
    .await;
    assert_eq!(agent.status().await["unread_notices"], 2);
    assert!(agent.log().contains("Notice from the hub."));
    // The structured facts travel with the prose: forwarded, served and shown.
    let facts = |list: &[Value]| -> Vec<(Value, Value, Value)> {
        let mut f: Vec<_> = list
            .iter()
            .map(|n| {
                (
                    n["milestone"].clone(),
                    n["due"].clone(),
                    n["days_left"].clone(),
                )
            })
            .collect();
        f.sort_by_key(|x| x.0.to_string());
        f
    };
    let want = vec![
        (
            Value::from("recommendations"),
            Value::from("2018-11-30"),
            Value::from(7),
        ),
        (Value::Null, Value::Null, Value::Null),
    ];
    assert_eq!(
        facts(&got.lock().unwrap_or_else(|p| p.into_inner())),
        want,
        "webhook bodies"
    );
    // Reading them over the API changes nothing, however often.
    for _ in 0..2 {
        let list: Vec<Value> = agent
            .request(reqwest::Method::GET, "/v1/notices")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_default();
        assert_eq!(list.len(), 2);
        assert_eq!(facts(&list), want, "the agent's /v1/notices");
        assert_eq!(agent.status().await["unread_notices"], 2);
    }

    // `notices` against the running agent shows them, then marks them read with a POST.
    let out = agent.cli(&["notices", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let ids: Vec<u64> = list.iter().filter_map(|n| n["id"].as_u64()).collect();
    assert_eq!(ids, [2, 1], "newest first: {out:?}");
    assert_eq!(agent.status().await["unread_notices"], 0);
    agent.stop();
    let out = agent.cli(&["notices", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let ids: Vec<u64> = list.iter().filter_map(|n| n["id"].as_u64()).collect();
    assert_eq!(ids, [2, 1], "newest first");
    let out = agent.cli(&["status", "--json"]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(st["unread_notices"], 0, "{st}");
    // Read back from the store, the facts are still there, in words.
    let out = agent.cli(&["notices"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("milestone recommendations · due 2018-11-30 · 7 day(s) left"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_entries_are_pruned_and_the_chain_goes_on() {
    let hub = FakeHub::start(5).await;
    let key = hub.key_line();
    let mut agent = AgentProc::init(&hub.url(), |c| {
        c.hub_key = Some(key);
        c.retention.delivered_days = 0.0;
    });
    hub.register("gd-rrt", &agent.key_line, "440000");
    agent.start_with(&[]).await;
    let mut acked = post_batches(&agent, "keep", 4, 5).await;
    agent.wait_delivered(20, Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "pruning", async || {
        (agent.status().await["pruned_through"] == 19).then_some(())
    })
    .await;
    agent.stop();
    let out = agent.cli(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("checked 1 entries (seqs 20–20"), "{text}");
    assert!(text.contains("20 receipts"), "{text}");
    agent.start_with(&[]).await;
    acked.extend(post_batches(&agent, "more", 2, 5).await);
    agent.wait_delivered(30, Duration::from_secs(20)).await;
    agent.stop();
    assert!(agent.cli(&["verify"]).status.success());
    assert_eq!(hub.entries("gd-rrt").len(), 30);
    let held: BTreeSet<String> = titles(&hub.entries("gd-rrt"))
        .into_iter()
        .map(|t| t.1)
        .collect();
    assert_eq!(held, acked.into_iter().collect());
}
