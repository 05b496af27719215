//! A cluster on loopback: one real `spacesync-hub serve` process and a few real
//! `spacesync-agent run` processes, the agents reaching the hub through a
//! [`FaultProxy`], all on fixed clocks (`--now`), with short push timings so delivery
//! settles in well under a second once faults stop. Plus the workload: writers that post
//! uniquely identified records to the agents' intake and keep a [`History`].
//!
//! The hub binary is this package's `spacesync-hub-under-test` (the hub's own `main`),
//! found next to the test executable like the agent's (see `agent_harness`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use spacesync_agent::config::{Config, DataDir};
use spacesync_shared::{Record, SourceId};

use crate::agent_harness::{agent_bin, init_agent, intake_token};
use crate::checker::SharedHistory;
use crate::fault_proxy::{FaultPlan, FaultProxy};
use crate::procs::{self, Health, free_port};

/// The instant the hub's clock is fixed at: inside the 2018 campaign.
pub const NOW: &str = "2018-11-25T02:00:00Z";
/// The agents' fixed clock: a minute after the hub's (well within the hub's allowed skew),
/// so receipts are in the agents' past and retention can prune delivered entries.
pub const AGENT_NOW: &str = "2018-11-25T02:01:00Z";

/// Path of the hub binary (this package's `spacesync-hub-under-test`).
pub fn hub_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = agent_bin().with_file_name(format!(
            "spacesync-hub-under-test{}",
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

/// One province's agent: source id, scope and the county its records are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// Source id.
    pub source: &'static str,
    /// Scope (the province).
    pub scope: &'static str,
    /// A county inside the scope (real GB/T 2260 code).
    pub county: &'static str,
}

/// Sites for up to eight agents.
pub const SITES: [Site; 8] = [
    Site {
        source: "gd-rrt",
        scope: "440000",
        county: "440106",
    },
    Site {
        source: "bj-rrt",
        scope: "110000",
        county: "110105",
    },
    Site {
        source: "sc-rrt",
        scope: "510000",
        county: "510104",
    },
    Site {
        source: "zj-rrt",
        scope: "330000",
        county: "330106",
    },
    Site {
        source: "js-rrt",
        scope: "320000",
        county: "320102",
    },
    Site {
        source: "hb-rrt",
        scope: "420000",
        county: "420106",
    },
    Site {
        source: "sd-rrt",
        scope: "370000",
        county: "370102",
    },
    Site {
        source: "hn-rrt",
        scope: "430000",
        county: "430102",
    },
];

fn open_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Copies the files of a hub's data directory (not its log, not subdirectories: a
/// PostgreSQL hub has no store there), keeping their modes (0600).
fn copy_files(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // A data directory is private to the hub's user (the hub refuses it otherwise).
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", to.display()));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let e = e.unwrap_or_else(|e| panic!("{e}"));
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file && e.file_name() != "hub.log" {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
        }
    }
}

/// SIGTERM, then wait up to 20 s (SIGKILL and panic beyond that).
fn terminate(child: &mut Child, what: &str, log: &dyn Fn() -> String) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not stop on SIGTERM; log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL, then reap; false when the process had already exited.
fn kill_child(mut c: Child) -> bool {
    let running = matches!(c.try_wait(), Ok(None));
    let _ = c.kill();
    let _ = c.wait();
    running
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    format!("{s:?}")
}

/// Log level of the processes (`SPACESYNC_LOG`, default `warn`).
fn log_level() -> String {
    std::env::var("SPACESYNC_LOG").unwrap_or_else(|_| "warn".into())
}

/// The hub process and its data directory.
pub struct HubNode {
    /// The data directory.
    pub dir: tempfile::TempDir,
    /// The port `serve` listens on, the same across restarts.
    pub port: u16,
    /// The hub's public key line.
    pub key_line: String,
    /// Processes started so far.
    pub starts: u64,
    child: Option<Child>,
    http: reqwest::Client,
    /// `http` or, after [`HubNode::use_tls`], `https`.
    scheme: &'static str,
}

