//! A small in-process hub for the agent's tests: speaks the wire protocol of
//! `spacesync_shared::wire` (ingest with gzip, pubkey, signed head / notices / ack), keeps
//! each source's chain with `ChainVerifier`, signs receipts, and can be told to fail:
//! 503s, 429s with Retry-After, answers slower than the agent's timeout, connections cut
//! before or after the batch was stored. It can be stopped and started on the same port.

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spacesync_shared::chain::{ChainError, ChainVerifier};
use spacesync_shared::dsse::{Digest, Envelope};
use spacesync_shared::entry::{Entry, SourceId};
use spacesync_shared::keys;
use spacesync_shared::region::RegionCode;
use spacesync_shared::wire::{
    self, ErrorBody, IngestBatch, IngestResponse, Notice, NoticeAck, NoticeFacts, NoticesPage,
    Receipt, Refusal, RefusalCode, SourceHead,
};

/// Fault probabilities, each per request to `/v1/ingest`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Answer 503.
    pub unavailable: f64,
    /// Answer 429 with `Retry-After: 1`.
    pub rate_limited: f64,
    /// Cut the connection without storing anything.
    pub reset_before: f64,
    /// Store the batch, then cut the connection (the answer is lost).
    pub reset_after: f64,
    /// Wait this long before storing and answering (longer than the agent's timeout).
    pub slow: f64,
    /// How long `slow` waits.
    pub slow_by: Duration,
}

/// One registered source.
struct Source {
    key: VerifyingKey,
    scope: RegionCode,
    revoked: bool,
    verifier: ChainVerifier,
    entries: Vec<Envelope>,
    receipts: Vec<Envelope>,
}

/// What the hub holds and counts.
pub struct HubState {
    key: SigningKey,
    sources: Mutex<HashMap<SourceId, Source>>,
    log_len: Mutex<u64>,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    notices: Mutex<Vec<Notice>>,
    acked_notices: Mutex<u64>,
    /// Faults injected so far, by kind.
    pub injected: Mutex<HashMap<&'static str, u64>>,
    /// Ingest requests seen.
    pub ingests: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running (or stopped) fake hub.
pub struct FakeHub {
    /// Its address; stays the same across stop and start.
    pub addr: SocketAddr,
    /// Shared state.
    pub state: Arc<HubState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(128)
}

impl FakeHub {
    /// A hub on a free loopback port, running.
    pub async fn start(seed: u64) -> FakeHub {
        let state = Arc::new(HubState {
            key: SigningKey::from_bytes(&[42; 32]),
            sources: Mutex::default(),
            log_len: Mutex::default(),
            faults: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            notices: Mutex::default(),
            acked_notices: Mutex::default(),
            injected: Mutex::default(),
            ingests: Mutex::default(),
        });
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap_or_else(|e| panic!("fake hub cannot bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake hub address: {e}"));
        let mut hub = FakeHub {
            addr,
            state,
            stop: None,
            task: None,
        };
        hub.serve(listener);
        hub
    }

