//! Real agent processes driven as a provincial platform and an operator would: `init` in a
//! data directory, the intake token, `run` with a fixed clock, NDJSON batches POSTed to
//! `/v1/records`, `/v1/status` read, clean stops and restarts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::procs::{self, ChildGuard};

/// The agents' clock (`run --now`): after the last weekly report of the campaign, the
/// instant the benchmark hubs serve at (`workload::HUB_NOW`, 02:00 UTC).
pub const AGENT_NOW: &str = "2019-01-02T10:00:00+08:00";

/// What `POST /v1/records` answers on success (only the count is checked).
#[derive(Deserialize)]
struct Accepted {
    accepted: u64,
}

/// The fields of `GET /v1/status` the harness reads.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Status {
    /// Highest seq in the local chain.
    pub head_seq: u64,
    /// Highest seq delivered (receipted by the hub).
    pub acked_seq: u64,
    /// Entries waiting for a receipt.
    pub buffered: u64,
    /// Ingest requests sent.
    #[serde(default)]
    pub pushes: u64,
    /// Transient failures retried (timeouts, 429, 5xx, connections refused).
    #[serde(default)]
    pub retries: u64,
}

/// One agent's data directory and, while it runs, its process.
pub struct AgentInstance {
    bin: PathBuf,
    dir: PathBuf,
    /// Where its local API listens.
    pub listen: String,
    /// Its intake token.
    pub token: String,
    child: Option<ChildGuard>,
    http: reqwest::Client,
}

impl AgentInstance {
    /// `init`s an agent in `dir` for `source` in `scope`, pushing to `hub`, its API on a
    /// free loopback port.
    pub fn init(bin: &Path, dir: &Path, source: &str, scope: &str, hub: &str) -> Result<Self> {
        let listen = format!("127.0.0.1:{}", procs::free_port()?);
        init_agent(bin, dir, source, scope, hub, &listen)?;
        let token = procs::run_cli(bin, dir, &["token"])?;
        Ok(AgentInstance {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            listen,
            token,
            child: None,
            http: reqwest::Client::builder()
                .pool_idle_timeout(spacesync_http::CLIENT_POOL_IDLE)
                .timeout(Duration::from_secs(300))
                .build()
                .context("building the HTTP client")?,
        })
    }

    /// Its public key line (`spacesync-agent pubkey`), for the hub's `agents add`.
    pub fn pubkey(&self) -> Result<String> {
        procs::run_cli(&self.bin, &self.dir, &["pubkey"])
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildGuard::pid)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Starts `run --now AGENT_NOW` and waits for `/healthz` (polled every 5 ms); the time
    /// from spawn to that answer.
    pub async fn start(&mut self) -> Result<Duration> {
        if self.child.is_some() {
            bail!("the agent is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let child = Command::new(&self.bin)
            .arg("--data")
            .arg(&self.dir)
            .args(["run", "--now", AGENT_NOW])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {} run", self.bin.display()))?;
        let mut guard = ChildGuard::new("an agent", child);
        let took = procs::wait_ok(
            &self.http,
            &format!("http://{}/healthz", self.listen),
            &mut guard,
            Duration::from_secs(120),
            Duration::from_millis(5),
        )
        .await
        .map_err(|e| e.context(procs::log_tail(&self.log_path(), 20)))?;
        self.child = Some(guard);
        // `/healthz` asks for no token: whoever holds the port answers it. The status,
        // which needs this agent's token, shows that it is this agent.
        self.status().await.with_context(|| {
            format!(
                "{} answered /healthz, but not as this agent; its log ends:\n{}",
                self.listen,
                procs::log_tail(&self.log_path(), 20)
            )
        })?;
        Ok(took)
    }

    /// Stops the agent cleanly (SIGTERM; SIGKILL after a minute); how long it took.
    pub fn stop(&mut self) -> Result<Duration> {
        let Some(mut guard) = self.child.take() else {
            bail!("the agent is not running");
        };
        let (st, took) = guard.stop(libc::SIGTERM, Duration::from_secs(60))?;
        if !st.success() {
            eprintln!(
                "An agent exited with {st} on SIGTERM; its log ends:\n{}",
                procs::log_tail(&self.log_path(), 10)
            );
        }
        Ok(took)
    }

    /// POSTs one NDJSON body of `n` records and checks that all were accepted.
    pub async fn post_ndjson(&self, body: Vec<u8>, n: u64) -> Result<()> {
        post(
            &self.http,
            &format!("http://{}/v1/records", self.listen),
            &self.token,
            "application/x-ndjson",
            body,
            n,
        )
        .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status> {
        let resp = self
            .http
            .get(format!("http://{}/v1/status", self.listen))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .context("GET /v1/status")?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading /v1/status")?;
        if !status.is_success() {
            bail!(
                "/v1/status answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(400)])
            );
        }
        serde_json::from_slice(&body).context("/v1/status does not parse")
    }
}

/// `spacesync-agent init` for `source` in `scope`, pushing to `hub`, listening on `listen`.
pub fn init_agent(
    bin: &Path,
    dir: &Path,
    source: &str,
    scope: &str,
    hub: &str,
    listen: &str,
) -> Result<()> {
    procs::run_cli(
        bin,
        dir,
        &[
            "init", "--source", source, "--scope", scope, "--hub", hub, "--listen", listen,
        ],
    )
    .map(drop)
}

/// POSTs one body to an agent's intake and checks that all `n` records were accepted.
pub async fn post(
    http: &reqwest::Client,
    endpoint: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
    n: u64,
) -> Result<()> {
    let resp = http
        .post(endpoint)
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .context("POST /v1/records")?;
    let status = resp.status();
    let text = resp.bytes().await.context("reading the intake answer")?;
    if !status.is_success() {
        bail!(
            "the agent answered {status}: {}",
            String::from_utf8_lossy(&text[..text.len().min(800)])
        );
    }
    let a: Accepted = serde_json::from_slice(&text).context("the intake answer does not parse")?;
    if a.accepted != n {
        bail!("the agent accepted {} of {n} records", a.accepted);
    }
    Ok(())
}

/// NDJSON bodies of `batch` records each (the last may be shorter) for records
/// `from..to` of `plan`, with their record counts.
pub fn ndjson_bodies(
    plan: &crate::workload::SourcePlan,
    mut from: u64,
    end: u64,
    batch: u64,
) -> Result<Vec<(Vec<u8>, u64)>> {
    let mut out = Vec::new();
    while from < end {
        let to = (from + batch).min(end);
        let mut body = Vec::new();
        for k in from..to {
            serde_json::to_writer(&mut body, &plan.record(k))?;
            body.push(b'\n');
        }
        out.push((body, to - from));
        from = to;
    }
    Ok(out)
}
