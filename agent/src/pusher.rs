//! The pusher: sends buffered entries to the hub in seq order until each has a receipt.
//!
//! One sync cycle:
//! 1. know the hub's key (pinned in `agent.toml`, stored earlier, or fetched from
//!    `GET /v1/pubkey` and trusted on first use);
//! 2. after start and after any doubt (a timeout, a connection cut after sending, a 5xx)
//!    ask the hub which seq it holds (`GET /v1/agent/head`) and resume from there;
//! 3. push batches (gzip JSON) from the first unreceipted seq until the buffer is drained;
//!    each receipt is verified with the hub key and stored; an entry counts as delivered
//!    only with a valid receipt (the hub re-sends receipts for entries it already holds);
//! 4. fetch notices, acknowledge them, wake the webhook forwarder;
//! 5. prune delivered entries past retention.
//!
//! Transient faults (connection refused, timeouts, 5xx, 429) are retried forever on the
//! [`crate::retry`] schedule. Permanent refusals raise an alarm: pushing stops, the status
//! says why, and the same batch is re-probed every `reprobe_secs` until the cause is fixed.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use spacesync_shared::clock::Clock;
use spacesync_shared::keys;
use spacesync_shared::wire::{
    self, ErrorBody, INGEST_CONTENT_TYPE, IngestBatch, IngestResponse, NoticeAck, NoticesPage,
    PATH_AGENT_HEAD, PATH_AGENT_NOTICES, PATH_AGENT_NOTICES_ACK, PATH_HUB_PUBKEY, PATH_INGEST,
    Receipt, RefusalCode, SourceHead,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::{Config, secs};
use crate::intake::Identity;
use crate::retry::{self, Backoff, Schedule};
use crate::store::{Store, StoreError, Stored};

/// Why pushing stopped and needs a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// Machine-readable cause (a hub refusal code, or `bad_receipt`, `fork`, `malformed` …).
    pub code: String,
    /// What happened and what to do.
    pub reason: String,
    /// When it was first raised.
    pub since: DateTime<Utc>,
}

/// What the pusher last saw; shown by `status`, `/v1/status` and `/metrics`, and persisted
/// so `status` can show it while the agent is stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushState {
    /// Last time a request to the hub was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Last time a sync cycle completed without fault.
    pub last_success_at: Option<DateTime<Utc>>,
    /// `ok`, `retrying` or `alarm`.
    pub last_result: Option<String>,
    /// The last fault, as a sentence.
    pub last_error: Option<String>,
    /// Whether the hub answered the last request at all.
    pub hub_reachable: Option<bool>,
    /// Highest seq the hub said it holds.
    pub hub_held_through: Option<u64>,
    /// Set while a permanent refusal stops pushing.
    pub alarm: Option<Alarm>,
    /// Ingest requests sent.
    pub pushes: u64,
    /// Transient failures that were retried.
    pub retries: u64,
    /// Valid receipts stored.
    pub receipts: u64,
}

/// Shared view of the push state.
pub type SharedPushState = Arc<Mutex<PushState>>;

/// Locks the shared state, surviving a poisoned lock (the state is plain data).
pub fn lock(s: &SharedPushState) -> std::sync::MutexGuard<'_, PushState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A failed step of a sync cycle.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Worth retrying.
    #[error("{error}")]
    Transient {
        /// What happened.
        error: String,
        /// The hub's `Retry-After`.
        retry_after: Option<Duration>,
        /// True when the hub may have acted on a request whose answer was lost.
        doubt: bool,
    },
    /// A refusal that needs a person.
    #[error("{reason}")]
    Alarm {
        /// Cause code.
        code: String,
        /// What happened and what to do.
        reason: String,
    },
    /// The local store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn transient(error: String, doubt: bool) -> PushError {
    PushError::Transient {
        error,
        retry_after: None,
        doubt,
    }
}

