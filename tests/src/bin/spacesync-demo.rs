//! The main job: the 2018 campaign in one command. Builds the binaries, starts a hub and
//! one agent per provincial unit as real processes on loopback, feeds each agent its
//! province's generated data through the agent's own intake API on an accelerated clock
//! from 2018-10-01 to 2019-01-15, lets the hub issue bulletins and notices on schedule,
//! waits until every bulletin's checkpoint is cosigned by the witness quorum (agents audit
//! the log and cosign it), then stops everything, verifies the log and prints where to look
//! next. The hub runs on the embedded store, or with `--store postgres://…` on PostgreSQL.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveTime, Utc};
use clap::Parser;
use serde_json::Value;
use spacesync_shared::Campaign;
use spacesync_shared::campaign::CHINA_STANDARD_TIME;
use spacesync_tests::simulate;

#[derive(Parser)]
#[command(
    name = "spacesync-demo",
    about = "Runs the 2018 campaign end to end on this machine."
)]
struct Args {
    /// Where the hub's and agents' data go (replaced on every run).
    #[arg(long, default_value = "spacesync-demo")]
    dir: PathBuf,
    /// Seed of the generated campaign.
    #[arg(long, default_value_t = 2018)]
    seed: u64,
    /// Real seconds the campaign (2018-10-01 … 2019-01-15) takes.
    #[arg(long, default_value_t = 100.0)]
    seconds: f64,
    /// Keep the hub's state in this empty PostgreSQL database
    /// (postgres://USER@HOST:PORT/DB) instead of the embedded store (`init --store`).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Run this hub binary instead of building one (with --agent-bin; for tests).
    #[arg(long, value_name = "PATH", requires = "agent_bin")]
    hub_bin: Option<PathBuf>,
    /// Run this agent binary instead of building one (with --hub-bin; for tests).
    #[arg(long, value_name = "PATH", requires = "hub_bin")]
    agent_bin: Option<PathBuf>,
}

const START: &str = "2018-10-01T00:00:00+08:00";
const END: (i32, u32, u32) = (2019, 1, 15);

struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` distinct free loopback ports: every listener is held until all are chosen (one
/// chosen and closed at a time, the kernel may hand the same port out twice, and two agents
/// configured with one port answer each other's requests).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

fn run(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds the hub and agent binaries next to this one (a no-op when they are up to date).
fn build_binaries() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let bin_dir = exe
        .parent()
        .context("this binary has no directory")?
        .to_path_buf();
    let profile = if bin_dir.ends_with("release") {
        vec!["--release"]
    } else {
        vec![]
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("Building spacesync-hub and spacesync-agent …");
    let status = Command::new(cargo)
        // The same package set as `cargo run -p spacesync-tests`, so features unify the same
        // way and nothing already built for this binary is rebuilt.
        .args([
            "build",
            "-q",
            "-p",
            "spacesync-tests",
            "-p",
            "spacesync-hub",
            "-p",
            "spacesync-agent",
            "--bins",
        ])
        .args(&profile)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(bin_dir)
}

struct Clock {
    start_real: Instant,
    start_virtual: DateTime<Utc>,
    speed: f64,
}

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        let ms = self.start_real.elapsed().as_secs_f64() * self.speed * 1000.0;
        self.start_virtual + ChronoDuration::milliseconds(ms as i64)
    }
    fn real_until(&self, t: DateTime<Utc>) -> Duration {
        let secs = (t - self.now()).num_milliseconds() as f64 / 1000.0 / self.speed;
        Duration::from_secs_f64(secs.max(0.0))
    }
}

#[derive(Default, Debug)]
struct Tally {
    attempted: u64,
    accepted: u64,
    refused_expected: u64,
    refused_unexpected: Vec<String>,
    accepted_bad: Vec<String>,
}

async fn get_json(client: &reqwest::Client, url: &str, token: Option<&str>) -> Result<Value> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Ok(req.send().await?.error_for_status()?.json().await?)
}

async fn wait_healthy(client: &reqwest::Client, url: &str) -> Result<()> {
    for _ in 0..200 {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not answer")
}

async fn post_records(
    client: &reqwest::Client,
    agent: &str,
    token: &str,
    body: String,
) -> Result<(u16, String)> {
    for _ in 0..100 {
        let r = client
            .post(format!("{agent}/v1/records"))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await?;
        let status = r.status().as_u16();
        if status == 503 {
            let wait = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1u64);
            tokio::time::sleep(Duration::from_millis(200 * wait.min(5))).await;
            continue;
        }
        return Ok((status, r.text().await.unwrap_or_default()));
    }
    bail!("{agent} stayed full")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (hub_bin, agent_bin) = match (&args.hub_bin, &args.agent_bin) {
        (Some(h), Some(a)) => (h.clone(), a.clone()),
        _ => {
            let bins = build_binaries()?;
            (bins.join("spacesync-hub"), bins.join("spacesync-agent"))
        }
    };
    let began = Instant::now();
    let campaign = Campaign::builtin_2018();
    let dir = std::path::absolute(&args.dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let hub_dir = dir.join("hub");
    let hub_data = hub_dir.to_string_lossy().to_string();
    let hub_key = match &args.store {
        Some(url) => run(&hub_bin, &["--data", &hub_data, "init", "--store", url])?,
        None => run(&hub_bin, &["--data", &hub_data, "init"])?,
    };
    let ministry = run(
        &hub_bin,
        &[
            "--data", &hub_data, "token", "create", "--role", "ministry", "--label", "demo",
        ],
    )?;
    let plans = simulate::generate(&campaign, args.seed);
    let mut ports = free_ports(plans.len() + 1)?.into_iter();
    let hub_port = ports.next().context("no port for the hub")?;
    let hub_url = format!("http://127.0.0.1:{hub_port}");

    // source -> (data dir, url, intake token)
    let mut agents: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    for p in &plans {
        let data = dir.join("agents").join(p.unit.to_string());
        let data_s = data.to_string_lossy().to_string();
        let port = ports.next().context("no port for an agent")?;
        let listen = format!("127.0.0.1:{port}");
        let scope = p.unit.to_string();
        let key = run(
            &agent_bin,
            &[
                "--data",
                &data_s,
                "init",
                "--source",
                &p.source,
                "--scope",
                &scope,
                "--hub",
                &hub_url,
                "--listen",
                &listen,
                "--hub-key",
                &hub_key,
            ],
        )?;
        // Sync often: on this clock a real second is most of a campaign day.
        let cfg_path = data.join("agent.toml");
        let cfg = std::fs::read_to_string(&cfg_path)?;
        let cfg: String = cfg
            .lines()
            .map(|l| {
                if l.starts_with("notices_secs") {
                    "notices_secs = 0.5".to_string()
                } else if l.starts_with("interval_secs") {
                    "interval_secs = 0.5".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&cfg_path, cfg + "\n")?;
        run(
            &hub_bin,
            &[
                "--data", &hub_data, "agents", "add", "--source", &p.source, "--scope", &scope,
                "--key", &key, "--now", START,
            ],
        )?;
        let token = spacesync_agent::token::read(&data.join("intake.token"))
            .with_context(|| format!("reading the intake token of {}", p.source))?;
        agents.insert(
            p.source.clone(),
            (data_s, format!("http://{listen}"), token),
        );
    }

    let start_virtual = DateTime::parse_from_rfc3339(START)?.with_timezone(&Utc);
    let end = NaiveDate::from_ymd_opt(END.0, END.1, END.2).context("end date")?;
    let span = (end.and_time(NaiveTime::MIN)
        - NaiveDate::from_ymd_opt(2018, 10, 1)
            .context("start")?
            .and_time(NaiveTime::MIN))
    .num_seconds() as f64;
    let speed = span / args.seconds.max(10.0);
    let clock = Clock {
        start_real: Instant::now(),
        start_virtual,
        speed,
    };
    let stamp = |t: DateTime<Utc>| t.to_rfc3339();
    let mut procs = Procs(Vec::new());
    let hub_log = std::fs::File::create(dir.join("logs/hub.log"))?;
    let child = Command::new(&hub_bin)
        .args([
            "--data",
            &hub_data,
            "serve",
            "--listen",
            &format!("127.0.0.1:{hub_port}"),
        ])
        .args(["--now", &stamp(clock.now()), "--speed", &speed.to_string()])
        .stdout(Stdio::null())
        .stderr(hub_log)
        .spawn()
        .context("starting the hub")?;
    procs.0.push(("hub".into(), child));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    wait_healthy(&client, &format!("{hub_url}/healthz")).await?;
    for (source, (data, url, _)) in &agents {
        let log = std::fs::File::create(dir.join(format!("logs/{source}.log")))?;
        let child = Command::new(&agent_bin)
            .args([
                "--data",
                data,
                "run",
                "--now",
                &stamp(clock.now()),
                "--speed",
                &speed.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting agent {source}"))?;
        procs.0.push((source.clone(), child));
        let _ = url;
    }
    for (_, url, _) in agents.values() {
        wait_healthy(&client, &format!("{url}/healthz")).await?;
    }
    eprintln!(
        "Hub and {} agents running; the campaign runs from 2018-10-01 to {end} at {:.0}× real time.",
        agents.len(),
        speed
    );

    // Feed day by day, at 06:00 China time on the delivery day.
    let mut tally = Tally::default();
    let mut day = NaiveDate::from_ymd_opt(2018, 10, 2).context("day")?;
    while day <= end {
        let at = day
            .and_time(NaiveTime::from_hms_opt(6, 0, 0).context("time")?)
            .and_local_timezone(CHINA_STANDARD_TIME)
            .single()
            .context("local time")?
            .with_timezone(&Utc);
        tokio::time::sleep(clock.real_until(at)).await;
        let mut tasks = Vec::new();
        for p in &plans {
            let (_, url, token) = agents[&p.source].clone();
            let good: Vec<Value> = p.days.get(&day).cloned().unwrap_or_default();
            let bad: Vec<(Value, &'static str)> = p.bad.get(&day).cloned().unwrap_or_default();
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::default();
                if !good.is_empty() {
                    t.attempted += good.len() as u64;
                    let body = good
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n");
                    match post_records(&client, &url, &token, body).await {
                        Ok((200, _)) => t.accepted += good.len() as u64,
                        Ok((s, b)) => t.refused_unexpected.push(format!("{url} {day}: {s} {b}")),
                        Err(e) => t.refused_unexpected.push(format!("{url} {day}: {e}")),
                    }
                }
                for (v, why) in bad {
                    t.attempted += 1;
                    match post_records(&client, &url, &token, v.to_string()).await {
                        Ok((422, _)) => t.refused_expected += 1,
                        Ok((s, b)) => t.accepted_bad.push(format!("{why}: {s} {b}")),
                        Err(e) => t.refused_unexpected.push(format!("{why}: {e}")),
                    }
                }
                t
            }));
        }
        for task in tasks {
            let t = task.await?;
            tally.attempted += t.attempted;
            tally.accepted += t.accepted;
            tally.refused_expected += t.refused_expected;
            tally.refused_unexpected.extend(t.refused_unexpected);
            tally.accepted_bad.extend(t.accepted_bad);
        }
        day += ChronoDuration::days(1);
    }

    // Let every agent drain to the hub.
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let mut undelivered = u64::MAX;
    while Instant::now() < drain_deadline {
        undelivered = 0;
        for (_, url, token) in agents.values() {
            let s = get_json(&client, &format!("{url}/v1/status"), Some(token)).await?;
            undelivered += s["buffered"].as_u64().unwrap_or(0);
        }
        if undelivered == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every bulletin witnessed: the agents cosign each bulletin's checkpoint when the hub
    // asks (a few a sync), after a consistency proof to the checkpoint they verified.
    let quorum = campaign.witness_quorum as usize;
    let witnessed_deadline = Instant::now() + Duration::from_secs(120);
    let (mut witnessed, mut bulletins);
    loop {
        bulletins = get_json(&client, &format!("{hub_url}/v1/bulletins"), Some(&ministry)).await?;
        let list = bulletins["bulletins"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        witnessed = list
            .iter()
            .filter(|b| {
                b["witnessed"]["units"]
                    .as_array()
                    .is_some_and(|w| w.len() >= quorum)
            })
            .count();
        if witnessed == list.len() || Instant::now() >= witnessed_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let notices = get_json(&client, &format!("{hub_url}/v1/notices"), Some(&ministry)).await?;
    let progress = get_json(&client, &format!("{hub_url}/v1/progress"), Some(&ministry)).await?;
    let mut agent_notices = 0u64;
    // Each agent's log audit: an honest hub raises no alarm anywhere.
    let mut log_alarms: Vec<String> = Vec::new();
    for (unit, (_, url, token)) in &agents {
        let s = get_json(&client, &format!("{url}/v1/status"), Some(token)).await?;
        agent_notices += s["notices"]
            .as_u64()
            .or(s["unread_notices"].as_u64())
            .unwrap_or(0);
        if let Some(a) = s["log_alarm"].as_str() {
            log_alarms.push(format!("{unit}: {a}"));
        }
    }
    for (name, child) in &mut procs.0 {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait()?.is_none() {
            eprintln!("{name} did not stop on SIGTERM; killing it");
            let _ = child.kill();
        }
    }
    procs.0.clear();

    // Export every bulletin.
    let out_dir = dir.join("bulletins");
    std::fs::create_dir_all(&out_dir)?;
    let list = bulletins["bulletins"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for b in &list {
        let n = b["number"].as_u64().unwrap_or(0);
        for (fmt, lang) in [
            ("json", "zh"),
            ("html", "zh"),
            ("html", "en"),
            ("md", "zh"),
            ("csv", "zh"),
        ] {
            let text = run(
                &hub_bin,
                &[
                    "--data",
                    &hub_data,
                    "bulletin",
                    "show",
                    &n.to_string(),
                    "--format",
                    fmt,
                    "--lang",
                    lang,
                ],
            )?;
            let name = if lang == "en" {
                format!("{n:02}.en.{fmt}")
            } else {
                format!("{n:02}.{fmt}")
            };
            std::fs::write(out_dir.join(name), text)?;
        }
    }
    let verify = run(&hub_bin, &["--data", &hub_data, "verify"])?;
    let last = list.last().and_then(|b| b["number"].as_u64());
    let last_doc: Value = match last {
        Some(n) => serde_json::from_str(&std::fs::read_to_string(
            out_dir.join(format!("{n:02}.json")),
        )?)?,
        None => Value::Null,
    };
    let bulletin_check = match last {
        Some(n) => run(
            &hub_bin,
            &[
                "--data",
                &hub_data,
                "bulletin",
                "verify",
                &out_dir.join(format!("{n:02}.json")).to_string_lossy(),
            ],
        )?,
        None => "no bulletin was issued".into(),
    };

    // The final figures, for comparing runs (on sled and on PostgreSQL, say).
    let figures_file = dir.join("progress.json");
    std::fs::write(&figures_file, serde_json::to_string_pretty(&progress)?)?;

    print_summary(&last_doc, &progress);
    println!();
    println!(
        "records: attempted={} accepted={} refused_as_planned={} undelivered_at_end={}",
        tally.attempted, tally.accepted, tally.refused_expected, undelivered
    );
    println!(
        "bulletins issued: {}   notices raised: {}   notices held by agents: {}",
        list.len(),
        notices["notices"].as_array().map_or(0, Vec::len),
        agent_notices
    );
    println!("log: {verify}");
    println!("latest bulletin: {bulletin_check}");
    println!(
        "witnessed: {witnessed} of {} bulletins have their log checkpoint cosigned by the quorum ({quorum} of {} provincial units)",
        list.len(),
        campaign.units.len()
    );
    println!(
        "log audit: {} of {} agents raised a log alarm{}",
        log_alarms.len(),
        agents.len(),
        if log_alarms.is_empty() {
            String::new()
        } else {
            format!(": {}", log_alarms.join("; "))
        }
    );
    for e in tally
        .refused_unexpected
        .iter()
        .chain(&tally.accepted_bad)
        .take(10)
    {
        println!("UNEXPECTED: {e}");
    }
    println!();
    println!(
        "Bulletins (HTML, Markdown, JSON, CSV): {}",
        out_dir.display()
    );
    if let Some(n) = last {
        println!(
            "  latest: {}",
            out_dir.join(format!("{n:02}.html")).display()
        );
    }
    println!("Final figures (/v1/progress): {}", figures_file.display());
    println!("Logs: {}", dir.join("logs").display());
    println!("Dashboard: run");
    println!(
        "  {} --data {} serve --listen 127.0.0.1:7400 --now {}T12:00:00+08:00",
        hub_bin.display(),
        hub_data,
        end
    );
    println!("  then open http://127.0.0.1:7400/ and log in with the ministry token:");
    println!("  {ministry}");
    println!("Finished in {:.0} s.", began.elapsed().as_secs_f64());
    if !tally.refused_unexpected.is_empty() || !tally.accepted_bad.is_empty() || undelivered != 0 {
        bail!("the run did not go as planned (see UNEXPECTED lines above)");
    }
    if !log_alarms.is_empty() {
        bail!(
            "{} agent(s) raised a log alarm against an honest hub (see the log audit line above)",
            log_alarms.len()
        );
    }
    if witnessed != list.len() {
        bail!(
            "{} of {} bulletins were not witnessed by the quorum within 120 s (see the agents' logs)",
            list.len() - witnessed,
            list.len()
        );
    }
    Ok(())
}

fn print_summary(bulletin: &Value, progress: &Value) {
    println!();
    println!(
        "{:<4} {:<8} {:<18} {:>12} {:>8}  {:<10} {:<10} {:<10}",
        "rank", "code", "unit", "new spaces", "pace", "contact", "plan", "recommend"
    );
    for p in bulletin["provinces"].as_array().into_iter().flatten() {
        let st = |id: &str| {
            let c = &p["milestones"][id];
            match (c["status"].as_str(), c["days_late"].as_i64()) {
                (Some(s), Some(d)) => format!("{s}+{d}d"),
                (Some(s), None) => s.to_string(),
                _ => "-".into(),
            }
        };
        println!(
            "{:<4} {:<8} {:<18} {:>12} {:>7.1}%  {:<10} {:<10} {:<10}",
            p["rank"].as_u64().unwrap_or(0),
            p["code"].as_str().unwrap_or(""),
            p["name_en"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(18)
                .collect::<String>(),
            p["new_spaces"].as_i64().unwrap_or(0),
            p["pace"]["ratio"].as_f64().unwrap_or(0.0) * 100.0,
            st("contact_form"),
            st("implementation_plan"),
            st("recommendations"),
        );
    }
    let n = &progress["nation"];
    println!(
        "nation: new spaces {} of target {} · teacher coverage {:.1}% · student coverage {:.1}% · lagging units {}",
        n["new_spaces"],
        progress["target"]["new_spaces"],
        n["coverage"]["teachers"].as_f64().unwrap_or(0.0) * 100.0,
        n["coverage"]["students"].as_f64().unwrap_or(0.0) * 100.0,
        bulletin["lagging"].as_array().map_or(0, Vec::len)
    );
}
