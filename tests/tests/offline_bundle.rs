//! The offline bundle between real processes: an agent that cannot reach the hub exports
//! its unsent entries; the stopped hub imports them through its ingest path and writes
//! receipts; the agent imports the receipts and counts the entries delivered. A tampered
//! bundle and a replayed one change nothing at the hub and say why; a tampered receipts
//! file changes nothing at the agent; receipts imported twice change nothing.

use std::time::Duration;

use serde_json::Value;
use spacesync_hub::store::SledStore;
use spacesync_tests::checker;
use spacesync_tests::cluster::{AgentNode, HubNode, NOW, SITES, Workload};
use spacesync_tests::procs::free_port;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn hub_leaves(hub: &HubNode) -> Vec<checker::Leaf> {
    let store = SledStore::open(&hub.db()).unwrap_or_else(|e| panic!("{e}"));
    checker::read_hub_log(&store).unwrap_or_else(|e| panic!("{e}"))
}

fn acked(agent: &AgentNode) -> u64 {
    let out = agent.cli(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["acked_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("status: {}", text(&out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_carries_entries_to_the_hub_and_receipts_back_and_replays_or_tampering_change_nothing()
 {
    let hub = HubNode::init();
    // The agent's hub address answers nothing: it can only buffer.
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let mut agent = AgentNode::init(SITES[0], &unreachable, &hub.key_line, |cfg| {
        cfg.push.max_entries = 3;
    });
    hub.register(&SITES[0], &agent.key_line);
    agent.start().await;
    let mut work = Workload::new(agent.site);
    let http = reqwest::Client::new();
    for _ in 0..4 {
        let body = (0..2)
            .map(|_| work.next_write().1)
            .collect::<Vec<_>>()
            .join("\n");
        let r = http
            .post(format!("{}/v1/records", agent.url()))
            .bearer_auth(&agent.token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.stop();

    let files = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = |n: &str| files.path().join(n).to_string_lossy().to_string();
    let out = agent.cli(&["export-bundle", &p("bundle.json")]);
    assert!(out.status.success(), "export-bundle: {}", text(&out));
    assert!(text(&out).contains("8 entries, seqs 1–8"), "{}", text(&out));
    let bundle: Value =
        serde_json::from_str(&std::fs::read_to_string(p("bundle.json")).unwrap_or_default())
            .unwrap_or(Value::Null);
    assert_eq!(
        bundle["batches"].as_array().map(Vec::len),
        Some(3),
        "batches of 3"
    );

    // Tampered: the first entry's signature changed. Refused with the reason; nothing
    // lands (the later batches then leave a gap, also refused).
    let mut bad = bundle.clone();
    let sig = bad["batches"][0]["entries"][0]["signatures"][0]["sig"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!sig.is_empty(), "{bundle}");
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    bad["batches"][0]["entries"][0]["signatures"][0]["sig"] =
        Value::String(format!("{flipped}{}", &sig[1..]));
    std::fs::write(p("tampered.json"), bad.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = hub.cli(&[
        "import-bundle",
        &p("tampered.json"),
        "--receipts",
        &p("r-tampered.json"),
        "--now",
        NOW,
    ]);
    assert!(!out.status.success(), "a tampered bundle is refused");
    assert!(
        text(&out).contains("refused seq 1") && text(&out).contains("BadSignature"),
        "{}",
        text(&out)
    );
    assert!(
        hub_leaves(&hub).is_empty(),
        "nothing of a tampered bundle lands"
    );

    // The real bundle: every entry appended, receipts written.
    let out = hub.cli(&[
        "import-bundle",
        &p("bundle.json"),
        "--receipts",
        &p("receipts.json"),
        "--now",
        NOW,
    ]);
    assert!(out.status.success(), "import-bundle: {}", text(&out));
    let leaves = hub_leaves(&hub);
    assert_eq!(
        leaves.iter().map(|l| l.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );

    // Replayed: nothing changes, and it says so.
    let out = hub.cli(&[
        "import-bundle",
        &p("bundle.json"),
        "--receipts",
        &p("receipts-again.json"),
        "--now",
        NOW,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing changed"), "{}", text(&out));
    assert_eq!(hub_leaves(&hub), leaves);

    // A receipts file whose hub signature was altered: refused, nothing marked.
    let receipts: Value =
        serde_json::from_str(&std::fs::read_to_string(p("receipts.json")).unwrap_or_default())
            .unwrap_or(Value::Null);
    let mut forged = receipts.clone();
    let sig = forged["answers"][0]["batch_receipt"]["signatures"][0]["sig"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!sig.is_empty(), "a batch receipt in {receipts}");
    let other = if sig.starts_with('A') { "B" } else { "A" };
    forged["answers"][0]["batch_receipt"]["signatures"][0]["sig"] =
        Value::String(format!("{other}{}", &sig[1..]));
    std::fs::write(p("forged.json"), forged.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = agent.cli(&["import-receipts", &p("forged.json")]);
    assert!(
        !out.status.success(),
        "forged receipts refused: {}",
        text(&out)
    );
    assert!(text(&out).contains("does not verify"), "{}", text(&out));
    assert_eq!(acked(&agent), 0);

    // The real receipts: every entry delivered; a second import changes nothing.
    let out = agent.cli(&["import-receipts", &p("receipts.json")]);
    assert!(out.status.success(), "import-receipts: {}", text(&out));
    assert!(
        text(&out).contains("marked seqs 1–8 delivered"),
        "{}",
        text(&out)
    );
    assert_eq!(acked(&agent), 8);
    let out = agent.cli(&["import-receipts", &p("receipts-again.json")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing new"), "{}", text(&out));
    assert_eq!(acked(&agent), 8);
    let v = agent.cli(&["verify"]);
    assert!(v.status.success(), "agent verify: {}", text(&v));
    let v = hub.cli(&["verify"]);
    assert!(v.status.success(), "hub verify: {}", text(&v));
    // Nothing is left to export.
    let out = agent.cli(&["export-bundle", &p("empty.json")]);
    assert!(text(&out).contains("no entries"), "{}", text(&out));
}

/// `import-bundle --hub URL`: the same bundle ingested by a running hub through its admin
/// API (no data directory, the token from the environment): every entry appended, the
/// receipts verify at the agent, a replay changes nothing, and a bundle of a source the
/// hub does not know is refused as a whole with the hub's words — not as a bad token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_hub_imports_a_bundle_through_its_admin_api() {
    let mut hub = HubNode::init();
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let mut agent = AgentNode::init(SITES[0], &unreachable, &hub.key_line, |cfg| {
        cfg.push.max_entries = 2;
    });
    let mut stranger = AgentNode::init(SITES[1], &unreachable, &hub.key_line, |_| {});
    hub.register(&SITES[0], &agent.key_line);
    let made = hub.cli(&["token", "create", "--role", "admin", "--label", "bundles"]);
    assert!(made.status.success(), "token create: {}", text(&made));
    let token = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let http = reqwest::Client::new();
    for a in [&mut agent, &mut stranger] {
        a.start().await;
        let mut work = Workload::new(a.site);
        let body = (0..5)
            .map(|_| work.next_write().1)
            .collect::<Vec<_>>()
            .join("\n");
        let r = http
            .post(format!("{}/v1/records", a.url()))
            .bearer_auth(&a.token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), 200);
        a.stop();
    }
    hub.start().await;
    let url = hub.url();
    let files = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = |n: &str| files.path().join(n).to_string_lossy().to_string();
    let remote = |args: &[&str]| {
        std::process::Command::new(spacesync_tests::cluster::hub_bin())
            .args(args)
            .args(["--hub", &url])
            .env("SPACESYNC_HUB_TOKEN", &token)
            .env_remove("SPACESYNC_HUB_DATA")
            .current_dir(files.path())
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let out = agent.cli(&["export-bundle", &p("bundle.json")]);
    assert!(out.status.success(), "export-bundle: {}", text(&out));

    let out = remote(&[
        "import-bundle",
        &p("bundle.json"),
        "--receipts",
        &p("r.json"),
    ]);
    assert!(out.status.success(), "import-bundle --hub: {}", text(&out));
    assert!(text(&out).contains("2 appended"), "{}", text(&out));
    let out = remote(&[
        "import-bundle",
        &p("bundle.json"),
        "--receipts",
        &p("r2.json"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing changed"), "{}", text(&out));

    // A source the hub does not know: refused as a whole, the hub's reason in the words.
    let out = stranger.cli(&["export-bundle", &p("stranger.json")]);
    assert!(out.status.success(), "{}", text(&out));
    let out = remote(&[
        "import-bundle",
        &p("stranger.json"),
        "--receipts",
        &p("r3.json"),
    ]);
    assert!(
        !out.status.success(),
        "an unknown source's bundle is refused"
    );
    assert!(
        text(&out).contains("batch 1 of the bundle")
            && text(&out).contains("is not registered at this hub"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("token"), "{}", text(&out));

    // A wrong token: refused before anything.
    let bad = std::process::Command::new(spacesync_tests::cluster::hub_bin())
        .args([
            "import-bundle",
            &p("bundle.json"),
            "--receipts",
            &p("r4.json"),
        ])
        .args(["--hub", &url])
        .env("SPACESYNC_HUB_TOKEN", "sst_not-a-token")
        .env_remove("SPACESYNC_HUB_DATA")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!bad.status.success());
    assert!(text(&bad).contains("refused the token"), "{}", text(&bad));

    hub.stop();
    let leaves = hub_leaves(&hub);
    assert_eq!(
        leaves.iter().map(|l| l.seq).collect::<Vec<_>>(),
        (1..=5).collect::<Vec<_>>()
    );
    let out = agent.cli(&["import-receipts", &p("r.json")]);
    assert!(out.status.success(), "import-receipts: {}", text(&out));
    assert_eq!(acked(&agent), 5);
    let v = hub.cli(&["verify"]);
    assert!(v.status.success(), "hub verify: {}", text(&v));
}
