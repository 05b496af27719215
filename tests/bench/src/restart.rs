//! `restart`: a hub's start on an existing data directory — spawn to the first 200 from
//! `/readyz`, its resident memory then, a few `/v1/progress` reads, and its clean stop —
//! `--runs` times, each from a warm page cache or, with `--cold`, after dropping it.
//!
//! The hub logs its own timings at info level (JSON): sled's open (`Opened the store.`),
//! the state load (`Loaded the hub's state.`), the notice book, and at the stop the
//! snapshot it writes for the next start (`Wrote the store's snapshot…`). Those split the
//! restart time; a hub binary older than those lines reports them as `NA`.
//!
//! The store is used as found and stays the hub's: the runs start and stop `serve` on it
//! (which may migrate its views at the first start, as any start of a newer hub does), and
//! without `--token` the second run's `/v1/progress` reads use a ministry token created
//! with `token create` after the first run (the first run's open is the store as it was
//! left).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::hub::HubInstance;
use crate::procs::{self, Binary, Bins};
use crate::report::{Report, p50_p99};

/// `restart` options.
#[derive(Debug, Clone, clap::Args)]
pub struct RestartArgs {
    /// The hub's data directory (as `spacesync-hub --data` takes it). It must not be
    /// served by another process.
    #[arg(long)]
    pub data: PathBuf,
    /// Starts and stops, one after another.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Drop the page cache before each start (`sync; echo 3 > /proc/sys/vm/drop_caches`;
    /// needs root, and slows every other process on the machine for a while).
    #[arg(long)]
    pub cold: bool,
    /// `/v1/progress` requests a run (after its first); their median is `progress_ms`.
    #[arg(long, default_value_t = 5)]
    pub progress_samples: usize,
    /// A ministry (or admin) token of this hub for the `/v1/progress` reads (default: one
    /// is created after the first run).
    #[arg(long)]
    pub token: Option<String>,
    /// An admin token of this hub: each run then issues one bulletin through the admin API
    /// (`bulletin issue --hub`, as the ministry does with the hub serving) before its stop;
    /// the median is `bulletin_s`. Each adds a bulletin to the store.
    #[arg(long)]
    pub bulletin_token: Option<String>,
    #[command(flatten)]
    pub bins: Bins,
}

/// What one start and stop measured.
struct Run {
    restart_s: f64,
    /// The hub's CPU (user + system) from spawn to `/readyz`: the start's own cost,
    /// whatever the machine's load made the wall time.
    cpu_s: f64,
    /// Bytes it read from disk by then (`read_bytes` of `/proc/<pid>/io`), MB.
    read_mb: f64,
    rss_mb: f64,
    stop_s: f64,
    open_ms: Option<f64>,
    state_ms: Option<f64>,
    notices_ms: Option<f64>,
    snapshot_ms: Option<f64>,
    progress_ms: Vec<f64>,
    bulletin_s: Option<f64>,
}