impl HubNode {
    /// Serve HTTPS with `cert` and `key` (PEM files) written into hub.toml's `[tls]`, and
    /// with `client_ca` require agents' client certificates; the health checks then trust
    /// `ca_pem` only (and show `client`, a certificate and key PEM, when given).
    pub fn use_tls(
        &mut self,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        ca_pem: &str,
        client: Option<&str>,
    ) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("hub.toml"))
            .unwrap_or_else(|e| panic!("hub.toml: {e}"));
        let q = |p: &Path| toml_string(&p.to_string_lossy());
        write!(f, "\n[tls]\ncert = {}\nkey = {}\n", q(cert), q(key))
            .unwrap_or_else(|e| panic!("hub.toml: {e}"));
        if let Some(c) = client_ca {
            writeln!(f, "client_ca = {}", q(c)).unwrap_or_else(|e| panic!("hub.toml: {e}"));
        }
        let ca =
            reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .tls_info(true)
            // Every check on a new connection: it sees the certificate served now.
            .pool_max_idle_per_host(0);
        if let Some(pem) = client {
            b = b.identity(
                reqwest::Identity::from_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        self.http = b.build().unwrap_or_else(|e| panic!("{e}"));
        self.scheme = "https";
    }

    /// The base URL agents use (`http://` or `https://` and the listen address).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr())
    }

    /// The client the health checks use (HTTPS after [`HubNode::use_tls`]).
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// The process id of the running `serve`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `init`s a hub; the per-source rate limit is raised so faults, not the limiter,
    /// shape the traffic.
    pub fn init() -> HubNode {
        let (dir, key_line) = procs::init_hub(hub_bin(), "100000.0");
        HubNode {
            dir,
            port: free_port(),
            key_line,
            starts: 0,
            child: None,
            http: reqwest::Client::new(),
            scheme: "http",
        }
    }

    /// `n` replicas of one hub whose state is in the PostgreSQL database at `store_url`:
    /// the first `init --store`s it (per-source rate limit raised as [`HubNode::init`]
    /// does), the others are copies of its data directory (key and configuration), each
    /// with a port of its own.
    pub fn init_replicas(n: usize, store_url: &str) -> Vec<HubNode> {
        let first = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let key_line = procs::run_ok(
            hub_bin(),
            first.path(),
            &["init", "--store", store_url],
            "hub init --store",
        );
        procs::raise_source_limit(first.path(), "100000.0");
        let mut dirs = vec![first];
        for _ in 1..n {
            let copy = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            copy_files(dirs[0].path(), copy.path());
            dirs.push(copy);
        }
        dirs.into_iter()
            .map(|dir| HubNode {
                dir,
                port: free_port(),
                key_line: key_line.clone(),
                starts: 0,
                child: None,
                http: reqwest::Client::new(),
                scheme: "http",
            })
            .collect()
    }

    /// A copy of this hub's data directory (its key and configuration; with PostgreSQL
    /// that is all of it): what an operator runs admin commands with while replicas serve.
    pub fn copy(&self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        copy_files(self.dir.path(), copy.path());
        copy
    }

    /// Runs a subcommand to completion (`--data` is added).
    pub fn cli(&self, args: &[&str]) -> Output {
        procs::run_cli(hub_bin(), self.dir.path(), args)
    }

    /// `agents add` (the hub must be stopped: sled holds one process per store).
    pub fn register(&self, site: &Site, key_line: &str) {
        let out = self.cli(&[
            "agents",
            "add",
            "--source",
            site.source,
            "--scope",
            site.scope,
            "--key",
            key_line,
            "--now",
            NOW,
        ]);
        assert!(
            out.status.success(),
            "agents add {}: {}",
            site.source,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The listen address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The sled store directory.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// True while a process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Spawns `serve --now NOW` without waiting.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "hub already running");
        let log = open_log(&self.dir.path().join("hub.log"));
        let child = Command::new(hub_bin())
            .arg("--data")
            .arg(self.dir.path())
            .args(["serve", "--now", NOW, "--listen"])
            .arg(self.addr().to_string())
            .env("RUST_LOG", log_level())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("hub serve: {e}"));
        self.starts += 1;
        self.child = Some(child);
    }

    /// Spawns `serve` and waits for `/healthz`; respawns when the process exits at start.
    pub async fn start(&mut self) {
        for _ in 0..20 {
            self.spawn();
            match procs::wait_healthy(
                &self.http,
                &self.url(),
                &mut self.child,
                Duration::from_secs(60),
                Duration::from_millis(10),
                Some(Duration::from_secs(2)),
            )
            .await
            {
                Health::Up => return,
                Health::Exited => {}
                Health::TimedOut => {
                    panic!("the hub did not answer /healthz; log:\n{}", self.log())
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the hub would not start; log:\n{}", self.log());
    }

    /// SIGKILL, then reap. Returns whether a running process was killed.
    pub fn kill(&mut self) -> bool {
        self.child.take().is_some_and(kill_child)
    }

    /// SIGTERM (graceful), then reap.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, "the hub", &|| self.log());
        }
    }
}

