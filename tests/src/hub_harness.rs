//! Runs the real `spacesync-hub` binary in a temporary data directory, and plays agents
//! against it: pre-signed hash chains pushed over HTTP, with receipts checked.
//!
//! The binary is this package's `spacesync-hub-under-test`, which `cargo test` builds
//! from the hub's own `main` ([`hub_bin`]); `SPACESYNC_HUB_BIN` overrides it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Value, json};
use spacesync_shared::keys::{parse_public_key, public_key_line};
use spacesync_shared::wire::{self, IngestBatch, Receipt, SourceHead};
use spacesync_shared::{Digest, Entry, Envelope, Record, RegionCode, SourceId};

use crate::procs::{self, Health};

/// The hub clock in these tests (`serve --now`): inside the 2018 campaign.
pub const NOW: &str = "2018-11-25T02:00:00Z";

/// [`NOW`] parsed.
pub fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&Utc)
}

/// Path of the `spacesync-hub` binary under test: this package's
/// `spacesync-hub-under-test` (the hub's own `main`, built by `cargo test`), or
/// `SPACESYNC_HUB_BIN`.
pub fn hub_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("SPACESYNC_HUB_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::cluster::hub_bin().to_path_buf())
    })
}

pub use crate::procs::free_port;

/// One hub: its data directory, its port, and its process while running.
pub struct HubProc {
    /// The data directory.
    pub dir: tempfile::TempDir,
    /// The port `serve` listens on (the same across restarts).
    pub port: u16,
    /// The hub's public key, from `init`.
    pub key: VerifyingKey,
    child: Option<Child>,
    http: reqwest::Client,
}

