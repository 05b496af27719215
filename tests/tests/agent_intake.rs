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
    let mut agent = AgentProc::init(&no_hub(), |_| {});
    agent.start().await;
    let with_token = |body: String, ct: &'static str| {
        let http = reqwest::Client::new();
        let url = format!("{}/v1/records", agent.url());
        let token = agent.token.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
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
    let r = agent
        .request(reqwest::Method::POST, "/v1/records?dry_run=true")
        .header("content-type", "application/json")
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
    let metrics = agent
        .request(reqwest::Method::GET, "/metrics")
        .send()
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

/// Sends raw bytes to the agent as an attacker's client would and returns the status code
/// and the answer.
async fn raw(port: u16, request: String) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_strangers_and_reused_keys_cannot_get_records_in() {
    let mut agent = AgentProc::init(&no_hub(), |_| {});
    agent.start().await;
    let port = agent.port;
    let withdrawal = r#"{"kind":"withdrawal","target_seq":1,"reason":"forged"}"#;
    let unchanged = async |agent: &AgentProc, head: u64| {
        let st = agent.status().await;
        assert_eq!(
            (st["head_seq"].clone(), st["buffered"].clone()),
            (head.into(), head.into()),
            "{st}"
        );
    };

    // The cross-site form POST a web page can make: text/plain, an Origin, no token.
    let (code, text) = raw(
        port,
        format!(
            "POST /v1/records HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{withdrawal}",
            withdrawal.len()
        ),
    )
    .await;
    assert_eq!(code, 403, "{text}");
    unchanged(&agent, 0).await;
    // Even with the token, text/plain is not parsed, and an Origin is refused.
    let token = agent.token.clone();
    for (extra, want) in [
        ("Content-Type: text/plain\r\n".to_string(), 415),
        (String::new(), 415),
        (
            "Content-Type: application/json\r\nOrigin: null\r\n".to_string(),
            403,
        ),
    ] {
        let (code, text) = raw(
            port,
            format!(
                "POST /v1/records HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{withdrawal}",
                withdrawal.len()
            ),
        )
        .await;
        assert_eq!(code, want, "{extra:?}: {text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    // DNS rebinding: the page's own name resolves to 127.0.0.1; its Host is refused.
    let (code, text) = raw(
        port,
        format!(
            "GET /v1/status HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(code, 421, "{text}");
    // No token: 401 everywhere but /healthz.
    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/v1/notices"),
        ("POST", "/v1/notices/read"),
        ("POST", "/v1/verify"),
        ("GET", "/v1/verify"),
        ("GET", "/metrics"),
        ("POST", "/v1/records"),
    ] {
        let (code, text) = raw(
            port,
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"),
        )
        .await;
        assert_eq!(code, 401, "{method} {path}: {text}");
    }
    let (code, _) = raw(
        port,
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200);
    unchanged(&agent, 0).await;

    // Idempotency keys: bound to the body, bounded in length.
    let keyed = async |key: &str, body: String| {
        let r = agent
            .request(reqwest::Method::POST, "/v1/records")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let code = r.status().as_u16();
        (code, r.text().await.unwrap_or_default())
    };
    let (code, text) = keyed("k1", activity("first")).await;
    assert_eq!(code, 200, "{text}");
    let (code, text) = keyed("k1", activity("second")).await;
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("Idempotency-Key \\\"k1\\\""), "{text}");
    let (code, text) = keyed("k1", activity("first")).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"replayed\":true"), "{text}");
    let (code, text) = keyed(&"k".repeat(60 * 1024), activity("huge key")).await;
    assert_eq!(code, 400, "{text}");
    unchanged(&agent, 1).await;
    agent.stop();
    let stored: Vec<String> = titles(&stored_envelopes(&agent.data()))
        .into_iter()
        .map(|t| t.1)
        .collect();
    assert_eq!(stored, ["first"]);
}

/// Starts `run` and expects it to refuse: returns its stderr.
fn run_refused(agent: &AgentProc) -> String {
    let mut child = std::process::Command::new(spacesync_tests::agent_harness::agent_bin())
        .arg("--data")
        .arg(agent.dir.path())
        .args(["run", "--now", spacesync_tests::agent_harness::NOW])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            assert!(!st.success(), "run must refuse");
            let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_private_from_the_start_and_run_refuses_when_they_are_not() {
    use std::os::unix::fs::PermissionsExt;
    let mut agent = AgentProc::init(&no_hub(), |_| {});
    let data = agent.data();
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    for (p, want) in [
        (data.root.clone(), 0o700),
        (data.db(), 0o700),
        (data.config(), 0o600),
        (data.key(), 0o600),
        (data.token(), 0o600),
    ] {
        assert_eq!(mode(&p), want, "{}", p.display());
    }
    // `token` prints the token of the file, one line.
    let out = agent.cli(&["token"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", agent.token)
    );
    assert_eq!(agent.token.len(), 64);

    let set = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    for (p, loose, good, fix) in [
        (data.token(), 0o644, 0o600, "chmod 600"),
        (data.config(), 0o640, 0o600, "chmod 600"),
        (data.root.clone(), 0o755, 0o700, "chmod 700"),
        (data.db(), 0o705, 0o700, "chmod 700"),
    ] {
        set(&p, loose);
        let err = run_refused(&agent);
        set(&p, good);
        assert!(
            err.contains(&format!("{fix} {}", p.display()))
                && err.contains(&format!("{loose:03o}")),
            "{err}"
        );
        assert_eq!(mode(&p), good, "run must not change modes itself");
    }
    // No token file (a data directory from before tokens): refused with what to run.
    std::fs::remove_file(data.token()).unwrap_or_else(|e| panic!("{e}"));
    let err = run_refused(&agent);
    assert!(err.contains("token --generate"), "{err}");
    let out = agent.cli(&["token", "--generate"]);
    assert!(out.status.success(), "{out:?}");
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(new, agent.token);
    assert_eq!(mode(&data.token()), 0o600);
    assert!(
        !agent.cli(&["token", "--generate"]).status.success(),
        "never overwrites"
    );
    // An old `intake_token` in agent.toml is ignored (and warned about).
    let cfg = std::fs::read_to_string(data.config()).unwrap_or_default();
    std::fs::write(
        data.config(),
        cfg.replacen("hub = ", "intake_token = \"old-secret\"\nhub = ", 1),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let old = std::mem::replace(&mut agent.token, "old-secret".into());
    agent.start().await;
    let (code, _, _) = agent.post(&activity("x"), "application/json").await;
    assert_eq!(code, 401);
    assert_ne!(old, new);
    agent.token = old;
    let (code, _, _) = agent.post(&activity("x"), "application/json").await;
    assert_eq!(code, 401, "the removed token no longer works");
    agent.token = new.clone();
    let (code, _, v) = agent.post(&activity("x"), "application/json").await;
    assert_eq!(code, 200, "{v}");
    assert!(agent.log().contains("agent.toml still has intake_token"));
    // `import`, `status` and `verify` against the running agent send the token themselves.
    let out = agent.cli(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert!(agent.cli(&["verify"]).status.success());
    agent.stop();
    // Rotation: the old token stops working once the agent restarts.
    let out = agent.cli(&["token", "--rotate"]);
    assert!(out.status.success(), "{out:?}");
    let rotated = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(mode(&data.token()), 0o600);
    agent.start().await;
    let (code, _, _) = agent.post(&activity("y"), "application/json").await;
    assert_eq!(code, 401);
    agent.token = rotated;
    let (code, _, v) = agent.post(&activity("y"), "application/json").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(agent.status().await["head_seq"], 2);
}