    /// A hub whose address is reserved but which is not running yet.
    pub async fn down(seed: u64) -> FakeHub {
        let mut hub = FakeHub::start(seed).await;
        hub.stop().await;
        hub
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = app(self.state.clone());
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        }));
    }

    /// Stops serving (connections are refused).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut t) = self.task.take() {
            // Graceful first (idle keep-alive connections close), then make sure.
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match bind(self.addr) {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("fake hub cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The hub's public key line.
    pub fn key_line(&self) -> String {
        keys::public_key_line(&self.state.key.verifying_key())
    }

    /// Enrols a source.
    pub fn register(&self, source: &str, key_line: &str, scope: &str) {
        let source = SourceId::parse(source).unwrap_or_else(|e| panic!("{e}"));
        let key = keys::parse_public_key(key_line).unwrap_or_else(|e| panic!("{e}"));
        let scope = RegionCode::parse(scope).unwrap_or_else(|e| panic!("{e}"));
        lock(&self.state.sources).insert(
            source.clone(),
            Source {
                key,
                scope,
                revoked: false,
                verifier: ChainVerifier::new(source, key, scope, "2018"),
                entries: Vec::new(),
                receipts: Vec::new(),
            },
        );
    }

    /// Revokes or restores a source's key.
    pub fn set_revoked(&self, source: &str, revoked: bool) {
        if let Ok(s) = SourceId::parse(source)
            && let Some(src) = lock(&self.state.sources).get_mut(&s)
        {
            src.revoked = revoked;
        }
    }

    /// Sets the fault probabilities.
    pub fn set_faults(&self, f: Faults) {
        *lock(&self.state.faults) = f;
    }

    /// Adds a notice for every agent.
    pub fn add_notice(&self, rule: &str, subject: &str, text_en: &str) -> u64 {
        self.add_notice_with_facts(rule, subject, text_en, NoticeFacts::default())
    }

    /// Adds a notice carrying structured facts for every agent.
    pub fn add_notice_with_facts(
        &self,
        rule: &str,
        subject: &str,
        text_en: &str,
        facts: NoticeFacts,
    ) -> u64 {
        let mut n = lock(&self.state.notices);
        let id = n.len() as u64 + 1;
        let code = RegionCode::parse(subject).unwrap_or_else(|e| panic!("{e}"));
        n.push(Notice {
            id,
            rule: rule.into(),
            subject: code,
            addressee: code,
            created_at: Utc::now(),
            text: format!("提醒：{text_en}"),
            text_en: text_en.into(),
            deadline: facts.due,
            facts,
        });
        id
    }

    /// Highest notice id acknowledged by an agent.
    pub fn acked_notices(&self) -> u64 {
        *lock(&self.state.acked_notices)
    }

    /// The envelopes held for `source`, in seq order.
    pub fn entries(&self, source: &str) -> Vec<Envelope> {
        SourceId::parse(source)
            .ok()
            .and_then(|s| lock(&self.state.sources).get(&s).map(|s| s.entries.clone()))
            .unwrap_or_default()
    }

    /// Faults injected so far, as text.
    pub fn injected(&self) -> String {
        let m = lock(&self.state.injected);
        let mut v: Vec<_> = m.iter().map(|(k, n)| format!("{k}={n}")).collect();
        v.sort();
        v.join(" ")
    }
}

fn app(state: Arc<HubState>) -> Router {
    Router::new()
        .route(wire::PATH_INGEST, post(ingest))
        .route(wire::PATH_HUB_PUBKEY, get(pubkey))
        .route(wire::PATH_AGENT_HEAD, get(head))
        .route(wire::PATH_AGENT_NOTICES, get(notices))
        .route(wire::PATH_AGENT_NOTICES_ACK, post(ack))
        .with_state(state)
}

fn error(status: StatusCode, code: Option<RefusalCode>, msg: &str) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error: msg.into(),
            code,
            problems: vec![],
        }),
    )
        .into_response()
}

/// A response whose body fails: the client sees the connection cut mid-answer.
fn cut() -> Response {
    let s = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection cut by the fake hub"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(s))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn pubkey(State(st): State<Arc<HubState>>) -> String {
    format!("{}\n", keys::public_key_line(&st.key.verifying_key()))
}

/// Checks a signed request; returns the source.
fn authenticate(
    st: &HubState,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<SourceId, Box<Response>> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let source = SourceId::parse(h(wire::HDR_SOURCE)).map_err(|_| {
        error(
            StatusCode::UNAUTHORIZED,
            Some(RefusalCode::UnknownSource),
            "no source",
        )
    })?;
    let sources = lock(&st.sources);
    let Some(src) = sources.get(&source) else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            Some(RefusalCode::UnknownSource),
            "source is not registered",
        )));
    };
    if src.revoked {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            Some(RefusalCode::RevokedKey),
            "key revoked",
        )));
    }
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    wire::verify_request(
        &src.key,
        method,
        pq,
        h(wire::HDR_TIMESTAMP),
        h(wire::HDR_NONCE),
        h(wire::HDR_SIGNATURE),
        body,
    )
    .map_err(|e| {
        error(
            StatusCode::UNAUTHORIZED,
            Some(RefusalCode::BadSignature),
            &e.to_string(),
        )
    })?;
    Ok(source)
}

async fn head(State(st): State<Arc<HubState>>, uri: Uri, headers: HeaderMap) -> Response {
    let source = match authenticate(&st, "GET", &uri, &headers, b"") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let sources = lock(&st.sources);
    let src = sources.get(&source);
    let held = src.map(|s| s.entries.len() as u64).unwrap_or(0);
    let hash = src
        .and_then(|s| s.entries.last())
        .map(|e| e.payload_hash())
        .unwrap_or(Digest::ZERO);
    axum::Json(SourceHead {
        source,
        held_through: held,
        head: hash,
    })
    .into_response()
}

#[derive(serde::Deserialize)]
struct After {
    after: u64,
}

async fn notices(
    State(st): State<Arc<HubState>>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<After>,
) -> Response {
    if let Err(r) = authenticate(&st, "GET", &uri, &headers, b"") {
        return *r;
    }
    let list = lock(&st.notices)
        .iter()
        .filter(|n| n.id > q.after)
        .cloned()
        .collect();
    axum::Json(NoticesPage { notices: list }).into_response()
}

async fn ack(
    State(st): State<Arc<HubState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authenticate(&st, "POST", &uri, &headers, &body) {
        return *r;
    }
    match serde_json::from_slice::<NoticeAck>(&body) {
        Ok(a) => {
            let mut acked = lock(&st.acked_notices);
            *acked = (*acked).max(a.through);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            Some(RefusalCode::Invalid),
            &e.to_string(),
        ),
    }
}

