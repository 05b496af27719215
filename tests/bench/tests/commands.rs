//! Each command, at a tiny size, against the hub and agent this package builds from their
//! own `main` files: the run succeeds and its output ends with the one `cmd: key=value …`
//! line, holding the required keys as positive numbers. Timing is not checked here (it
//! lives in BENCHMARKS.md); the three together take well under a minute.

use std::process::Command;

use spacesync_bench::report::parse_line;

/// Runs `spacesync-bench args…` and returns the pairs of its closing line, after checking
/// that it is the last line of stdout, the only `cmd:` line, and that every key in
/// `required` is a positive number (or `NA` when listed in `may_be_na`).
fn check(args: &[&str], required: &[&str], may_be_na: &[&str]) -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_spacesync-bench"))
        .args(args)
        .env(
            "SPACESYNC_HUB_BIN",
            env!("CARGO_BIN_EXE_spacesync-hub-under-bench"),
        )
        .env(
            "SPACESYNC_AGENT_BIN",
            env!("CARGO_BIN_EXE_spacesync-agent-under-bench"),
        )
        .output()
        .unwrap_or_else(|e| panic!("running spacesync-bench: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let cmd = args[0];
    let last = stdout.lines().last().unwrap_or("");
    let (got_cmd, pairs) =
        parse_line(last).unwrap_or_else(|| panic!("last line is not key=value pairs: {last:?}"));
    assert_eq!(got_cmd, cmd, "{last}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{cmd}:")))
            .count(),
        1,
        "exactly one closing line:\n{stdout}"
    );
    for key in required {
        let v = pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {last}"));
        if v == "NA" && may_be_na.contains(key) {
            continue;
        }
        let x: f64 = v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number in {last}"));
        assert!(
            x.is_finite() && x > 0.0,
            "{key}={v} is not positive in {last}"
        );
    }
    pairs
}

