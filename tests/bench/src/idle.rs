//! `agent-idle`: the resident memory of an idle agent holding a large buffer. One real
//! agent, its hub unreachable (a port nobody listens on), takes `--entries` school
//! snapshots through its intake in 1,000-record batches; then, idle, its `VmRSS` is read,
//! and again after a clean restart (the buffer still unreceipted).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use spacesync_shared::region::RegionCode;

use crate::agents::{AgentInstance, ndjson_bodies};
use crate::procs::{self, Binary, Bins};
use crate::report::Report;
use crate::workload;

const SCOPE: &str = "440000";
const SOURCE: &str = "bench-idle-440000";

/// `agent-idle` options.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Entries buffered.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u64,
    /// Records per intake batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
    /// Seconds the agent is left idle before its memory is read.
    #[arg(long, default_value_t = 10.0)]
    pub settle_s: f64,
    #[command(flatten)]
    pub bins: Bins,
}

/// `VmHWM` (peak resident) of a process, MiB.
fn peak_mb(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .ok_or_else(|| anyhow!("{path} has no VmHWM line"))
}

/// Runs `agent-idle`; its report.
pub async fn run(a: &IdleArgs) -> Result<Report> {
    if a.entries == 0 || a.batch == 0 {
        bail!("--entries and --batch must be at least 1");
    }
    let bin = procs::locate(Binary::Agent, a.bins.agent_bin.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("spacesync-bench-idle-")
        .tempdir()
        .context("creating a work directory")?;
    let dead_hub = format!("http://127.0.0.1:{}", procs::free_port()?);
    let dir = work.path().join("agent");
    let mut agent = AgentInstance::init(&bin, &dir, SOURCE, SCOPE, &dead_hub)?;
    agent.start().await?;
    let pid = agent.pid().context("the agent has no process id")?;
    let rss_empty = procs::rss_mb(pid)?;

    let unit = RegionCode::parse(SCOPE).map_err(|e| anyhow!("{e}"))?;
    let plan = workload::unit_plan(unit, SOURCE, a.entries)?;
    // Bodies made a step ahead of the intake, not all at once (a million records is
    // hundreds of MB of NDJSON).
    let chunk = 50 * a.batch;
    let mut intake_s = 0.0;
    let mut from = 0;
    let cpu0 = procs::cpu_seconds(Some(pid))?;
    while from < a.entries {
        let to = (from + chunk).min(a.entries);
        let bodies = ndjson_bodies(&plan, from, to, a.batch)?;
        let t = Instant::now();
        for (body, n) in bodies {
            agent.post_ndjson(body, n).await?;
        }
        intake_s += t.elapsed().as_secs_f64();
        from = to;
    }
    let cpu = procs::cpu_seconds(Some(pid))? - cpu0;
    let intake_per_s = a.entries as f64 / intake_s;
    let peak_intake = peak_mb(pid)?;
    let rss_after_intake = procs::rss_mb(pid)?;
    tokio::time::sleep(Duration::from_secs_f64(a.settle_s)).await;
    let rss_idle = procs::rss_mb(pid)?;
    let st = agent.status().await?;
    if st.head_seq != a.entries || st.buffered != a.entries {
        bail!(
            "head {} and {} buffered after taking {} entries",
            st.head_seq,
            st.buffered,
            a.entries
        );
    }
    println!(
        "intake {intake_per_s:.0} entries/s ({} in {intake_s:.1} s, agent CPU {cpu:.1} s); resident {rss_empty:.1} MiB empty, \
         {rss_after_intake:.1} MiB after the intake (peak {peak_intake:.1}), {rss_idle:.1} MiB after {:.0} s idle",
        a.entries, a.settle_s
    );
    agent.stop()?;
    let disk = procs::dir_bytes(&dir.join("db"));

    let restart_s = agent.start().await?.as_secs_f64();
    let pid = agent.pid().context("the agent has no process id")?;
    tokio::time::sleep(Duration::from_secs_f64(a.settle_s)).await;
    let rss_restart = procs::rss_mb(pid)?;
    let peak_restart = peak_mb(pid)?;
    let st = agent.status().await?;
    if st.buffered != a.entries {
        bail!(
            "{} buffered after the restart, not {}",
            st.buffered,
            a.entries
        );
    }
    agent.stop()?;
    println!(
        "after a restart ({restart_s:.2} s to /healthz) and {:.0} s idle: resident {rss_restart:.1} MiB (peak {peak_restart:.1}); \
         store {:.0} MB on disk",
        a.settle_s,
        disk as f64 / 1e6
    );

    let mut r = Report::new("agent-idle");
    r.int("entries", a.entries as f64)
        .dec("rss_idle_mb", rss_idle)
        .dec("rss_restart_mb", rss_restart)
        .int("intake_per_s", intake_per_s)
        .dec("rss_after_intake_mb", rss_after_intake)
        .dec("rss_peak_intake_mb", peak_intake)
        .dec("rss_peak_restart_mb", peak_restart)
        .dec("rss_empty_mb", rss_empty)
        .dec("restart_s", restart_s)
        .dec("disk_mb", disk as f64 / 1e6)
        .dec("cpu_s_per_entry", cpu / a.entries as f64);
    Ok(r)
}
