//! `agent`: the real agent binary with its hub unreachable (nothing drains its buffer),
//! taking NDJSON batches of school snapshots on its local API, each answered after the
//! flush; then single-record POSTs from concurrent clients; next to Ed25519 signing on one
//! core in the same run (the agent must sign every entry: its floor).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use spacesync_shared::region::RegionCode;
use spacesync_shared::{Digest, Entry};

use crate::agents::{AGENT_NOW, init_agent, post};
use crate::limits;
use crate::procs::{self, Binary, Bins, ChildGuard};
use crate::report::{Report, p50_p99};
use crate::workload;

/// Its scope and source id.
const SCOPE: &str = "440000";
const SOURCE: &str = "bench-agent-440000";

/// `agent` options.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Batches to POST.
    #[arg(long, default_value_t = 50)]
    pub batches: u64,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: u64,
    /// Single-record POSTs after the batches.
    #[arg(long, default_value_t = 2000)]
    pub singles: u64,
    /// Concurrent clients for the single-record POSTs.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// The signing limit repeats its pass for at least this many seconds.
    #[arg(long, default_value_t = 1.0)]
    pub min_limit_s: f64,
    #[command(flatten)]
    pub bins: Bins,
}

/// Runs `agent`; its report.
pub async fn run(a: &AgentArgs) -> Result<Report> {
    if a.batches == 0 || a.batch_size == 0 || a.clients == 0 {
        bail!("--batches, --batch-size and --clients must be at least 1");
    }
    let bin = procs::locate(Binary::Agent, a.bins.agent_bin.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("spacesync-bench-agent-")
        .tempdir()
        .context("creating a work directory")?;
    let dir = work.path().join("agent");
    let port = procs::free_port()?;
    // A port nobody listens on: every push is refused at once, so nothing drains the buffer.
    let dead_hub = format!("http://127.0.0.1:{}", procs::free_port()?);
    let listen = format!("127.0.0.1:{port}");
    init_agent(&bin, &dir, SOURCE, SCOPE, &dead_hub, &listen)?;
    let token = procs::run_cli(&bin, &dir, &["token"])?;

    // Records: weekly school snapshots of Guangdong; the batches first, then the singles.
    let batched = a.batches * a.batch_size;
    let unit = RegionCode::parse(SCOPE).map_err(|e| anyhow!("{e}"))?;
    let plan = workload::unit_plan(unit, SOURCE, batched + a.singles)?;
    let bodies: Vec<Vec<u8>> = (0..a.batches)
        .map(|b| {
            let mut body = Vec::new();
            for k in b * a.batch_size..(b + 1) * a.batch_size {
                serde_json::to_writer(&mut body, &plan.record(k))?;
                body.push(b'\n');
            }
            Ok(body)
        })
        .collect::<Result<_>>()?;
    let singles: Vec<Vec<u8>> = (batched..batched + a.singles)
        .map(|k| serde_json::to_vec(&plan.record(k)))
        .collect::<Result<_, _>>()?;

    let log_path = work.path().join("agent.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let child = Command::new(&bin)
        .arg("--data")
        .arg(&dir)
        .args(["run", "--now", AGENT_NOW])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {} run", bin.display()))?;
    let mut guard = ChildGuard::new("the agent", child);
    let url = format!("http://{listen}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .pool_idle_timeout(spacesync_http::CLIENT_POOL_IDLE)
        .timeout(Duration::from_secs(300))
        .build()?;
    procs::wait_ok(
        &http,
        &format!("{url}/healthz"),
        &mut guard,
        Duration::from_secs(60),
        Duration::from_millis(5),
    )
    .await
    .map_err(|e| e.context(procs::log_tail(&log_path, 20)))?;
    let pid = guard.pid().context("the agent has no process id")?;
    let endpoint = Arc::new(format!("{url}/v1/records"));
    let token = Arc::new(token);
    println!(
        "agent {} on {url}, hub unreachable at {dead_hub}",
        bin.display()
    );

    // Batches, one after another, as a platform's nightly export would send them.
    let cpu0 = procs::cpu_seconds(Some(pid))?;
    let t = Instant::now();
    let mut batch_ms = Vec::with_capacity(bodies.len());
    for body in bodies {
        let t1 = Instant::now();
        post(
            &http,
            &endpoint,
            &token,
            "application/x-ndjson",
            body,
            a.batch_size,
        )
        .await?;
        batch_ms.push(t1.elapsed().as_secs_f64() * 1e3);
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = procs::cpu_seconds(Some(pid))? - cpu0;
    let per_s = batched as f64 / wall;
    let (p50, p99) = p50_p99(&batch_ms);
    println!(
        "batched intake: {per_s:.0} entries/s ({batched} in {wall:.2} s), batch p50 {p50:.1} ms p99 {p99:.1} ms, agent CPU {cpu:.2} s"
    );

    // Single records from concurrent clients.
    let singles = Arc::new(singles);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.clients {
        let (http, endpoint, token, singles, next) = (
            http.clone(),
            endpoint.clone(),
            token.clone(),
            singles.clone(),
            next.clone(),
        );
        tasks.spawn(async move {
            let mut ms = Vec::new();
            while let Some(body) = singles.get(next.fetch_add(1, Ordering::Relaxed)) {
                let t1 = Instant::now();
                post(
                    &http,
                    &endpoint,
                    &token,
                    "application/json",
                    body.clone(),
                    1,
                )
                .await?;
                ms.push(t1.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(ms)
        });
    }
    let mut single_ms = Vec::new();
    while let Some(r) = tasks.join_next().await {
        single_ms.extend(r.map_err(|e| anyhow!("a client task failed: {e}"))??);
    }
    let single_wall = t.elapsed().as_secs_f64();
    let single_per_s = a.singles as f64 / single_wall;
    let (s50, s99) = p50_p99(&single_ms);
    println!(
        "single-record POSTs from {} clients: {single_per_s:.0} entries/s, p50 {s50:.1} ms p99 {s99:.1} ms",
        a.clients
    );
    guard.stop(libc::SIGTERM, Duration::from_secs(30))?;

    // Signing on one core, the same kind of entries, with the agent stopped.
    let sample: Vec<Entry> = (0..batched.min(5_000))
        .map(|k| plan.entry(k, Digest::ZERO))
        .collect::<Result<_>>()?;
    let (sign, entry_sign) = limits::sign_one_core(&sample, &plan.key, a.min_limit_s)?;
    println!("signing on one core: {sign:.0}/s raw Ed25519, {entry_sign:.0}/s whole Entry::sign");

    let mut r = Report::new("agent");
    r.int("entries_per_s", per_s)
        .int("sign_limit_per_s", sign)
        .dec("ratio", per_s / sign)
        .int("single_per_s", single_per_s)
        .dec("single_ratio", single_per_s / sign)
        .int("entry_sign_per_s", entry_sign)
        .dec("p50_batch_ms", p50)
        .dec("p99_batch_ms", p99)
        .dec("cpu_s_per_entry", cpu / batched as f64)
        .dec("single_p50_ms", s50)
        .dec("single_p99_ms", s99)
        .int("batches", a.batches as f64)
        .int("batch_size", a.batch_size as f64)
        .int("singles", a.singles as f64)
        .int("clients", a.clients as f64);
    Ok(r)
}
