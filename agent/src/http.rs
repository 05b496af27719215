//! The local HTTP API, built in one place by [`app`].
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/records` | a batch (`application/json`: an object, an array or NDJSON; `application/x-ndjson`; `text/csv` for space counts); `?dry_run=true` judges only; `Idempotency-Key` makes retries safe |
//! | GET | `/v1/status` | the status report (same JSON as `status --json`) |
//! | GET | `/v1/notices` | notices received, newest first (changes nothing) |
//! | POST | `/v1/notices/read` | `{"up_to": ID}`: marks notices up to ID read |
//! | POST (or GET) | `/v1/verify` | runs `verify` on the live store, one at a time |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/healthz` | `ok` |
//! | GET | `/readyz` | `ready`, or 503 `not ready: <why>` (store unreadable, an alarm, catching up after a restore — intake closed —, or the hub not reached with the buffer 80 % full) |
//!
//! Who may call ([`guard`], before any handler): every request except `GET /healthz` (and
//! `GET /readyz`, which skips only step 3)
//! 1. carries no `Origin` header, else 403 — browsers send one on cross-site requests, so a
//!    web page open on the agent's machine cannot use the API;
//! 2. names a `Host` this agent answers for ([`Edge`]), else 421 Misdirected Request — that
//!    defeats DNS rebinding, where a page's own host name resolves to 127.0.0.1;
//! 3. carries `Authorization: Bearer <intake.token>`, else 401.
//!
//! `POST /v1/records` then parses only JSON, NDJSON and CSV media types (anything else, or
//! none, is 415): a browser form can send `text/plain` without asking, never these.
//! No GET changes state.
//!
//! Every non-2xx answer is a [`spacesync_shared::wire::ErrorBody`]. Client errors say why;
//! internal errors say "see the agent's log" and are logged once here. Values a client
//! sent (Host, Origin, keys) are quoted escaped and cut short in answers and logs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use spacesync_shared::batch::Format;
use spacesync_shared::clock::Clock;
use spacesync_shared::wire::ErrorBody;
use tokio::sync::Semaphore;
use tracing::{debug, error, warn};

use crate::config::Config;
use crate::intake::{self, Identity, IntakeError, IntakeHandle, Submission};
use crate::push::{SharedPushState, lock};
use crate::status;
use crate::store::Store;
use crate::{token, verify};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The writer task.
    pub intake: IntakeHandle,
    /// Read access for status, notices and verify.
    pub store: Store,
    /// The configuration (limits, identity for status).
    pub cfg: Arc<Config>,
    /// Who signs (for verify).
    pub ident: Arc<Identity>,
    /// The pusher's view.
    pub push: SharedPushState,
    /// The agent clock.
    pub clock: Arc<dyn Clock>,
    /// Who may call: the token and the Host values answered.
    pub edge: Arc<Edge>,
    /// One permit: `verify` reads the whole store, so only one runs at a time.
    pub verifying: Arc<Semaphore>,
    /// Asks the pusher for `verify --against-hub` (`None`: no pusher, as in some tests).
    pub asks: Option<crate::push::Asks>,
}

/// The query of `/v1/verify`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    /// Also prove every receipted entry in the hub's log (`verify --against-hub`).
    #[serde(default)]
    against_hub: bool,
}

/// The query of `/v1/evidence`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceQuery {
    /// The entry's seq.
    seq: u64,
    /// An earlier checkpoint size to prove it in (`evidence --at-size`).
    at_size: Option<u64>,
}

/// `GET /v1/evidence?seq=N`: the dispute evidence file of entry `N` (what `evidence --seq N`
/// writes), built while the agent runs. It reads the store and asks the hub; it writes
/// nothing.
async fn get_evidence(
    State(st): State<AppState>,
    q: Result<Query<EvidenceQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    use crate::evidence::EvidenceError as E;
    let refuse = |status: StatusCode, error: String, retry: Option<u64>| {
        AppError::Client(
            status,
            ErrorBody {
                error,
                code: None,
                problems: vec![],
            },
            retry,
        )
    };
    let Query(q) = q.map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("{e}; /v1/evidence takes seq=N and, optionally, at_size=SIZE"),
            None,
        )
    })?;
    let hub_key = crate::hub_key::known(&st.cfg, &st.store)
        .map_err(|e| AppError::Internal(e.to_string()))?
        .ok_or_else(|| refuse(StatusCode::CONFLICT, E::NoHubKey.to_string(), None))?;
    let mut client =
        crate::push::HubClient::new(st.cfg.clone(), st.ident.clone(), st.clock.clone())
            .map_err(|e| AppError::Internal(e.to_string()))?;
    let built = crate::evidence::build(
        &mut client,
        &st.cfg.hub,
        &st.store,
        &st.ident,
        &hub_key,
        q.seq,
        q.at_size,
    )
    .await;
    match built {
        Ok((bytes, _)) => Ok((
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(bytes),
        )
            .into_response()),
        Err(e @ (E::NoEntry { .. } | E::Pruned(_) | E::NotInTree { .. })) => {
            Err(refuse(StatusCode::NOT_FOUND, e.to_string(), None))
        }
        Err(e @ (E::NoReceipt(_) | E::NotYetVerified { .. })) => {
            Err(refuse(StatusCode::CONFLICT, e.to_string(), Some(30)))
        }
        Err(e @ E::Hub { .. }) => Err(refuse(StatusCode::BAD_GATEWAY, e.to_string(), Some(30))),
        Err(e) => Err(AppError::Internal(e.to_string())),
    }
}

