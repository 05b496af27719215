//! The agent's intake through its real binary: HTTP, import, spool and the offline tools.
//! No hub runs here (the hub URL points at a closed port), so everything stays buffered.

use std::time::Duration;

use serde_json::Value;
use spacesync_tests::agent_harness::{
    AgentProc, activity, free_port, stored_envelopes, titles, wait_for,
};

fn no_hub() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

const SPACE_COUNT: &str = r#"{ "kind": "space_count", "region": "440106", "school": "4144010601", "as_of": "2018-11-20",
  "spaces": { "teacher": 1200, "student": 30500, "parent": 800, "master_teacher": 15, "school": 1, "class": 640, "club": 12, "region": 0 },
  "real_name": { "teacher": 1150, "student": 24000 }, "population": { "teachers": 1300, "students": 32000, "schools": 1 } }"#;

const MILESTONE: &str = r#"{ "kind": "milestone", "milestone": "implementation_plan", "region": "440000", "submitted_on": "2018-11-12",
  "document": { "title": "广东省网络学习空间应用普及实施方案（2018—2020年）", "sha256": "9f2c4b6e1a3d5f7081c2e4a6b8d0f1e3c5a7b9d1f3e5a7c9b1d3f5a7c9e1b3d5",
                "uri": "https://platform.example.gd.cn/docs/plan-2018.pdf" },
  "details": { "years": { "2018": ["440100", "440300", "440600"], "2019": ["440200", "440400", "440500"] } } }"#;

const RECOMMENDATION: &str = r#"{ "kind": "recommendation", "level": "city", "by": "440100",
  "nominee": { "type": "school", "code": "4144010601", "name": "广州市天河区某某小学", "region": "440106" } }"#;

