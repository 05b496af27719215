//! `scale`: a hub holding a campaign's worth of weekly school snapshots. Measures resident
//! memory, disk, restart time to `/readyz`, `/v1/progress` and dashboard page latency,
//! `bulletin issue` and `bulletin verify`, and `verify` of the whole log against the
//! same-run batch-verification limit.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use spacesync_shared::region::RegionCode;

use crate::drive;
use crate::hub::HubInstance;
use crate::limits;
use crate::presign;
use crate::procs::{self, Binary, Bins};
use crate::report::{Report, p50_p99};
use crate::workload::{self, HUB_NOW, Shape, WEEKS};
use spacesync_hub::dashboard::SESSION_COOKIE;

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
    /// The verification limit repeats its pass for at least this many seconds.
    #[arg(long, default_value_t = 1.0)]
    pub min_limit_s: f64,
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
    let mut pre = presign::presign_in_child(
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

    // A sample for the verification limit, taken now: the bodies are dropped after the
    // ingest (at the size they are gigabytes).
    let sample = pre.parsed_sample(LIMIT_SAMPLE)?;
    let mut hub = HubInstance::init(&hub_bin, work.path(), None)?;
    for s in &pre.sources {
        hub.add_source(&s.id, &s.unit, &s.key_line)?;
    }
    let token = hub.create_token("ministry")?;
    let admin_token = hub.create_token("admin")?;
    hub.start().await?;
    let pid = hub.pid().context("the hub has no process id")?;
    // Bodies gzipped, then the plain ones dropped: at the size they are gigabytes
    // the hub's page cache can use better.
    let prepared = drive::prepare(&pre.sources, true)?;
    pre.drop_bodies();
    let d = drive::send(&hub.url(), pid, prepared, true).await?;
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
    let (times, bytes) =
        crate::restart::progress_times(&hub.url(), &token, a.progress_samples).await?;
    let first = times[0];
    let (progress, _) = p50_p99(&times[1..]);

    // Dashboard pages as a ministry user's browser gets them: a session from `POST /login`
    // with the ministry token, then the home page and a province's page (its cities) and a
    // county's (its schools), each the median of `progress_samples` after a first.
    let cookie = login(&hub.url(), &token).await?;
    let unit = RegionCode::parse(DASH_UNIT).map_err(|e| anyhow!("{e}"))?;
    let county = workload::counties(unit)?
        .into_iter()
        .next()
        .context("the dashboard's unit has no county")?;
    let home = page_times(&http, &hub.url(), "/", &cookie, a.progress_samples).await?;
    let region = page_times(
        &http,
        &hub.url(),
        &format!("/r/{DASH_UNIT}"),
        &cookie,
        a.progress_samples,
    )
    .await?;
    let county_page = page_times(
        &http,
        &hub.url(),
        &format!("/r/{county}"),
        &cookie,
        a.progress_samples,
    )
    .await?;
    println!(
        "dashboard: home median {:.1} ms (first {:.1}, {} KB), /r/{DASH_UNIT} {:.1} ms (first {:.1}, {} KB), \
         /r/{county} {:.1} ms (first {:.1}, {} KB)",
        home.median_ms,
        home.first_ms,
        home.bytes / 1024,
        region.median_ms,
        region.first_ms,
        region.bytes / 1024,
        county_page.median_ms,
        county_page.first_ms,
        county_page.bytes / 1024,
    );
    let rss_restart = procs::rss_mb(pid)?;
    // A bulletin issued as the ministry issues one with the hub serving (`bulletin issue
    // --hub`, the admin API; the weekly schedule runs the same code inside `serve`): from
    // the maintained state, without opening the store.
    let t = Instant::now();
    let live_number = hub.cli(&[
        "bulletin",
        "issue",
        "--hub",
        &hub.url(),
        "--token",
        &admin_token,
    ])?;
    let bulletin_live = t.elapsed().as_secs_f64();
    hub.stop()?;

    // Offline, `bulletin issue` opens the store itself: serve must be stopped (sled locks it).
    let t = Instant::now();
    let number = hub.cli(&["bulletin", "issue", "--now", HUB_NOW])?;
    let bulletin_offline = t.elapsed().as_secs_f64();
    // `bulletin verify` of that bulletin's JSON: recomputed from the log.
    let file = work.path().join("bulletin.json");
    let json = hub.cli(&["bulletin", "show", &number, "--format", "json"])?;
    std::fs::write(&file, json).with_context(|| format!("writing {}", file.display()))?;
    let file_arg = file.to_string_lossy().into_owned();
    let t = Instant::now();
    let (_, bulletin_verify_rss) = hub.cli_peak(&["bulletin", "verify", &file_arg])?;
    let bulletin_verify = t.elapsed().as_secs_f64();

    // `verify` over the whole log, then the batch-verification limit on a sample of the
    // same envelopes (the whole set would not fit in memory at the size).
    let verified = hub.verify()?;
    println!("{}", verified.describe());
    let limit = limits::verify_limit(&sample, a.min_limit_s)?;
    println!(
        "limit: batch verification {:.0}/s on {} cores ({} sampled entries)",
        limit.per_s,
        limits::cores(),
        sample.iter().map(|(_, e)| e.len()).sum::<usize>()
    );
    println!(
        "restart to /readyz {restart:.2} s (stop took {stop_s:.2} s); /v1/progress first {first:.1} ms, \
         median {progress:.1} ms ({} KB); resident after restart {rss_restart:.0} MiB; \
         bulletin {live_number} issued in {bulletin_live:.2} s (the hub serving; offline, {number} in \
         {bulletin_offline:.2} s), verified in {bulletin_verify:.2} s; \
         store {:.1} MB ({:.0} bytes/entry)",
        bytes / 1024,
        disk as f64 / 1e6,
        disk as f64 / n as f64
    );

    let mut r = Report::new("scale");
    r.int("entries", n as f64)
        .dec("rss_mb", rss)
        .dec("restart_s", restart)
        .dec("progress_ms", progress)
        .dec("bulletin_s", bulletin_live)
        .int("schools", a.schools as f64)
        .int("ingest_per_s", d.per_s())
        .dec("rss_restart_mb", rss_restart)
        .dec("disk_mb", disk as f64 / 1e6)
        .int("disk_bytes_per_entry", disk as f64 / n as f64)
        .dec("progress_first_ms", first)
        .int("progress_kb", bytes as f64 / 1024.0)
        .dec("stop_s", stop_s)
        .dec("dash_home_ms", home.median_ms)
        .dec("dash_region_ms", region.median_ms)
        .dec("dash_county_ms", county_page.median_ms)
        .dec("dash_home_first_ms", home.first_ms)
        .int("dash_home_kb", home.bytes as f64 / 1024.0)
        .dec("bulletin_offline_s", bulletin_offline)
        .dec("bulletin_verify_s", bulletin_verify)
        .dec("bulletin_verify_rss_peak_mb", bulletin_verify_rss);
    verified.report(&mut r, &limit);
    r.int("verify_limit_per_s", limit.per_s);
    // For measuring a command again on the same store (e.g. `verify` under another
    // allocator setting): SPACESYNC_BENCH_KEEP_HUB=DIR keeps the data directory, moved
    // there (at the size it is ~20 GB: a copy would need twice that free).
    if let Some(dest) = std::env::var_os("SPACESYNC_BENCH_KEEP_HUB") {
        let st = std::process::Command::new("mv")
            .arg(hub.dir())
            .arg(&dest)
            .status()
            .context("running cp")?;
        if !st.success() {
            bail!("moving the hub's data directory to {dest:?} failed ({st})");
        }
        println!("hub data directory kept at {}", Path::new(&dest).display());
    }
    Ok(r)
}

