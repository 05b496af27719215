//! Runs the real `spacesync-agent` binary in a temporary data directory.
//!
//! Finding the binary: `CARGO_BIN_EXE_*` exists only for a package's own binaries, and a
//! nested `cargo build -p spacesync-agent` from inside a test is slow and fragile (it waits
//! on the build lock, and `cargo test` unifies dev-dependency features such as tokio's
//! `test-util` differently from `cargo build`, so it rebuilds tokio and everything above
//! it). Instead this package declares a `[[bin]]` `spacesync-agent-under-test` whose source
//! *is* `agent/src/bin/spacesync-agent.rs`; cargo builds it before running the integration
//! tests, and [`agent_bin`] takes it from the directory above the test executable
//! (`<target>/<profile>/deps/<test>` → `<target>/<profile>/`), which respects
//! `CARGO_TARGET_DIR` and `--release`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use spacesync_agent::config::{Config, DataDir};

use crate::procs;

/// The agent clock used by most tests: inside the 2018 campaign.
pub const NOW: &str = "2018-11-25T10:00:00+08:00";

/// Path of the agent binary (this package's `spacesync-agent-under-test`).
pub fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
        let bin = profile_dir.join(format!(
            "spacesync-agent-under-test{}",
            std::env::consts::EXE_SUFFIX
        ));
        assert!(
            bin.exists(),
            "{} is missing; run the tests through `cargo test -p spacesync-tests`, which builds it",
            bin.display()
        );
        bin
    })
}

pub use crate::procs::free_port;

/// The intake token `init` wrote in `data` (every API request but `/healthz` carries it).
pub fn intake_token(data: &DataDir) -> String {
    spacesync_agent::token::read(&data.token()).unwrap_or_else(|e| panic!("{e}"))
}

/// `init`s an agent in a fresh directory (`init`, then `args`, then `--listen` on a free
/// port), then lets `configure` change the configuration it wrote. Returns the directory,
/// the port and the public key line `init` printed.
pub fn init_agent(
    args: &[&str],
    configure: impl FnOnce(&mut Config),
) -> (tempfile::TempDir, u16, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec!["init"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--listen", &listen]);
    let key_line = procs::run_ok(agent_bin(), dir.path(), &all, "agent init");
    let dd = DataDir::new(dir.path());
    let mut cfg = Config::load(&dd.config()).unwrap_or_else(|e| panic!("{e}"));
    configure(&mut cfg);
    std::fs::write(dd.config(), cfg.to_toml()).unwrap_or_else(|e| panic!("{e}"));
    (dir, port, key_line)
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One agent: its data directory, and its process while running.
pub struct AgentProc {
    /// The temporary data directory.
    pub dir: tempfile::TempDir,
    /// Its local API port.
    pub port: u16,
    /// The public key line `init` printed.
    pub key_line: String,
    /// The intake token `init` wrote.
    pub token: String,
    child: Option<Child>,
    http: reqwest::Client,
}

impl AgentProc {
    /// `init`s an agent for source `gd-rrt`, scope 440000, with fast test timings, then
    /// lets `tweak` change the configuration.
    pub fn init(hub: &str, tweak: impl FnOnce(&mut Config)) -> AgentProc {
        AgentProc::init_args(
            &["--source", "gd-rrt", "--scope", "440000", "--hub", hub],
            tweak,
        )
    }

    /// `init`s an agent with `args` (`--source … --scope … --hub …`, or `--enrol CODE`),
    /// with fast test timings, then lets `tweak` change the configuration.
    pub fn init_args(args: &[&str], tweak: impl FnOnce(&mut Config)) -> AgentProc {
        let (dir, port, key_line) = init_agent(args, |cfg| {
            cfg.push.interval_secs = 0.2;
            cfg.push.retry_base_secs = 0.05;
            cfg.push.retry_cap_secs = 0.5;
            cfg.push.reprobe_secs = 0.5;
            cfg.push.timeout_secs = 2.0;
            cfg.push.notices_secs = 0.3;
            cfg.intake.spool_poll_ms = 100;
            tweak(cfg);
        });
        let token = intake_token(&DataDir::new(dir.path()));
        AgentProc {
            dir,
            port,
            key_line,
            token,
            child: None,
            http: reqwest::Client::new(),
        }
    }

    /// The data directory layout.
    pub fn data(&self) -> DataDir {
        DataDir::new(self.dir.path())
    }

    /// Base URL of the local API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a subcommand to completion (`--data` is added).
    pub fn cli(&self, args: &[&str]) -> Output {
        procs::run_cli(agent_bin(), self.dir.path(), args)
    }

    /// Starts `run --now NOW` and waits until `/healthz` answers.
    pub async fn start(&mut self) {
        self.start_with(&["--now", NOW]).await;
    }

    /// Starts `run` with extra arguments and waits until `/healthz` answers.
    pub async fn start_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap_or_else(|e| panic!("log: {e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(agent_bin())
            .arg("--data")
            .arg(self.dir.path())
            .arg("run")
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("run: {e}"));
        self.child = Some(child);
        let url = format!("{}/healthz", self.url());
        let http = self.http.clone();
        let mut exited = None;
        wait_for(
            Duration::from_secs(20),
            "the agent to answer /healthz",
            async || {
                if let Some(c) = self.child.as_mut()
                    && let Ok(Some(st)) = c.try_wait()
                {
                    exited = Some(st);
                    return Some(());
                }
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            },
        )
        .await;
        if let Some(st) = exited {
            panic!("the agent exited at start ({st}); log:\n{}", self.log());
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (graceful), then reap.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("the agent did not stop on SIGTERM; log:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A request to the local API, as the platform sends it (with the bearer token).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(&self.token)
    }

    /// POSTs a batch; returns the status, the Retry-After header and the JSON answer.
    pub async fn post(&self, body: &str, content_type: &str) -> (u16, Option<String>, Value) {
        let r = self
            .request(reqwest::Method::POST, "/v1/records")
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /v1/records: {e}"));
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let v = r.json().await.unwrap_or(Value::Null);
        (status, retry, v)
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Value {
        self.request(reqwest::Method::GET, "/v1/status")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /v1/status: {e}"))
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    /// Waits until the agent reports `acked_seq == head_seq == n`.
    pub async fn wait_delivered(&self, n: u64, timeout: Duration) {
        wait_for(timeout, &format!("{n} entries delivered"), async || {
            let s = self.status().await;
            (s["acked_seq"] == n && s["head_seq"] == n).then_some(())
        })
        .await;
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An activity record with a unique title (the write id of fault tests).
pub fn activity(title: &str) -> String {
    format!(
        r#"{{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"{title}"}}"#
    )
}

/// The titles of the activity records of `envelopes`, in order, with their seqs.
pub fn titles(envelopes: &[spacesync_shared::Envelope]) -> Vec<(u64, String)> {
    envelopes
        .iter()
        .filter_map(|e| spacesync_shared::Entry::from_payload(&e.payload).ok())
        .map(|e| {
            let t = match &e.record {
                spacesync_shared::Record::Activity(a) => a.title.clone(),
                other => other.kind().to_string(),
            };
            (e.seq, t)
        })
        .collect()
}

/// Every entry of a stopped agent's store, in seq order.
pub fn stored_envelopes(data: &DataDir) -> Vec<spacesync_shared::Envelope> {
    let store = spacesync_agent::store::Store::open(&data.db()).unwrap_or_else(|e| panic!("{e}"));
    store
        .raw_entries()
        .map(|r| {
            let (seq, b) = r.unwrap_or_else(|e| panic!("{e}"));
            spacesync_agent::store::parse_envelope(seq, &b).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}
