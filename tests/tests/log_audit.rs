//! Issue 16, first layer, with real processes: agents audit the real hub's log at every
//! sync. An honest hub raises no alarm and each agent's `verified_checkpoint_size` grows
//! with the log; the same hub restarted on the same port from an older copy of its data
//! directory (its log rolled back) makes the agents raise `log_alarm`, and they keep
//! delivering; the alarm is in the stored status of a stopped agent too, and the hub's
//! source list shows it (each agent reports it) until the agent's operator clears it. An honest hub
//! behind a fault proxy raises no alarm.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use spacesync_shared::cosign::{self, Cosigner};
use spacesync_shared::keys::parse_public_key;
use spacesync_tests::agent_harness::wait_for;
use spacesync_tests::cluster::{AgentNode, Cluster, HubNode, SITES, Workload};
use spacesync_tests::fault_proxy::{Fault, FaultPlan};

/// Copies a directory tree (the hub's sled store) file by file.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let e = e.unwrap_or_else(|e| panic!("{e}"));
        let target = to.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target)
                .unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
        }
    }
}

/// Posts `n` records of `work` to `agent` in one batch.
async fn post(agent: &AgentNode, work: &mut Workload, n: usize) {
    let api = agent.api();
    let body = (0..n)
        .map(|_| work.next_write().1)
        .collect::<Vec<_>>()
        .join("\n");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/records", api.url))
        .bearer_auth(&api.token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/records: {e}"));
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
}

/// The size of the hub's current checkpoint (its log holds registrations too).
async fn hub_size(hub: &HubNode) -> u64 {
    let note = reqwest::get(format!("{}/v1/checkpoint", hub.url()))
        .await
        .unwrap_or_else(|e| panic!("GET /v1/checkpoint: {e}"))
        .text()
        .await
        .unwrap_or_default();
    note.lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("not a checkpoint: {note:?}"))
}

/// Waits until `agent` has delivered `n` entries, then until it verified the hub's
/// checkpoint as it then stands; returns that size.
async fn delivered_and_verified(hub: &HubNode, agent: &AgentNode, n: u64) -> u64 {
    wait_for(
        Duration::from_secs(60),
        &format!("{} to deliver {n}", agent.site.source),
        async || {
            let s = status(agent).await;
            (s["acked_seq"] == n && s["head_seq"] == n).then_some(())
        },
    )
    .await;
    let size = hub_size(hub).await;
    wait_verified(agent, n, size).await;
    size
}

/// The log alarm the hub lists for `agent` (`/v1/sources`, `witness.log_alarm`; null
/// when none), read with a ministry token.
async fn hub_alarm(hub: &HubNode, token: &str, agent: &AgentNode) -> Value {
    let v: Value = match reqwest::Client::new()
        .get(format!("{}/v1/sources", hub.url()))
        .bearer_auth(token)
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => return Value::Null,
    };
    let id = agent.source().to_string();
    v["sources"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["source"] == id.as_str()))
        .map(|s| s["witness"]["log_alarm"].clone())
        .unwrap_or(Value::Null)
}

/// Waits until the hub lists for `agent` the log alarm `want` (null: none).
async fn wait_hub_alarm(hub: &HubNode, token: &str, agent: &AgentNode, want: Option<&str>) {
    wait_for(
        Duration::from_secs(60),
        &format!(
            "the hub to list {}'s log alarm as {want:?}",
            agent.site.source
        ),
        async || {
            let a = hub_alarm(hub, token, agent).await;
            let got = a["code"].as_str();
            (got == want).then_some(())
        },
    )
    .await;
}

async fn status(agent: &AgentNode) -> Value {
    agent.status().await.unwrap_or(Value::Null)
}

