//! `spacesync-hub backup` while the hub serves under load: the copy is one instant of the
//! log (its leaves are a prefix of the final log), `--data OUT verify` passes and
//! `--data OUT serve` answers; `restore` puts it back as a data directory that verifies; a
//! stopped hub is copied directly; a non-empty target is refused. An agent's backup taken
//! while it runs is one instant of its chain; restored over its data directory after the
//! hub received more, the agent takes back the hub's entries of its chain (SIGKILLed while
//! doing so, and started again) and delivers on: every record once at the hub.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use spacesync_hub::store::SledStore;
use spacesync_tests::checker::{self, History, SharedHistory};
use spacesync_tests::cluster::{Cluster, NOW, Workload, WriterStats, hub_bin, write_loop};
use spacesync_tests::fault_proxy::FaultPlan;
use spacesync_tests::procs::{self, Health, free_port, run_cli};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The source leaves of the hub log in `db`. Waits (up to 10 s) while the directory is
/// still locked: a process that just exited, or a store this test process just dropped
/// (sled lets go of its lock from background threads a moment later).
fn leaves(db: &std::path::Path) -> Vec<checker::Leaf> {
    let start = std::time::Instant::now();
    let store = loop {
        match SledStore::open(db) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{}: {e}", db.display()),
        }
    };
    checker::read_hub_log(&store).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_is_one_instant_that_serves_verifies_and_restores() {
    let mut c = Cluster::start(2, 11, FaultPlan::NONE, |_| {}).await;
    let history: SharedHistory = Arc::default();
    let stats = Arc::new(WriterStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = c
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            tokio::spawn(write_loop(
                a.api(),
                Workload::new(a.site),
                history.clone(),
                stats.clone(),
                stop.clone(),
                down.clone(),
                11 + i as u64,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let backups = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = backups.path().join("while-serving");
    let out_arg = out.to_string_lossy().to_string();
    let made = c.hub.cli(&["backup", &out_arg]);
    assert!(
        made.status.success(),
        "backup while serving: {}",
        text(&made)
    );
    assert!(c.hub.running(), "the hub kept serving");
    // The same target again: refused, nothing overwritten.
    let again = c.hub.cli(&["backup", &out_arg]);
    assert!(!again.status.success());
    assert!(text(&again).contains("not empty"), "{}", text(&again));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap_or_else(|e| panic!("writer: {e}"));
    }
    c.wait_drained(Duration::from_secs(60)).await;
    for a in &mut c.agents {
        a.stop();
    }
    c.hub.stop();

    // One instant: the copy's leaves are exactly the first leaves of the final log, and
    // writes went on after it.
    let final_leaves = leaves(&c.hub.db());
    let copied = leaves(&out.join("db"));
    assert!(!copied.is_empty(), "the backup holds entries");
    assert!(
        copied.len() < final_leaves.len(),
        "entries arrived after the backup ({} vs {})",
        copied.len(),
        final_leaves.len()
    );
    assert_eq!(copied[..], final_leaves[..copied.len()]);
    let history: History = history.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let report = checker::check(&history, &final_leaves);
    assert!(report.valid(), "{}", report.details());

    // The backup verifies and serves as a data directory of its own.
    let v = run_cli(hub_bin(), &out, &["verify"]);
    assert!(v.status.success(), "verify of the backup: {}", text(&v));
    let port = free_port();
    let mut child = Some(
        std::process::Command::new(hub_bin())
            .arg("--data")
            .arg(&out)
            .args([
                "serve",
                "--now",
                NOW,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let health = procs::wait_healthy(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}"),
        &mut child,
        Duration::from_secs(30),
        Duration::from_millis(20),
        Some(Duration::from_secs(2)),
    )
    .await;
    assert!(matches!(health, Health::Up), "the backup serves");
    // Backing up the backup while it serves goes through its control socket too.
    let second = backups.path().join("of-the-backup");
    let b2 = run_cli(hub_bin(), &out, &["backup", &second.to_string_lossy()]);
    assert!(b2.status.success(), "{}", text(&b2));
    if let Some(mut ch) = child.take() {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    assert_eq!(leaves(&second.join("db")), copied);

    // restore: a new data directory from the backup, which verifies.
    let restored = backups.path().join("restored");
    let r = run_cli(hub_bin(), &restored, &["restore", &out_arg]);
    assert!(r.status.success(), "restore: {}", text(&r));
    let v = run_cli(hub_bin(), &restored, &["verify"]);
    assert!(
        v.status.success(),
        "verify of the restored hub: {}",
        text(&v)
    );
    assert_eq!(leaves(&restored.join("db")), copied);

    // A stopped hub is copied directly.
    let cold = backups.path().join("stopped");
    let b = c.hub.cli(&["backup", &cold.to_string_lossy()]);
    assert!(b.status.success(), "backup of a stopped hub: {}", text(&b));
    assert_eq!(leaves(&cold.join("db")), final_leaves);
    let v = run_cli(hub_bin(), &cold, &["verify"]);
    assert!(v.status.success(), "{}", text(&v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_backup_taken_while_running_is_one_instant_and_a_restored_older_copy_takes_back_the_hubs_entries()
 {
    use spacesync_agent::config::{Config, DataDir};
    use spacesync_tests::agent_harness::{agent_bin, stored_envelopes};

    let mut c = Cluster::start(1, 12, FaultPlan::NONE, |_| {}).await;
    let history: SharedHistory = Arc::default();
    let stats = Arc::new(WriterStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_loop(
        c.agents[0].api(),
        Workload::new(c.agents[0].site),
        history.clone(),
        stats.clone(),
        stop.clone(),
        down.clone(),
        12,
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let backups = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = backups.path().join("agent-backup");
    let made = c.agents[0].cli(&["backup", &out.to_string_lossy()]);
    assert!(
        made.status.success(),
        "agent backup while running: {}",
        text(&made)
    );
    assert!(c.agents[0].running());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let work = writer.await.unwrap_or_else(|e| panic!("writer: {e}"));
    c.wait_drained(Duration::from_secs(60)).await;
    c.agents[0].stop();

    // One instant of the chain: the copy's entries are the first entries of the final
    // store, and the agent went on after it.
    let final_entries = stored_envelopes(&c.agents[0].data());
    let copied = stored_envelopes(&DataDir::new(&out));
    assert!(!copied.is_empty());
    assert!(
        copied.len() < final_entries.len(),
        "entries came after the backup"
    );
    assert_eq!(copied[..], final_entries[..copied.len()]);
    let v = spacesync_tests::procs::run_cli(agent_bin(), &out, &["verify"]);
    assert!(
        v.status.success(),
        "verify of the agent backup: {}",
        text(&v)
    );

    // restore the older copy over the agent's own data directory (the original moved
    // away), with pages of two entries so that taking back takes many requests; start it
    // and SIGKILL it while it takes back; then start it again.
    let moved = backups.path().join("agent-original");
    std::fs::rename(c.agents[0].dir.path(), &moved).unwrap_or_else(|e| panic!("{e}"));
    let data = c.agents[0].data();
    let r = spacesync_tests::procs::run_cli(
        agent_bin(),
        &data.root,
        &["restore", &out.to_string_lossy()],
    );
    assert!(r.status.success(), "restore: {}", text(&r));
    let v = spacesync_tests::procs::run_cli(agent_bin(), &data.root, &["verify"]);
    assert!(
        v.status.success(),
        "verify of the restored agent: {}",
        text(&v)
    );
    // Before it has taken back what the hub holds, nothing may append to it offline: an
    // import or a key rotation would take seqs the hub already holds (a fork).
    let records = backups.path().join("late.ndjson");
    std::fs::write(
        &records,
        format!("{}\n", Workload::new(c.agents[0].site).next_write().1),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for args in [
        vec!["import", records.to_str().unwrap_or_default()],
        vec!["rotate-key"],
        vec!["rotate-key", "--lost"],
    ] {
        let r = spacesync_tests::procs::run_cli(agent_bin(), &data.root, &args);
        assert!(!r.status.success(), "{args:?}: {}", text(&r));
        assert!(
            text(&r).contains("let it catch up first"),
            "{args:?}: {}",
            text(&r)
        );
    }
    let mut cfg = Config::load(&data.config()).unwrap_or_else(|e| panic!("{e}"));
    cfg.push.max_entries = 2;
    std::fs::write(data.config(), cfg.to_toml()).unwrap_or_else(|e| panic!("{e}"));
    let (backup_head, hub_head) = (copied.len() as u64, final_entries.len() as u64);
    c.agents[0].start().await;
    let started = std::time::Instant::now();
    let seen = loop {
        let s = c.agents[0].status().await.unwrap_or_default();
        if s["head_seq"].as_u64().is_some_and(|h| h > backup_head) {
            c.agents[0].kill();
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the restored agent took nothing back: {s}\n{}",
            c.agents[0].log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let at_kill = stored_envelopes(&data).len() as u64;
    assert!(
        backup_head < at_kill && at_kill < hub_head,
        "killed while taking back: the backup ends at {backup_head}, the hub holds {hub_head}, the store held {at_kill} ({seen})"
    );
    assert_eq!(seen["catching_up"], true, "{seen}");
    assert!(seen["alarm"].is_null(), "{seen}");
    let v = spacesync_tests::procs::run_cli(agent_bin(), &data.root, &["verify"]);
    assert!(v.status.success(), "verify after the kill: {}", text(&v));

    c.agents[0].start().await;
    let started = std::time::Instant::now();
    loop {
        let s = c.agents[0].status().await.unwrap_or_default();
        if s["catching_up"] == false && s["head_seq"].is_u64() {
            assert_eq!(s["head_seq"].as_u64(), Some(hub_head), "{s}");
            assert_eq!(s["acked_seq"].as_u64(), Some(hub_head), "{s}");
            assert!(s["alarm"].is_null(), "{s}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the restored agent did not catch up: {s}\n{}",
            c.agents[0].log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It delivers on from the hub's head, the workload going on where it stopped.
    stop.store(false, Ordering::Relaxed);
    let writer = tokio::spawn(write_loop(
        c.agents[0].api(),
        work,
        history.clone(),
        stats.clone(),
        stop.clone(),
        down.clone(),
        13,
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap_or_else(|e| panic!("writer: {e}"));
    c.wait_drained(Duration::from_secs(60)).await;
    let s = c.agents[0].status().await.unwrap_or_default();
    assert!(s["log_alarm"].is_null(), "the hub's log audits clean: {s}");
    c.agents[0].stop();
    c.hub.stop();

    let after = stored_envelopes(&data);
    assert!(
        after.len() as u64 > hub_head,
        "records were taken after the restore"
    );
    assert_eq!(
        after[..final_entries.len()],
        final_entries[..],
        "the hub's entries, taken back as they were"
    );
    let v = spacesync_tests::procs::run_cli(agent_bin(), &data.root, &["verify"]);
    assert!(v.status.success(), "verify at the end: {}", text(&v));
    let hub_leaves = leaves(&c.hub.db());
    let history: History = history.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let report = checker::check(&history, &hub_leaves);
    assert!(report.valid(), "{}", report.details());
    assert_eq!(
        hub_leaves.len(),
        after.len(),
        "every entry of the agent once at the hub"
    );

    // A restored copy waits for the hub; `restore --offline` (a province that cannot reach
    // it) accepts records at once.
    for (args, catching_up) in [(vec![], true), (vec!["--offline"], false)] {
        let dir = backups.path().join(format!("restored{}", args.len()));
        let mut restore = vec!["restore", out.to_str().unwrap_or_default()];
        restore.extend(&args);
        let r = spacesync_tests::procs::run_cli(agent_bin(), &dir, &restore);
        assert!(r.status.success(), "restore {args:?}: {}", text(&r));
        let st = spacesync_tests::procs::run_cli(agent_bin(), &dir, &["status", "--json"]);
        let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
        assert_eq!(st["catching_up"], catching_up, "restore {args:?}: {st}");
    }
}

/// Posts the next `n` writes of `work` to the agent at `api`, one record each; each must
/// be answered 200.
async fn post_writes(api: &spacesync_tests::cluster::AgentApi, work: &mut Workload, n: usize) {
    let http = reqwest::Client::new();
    for _ in 0..n {
        let (_, line, _) = work.next_write();
        let r = http
            .post(format!("{}/v1/records", api.url))
            .bearer_auth(&api.token)
            .header("content-type", "application/x-ndjson")
            .body(line)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = r.status().as_u16();
        assert_eq!(status, 200, "{}", r.text().await.unwrap_or_default());
    }
}

/// Waits (up to 30 s) until the running agent's status passes `done`; returns it.
async fn status_until(
    agent: &spacesync_tests::cluster::AgentNode,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let s = agent.status().await.unwrap_or_default();
        if done(&s) {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: {s}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backup made before the agent rotated its key (`rotate-key`, delivered: the hub's
/// registry names only the new key now), restored and started: the agent still reads
/// its own chain at the hub with the older key, takes it back, meets the transition to a
/// key this directory does not hold and stops there — `key_not_held`, not a 401 —, with
/// intake closed and `/readyz` not ready; an entry that key signs after the transition is
/// refused by the hub. The way out its alarm names works: `rotate-key --lost`, the hub's
/// admin records that key, and the agent opens intake and delivers under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_from_before_a_key_rotation_takes_back_its_chain_and_stops_at_the_key_it_does_not_hold()
 {
    use spacesync_agent::config::DataDir;
    use spacesync_shared::entry::Entry;
    use spacesync_tests::agent_harness::{agent_bin, stored_envelopes};
    use spacesync_tests::cluster::AGENT_NOW;

    let mut c = Cluster::start(1, 14, FaultPlan::NONE, |_| {}).await;
    let mut work = Workload::new(c.agents[0].site);
    let source = c.agents[0].site.source;
    post_writes(&c.agents[0].api(), &mut work, 4).await;
    c.wait_drained(Duration::from_secs(60)).await;
    let backups = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = backups.path().join("before-rotation");
    let made = c.agents[0].cli(&["backup", &out.to_string_lossy()]);
    assert!(made.status.success(), "agent backup: {}", text(&made));
    post_writes(&c.agents[0].api(), &mut work, 2).await;
    c.wait_drained(Duration::from_secs(60)).await;

    // The agent rotates its key (the transition in its chain), and delivers under it.
    c.agents[0].stop();
    let rotated = c.agents[0].cli(&["rotate-key", "--now", AGENT_NOW]);
    assert!(rotated.status.success(), "rotate-key: {}", text(&rotated));
    c.agents[0].start().await;
    post_writes(&c.agents[0].api(), &mut work, 3).await;
    c.wait_drained(Duration::from_secs(60)).await;
    c.agents[0].stop();
    let final_entries = stored_envelopes(&c.agents[0].data());
    let hub_head = final_entries.len() as u64;
    assert_eq!(hub_head, 10, "4 + 2 records, the transition, 3 records");
    let backup_key = spacesync_shared::keys::read_secret(&DataDir::new(&out).key())
        .unwrap_or_else(|e| panic!("{e}"));

    // Restored from the backup over the agent's data directory, and started.
    let moved = backups.path().join("agent-original");
    std::fs::rename(c.agents[0].dir.path(), &moved).unwrap_or_else(|e| panic!("{e}"));
    let data = c.agents[0].data();
    let r = run_cli(
        agent_bin(),
        &data.root,
        &["restore", &out.to_string_lossy()],
    );
    assert!(r.status.success(), "restore: {}", text(&r));
    c.agents[0].start().await;
    let s = status_until(
        &c.agents[0],
        "the restored agent did not stop at key_not_held",
        |s| !s["alarm"].is_null(),
    )
    .await;
    assert_eq!(s["alarm"]["code"], "key_not_held", "{s}");
    let reason = s["alarm"]["reason"].as_str().unwrap_or_default();
    for words in [
        "Restore the agent.key of that rotation",
        "spacesync-agent rotate-key --lost",
        "spacesync-hub agents rotate",
    ] {
        assert!(reason.contains(words), "{words:?}: {reason}");
    }
    assert_eq!(s["catching_up"], true, "{s}");
    assert_eq!(
        s["head_seq"].as_u64(),
        Some(hub_head),
        "taken back whole: {s}"
    );
    assert_eq!(s["acked_seq"].as_u64(), Some(hub_head), "{s}");
    // Intake stays closed, and the agent says it is not ready.
    let http = reqwest::Client::new();
    let api = c.agents[0].api();
    let (_, line, _) = work.next_write();
    let refused = http
        .post(format!("{}/v1/records", api.url))
        .bearer_auth(&api.token)
        .header("content-type", "application/x-ndjson")
        .body(line)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status().as_u16(), 503);
    let ready = http
        .get(format!("{}/readyz", api.url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ready.status().as_u16(), 503);
    let why = ready.text().await.unwrap_or_default();
    assert!(
        why.contains("not ready") && why.contains("key_not_held"),
        "{why}"
    );

    // The key of the backup still cannot append: the hub refuses what it signs after the
    // transition.
    let last = final_entries
        .last()
        .unwrap_or_else(|| panic!("entries"))
        .clone();
    let mut stale = Entry::from_payload(&last.payload).unwrap_or_else(|e| panic!("{e}"));
    stale.seq = hub_head + 1;
    stale.prev = last.payload_hash();
    let batch = spacesync_shared::wire::IngestBatch {
        source: stale.source.clone(),
        entries: vec![stale.sign(&backup_key)],
    };
    let r = http
        .post(format!("{}/v1/ingest", c.hub.url()))
        .json(&batch)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 422);
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(body["refused"][0]["code"], "revoked_key", "{body}");
    c.agents[0].stop();
    let v = run_cli(agent_bin(), &data.root, &["verify"]);
    assert!(v.status.success(), "verify: {}", text(&v));

    // The way out the alarm names: a new key from the next seq, recorded by the hub's admin.
    let lost = run_cli(agent_bin(), &data.root, &["rotate-key", "--lost"]);
    assert!(lost.status.success(), "rotate-key --lost: {}", text(&lost));
    let new_key = String::from_utf8_lossy(&lost.stdout).trim().to_string();
    let from_seq = (hub_head + 1).to_string();
    assert!(
        text(&lost).contains(&format!("--from-seq {from_seq}")),
        "{}",
        text(&lost)
    );
    c.hub.stop();
    let r = c.hub.cli(&[
        "agents",
        "rotate",
        source,
        "--key",
        &new_key,
        "--from-seq",
        &from_seq,
        "--now",
        spacesync_tests::cluster::NOW,
    ]);
    assert!(r.status.success(), "agents rotate: {}", text(&r));
    c.hub.start().await;
    c.agents[0].start().await;
    status_until(&c.agents[0], "intake did not open under the new key", |s| {
        s["catching_up"] == false && s["alarm"].is_null()
    })
    .await;
    post_writes(&c.agents[0].api(), &mut work, 2).await;
    c.wait_drained(Duration::from_secs(60)).await;
    let s = c.agents[0].status().await.unwrap_or_default();
    assert_eq!(s["acked_seq"].as_u64(), Some(hub_head + 2), "{s}");
    c.agents[0].stop();
    c.hub.stop();
    let after = stored_envelopes(&data);
    assert_eq!(after[..final_entries.len()], final_entries[..]);
    let v = run_cli(agent_bin(), &data.root, &["verify"]);
    assert!(v.status.success(), "verify at the end: {}", text(&v));
    assert_eq!(leaves(&c.hub.db()).len() as u64, hub_head + 2);
}