/// How long `/v1/verify?against_hub=true` waits for the pusher's full audit.
const FULL_AUDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// The checks every request but `/healthz` passes before a handler runs.
#[derive(Debug)]
pub struct Edge {
    /// The bearer token (`<data>/intake.token`).
    token: String,
    /// `Host` values answered, lower case, with their port.
    hosts: Vec<String>,
    /// The address shown in refusals.
    listen: SocketAddr,
    /// Refusals at the edge not yet logged, and when one last was: a hostile page can send
    /// thousands a second, so they are logged at most once per [`EDGE_LOG_EVERY`].
    unlogged: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

/// Least time between two log lines about refused web-page or wrong-Host requests.
const EDGE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Edge {
    /// The checks for an agent listening on `listen` (the address actually bound, so a
    /// port-0 listener works): `Host` must be `listen` itself; on a loopback or wildcard
    /// (0.0.0.0, [::]) listener also `localhost`, `127.0.0.1` or `[::1]` with its port;
    /// or one of `extra` (`[intake] allowed_hosts`). A wildcard listener does not accept
    /// every name: the platform's names must be listed.
    pub fn new(token: String, listen: SocketAddr, extra: &[String]) -> Edge {
        let port = listen.port();
        let mut hosts = Vec::new();
        if !listen.ip().is_unspecified() {
            hosts.push(listen.to_string());
        }
        if listen.ip().is_loopback() || listen.ip().is_unspecified() {
            for name in ["localhost", "127.0.0.1", "[::1]"] {
                hosts.push(format!("{name}:{port}"));
            }
        }
        hosts.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        hosts.sort();
        hosts.dedup();
        Edge {
            token,
            hosts,
            listen,
            unlogged: std::sync::Mutex::new((0, None)),
        }
    }

    /// Counts a refusal; returns how many (this one included) to report now, or `None`
    /// while within [`EDGE_LOG_EVERY`] of the last report. Uses monotonic real time: it
    /// protects the log, not the campaign calendar.
    fn log_refusal(&self) -> Option<u64> {
        let mut u = self.unlogged.lock().unwrap_or_else(|p| p.into_inner());
        u.0 += 1;
        let now = std::time::Instant::now();
        if u.1.is_some_and(|t| now.duration_since(t) < EDGE_LOG_EVERY) {
            return None;
        }
        let n = u.0;
        *u = (0, Some(now));
        Some(n)
    }

    /// Whether `host` (a Host header or request authority) is one this agent answers.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let with_port = if host.ends_with(']') || !host.contains(':') {
            // No port: the scheme's default, 80.
            format!("{host}:80")
        } else {
            host
        };
        self.hosts.contains(&with_port)
    }
}

/// The one error type of the handlers.
pub enum AppError {
    /// A client error with its status.
    Client(StatusCode, ErrorBody, Option<u64>),
    /// Something broke inside; logged, answered generically.
    Internal(String),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Client(status, body, retry_after) => {
                let mut r = (status, axum::Json(body)).into_response();
                if let Some(s) = retry_after
                    && let Ok(v) = HeaderValue::from_str(&s.to_string())
                {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                if status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"spacesync-agent\""),
                    );
                }
                r
            }
            AppError::Internal(msg) => {
                error!(error = %msg, "Request failed inside the agent.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(ErrorBody {
                        error:
                            "internal error in the agent; nothing was stored; see the agent's log"
                                .into(),
                        code: None,
                        problems: vec![],
                    }),
                )
                    .into_response()
            }
        }
    }
}

fn client(status: StatusCode, error: impl Into<String>, problems: Vec<String>) -> AppError {
    AppError::Client(
        status,
        ErrorBody {
            error: error.into(),
            code: None,
            problems,
        },
        None,
    )
}

/// A client-sent value, quoted with escapes and cut to 100 characters, for answers and
/// logs (never raw: it could hold a newline that forges a log line).
fn quoted(v: &[u8]) -> String {
    let text = String::from_utf8_lossy(v);
    let cut: String = text.chars().take(100).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

impl From<IntakeError> for AppError {
    fn from(e: IntakeError) -> AppError {
        match e {
            IntakeError::Refused(r) => {
                let problems = r.lines();
                client(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "the batch was refused ({} problem{}); nothing was stored; fix every problem listed and send the whole batch again",
                        problems.len(),
                        if problems.len() == 1 { "" } else { "s" }
                    ),
                    problems,
                )
            }
            IntakeError::Full {
                reason,
                retry_after_secs,
            } => AppError::Client(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody {
                    error: format!(
                        "the agent's buffer is full ({reason}); nothing was stored; retry after {retry_after_secs} s — entries drain as the hub receipts them"
                    ),
                    code: None,
                    problems: vec![],
                },
                Some(retry_after_secs),
            ),
            e @ IntakeError::TooLarge { .. } => {
                client(StatusCode::PAYLOAD_TOO_LARGE, e.to_string(), vec![])
            }
            e @ IntakeError::KeyReused { .. } => {
                client(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), vec![])
            }
            e @ IntakeError::BadKey(_) => client(StatusCode::BAD_REQUEST, e.to_string(), vec![]),
            IntakeError::Stopped => AppError::Client(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody {
                    error: "the agent is shutting down; nothing was stored; retry shortly".into(),
                    code: None,
                    problems: vec![],
                },
                Some(5),
            ),
            e @ IntakeError::CatchingUp => AppError::Client(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody {
                    error: e.to_string(),
                    code: None,
                    problems: vec![],
                },
                Some(5),
            ),
            IntakeError::Store(e) => AppError::Internal(e.to_string()),
        }
    }
}

