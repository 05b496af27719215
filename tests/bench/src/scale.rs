//! `scale`: a hub holding a campaign's worth of weekly school snapshots. Measures resident
//! memory, disk, restart time to `/readyz`, `/v1/progress` latency and `bulletin issue`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::drive;
use crate::hub::HubInstance;
use crate::presign;
use crate::procs::{self, Binary, Bins};
use crate::report::{Report, p50_p99};
use crate::workload::{HUB_NOW, Shape, WEEKS};

/// `scale` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Schools, spread over the 32 provincial units, each reporting weekly from 2018-09-03
    /// to 2018-12-31 (18 entries a school).
    #[arg(long, default_value_t = 5000)]
    pub schools: u64,
    /// Entries per ingest batch.
    #[arg(long, default_value_t = 500)]
    pub batch: u64,
    /// `/v1/progress` requests after the first; their median is `progress_ms`.
    #[arg(long, default_value_t = 9)]
    pub progress_samples: usize,
    #[command(flatten)]
    pub bins: Bins,
}

/// Runs `scale`; its report.
pub async fn run(a: &ScaleArgs) -> Result<Report> {
    if a.schools == 0 || a.progress_samples == 0 {
        bail!("--schools and --progress-samples must be at least 1");
    }
    let hub_bin = procs::locate(Binary::Hub, a.bins.hub_bin.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("spacesync-bench-scale-")
        .tempdir()
        .context("creating a work directory")?;
    let pre = presign::presign_in_child(
        Shape::Schools { schools: a.schools },
        a.batch,
        &work.path().join("presigned"),
    )?;
    let n = pre.entries();
    println!(
        "presigned {n} entries ({} schools × {WEEKS} weeks) for {} sources ({:.2} s)",
        a.schools,
        pre.sources.len(),
        pre.process_s
    );

    let mut hub = HubInstance::init(&hub_bin, work.path(), None)?;
    for s in &pre.sources {
        hub.add_source(&s.id, &s.unit, &s.key_line)?;
    }
    let token = hub.create_token("ministry")?;
    hub.start().await?;
    let pid = hub.pid().context("the hub has no process id")?;
    let d = drive::drive(&hub.url(), pid, &pre.sources, true, true).await?;
    if d.entries != n {
        bail!("the hub acknowledged {} entries of {n}", d.entries);
    }
    let rss = procs::rss_mb(pid)?;
    println!(
        "ingested {n} entries at {:.0}/s; hub resident {rss:.0} MiB while serving",
        d.per_s()
    );
    let stop_s = hub.stop()?.as_secs_f64();
    let disk = hub.db_bytes();

    // Restart: spawn to the first 200 from /readyz.
    let restart = hub.start().await?.as_secs_f64();
    let pid = hub.pid().context("the hub has no process id")?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/progress", hub.url());
    let mut times = Vec::with_capacity(a.progress_samples + 1);
    let mut bytes = 0;
    for _ in 0..=a.progress_samples {
        let t = Instant::now();
        let resp = http
            .get(&url)
            .bearer_auth(&token)
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
    let first = times[0];
    let (progress, _) = p50_p99(&times[1..]);
    let rss_restart = procs::rss_mb(pid)?;
    hub.stop()?;

    // bulletin issue opens the store itself: serve must be stopped (sled locks it).
    let t = Instant::now();
    let number = hub.cli(&["bulletin", "issue", "--now", HUB_NOW])?;
    let bulletin = t.elapsed().as_secs_f64();
    println!(
        "restart to /readyz {restart:.2} s (stop took {stop_s:.2} s); /v1/progress first {first:.1} ms, \
         median {progress:.1} ms ({} KB); resident after restart {rss_restart:.0} MiB; \
         bulletin {number} issued in {bulletin:.2} s; store {:.1} MB ({:.0} bytes/entry)",
        bytes / 1024,
        disk as f64 / 1e6,
        disk as f64 / n as f64
    );

    let mut r = Report::new("scale");
    r.int("entries", n as f64)
        .dec("rss_mb", rss)
        .dec("restart_s", restart)
        .dec("progress_ms", progress)
        .dec("bulletin_s", bulletin)
        .int("schools", a.schools as f64)
        .int("ingest_per_s", d.per_s())
        .dec("rss_restart_mb", rss_restart)
        .dec("disk_mb", disk as f64 / 1e6)
        .int("disk_bytes_per_entry", disk as f64 / n as f64)
        .dec("progress_first_ms", first)
        .int("progress_kb", bytes as f64 / 1024.0)
        .dec("stop_s", stop_s);
    Ok(r)
}
