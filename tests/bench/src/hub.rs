//! One real hub, driven through its command line as an operator would: `init` in a
//! temporary data directory (or an existing data directory, [`HubInstance::existing`]),
//! `agents add`, `token create`, `serve` on a free loopback port, a clean stop (SIGTERM),
//! restarts, `bulletin issue`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::limits::VerifyLimit;
use crate::procs::{self, ChildGuard};
use crate::report::Report;
use crate::workload::HUB_NOW;

/// When the benchmark registers its sources (`agents add --now`): before the campaign.
const REGISTERED_AT: &str = "2018-09-01T00:00:00Z";

/// What one `verify` run took.
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    /// Log leaves checked.
    pub leaves: u64,
    /// Wall time of the command, process start and store opening included.
    pub wall_s: f64,
    /// Its user + system CPU, all threads.
    pub cpu_s: f64,
    /// Its peak resident memory, MiB.
    pub rss_peak_mb: f64,
}

impl Verified {
    /// Leaves a second.
    pub fn per_s(&self) -> f64 {
        self.leaves as f64 / self.wall_s.max(1e-9)
    }
}

impl Verified {
    /// Appends `verify_per_s`, `verify_ratio` (to the same run's batch-verification limit
    /// on all cores: issue 12's target ≥ 0.5), `verify_cpu_vs_limit` (CPU per leaf ÷ the
    /// limit's CPU per signature) and `verify_s` to `r`.
    pub fn report(&self, r: &mut Report, limit: &VerifyLimit) {
        r.int("verify_per_s", self.per_s())
            .dec("verify_ratio", self.per_s() / limit.per_s)
            .dec(
                "verify_cpu_vs_limit",
                self.cpu_s / self.leaves.max(1) as f64 / limit.cpu_per_sig,
            )
            .dec("verify_s", self.wall_s)
            .dec("verify_rss_peak_mb", self.rss_peak_mb);
    }

    /// The line printed after the run.
    pub fn describe(&self) -> String {
        format!(
            "hub verify: {:.0} leaves/s ({} leaves in {:.2} s, {:.2} cores busy, peak resident {:.0} MiB)",
            self.per_s(),
            self.leaves,
            self.wall_s,
            self.cpu_s / self.wall_s,
            self.rss_peak_mb
        )
    }
}

/// A hub's data directory: made for the run (removed on drop), or one given (kept).
enum HubDir {
    Temp(tempfile::TempDir),
    Existing(PathBuf),
}

impl HubDir {
    fn path(&self) -> &Path {
        match self {
            HubDir::Temp(t) => t.path(),
            HubDir::Existing(p) => p,
        }
    }
}

/// A hub's data directory and, while it serves, its process.
pub struct HubInstance {
    bin: PathBuf,
    /// The data directory (a temporary one is removed on drop, after the process is
    /// stopped).
    dir: HubDir,
    /// Where `serve` writes its log (`hub.log` in the data directory unless set).
    log: Option<PathBuf>,
    /// `RUST_LOG` for `serve`.
    log_level: &'static str,
    /// Where `serve` listens (chosen anew when a start finds the port taken).
    pub port: u16,
    child: Option<ChildGuard>,
    http: reqwest::Client,
    /// The hub's public key line, from `init`.
    pub key_line: String,
}

impl HubInstance {
    /// `init`s a hub in a fresh directory under `parent` (its state in the PostgreSQL
    /// database `store` when given) and lifts the per-source request rate limit (a
    /// benchmark measures the hub, not its limiter).
    pub fn init(bin: &Path, parent: &Path, store: Option<&str>) -> Result<HubInstance> {
        let dir = tempfile::Builder::new()
            .prefix("hub-")
            .tempdir_in(parent)
            .context("creating the hub's data directory")?;
        let key_line = match store {
            Some(url) => procs::run_cli(bin, dir.path(), &["init", "--store", url])?,
            None => procs::run_cli(bin, dir.path(), &["init"])?,
        };
        let cfg = dir.path().join("hub.toml");
        let text =
            std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
        let mut found = 0;
        let text: String = text
            .lines()
            .map(|l| {
                for key in ["rate_per_source", "burst_per_source"] {
                    if l.starts_with(key) && l[key.len()..].trim_start().starts_with('=') {
                        found += 1;
                        return format!("{key} = 1000000.0\n");
                    }
                }
                format!("{l}\n")
            })
            .collect();
        if found != 2 {
            bail!(
                "{} no longer has `rate_per_source =` and `burst_per_source =` lines to raise",
                cfg.display()
            );
        }
        std::fs::write(&cfg, text).with_context(|| format!("writing {}", cfg.display()))?;
        Ok(HubInstance {
            bin: bin.to_path_buf(),
            dir: HubDir::Temp(dir),
            log: None,
            log_level: "warn",
            port: procs::free_port()?,
            child: None,
            http: reqwest::Client::new(),
            key_line,
        })
    }