/// The province whose pages the dashboard timings read (Guangdong, one of the largest).
const DASH_UNIT: &str = "440000";

/// Entries parsed for the verification limit (a sample of every source's first batches).
const LIMIT_SAMPLE: u64 = 64_000;

/// `POST /login` with `token`; the session cookie (`name=value`) the hub sets.
async fn login(url: &str, token: &str) -> Result<String> {
    // The answer is a redirect whose own headers carry the cookie: not followed.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let form: String = token
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let resp = http
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={form}"))
        .send()
        .await
        .context("POST /login")?;
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(SESSION_COOKIE))
        .and_then(|c| c.split(';').next())
        .map(str::to_string);
    cookie.with_context(|| format!("POST /login answered {} without a session", resp.status()))
}

/// What the dashboard timings of one page measured.
struct PageTimes {
    first_ms: f64,
    median_ms: f64,
    bytes: usize,
}

/// `GET path` with the session cookie, `samples + 1` times: the first, and the median of
/// the rest. Fails unless each answer is 200.
async fn page_times(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    cookie: &str,
    samples: usize,
) -> Result<PageTimes> {
    let mut times = Vec::with_capacity(samples + 1);
    let mut bytes = 0;
    for _ in 0..=samples {
        let t = Instant::now();
        let resp = http
            .get(format!("{url}{path}"))
            .header("cookie", cookie)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("reading {path}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if !status.is_success() {
            bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(400)])
            );
        }
        bytes = body.len();
    }
    let (median_ms, _) = p50_p99(&times[1..]);
    Ok(PageTimes {
        first_ms: times[0],
        median_ms,
        bytes,
    })
}