impl Drop for HubNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One agent process and its data directory.
pub struct AgentNode {
    /// Where it reports from.
    pub site: Site,
    /// The data directory.
    pub dir: tempfile::TempDir,
    /// Its local API port.
    pub port: u16,
    /// Its public key line.
    pub key_line: String,
    /// Processes started so far.
    pub starts: u64,
    /// The intake token `init` wrote.
    pub token: String,
    child: Option<Child>,
    http: reqwest::Client,
}

impl AgentNode {
    /// `init`s an agent for `site` against `hub` (pinning `hub_key`), with fast push
    /// timings, then lets `tweak` change the configuration.
    pub fn init(site: Site, hub: &str, hub_key: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::init_with(site, hub, hub_key, &[], tweak)
    }

    /// [`AgentNode::init`] with more `init` arguments (e.g. `--ca-file FILE`).
    pub fn init_with(
        site: Site,
        hub: &str,
        hub_key: &str,
        extra: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut args = vec![
            "--source",
            site.source,
            "--scope",
            site.scope,
            "--hub",
            hub,
            "--hub-key",
            hub_key,
        ];
        args.extend_from_slice(extra);
        let (dir, port, key_line) = init_agent(&args, |cfg| {
            cfg.push.interval_secs = 0.2;
            cfg.push.retry_base_secs = 0.02;
            cfg.push.retry_cap_secs = 0.3;
            cfg.push.reprobe_secs = 0.5;
            cfg.push.timeout_secs = 1.0;
            cfg.push.notices_secs = 1.0;
            cfg.intake.spool_poll_ms = 1000;
            tweak(cfg);
        });
        let token = intake_token(&DataDir::new(dir.path()));
        AgentNode {
            site,
            dir,
            port,
            key_line,
            starts: 0,
            token,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// The source id.
    pub fn source(&self) -> SourceId {
        SourceId::parse(self.site.source).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The data directory layout.
    pub fn data(&self) -> DataDir {
        DataDir::new(self.dir.path())
    }

    /// Base URL of the local API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The local API's URL and token.
    pub fn api(&self) -> AgentApi {
        AgentApi {
            url: self.url(),
            token: self.token.clone(),
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// True while a process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs a subcommand to completion (`--data` is added).
    pub fn cli(&self, args: &[&str]) -> Output {
        procs::run_cli(agent_bin(), self.dir.path(), args)
    }

    /// Starts `run --now AGENT_NOW` and waits for `/healthz`; respawns when the process exits
    /// at start (its port briefly still held).
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        for _ in 0..20 {
            let log = open_log(&self.dir.path().join("agent.log"));
            let err = log.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
            let child = Command::new(agent_bin())
                .arg("--data")
                .arg(self.dir.path())
                .args(["run", "--now", AGENT_NOW])
                .env("RUST_LOG", log_level())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(err))
                .spawn()
                .unwrap_or_else(|e| panic!("agent run: {e}"));
            self.starts += 1;
            self.child = Some(child);
            match procs::wait_healthy(
                &self.http,
                &self.url(),
                &mut self.child,
                Duration::from_secs(60),
                Duration::from_millis(5),
                None,
            )
            .await
            {
                Health::Up => return,
                Health::Exited => {}
                Health::TimedOut => panic!(
                    "agent {} did not answer /healthz; log:\n{}",
                    self.site.source,
                    self.log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "agent {} would not start; log:\n{}",
            self.site.source,
            self.log()
        );
    }

    /// SIGKILL, then reap. Returns whether a running process was killed.
    pub fn kill(&mut self) -> bool {
        self.child.take().is_some_and(kill_child)
    }

    /// SIGTERM (graceful), then reap.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let what = format!("agent {}", self.site.source);
            terminate(&mut c, &what, &|| self.log());
        }
    }

    /// `GET /v1/status`, or `None` when it does not answer.
    pub async fn status(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/v1/status", self.url()))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The hub, the proxy in front of it, and the agents.
pub struct Cluster {
    /// The hub.
    pub hub: HubNode,
    /// The proxy every agent reaches the hub through.
    pub proxy: FaultProxy,
    /// The agents.
    pub agents: Vec<AgentNode>,
}

impl Cluster {
    /// Initialises a hub and `k` agents (registered at the hub, pinning its key), starts
    /// the proxy with `plan` and every process.
    pub async fn start(
        k: usize,
        seed: u64,
        plan: FaultPlan,
        tweak: impl Fn(&mut Config),
    ) -> Cluster {
        assert!(k <= SITES.len(), "at most {} agents", SITES.len());
        let mut hub = HubNode::init();
        let proxy = FaultProxy::start(hub.addr(), plan, seed).await;
        let agents: Vec<AgentNode> = SITES[..k]
            .iter()
            .map(|site| {
                let a = AgentNode::init(*site, &proxy.url(), &hub.key_line, &tweak);
                hub.register(site, &a.key_line);
                a
            })
            .collect();
        hub.start().await;
        let mut c = Cluster { hub, proxy, agents };
        for a in &mut c.agents {
            a.start().await;
        }
        c
    }

    /// Waits until every agent reports everything it holds receipted by the hub
    /// (`acked_seq == head_seq`) and no alarm; panics with the statuses after `timeout`.
    pub async fn wait_drained(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let mut pending = Vec::new();
            for a in &self.agents {
                let s = a.status().await.unwrap_or(Value::Null);
                let done = s["head_seq"].is_u64()
                    && s["acked_seq"] == s["head_seq"]
                    && s["alarm"].is_null();
                if !done {
                    pending.push(format!(
                        "{}: head {} acked {} alarm {} last error {}",
                        a.site.source, s["head_seq"], s["acked_seq"], s["alarm"], s["last_error"]
                    ));
                }
            }
            if pending.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "agents did not drain within {timeout:?}:\n{}",
                pending.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The records one site's writer posts; write `n` is a space count for every third `n`
/// (while school-and-date pairs last), otherwise an activity titled with its id.
#[derive(Debug, Clone)]
pub struct Workload {
    site: Site,
    source: SourceId,
    next: u64,
}

/// Schools per county the space counts rotate through.
const SCHOOLS: u64 = 97;
/// Days of `as_of` dates the space counts spread over (from 2018-08-01).
const DAYS: u64 = 110;

impl Workload {
    /// A workload for `site`.
    pub fn new(site: Site) -> Workload {
        Workload {
            site,
            source: SourceId::parse(site.source).unwrap_or_else(|e| panic!("{e}")),
            next: 0,
        }
    }

    /// The next write: its id, its JSON line and the record.
    pub fn next_write(&mut self) -> (String, String, Record) {
        let n = self.next;
        self.next += 1;
        let m = n / 3;
        let county = self.site.county;
        let value = if n.is_multiple_of(3) && m < SCHOOLS * DAYS {
            // Each (school, as_of) once; later dates carry larger counts (no decrease flags).
            let as_of = NaiveDate::from_ymd_opt(2018, 8, 1)
                .unwrap_or_default()
                .checked_add_days(chrono::Days::new(m / SCHOOLS))
                .unwrap_or_default();
            let teacher = 100 + m;
            json!({"kind": "space_count", "region": county,
                "school": format!("{county}{:04}", m % SCHOOLS), "as_of": as_of.to_string(),
                "spaces": {"teacher": teacher, "student": teacher * 10}})
        } else {
            json!({"kind": "activity", "region": county, "date": "2018-11-20",
                "category": "training", "title": format!("fs-{}-{n}", self.site.source)})
        };
        let record = Record::from_value(&value).unwrap_or_else(|p| panic!("{value}: {p:?}"));
        let id = crate::checker::write_id(&self.source, &record)
            .unwrap_or_else(|| panic!("{value} has no write id"));
        (id, value.to_string(), record)
    }
}

/// What a writer saw.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Batches answered 200.
    pub ok: AtomicU64,
    /// Batches answered 503 "buffer full".
    pub full: AtomicU64,
    /// Batches that never connected (agent down).
    pub not_sent: AtomicU64,
    /// Batches whose fate is unknown (connection cut, other answers).
    pub unknown: AtomicU64,
    /// Records acknowledged while the hub was down.
    pub acked_while_hub_down: AtomicU64,
}

/// Where an agent's local API is, and the intake token it wants.
#[derive(Debug, Clone)]
pub struct AgentApi {
    /// Base URL.
    pub url: String,
    /// The bearer token (`<data>/intake.token`).
    pub token: String,
}

/// Posts batches of 1–4 records of `work` to the agent at `api` until `stop`, recording
/// every write in `history`. `hub_down` tells whether the hub is down right now.
pub async fn write_loop(
    api: AgentApi,
    mut work: Workload,
    history: SharedHistory,
    stats: Arc<WriterStats>,
    stop: Arc<AtomicBool>,
    hub_down: Arc<AtomicBool>,
    seed: u64,
) -> Workload {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rng = StdRng::seed_from_u64(seed);
    let source = work.source.clone();
    while !stop.load(Ordering::Relaxed) {
        let n = rng.random_range(1..=4);
        let writes: Vec<(String, String, Record)> = (0..n).map(|_| work.next_write()).collect();
        let body = writes
            .iter()
            .map(|w| w.1.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let ids: Vec<String> = writes.iter().map(|w| w.0.clone()).collect();
        {
            let attempted: Vec<(String, Record)> =
                writes.into_iter().map(|(id, _, r)| (id, r)).collect();
            history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .attempt(&source, &attempted);
        }
        let down_before = hub_down.load(Ordering::Relaxed);
        let sent = http
            .post(format!("{}/v1/records", api.url))
            .bearer_auth(&api.token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let mut failed = true;
        match sent {
            Err(e) if e.is_connect() => {
                stats.not_sent.fetch_add(1, Ordering::Relaxed);
                history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .refuse(ids);
            }
            Err(_) => {
                stats.unknown.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                match status {
                    200 => {
                        let seqs: Vec<u64> =
                            serde_json::from_value(v["seqs"].clone()).unwrap_or_default();
                        assert_eq!(seqs.len(), ids.len(), "200 with one seq per record: {v}");
                        if down_before && hub_down.load(Ordering::Relaxed) {
                            stats
                                .acked_while_hub_down
                                .fetch_add(ids.len() as u64, Ordering::Relaxed);
                        }
                        history
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .acknowledge(ids, &seqs);
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                        failed = false;
                    }
                    503 if v["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("buffer is full")) =>
                    {
                        stats.full.fetch_add(1, Ordering::Relaxed);
                        history
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .refuse(ids);
                    }
                    400..=499 => panic!("{source}: a valid batch was refused ({status}): {v}"),
                    _ => {
                        stats.unknown.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let pause = if failed {
            rng.random_range(10..30)
        } else {
            rng.random_range(15..45)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    work
}
