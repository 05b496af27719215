//! Issue 14's acceptance: a hub and two agents (real processes); without restarting the
//! hub, the admin commands run against it with `--hub URL` and an admin token from the
//! environment: a third agent is invited and enrols with the code (`init --enrol`), then
//! delivers; a ministry token is created, listed with its role, used (API and dashboard
//! session) and revoked (then 401, and the session ends); a deadline is extended and a
//! bulletin issued that shows it; one agent rotates its key itself, with a key-transition
//! entry in its chain written while the hub is out of reach (the agent SIGKILLed with the
//! transition and its first new-key entry written, not yet delivered; afterwards the log
//! holds the transition and an old-key entry after it is refused), the other's "lost" key
//! is replaced from the hub side; a notice rule is changed (the scheduler's next reminders
//! follow it; the bulletin from before still verifies). Afterwards the checker reads the
//! hub's log: every acknowledged record of every agent is there exactly once (lost = 0,
//! unexpected = 0), and both `verify`s pass.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use spacesync_hub::store::SledStore;
use spacesync_shared::SourceId;
use spacesync_shared::record::Record;
use spacesync_tests::agent_harness::{AgentProc, activity};
use spacesync_tests::checker::{self, History};
use spacesync_tests::hub_harness::{HubProc, hub_bin};

/// The agents' clock (`run --now`), the same instant as the hub's.
const AGENT_NOW: &str = spacesync_tests::agent_harness::NOW;

/// Points `agent`'s agent.toml at `hub`.
fn set_hub(agent: &AgentProc, hub: &str) {
    let path = agent.data().config();
    let mut cfg = spacesync_agent::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    cfg.hub = hub.to_string();
    std::fs::write(&path, cfg.to_toml()).unwrap_or_else(|e| panic!("{e}"));
}