/// Waits until `agent` has delivered `n` entries and verified a checkpoint of `size`.
async fn wait_verified(agent: &AgentNode, n: u64, size: u64) -> Value {
    let start = std::time::Instant::now();
    loop {
        let s = status(agent).await;
        if s["acked_seq"] == n && s["head_seq"] == n && s["verified_checkpoint_size"] == size {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} did not deliver {n} and verify a checkpoint of {size}: {s}\nlog:\n{}",
            agent.site.source,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_hub_passes_and_a_rolled_back_one_raises_the_log_alarm() {
    let mut hub = HubNode::init();
    let (a_site, b_site) = (SITES[0], SITES[1]);
    let mut a = AgentNode::init(a_site, &hub.url(), &hub.key_line, |_| {});
    let mut b = AgentNode::init(b_site, &hub.url(), &hub.key_line, |_| {});
    hub.register(&a_site, &a.key_line);
    hub.register(&b_site, &b.key_line);
    let made = hub.cli(&["token", "create", "--role", "ministry", "--label", "audit"]);
    assert!(made.status.success(), "token create: {made:?}");
    let ministry = String::from_utf8_lossy(&made.stdout).trim().to_string();
    hub.start().await;
    a.start().await;
    b.start().await;
    let (mut wa, mut wb) = (Workload::new(a_site), Workload::new(b_site));

    // Honest hub: the verified size follows the log, no alarm.
    post(&a, &mut wa, 5).await;
    let first = delivered_and_verified(&hub, &a, 5).await;
    post(&b, &mut wb, 3).await;
    let second = delivered_and_verified(&hub, &b, 3).await;
    assert_eq!(second, first + 3);
    wait_verified(&a, 5, second).await;
    post(&a, &mut wa, 5).await;
    let snapshot = delivered_and_verified(&hub, &a, 10).await;
    assert_eq!(snapshot, second + 5);
    wait_verified(&b, 3, snapshot).await;
    for agent in [&a, &b] {
        let s = status(agent).await;
        assert!(s["log_alarm"].is_null(), "{s}");
    }
    // `verify --against-hub` proves every receipted entry: through the running agent (its
    // pusher runs it), and from a stopped agent's store.
    let full = |agent: &AgentNode| {
        let out = agent.cli(&["verify", "--against-hub", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let rep: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        rep["against_hub"].clone()
    };
    let got = full(&a);
    assert_eq!(
        (got["proven"].clone(), got["alarm"].clone()),
        (10.into(), Value::Null),
        "{got}"
    );
    assert!(got["checkpoint_size"].as_u64() >= Some(snapshot), "{got}");
    b.stop();
    let got = full(&b);
    assert_eq!(
        (got["proven"].clone(), got["alarm"].clone()),
        (3.into(), Value::Null),
        "{got}"
    );
    b.start().await;

    // The hub stopped and restarted: still one log, still no alarm.
    hub.stop();
    let old = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    copy_tree(&hub.db(), old.path());
    hub.start().await;
    post(&b, &mut wb, 4).await;
    delivered_and_verified(&hub, &b, 7).await;
    post(&a, &mut wa, 4).await;
    let kept = delivered_and_verified(&hub, &a, 14).await;
    assert_eq!(kept, snapshot + 8);
    wait_verified(&b, 7, kept).await;
    for agent in [&a, &b] {
        let s = status(agent).await;
        assert!(s["log_alarm"].is_null(), "{s}");
    }

    // The hub's log rolled back: its store restored from the copy, the hub
    // restarted on the same port (`snapshot` entries). Both agents detect it (a smaller tree, or — once their
    // resent entries landed at other leaves — a tree that does not extend the one kept).
    hub.stop();
    std::fs::remove_dir_all(hub.db()).unwrap_or_else(|e| panic!("{e}"));
    copy_tree(old.path(), &hub.db());
    hub.start().await;
    for agent in [&a, &b] {
        let s = wait_for(
            Duration::from_secs(60),
            &format!("{} to raise the log alarm", agent.site.source),
            async || {
                let s = status(agent).await;
                s["log_alarm"].is_string().then_some(s)
            },
        )
        .await;
        let alarm = s["log_alarm"].as_str().unwrap_or_default().to_string();
        assert!(
            alarm.starts_with("rollback") || alarm.starts_with("fork"),
            "{alarm}"
        );
        // The kept checkpoint did not follow the hub back.
        assert_eq!(s["verified_checkpoint_size"], kept, "{s}");
        assert!(
            agent.log().contains("log alarm raised"),
            "no log line:\n{}",
            agent.log()
        );
        let m = reqwest::Client::new()
            .get(format!("{}/metrics", agent.url()))
            .bearer_auth(&agent.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
            .await
            .unwrap_or_default();
        assert!(m.contains("spacesync_agent_log_alarm 1\n"), "{m}");
        // Issue 16: the hub's source list shows the alarm the agent reported (the
        // ministry sees that a province's agent says the log was rolled back or forked).
        let code = alarm.split(' ').next().unwrap_or_default();
        wait_hub_alarm(&hub, &ministry, agent, Some(code)).await;
        let shown = hub_alarm(&hub, &ministry, agent).await;
        assert_eq!(shown["detected"], alarm.as_str(), "{shown}");
    }

    // Delivery continues: the agent resends what the hub lost, and delivers new entries;
    // the alarm stays whatever the hub answers now.
    post(&a, &mut wa, 3).await;
    wait_for(
        Duration::from_secs(60),
        "gd-rrt to deliver 17 entries to the rolled-back hub",
        async || {
            let s = status(&a).await;
            (s["acked_seq"] == 17 && s["head_seq"] == 17).then_some(())
        },
    )
    .await;
    // A few more sync cycles with the hub answering.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = status(&a).await;
    assert!(s["log_alarm"].is_string(), "{s}");
    assert!(s["alarm"].is_null(), "delivery alarm: {s}");
    // Alarmed agents vouch for nothing the hub shows now: the checkpoint the rolled-back
    // hub serves carries no cosignature of either (before the rollback both cosigned).
    let note = reqwest::get(format!("{}/v1/checkpoint", hub.url()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    let trusted: Vec<Cosigner> = [&a, &b]
        .iter()
        .map(|n| {
            let key = parse_public_key(&n.key_line).unwrap_or_else(|e| panic!("{e}"));
            Cosigner::new(&cosign::witness_name(&n.source()), key).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let got = cosign::verify(&note, &trusted).unwrap_or_else(|e| panic!("{e}"));
    assert!(got.is_empty(), "alarmed agents cosigned: {note}");

    // A stopped agent shows the alarm from its store.
    a.stop();
    let out = a.cli(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {out:?}"));
    assert!(v["log_alarm"].is_string(), "{v}");
    assert_eq!(v["verified_checkpoint_size"], kept, "{v}");

    // Restarted, it still has the alarm and the kept checkpoint, and still delivers.
    a.start().await;
    let s = status(&a).await;
    assert!(s["log_alarm"].is_string(), "{s}");
    assert_eq!(s["verified_checkpoint_size"], kept, "{s}");
    post(&a, &mut wa, 2).await;
    wait_for(
        Duration::from_secs(60),
        "gd-rrt to deliver 19 entries after its restart",
        async || {
            let s = status(&a).await;
            (s["acked_seq"] == 19 && s["head_seq"] == 19 && s["log_alarm"].is_string())
                .then_some(())
        },
    )
    .await;

    // Settled with the campaign, the operator clears the alarm, with the agent stopped
    // (a running agent refuses: no API token may clear it); the audit starts again from
    // the hub's checkpoint and stays quiet.
    let clear = |agent: &AgentNode| agent.cli(&["clear-alarm", "--reason", "restored, agreed"]);
    let out = clear(&a);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop the agent"),
        "{out:?}"
    );
    a.stop();
    let out = clear(&a);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(said.starts_with("log alarm cleared (it was: "), "{said}");
    a.start().await;
    let now = hub_size(&hub).await;
    let s = wait_verified(&a, 19, now).await;
    assert!(s["log_alarm"].is_null(), "{s}");
    // The hub learns it was cleared; b's stands.
    wait_hub_alarm(&hub, &ministry, &a, None).await;
    assert!(hub_alarm(&hub, &ministry, &b).await["code"].is_string());
    b.stop();
    let out = b.cli(&[
        "clear-alarm",
        "--reason",
        "hub restored from a copy, agreed",
    ]);
    assert!(out.status.success(), "{out:?}");
    let again = b.cli(&["clear-alarm", "--reason", "twice"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no log alarm stood"),
        "{again:?}"
    );
    b.start().await;
    let s = wait_verified(&b, 7, hub_size(&hub).await).await;
    assert!(s["log_alarm"].is_null(), "{s}");
    wait_hub_alarm(&hub, &ministry, &b, None).await;
}

/// An honest hub behind a proxy that refuses, resets, cuts, stalls and delays connections
/// (the audit's requests among them): no false alarm, and every agent ends having verified
/// the hub's final checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_hub_under_faults_raises_no_log_alarm() {
    let seed = 16;
    let c = Cluster::start(3, seed, FaultPlan::chaos(0.4, 1_500), |_| {}).await;
    let mut works: Vec<Workload> = c.agents.iter().map(|a| Workload::new(a.site)).collect();
    let mut round = 0;
    let mut post_all = async |works: &mut Vec<Workload>| {
        for (a, w) in c.agents.iter().zip(works.iter_mut()) {
            post(a, w, 1 + round % 4).await;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for _ in 0..5 {
        post_all(&mut works).await;
    }
    // Connections are kept alive, so the plan's faults are per connection; force a run of
    // them on the next connections too (each kills its connection, so the next request,
    // an audit's or a push's, meets the next fault).
    c.proxy.force([
        Fault::Cut { after: 0 },
        Fault::Cut { after: 90 },
        Fault::Reset { after: 40 },
        Fault::Cut { after: 200 },
        Fault::Stall { ms: 1_500 },
        Fault::Refuse,
        Fault::Cut { after: 400 },
        Fault::Reset { after: 0 },
        Fault::Cut { after: 120 },
        Fault::Cut { after: 0 },
    ]);
    for _ in 0..10 {
        post_all(&mut works).await;
    }
    c.wait_drained(Duration::from_secs(120)).await;
    let counts = c.proxy.counts();
    assert!(
        counts.total() >= 12,
        "too few faults to mean anything: {counts:?}"
    );
    // Faults off: every agent catches up with the final log, having raised nothing.
    c.proxy.set_plan(FaultPlan::NONE);
    let size = hub_size(&c.hub).await;
    for a in &c.agents {
        let n = status(a).await["head_seq"].as_u64().unwrap_or(0);
        let s = wait_verified(a, n, size).await;
        assert!(s["log_alarm"].is_null(), "false alarm: {s}");
    }
    for a in &c.agents {
        assert!(
            !a.log().contains("log alarm raised"),
            "false alarm in the log:\n{}",
            a.log()
        );
    }
    eprintln!("log_audit under faults: seed {seed}, {counts:?}, final size {size}");
}
