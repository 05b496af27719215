//! What the hostile suites (`hostile.rs`, `hostile_load.rs`) share: raw HTTP over a socket
//! bound to a chosen loopback address, the state that a refused attack must leave as it
//! was (at the hub: log size, heads, views; at an agent: head, acked, buffered, unread
//! notices), bounded runs of a command that must refuse, and the junk flood.

#![allow(dead_code)] // each suite uses its own part

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Value, json};
use spacesync_shared::dsse::{EnvelopeSignature, key_id};
use spacesync_shared::entry::ENTRY_PAYLOAD_TYPE;
use spacesync_shared::wire::{self, IngestBatch};
use spacesync_shared::{Digest, Entry, Envelope, Record, SourceId};
use spacesync_tests::hub_harness::{HubProc, now};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a forged log line would start with.
pub const FORGED: &str = "2026-12-02T00:00:00Z  INFO forged";

/// An IPv4 loopback address `127.0.x.y`.
pub fn lo(x: u8, y: u8) -> IpAddr {
    IpAddr::from([127, 0, x, y])
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) over a fresh connection
/// from `from` to `to`; returns the status (0 when none came) and the whole answer.
pub async fn raw_http(to: SocketAddr, from: IpAddr, request: &[u8]) -> (u16, String) {
    let go = async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("socket: {e}"));
        sock.bind(SocketAddr::new(from, 0))
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        let mut s = sock
            .connect(to)
            .await
            .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        s.write_all(request)
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .unwrap_or_else(|_| panic!("no answer from {to} within 10 s"));
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A request head and body as one HTTP/1.1 request with `Content-Length` and
/// `Connection: close`; `headers` are whole lines without CRLF.
pub fn request(method: &str, path: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// What a refused attack must leave as it was at the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct HubState {
    /// Size of the signed checkpoint (`/v1/checkpoint`, its second line).
    pub log_size: u64,
    /// `head_seq` of every registered source (`/v1/sources`).
    pub heads: BTreeMap<String, u64>,
    /// The merged views (`/v1/progress`).
    pub progress: Value,
}

