//! Damaged stores, as vector tests its disk buffer: a real agent and a real hub fill their
//! sled stores and stop cleanly; then copies of their data directories are damaged —
//! files truncated at seeded offsets, bytes overwritten — and for each copy:
//!
//! 1. `spacesync-agent verify` / `spacesync-hub verify` must report the damage (exit
//!    non-zero naming what is wrong, or a clear error that the store will not open), or
//!    find the store sound with every entry of the undamaged original;
//! 2. the process (`run` / `serve`) must either refuse to start with a message, or start
//!    and then still hold every entry verify counted — and when verify called the store
//!    sound, every entry of the original: nothing may go missing silently.
//!
//! Each case's outcome is printed as a table (`--nocapture`, or on failure).
//! `SPACESYNC_SEED` changes the offsets.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spacesync_tests::agent_harness::{agent_bin, free_port};
use spacesync_tests::checker::SharedHistory;
use spacesync_tests::cluster::{Cluster, NOW, Workload, hub_bin};
use spacesync_tests::fault_proxy::FaultPlan;

/// Records each agent takes.
const RECORDS: usize = 1_200;
/// Of those, how many wait unreceipted (posted while the hub is stopped).
const UNSENT: usize = 100;

/// Copies a directory tree (file modes included: the key files must stay 0600).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let e = e.unwrap_or_else(|e| panic!("{e}"));
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        }
    }
}

