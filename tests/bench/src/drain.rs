//! `drain`: real agents that buffered their entries while the hub was down, then the hub
//! starts. Measures the time from the hub's spawn until every agent says it has delivered
//! everything (`acked_seq` = `head_seq` in its `/v1/status`), and checks that the hub
//! holds every entry (`/v1/sources`). Then, with everything stopped, the same run's limits
//! over entries of the same workload: batch verification under the signature rule on all
//! cores (`verify_floor_s`, the time the hub needs for the signatures alone) and a durable
//! batched append packed as the hub's log (16 entries a value), each with its CPU per
//! entry; `floor_s` is both on every core, nothing else — the least any hub that checks
//! and keeps these entries can take here.
//!
//! The agents run with their default configuration: batches of 1,000, and the retry policy
//! of a hub that has been unreachable for minutes (full jitter up to the 60 s cap), so the
//! first push after the hub returns waits as it would in production.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use spacesync_shared::{Campaign, Digest};

use crate::agents::{AgentInstance, ndjson_bodies};
use crate::hub::HubInstance;
use crate::procs::{self, Binary, Bins};
use crate::report::Report;
use crate::{limits, workload};

/// Entries per sampled source for the verification limit (eight sources).
const LIMIT_SAMPLE_PER_SOURCE: u64 = 4_000;
/// Entries in one value of the hub's log (`spacesync_hub::log::pack::PACK_LEAVES`).
const PACK_LEAVES: usize = spacesync_hub::log::pack::PACK_LEAVES as usize;
/// Entries per push of an agent with its default configuration: the batches the hub verifies.
fn agent_batch() -> usize {
    spacesync_agent::config::PushConfig::default().max_entries
}

/// `drain` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Agents (one per provincial unit, cycling when more than 32).
    #[arg(long, default_value_t = 32)]
    pub agents: usize,
    /// Entries each agent buffers before the hub starts.
    #[arg(long, default_value_t = 100_000)]
    pub entries: u64,
    /// Records per intake batch while buffering.
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
    /// How often each agent's status is read while draining, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub poll_ms: u64,
    /// The verification limit repeats its pass for at least this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub min_limit_s: f64,
    /// After the drain, leave the agents idle this long, read their memory, restart them
    /// (everything delivered) and read it again after as long; 0: neither.
    #[arg(long, default_value_t = 0.0)]
    pub settle_s: f64,
    #[command(flatten)]
    pub bins: Bins,
}

/// One source of the hub's `/v1/sources`.
#[derive(Deserialize)]
struct HubSource {
    source: String,
    head_seq: u64,
}

#[derive(Deserialize)]
struct HubSources {
    sources: Vec<HubSource>,
}

