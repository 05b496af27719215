//! Group commit under SIGKILL: many clients post single records at once, so most answers
//! share a flush with others and the writer appends while a flush is under way; the real
//! agent binary (`run`, hub unreachable) is killed at random moments, many times over.
//! Then the store is checked like Jepsen would (as `tests/tests/agent_crash.rs` does for a
//! few clients posting small batches): every record carries a unique title, *attempted*
//! before its POST and *acknowledged* when the POST answered 200 with its seq;
//! `lost = acknowledged − stored` and `unexpected = stored − attempted` must be empty, no
//! title stored twice, every acknowledged title at the seq it was given, seqs `1..=head`
//! without holes, and `verify` must pass.
//!
//! `SPACESYNC_KILLS` (default 12) and `SPACESYNC_SEED` change the run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spacesync_agent::config::DataDir;
use spacesync_agent::store::{Store, parse_envelope};
use spacesync_shared::{Entry, Record};

mod common;
use common::{bin, free_port};

/// Concurrent clients, one single-record POST at a time each (as the bench's singles).
const CLIENTS: usize = 32;
/// The agent clock.
const NOW: &str = "2018-11-25T10:00:00+08:00";

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin().display()))
}

fn activity(title: &str) -> String {
    format!(
        r#"{{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"{title}"}}"#
    )
}

/// Starts `run` and waits for `/healthz`.
async fn start(dir: &Path, port: u16, http: &reqwest::Client) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap_or_else(|e| panic!("log: {e}"));
    let mut child = Command::new(bin())
        .arg("--data")
        .arg(dir)
        .args(["run", "--now", NOW])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("run: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("http://127.0.0.1:{port}/healthz");
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
            panic!("the agent exited at start ({st}); log:\n{log}");
        }
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return child;
        }
        assert!(Instant::now() < deadline, "the agent did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each stored entry's seq and activity title, in seq order.
fn stored_titles(dir: &Path) -> Vec<(u64, String)> {
    let store = Store::open(&DataDir::new(dir).db()).unwrap_or_else(|e| panic!("{e}"));
    store
        .raw_entries()
        .map(|r| {
            let (seq, bytes) = r.unwrap_or_else(|e| panic!("{e}"));
            let env = parse_envelope(seq, &bytes).unwrap_or_else(|e| panic!("{e}"));
            let e = Entry::from_payload(&env.payload).unwrap_or_else(|e| panic!("{e}"));
            match e.record {
                Record::Activity(a) => (e.seq, a.title),
                other => panic!("seq {seq}: unexpected {}", other.kind()),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_concurrent_single_posts_loses_no_answered_record_and_reuses_no_seq() {
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let kills = env("SPACESYNC_KILLS").unwrap_or(12);
    let seed = env("SPACESYNC_SEED").unwrap_or(20181125);
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();
    let port = free_port();
    let (hub, listen) = (
        format!("http://127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{port}"),
    );
    let init = cli(
        dir,
        &[
            "init", "--source", "gd-rrt", "--scope", "440000", "--hub", &hub, "--listen", &listen,
        ],
    );
    assert!(init.status.success(), "init: {init:?}");
    let token =
        spacesync_agent::token::read(&DataDir::new(dir).token()).unwrap_or_else(|e| panic!("{e}"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{listen}/v1/records");
    let attempted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let (mut posts_ok, mut posts_cut) = (0usize, 0usize);

    for k in 0..kills {
        let mut agent = start(dir, port, &http).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let (stop, attempted, acked) = (stop.clone(), attempted.clone(), acked.clone());
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            clients.spawn(async move {
                let (mut ok, mut cut) = (0usize, 0usize);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let title = format!("k{k}-c{c}-n{n}");
                    n += 1;
                    attempted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(title.clone());
                    let sent = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(activity(&title))
                        .send()
                        .await;
                    let answer = match sent {
                        Ok(r) if r.status().is_success() => {
                            r.json::<serde_json::Value>().await.ok()
                        }
                        _ => None,
                    };
                    let Some(v) = answer else {
                        // Killed (or dying): this round is over for this client.
                        cut += 1;
                        break;
                    };
                    ok += 1;
                    let seqs: Vec<u64> =
                        serde_json::from_value(v["seqs"].clone()).unwrap_or_default();
                    assert_eq!(seqs.len(), 1, "{v}");
                    acked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(title, seqs[0]);
                }
                (ok, cut)
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..300))).await;
        let _ = agent.kill();
        let _ = agent.wait();
        stop.store(true, Ordering::Relaxed);
        for (ok, cut) in clients.join_all().await {
            posts_ok += ok;
            posts_cut += cut;
        }
    }

    // The checker.
    let verify = cli(dir, &["verify"]);
    assert!(
        verify.status.success(),
        "verify after {kills} kills:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let stored = stored_titles(dir);
    let seqs: Vec<u64> = stored.iter().map(|s| s.0).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "holes or reordering in seqs"
    );
    let mut by_title: BTreeMap<&str, u64> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for (seq, t) in &stored {
        if by_title.insert(t, *seq).is_some() {
            duplicates.push(t.clone());
        }
    }
    let attempted = attempted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lost: Vec<_> = acked
        .keys()
        .filter(|t| !by_title.contains_key(t.as_str()))
        .collect();
    let moved: Vec<_> = acked
        .iter()
        .filter(|(t, s)| by_title.get(t.as_str()).is_some_and(|x| x != *s))
        .collect();
    let unexpected: Vec<_> = by_title
        .keys()
        .filter(|t| !attempted.contains(**t))
        .collect();
    eprintln!(
        "group commit kill test: seed {seed}, {kills} SIGKILLs, {CLIENTS} clients; posts answered 200: {posts_ok}, cut by a kill: {posts_cut}; \
         records attempted {}, acknowledged {}, stored {}; lost {}, unexpected {}, duplicates {}, moved {}",
        attempted.len(),
        acked.len(),
        stored.len(),
        lost.len(),
        unexpected.len(),
        duplicates.len(),
        moved.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(unexpected.is_empty(), "unexpected: {unexpected:?}");
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    assert!(
        moved.is_empty(),
        "answered seq differs from stored: {moved:?}"
    );
    assert!(
        posts_ok as u64 > kills * CLIENTS as u64,
        "too few writes were acknowledged to mean anything ({posts_ok})"
    );

    // And the chain goes on from where it stopped.
    let mut agent = start(dir, port, &http).await;
    let r = http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(activity("after-the-storm"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.status().is_success(), "{}", r.status());
    let v: serde_json::Value = r.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["seqs"], serde_json::json!([stored.len() as u64 + 1]));
    let _ = agent.kill();
    let _ = agent.wait();
}
