//! Hub replicas as real processes on one PostgreSQL database (issue 13): copies of one
//! data directory run with `serve --listen`, each its own process.
//!
//! - **Admin while serving:** three replicas serve; `token create`, `agents add`, `extend`,
//!   `bulletin issue`, `agents rotate|revoke`, `verify` and `token revoke` run with `--data`
//!   on a further copy and succeed, and
//!   every replica sees the result on its next request; a revoked token is refused by
//!   every replica.
//! - **Faults:** three replicas behind the fault proxy (round-robin, with its chaos plan),
//!   four real agents fed by writers, replicas SIGKILLed at random and restarted, the
//!   PostgreSQL server itself SIGKILLed (postmaster and backends) and restarted twice.
//!   Then the faults stop, the agents drain, and the checker reads the log from the
//!   database: `lost`, `unexpected`, duplicates and holes must be empty, the stored views
//!   must equal a rebuild and an independent recomputation, `spacesync-hub verify` must
//!   pass, and each bulletin slot must hold exactly one bulletin. It ends with the
//!   checker's line. `SPACESYNC_SEED` fixes the seed; `SPACESYNC_REPLICA_SECS` (default 16)
//!   sets how long the faults last.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use spacesync_hub::bulletin;
use spacesync_hub::maintenance;
use spacesync_hub::store::pg::PgStore;
use spacesync_hub::views::Views;
use spacesync_shared::Campaign;
use spacesync_shared::keys::public_key_line;
use spacesync_tests::checker::{
    self, History, SharedHistory, compare_rollups, compare_views, expected_views,
};
use spacesync_tests::cluster::{
    AgentNode, HubNode, NOW, SITES, Workload, WriterStats, hub_bin, write_loop,
};
use spacesync_tests::fault_proxy::{FaultPlan, FaultProxy};
use spacesync_tests::procs;