/// The router.
pub fn app(state: AppState) -> Router {
    let limit = state.cfg.intake.max_body_bytes;
    let edge = state.edge.clone();
    Router::new()
        .route("/v1/records", post(post_records))
        .route("/v1/status", get(get_status))
        .route("/v1/notices", get(get_notices))
        .route("/v1/notices/read", post(post_notices_read))
        .route("/v1/verify", post(run_verify).get(run_verify))
        .route("/v1/evidence", get(get_evidence))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(get_readyz))
        .route("/metrics", get(get_metrics))
        .fallback(|| async {
            client(
                StatusCode::NOT_FOUND,
                "no such endpoint; the agent serves /v1/records, /v1/status, /v1/notices, /v1/notices/read, /v1/verify, /v1/evidence, /metrics, /healthz and /readyz",
                vec![],
            )
        })
        .method_not_allowed_fallback(|| async {
            client(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method (records, notices/read and verify are POST; status, notices and metrics are GET)",
                vec![],
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(edge, guard))
        .with_state(state)
}

/// Share of a buffer limit (entries or bytes) above which a hub that is not reached makes
/// the agent not ready: intake refuses at the limit, so an alert must come before.
const READY_BUFFER_SHARE: f64 = 0.8;

/// Why the agent is not ready, or `None`: the store reads, no alarm stops pushing, the
/// store is not catching up with the hub (restored from a backup: intake is closed until
/// it holds what the hub holds), and the hub is reached or what waits for it is under
/// [`READY_BUFFER_SHARE`] of the buffer limits.
pub fn not_ready(s: &AppState) -> Option<String> {
    let (head, _) = match s.store.head() {
        Ok(h) => h,
        Err(e) => return Some(format!("the store cannot be read: {e}")),
    };
    let acked = match s.store.acked() {
        Ok(a) => a,
        Err(e) => return Some(format!("the store cannot be read: {e}")),
    };
    let push = lock(&s.push).clone();
    if let Some(a) = &push.alarm {
        return Some(format!(
            "pushing stopped by the alarm {}: {}",
            a.code, a.reason
        ));
    }
    match s.store.catching_up() {
        Ok(false) => {}
        Ok(true) => {
            return Some(
                "catching up with the hub (taking back the entries it holds of this chain, as this data directory was restored from a backup); intake accepts no records until then — see `spacesync-agent status`".into(),
            );
        }
        Err(e) => return Some(format!("the store cannot be read: {e}")),
    }
    if push.hub_reachable == Some(false) {
        let waiting = head.saturating_sub(acked);
        let bytes = s.store.buffered_bytes().unwrap_or(0);
        let b = s.cfg.buffer;
        if waiting as f64 >= b.max_entries as f64 * READY_BUFFER_SHARE
            || bytes as f64 >= b.max_bytes as f64 * READY_BUFFER_SHARE
        {
            return Some(format!(
                "the hub is not reached and the buffer is nearly full ({waiting} of {} entries, {bytes} of {} bytes)",
                b.max_entries, b.max_bytes
            ));
        }
    }
    None
}

/// `GET /readyz` (no token, like `/healthz`): 200 `ready`, or 503 in the error JSON with
/// the reason (and `Retry-After: 5`, as every 503 of the agent).
async fn get_readyz(State(s): State<AppState>) -> Response {
    match not_ready(&s) {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => AppError::Client(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody {
                error: format!("not ready: {why}"),
                code: None,
                problems: vec![],
            },
            Some(5),
        )
        .into_response(),
    }
}

/// Origin, Host and bearer token, in that order, for every request but `GET /healthz`
/// (and no token for `GET /readyz`). Refusals happen before the body is read and change
/// nothing.
pub async fn guard(State(edge): State<Arc<Edge>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = quoted(origin.as_bytes());
        if let Some(n) = edge.log_refusal() {
            warn!(origin = %origin, path = ?req.uri().path(), refused = n, "Refused requests from a web page (they carry an Origin header); at most one line per 10 s.");
        }
        return client(
            StatusCode::FORBIDDEN,
            format!(
                "requests from web pages are refused (this one carries Origin: {origin}); the agent's API is for the platform's server, not for browsers; nothing was done"
            ),
            vec![],
        )
        .into_response();
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(h.as_bytes().to_vec()),
        (None, None) => req
            .uri()
            .authority()
            .map(|a| a.as_str().as_bytes().to_vec()),
        _ => None,
    };
    // An absolute-form target (`POST http://name/…`) names the host the client meant, and
    // HTTP/1.1 says it wins over the Host header: both must be one this agent answers for.
    let target = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec());
    let host = match target {
        Some(t) if !edge.host_allowed(&String::from_utf8_lossy(&t)) => Some(t),
        _ => host,
    };
    let allowed = host
        .as_deref()
        .and_then(|h| std::str::from_utf8(h).ok())
        .is_some_and(|h| edge.host_allowed(h));
    if !allowed {
        let shown = host.as_deref().map(quoted).unwrap_or_else(|| "none".into());
        if let Some(n) = edge.log_refusal() {
            warn!(host = %shown, path = ?req.uri().path(), refused = n, "Refused requests for a Host this agent does not answer; at most one line per 10 s.");
        }
        return client(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this agent does not answer for Host {shown}; call it as {} (or localhost with that port when it listens on loopback), or add the name the platform uses to [intake] allowed_hosts in agent.toml; nothing was done",
                edge.listen
            ),
            vec![],
        )
        .into_response();
    }
    // `/readyz` needs no token (probes have none), but its reasons (alarms, buffer
    // counts) are not for a web page that rebound a name to this agent: Origin and Host
    // are checked as for the API.
    if req.uri().path() == "/readyz" {
        return next.run(req).await;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    if !token::matches(given, &edge.token) {
        debug!(path = ?req.uri().path(), "Refused a request without the right bearer token.");
        return client(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token; send `Authorization: Bearer <token>` with the token in the agent's intake.token file (`spacesync-agent token` prints it); nothing was done",
            vec![],
        )
        .into_response();
    }
    next.run(req).await
}

/// The batch format a Content-Type names; 415 for anything but JSON, NDJSON and CSV (in
/// UTF-8), or none.
fn media_format(headers: &HeaderMap) -> Result<Format, AppError> {
    let unsupported = |why: String| {
        client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{why}; send application/json (a record, an array or NDJSON), application/x-ndjson or text/csv (space counts), in UTF-8; nothing was stored"
            ),
            vec![],
        )
    };
    let mut all = headers.get_all(header::CONTENT_TYPE).iter();
    let value = match (all.next(), all.next()) {
        (Some(v), None) => v,
        (None, _) => return Err(unsupported("the request has no Content-Type".into())),
        _ => {
            return Err(unsupported(
                "the request has more than one Content-Type".into(),
            ));
        }
    };
    let shown = quoted(value.as_bytes());
    let text = value
        .to_str()
        .map_err(|_| unsupported(format!("unsupported Content-Type {shown}")))?;
    let mut parts = text.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("charset")
        {
            let v = v.trim().trim_matches('"');
            if !(v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")) {
                return Err(unsupported(format!(
                    "unsupported character set in Content-Type {shown}"
                )));
            }
        }
    }
    match mime.as_str() {
        "application/json" | "application/x-ndjson" | "application/ndjson" => Ok(Format::Json),
        "text/csv" => Ok(Format::Csv),
        _ => Err(unsupported(format!("unsupported Content-Type {shown}"))),
    }
}