fn roll(st: &HubState, p: f64) -> bool {
    p > 0.0 && lock(&st.rng).random_bool(p.min(1.0))
}

fn count(st: &HubState, what: &'static str) {
    *lock(&st.injected).entry(what).or_default() += 1;
}

async fn ingest(State(st): State<Arc<HubState>>, headers: HeaderMap, body: Bytes) -> Response {
    *lock(&st.ingests) += 1;
    let f = *lock(&st.faults);
    if roll(&st, f.unavailable) {
        count(&st, "503");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "fake hub: unavailable",
        );
    }
    if roll(&st, f.rate_limited) {
        count(&st, "429");
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            Some(RefusalCode::RateLimited),
            "slow down",
        );
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return r;
    }
    if roll(&st, f.reset_before) {
        count(&st, "reset_before");
        return cut();
    }
    if roll(&st, f.slow) {
        count(&st, "slow");
        tokio::time::sleep(f.slow_by).await;
    }
    let gz = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let raw = if gz {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return error(
                StatusCode::BAD_REQUEST,
                Some(RefusalCode::Invalid),
                "bad gzip",
            );
        }
        out
    } else {
        body.to_vec()
    };
    let batch: IngestBatch = match serde_json::from_slice(&raw) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                Some(RefusalCode::Invalid),
                &e.to_string(),
            );
        }
    };
    let (status, resp) = apply(&st, batch);
    let (status, resp) = match (status, resp) {
        (s, Ok(r)) => (s, r),
        (_, Err(r)) => return r,
    };
    if roll(&st, f.reset_after) {
        count(&st, "reset_after");
        return cut();
    }
    (status, axum::Json(resp)).into_response()
}

fn apply(st: &HubState, batch: IngestBatch) -> (StatusCode, Result<IngestResponse, Response>) {
    let mut sources = lock(&st.sources);
    let Some(src) = sources.get_mut(&batch.source) else {
        return (
            StatusCode::UNAUTHORIZED,
            Err(error(
                StatusCode::UNAUTHORIZED,
                Some(RefusalCode::UnknownSource),
                "source is not registered at this hub",
            )),
        );
    };
    if src.revoked {
        return (
            StatusCode::FORBIDDEN,
            Err(error(
                StatusCode::FORBIDDEN,
                Some(RefusalCode::RevokedKey),
                "the source's key was revoked",
            )),
        );
    }
    let mut resp = IngestResponse::default();
    let mut status = StatusCode::OK;
    for env in batch.entries {
        let held = src.entries.len() as u64;
        let seq = match Entry::from_payload(&env.payload) {
            Ok(e) => e.seq,
            Err(e) => {
                status = StatusCode::UNPROCESSABLE_ENTITY;
                resp.refused.push(Refusal {
                    seq: None,
                    code: RefusalCode::Invalid,
                    reason: e.to_string(),
                });
                break;
            }
        };
        if seq <= held {
            let i = (seq - 1) as usize;
            if src.entries[i].payload_hash() == env.payload_hash() {
                resp.receipts.push(src.receipts[i].clone());
                continue;
            }
            status = StatusCode::CONFLICT;
            resp.refused.push(Refusal {
                seq: Some(seq),
                code: RefusalCode::Fork,
                reason: format!("a different entry is held for seq {seq}"),
            });
            break;
        }
        if seq > held + 1 {
            status = StatusCode::CONFLICT;
            resp.refused.push(Refusal {
                seq: Some(seq),
                code: RefusalCode::Gap,
                reason: format!("expected seq {}", held + 1),
            });
            resp.resend_from = Some(held + 1);
            break;
        }
        match src.verifier.push(&env) {
            Ok(_) => {
                let mut log = lock(&st.log_len);
                let receipt = Receipt {
                    source: batch.source.clone(),
                    seq,
                    entry_hash: env.payload_hash(),
                    log_index: *log,
                    received_at: Utc::now(),
                }
                .sign(&st.key);
                *log += 1;
                src.entries.push(env);
                src.receipts.push(receipt.clone());
                resp.receipts.push(receipt);
            }
            Err(e) => {
                let code = match e {
                    ChainError::BadSignature { .. } => RefusalCode::BadSignature,
                    ChainError::OutOfScope { .. } => RefusalCode::OutOfScope,
                    ChainError::BadPrev { .. } => RefusalCode::BadPrev,
                    ChainError::Fork { .. } => RefusalCode::Fork,
                    _ => RefusalCode::Invalid,
                };
                status = StatusCode::UNPROCESSABLE_ENTITY;
                resp.refused.push(Refusal {
                    seq: Some(seq),
                    code,
                    reason: e.to_string(),
                });
                break;
            }
        }
    }
    let _ = src.scope;
    resp.held_through = src.entries.len() as u64;
    (status, Ok(resp))
}