/// The files of a sled directory, largest first, with their sizes.
fn sled_files(db: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![db.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata() {
                out.push((p, m.len()));
            }
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// One way to damage a file.
#[derive(Debug, Clone)]
enum Damage {
    /// Cut the file at this length.
    Truncate(u64),
    /// Overwrite `len` bytes at `at` with a seeded pattern (each byte flipped).
    Overwrite { at: u64, len: usize },
}

impl Damage {
    fn apply(&self, file: &Path) {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        match self {
            Damage::Truncate(n) => f.set_len(*n).unwrap_or_else(|e| panic!("{e}")),
            Damage::Overwrite { at, len } => {
                let mut buf = vec![0u8; *len];
                f.seek(SeekFrom::Start(*at))
                    .unwrap_or_else(|e| panic!("{e}"));
                let n = f.read(&mut buf).unwrap_or_else(|e| panic!("{e}"));
                for b in &mut buf[..n] {
                    *b = !*b;
                }
                f.seek(SeekFrom::Start(*at))
                    .unwrap_or_else(|e| panic!("{e}"));
                f.write_all(&buf[..n]).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        f.sync_all().unwrap_or_else(|e| panic!("{e}"));
    }

    fn describe(&self) -> String {
        match self {
            Damage::Truncate(n) => format!("truncated to {n} B"),
            Damage::Overwrite { at, len } => format!("{len} B flipped at {at}"),
        }
    }
}

/// Which process a data directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Agent,
    Hub,
}

impl Side {
    fn bin(self) -> &'static Path {
        match self {
            Side::Agent => agent_bin(),
            Side::Hub => hub_bin(),
        }
    }
}

/// What `verify` said.
#[derive(Debug)]
struct Verdict {
    /// Exit success.
    ok: bool,
    /// Entries (agent) or leaves (hub) it counted as sound, when it says.
    intact: Option<u64>,
    /// Its first lines of findings.
    said: String,
}

fn first_lines(s: &str, n: usize) -> String {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect::<Vec<_>>()
        .join(" | ")
}

fn verify(side: Side, dir: &Path) -> Verdict {
    let out = Command::new(side.bin())
        .arg("--data")
        .arg(dir)
        .args(match side {
            Side::Agent => &["verify", "--json"][..],
            Side::Hub => &["verify"][..],
        })
        .output()
        .unwrap_or_else(|e| panic!("verify: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let (intact, said) = match side {
        Side::Agent => match serde_json::from_str::<serde_json::Value>(&stdout) {
            Ok(v) => {
                let problems: Vec<String> = v["problems"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect();
                let entries = v["entries"].as_u64().unwrap_or(0);
                (
                    Some(entries.saturating_sub(problems.len() as u64)),
                    if problems.is_empty() {
                        format!("sound: {entries} entries")
                    } else {
                        first_lines(&problems.join("\n"), 2)
                    },
                )
            }
            Err(_) => (None, first_lines(&stderr, 2)),
        },
        Side::Hub => {
            let leaves = stdout
                .strip_prefix("ok: ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok());
            (leaves, first_lines(&format!("{stdout}\n{stderr}"), 2))
        }
    };
    Verdict {
        ok: out.status.success(),
        intact,
        said,
    }
}

/// Entries an agent store holds / leaves a hub log holds, read directly; `None` when the
/// store does not open or a value does not decode.
fn count(side: Side, dir: &Path) -> Result<u64, String> {
    // sled may panic on a damaged file instead of returning an error.
    std::panic::catch_unwind(|| count_inner(side, dir))
        .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&p))))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn count_inner(side: Side, dir: &Path) -> Result<u64, String> {
    match side {
        Side::Agent => {
            let store =
                spacesync_agent::store::Store::open(&dir.join("db")).map_err(|e| e.to_string())?;
            let mut n = 0;
            for r in store.raw_entries() {
                let (seq, b) = r.map_err(|e| e.to_string())?;
                spacesync_agent::store::parse_envelope(seq, &b).map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok(n)
        }
        Side::Hub => {
            let store = spacesync_hub::store::SledStore::open(&dir.join("db"))
                .map_err(|e| e.to_string())?;
            let mut n = 0;
            for r in spacesync_hub::log::iter(&store) {
                r.map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok(n)
        }
    }
}

/// What starting the process on the store came to.
#[derive(Debug)]
enum Start {
    /// It exited at start with this message.
    Refused(String),
    /// It answered `/healthz`, then stopped on SIGTERM.
    Ran,
}

async fn start(side: Side, dir: &Path) -> Start {
    let port = free_port();
    let mut cmd = Command::new(side.bin());
    cmd.arg("--data").arg(dir);
    match side {
        Side::Agent => cmd.args(["run", "--now", NOW, "--listen"]),
        Side::Hub => cmd.args(["serve", "--now", NOW, "--listen"]),
    };
    let mut child = cmd
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
            return Start::Refused(first_lines(&String::from_utf8_lossy(&out.stderr), 2));
        }
        let up = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            // Let it do what it does after start (the agent's pusher, the hub's scheduler).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
            return Start::Ran;
        }
        assert!(
            Instant::now() < deadline,
            "{side:?} neither started nor exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One damaged copy: what was done and what came of it.
struct Outcome {
    side: Side,
    file: String,
    damage: String,
    verdict: Verdict,
    start: Start,
    after: Result<u64, String>,
    problem: Option<String>,
}

async fn try_damage(side: Side, original: &Path, total: u64, rel: &Path, d: Damage) -> Outcome {
    let copy = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    copy_tree(original, copy.path());
    d.apply(&copy.path().join(rel));
    let verdict = verify(side, copy.path());
    let start = start(side, copy.path()).await;
    let after = count(side, copy.path());
    // The rule: nothing goes missing silently.
    let problem = match (&start, &after) {
        (Start::Refused(msg), _) if msg.is_empty() => {
            Some("refused to start without a message".to_string())
        }
        (Start::Refused(_), _) => None,
        (Start::Ran, Err(e)) => Some(format!("started, but the store then reads as damaged: {e}")),
        (Start::Ran, Ok(n)) if verdict.ok && *n < total => Some(format!(
            "verify called the store sound, yet after start it holds {n} of {total} entries"
        )),
        (Start::Ran, Ok(n)) => match verdict.intact {
            Some(i) if *n < i.min(total) => Some(format!(
                "verify counted {i} intact, yet after start only {n} remain"
            )),
            _ => None,
        },
    };
    Outcome {
        side,
        file: rel.display().to_string(),
        damage: d.describe(),
        verdict,
        start,
        after,
        problem,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_stores_are_reported_and_never_silently_shortened() {
    let seed: u64 = std::env::var("SPACESYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_181_125);
    let mut rng = StdRng::seed_from_u64(seed);

    // Fill an agent's and the hub's stores, then stop everything cleanly.
    let mut cluster = Cluster::start(1, seed, FaultPlan::NONE, |_| {}).await;
    let history: SharedHistory = Default::default();
    let http = reqwest::Client::new();
    let mut work = Workload::new(cluster.agents[0].site);
    let post = async |work: &mut Workload, n: usize| {
        let mut left = n;
        while left > 0 {
            let k = left.min(20);
            let body: Vec<String> = (0..k).map(|_| work.next_write().1).collect();
            let r = http
                .post(format!("{}/v1/records", cluster.agents[0].url()))
                .body(body.join("\n"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(r.status().is_success(), "{:?}", r.text().await);
            left -= k;
        }
    };
    post(&mut work, RECORDS - UNSENT).await;
    cluster.wait_drained(Duration::from_secs(60)).await;
    cluster.hub.stop();
    post(&mut work, UNSENT).await;
    cluster.agents[0].stop();
    drop(history);

    let agent_dir = cluster.agents[0].dir.path().to_path_buf();
    let hub_dir = cluster.hub.dir.path().to_path_buf();
    let agent_total = count(Side::Agent, &agent_dir).unwrap_or_else(|e| panic!("{e}"));
    let hub_total = count(Side::Hub, &hub_dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(agent_total, RECORDS as u64);
    assert_eq!(hub_total, (RECORDS - UNSENT) as u64);
    for (side, dir) in [(Side::Agent, &agent_dir), (Side::Hub, &hub_dir)] {
        let v = verify(side, dir);
        assert!(
            v.ok,
            "{side:?}: the undamaged store must verify: {}",
            v.said
        );
    }

    let mut outcomes = Vec::new();
    for (side, dir, total) in [
        (Side::Agent, &agent_dir, agent_total),
        (Side::Hub, &hub_dir, hub_total),
    ] {
        let files = sled_files(&dir.join("db"));
        eprintln!(
            "{side:?} store files: {}",
            files
                .iter()
                .map(|(p, n)| format!("{} ({n} B)", p.strip_prefix(dir).unwrap_or(p).display()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (log, len) = files[0].clone();
        let rel = log.strip_prefix(dir).unwrap_or(&log).to_path_buf();
        let mut cases = vec![
            Damage::Truncate(0),
            Damage::Truncate(len / 2),
            Damage::Truncate(len - 1),
            Damage::Overwrite { at: 0, len: 64 },
        ];
        for _ in 0..3 {
            cases.push(Damage::Truncate(rng.random_range(1..len)));
        }
        for _ in 0..5 {
            cases.push(Damage::Overwrite {
                at: rng.random_range(0..len),
                len: rng.random_range(1..64),
            });
        }
        for d in cases {
            outcomes.push(try_damage(side, dir, total, &rel, d).await);
        }
        // The other files (configuration, snapshots): overwritten at the start.
        for (p, n) in files.iter().skip(1) {
            let rel = p.strip_prefix(dir).unwrap_or(p).to_path_buf();
            let d = Damage::Overwrite {
                at: 0,
                len: (*n as usize).clamp(1, 32),
            };
            outcomes.push(try_damage(side, dir, total, &rel, d).await);
        }
    }

    eprintln!(
        "seed {seed}: the undamaged agent store holds {agent_total} entries, the hub's log {hub_total} leaves"
    );
    for o in &outcomes {
        eprintln!(
            "{:?} {} {}: verify {} ({}); start: {}; afterwards {}{}",
            o.side,
            o.file,
            o.damage,
            if o.verdict.ok { "ok" } else { "FAILED" },
            o.verdict.said,
            match &o.start {
                Start::Refused(m) => format!("refused ({m})"),
                Start::Ran => "ran".to_string(),
            },
            match &o.after {
                Ok(n) => format!("{n} entries"),
                Err(e) => format!("unreadable ({e})"),
            },
            o.problem
                .as_ref()
                .map(|p| format!(" — PROBLEM: {p}"))
                .unwrap_or_default()
        );
    }
    let problems: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.problem
                .as_ref()
                .map(|p| format!("{:?} {} {}: {p}", o.side, o.file, o.damage))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "silent damage:\n{}",
        problems.join("\n")
    );
}