/// Runs `drain`; its report.
pub async fn run(a: &DrainArgs) -> Result<Report> {
    if a.agents == 0 || a.entries == 0 || a.batch == 0 {
        bail!("--agents, --entries and --batch must be at least 1");
    }
    let hub_bin = procs::locate(Binary::Hub, a.bins.hub_bin.as_deref())?;
    let agent_bin = procs::locate(Binary::Agent, a.bins.agent_bin.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("spacesync-bench-drain-")
        .tempdir()
        .context("creating a work directory")?;

    // The hub is initialised (its port chosen) but not started: the agents find it down.
    let mut hub = HubInstance::init(&hub_bin, work.path(), None)?;
    let units = Campaign::builtin_2018().units;
    let mut agents = Vec::with_capacity(a.agents);
    for i in 0..a.agents {
        let unit = units[i % units.len()];
        let id = if a.agents <= units.len() {
            format!("drain-{unit}")
        } else {
            format!("drain-{unit}-{}", i / units.len())
        };
        let dir = work.path().join(format!("agent-{id}"));
        let agent = AgentInstance::init(&agent_bin, &dir, &id, &unit.to_string(), &hub.url())?;
        hub.add_source(&id, &unit.to_string(), &agent.pubkey()?)?;
        agents.push((id, unit, agent));
    }
    let token = hub.create_token("ministry")?;
    let admin = hub.create_token("admin")?;
    for (_, _, agent) in &mut agents {
        agent.start().await?;
    }
    println!(
        "{} agents running, hub down at {}; buffering {} entries each",
        a.agents,
        hub.url(),
        a.entries
    );

    // Buffering: every agent takes its entries through its intake at once.
    let t = Instant::now();
    let agents: Vec<Arc<(String, AgentInstance)>> = agents
        .into_iter()
        .map(|(id, unit, agent)| Arc::new((format!("{id}@{unit}"), agent)))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for ag in &agents {
        let (ag, entries, batch) = (ag.clone(), a.entries, a.batch);
        tasks.spawn(async move {
            let (label, agent) = (&ag.0, &ag.1);
            let (id, unit) = label.split_once('@').unwrap_or((label, ""));
            let unit = spacesync_shared::region::RegionCode::parse(unit)
                .map_err(|e| anyhow!("{label}: {e}"))?;
            let plan = workload::unit_plan(unit, id, entries)?;
            for (body, n) in ndjson_bodies(&plan, 0, entries, batch)? {
                agent
                    .post_ndjson(body, n)
                    .await
                    .with_context(|| format!("{id}: intake"))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| anyhow!("a buffering task failed: {e}"))??;
    }
    let fill_s = t.elapsed().as_secs_f64();
    // The buffering tasks have ended: each agent has one owner again.
    let mut agents: Vec<(String, AgentInstance)> = agents
        .into_iter()
        .map(|ag| Arc::try_unwrap(ag).map_err(|_| anyhow!("an agent is still shared")))
        .collect::<Result<_>>()?;
    let total = a.entries * a.agents as u64;
    let mut agent_rss = Vec::new();
    // What the agents sent and retried while the hub was down (their pushes were refused
    // the connection), taken off the drain's counts below.
    let (mut pushes_down, mut retries_down) = (0u64, 0u64);
    for ag in &agents {
        let st = ag.1.status().await?;
        pushes_down += st.pushes;
        retries_down += st.retries;
        if st.head_seq != a.entries || st.buffered != a.entries {
            bail!(
                "{}: head {} and {} buffered after taking {} entries",
                ag.0,
                st.head_seq,
                st.buffered,
                a.entries
            );
        }
        if let Some(pid) = ag.1.pid() {
            agent_rss.push(procs::rss_mb(pid)?);
        }
    }
    let rss_max = agent_rss.iter().copied().fold(0.0, f64::max);
    println!(
        "buffered {total} entries in {fill_s:.1} s ({:.0}/s over all agents); agents resident up to {rss_max:.0} MiB",
        total as f64 / fill_s
    );

    // The agents' CPU so far (their intake), to take off what they spend delivering.
    let agents_cpu_before = agents_cpu_seconds(&agents)?;

    // The hub returns: spawn to every agent delivered.
    let t0 = Instant::now();
    let port = hub.port;
    let ready_s = hub.start().await?.as_secs_f64();
    if hub.port != port {
        bail!("the hub's port {port} was taken when it started; the agents push to it (run again)");
    }
    let pid = hub.pid().context("the hub has no process id")?;
    let mut first = vec![None::<f64>; agents.len()];
    let mut done = vec![None::<f64>; agents.len()];
    // Each agent's requests and retried failures, as its status gave them when it was
    // done, less those of before the hub's start.
    let (mut pushes, mut retries) = (0u64, 0u64);
    let poll = Duration::from_millis(a.poll_ms.max(1));
    let deadline = Duration::from_secs(3600);
    while done.iter().any(Option::is_none) {
        if t0.elapsed() > deadline {
            bail!("the agents had not delivered everything after {deadline:?}");
        }
        for (i, ag) in agents.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let st = ag.1.status().await?;
            let now = t0.elapsed().as_secs_f64();
            if st.acked_seq > 0 && first[i].is_none() {
                first[i] = Some(now);
            }
            if st.acked_seq == st.head_seq && st.buffered == 0 {
                done[i] = Some(now);
                pushes += st.pushes;
                retries += st.retries;
            }
        }
        tokio::time::sleep(poll).await;
    }
    let drain_s = done.iter().flatten().copied().fold(0.0, f64::max);
    let pushes = pushes.saturating_sub(pushes_down);
    let retries = retries.saturating_sub(retries_down);
    let hub_cpu_s = procs::cpu_seconds(Some(pid))?;
    let agents_cpu_s = agents_cpu_seconds(&agents)? - agents_cpu_before;
    let first_min = first
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let first_max = first.iter().flatten().copied().fold(0.0, f64::max);

    // The hub's own count.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/sources", hub.url()))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .context("GET /v1/sources")?;
    let status = resp.status();
    let body = resp.bytes().await.context("reading /v1/sources")?;
    if !status.is_success() {
        bail!(
            "/v1/sources answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let held: HubSources = serde_json::from_slice(&body).context("/v1/sources does not parse")?;
    let hub_total: u64 = held.sources.iter().map(|s| s.head_seq).sum();
    if let Some(s) = held.sources.iter().find(|s| s.head_seq != a.entries) {
        bail!(
            "the hub holds {} through seq {}, not {}",
            s.source,
            s.head_seq,
            a.entries
        );
    }
    if hub_total != total || held.sources.len() != a.agents {
        bail!(
            "the hub holds {hub_total} entries from {} sources, not {total} from {}",
            held.sources.len(),
            a.agents
        );
    }
    let rss_hub = procs::rss_mb(pid)?;
    println!(
        "drained {total} entries in {drain_s:.1} s from the hub's spawn ({:.0}/s; hub ready after {ready_s:.2} s, \
         first receipts after {first_min:.1}–{first_max:.1} s, hub CPU {hub_cpu_s:.1} s = {:.2} cores, \
         resident {rss_hub:.0} MiB; the agents' CPU {agents_cpu_s:.1} s = {:.2} cores; from the hub's start {pushes} requests, {retries} failures retried; before it {retries_down}); the hub holds all {hub_total}",
        total as f64 / drain_s,
        hub_cpu_s / drain_s,
        agents_cpu_s / drain_s
    );
    // Delivered agents at rest: idle, then after a restart (receipts all stored).
    let (mut rss_delivered, mut rss_restart) = (f64::NAN, f64::NAN);
    if a.settle_s > 0.0 {
        let settle = Duration::from_secs_f64(a.settle_s);
        tokio::time::sleep(settle).await;
        rss_delivered = 0.0;
        for ag in &agents {
            if let Some(pid) = ag.1.pid() {
                rss_delivered = rss_delivered.max(procs::rss_mb(pid)?);
            }
        }
        for ag in &mut agents {
            ag.1.stop()?;
            ag.1.start().await?;
        }
        tokio::time::sleep(settle).await;
        rss_restart = 0.0;
        for ag in &agents {
            if let Some(pid) = ag.1.pid() {
                rss_restart = rss_restart.max(procs::rss_mb(pid)?);
            }
        }
        println!(
            "delivered agents resident up to {rss_delivered:.1} MiB after {:.0} s idle, {rss_restart:.1} MiB after a restart and as long",
            a.settle_s
        );
    }
    for ag in &mut agents {
        ag.1.stop()?;
    }
    // A hub older than the torsion test shared between batches has no such figure.
    let sharing = hub.torsion_batches_per_test(&admin).await.ok();
    if let Some(k) = sharing {
        println!("the hub's torsion tests covered {k:.2} batches each");
    }
    hub.stop()?;

    // The same run's limit, nothing else running: the entries the first units' agents
    // hold (the same generator), signed here, verified as the hub receives them.
    let batch = agent_batch();
    let mut sample = Vec::new();
    for unit in units.iter().take(a.agents.min(8)) {
        let id = format!("drain-{unit}");
        let plan = workload::unit_plan(*unit, &id, a.entries)?;
        let envs = plan.sign(0, a.entries.min(LIMIT_SAMPLE_PER_SOURCE), Digest::ZERO)?;
        let key = workload::key_for(&id).verifying_key();
        for chunk in envs.chunks(batch) {
            sample.push((key, chunk.to_vec()));
        }
    }
    let limit = limits::verify_limit(&sample, a.min_limit_s)?;
    let verify_floor_s = total as f64 / limit.per_s;
    // And the durable append of the same entries, packed as the hub packs its log (16
    // entries a value, uncompressed: the hub's LZ4 is extra), one flush per agent batch,
    // with its CPU.
    let entries: Vec<Vec<u8>> = sample
        .iter()
        .flat_map(|(_, envs)| envs.iter())
        .map(|e| serde_json::to_vec(e).context("encoding an entry"))
        .collect::<Result<_>>()?;
    let packs: Vec<Vec<u8>> = entries.chunks(PACK_LEAVES).map(|c| c.concat()).collect();
    let per_pack = entries.len() as f64 / packs.len().max(1) as f64;
    let (packs_per_s, pack_cpu) = limits::append_limit(&packs, batch / PACK_LEAVES, a.min_limit_s)?;
    let (append_per_s, append_cpu) = (packs_per_s * per_pack, pack_cpu / per_pack);
    // Both on every core, nothing else: the least the hub's work can take.
    let cores = limits::cores() as f64;
    let floor_s = total as f64 * (limit.cpu_per_sig + append_cpu) / cores;
    println!(
        "limits: batch verification under the signature rule {:.0}/s on {cores} cores ({:.1} µs CPU a signature): \
         the signatures alone take {verify_floor_s:.1} s ({:.2} of the drain); a durable batched append {append_per_s:.0}/s \
         ({:.1} µs CPU an entry); both on every core {floor_s:.1} s ({:.2} of the drain)",
        limit.per_s,
        limit.cpu_per_sig * 1e6,
        verify_floor_s / drain_s,
        append_cpu * 1e6,
        floor_s / drain_s
    );

    let busy = drain_s - first_min;
    let mut r = Report::new("drain");
    r.int("agents", a.agents as f64)
        .int("entries", total as f64)
        .dec("drain_s", drain_s)
        .int("entries_per_s", total as f64 / drain_s)
        .dec("hub_ready_s", ready_s)
        .dec("first_receipt_min_s", first_min)
        .dec("first_receipt_max_s", first_max)
        .int("entries_per_s_after_first", total as f64 / busy.max(1e-9))
        .int("verify_limit_per_s", limit.per_s)
        .opt_dec("torsion_batches_per_test", sharing)
        .dec("verify_floor_s", verify_floor_s)
        .dec("ratio", verify_floor_s / drain_s)
        .int("append_limit_per_s", append_per_s)
        .dec("append_cpu_s_per_entry", append_cpu)
        .dec("floor_s", floor_s)
        .dec("floor_ratio", floor_s / drain_s)
        .dec("hub_cpu_s_per_entry", hub_cpu_s / total as f64)
        .dec(
            "hub_cpu_vs_limit",
            hub_cpu_s / total as f64 / limit.cpu_per_sig,
        )
        .dec("hub_cores_busy", hub_cpu_s / drain_s)
        .dec("agents_cpu_s_per_entry", agents_cpu_s / total as f64)
        .dec("agents_cores_busy", agents_cpu_s / drain_s)
        .dec("hub_rss_mb", rss_hub)
        .dec("fill_s", fill_s)
        .int("fill_per_s", total as f64 / fill_s)
        .dec("agent_rss_max_mb", rss_max)
        .dec("agent_rss_delivered_mb", rss_delivered)
        .dec("agent_rss_delivered_restart_mb", rss_restart)
        .int("entries_per_agent", a.entries as f64)
        .int("agent_pushes", pushes as f64)
        .int("agent_retries", retries as f64)
        .int("agent_retries_hub_down", retries_down as f64);
    Ok(r)
}

/// The CPU seconds the agents' processes have used, summed.
fn agents_cpu_seconds(agents: &[(String, AgentInstance)]) -> Result<f64> {
    let mut sum = 0.0;
    for (id, agent) in agents {
        let pid = agent
            .pid()
            .with_context(|| format!("agent {id} has no process id"))?;
        sum += procs::cpu_seconds(Some(pid)).with_context(|| format!("agent {id}"))?;
    }
    Ok(sum)
}