fn alarm(code: impl Into<String>, reason: impl Into<String>) -> PushError {
    PushError::Alarm {
        code: code.into(),
        reason: reason.into(),
    }
}

fn code_name(c: RefusalCode) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{c:?}"))
}

/// Where the next batch starts and how big it may be.
struct Cursor {
    /// Set when the hub asked for entries below the first unreceipted one.
    resend_from: Option<u64>,
    /// Current batch limits (halved on 413, grown back on success).
    max_entries: usize,
    max_bytes: usize,
    /// Ask the hub for its head before the next push.
    doubt: bool,
}

/// The pusher task's state.
pub struct Pusher {
    cfg: Arc<Config>,
    ident: Arc<Identity>,
    store: Store,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    state: SharedPushState,
    /// Notified when intake appended entries.
    wake: Arc<Notify>,
    /// Notified when new notices were stored (wakes the webhook forwarder).
    notices_stored: Arc<Notify>,
    hub_key: Option<VerifyingKey>,
    /// The push state as last written to the store (written again only when it changes).
    persisted: Vec<u8>,
}

impl Pusher {
    /// A pusher for `store`; call [`Pusher::run`].
    pub fn new(
        cfg: Arc<Config>,
        ident: Arc<Identity>,
        store: Store,
        clock: Arc<dyn Clock>,
        state: SharedPushState,
        wake: Arc<Notify>,
        notices_stored: Arc<Notify>,
    ) -> Result<Pusher, reqwest::Error> {
        let timeout = secs(cfg.push.timeout_secs).max(Duration::from_millis(100));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("spacesync-agent/", env!("CARGO_PKG_VERSION")))
            // The hub is configured, not discovered: a 3xx is an error, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Pusher {
            cfg,
            ident,
            store,
            clock,
            http,
            state,
            wake,
            notices_stored,
            hub_key: None,
            persisted: Vec::new(),
        })
    }

    fn persist(&mut self) {
        let json = serde_json::to_vec(&*lock(&self.state)).unwrap_or_default();
        if json == self.persisted {
            return;
        }
        match self.store.set_push_state(&json) {
            Ok(()) => self.persisted = json,
            Err(e) => warn!(error = %e, "Cannot save the push state."),
        }
    }

    /// Runs sync cycles until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let p = self.cfg.push;
        let mut backoff = Backoff::new(Schedule::from_secs(p.retry_base_secs, p.retry_cap_secs));
        let mut cursor = Cursor {
            resend_from: None,
            max_entries: p.max_entries,
            max_bytes: p.max_bytes,
            doubt: true,
        };
        let mut last_notices: Option<Instant> = None;
        let mut last_prune: Option<Instant> = None;
        let mut pruned_at_receipts = u64::MAX;
        let source = self.ident.source.clone();
        while !*stop.borrow() {
            let notices_due = last_notices.is_none_or(|t| t.elapsed() >= secs(p.notices_secs));
            let result = self.cycle(&mut cursor, notices_due).await;
            let now = self.clock.now();
            let wait = match result {
                Ok(()) => {
                    backoff.reset();
                    if notices_due {
                        last_notices = Some(Instant::now());
                    }
                    {
                        let mut s = lock(&self.state);
                        if let Some(a) = s.alarm.take() {
                            info!(source = %source, code = %a.code, "Hub accepts again; alarm cleared.");
                        }
                        s.last_result = Some("ok".into());
                        s.last_error = None;
                        s.last_success_at = Some(now);
                    }
                    // Prune when new receipts arrived, and at least once a minute.
                    let receipts = lock(&self.state).receipts;
                    if receipts != pruned_at_receipts
                        || last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                    {
                        self.prune();
                        last_prune = Some(Instant::now());
                        pruned_at_receipts = receipts;
                    }
                    Some(secs(p.interval_secs))
                }
                Err(PushError::Transient {
                    error,
                    retry_after,
                    doubt,
                }) => {
                    cursor.doubt |= doubt;
                    let delay = backoff.next_delay(retry_after);
                    {
                        let mut s = lock(&self.state);
                        s.retries += 1;
                        s.last_result = Some("retrying".into());
                        s.last_error = Some(error.clone());
                    }
                    warn!(source = %source, error = ?error, delay_ms = delay.as_millis() as u64, "Push failed; will retry.");
                    self.wait(delay, false, &mut stop).await;
                    None
                }
                Err(PushError::Alarm { code, reason }) => {
                    cursor.doubt = true;
                    {
                        let mut s = lock(&self.state);
                        s.last_result = Some("alarm".into());
                        s.last_error = Some(reason.clone());
                        let since = s
                            .alarm
                            .as_ref()
                            .filter(|a| a.code == code)
                            .map(|a| a.since)
                            .unwrap_or(now);
                        s.alarm = Some(Alarm {
                            code: code.clone(),
                            reason: reason.clone(),
                            since,
                        });
                    }
                    error!(source = %source, code = %code, error = ?reason, reprobe_secs = p.reprobe_secs, "Hub refused permanently; pushing stopped until the cause is fixed.");
                    self.persist();
                    self.wait(secs(p.reprobe_secs), false, &mut stop).await;
                    None
                }
                Err(PushError::Store(e)) => {
                    let delay = backoff.next_delay(None);
                    lock(&self.state).last_error = Some(e.to_string());
                    error!(source = %source, error = %e, "Local store failed while pushing; will retry.");
                    self.wait(delay, false, &mut stop).await;
                    None
                }
            };
            self.persist();
            if let Some(d) = wait {
                self.wait(d, true, &mut stop).await;
            }
        }
        self.persist();
    }

    async fn wait(&self, d: Duration, wakeable: bool, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified(), if wakeable => {}
            _ = stop.changed() => {}
        }
    }

    fn prune(&self) {
        let days = self.cfg.retention.delivered_days.max(0.0);
        let keep = chrono::Duration::milliseconds((days * 86_400_000.0).min(1e15) as i64);
        let cutoff = self.clock.now() - keep;
        loop {
            match self.store.prune(cutoff, 10_000) {
                Ok(0) => break,
                Ok(n) => info!(pruned = n, "Pruned delivered entries past retention."),
                Err(e) => {
                    warn!(error = %e, "Pruning failed; will try again later.");
                    break;
                }
            }
        }
    }

    async fn cycle(&mut self, cursor: &mut Cursor, notices_due: bool) -> Result<(), PushError> {
        self.ensure_hub_key().await?;
        if cursor.doubt {
            self.query_head(cursor).await?;
            cursor.doubt = false;
        }
        loop {
            let acked = self.store.acked()?;
            let (head, _) = self.store.head()?;
            let from = cursor.resend_from.map_or(acked + 1, |r| r.min(acked + 1));
            if from > head {
                break;
            }
            let batch = self
                .store
                .entries_from(from, cursor.max_entries, cursor.max_bytes)?;
            if batch.first().map(|s| s.seq) != Some(from) {
                let (pruned, _) = self.store.pruned()?;
                if from <= pruned {
                    return Err(alarm(
                        "pruned",
                        format!(
                            "the hub asks for seq {from}, which this agent delivered and pruned (retention); the hub lost entries it had receipted — tell the hub operator"
                        ),
                    ));
                }
                return Err(StoreError::Corrupt(format!("entry {from} is missing")).into());
            }
            self.push_batch(&batch, cursor).await?;
            cursor.max_entries = (cursor.max_entries * 2).min(self.cfg.push.max_entries);
            cursor.max_bytes = (cursor.max_bytes * 2).min(self.cfg.push.max_bytes);
        }
        if notices_due && let Err(e) = self.fetch_notices().await {
            // Notices never stop delivery. The error can quote the hub's answer: escaped.
            warn!(error = ?e.to_string(), "Fetching notices failed; will try again next cycle.");
        }
        Ok(())
    }

    fn signed(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let nonce: [u8; 16] = rand::random();
        let headers = wire::sign_request(
            &self.ident.key,
            &self.ident.source,
            method.as_str(),
            path_and_query,
            self.clock.now(),
            nonce,
            &body,
        );
        let mut rb = self
            .http
            .request(method, self.cfg.hub_url(path_and_query))
            .body(body);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        rb
    }

    fn note_attempt(&self) {
        lock(&self.state).last_attempt_at = Some(self.clock.now());
    }

    fn reachable(&self, yes: bool) {
        lock(&self.state).hub_reachable = Some(yes);
    }

    /// Sends a request and reads the whole answer; transport faults are transient.
    async fn exchange(
        &self,
        rb: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(StatusCode, Option<Duration>, Vec<u8>), PushError> {
        self.note_attempt();
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                self.reachable(false);
                // Refused before anything was sent: no doubt. Anything else may have
                // reached the hub.
                let doubt = !e.is_connect();
                return Err(transient(
                    format!(
                        "{what}: cannot reach the hub at {}: {}",
                        self.cfg.hub,
                        err_chain(&e)
                    ),
                    doubt,
                ));
            }
        };
        self.reachable(true);
        let status = resp.status();
        let retry_after = retry::parse_retry_after(
            resp.headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        let body = resp.bytes().await.map_err(|e| {
            transient(
                format!("{what}: the hub's answer was cut off: {}", err_chain(&e)),
                true,
            )
        })?;
        Ok((status, retry_after, body.to_vec()))
    }

    async fn ensure_hub_key(&mut self) -> Result<(), PushError> {
        if self.hub_key.is_some() {
            return Ok(());
        }
        if let Some(line) = &self.cfg.hub_key {
            let key = keys::parse_public_key(line)
                .map_err(|e| alarm("bad_hub_key", format!("hub_key in agent.toml: {e}")))?;
            self.hub_key = Some(key);
            return Ok(());
        }
        if let Some(line) = self.store.hub_key()? {
            let key = keys::parse_public_key(&line).map_err(|e| {
                alarm(
                    "bad_hub_key",
                    format!("the stored hub key is unusable ({e}); set hub_key in agent.toml"),
                )
            })?;
            self.hub_key = Some(key);
            return Ok(());
        }
        let rb = self.http.get(self.cfg.hub_url(PATH_HUB_PUBKEY));
        let (status, retry_after, body) = self.exchange(rb, "fetching the hub key").await?;
        if !status.is_success() {
            return Err(PushError::Transient {
                error: format!("fetching the hub key: the hub answered {status}"),
                retry_after,
                doubt: false,
            });
        }
        let line = String::from_utf8_lossy(&body).trim().to_string();
        let key = keys::parse_public_key(&line).map_err(|e| {
            alarm(
                "bad_hub_key",
                format!(
                    "{} did not answer a key line ({e}); check the hub URL, or pin hub_key in agent.toml",
                    self.cfg.hub_url(PATH_HUB_PUBKEY)
                ),
            )
        })?;
        self.store.set_hub_key(&line).await?;
        warn!(hub_key = ?line, hub = %self.cfg.hub, "Trusting the hub key on first use; compare it with the hub operator's and pin it as hub_key in agent.toml.");
        self.hub_key = Some(key);
        Ok(())
    }

    fn refusal_from_error_body(&self, status: StatusCode, body: &[u8], what: &str) -> PushError {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let code = parsed
            .as_ref()
            .and_then(|b| b.code)
            .map(code_name)
            .unwrap_or_else(|| match status.as_u16() {
                401 => "unauthorized".into(),
                403 => "forbidden".into(),
                _ => format!("http_{}", status.as_u16()),
            });
        let msg = parsed
            .map(|b| b.error)
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
        let todo = match code.as_str() {
            "unknown_source" => format!(
                "register this source at the hub (source {}, key {})",
                self.ident.source,
                self.ident.key_line()
            ),
            "revoked_key" => "ask the hub operator why the key was revoked; enrol a new key".into(),
            "unauthorized" | "bad_signature" => format!(
                "check the agent's clock (requests are signed with a timestamp) and that the hub has this source's key {}",
                self.ident.key_line()
            ),
            _ => "check with the hub operator".into(),
        };
        alarm(
            code.clone(),
            format!("{what}: the hub refused ({status}, {code}): {msg}; {todo}"),
        )
    }

    async fn query_head(&mut self, cursor: &mut Cursor) -> Result<(), PushError> {
        let rb = self.signed(reqwest::Method::GET, PATH_AGENT_HEAD, Vec::new());
        let (status, retry_after, body) = self.exchange(rb, "asking the hub for its head").await?;
        match status.as_u16() {
            200 => {}
            401 | 403 => {
                return Err(self.refusal_from_error_body(
                    status,
                    &body,
                    "asking the hub for its head",
                ));
            }
            _ => {
                return Err(PushError::Transient {
                    error: format!("asking the hub for its head: the hub answered {status}"),
                    retry_after,
                    doubt: true,
                });
            }
        }
        let sh: SourceHead = serde_json::from_slice(&body)
            .map_err(|e| transient(format!("the hub's head answer is unreadable: {e}"), true))?;
        lock(&self.state).hub_held_through = Some(sh.held_through);
        let (head, _) = self.store.head()?;
        let held = sh.held_through;
        if held > head {
            return Err(alarm(
                "fork",
                format!(
                    "the hub holds seq {held} of source {} but this agent's chain ends at seq {head}: this data directory is older than what the hub has (restored from a backup?); nothing is pushed from it — restore the latest data directory or ask the hub operator",
                    self.ident.source
                ),
            ));
        }
        if held > 0 {
            let (pruned, pruned_hash) = self.store.pruned()?;
            let local = match self.store.entry(held)? {
                Some(env) => Some(env.payload_hash()),
                None if held == pruned => Some(pruned_hash),
                None => None,
            };
            if let Some(h) = local
                && h != sh.head
            {
                return Err(alarm(
                    "fork",
                    format!(
                        "the hub's entry at seq {held} has hash {} but this agent's has {h}: the chains differ (fork); ask the hub operator",
                        sh.head
                    ),
                ));
            }
        }
        let acked = self.store.acked()?;
        if held < acked {
            error!(
                held,
                acked,
                "The hub holds fewer entries than this agent has receipts for; resending them."
            );
            cursor.resend_from = Some(held + 1);
        } else {
            cursor.resend_from = None;
        }
        debug!(held, head, acked, "Hub head.");
        Ok(())
    }

    async fn push_batch(&mut self, batch: &[Stored], cursor: &mut Cursor) -> Result<(), PushError> {
        let (first, last) = match (batch.first(), batch.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => return Ok(()),
        };
        let body = IngestBatch {
            source: self.ident.source.clone(),
            entries: batch.iter().map(|s| s.envelope.clone()).collect(),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let gzipped = gz
            .write_all(&json)
            .and_then(|_| gz.finish())
            .map_err(|e| transient(format!("compressing a batch: {e}"), false))?;
        let rb = self
            .http
            .post(self.cfg.hub_url(PATH_INGEST))
            .header(CONTENT_TYPE, INGEST_CONTENT_TYPE)
            .header(CONTENT_ENCODING, "gzip")
            .body(gzipped);
        lock(&self.state).pushes += 1;
        let what = format!("pushing seqs {first}–{last}");
        let (status, retry_after, resp) = self.exchange(rb, &what).await?;
        let ingest = || -> Result<IngestResponse, PushError> {
            serde_json::from_slice(&resp).map_err(|e| {
                transient(
                    format!("{what}: the hub answered {status} with an unreadable body: {e}"),
                    true,
                )
            })
        };
        match status.as_u16() {
            200 => {
                let r = ingest()?;
                lock(&self.state).hub_held_through = Some(r.held_through);
                let got = self.accept_receipts(batch, &r.receipts)?;
                self.after_receipts(cursor, got);
                if got < last {
                    return Err(transient(
                        format!(
                            "{what}: the hub answered 200 but sent receipts only through seq {got} (holds through {})",
                            r.held_through
                        ),
                        true,
                    ));
                }
                debug!(first, last, "Batch receipted.");
                Ok(())
            }
            409 | 422 => {
                let r = ingest()?;
                lock(&self.state).hub_held_through = Some(r.held_through);
                let got = self.accept_receipts(batch, &r.receipts)?;
                self.after_receipts(cursor, got);
                let Some(refusal) = r.refused.first() else {
                    return Err(transient(
                        format!("{what}: the hub answered {status} without saying why"),
                        true,
                    ));
                };
                let seq = refusal.seq.map(|s| format!(" seq {s}")).unwrap_or_default();
                if refusal.code == RefusalCode::Gap {
                    let from = r.resend_from.unwrap_or(r.held_through + 1);
                    if from >= first {
                        // Resending could not help: the batch already started there. Ask
                        // the hub where it stands, after a backoff, instead of looping.
                        return Err(transient(
                            format!(
                                "{what}: the hub reports a gap and asks for seq {from}, but the batch started at {first}"
                            ),
                            true,
                        ));
                    }
                    warn!(resend_from = from, "The hub reports a gap; resending.");
                    cursor.resend_from = Some(from);
                    return Ok(());
                }
                let reason = format!(
                    "{what}: the hub refused{seq} ({}): {}",
                    code_name(refusal.code),
                    refusal.reason
                );
                if refusal.code.is_permanent() {
                    Err(alarm(code_name(refusal.code), reason))
                } else {
                    Err(PushError::Transient {
                        error: reason,
                        retry_after,
                        doubt: false,
                    })
                }
            }
            401 | 403 => Err(self.refusal_from_error_body(status, &resp, &what)),
            413 => {
                if batch.len() == 1 {
                    return Err(alarm(
                        "too_large",
                        format!(
                            "{what}: the hub refuses entry {first} as too large even alone; ask the hub operator to raise its limit"
                        ),
                    ));
                }
                cursor.max_entries = (batch.len() / 2).max(1);
                cursor.max_bytes = (batch.iter().map(|s| s.size).sum::<usize>() / 2).max(1);
                warn!(
                    max_entries = cursor.max_entries,
                    "The hub says the batch is too large; halving it."
                );
                Ok(())
            }
            429 => Err(PushError::Transient {
                error: format!("{what}: the hub is rate limiting this source"),
                retry_after,
                doubt: false,
            }),
            400 => {
                let parsed: Option<ErrorBody> = serde_json::from_slice(&resp).ok();
                Err(alarm(
                    "malformed",
                    format!(
                        "{what}: the hub says the batch is malformed ({}); this is an agent bug — please report it with the agent's log",
                        parsed.map(|b| b.error).unwrap_or_default()
                    ),
                ))
            }
            _ => Err(PushError::Transient {
                error: format!("{what}: the hub answered {status}"),
                retry_after,
                doubt: status.is_server_error(),
            }),
        }
    }

    fn after_receipts(&self, cursor: &mut Cursor, got: u64) {
        if let Some(r) = cursor.resend_from
            && got >= r
        {
            let acked = self.store.acked().unwrap_or(0);
            cursor.resend_from = (got < acked).then_some(got + 1);
        }
    }

    /// Verifies and stores the receipts; returns the highest seq of the batch that has one
    /// (counting from the batch's first seq, contiguously), or `first - 1`.
    fn accept_receipts(
        &self,
        batch: &[Stored],
        receipts: &[spacesync_shared::Envelope],
    ) -> Result<u64, PushError> {
        let Some(first) = batch.first().map(|s| s.seq) else {
            return Ok(0);
        };
        if receipts.is_empty() {
            return Ok(first - 1);
        }
        let Some(key) = self.hub_key else {
            return Err(transient(
                "no hub key to verify receipts with".into(),
                false,
            ));
        };
        let mut rows = Vec::with_capacity(receipts.len());
        for env in receipts {
            let r = Receipt::open(env, &key).map_err(|e| {
                alarm(
                    "bad_receipt",
                    format!(
                        "a receipt from the hub does not verify with the hub key {} ({e}); if the hub's key changed, confirm the new key with the hub operator and set hub_key in agent.toml",
                        keys::public_key_line(&key)
                    ),
                )
            })?;
            if r.source != self.ident.source {
                return Err(alarm(
                    "bad_receipt",
                    format!(
                        "the hub sent a receipt for source {} to source {}; ask the hub operator",
                        r.source, self.ident.source
                    ),
                ));
            }
            let Some(stored) = r
                .seq
                .checked_sub(first)
                .and_then(|i| batch.get(usize::try_from(i).ok()?))
            else {
                debug!(seq = r.seq, "Receipt outside the batch ignored.");
                continue;
            };
            let mine = stored.envelope.payload_hash();
            if r.entry_hash != mine {
                return Err(alarm(
                    "fork",
                    format!(
                        "the hub's receipt for seq {} names entry hash {} but this agent's entry has {mine}: the chains differ (fork); ask the hub operator",
                        r.seq, r.entry_hash
                    ),
                ));
            }
            rows.push((r.seq, serde_json::to_vec(env).unwrap_or_default()));
        }
        let n = rows.len() as u64;
        self.store.record_receipts(&rows)?;
        lock(&self.state).receipts += n;
        let mut got = first - 1;
        while batch
            .get(usize::try_from(got + 1 - first).unwrap_or(usize::MAX))
            .is_some()
            && rows.iter().any(|(s, _)| *s == got + 1)
        {
            got += 1;
        }
        Ok(got)
    }

    async fn fetch_notices(&mut self) -> Result<(), PushError> {
        const LIMIT: usize = 100;
        for _ in 0..10 {
            let after = self.store.notice_cursor()?;
            let pq = format!("{PATH_AGENT_NOTICES}?after={after}&limit={LIMIT}");
            let rb = self.signed(reqwest::Method::GET, &pq, Vec::new());
            let (status, _, body) = self.exchange(rb, "fetching notices").await?;
            if status == StatusCode::NOT_FOUND {
                debug!("The hub has no notices endpoint.");
                return Ok(());
            }
            if !status.is_success() {
                return Err(transient(
                    format!("fetching notices: the hub answered {status}"),
                    false,
                ));
            }
            let page: NoticesPage = serde_json::from_slice(&body)
                .map_err(|e| transient(format!("the hub's notices are unreadable: {e}"), false))?;
            if page.notices.is_empty() {
                return Ok(());
            }
            let through = self.store.put_notices(&page.notices)?;
            self.store.flush_async().await?;
            for n in &page.notices {
                warn!(notice = n.id, rule = ?n.rule, subject = %n.subject, deadline = %n.deadline.map(|d| d.to_string()).unwrap_or_default(), text = ?n.text_en, "Notice from the hub.");
            }
            self.notices_stored.notify_one();
            let ack = serde_json::to_vec(&NoticeAck { through }).unwrap_or_default();
            let rb = self
                .signed(reqwest::Method::POST, PATH_AGENT_NOTICES_ACK, ack)
                .header(CONTENT_TYPE, "application/json");
            let (status, _, _) = self.exchange(rb, "acknowledging notices").await?;
            if !status.is_success() {
                warn!(%status, through, "The hub did not take the notice acknowledgement; it will be sent again.");
            }
            if page.notices.len() < LIMIT {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// An error with its sources, on one line.
pub fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
