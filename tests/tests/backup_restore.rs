//! `spacesync-hub backup` while the hub serves under load: the copy is one instant of the
//! log (its leaves are a prefix of the final log), `--data OUT verify` passes and
//! `--data OUT serve` answers; `restore` puts it back as a data directory that verifies; a
//! stopped hub is copied directly; a non-empty target is refused.

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

fn leaves(db: &std::path::Path) -> Vec<checker::Leaf> {
    let store = SledStore::open(db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
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