/// The `Idempotency-Key` header, checked: at most one, 1–200 bytes of visible ASCII.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let mut all = headers.get_all("idempotency-key").iter();
    let v = match (all.next(), all.next()) {
        (None, _) => return Ok(None),
        (Some(v), None) => v,
        _ => {
            return Err(client(
                StatusCode::BAD_REQUEST,
                "the request has more than one Idempotency-Key; send one; nothing was stored",
                vec![],
            ));
        }
    };
    intake::check_key(v.as_bytes()).map_err(|why| {
        client(
            StatusCode::BAD_REQUEST,
            format!("{why}; nothing was stored"),
            vec![],
        )
    })?;
    Ok(Some(String::from_utf8_lossy(v.as_bytes()).into_owned()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn post_records(
    State(st): State<AppState>,
    query: Result<Query<RecordsQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, AppError> {
    let Query(q) = query.map_err(|e| {
        client(
            StatusCode::BAD_REQUEST,
            format!("{e}; the only parameter is dry_run=true|false; nothing was stored"),
            vec![],
        )
    })?;
    let format = media_format(req.headers())?;
    let idempotency_key = idempotency_key(req.headers())?;
    let limit = st.cfg.intake.max_body_bytes;
    let body = Bytes::from_request(req, &st).await.map_err(|e| {
        client(
            e.status(),
            format!(
                "cannot read the request body ({e}); the limit is intake.max_body_bytes = {limit} bytes — split the batch; nothing was stored"
            ),
            vec![],
        )
    })?;
    let answer = st
        .intake
        .submit(Submission {
            body: body.to_vec(),
            format,
            dry_run: q.dry_run,
            idempotency_key,
        })
        .await?;
    Ok(axum::Json(answer).into_response())
}

fn report(st: &AppState) -> Result<status::StatusReport, AppError> {
    let push = lock(&st.push).clone();
    status::report(&st.store, &st.cfg, &push, &*st.clock, true)
        .map_err(|e| AppError::Internal(e.to_string()))
}

async fn get_status(State(st): State<AppState>) -> Result<Response, AppError> {
    Ok(axum::Json(report(&st)?).into_response())
}

async fn get_metrics(State(st): State<AppState>) -> Result<Response, AppError> {
    let text = status::render_metrics(&report(&st)?);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn get_notices(State(st): State<AppState>) -> Result<Response, AppError> {
    let mut list = st
        .store
        .notices_after(0)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    list.reverse();
    Ok(axum::Json(list).into_response())
}

/// Body of `POST /v1/notices/read`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// Notices with ids up to this one are marked read.
    pub up_to: u64,
}

/// Answer of `POST /v1/notices/read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    /// Notices up to this id are now read (never beyond the newest held).
    pub read_through: u64,
    /// Notices still unread.
    pub unread: u64,
}

async fn post_notices_read(State(st): State<AppState>, req: Request) -> Result<Response, AppError> {
    let bad = |why: String| {
        client(
            StatusCode::BAD_REQUEST,
            format!(
                "{why}; send {{\"up_to\": <notice id>}} as application/json; nothing was changed"
            ),
            vec![],
        )
    };
    // JSON only (not NDJSON or CSV), in UTF-8.
    let json = media_format(req.headers()).is_ok()
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send {\"up_to\": <notice id>} as application/json; nothing was changed",
            vec![],
        ));
    }
    let body = Bytes::from_request(req, &st)
        .await
        .map_err(|e| bad(format!("cannot read the request body ({e})")))?;
    let m: MarkRead =
        serde_json::from_slice(&body).map_err(|e| bad(format!("unreadable body ({e})")))?;
    let read_through = st
        .store
        .mark_notices_read(m.up_to)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let unread = st
        .store
        .unread_notices()
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(axum::Json(ReadMark {
        read_through,
        unread,
    })
    .into_response())
}