fn value(pairs: &[(String, String)], key: &str) -> String {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[test]
fn ingest_reports_rates_limits_and_the_postgresql_peer() {
    // The peer may be NA only where PostgreSQL is not installed.
    let na: &[&str] = if spacesync_bench::pg::find_binaries().is_some() {
        &[]
    } else {
        &["pg_insert_per_s", "pg_ratio", "pg_copy_per_s"]
    };
    let pairs = check(
        &["ingest", "--entries", "2000", "--min-limit-s", "0.05"],
        &[
            "entries_per_s",
            "verify_limit_per_s",
            "ratio",
            "pg_insert_per_s",
            "pg_ratio",
            "pg_copy_per_s",
            "p50_batch_ms",
            "p99_batch_ms",
            "cpu_s_per_entry",
            "verify_single_per_s",
            "sha256_limit_per_s",
            "append_limit_per_s",
            "verify_per_s",
            "verify_ratio",
        ],
        na,
    );
    assert_eq!(value(&pairs, "entries"), "2000");
    assert_eq!(value(&pairs, "sources"), "32");
}

/// Three hub replicas on the run's PostgreSQL: every entry acknowledged once across them
/// (the harness checks `held_through` per batch, and `verify` runs over the log they left),
/// and the database server's CPU per entry reported. Replicas need PostgreSQL: refused on
/// sled.
#[test]
fn ingest_with_three_replicas_reports_the_database_cpu() {
    let pairs = check(
        &[
            "ingest",
            "--entries",
            "2000",
            "--no-pg",
            "--hub-on-pg",
            "--replicas",
            "3",
            "--min-limit-s",
            "0.05",
        ],
        &[
            "entries_per_s",
            "cpu_s_per_entry",
            "verify_per_s",
            "replicas",
            "db_cpu_us_per_entry",
        ],
        &[],
    );
    assert_eq!(value(&pairs, "replicas"), "3");
    assert_eq!(value(&pairs, "store"), "postgres");
    assert_eq!(value(&pairs, "entries"), "2000");
    let out = Command::new(env!("CARGO_BIN_EXE_spacesync-bench"))
        .args(["ingest", "--entries", "10", "--replicas", "3"])
        .output()
        .unwrap_or_else(|e| panic!("running spacesync-bench: {e}"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--hub-on-pg"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn agent_reports_batched_and_single_intake_against_signing() {
    let pairs = check(
        &[
            "agent",
            "--batches",
            "3",
            "--batch-size",
            "200",
            "--singles",
            "64",
            "--min-limit-s",
            "0.05",
        ],
        &[
            "entries_per_s",
            "sign_limit_per_s",
            "ratio",
            "single_per_s",
            "p50_batch_ms",
            "cpu_s_per_entry",
        ],
        &[],
    );
    assert_eq!(value(&pairs, "singles"), "64");
}

#[test]
fn scale_reports_memory_restart_reads_and_bulletin() {
    let pairs = check(
        &[
            "scale",
            "--schools",
            "50",
            "--progress-samples",
            "3",
            "--min-limit-s",
            "0.05",
        ],
        &[
            "entries",
            "rss_mb",
            "restart_s",
            "progress_ms",
            "bulletin_s",
            "bulletin_offline_s",
            "disk_bytes_per_entry",
            "dash_home_ms",
            "dash_region_ms",
            "bulletin_verify_s",
            "verify_per_s",
            "verify_ratio",
        ],
        &[],
    );
    assert_eq!(value(&pairs, "entries"), "900", "50 schools × 18 weeks");
    // The fixed interface: these five first, in this order.
    let first: Vec<&str> = pairs.iter().take(5).map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        first,
        [
            "entries",
            "rss_mb",
            "restart_s",
            "progress_ms",
            "bulletin_s"
        ]
    );
}

#[test]
fn drain_reports_the_time_until_every_agent_delivered() {
    let pairs = check(
        &[
            "drain",
            "--agents",
            "3",
            "--entries",
            "120",
            "--batch",
            "50",
            "--min-limit-s",
            "0.05",
        ],
        &[
            "drain_s",
            "entries_per_s",
            "hub_ready_s",
            "fill_per_s",
            "verify_limit_per_s",
            "verify_floor_s",
            "append_limit_per_s",
            "floor_s",
        ],
        &[],
    );
    assert_eq!(value(&pairs, "agents"), "3");
    assert_eq!(value(&pairs, "entries"), "360");
}

#[test]
fn agent_idle_reports_resident_memory_with_a_buffer() {
    let pairs = check(
        &["agent-idle", "--entries", "3000", "--settle-s", "0.2"],
        &["rss_idle_mb", "rss_restart_mb", "intake_per_s"],
        &[],
    );
    assert_eq!(value(&pairs, "entries"), "3000");
}

#[test]
fn restart_reports_the_start_of_an_existing_store_split_by_the_hubs_own_timings() {
    // A store the way `scale` leaves it (SPACESYNC_BENCH_KEEP_HUB keeps its data directory).
    let tmp = tempfile::tempdir().expect("tempdir");
    let kept = tmp.path().join("hub");
    let out = Command::new(env!("CARGO_BIN_EXE_spacesync-bench"))
        .args(["scale", "--schools", "20", "--progress-samples", "1"])
        .args(["--min-limit-s", "0.05"])
        .env(
            "SPACESYNC_HUB_BIN",
            env!("CARGO_BIN_EXE_spacesync-hub-under-bench"),
        )
        .env("SPACESYNC_BENCH_KEEP_HUB", &kept)
        .output()
        .expect("running spacesync-bench scale");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = kept.to_string_lossy().into_owned();
    // An admin token, made on the stopped store, for the bulletins issued through the API.
    let made = Command::new(env!("CARGO_BIN_EXE_spacesync-hub-under-bench"))
        .args(["--data", &data, "token", "create", "--role", "admin"])
        .args(["--label", "bench test"])
        .output()
        .expect("running spacesync-hub token create");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let admin = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let pairs = check(
        &[
            "restart",
            "--data",
            &data,
            "--runs",
            "2",
            "--progress-samples",
            "2",
            "--bulletin-token",
            &admin,
        ],
        &[
            "restart_s",
            "rss_mb",
            "progress_ms",
            "stop_s",
            "store_mb",
            "bulletin_s",
        ],
        &[],
    );
    // The hub's own timings are whole milliseconds (0 on a store this small) and its CPU
    // is counted in clock ticks: present and numbers, not NA.
    for key in ["cpu_s", "open_ms", "state_ms", "notices_ms", "snapshot_ms"] {
        let v = value(&pairs, key);
        assert!(
            v.parse::<f64>().is_ok_and(|x| x >= 0.0),
            "{key}={v:?} is not a number"
        );
    }
    let first: Vec<&str> = pairs.iter().take(3).map(|(k, _)| k.as_str()).collect();
    assert_eq!(first, ["restart_s", "rss_mb", "progress_ms"]);
    assert_eq!(value(&pairs, "runs"), "2");
    assert!(kept.join("hub.key").exists(), "the store is kept");
}
