//! The main job (`spacesync-demo`) on both stores: the same campaign, once on the embedded
//! store and once with `--store postgres://…` (a fresh database on the private PostgreSQL
//! of spacesync-pgtest), ends with the same final figures — the hub's `/v1/progress` at the
//! end (nation, every provincial unit, flags, log size; only its `as_of` instant differs)
//! — and each run's own checks pass (every record delivered, the log verifies, the latest
//! bulletin verifies). The campaign runs in `SPACESYNC_DEMO_SECS` real seconds (default 30)
//! each.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use spacesync_tests::agent_harness::agent_bin;
use spacesync_tests::cluster::hub_bin;

/// Runs the demo into `dir` (with `--store`, when given) and returns its final figures.
fn demo(dir: &Path, store: Option<&str>) -> Value {
    // 30 s, not the minimum: each process's accelerated clock starts when it is spawned,
    // and records are fed 30 campaign hours after their date; at 12 s a campaign hour is
    // 5 ms of real time, so a process that started 0.2 s late under load refused the
    // day's records as "after today".
    let secs = std::env::var("SPACESYNC_DEMO_SECS").unwrap_or_else(|_| "30".into());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spacesync-demo"));
    cmd.arg("--dir")
        .arg(dir)
        .args(["--seconds", &secs])
        .arg("--hub-bin")
        .arg(hub_bin())
        .arg("--agent-bin")
        .arg(agent_bin());
    if let Some(url) = store {
        cmd.args(["--store", url]);
    }
    let out = cmd.output().expect("run spacesync-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "spacesync-demo {store:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("log: ok:"), "{stdout}");
    assert!(stdout.contains("latest bulletin: ok:"), "{stdout}");
    assert!(stdout.contains("undelivered_at_end=0"), "{stdout}");
    let text = std::fs::read_to_string(dir.join("progress.json")).expect("progress.json");
    let mut v: Value = serde_json::from_str(&text).expect("progress JSON");
    v.as_object_mut().expect("object").remove("as_of");
    v
}

#[test]
fn the_demo_ends_with_the_same_figures_on_postgres_as_on_sled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = spacesync_pgtest::database();
    let on_pg = demo(&tmp.path().join("pg"), Some(&url));
    let toml = std::fs::read_to_string(tmp.path().join("pg/hub/hub.toml")).expect("hub.toml");
    assert!(toml.contains(&format!("store = \"{url}\"")), "{toml}");
    assert!(
        !tmp.path().join("pg/hub/db").exists(),
        "the hub ran on the database, not on an embedded store"
    );
    let on_sled = demo(&tmp.path().join("sled"), None);
    assert!(
        on_sled["log_size"].as_u64().unwrap_or(0) > 1000,
        "a whole campaign: {}",
        on_sled["log_size"]
    );
    assert!(on_sled["nation"]["new_spaces"].as_i64().unwrap_or(0) > 0);
    assert_eq!(
        on_pg, on_sled,
        "the final figures differ between the stores"
    );
}