/// Runs `restart`; its report.
pub async fn run(a: &RestartArgs) -> Result<Report> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let hub_bin = procs::locate(Binary::Hub, a.bins.hub_bin.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("spacesync-bench-restart-")
        .tempdir()
        .context("creating a work directory")?;
    let mut hub = HubInstance::existing(&hub_bin, &a.data, &work.path().join("hub.log"))?;
    let store_mb = procs::dir_bytes(&a.data.join("db")) as f64 / 1e6;
    println!(
        "store {:.1} MB under {}; hub {}",
        store_mb,
        a.data.display(),
        hub_bin.display()
    );
    let mut token = a.token.clone();
    let mut runs = Vec::with_capacity(a.runs);
    for i in 0..a.runs {
        if a.cold {
            drop_page_cache()?;
        }
        hub.clear_log()?;
        let load = loadavg();
        let restart_s = hub.start().await?.as_secs_f64();
        let pid = hub.pid().context("the hub has no process id")?;
        let cpu_s = procs::cpu_seconds(Some(pid))?;
        let read_mb = disk_read_mb(pid)?;
        let rss_mb = procs::rss_mb(pid)?;
        let progress_ms = match &token {
            Some(t) => progress_times(&hub.url(), t, a.progress_samples).await?.0,
            None => Vec::new(),
        };
        let bulletin_s = match &a.bulletin_token {
            Some(t) => {
                let started = std::time::Instant::now();
                hub.cli(&["bulletin", "issue", "--hub", &hub.url(), "--token", t])?;
                Some(started.elapsed().as_secs_f64())
            }
            None => None,
        };
        let stop_s = hub.stop()?.as_secs_f64();
        let first = |m: &str| hub.log_timings(m).first().copied();
        let r = Run {
            restart_s,
            cpu_s,
            read_mb,
            rss_mb,
            stop_s,
            open_ms: first("Opened the store."),
            state_ms: first("Loaded the hub's state."),
            notices_ms: first("Loaded the notice book."),
            snapshot_ms: first("Wrote the store's snapshot; the next start replays nothing."),
            progress_ms,
            bulletin_s,
        };
        let ms = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.0}"));
        println!(
            "run {}: /readyz after {:.2} s ({:.2} s CPU, {:.0} MB read from disk; sled open {} ms, state {} ms, \
             notices {} ms); resident {:.0} MiB; /v1/progress median {}; bulletin issued live in {}; stop {:.2} s (snapshot {} ms); load before {load}",
            i + 1,
            r.restart_s,
            r.cpu_s,
            r.read_mb,
            ms(r.open_ms),
            ms(r.state_ms),
            ms(r.notices_ms),
            r.rss_mb,
            if r.progress_ms.len() > 1 {
                format!("{:.1} ms", p50_p99(&r.progress_ms[1..]).0)
            } else {
                "not read".into()
            },
            r.bulletin_s
                .map_or("(not issued)".to_string(), |v| format!("{v:.2} s")),
            r.stop_s,
            ms(r.snapshot_ms),
        );
        runs.push(r);
        if token.is_none() && i + 1 < a.runs {
            token = Some(hub.cli(&[
                "token",
                "create",
                "--role",
                "ministry",
                "--label",
                "spacesync-bench restart",
            ])?);
        }
    }

    let med = |f: &dyn Fn(&Run) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| p50_p99(&v).0)
    };
    let progress: Vec<f64> = runs
        .iter()
        .filter(|r| r.progress_ms.len() > 1)
        .flat_map(|r| r.progress_ms[1..].iter().copied())
        .collect();
    let mut r = Report::new("restart");
    r.opt_dec("restart_s", med(&|r| Some(r.restart_s)))
        .opt_dec("rss_mb", med(&|r| Some(r.rss_mb)))
        .opt_dec(
            "progress_ms",
            (!progress.is_empty()).then(|| p50_p99(&progress).0),
        )
        .dec("restart_first_s", runs[0].restart_s)
        .dec(
            "restart_max_s",
            runs.iter().map(|r| r.restart_s).fold(0.0, f64::max),
        )
        .opt_dec("bulletin_s", med(&|r| r.bulletin_s))
        .opt_dec("cpu_s", med(&|r| Some(r.cpu_s)))
        .opt_dec("read_mb", med(&|r| Some(r.read_mb)))
        .opt_dec("open_ms", med(&|r| r.open_ms))
        .opt_dec("state_ms", med(&|r| r.state_ms))
        .opt_dec("notices_ms", med(&|r| r.notices_ms))
        .opt_dec("stop_s", med(&|r| Some(r.stop_s)))
        .opt_dec("snapshot_ms", med(&|r| r.snapshot_ms))
        .int("runs", runs.len() as f64)
        .int("cold", if a.cold { 1.0 } else { 0.0 })
        .dec("store_mb", store_mb);
    Ok(r)
}

/// `/v1/progress` `n + 1` times: the first read and `n` more, in milliseconds, and the
/// size of the last answer (each must be JSON).
pub(crate) async fn progress_times(base: &str, token: &str, n: usize) -> Result<(Vec<f64>, usize)> {
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/progress");
    let mut times = Vec::with_capacity(n + 1);
    let mut bytes = 0;
    for _ in 0..=n {
        let t = Instant::now();
        let resp = http
            .get(&url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .context("GET /v1/progress")?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading /v1/progress")?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if !status.is_success() {
            bail!(
                "/v1/progress answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(400)])
            );
        }
        serde_json::from_slice::<serde_json::Value>(&body).context("/v1/progress is not JSON")?;
        bytes = body.len();
    }
    Ok((times, bytes))
}

/// `sync`, then `echo 3 > /proc/sys/vm/drop_caches`.
fn drop_page_cache() -> Result<()> {
    let st = std::process::Command::new("sync")
        .status()
        .context("running sync")?;
    if !st.success() {
        bail!("sync failed ({st})");
    }
    std::fs::write("/proc/sys/vm/drop_caches", b"3")
        .context("dropping the page cache for --cold (needs root)")
}

/// What process `pid` has read from disk (not the page cache) so far, MB.
fn disk_read_mb(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|b| b / 1e6)
        .with_context(|| format!("{path} has no read_bytes line"))
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