/// Reads [`HubState`] with `token` (an admin token sees every source).
pub async fn hub_state(http: &reqwest::Client, url: &str, token: &str) -> HubState {
    let note = http
        .get(format!("{url}/v1/checkpoint"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("checkpoint: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("checkpoint: {e}"));
    let log_size = note
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("not a checkpoint: {note:?}"));
    let get = |path: &str| http.get(format!("{url}{path}")).bearer_auth(token).send();
    let sources: Value = get("/v1/sources")
        .await
        .unwrap_or_else(|e| panic!("sources: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("sources: {e}"));
    let heads = sources["sources"]
        .as_array()
        .unwrap_or_else(|| panic!("sources: {sources}"))
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap_or_default().to_string(),
                s["head_seq"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let progress: Value = get("/v1/progress")
        .await
        .unwrap_or_else(|e| panic!("progress: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("progress: {e}"));
    assert!(progress["provinces"].is_array(), "progress: {progress}");
    HubState {
        log_size,
        heads,
        progress,
    }
}

/// `spacesync-hub token create --role <role>` on the stopped hub; the token.
pub fn token(hub: &HubProc, role: &str) -> String {
    let out = hub.cli(&["token", "create", "--role", role]);
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Hub rates back at the defaults `init` writes (the harness raises them so that faults,
/// not the limiter, shape its traffic; an attack test needs the real limiter).
pub fn default_rates(hub: &HubProc) {
    edit_config(
        hub,
        &[
            ("rate_per_source = 10000.0", "rate_per_source = 20.0"),
            ("burst_per_source = 10000.0", "burst_per_source = 100.0"),
        ],
    );
}

/// Replaces lines of the stopped hub's `hub.toml`; each must be present.
pub fn edit_config(hub: &HubProc, edits: &[(&str, &str)]) {
    let path = hub.dir.path().join("hub.toml");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} not in hub.toml:\n{text}");
        text = text.replace(from, to);
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
}

/// What an agent's refused requests must leave as they were (`/v1/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    /// Highest seq signed.
    pub head_seq: u64,
    /// Highest seq receipted by the hub.
    pub acked_seq: u64,
    /// Entries not yet receipted.
    pub buffered: u64,
    /// Notices not marked read.
    pub unread_notices: u64,
}

/// `GET /v1/status` of the agent at `url`, with its token.
pub async fn agent_status(http: &reqwest::Client, url: &str, token: &str) -> Value {
    let r = http
        .get(format!("{url}/v1/status"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("status: {e}"));
    assert_eq!(r.status(), 200, "status with the token");
    r.json().await.unwrap_or_else(|e| panic!("status: {e}"))
}

/// [`AgentState`] from `/v1/status`.
pub async fn agent_state(http: &reqwest::Client, url: &str, token: &str) -> AgentState {
    let s = agent_status(http, url, token).await;
    let n = |k: &str| {
        s[k].as_u64()
            .unwrap_or_else(|| panic!("status has no {k}: {s}"))
    };
    AgentState {
        head_seq: n("head_seq"),
        acked_seq: n("acked_seq"),
        buffered: n("buffered"),
        unread_notices: n("unread_notices"),
    }
}

/// Posts NDJSON `body` to the agent at `url` as the platform does; the status and answer.
pub async fn post_records(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &str,
) -> (u16, Value) {
    let r = http
        .post(format!("{url}/v1/records"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/records: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Runs `bin --data data args…`, which must exit by itself within `limit` (a command that
/// should refuse to start, and would otherwise serve for ever, is killed and reported).
pub fn run_bounded(bin: &Path, data: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(bin)
        .arg("--data")
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} {args:?}: {e}", bin.display()));
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output();
                panic!("{args:?} was still running after {limit:?}: {out:?}");
            }
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// stdout and stderr of a finished command.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Lines of `log` that would pass for a line of their own written at [`FORGED`]'s time.
pub fn forged_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.trim_start().starts_with(FORGED))
        .collect()
}

/// An entry of `source` at `seq` after `prev`, recorded an hour before the hub's clock.
pub fn entry(source: &SourceId, seq: u64, prev: Digest, record: Value) -> Entry {
    Entry {
        source: source.clone(),
        seq,
        prev,
        recorded_at: now() - chrono::Duration::hours(1),
        campaign: "2018".into(),
        record: Record::from_value(&record).unwrap_or_else(|p| panic!("{record}: {p:?}")),
    }
}

/// An activity record about `region` titled `title`.
pub fn activity(region: &str, title: &str) -> Value {
    json!({"kind": "activity", "region": region, "date": "2018-11-20",
        "category": "training", "title": title})
}

/// The four kinds of junk an attacker who knows a source's name and public key sends to
/// `/v1/ingest`, as request bodies: a batch signed with the attacker's own key, one that is
/// not JSON, an unsigned envelope, and one whose signature under the source's key id is 64
/// bytes of garbage.
pub fn junk_bodies(victim: &SourceId, victim_key: &VerifyingKey, region: &str) -> Vec<Vec<u8>> {
    let e = entry(victim, 1, Digest::ZERO, activity(region, "伪造"));
    let attacker = SigningKey::from_bytes(&[0xee; 32]);
    let garbage = Envelope {
        payload_type: ENTRY_PAYLOAD_TYPE.into(),
        payload: e.to_payload(),
        signatures: vec![EnvelopeSignature {
            keyid: key_id(victim_key),
            sig: (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect(),
        }],
    };
    let batch = |env: Envelope| {
        serde_json::to_vec(&IngestBatch {
            source: victim.clone(),
            entries: vec![env],
        })
        .unwrap_or_else(|e| panic!("{e}"))
    };
    vec![
        batch(e.sign(&attacker)),
        format!("{{\"source\":\"{victim}\",\"entries\":[").into_bytes(),
        batch(Envelope {
            payload_type: ENTRY_PAYLOAD_TYPE.into(),
            payload: e.to_payload(),
            signatures: vec![],
        }),
        batch(garbage),
    ]
}

/// What a flood thread saw: answers by status, and requests that got none.
#[derive(Debug, Default, Clone)]
pub struct FloodCounts {
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed without an answer (connection refused, reset, timed out).
    pub failed: u64,
}

impl FloodCounts {
    fn add(&mut self, other: &FloodCounts) {
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        self.failed += other.failed;
    }

    /// Requests answered.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// Threads posting junk naming a source to the hub's ingest, from one address.
pub struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<FloodCounts>>,
}

impl Flood {
    /// Starts `threads` threads posting [`junk_bodies`] naming `victim` to `hub` from
    /// `from`, each over its own kept-alive connection, until stopped or `max` passes.
    pub fn start(
        hub: &str,
        from: IpAddr,
        victim: &SourceId,
        victim_key: &VerifyingKey,
        region: &str,
        threads: usize,
        max: Duration,
    ) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let bodies = Arc::new(junk_bodies(victim, victim_key, region));
        let url = format!("{hub}{}", wire::PATH_INGEST);
        let threads = (0..threads)
            .map(|t| {
                let (stop, bodies, url) = (stop.clone(), bodies.clone(), url.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap_or_else(|e| panic!("{e}"));
                    rt.block_on(async move {
                        let http = reqwest::Client::builder()
                            .local_address(from)
                            .timeout(Duration::from_secs(5))
                            .build()
                            .unwrap_or_else(|e| panic!("{e}"));
                        let mut c = FloodCounts::default();
                        let start = Instant::now();
                        let mut i = t;
                        while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                            let body = bodies[i % bodies.len()].clone();
                            i += 1;
                            match http
                                .post(&url)
                                .header("content-type", "application/json")
                                .body(body)
                                .send()
                                .await
                            {
                                Ok(r) => {
                                    *c.statuses.entry(r.status().as_u16()).or_default() += 1;
                                    let _ = r.bytes().await;
                                }
                                Err(_) => {
                                    c.failed += 1;
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                            }
                        }
                        c
                    })
                })
            })
            .collect();
        Flood { stop, threads }
    }

    /// Whether the flood is still on (no thread has ended).
    pub fn running(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops the threads; what they saw, summed.
    pub fn stop(self) -> FloodCounts {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = FloodCounts::default();
        for t in self.threads {
            all.add(
                &t.join()
                    .unwrap_or_else(|_| panic!("a flood thread panicked")),
            );
        }
        all
    }
}