/// `spacesync-hub args…` with the admin token in the environment and no data directory
/// (the `--hub` path must not need one).
fn hub_cli(token: &str, args: &[&str]) -> Output {
    Command::new(hub_bin())
        .args(args)
        .env("SPACESYNC_HUB_TOKEN", token)
        .env_remove("SPACESYNC_HUB_DATA")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("spacesync-hub {args:?}: {e}"))
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Posts `n` uniquely titled activities to `agent` (in `region`), one batch each, and
/// records them in `history` as attempted and acknowledged with the seqs answered.
async fn write(
    agent: &AgentProc,
    source: &str,
    region: &str,
    n: usize,
    tag: &str,
    history: &mut History,
) {
    let source = SourceId::parse(source).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..n {
        let title = format!("{source}-{tag}-{i}");
        let line = activity(&title).replace("440100", region);
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}"));
        let record = Record::from_value(&value).unwrap_or_else(|p| panic!("{p:?}"));
        history.attempt(&source, &[(title.clone(), record)]);
        let (status, _, v) = agent.post(&line, "application/x-ndjson").await;
        assert_eq!(status, 200, "{source}: {v}");
        let seqs: Vec<u64> = serde_json::from_value(v["seqs"].clone()).unwrap_or_default();
        history.acknowledge([title], &seqs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_hub_is_administered_without_a_restart() {
    let mut hub = HubProc::init();
    // The first admin token is made on the stopped store, as the README says.
    let admin = ok(
        &hub.cli(&["token", "create", "--role", "admin", "--label", "ops"]),
        "token create",
    );
    hub.start().await;
    let url = hub.url();
    let mut history = History::default();

    // Two agents, registered live.
    let mut agents = Vec::new();
    for (source, scope, region) in [("gd-a", "440000", "440100"), ("bj-a", "110000", "110105")] {
        let agent = AgentProc::init_args(
            &[
                "--source",
                source,
                "--scope",
                scope,
                "--hub",
                &url,
                "--hub-key",
                &spacesync_shared::keys::public_key_line(&hub.key),
            ],
            |_| {},
        );
        let added = ok(
            &hub_cli(
                &admin,
                &[
                    "agents",
                    "add",
                    "--source",
                    source,
                    "--scope",
                    scope,
                    "--key",
                    &agent.key_line,
                    "--hub",
                    &url,
                ],
            ),
            "agents add --hub",
        );
        assert!(added.starts_with(&format!("added {source}")), "{added}");
        agents.push((agent, source, region));
    }
    for (agent, source, region) in &mut agents {
        agent.start().await;
        write(agent, source, region, 5, "first", &mut history).await;
    }
    for (agent, _, _) in &agents {
        agent.wait_delivered(5, Duration::from_secs(30)).await;
    }

    // Invite and enrol a third agent, which then delivers.
    let out = hub_cli(
        &admin,
        &[
            "agents",
            "invite",
            "--source",
            "sc-a",
            "--scope",
            "510000",
            "--hub",
            &url,
            "--expires",
            "2h",
        ],
    );
    let code = ok(&out, "agents invite")
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(code.starts_with("ssenrol1."), "{code}");
    let mut third = AgentProc::init_args(&["--enrol", &code], |_| {});
    let cfg = spacesync_agent::config::Config::load(&third.data().config())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.source.as_str(), "sc-a");
    assert_eq!(
        cfg.hub_key.as_deref(),
        Some(spacesync_shared::keys::public_key_line(&hub.key).as_str()),
        "the code pins the hub key"
    );
    third.start().await;
    write(&third, "sc-a", "510104", 4, "enrolled", &mut history).await;
    third.wait_delivered(4, Duration::from_secs(30)).await;
    // The code worked once.
    let again = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(spacesync_tests::agent_harness::agent_bin())
        .arg("--data")
        .arg(again.path())
        .args(["init", "--enrol", &code])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not valid at this hub"), "{err}");

    // A ministry token: created, listed with its role, used, revoked.
    let ministry = ok(
        &hub_cli(
            &admin,
            &[
                "token", "create", "--role", "ministry", "--label", "analyst", "--hub", &url,
            ],
        ),
        "token create --hub",
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let progress = |t: &str| http.get(format!("{url}/v1/progress")).bearer_auth(t).send();
    assert_eq!(
        progress(&ministry).await.map(|r| r.status().as_u16()).ok(),
        Some(200)
    );
    let login = http
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ministry}&next=%2F"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie"))
        .to_string();
    let home = |c: String| http.get(format!("{url}/")).header("cookie", c).send();
    assert_eq!(
        home(cookie.clone()).await.map(|r| r.status().as_u16()).ok(),
        Some(200)
    );
    let list = ok(
        &hub_cli(&admin, &["token", "list", "--json", "--hub", &url]),
        "token list --hub",
    );
    let list: Value = serde_json::from_str(&list).unwrap_or_else(|e| panic!("{e}"));
    let mine = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["label"] == "analyst"))
        .unwrap_or_else(|| panic!("ministry token not listed: {list}"))
        .clone();
    assert_eq!(mine["role"], "ministry");
    assert!(mine["last_used_at"].is_string(), "{mine}");
    assert!(!list.to_string().contains(&ministry));
    let revoked = ok(
        &hub_cli(&admin, &["token", "revoke", &ministry, "--hub", &url]),
        "token revoke --hub",
    );
    assert!(revoked.contains("revoked token"), "{revoked}");
    assert_eq!(
        progress(&ministry).await.map(|r| r.status().as_u16()).ok(),
        Some(401)
    );
    let after = home(cookie).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after.status().as_u16(), 303, "the session ended");
    // A non-admin token is told which role was needed.
    let province = ok(
        &hub_cli(
            &admin,
            &[
                "token",
                "create",
                "--role",
                "province:440000",
                "--hub",
                &url,
            ],
        ),
        "token create",
    );
    let out = hub_cli(&province, &["token", "list", "--hub", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url) && err.contains("admin role"), "{err}");

    // A deadline extended, and a bulletin that shows it.
    let out = hub_cli(
        &admin,
        &[
            "extend",
            "--region",
            "440000",
            "--milestone",
            "implementation_plan",
            "--until",
            "2018-12-20",
            "--reason",
            "flood",
            "--hub",
            &url,
        ],
    );
    ok(&out, "extend --hub");
    let n = ok(
        &hub_cli(&admin, &["bulletin", "issue", "--hub", &url]),
        "bulletin issue --hub",
    );
    let doc: Value = http
        .get(format!("{url}/v1/bulletins/{n}.json"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        doc.to_string().contains("2018-12-20"),
        "the extension is not in bulletin {n}"
    );
    let before_change = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(before_change.path(), doc.to_string()).unwrap_or_else(|e| panic!("{e}"));

    // A notice rule changed live (the 2018 file lets remind_days change): the scheduler's
    // next notices use it (recommendations, due 2018-11-30, are 5 days ahead: a 6-day
    // reminder where there was none), `show` names the log entry and the token; a setting
    // the file does not list, and a province token, are refused.
    let shown = ok(
        &hub_cli(&admin, &["notice-rules", "show", "--hub", &url]),
        "notice-rules show --hub",
    );
    assert!(
        shown.lines().any(|l| l.starts_with("remind_days ")
            && l.contains(" 7,3 ")
            && l.contains("campaign 2018")),
        "{shown}"
    );
    let out = ok(
        &hub_cli(
            &admin,
            &["notice-rules", "set", "remind_days", "6,2", "--hub", &url],
        ),
        "notice-rules set --hub",
    );
    assert!(
        out.contains("changed from 7,3 to 6,2, recorded at log index"),
        "{out}"
    );
    let out = hub_cli(
        &admin,
        &["notice-rules", "set", "due_soon_days", "2", "--hub", &url],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&url) && err.contains("[lagging] adjustable does not list it"),
        "{err}"
    );
    let out = hub_cli(&province, &["notice-rules", "show", "--hub", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url) && err.contains("admin role"), "{err}");
    let mut six_day_reminders = 0;
    for _ in 0..100 {
        let v: Value = http
            .get(format!("{url}/v1/notices"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        six_day_reminders = v["notices"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| n["rule"] == "milestone_due" && n["deadline"] == "2018-11-30")
                    .count()
            })
            .unwrap_or(0);
        if six_day_reminders > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(six_day_reminders, 32, "one 6-day reminder per unit");
    let shown = ok(
        &hub_cli(&admin, &["notice-rules", "show", "--hub", &url]),
        "notice-rules show --hub",
    );
    assert!(
        shown.lines().any(|l| l.starts_with("remind_days ")
            && l.contains(" 6,2 ")
            && l.contains("admin token ")),
        "{shown}"
    );

    // gd-a rotates its key from the agent side, in its own chain and offline: the hub is
    // out of reach (the agent points at a closed port) while `rotate-key` writes the
    // key-transition entry (seq 6) and the agent takes a new-key record (seq 7); the agent
    // is SIGKILLed with both written and neither delivered, then reaches the hub again.
    let (gd, _, _) = &mut agents[0];
    gd.stop();
    let old_gd =
        spacesync_shared::keys::read_secret(&gd.data().key()).unwrap_or_else(|e| panic!("{e}"));
    let nowhere = format!("http://127.0.0.1:{}", spacesync_tests::procs::free_port());
    set_hub(gd, &nowhere);
    let new_gd = ok(
        &gd.cli(&["rotate-key", "--now", AGENT_NOW]),
        "rotate-key (hub out of reach)",
    );
    assert!(!gd.data().key_next().exists());
    assert!(gd.data().key_retired().exists());
    assert_eq!(ok(&gd.cli(&["pubkey"]), "pubkey"), new_gd);
    gd.start().await;
    write(gd, "gd-a", "440100", 1, "rotated", &mut history).await;
    gd.kill();
    set_hub(gd, &url);
    gd.start().await;
    gd.wait_delivered(7, Duration::from_secs(30)).await;
    let listed = ok(
        &hub_cli(&admin, &["agents", "list", "--json", "--hub", &url]),
        "agents list",
    );
    let listed: Value = serde_json::from_str(&listed).unwrap_or_else(|e| panic!("{e}"));
    let gd_rec = listed
        .as_array()
        .and_then(|l| l.iter().find(|r| r["id"] == "gd-a"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        gd_rec["keys"][1]["key"],
        Value::from(new_gd.clone()),
        "{gd_rec}"
    );
    assert_eq!(gd_rec["keys"][1]["from_seq"], 7, "{gd_rec}");
    // Once the hub receipted the transition, the retired key is gone (the pusher removes
    // it at its next signed request; a start removes it too).
    gd.stop();
    let head_hash = spacesync_tests::agent_harness::stored_envelopes(&gd.data())
        .last()
        .map(|e| e.payload_hash())
        .unwrap_or_default();
    gd.start().await;
    assert!(!gd.data().key_retired().exists());
    // An entry signed by the old key after the transition is refused by name.
    let stale = spacesync_shared::Entry {
        source: SourceId::parse("gd-a").unwrap_or_else(|e| panic!("{e}")),
        seq: 8,
        prev: head_hash,
        recorded_at: chrono::DateTime::parse_from_rfc3339(AGENT_NOW)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_utc(),
        campaign: "2018".into(),
        record: Record::from_value(
            &serde_json::from_str::<Value>(&activity("stale")).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|p| panic!("{p:?}")),
    };
    let batch = spacesync_shared::wire::IngestBatch {
        source: stale.source.clone(),
        entries: vec![stale.sign(&old_gd)],
    };
    let refused = http
        .post(format!("{url}/v1/ingest"))
        .json(&batch)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status().as_u16(), 422);
    let body: Value = refused.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["refused"][0]["code"], "revoked_key", "{body}");
    assert!(
        body["refused"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("retired key")),
        "{body}"
    );

    // bj-a's key is "lost": the agent switches at once, the hub's admin records the new
    // key from the seq the agent printed, live.
    let (bj, _, _) = &mut agents[1];
    bj.stop();
    let out = bj.cli(&["rotate-key", "--lost"]);
    let new_bj = ok(&out, "rotate-key --lost");
    let hint = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(hint.contains("--from-seq 6"), "{hint}");
    ok(
        &hub_cli(
            &admin,
            &[
                "agents",
                "rotate",
                "bj-a",
                "--key",
                &new_bj,
                "--from-seq",
                "6",
                "--hub",
                &url,
            ],
        ),
        "agents rotate --hub",
    );
    bj.start().await;

    // Everyone still delivers.
    for (agent, source, region) in &agents {
        write(agent, source, region, 3, "after", &mut history).await;
    }
    agents[0]
        .0
        .wait_delivered(10, Duration::from_secs(30))
        .await;
    agents[1].0.wait_delivered(8, Duration::from_secs(30)).await;
    for (agent, _, _) in &agents {
        let out = agent.cli(&["verify", "--json"]);
        assert!(
            out.status.success(),
            "agent verify across the rotation: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    write(&third, "sc-a", "510104", 2, "after", &mut history).await;
    third.wait_delivered(6, Duration::from_secs(30)).await;

    // The checker: every acknowledged record is in the hub's log exactly once.
    hub.kill();
    let store = SledStore::open(&hub.db()).unwrap_or_else(|e| panic!("{e}"));
    let leaves = checker::read_hub_log(&store).unwrap_or_else(|e| panic!("{e}"));
    // gd-a's key transition is in the log at seq 6, naming the new key.
    let transitions: Vec<(String, u64, String)> = leaves
        .iter()
        .filter_map(|l| match &l.record {
            Record::KeyTransition(t) => Some((l.source.to_string(), l.seq, t.new_key.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(transitions, vec![("gd-a".to_string(), 6, new_gd.clone())]);
    let report = checker::check(&history, &leaves);
    eprintln!("{}", report.line(0, 0, 0));
    assert!(report.valid(), "{}", report.details());
    assert_eq!(report.acknowledged, 5 * 2 + 4 + 1 + 3 * 2 + 2);
    drop(store);
    // The hub's own verify: every chain under the keys the log records, across both
    // rotations.
    // sled lets go of the directory a moment after the last handle.
    let mut out = hub.cli(&["verify"]);
    for _ in 0..100 {
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("in use") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        out = hub.cli(&["verify"]);
    }
    assert!(
        out.status.success(),
        "hub verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The bulletin issued before the notice rule change still verifies after it.
    let path = before_change.path().to_string_lossy().to_string();
    ok(&hub.cli(&["bulletin", "verify", &path]), "bulletin verify");
}