/// Posts `body` and checks the status and that every expected fragment is in the answer.
async fn check(agent: &AgentProc, body: &str, ct: &str, status: u16, expected: &[&str]) -> Value {
    let (got, _, v) = agent.post(body, ct).await;
    let text = v.to_string();
    assert_eq!(got, status, "{text}");
    for e in expected {
        assert!(text.contains(e), "{e:?} not in {text}");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_kind_is_taken_over_http_and_bad_batches_leave_nothing() {
    let mut agent = AgentProc::init(&no_hub(), |c| c.intake_token = Some("s3cret".into()));
    agent.start().await;
    // Without the token: 401.
    check(
        &agent,
        &activity("x"),
        "application/json",
        401,
        &["bearer token"],
    )
    .await;
    let with_token = |body: String, ct: &'static str| {
        let http = reqwest::Client::new();
        let url = format!("{}/v1/records", agent.url());
        async move {
            let r = http
                .post(url)
                .bearer_auth("s3cret")
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let one = |r: &str| r.split_whitespace().collect::<Vec<_>>().join(" ");
    // One object, each kind.
    for (next, body) in (1..).zip([SPACE_COUNT, MILESTONE, RECOMMENDATION, &activity("a")]) {
        let (s, v) = with_token(body.to_string(), "application/json").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["seqs"], serde_json::json!([next]), "{v}");
    }
    // A withdrawal of seq 3, as NDJSON together with another record.
    let nd = format!(
        "{}\n{}\n",
        r#"{"kind":"withdrawal","target_seq":3,"reason":"duplicate submission"}"#,
        one(SPACE_COUNT)
    );
    let (s, v) = with_token(nd, "application/x-ndjson").await;
    assert_eq!(
        (s, v["seqs"].clone()),
        (200, serde_json::json!([5, 6])),
        "{v}"
    );
    // A JSON array.
    let (s, v) = with_token(
        format!("[{},{}]", activity("b"), activity("c")),
        "application/json",
    )
    .await;
    assert_eq!(
        (s, v["accepted"].clone()),
        (200, serde_json::json!(2)),
        "{v}"
    );
    // CSV.
    let csv = "region,school,as_of,teacher,student,school_spaces\n440106,4144010601,2018-11-20,10,200,1\n440106,,2018-11-21,50,900,\n";
    let (s, v) = with_token(csv.into(), "text/csv").await;
    assert_eq!(
        (s, v["seqs"].clone()),
        (200, serde_json::json!([9, 10])),
        "{v}"
    );

    // A batch with problems in several records: 422, every problem with its position, nothing stored.
    let bad = format!(
        "{}\n{}\n{}\n",
        activity("fine"),
        r#"{"kind":"activity","region":"450100","date":"2018-11-20","category":"training","title":"t"}"#,
        r#"{"kind":"space_count","region":"440106","as_of":"2018-11-30","spaces":{"teacher":-1},"colour":"red"}"#
    );
    let (s, v) = with_token(bad, "application/x-ndjson").await;
    assert_eq!(s, 422, "{v}");
    let problems: Vec<String> = serde_json::from_value(v["problems"].clone()).unwrap_or_default();
    for want in [
        "record 2 (line 2): region: 450100 is outside this source's scope 440000",
        "record 3 (line 3): colour: is not a field of space_count records",
        "record 3 (line 3): spaces.teacher: must be ≥ 0",
    ] {
        assert!(
            problems.iter().any(|p| p == want),
            "{want:?} not in {problems:#?}"
        );
    }
    // CSV problems name the column and line.
    let (s, v) = with_token(
        "region,as_of,teacher\n440106,2018-11-20,ten\n".into(),
        "text/csv",
    )
    .await;
    assert_eq!(s, 422);
    assert!(
        v.to_string()
            .contains("record 1 (line 2): column teacher: must be"),
        "{v}"
    );
    // Malformed JSON names line and column.
    let (s, v) = with_token("{\"kind\": \n".into(), "application/json").await;
    assert_eq!(s, 422);
    assert!(v.to_string().contains("line 2"), "{v}");

    // Dry run judges and stores nothing.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/records?dry_run=true", agent.url()))
        .bearer_auth("s3cret")
        .body(activity("dry"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (v["dry_run"].clone(), v["seqs"].clone()),
        (Value::Bool(true), serde_json::json!([11]))
    );

    let st = agent.status().await;
    assert_eq!(st["head_seq"], 10, "{st}");
    assert_eq!(st["buffered"], 10);
    let metrics = reqwest::get(format!("{}/metrics", agent.url()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains("spacesync_agent_buffered_entries 10"),
        "{metrics}"
    );
    agent.stop();
    let out = agent.cli(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let kinds: Vec<String> = titles(&stored_envelopes(&agent.data()))
        .into_iter()
        .map(|t| t.1)
        .collect();
    assert_eq!(
        kinds,
        [
            "space_count",
            "milestone",
            "recommendation",
            "a",
            "withdrawal",
            "space_count",
            "b",
            "c",
            "space_count",
            "space_count"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_spool_accept_whole_files_or_explain_every_line() {
    let mut agent = AgentProc::init(&no_hub(), |_| {});
    let dir = agent.dir.path().to_path_buf();
    let good = dir.join("good.csv");
    std::fs::write(&good, "region,school,as_of,teacher\n440106,4144010601,2018-11-20,10\n440106,4144010602,2018-11-20,12\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.join("bad.ndjson");
    std::fs::write(
        &bad,
        format!("{}\n{}\n", activity("ok"), r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"party","title":"x"}"#),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (g, b) = (
        good.to_string_lossy().into_owned(),
        bad.to_string_lossy().into_owned(),
    );

    // Offline, dry run: reports, stores nothing.
    let out = agent.cli(&[
        "import",
        "--dry-run",
        "--now",
        "2018-11-25T10:00:00+08:00",
        &g,
        &b,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("good.csv: would accept 2 records as seqs 1–2"),
        "{text}"
    );
    assert!(text.contains("bad.ndjson: would be refused"), "{text}");
    assert!(text.contains("bad.ndjson: record 2 (line 2): category: must be one of training, conference, exhibition, research, other, got \"party\""), "{text}");
    // Offline, for real: the good file goes in, the bad one leaves nothing.
    let out = agent.cli(&["import", "--now", "2018-11-25T10:00:00+08:00", &g, &b]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("good.csv: accepted 2 records as seqs 1–2"),
        "{text}"
    );
    assert!(
        text.contains("bad.ndjson: refused; nothing of it was stored"),
        "{text}"
    );
    // The same file again is recognised, not stored twice.
    let out = agent.cli(&["import", "--now", "2018-11-25T10:00:00+08:00", &g]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already imported"),
        "{out:?}"
    );

    // While the agent runs, import goes through its API.
    agent.start().await;
    let more = dir.join("more.json");
    std::fs::write(&more, format!("[{},{}]", activity("m1"), activity("m2")))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = agent.cli(&["import", &more.to_string_lossy()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("accepted 2 records as seqs 3–4"), "{text}");
    // status and verify also work against the running agent.
    let out = agent.cli(&["status", "--json"]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        (st["head_seq"].clone(), st["running"].clone()),
        (serde_json::json!(4), Value::Bool(true)),
        "{st}"
    );
    assert!(agent.cli(&["verify"]).status.success());

    // Spool: complete files only (tmp + rename), moved to done/ or failed/ with reasons.
    let spool = agent.data().spool();
    std::fs::write(
        spool.join("s1.csv.tmp"),
        "region,as_of,teacher\n440106,2018-11-20,7\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(spool.join("s2.ndjson.tmp"), format!("{}\n{}\n", activity("s2a"), r#"{"kind":"activity","region":"440100","date":"2018-12-20","category":"training","title":"future"}"#))
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        spool.join("s1.csv.tmp").exists(),
        "a .tmp file must be left alone"
    );
    std::fs::rename(spool.join("s1.csv.tmp"), spool.join("s1.csv"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(spool.join("s2.ndjson.tmp"), spool.join("s2.ndjson"))
        .unwrap_or_else(|e| panic!("{e}"));
    let data = agent.data();
    wait_for(
        Duration::from_secs(10),
        "spool files to be handled",
        async || {
            (data.spool_done().join("s1.csv").exists()
                && data.spool_failed().join("s2.ndjson").exists())
            .then_some(())
        },
    )
    .await;
    let errors = std::fs::read_to_string(data.spool_failed().join("s2.ndjson.errors.txt"))
        .unwrap_or_default();
    assert!(
        errors.contains("record 2 (line 2): date: 2018-12-20 is after today (2018-11-25)"),
        "{errors}"
    );
    assert_eq!(agent.status().await["head_seq"], 5);
    agent.stop();

    // Offline status, pubkey.
    let out = agent.cli(&["status", "--json"]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    for key in ["head_seq", "acked_seq", "buffered", "last_error"] {
        assert!(st.get(key).is_some(), "{key} missing in {st}");
    }
    assert_eq!(
        (st["head_seq"].clone(), st["running"].clone()),
        (serde_json::json!(5), Value::Bool(false))
    );
    let out = agent.cli(&["pubkey"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", agent.key_line)
    );
    // init refuses to overwrite the identity.
    let out = agent.cli(&[
        "init",
        "--source",
        "gd-rrt",
        "--scope",
        "440000",
        "--hub",
        "http://127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    let titles: Vec<String> = titles(&stored_envelopes(&agent.data()))
        .into_iter()
        .map(|t| t.1)
        .collect();
    assert_eq!(
        titles,
        ["space_count", "space_count", "m1", "m2", "space_count"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_the_limit() {
    let mut agent = AgentProc::init(&no_hub(), |c| c.intake.max_body_bytes = 1000);
    agent.start().await;
    let big = format!("[{}]", vec![activity("x"); 20].join(","));
    check(
        &agent,
        &big,
        "application/json",
        413,
        &["intake.max_body_bytes = 1000"],
    )
    .await;
    assert_eq!(agent.status().await["head_seq"], 0);
}
