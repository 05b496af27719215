//! Small process helpers shared by the hub and agent harnesses and the cluster: running a
//! subcommand against a data directory, `init`ing a hub, and waiting for `/healthz`.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub use spacesync_pgtest::free_port;

/// Runs `bin --data dir args…` to completion.
pub fn run_cli(bin: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{} {args:?}: {e}", bin.display()))
}

/// Runs `bin --data dir args…`, asserts it succeeded and returns its trimmed stdout.
pub fn run_ok(bin: &Path, dir: &Path, args: &[&str], what: &str) -> String {
    let out = run_cli(bin, dir, args);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `init`s a hub (`bin`) in a fresh directory and raises its per-source rate and burst to
/// `limit` (a TOML float, e.g. `"10000.0"`). Returns the directory and the key line printed.
pub fn init_hub(bin: &Path, limit: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let key_line = run_ok(bin, dir.path(), &["init"], "hub init");
    raise_source_limit(dir.path(), limit);
    (dir, key_line)
}

/// Raises the per-source rate and burst in `dir`'s `hub.toml` to `limit` (a TOML float).
pub fn raise_source_limit(dir: &Path, limit: &str) {
    let cfg = dir.join("hub.toml");
    let text = std::fs::read_to_string(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let text = text
        .replace(
            "rate_per_source = 20.0",
            &format!("rate_per_source = {limit}"),
        )
        .replace(
            "burst_per_source = 100.0",
            &format!("burst_per_source = {limit}"),
        );
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("{e}"));
}

/// What [`wait_healthy`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `/healthz` answered 2xx.
    Up,
    /// The process exited first (`child` is now `None`).
    Exited,
    /// Neither within the deadline.
    TimedOut,
}

/// Polls `{url}/healthz` every `poll` until it answers 2xx, the process in `child` exits
/// or `deadline` passes. `request_timeout` bounds each request, when given.
pub async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    child: &mut Option<Child>,
    deadline: Duration,
    poll: Duration,
    request_timeout: Option<Duration>,
) -> Health {
    let deadline = Instant::now() + deadline;
    loop {
        if let Some(c) = child.as_mut()
            && let Ok(Some(_)) = c.try_wait()
        {
            *child = None;
            return Health::Exited;
        }
        let mut req = http.get(format!("{url}/healthz"));
        if let Some(t) = request_timeout {
            req = req.timeout(t);
        }
        if req.send().await.is_ok_and(|r| r.status().is_success()) {
            return Health::Up;
        }
        if Instant::now() >= deadline {
            return Health::TimedOut;
        }
        tokio::time::sleep(poll).await;
    }
}
