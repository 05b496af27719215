//! Notice rules changed on a running hub (`/v1/admin/notice-rules`, `notice-rules set`):
//! only the settings the campaign file lists in `[lagging] adjustable`, only with an admin
//! token; each change a hub-signed log entry (setting, old and new value, token id, hub
//! clock) in force for the next bulletin and notices, kept across a restart and a
//! rebuild (derived from the log), while a bulletin issued before it still verifies.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Duration;
use common::*;
use serde_json::{Value, json};
use spacesync_hub::auth::{self, Role};
use spacesync_hub::entries::{HUB_ENTRY_PAYLOAD_TYPE, HubEntry};
use spacesync_hub::{bulletin, maintenance, notices, registry};
use spacesync_shared::admin as wire;
use spacesync_shared::campaign::{Campaign, NoticeRule, RuleValue};

fn post(path: &str, token: Option<&str>, body: &Value) -> Request<Body> {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("request")
}

/// Sets `setting` to `value` through the admin API as `token`.
async fn set(th: &TestHub, token: &str, setting: &str, value: &str) -> Reply {
    th.send(post(
        wire::PATH_NOTICE_RULES,
        Some(token),
        &json!({"setting": setting, "value": value}),
    ))
    .await
}

/// Issues a bulletin through the admin API; its document.
async fn issue(th: &TestHub) -> Value {
    let r = th
        .send(post(
            wire::PATH_BULLETINS_ISSUE,
            Some(&th.admin.clone()),
            &json!({}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let n = r.json()["number"].as_u64().expect("number");
    bulletin::get(th.hub.store.as_ref(), n).expect("stored bulletin")
}

fn silent_sources(doc: &Value) -> Vec<String> {
    doc["silent_sources"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["source"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The notice keys the scheduler would raise now for `milestone` in 440000.
fn notice_keys(th: &TestHub, milestone: &str) -> Vec<String> {
    let reg = registry::load_all(th.hub.store.as_ref()).expect("registry");
    let mut keys: Vec<String> = notices::candidates(
        &th.hub.campaign,
        &th.hub.snapshot().views,
        &reg,
        th.hub.clock.now(),
    )
    .into_iter()
    .map(|c| c.key)
    .filter(|k| k.contains("/440000/") && k.contains(milestone))
    .collect();
    keys.sort();
    keys
}

fn verify_bulletin(th: &TestHub, doc: &Value) -> Result<(), bulletin::BulletinError> {
    bulletin::verify(
        th.hub.store.as_ref(),
        &th.hub.campaign,
        &hub_key().verifying_key(),
        ORIGIN,
        doc,
    )
}

fn rule_of(rules: &Value, name: &str) -> Value {
    rules["rules"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["setting"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

async fn a_live_change_is_in_force_for_the_next_bulletin_and_notices(backend: Backend) {
    let dir = store_dir(backend);
    // Five days after the source was registered, 2018-11-25 10:00 CST: recommendations
    // (due 11-30) are 5 days ahead, implementation_plan (due 11-15) 10 days late.
    let now = t0() + Duration::days(5);
    let th = TestHub::open_at(dir.path(), now);
    th.register(&Agent::new("gd-rrt", 1, "440000"));
    let admin = th.admin.clone();

    let before = issue(&th).await;
    assert!(
        silent_sources(&before).is_empty(),
        "{}",
        before["silent_sources"]
    );
    assert_eq!(
        notice_keys(&th, "/recommendations/"),
        ["milestone_due_7d:7/440000/recommendations/2018-11-30"]
    );
    assert_eq!(
        notice_keys(&th, "/implementation_plan/"),
        [
            "milestone_escalated/440000/implementation_plan/2018-11-15",
            "milestone_overdue/440000/implementation_plan/2018-11-15"
        ]
    );

    let size = th.log_size();
    let mut changed = Vec::new();
    for (setting, value, old) in [
        ("silent_after_days", "3", "10"),
        ("remind_days", "6, 2", "7,3"),
        ("escalate_after_days", "30", "3"),
    ] {
        let r = set(&th, &admin, setting, value).await;
        assert_eq!(r.status, StatusCode::OK, "{setting}: {}", r.text());
        let out: wire::NoticeRuleSet = serde_json::from_slice(&r.body).expect("answer");
        assert_eq!(out.old.to_string(), old);
        changed.push((out.log_index.expect("recorded"), setting));
    }
    assert_eq!(th.log_size(), size + 3);
    // The same value again records nothing (a retried request changes nothing twice).
    let r = set(&th, &admin, "escalate_after_days", "30").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["log_index"], Value::Null, "{}", r.text());
    assert_eq!(th.log_size(), size + 3);

    // The next bulletin and the notices are computed with the new rules.
    let after = issue(&th).await;
    assert_eq!(silent_sources(&after), ["gd-rrt"]);
    assert_eq!(
        notice_keys(&th, "/recommendations/"),
        ["milestone_due:6/440000/recommendations/2018-11-30"]
    );
    assert_eq!(
        notice_keys(&th, "/implementation_plan/"),
        ["milestone_overdue/440000/implementation_plan/2018-11-15"]
    );

    // Each change is a hub-signed log entry: setting, old and new, token id, hub clock.
    let token_id = auth::token_id(&admin);
    for (index, setting) in &changed {
        let (_, rec) = spacesync_hub::log::iter(th.hub.store.as_ref())
            .map(|r| r.expect("log record"))
            .find(|(i, _)| i == index)
            .expect("the change's leaf");
        assert!(rec.source.is_none());
        rec.envelope
            .verify(HUB_ENTRY_PAYLOAD_TYPE, &hub_key().verifying_key())
            .expect("signed by the hub");
        let entry: HubEntry = serde_json::from_slice(&rec.envelope.payload).expect("hub entry");
        let HubEntry::NoticeRuleChanged(c) = entry else {
            panic!("leaf {index} is {entry:?}");
        };
        assert_eq!(c.setting.name(), *setting);
        assert_eq!(c.token.as_deref(), Some(token_id.as_str()));
        assert_eq!(c.at, now);
    }

    // Both bulletins verify: the first is recomputed without the later changes.
    verify_bulletin(&th, &before).expect("the bulletin from before the change");
    verify_bulletin(&th, &after).expect("the bulletin after it");
    let report = maintenance::verify(
        th.hub.store.as_ref(),
        &hub_key().verifying_key(),
        ORIGIN,
        |_| {},
    )
    .expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // GET lists the rules in force with their origin.
    let rules = th.get_json(wire::PATH_NOTICE_RULES).await;
    let silent = rule_of(&rules, "silent_after_days");
    assert_eq!(silent["value"], 3);
    assert_eq!(silent["adjustable"], true);
    assert_eq!(silent["changed"]["log_index"], changed[0].0);
    assert_eq!(silent["changed"]["token"], token_id.as_str());
    assert_eq!(rule_of(&rules, "remind_days")["value"], json!([6, 2]));
    let due_soon = rule_of(&rules, "due_soon_days");
    assert_eq!(due_soon["value"], 7);
    assert_eq!(due_soon["adjustable"], false);
    assert_eq!(due_soon["changed"], Value::Null);
    drop(th);

    // A restart reads the rules back from the stored views ...
    let th = TestHub::open_at(dir.path(), now);
    assert_eq!(th.get_json(wire::PATH_NOTICE_RULES).await, rules);
    assert_eq!(
        notice_keys(&th, "/recommendations/"),
        ["milestone_due:6/440000/recommendations/2018-11-30"]
    );
    drop(th);

    // ... which are derived state: with them gone `verify` says so, and a rebuild from
    // the log gives the same rules again.
    {
        let store = open_store(dir.path());
        let mut wb = spacesync_hub::store::WriteBatch::new();
        for r in store.scan(b"v/r/") {
            wb.delete(r.expect("stored rule change").0);
        }
        store.apply(wb).expect("delete");
        let report =
            maintenance::verify(store.as_ref(), &hub_key().verifying_key(), ORIGIN, |_| {})
                .expect("verify");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("notice rule changes disagree with the log")),
            "{:?}",
            report.problems
        );
        maintenance::rebuild(store.as_ref(), Campaign::builtin_2018().baseline, |_| {})
            .expect("rebuild");
    }
    let th = TestHub::open_at(dir.path(), now);
    assert_eq!(th.get_json(wire::PATH_NOTICE_RULES).await, rules);
    let again = issue(&th).await;
    assert_eq!(silent_sources(&again), ["gd-rrt"]);
    verify_bulletin(&th, &before).expect("the first bulletin after the rebuild");
}

async fn only_adjustable_rules_only_with_an_admin_token_only_sane_values(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let admin = th.admin.clone();
    let ministry = th.token(Role::Ministry);
    let size = th.log_size();

    for (token, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("sst_bogus"), StatusCode::UNAUTHORIZED),
        (Some(ministry.as_str()), StatusCode::FORBIDDEN),
    ] {
        let r = th
            .send(post(
                wire::PATH_NOTICE_RULES,
                token,
                &json!({"setting": "behind", "value": "0.7"}),
            ))
            .await;
        assert_eq!(r.status, want, "{token:?}: {}", r.text());
        let r = th.get(wire::PATH_NOTICE_RULES, token).await;
        assert_eq!(r.status, want, "GET as {token:?}: {}", r.text());
    }
    let r = th
        .send(post(
            wire::PATH_NOTICE_RULES,
            Some(&ministry),
            &json!({"setting": "behind", "value": "0.7"}),
        ))
        .await;
    assert!(
        r.text().contains("admin"),
        "names the role needed: {}",
        r.text()
    );

    let refused: &[(&str, &str, StatusCode, &str)] = &[
        (
            "due_soon_days",
            "3",
            StatusCode::FORBIDDEN,
            "notice rule due_soon_days may not be changed on the running hub: the campaign file's [lagging] adjustable does not list it",
        ),
        (
            "lateness",
            "3",
            StatusCode::BAD_REQUEST,
            "is not a notice rule; the notice rules are remind_days",
        ),
        ("behind", "NaN", StatusCode::BAD_REQUEST, "between 0 and 1"),
        (
            "behind",
            "0.4",
            StatusCode::BAD_REQUEST,
            "not above far_behind (0.5)",
        ),
        (
            "far_behind",
            "0.9",
            StatusCode::BAD_REQUEST,
            "not below behind (0.8)",
        ),
        (
            "far_behind",
            "-1",
            StatusCode::BAD_REQUEST,
            "between 0 and 1",
        ),
        (
            "remind_days",
            "3,7",
            StatusCode::BAD_REQUEST,
            "largest first",
        ),
        (
            "remind_days",
            "7,3,3",
            StatusCode::BAD_REQUEST,
            "largest first",
        ),
        (
            "remind_days",
            "100000",
            StatusCode::BAD_REQUEST,
            "from 0 to 366",
        ),
        (
            "silent_after_days",
            "0",
            StatusCode::BAD_REQUEST,
            "from 1 to 366",
        ),
        (
            "escalate_after_days",
            "-2",
            StatusCode::BAD_REQUEST,
            "from 0 to 366",
        ),
    ];
    for (setting, value, status, want) in refused {
        let r = set(&th, &admin, setting, value).await;
        assert_eq!(r.status, *status, "{setting} {value}: {}", r.text());
        assert!(r.text().contains(want), "{setting} {value}: {}", r.text());
    }
    // A body that is not the request, and a huge value, are refused too.
    let r = th
        .send(post(
            wire::PATH_NOTICE_RULES,
            Some(&admin),
            &json!({"setting": "behind"}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = set(&th, &admin, "remind_days", &"9,".repeat(10_000)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(th.log_size(), size, "nothing refused was logged");

    // Lowering far_behind first lets behind go below its old far_behind.
    assert_eq!(
        set(&th, &admin, "far_behind", "0.2").await.status,
        StatusCode::OK
    );
    let r = set(&th, &admin, "behind", "0.4").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let rules = th.get_json(wire::PATH_NOTICE_RULES).await;
    assert_eq!(rule_of(&rules, "behind")["value"], 0.4);
    assert_eq!(rule_of(&rules, "far_behind")["value"], 0.2);
    assert_eq!(th.log_size(), size + 2);

    // A campaign file that lists nothing lets nothing change.
    drop(th);
    let none = spacesync_shared::campaign::CAMPAIGN_2018_TOML
        .lines()
        .filter(|l| !l.starts_with("adjustable"))
        .collect::<Vec<_>>()
        .join("\n");
    let campaign = Campaign::from_toml(&none).expect("campaign");
    let th = TestHub::open_with(dir.path(), t0(), campaign);
    let r = set(&th, &th.admin.clone(), "behind", "0.5").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.text().contains("it lists none"), "{}", r.text());
    // What was changed under the old file stays in force (the log says so).
    let rules = th.get_json(wire::PATH_NOTICE_RULES).await;
    assert_eq!(rule_of(&rules, "behind")["value"], 0.4);
    assert_eq!(rule_of(&rules, "behind")["adjustable"], false);
}

/// The stopped-store path (`notice-rules` without `--hub`) through the real binary: the
/// same checks, the change in the log (no token), `show` naming where each value is from.
fn the_stopped_store_changes_the_rules_the_same_way(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    cli::init(dir.path(), backend);
    let set = |args: &[&str]| {
        cli::run(
            dir.path(),
            &[
                &["notice-rules", "--now", "2018-11-25T02:00:00Z", "set"],
                args,
            ]
            .concat(),
        )
    };
    let out = set(&["behind", "0.7"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("notice rule behind changed from 0.8 to 0.7, recorded at log index 0"),
        "{stdout}"
    );
    for (args, want) in [
        (
            ["due_soon_days", "2"],
            "may not be changed on the running hub: the campaign file's [lagging] adjustable does not list it (it lists remind_days, escalate_after_days, behind, far_behind, silent_after_days)",
        ),
        (
            ["behind", "0.4"],
            "notice rule behind: 0.4 is not above far_behind (0.5)",
        ),
        (
            ["escalate_after_days", "-2"],
            "notice rule escalate_after_days: \"-2\" is not a whole number of days from 0 to 366",
        ),
    ] {
        let out = set(&args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let shown = cli::ok(dir.path(), &["notice-rules", "show"]);
    let line = |name: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("behind").contains("0.7")
            && line("behind")
                .contains("log index 0 (hub entry 1), 2018-11-25T02:00:00Z, on the stopped store"),
        "{shown}"
    );
    assert!(
        line("due_soon_days").contains("no") && line("due_soon_days").contains("campaign 2018"),
        "{shown}"
    );
    let json: Value =
        serde_json::from_str(&cli::ok(dir.path(), &["notice-rules", "show", "--json"]))
            .expect("json");
    let behind = rule_of(&json, "behind");
    assert_eq!(behind["value"], 0.7);
    assert_eq!(behind["changed"]["token"], Value::Null);
    cli::ok(dir.path(), &["verify"]);

    // The change stays in force over a campaign file edited afterwards; `check` says when
    // the two together cross far_behind over behind.
    let file = dir.path().join("campaign.toml");
    let text = std::fs::read_to_string(&file).expect("campaign.toml");
    assert!(text.contains("far_behind = 0.5\n"));
    std::fs::write(
        &file,
        text.replace("far_behind = 0.5\n", "far_behind = 0.75\n"),
    )
    .expect("write campaign.toml");
    let out = cli::run(dir.path(), &["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("have far_behind 0.75 not below behind 0.7; change one with `spacesync-hub notice-rules set`"),
        "{stderr}"
    );
}

/// On PostgreSQL, replicas share the log: a change made through one is in force on the
/// other at its next request (caught up like every hub-signed entry), and two admins
/// changing `behind` and `far_behind` against each other cannot cross them.
async fn a_replica_follows_a_change_made_on_another() {
    let dir = store_dir(Backend::Postgres);
    let a = TestHub::open(dir.path());
    let b = TestHub::open(dir.path());
    let r = set(&a, &a.admin.clone(), "silent_after_days", "4").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let rules = b.get_json(wire::PATH_NOTICE_RULES).await;
    assert_eq!(rule_of(&rules, "silent_after_days")["value"], 4);
    assert!(matches!(
        b.hub
            .snapshot()
            .views
            .rules(&b.hub.campaign)
            .rule(NoticeRule::SilentAfterDays),
        RuleValue::Days(4)
    ));
    // b lowers far_behind's ceiling: a's behind, checked at the head it commits at, sees it.
    assert_eq!(
        set(&b, &b.admin.clone(), "far_behind", "0.6").await.status,
        StatusCode::OK
    );
    let r = set(&a, &a.admin.clone(), "behind", "0.55").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(
        r.text().contains("not above far_behind (0.6)"),
        "{}",
        r.text()
    );
}

backends!(async a_live_change_is_in_force_for_the_next_bulletin_and_notices, only_adjustable_rules_only_with_an_admin_token_only_sane_values);
backends!(sync the_stopped_store_changes_the_rules_the_same_way);

#[tokio::test]
async fn replicas_follow_a_change() {
    a_replica_follows_a_change_made_on_another().await
}