impl HubProc {
    /// `init`s a hub in a fresh directory and raises its per-source rate limit, so the
    /// clients here are throttled by the faults, not by the limiter.
    pub fn init() -> HubProc {
        let (dir, line) = procs::init_hub(hub_bin(), "10000.0");
        let key = parse_public_key(&line).unwrap_or_else(|e| panic!("init printed {line:?}: {e}"));
        HubProc {
            dir,
            port: free_port(),
            key,
            child: None,
            http: reqwest::Client::new(),
        }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a subcommand to completion (`--data` is added).
    pub fn cli(&self, args: &[&str]) -> Output {
        procs::run_cli(hub_bin(), self.dir.path(), args)
    }

    /// `agents add`.
    pub fn add_agent(&self, source: &str, scope: &str, key: &VerifyingKey) {
        let line = public_key_line(key);
        let out = self.cli(&[
            "agents", "add", "--source", source, "--scope", scope, "--key", &line, "--now", NOW,
        ]);
        assert!(
            out.status.success(),
            "agents add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Spawns `serve --now NOW` without waiting.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "hub already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hub.log"))
            .unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(hub_bin())
            .arg("--data")
            .arg(self.dir.path())
            .args(["serve", "--now", NOW, "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("serve: {e}"));
        self.child = Some(child);
    }

    /// Spawns `serve` and waits until `/healthz` answers; respawns when the process exits
    /// at start (e.g. the port is briefly still held). Returns how many spawns it took.
    pub async fn start(&mut self) -> usize {
        for attempt in 1..=20 {
            self.spawn();
            match procs::wait_healthy(
                &self.http,
                &self.url(),
                &mut self.child,
                Duration::from_secs(30),
                Duration::from_millis(10),
                Some(Duration::from_secs(2)),
            )
            .await
            {
                Health::Up => return attempt,
                Health::Exited => {}
                Health::TimedOut => {
                    panic!("the hub did not answer /healthz; log:\n{}", self.log())
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the hub would not start; log:\n{}", self.log());
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// The sled store directory.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("db")
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One source's chain of signed entries, made ahead of sending.
pub struct Chain {
    /// The source.
    pub source: SourceId,
    /// Its key.
    pub key: SigningKey,
    /// Its scope.
    pub scope: RegionCode,
    /// Entries, index `seq - 1`.
    pub entries: Vec<Envelope>,
}

impl Chain {
    /// An empty chain.
    pub fn new(source: &str, seed: u8, scope: &str) -> Chain {
        Chain {
            source: SourceId::parse(source).unwrap_or_else(|e| panic!("{e}")),
            key: SigningKey::from_bytes(&[seed; 32]),
            scope: RegionCode::parse(scope).unwrap_or_else(|e| panic!("{e}")),
            entries: Vec::new(),
        }
    }

    /// Signs `n` more entries: space counts for a school of a county inside the scope,
    /// each with a unique count so every entry is distinct.
    pub fn extend(&mut self, n: usize, county: &str) {
        for _ in 0..n {
            let seq = self.entries.len() as u64 + 1;
            let prev = self
                .entries
                .last()
                .map_or(Digest::ZERO, Envelope::payload_hash);
            let record = json!({ "kind": "space_count", "region": county,
                "school": format!("{county}{:04}", seq % 50), "as_of": "2018-11-20",
                "spaces": { "teacher": seq, "student": seq * 10 } });
            let entry = Entry {
                source: self.source.clone(),
                seq,
                prev,
                recorded_at: now() - chrono::Duration::hours(1),
                campaign: "2018".into(),
                record: Record::from_value(&record).unwrap_or_else(|p| panic!("{p:?}")),
            };
            self.entries.push(entry.sign(&self.key));
        }
    }

    /// The batch of seqs `from..=to`.
    pub fn batch(&self, from: u64, to: u64) -> IngestBatch {
        IngestBatch {
            source: self.source.clone(),
            entries: self.entries[(from - 1) as usize..to as usize].to_vec(),
        }
    }
}

/// What one push came to.
#[derive(Debug)]
pub enum Pushed {
    /// 200: the verified receipts, and what the hub holds.
    Held {
        /// Highest seq held.
        held_through: u64,
        /// Receipts, verified with the hub key and matched to the entries sent.
        receipts: Vec<(Receipt, Envelope)>,
    },
    /// 409 with a seq to resend from.
    ResendFrom(u64),
    /// 429: wait this long.
    Throttled(Duration),
    /// The connection failed or the hub answered 5xx: retry after resyncing.
    Unavailable(String),
}

/// Posts seqs `from..=to` of `chain` and checks the answer: every receipt must verify with
/// the hub key and name the entry sent. Any other refusal is a test failure.
pub async fn push(
    http: &reqwest::Client,
    url: &str,
    hub_key: &VerifyingKey,
    chain: &Chain,
    from: u64,
    to: u64,
) -> Pushed {
    let batch = chain.batch(from, to);
    let resp = match http
        .post(format!("{url}{}", wire::PATH_INGEST))
        .json(&batch)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Pushed::Unavailable(e.to_string()),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let body: Value = match resp.json().await {
        Ok(v) => v,
        Err(e) => return Pushed::Unavailable(format!("status {status}, body unreadable: {e}")),
    };
    match status {
        200 => {
            let r: wire::IngestResponse =
                serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{e}: {body}"));
            assert!(
                r.refused.is_empty(),
                "{}: 200 with refusals: {body}",
                chain.source
            );
            assert_eq!(
                r.receipts.len() as u64,
                to - from + 1,
                "{}: one receipt per entry sent: {body}",
                chain.source
            );
            let receipts = r
                .receipts
                .into_iter()
                .map(|env| {
                    let rc = Receipt::open(&env, hub_key).unwrap_or_else(|e| {
                        panic!("{}: receipt does not verify: {e}", chain.source)
                    });
                    assert_eq!(rc.source, chain.source);
                    assert_eq!(
                        rc.entry_hash,
                        chain.entries[(rc.seq - 1) as usize].payload_hash(),
                        "{}: receipt for seq {} names another entry",
                        chain.source,
                        rc.seq
                    );
                    (rc, env)
                })
                .collect();
            Pushed::Held {
                held_through: r.held_through,
                receipts,
            }
        }
        409 if body["refused"][0]["code"] == "gap" => Pushed::ResendFrom(
            body["resend_from"]
                .as_u64()
                .unwrap_or_else(|| panic!("409 gap without resend_from: {body}")),
        ),
        429 => Pushed::Throttled(Duration::from_secs(retry_after)),
        500..=599 => Pushed::Unavailable(format!("{status}: {body}")),
        _ => panic!(
            "{}: seqs {from}..={to} refused with {status}: {body}",
            chain.source
        ),
    }
}

/// `GET /v1/agent/head` as `chain`'s source (a signed request with a fresh nonce).
pub async fn head(http: &reqwest::Client, url: &str, chain: &Chain) -> Result<SourceHead, String> {
    let nonce: [u8; 16] = rand::random();
    let mut req = http.get(format!("{url}{}", wire::PATH_AGENT_HEAD));
    for (k, v) in wire::sign_request(
        &chain.key,
        &chain.source,
        "GET",
        wire::PATH_AGENT_HEAD,
        now(),
        nonce,
        b"",
    ) {
        req = req.header(k, v);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status.is_server_error() {
        return Err(format!("{status}: {text}"));
    }
    assert!(
        status.is_success(),
        "head of {}: {status}: {text}",
        chain.source
    );
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

/// Every receipt a client was given, by (source, seq); a seq receipted twice must be
/// receipted identically.
#[derive(Default)]
pub struct Acked(pub BTreeMap<(SourceId, u64), (Receipt, Envelope)>);

impl Acked {
    /// Records receipts; returns those that contradict an earlier receipt.
    pub fn add(&mut self, receipts: Vec<(Receipt, Envelope)>) -> Vec<String> {
        let mut conflicts = Vec::new();
        for (rc, env) in receipts {
            let key = (rc.source.clone(), rc.seq);
            match self.0.get(&key) {
                Some((old, old_env)) if old != &rc || old_env != &env => conflicts.push(format!(
                    "{} seq {}: receipted at log index {} and later at {}",
                    rc.source, rc.seq, old.log_index, rc.log_index
                )),
                Some(_) => {}
                None => {
                    self.0.insert(key, (rc, env));
                }
            }
        }
        conflicts
    }
}