/// Writes a line to stderr past the test harness's capture.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// `GET url` with a bearer token: status and JSON body.
async fn get(http: &reqwest::Client, url: &str, token: &str) -> (u16, Value) {
    let r = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn base(h: &HubNode) -> String {
    format!("http://{}", h.addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_work_while_three_replicas_serve() {
    let url = spacesync_pgtest::database();
    let mut hubs = HubNode::init_replicas(3, &url);
    for h in &mut hubs {
        h.start().await;
    }
    let copy = hubs[0].copy();
    let cli = |args: &[&str], what: &str| procs::run_ok(hub_bin(), copy.path(), args, what);
    let http = reqwest::Client::new();

    let token = cli(&["token", "create", "--role", "admin"], "token create");
    let key = public_key_line(&SigningKey::from_bytes(&[0x33; 32]).verifying_key());
    cli(
        &[
            "agents", "add", "--source", "gd-new", "--scope", "440000", "--key", &key, "--now", NOW,
        ],
        "agents add",
    );
    cli(
        &[
            "extend",
            "--region",
            "440000",
            "--milestone",
            "implementation_plan",
            "--until",
            "2018-12-01",
            "--reason",
            "flood",
            "--now",
            NOW,
        ],
        "extend",
    );
    let number: u64 = cli(&["bulletin", "issue", "--now", NOW], "bulletin issue")
        .parse()
        .unwrap_or_else(|e| panic!("bulletin issue printed no number: {e}"));

    // Every replica, on its next request: the token works, the source is registered, the
    // bulletin is listed, and all serve one checkpoint (which counts the extension).
    let mut checkpoints = Vec::new();
    for (i, h) in hubs.iter().enumerate() {
        let (status, sources) = get(&http, &format!("{}/v1/sources", base(h)), &token).await;
        assert_eq!(status, 200, "replica {i}: {sources}");
        assert!(
            sources.to_string().contains("gd-new"),
            "replica {i} does not know the new source: {sources}"
        );
        let (status, list) = get(&http, &format!("{}/v1/bulletins", base(h)), &token).await;
        assert_eq!(status, 200, "replica {i}: {list}");
        let numbers: Vec<u64> = list["bulletins"]
            .as_array()
            .map(|a| a.iter().filter_map(|b| b["number"].as_u64()).collect())
            .unwrap_or_default();
        assert!(numbers.contains(&number), "replica {i}: {list}");
        let cp = http
            .get(format!("{}/v1/checkpoint", base(h)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
            .await
            .unwrap_or_default();
        checkpoints.push(cp);
    }
    assert!(
        checkpoints.windows(2).all(|w| w[0] == w[1]),
        "{checkpoints:?}"
    );
    let store = PgStore::open(&url).unwrap_or_else(|e| panic!("{e}"));
    let size = spacesync_hub::log::iter(&store).count() as u64;
    assert!(
        checkpoints[0].contains(&format!("\n{size}\n")),
        "the replicas' checkpoint is not of the whole log ({size} leaves): {}",
        checkpoints[0]
    );
    let extensions = spacesync_hub::log::iter(&store)
        .filter_map(Result::ok)
        .filter(|(_, r)| {
            r.source.is_none() && String::from_utf8_lossy(&r.envelope.payload).contains("flood")
        })
        .count();
    assert_eq!(extensions, 1);

    // A key rotation and a revocation, each seen by every replica on its next request.
    let rotated = public_key_line(&SigningKey::from_bytes(&[0x34; 32]).verifying_key());
    cli(
        &[
            "agents", "rotate", "gd-new", "--key", &rotated, "--now", NOW,
        ],
        "agents rotate",
    );
    cli(
        &["agents", "revoke", "gd-new", "--now", NOW],
        "agents revoke",
    );
    for (i, h) in hubs.iter().enumerate() {
        let (status, sources) = get(&http, &format!("{}/v1/sources", base(h)), &token).await;
        assert_eq!(status, 200, "replica {i}: {sources}");
        let new = sources["sources"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["source"] == "gd-new"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(new["status"], "revoked", "replica {i}: {new}");
        assert_eq!(new["key"], rotated.as_str(), "replica {i}: {new}");
    }

    // verify on a copy while the replicas serve.
    cli(&["verify"], "verify");

    // A revoked token is refused by every replica.
    cli(&["token", "revoke", &token], "token revoke");
    for (i, h) in hubs.iter().enumerate() {
        let (status, body) = get(&http, &format!("{}/v1/sources", base(h)), &token).await;
        assert_eq!(
            status, 401,
            "replica {i} still takes the revoked token: {body}"
        );
    }
    for h in &mut hubs {
        h.stop();
    }
}

/// Replicas behind the round-robin fault proxy, killed at random; the database killed and
/// restarted twice; nothing acknowledged is lost, nothing duplicated, one bulletin a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_kills_and_database_restarts() {
    const AGENTS: usize = 4;
    const STALL_MS: u64 = 2_500;
    let seed = env_u64("SPACESYNC_SEED").unwrap_or_else(rand::random);
    let secs = env_u64("SPACESYNC_REPLICA_SECS").unwrap_or(16);
    say(&format!(
        "replica faults: seed {seed} (rerun with SPACESYNC_SEED={seed}); 3 replicas, {AGENTS} agents, {secs} s of faults"
    ));
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pg = spacesync_pgtest::PgServer::start(&spacesync_pgtest::binaries())
        .unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
    let url = pg.url("postgres");
    let mut hubs = HubNode::init_replicas(3, &url);
    let proxy = FaultProxy::round_robin(
        hubs.iter().map(HubNode::addr).collect(),
        FaultPlan::chaos(0.2, STALL_MS),
        seed,
    )
    .await;
    let mut agents: Vec<AgentNode> = SITES[..AGENTS]
        .iter()
        .map(|site| {
            let a = AgentNode::init(*site, &proxy.url(), &hubs[0].key_line, |cfg| {
                cfg.push.timeout_secs = 2.0;
            });
            hubs[0].register(site, &a.key_line);
            a
        })
        .collect();
    for h in &mut hubs {
        h.start().await;
    }
    for a in &mut agents {
        a.start().await;
    }

    let history: SharedHistory = Arc::default();
    let stats = Arc::new(WriterStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hub_down = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            tokio::spawn(write_loop(
                a.api(),
                Workload::new(a.site),
                history.clone(),
                stats.clone(),
                stop.clone(),
                hub_down.clone(),
                seed.wrapping_add(1 + i as u64),
            ))
        })
        .collect();

    // The faults: replicas and agents killed at random; the database killed and
    // restarted at a third and two thirds of the time.
    let faulting = Duration::from_secs(secs);
    let t0 = Instant::now();
    let (mut replica_kills, mut agent_kills, mut db_kills) = (0u64, 0u64, 0u64);
    while t0.elapsed() < faulting {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
        if db_kills < 2 && t0.elapsed() > faulting * (db_kills as u32 + 1) / 3 {
            pg.kill().unwrap_or_else(|e| panic!("kill PostgreSQL: {e}"));
            db_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
            pg.restart()
                .unwrap_or_else(|e| panic!("restart PostgreSQL: {e}"));
            continue;
        }
        if rng.random_bool(0.75) {
            let i = rng.random_range(0..hubs.len());
            if hubs[i].kill() {
                replica_kills += 1;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
            hubs[i].start().await;
        } else {
            let i = rng.random_range(0..agents.len());
            if agents[i].kill() {
                agent_kills += 1;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..80))).await;
            agents[i].start().await;
        }
    }

    // Quiesce and drain.
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap_or_else(|e| panic!("writer: {e}"));
    }
    proxy.set_plan(FaultPlan::NONE);
    for h in &mut hubs {
        if !h.running() {
            h.start().await;
        }
    }
    for a in &mut agents {
        if !a.running() {
            a.start().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut pending = Vec::new();
        for a in &agents {
            let s = a.status().await.unwrap_or(Value::Null);
            if !(s["head_seq"].is_u64() && s["acked_seq"] == s["head_seq"] && s["alarm"].is_null())
            {
                pending.push(format!(
                    "{}: head {} acked {} alarm {} last error {}",
                    a.site.source, s["head_seq"], s["acked_seq"], s["alarm"], s["last_error"]
                ));
            }
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agents did not drain:\n{}\nreplica 0 log:\n{}",
            pending.join("\n"),
            hubs[0].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let faults = proxy.counts();
    for a in &mut agents {
        a.stop();
    }
    for h in &mut hubs {
        h.stop();
    }

    let out = hubs[1].cli(&["verify"]);
    let hub_verify = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "spacesync-hub verify failed:\n{hub_verify}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: History = history.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let store = PgStore::open(&url).unwrap_or_else(|e| panic!("{e}"));
    let leaves = checker::read_hub_log(&store).unwrap_or_else(|e| panic!("{e}"));
    let report = checker::check(&history, &leaves);
    let campaign = Campaign::builtin_2018();
    let loaded = Views::load(&store, campaign.baseline).unwrap_or_else(|e| panic!("{e}"));
    let rebuilt = maintenance::rebuild_views(&store, campaign.baseline, |_| {})
        .unwrap_or_else(|e| panic!("{e}"))
        .views;
    let mut view_diffs = compare_rollups(&loaded.rollup(&campaign), &rebuilt.rollup(&campaign));
    view_diffs.extend(compare_views(
        &expected_views(&history, &report, &campaign),
        &loaded,
        &campaign,
    ));
    let bulletins = bulletin::list(&store).unwrap_or_else(|e| panic!("{e}"));
    let mut slots: Vec<_> = bulletins.iter().filter_map(|b| b.scheduled_for).collect();
    let scheduled = slots.len();
    slots.sort();
    slots.dedup();

    say(&format!(
        "kills: {replica_kills} replica SIGKILLs ({} replica starts), {agent_kills} agent SIGKILLs, {db_kills} database SIGKILLs and restarts",
        hubs.iter().map(|h| h.starts).sum::<u64>()
    ));
    say(&format!("proxy: {faults}"));
    say(&format!(
        "writers: batches answered 200 {}, agent down {}, fate unknown {}",
        stats.ok.load(Ordering::Relaxed),
        stats.not_sent.load(Ordering::Relaxed),
        stats.unknown.load(Ordering::Relaxed),
    ));
    say(&format!("hub verify: {hub_verify}"));
    say(&format!(
        "bulletins: {} ({scheduled} scheduled, {} slots)",
        bulletins.len(),
        slots.len()
    ));
    say(&format!(
        "log leaves: {}; {}",
        leaves.len(),
        report.details().trim_end()
    ));
    say(&format!(
        "time: {:.1} s in all",
        started.elapsed().as_secs_f64()
    ));
    say(&report.line(seed, replica_kills + agent_kills + db_kills, faults.total()));

    assert!(
        report.valid(),
        "the checker found faults:\n{}",
        report.details()
    );
    assert!(view_diffs.is_empty(), "views differ: {view_diffs:#?}");
    assert_eq!(scheduled, slots.len(), "a slot has two bulletins");
    assert!(scheduled >= 1, "the scheduler issued no bulletin");
    assert_eq!(db_kills, 2);
    assert!(replica_kills >= 5, "too few replica kills: {replica_kills}");
    assert!(
        report.acknowledged > 200,
        "too few writes acknowledged to mean anything"
    );
}