    /// Another replica of this hub (PostgreSQL only): a copy of its data directory (key
    /// and configuration) under `parent`, with a port of its own.
    pub fn replica(&self, parent: &Path) -> Result<HubInstance> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("hub-replica-")
            .tempdir_in(parent)
            .context("creating a replica's data directory")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .context("making the replica's data directory private")?;
        for e in std::fs::read_dir(self.dir.path())
            .with_context(|| format!("reading {}", self.dir.path().display()))?
        {
            let e = e?;
            if e.file_type()?.is_file() && e.file_name() != "hub.log" {
                std::fs::copy(e.path(), dir.path().join(e.file_name()))
                    .with_context(|| format!("copying {}", e.path().display()))?;
            }
        }
        Ok(HubInstance {
            bin: self.bin.clone(),
            dir: HubDir::Temp(dir),
            log: None,
            log_level: "warn",
            port: procs::free_port()?,
            child: None,
            http: reqwest::Client::new(),
            key_line: self.key_line.clone(),
        })
    }

    /// A hub over the existing data directory `dir` (kept as it is found: nothing is
    /// initialised or removed), its `serve` log written to `log` at `RUST_LOG=info` in
    /// JSON (the hub's own timings of its start, [`HubInstance::log_timings`]).
    pub fn existing(bin: &Path, dir: &Path, log: &Path) -> Result<HubInstance> {
        if !dir.join("hub.key").exists() {
            bail!("{} holds no hub (no hub.key)", dir.display());
        }
        Ok(HubInstance {
            bin: bin.to_path_buf(),
            dir: HubDir::Existing(dir.to_path_buf()),
            log: Some(log.to_path_buf()),
            log_level: "info",
            port: procs::free_port()?,
            child: None,
            http: reqwest::Client::new(),
            key_line: String::new(),
        })
    }

    /// The `took_ms` of each line of the `serve` log whose message is `message`, in
    /// order (the log is JSON: [`HubInstance::existing`]).
    pub fn log_timings(&self, message: &str) -> Vec<f64> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .filter_map(|v| v["fields"]["took_ms"].as_f64())
            .collect()
    }

    /// Empties the `serve` log (each run's timings apart).
    pub fn clear_log(&self) -> Result<()> {
        std::fs::write(self.log_path(), b"")
            .with_context(|| format!("emptying {}", self.log_path().display()))
    }

    /// Runs a subcommand against the data directory; its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        procs::run_cli(&self.bin, self.dir.path(), args)
    }

    /// [`HubInstance::cli`], with the command's peak resident memory in MiB.
    pub fn cli_peak(&self, args: &[&str]) -> Result<(String, f64)> {
        procs::run_cli_peak(&self.bin, self.dir.path(), args)
    }

    /// `agents add` for one source.
    pub fn add_source(&self, id: &str, scope: &str, key_line: &str) -> Result<()> {
        self.cli(&[
            "agents",
            "--now",
            REGISTERED_AT,
            "add",
            "--source",
            id,
            "--scope",
            scope,
            "--key",
            key_line,
        ])
        .map(drop)
    }

    /// `token create --role ROLE`: the token.
    pub fn create_token(&self, role: &str) -> Result<String> {
        self.cli(&[
            "token",
            "create",
            "--role",
            role,
            "--label",
            "spacesync-bench",
        ])
    }

    /// Batches whose `R`s the hub tested for torsion, over the tests it ran for them
    /// (`/metrics`, read with an admin token): how many batches shared one test.
    pub async fn torsion_batches_per_test(&self, admin_token: &str) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url()))
            .bearer_auth(admin_token)
            .send()
            .await
            .context("reading the hub's /metrics")?
            .error_for_status()
            .context("reading the hub's /metrics")?
            .text()
            .await
            .context("reading the hub's /metrics")?;
        let get = |name: &str| -> Result<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .with_context(|| format!("{name} is not in the hub's /metrics"))
        };
        let tests = get("spacesync_hub_ingest_torsion_settles_total")?;
        Ok(get("spacesync_hub_ingest_torsion_batches_total")? / tests.max(1.0))
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The serving process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildGuard::pid)
    }

    fn log_path(&self) -> PathBuf {
        self.log
            .clone()
            .unwrap_or_else(|| self.dir.path().join("hub.log"))
    }

    /// Starts `serve --now HUB_NOW` and waits for `/readyz` to answer 200 (polled every
    /// 2 ms). Returns the time from spawn to that answer. Retries on a new port when the
    /// process exits at start (the port was taken between choosing and binding).
    pub async fn start(&mut self) -> Result<Duration> {
        if self.child.is_some() {
            bail!("the hub is already serving");
        }
        let mut last_err = None;
        for _ in 0..5 {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .with_context(|| format!("opening {}", self.log_path().display()))?;
            let mut cmd = Command::new(&self.bin);
            cmd.arg("--data")
                .arg(self.dir.path())
                .args(["serve", "--now", HUB_NOW]);
            if self.log.is_some() {
                cmd.args(["--log-format", "json"]);
            }
            let child = cmd
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .env("RUST_LOG", self.log_level)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("starting {} serve", self.bin.display()))?;
            let mut guard = ChildGuard::new("the hub", child);
            if matches!(self.dir, HubDir::Existing(_)) {
                // A store that is not the run's own is stopped cleanly even on an error.
                guard = guard.with_drop_signal(libc::SIGTERM, Duration::from_secs(300));
            }
            let url = format!("{}/readyz", self.url());
            match procs::wait_ok(
                &self.http,
                &url,
                &mut guard,
                Duration::from_secs(300),
                Duration::from_millis(2),
            )
            .await
            {
                Ok(took) => {
                    self.child = Some(guard);
                    return Ok(took);
                }
                Err(e) => {
                    let exited = guard.exited().is_some();
                    drop(guard);
                    if !exited {
                        return Err(e.context(procs::log_tail(&self.log_path(), 20)));
                    }
                    last_err = Some(e);
                    self.port = procs::free_port()?;
                }
            }
        }
        let e = last_err.unwrap_or_else(|| anyhow::anyhow!("the hub would not start"));
        Err(e.context(format!(
            "the hub would not start; its log ends:\n{}",
            procs::log_tail(&self.log_path(), 20)
        )))
    }

    /// Stops `serve` cleanly (SIGTERM; SIGKILL after five minutes: the stop includes
    /// bringing sled's snapshot up to date, which replays what the run wrote). Returns how
    /// long it took.
    pub fn stop(&mut self) -> Result<Duration> {
        let Some(mut guard) = self.child.take() else {
            bail!("the hub is not serving");
        };
        let (st, took) = guard.stop(libc::SIGTERM, Duration::from_secs(300))?;
        if !st.success() {
            eprintln!(
                "The hub exited with {st} on SIGTERM; its log ends:\n{}",
                procs::log_tail(&self.log_path(), 10)
            );
        }
        Ok(took)
    }

    /// `spacesync-hub verify` over the stopped hub's store: every signature, chain, index
    /// entry, the tree against the checkpoint, and the views. Fails unless it says `ok`.
    pub fn verify(&self) -> Result<Verified> {
        if self.child.is_some() {
            bail!("stop the hub before `verify` (sled locks the store)");
        }
        let cpu = procs::children_cpu_seconds()?;
        let t = Instant::now();
        let (out, rss_peak_mb) = self.cli_peak(&["verify"])?;
        let wall_s = t.elapsed().as_secs_f64();
        let cpu_s = procs::children_cpu_seconds()? - cpu;
        // "ok: N leaves from M sources; …"
        let leaves = out
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("ok: "))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("`verify` did not say how many leaves it checked: {out}"))?;
        Ok(Verified {
            leaves,
            wall_s,
            cpu_s,
            rss_peak_mb,
        })
    }

    /// Bytes of the sled store on disk.
    pub fn db_bytes(&self) -> u64 {
        procs::dir_bytes(&self.dir.path().join("db"))
    }
}

impl Drop for HubInstance {
    fn drop(&mut self) {
        // The process first, then (by field drop) the directory it writes to.
        drop(self.child.take());
    }
}