async fn run_verify(
    State(st): State<AppState>,
    q: Result<Query<VerifyQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = q.map_err(|e| {
        AppError::Client(
            StatusCode::BAD_REQUEST,
            ErrorBody {
                error: format!("{e}; /v1/verify takes only against_hub=true|false"),
                code: None,
                problems: vec![],
            },
            None,
        )
    })?;
    let Ok(_permit) = st.verifying.clone().try_acquire_owned() else {
        return Err(AppError::Client(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody {
                error: "a verify is already running; retry when it is done".into(),
                code: None,
                problems: vec![],
            },
            Some(5),
        ));
    };
    let hub_key =
        crate::hub_key::known(&st.cfg, &st.store).map_err(|e| AppError::Internal(e.to_string()))?;
    let store = st.store.clone();
    let ident = st.ident.clone();
    let mut rep =
        tokio::task::spawn_blocking(move || verify::verify(&store, &ident, hub_key.as_ref()))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
            .map_err(|e| AppError::Internal(e.to_string()))?;
    if q.against_hub {
        let unavailable = |error: String| {
            AppError::Client(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody {
                    error: format!("verify against the hub: {error}"),
                    code: None,
                    problems: vec![],
                },
                Some(30),
            )
        };
        let asks = st
            .asks
            .as_ref()
            .ok_or_else(|| unavailable("this agent has no pusher".into()))?;
        rep.against_hub = Some(
            asks.full_audit(FULL_AUDIT_WAIT)
                .await
                .map_err(unavailable)?,
        );
    }
    Ok(axum::Json(rep).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BufferConfig;
    use crate::intake::tests::identity;
    use crate::intake::{Writer, spawn_writer};
    use axum::body::Body;
    use chrono::Duration;
    use spacesync_shared::clock::FixedClock;
    use spacesync_shared::wire::Notice;
    use tower::ServiceExt as _;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef-test";
    const HOST: &str = "127.0.0.1:7300";
    const ACT: &str = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;

    /// An app over a fresh store, with a clock the test can move.
    struct Fixture {
        app: Router,
        store: Store,
        push: SharedPushState,
        clock: Arc<FixedClock>,
        _dir: tempfile::TempDir,
    }

    struct Setup {
        listen: &'static str,
        allowed_hosts: Vec<String>,
        buffer: BufferConfig,
        retention_secs: u64,
    }

    impl Default for Setup {
        fn default() -> Self {
            Setup {
                listen: HOST,
                allowed_hosts: vec![],
                buffer: BufferConfig::default(),
                retention_secs: crate::config::DEFAULT_IDEMPOTENCY_RETENTION_SECS,
            }
        }
    }

    fn fixture(s: Setup) -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let t = chrono::DateTime::parse_from_rfc3339("2018-11-25T10:00:00+08:00")
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&chrono::Utc);
        let clock = Arc::new(FixedClock::new(t));
        let writer = Writer::open(
            store.clone(),
            identity(),
            clock.clone(),
            s.buffer,
            1000,
            1,
            s.retention_secs,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (intake, _task) = spawn_writer(writer, Arc::default());
        let mut cfg = Config::new(
            "gd-rrt".parse().unwrap_or_else(|e| panic!("{e}")),
            "440000".parse().unwrap_or_else(|e| panic!("{e}")),
            "http://127.0.0.1:9".into(),
        );
        cfg.intake.allowed_hosts = s.allowed_hosts.clone();
        cfg.buffer = s.buffer;
        let push: SharedPushState = Arc::default();
        let listen: SocketAddr = s.listen.parse().unwrap_or_else(|e| panic!("{e}"));
        let app = app(AppState {
            intake,
            store: store.clone(),
            edge: Arc::new(Edge::new(TOKEN.into(), listen, &cfg.intake.allowed_hosts)),
            cfg: Arc::new(cfg),
            ident: identity(),
            push: push.clone(),
            clock: clock.clone(),
            verifying: Arc::new(Semaphore::new(1)),
            asks: None,
        });
        Fixture {
            app,
            store,
            push,
            clock,
            _dir: dir,
        }
    }

    /// What a refused request must leave as it was: head seq, buffered entries,
    /// idempotency keys, unread notices.
    fn snapshot(store: &Store) -> (u64, u64, usize, u64) {
        let head = store.head().map(|h| h.0).unwrap_or_else(|e| panic!("{e}"));
        let acked = store.acked().unwrap_or_else(|e| panic!("{e}"));
        let unread = store.unread_notices().unwrap_or_else(|e| panic!("{e}"));
        (head, head - acked, store.idem_count(), unread)
    }

    /// A request as the platform sends it: right Host, right token.
    fn req(method: &str, path: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, HOST)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
    }

    fn post(body: &str, ct: &str) -> Request<Body> {
        req("POST", "/v1/records")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body.to_string()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn empty(b: axum::http::request::Builder) -> Request<Body> {
        b.body(Body::empty()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends one request through the router (no socket) and checks status and body.
    async fn check(app: &Router, req: Request<Body>, status: u16, expected: &[&str]) -> String {
        let resp = app
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {});
        let got = resp.status().as_u16();
        let retry = resp.headers().get(header::RETRY_AFTER).is_some();
        let challenge = resp.headers().get(header::WWW_AUTHENTICATE).is_some();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(got, status, "{text}");
        assert_eq!(retry, status == 503, "Retry-After only on 503");
        assert_eq!(challenge, status == 401, "WWW-Authenticate only on 401");
        if !(200..300).contains(&got) {
            let e: ErrorBody = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("not the standard error JSON ({e}): {text}"));
            assert!(!e.error.is_empty());
        }
        for e in expected {
            assert!(text.contains(e), "{e:?} not in {text}");
        }
        text
    }

    #[tokio::test]
    async fn the_edge_answers_every_case_in_one_error_format() {
        let f = fixture(Setup::default());
        let app = &f.app;
        check(
            app,
            post("{\"kind\":\"party\"}", "application/json"),
            422,
            &[
                "nothing was stored",
                "record 1 (line 1): kind: unknown kind \\\"party\\\"",
            ],
        )
        .await;
        check(
            app,
            post("region,as_of\n", "text/csv"),
            422,
            &["the batch is empty"],
        )
        .await;
        check(app, post(ACT, "application/json"), 200, &["\"seqs\":[1]"]).await;
        check(
            app,
            empty(req("GET", "/v1/status")),
            200,
            &["\"head_seq\":1", "\"buffered\":1"],
        )
        .await;
        check(app, empty(req("GET", "/healthz")), 200, &["ok"]).await;
        check(
            app,
            empty(req("GET", "/metrics")),
            200,
            &["spacesync_agent_head_seq 1"],
        )
        .await;
        check(
            app,
            empty(req("POST", "/v1/verify")),
            200,
            &["\"problems\":[]"],
        )
        .await;
        check(
            app,
            empty(req("GET", "/v1/verify")),
            200,
            &["\"problems\":[]"],
        )
        .await;
        check(
            app,
            empty(req("GET", "/v1/nothing")),
            404,
            &["no such endpoint"],
        )
        .await;
        check(app, empty(req("GET", "/v1/records")), 405, &["POST"]).await;
        check(
            app,
            empty(req("POST", "/v1/records?dry_run=maybe")),
            400,
            &["dry_run"],
        )
        .await;
        assert_eq!(snapshot(&f.store), (1, 1, 0, 0));
    }

    #[tokio::test]
    async fn a_full_buffer_is_503_with_retry_after() {
        let f = fixture(Setup {
            buffer: BufferConfig {
                max_entries: 1,
                max_bytes: 1 << 20,
            },
            ..Setup::default()
        });
        check(&f.app, post(ACT, "application/json"), 200, &[]).await;
        check(
            &f.app,
            post(ACT, "application/json"),
            503,
            &["buffer is full"],
        )
        .await;
        assert_eq!(snapshot(&f.store), (1, 1, 0, 0));
    }

    #[tokio::test]
    async fn every_endpoint_but_healthz_needs_the_token() {
        let f = fixture(Setup::default());
        f.store
            .put_notices(&[notice(1)])
            .unwrap_or_else(|e| panic!("{e}"));
        let before = snapshot(&f.store);
        let endpoints: [(&str, &str, &str, &str); 7] = [
            ("POST", "/v1/records", "application/json", ACT),
            ("GET", "/v1/status", "", ""),
            ("GET", "/v1/notices", "", ""),
            (
                "POST",
                "/v1/notices/read",
                "application/json",
                "{\"up_to\":1}",
            ),
            ("POST", "/v1/verify", "", ""),
            ("GET", "/v1/verify", "", ""),
            ("GET", "/metrics", "", ""),
        ];
        let wrong = [
            None,
            Some("Bearer".to_string()),
            Some("Bearer ".to_string()),
            Some("Bearer wrong".to_string()),
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            Some(format!("Bearer {TOKEN}x")),
            Some(format!("Basic {TOKEN}")),
            Some(TOKEN.to_string()),
        ];
        for (method, path, ct, body) in endpoints {
            for auth in &wrong {
                let mut b = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(header::HOST, HOST);
                if !ct.is_empty() {
                    b = b.header(header::CONTENT_TYPE, ct);
                }
                if let Some(a) = auth {
                    b = b.header(header::AUTHORIZATION, a);
                }
                let r = b
                    .body(Body::from(body.to_string()))
                    .unwrap_or_else(|e| panic!("{e}"));
                check(&f.app, r, 401, &["bearer token", "intake.token"]).await;
            }
        }
        let health = Request::get("/healthz")
            .header(header::HOST, HOST)
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        check(&f.app, health, 200, &["ok"]).await;
        assert_eq!(snapshot(&f.store), before);
    }

    #[tokio::test]
    async fn only_json_ndjson_and_csv_bodies_are_parsed() {
        let f = fixture(Setup::default());
        for ct in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "text/csv; charset=gbk",
            "application/json; charset=latin1",
        ] {
            check(
                &f.app,
                post(ACT, ct),
                415,
                &["Content-Type", "nothing was stored"],
            )
            .await;
        }
        // No Content-Type at all.
        let none = req("POST", "/v1/records")
            .body(Body::from(ACT))
            .unwrap_or_else(|e| panic!("{e}"));
        check(&f.app, none, 415, &["no Content-Type"]).await;
        assert_eq!(snapshot(&f.store), (0, 0, 0, 0), "nothing stored");
        for (n, ct) in (1..).zip([
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/x-ndjson",
            "application/ndjson",
        ]) {
            check(&f.app, post(ACT, ct), 200, &[&format!("\"seqs\":[{n}]")]).await;
        }
        let csv = "region,school,as_of,teacher\n440106,4401060001,2018-11-20,10\n";
        check(
            &f.app,
            post(csv, "text/csv; charset=utf-8"),
            200,
            &["\"seqs\":[5]"],
        )
        .await;
    }

    #[tokio::test]
    async fn requests_from_web_pages_are_refused() {
        let f = fixture(Setup::default());
        // The cross-site form POST of the report: text/plain and an Origin, token or not.
        for (ct, origin) in [
            ("text/plain", "https://evil.example"),
            ("application/json", "https://evil.example"),
            ("application/json", "null"),
            ("application/json", "http://127.0.0.1:7300"),
        ] {
            let r = req("POST", "/v1/records")
                .header(header::CONTENT_TYPE, ct)
                .header(header::ORIGIN, origin)
                .body(Body::from(
                    r#"{"kind":"withdrawal","target_seq":1,"reason":"x"}"#,
                ))
                .unwrap_or_else(|e| panic!("{e}"));
            check(&f.app, r, 403, &["web pages", "nothing was done"]).await;
        }
        let r = req("GET", "/v1/status")
            .header(header::ORIGIN, "https://evil.example\r\nforged")
            .body(Body::empty());
        // A header value with CR/LF cannot even be built; a plain one is refused.
        assert!(r.is_err());
        let r = empty(req("GET", "/v1/status").header(header::ORIGIN, "https://evil.example"));
        check(&f.app, r, 403, &["evil.example"]).await;
        assert_eq!(snapshot(&f.store), (0, 0, 0, 0));
    }

    fn with_host(host: Option<&str>, uri: &str) -> Request<Body> {
        let mut b = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(Body::from(ACT)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn only_the_hosts_this_agent_answers_for_are_served() {
        let f = fixture(Setup {
            allowed_hosts: vec!["Agent.GD.example:7300".into()],
            ..Setup::default()
        });
        for host in [
            Some("evil.example:7300"),
            Some("evil.example"),
            Some("127.0.0.1:7301"),
            Some("127.0.0.1"),
            Some("localhost.:7300"),
            Some("agent.gd.example:7301"),
            Some("0.0.0.0:7300"),
            None,
        ] {
            check(
                &f.app,
                with_host(host, "/v1/records"),
                421,
                &[
                    "does not answer for Host",
                    "allowed_hosts",
                    "nothing was done",
                ],
            )
            .await;
        }
        // An absolute URI's authority counts like a Host header, and wins over one.
        for host in [None, Some("127.0.0.1:7300"), Some("agent.gd.example:7300")] {
            check(
                &f.app,
                with_host(host, "http://evil.example:7300/v1/records"),
                421,
                &["evil.example"],
            )
            .await;
        }
        assert_eq!(snapshot(&f.store), (0, 0, 0, 0));
        for (n, host) in (1..).zip([
            "127.0.0.1:7300",
            "localhost:7300",
            "LOCALHOST:7300",
            "agent.gd.example:7300",
        ]) {
            check(
                &f.app,
                with_host(Some(host), "/v1/records"),
                200,
                &[&format!("\"seqs\":[{n}]")],
            )
            .await;
        }
        check(
            &f.app,
            with_host(None, "http://127.0.0.1:7300/v1/records"),
            200,
            &["\"seqs\":[5]"],
        )
        .await;
        // /healthz answers any Host: it reveals and changes nothing, and probes use IPs.
        let health = Request::get("/healthz")
            .header(header::HOST, "evil.example")
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        check(&f.app, health, 200, &["ok"]).await;
    }

    #[test]
    fn a_wildcard_listener_still_answers_only_known_hosts() {
        let check = |listen: &str, extra: &[&str], host: &str, want: bool| {
            let listen: SocketAddr = listen.parse().unwrap_or_else(|e| panic!("{e}"));
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            let edge = Edge::new(TOKEN.into(), listen, &extra);
            assert_eq!(edge.host_allowed(host), want, "{listen} {extra:?} {host}");
        };
        check("0.0.0.0:7300", &[], "localhost:7300", true);
        check("0.0.0.0:7300", &[], "127.0.0.1:7300", true);
        check("0.0.0.0:7300", &[], "0.0.0.0:7300", false);
        check("0.0.0.0:7300", &[], "192.168.1.5:7300", false);
        check(
            "0.0.0.0:7300",
            &["192.168.1.5:7300"],
            "192.168.1.5:7300",
            true,
        );
        check("[::]:7300", &[], "[::1]:7300", true);
        check("[::]:7300", &[], "[fe80::1]:7300", false);
        check("[::1]:7300", &[], "[::1]:7300", true);
        check("192.168.1.5:7300", &[], "192.168.1.5:7300", true);
        check("192.168.1.5:7300", &[], "localhost:7300", false);
        check("127.0.0.1:80", &[], "localhost", true);
        check("127.0.0.1:80", &[], "localhost:80", true);
        check("127.0.0.1:7300", &[], "localhost", false);
    }

    fn notice(id: u64) -> Notice {
        Notice {
            id,
            rule: "overdue".into(),
            subject: "440000".parse().unwrap_or_else(|e| panic!("{e}")),
            addressee: "440000".parse().unwrap_or_else(|e| panic!("{e}")),
            created_at: chrono::DateTime::UNIX_EPOCH,
            deadline: None,
            text: "逾期".into(),
            text_en: "overdue".into(),
            facts: Default::default(),
        }
    }

    fn mark_read(body: &str, ct: &str) -> Request<Body> {
        req("POST", "/v1/notices/read")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body.to_string()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn reading_notices_changes_nothing_and_marking_them_is_a_post() {
        let f = fixture(Setup::default());
        f.store
            .put_notices(&[notice(1), notice(2), notice(3)])
            .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..2 {
            let text = check(&f.app, empty(req("GET", "/v1/notices")), 200, &[]).await;
            let ids: Vec<u64> = serde_json::from_str::<Vec<Notice>>(&text)
                .unwrap_or_default()
                .iter()
                .map(|n| n.id)
                .collect();
            assert_eq!(ids, [3, 2, 1], "newest first");
            assert_eq!(snapshot(&f.store), (0, 0, 0, 3), "GET leaves them unread");
        }
        check(
            &f.app,
            empty(req("GET", "/v1/status")),
            200,
            &["\"unread_notices\":3"],
        )
        .await;
        // Refused marks change nothing.
        for (body, ct, status) in [
            ("{\"up_to\":2}", "text/plain", 415),
            ("{\"up_to\":2}", "application/x-ndjson", 415),
            ("{\"up_to\":\"2\"}", "application/json", 400),
            ("{\"up_to\":2,\"x\":1}", "application/json", 400),
            ("", "application/json", 400),
        ] {
            check(
                &f.app,
                mark_read(body, ct),
                status,
                &["nothing was changed"],
            )
            .await;
        }
        assert_eq!(snapshot(&f.store), (0, 0, 0, 3));
        check(
            &f.app,
            mark_read("{\"up_to\":2}", "application/json"),
            200,
            &["\"read_through\":2", "\"unread\":1"],
        )
        .await;
        // Beyond the newest held: only what is held is marked, later notices stay unread.
        check(
            &f.app,
            mark_read("{\"up_to\":99}", "application/json"),
            200,
            &["\"read_through\":3", "\"unread\":0"],
        )
        .await;
        f.store
            .put_notices(&[notice(4)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snapshot(&f.store), (0, 0, 0, 1));
    }

    fn keyed(key: &[u8], body: &str) -> Request<Body> {
        req("POST", "/v1/records")
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                "idempotency-key",
                HeaderValue::from_bytes(key).unwrap_or_else(|e| panic!("{e}")),
            )
            .body(Body::from(body.to_string()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn activity(title: &str) -> String {
        ACT.replace("\"title\":\"t\"", &format!("\"title\":\"{title}\""))
    }

    #[tokio::test]
    async fn readyz_needs_no_token_and_names_why_the_agent_is_not_ready() {
        let f = fixture(Setup {
            buffer: BufferConfig {
                max_entries: 5,
                max_bytes: 1 << 30,
            },
            ..Setup::default()
        });
        let bare = || {
            Request::get("/readyz")
                .header(header::HOST, HOST)
                .body(Body::empty())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        check(&f.app, bare(), 200, &["ready"]).await;
        // No token, but a page that rebound a name to the agent reads nothing.
        let foreign = Request::get("/readyz")
            .header(header::HOST, "attacker.example")
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        check(&f.app, foreign, 421, &["does not answer for Host"]).await;
        let from_page = Request::get("/readyz")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, "http://attacker.example")
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        check(&f.app, from_page, 403, &["web pages"]).await;
        // The hub not reached, little waiting: still ready (buffering is the agent's job).
        lock(&f.push).hub_reachable = Some(false);
        for i in 0..3 {
            check(
                &f.app,
                post(&activity(&format!("r{i}")), "application/json"),
                200,
                &[],
            )
            .await;
        }
        check(&f.app, bare(), 200, &["ready"]).await;
        // 4 of 5 entries waiting (80 %): not ready, saying why.
        check(&f.app, post(&activity("r3"), "application/json"), 200, &[]).await;
        check(
            &f.app,
            bare(),
            503,
            &["not ready", "buffer is nearly full", "4 of 5 entries"],
        )
        .await;
        // The hub answers again: ready, whatever waits.
        lock(&f.push).hub_reachable = Some(true);
        check(&f.app, bare(), 200, &["ready"]).await;
        // An alarm stops pushing: not ready, naming it.
        lock(&f.push).alarm = Some(crate::push::Alarm {
            code: "unknown_source".into(),
            reason: "register this source".into(),
            since: f.clock.now(),
        });
        check(&f.app, bare(), 503, &["alarm unknown_source"]).await;
        // Restored from a backup and catching up with the hub: intake is closed, not ready.
        lock(&f.push).alarm = None;
        check(&f.app, bare(), 200, &["ready"]).await;
        f.store.mark_catch_up().unwrap_or_else(|e| panic!("{e}"));
        check(
            &f.app,
            bare(),
            503,
            &[
                "not ready",
                "catching up with the hub",
                "accepts no records",
            ],
        )
        .await;
        f.store.caught_up().unwrap_or_else(|e| panic!("{e}"));
        check(&f.app, bare(), 200, &["ready"]).await;
    }

    #[tokio::test]
    async fn an_idempotency_key_is_bound_to_its_body() {
        let f = fixture(Setup::default());
        check(
            &f.app,
            keyed(b"batch-1", &activity("a")),
            200,
            &["\"seqs\":[1]"],
        )
        .await;
        check(
            &f.app,
            keyed(b"batch-1", &activity("a")),
            200,
            &["\"seqs\":[1]", "\"replayed\":true"],
        )
        .await;
        assert_eq!(snapshot(&f.store), (1, 1, 1, 0));
        // The same key with new data: refused, naming the key (escaped), nothing stored.
        check(
            &f.app,
            keyed(b"batch-1", &activity("b")),
            422,
            &[
                "Idempotency-Key \\\"batch-1\\\"",
                "nothing was stored",
                "new key",
            ],
        )
        .await;
        check(
            &f.app,
            keyed(b"q\"uote", &activity("q")),
            200,
            &["\"seqs\":[2]"],
        )
        .await;
        check(
            &f.app,
            keyed(b"q\"uote", &activity("r")),
            422,
            &["Idempotency-Key \\\"q\\\\\\\"uote\\\""],
        )
        .await;
        // The same bytes in another format are another batch.
        let mut as_csv = keyed(b"batch-1", &activity("a"));
        as_csv
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
        check(&f.app, as_csv, 422, &["another format"]).await;
        assert_eq!(snapshot(&f.store), (2, 2, 2, 0));
        // A dry run never binds a key, and is answered from a bound one.
        let dry = |key: &[u8], body: &str| {
            let mut r = keyed(key, body);
            *r.uri_mut() = "/v1/records?dry_run=true"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
            r
        };
        check(
            &f.app,
            dry(b"dry-1", &activity("d")),
            200,
            &["\"dry_run\":true"],
        )
        .await;
        check(
            &f.app,
            dry(b"batch-1", &activity("a")),
            200,
            &["\"replayed\":true"],
        )
        .await;
        check(&f.app, dry(b"batch-1", &activity("z")), 422, &["batch-1"]).await;
        assert_eq!(snapshot(&f.store), (2, 2, 2, 0));
    }

    #[tokio::test]
    async fn unusable_idempotency_keys_are_400_and_store_nothing() {
        let f = fixture(Setup::default());
        let huge = vec![b'k'; 60 * 1024];
        let long = vec![b'k'; MAX_KEY_BYTES_FOR_TEST + 1];
        for (key, want) in [
            (&huge[..], "61440 bytes long; the limit is 200"),
            (&long[..], "201 bytes long"),
            (b"" as &[u8], "empty"),
            (b"two words", "visible ASCII"),
            (b"tab\there", "visible ASCII"),
            (b"caf\xc3\xa9", "visible ASCII"),
            (b"\xff\xfe", "visible ASCII"),
        ] {
            let text = check(&f.app, keyed(key, ACT), 400, &[want, "nothing was stored"]).await;
            assert!(
                text.len() < 1000,
                "the key is not echoed: {} bytes",
                text.len()
            );
        }
        let twice = req("POST", "/v1/records")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "a")
            .header("idempotency-key", "b")
            .body(Body::from(ACT))
            .unwrap_or_else(|e| panic!("{e}"));
        check(&f.app, twice, 400, &["more than one"]).await;
        assert_eq!(snapshot(&f.store), (0, 0, 0, 0));
        let max = vec![b'k'; MAX_KEY_BYTES_FOR_TEST];
        check(&f.app, keyed(&max, ACT), 200, &["\"seqs\":[1]"]).await;
    }

    const MAX_KEY_BYTES_FOR_TEST: usize = crate::intake::MAX_KEY_BYTES;

    #[tokio::test]
    async fn idempotency_keys_expire_on_the_agent_clock_and_are_pruned() {
        let f = fixture(Setup {
            retention_secs: 3600,
            ..Setup::default()
        });
        check(
            &f.app,
            keyed(b"old", &activity("a")),
            200,
            &["\"seqs\":[1]"],
        )
        .await;
        f.clock.advance(Duration::minutes(30));
        check(
            &f.app,
            keyed(b"new", &activity("b")),
            200,
            &["\"seqs\":[2]"],
        )
        .await;
        assert_eq!(snapshot(&f.store), (2, 2, 2, 0));
        // 61 minutes after "old": any batch prunes it; "new" (31 min) is kept and still bound.
        f.clock.advance(Duration::minutes(31));
        check(
            &f.app,
            post(&activity("c"), "application/json"),
            200,
            &["\"seqs\":[3]"],
        )
        .await;
        assert_eq!(snapshot(&f.store), (3, 3, 1, 0));
        check(&f.app, keyed(b"new", &activity("x")), 422, &["new"]).await;
        // "old" is free again: new data under it is stored.
        check(
            &f.app,
            keyed(b"old", &activity("d")),
            200,
            &["\"seqs\":[4]"],
        )
        .await;
        assert_eq!(snapshot(&f.store), (4, 4, 2, 0));
        f.clock.advance(Duration::hours(2));
        check(
            &f.app,
            post(&activity("e"), "application/json"),
            200,
            &["\"seqs\":[5]"],
        )
        .await;
        assert_eq!(snapshot(&f.store), (5, 5, 0, 0), "every key pruned");
    }
}
