//! The hub's HTTP edge: the only module that knows the wire JSON and status codes.
//!
//! `app(state)` builds the whole router; tests drive it with `tower::ServiceExt::oneshot`
//! and a few real-socket tests on port 0. Every non-2xx answer is a `wire::ErrorBody`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use spacesync_shared::keys::public_key_line;

use spacesync_shared::region::{Level, PROVINCIAL_UNITS};
use spacesync_shared::wire::{
    self, ErrorBody, IngestBatch, NoticeAck, NoticesPage, PATH_AGENT_HEAD, PATH_AGENT_NOTICES,
    PATH_AGENT_NOTICES_ACK, PATH_HUB_PUBKEY, PATH_INGEST, ReceiptForm, RefusalCode,
};
use spacesync_shared::{RegionCode, SourceId};
use tower_http::decompression::RequestDecompressionLayer;
use tracing::error;

use crate::access::{Admin, Denied, Reader, RegionReader};
use crate::assessment::FigureSet;
use crate::auth::Role;
use crate::ingest::IngestError;
use crate::log;
use crate::registry::{SourceRecord, SourceStatus};
use crate::render::{Format, Rendering};
use crate::views::region_name;
use crate::witness;

/// Re-exported for the binary, the configuration defaults and the tests, which named them
/// here before the state had its own module.
pub use crate::state::{
    AddrKey, AppState, BODY_BUDGET, DEFAULT_BURST_PER_ADDRESS, DEFAULT_RATE_PER_ADDRESS, MAX_BODY,
    MAX_TRACKED_ADDRESSES, RateLimiter, Throttled,
};

/// What a spent budget looks like on the wire: the state's buckets, charged and answered
/// as [`AppError`]s.
trait Budgets {
    fn refuse(&self, client: &ClientAddr, e: AppError) -> AppError;
    fn address_throttled(&self, addr: SocketAddr, wait: u64, last: &str) -> AppError;
    fn on_probation(&self, client: &ClientAddr) -> bool;
    fn charge_source(&self, source: &SourceId, bucket: &str) -> Result<(), AppError>;
}

impl Budgets for AppState {
    /// Charges a refused request to its client's address. Once the address has used up its
    /// allowance the answer becomes 429. Internal errors are not the client's doing and
    /// cost nothing; requests without an address (in-process callers) are not limited.
    fn refuse(&self, client: &ClientAddr, e: AppError) -> AppError {
        if e.status.is_server_error() {
            return e;
        }
        let Some(addr) = client.0 else {
            return e;
        };
        match self.addr_limiter.take(&AddrKey::of(addr.ip())) {
            Ok(()) => e,
            Err(wait) => self.address_throttled(addr, wait, &e.body.error),
        }
    }

    fn address_throttled(&self, addr: SocketAddr, wait: u64, last: &str) -> AppError {
        self.throttled.address.fetch_add(1, Ordering::Relaxed);
        let mut e = AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Some(RefusalCode::RateLimited),
            format!(
                "too many refused requests from {}; retry after {wait} s (the last was refused because: {last})",
                addr.ip()
            ),
        );
        e.retry_after = Some(wait);
        e
    }

    /// Has the client's address used up its allowance of refused requests? Its requests
    /// are then checked only as far as needed to see whether they prove a source.
    fn on_probation(&self, client: &ClientAddr) -> bool {
        client
            .0
            .is_some_and(|a| !self.addr_limiter.has_token(&AddrKey::of(a.ip())))
    }

    /// Takes a token from the budget `bucket` of an authenticated `source`.
    fn charge_source(&self, source: &SourceId, bucket: &str) -> Result<(), AppError> {
        self.limiter.take(&bucket.to_string()).map_err(|wait| {
            self.throttled.source.fetch_add(1, Ordering::Relaxed);
            let mut e = AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                Some(RefusalCode::RateLimited),
                format!("source {source} is sending too fast; retry after {wait} s"),
            );
            e.retry_after = Some(wait);
            e
        })
    }
}

/// The client's address, from `ConnectInfo<SocketAddr>` (which `serve` and the shared
/// accept loop put on every request); absent for in-process callers (tests driving the
/// router with `oneshot`), which are not limited per address.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientAddr, Infallible> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// An error answer.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u64>,
}

impl AppError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: Option<RefusalCode>, msg: impl Into<String>) -> AppError {
        AppError {
            status,
            body: ErrorBody {
                error: msg.into(),
                code,
                problems: Vec::new(),
            },
            retry_after: None,
        }
    }

    fn bad_request(msg: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, Some(RefusalCode::Invalid), msg)
    }

    fn unauthorized(msg: impl Into<String>) -> AppError {
        AppError::new(StatusCode::UNAUTHORIZED, None, msg)
    }

    fn forbidden(msg: impl Into<String>) -> AppError {
        AppError::new(StatusCode::FORBIDDEN, None, msg)
    }

    fn not_found(msg: impl Into<String>) -> AppError {
        AppError::new(StatusCode::NOT_FOUND, None, msg)
    }

    fn internal(e: impl std::fmt::Display) -> AppError {
        error!(error = %e, "Internal error.");
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "the hub could not complete the request; retry later (details are in the hub's log)",
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<IngestError> for AppError {
    fn from(e: IngestError) -> AppError {
        match &e {
            IngestError::UnknownSource(_) => AppError::new(
                StatusCode::UNAUTHORIZED,
                Some(RefusalCode::UnknownSource),
                e.to_string(),
            ),
            IngestError::Revoked(_) => AppError::new(
                StatusCode::FORBIDDEN,
                Some(RefusalCode::RevokedKey),
                e.to_string(),
            ),
            IngestError::Empty => AppError::bad_request(e.to_string()),
            IngestError::TooMany { .. } => AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(RefusalCode::TooLarge),
                e.to_string(),
            ),
            IngestError::RepeatedSeq { .. } => AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(RefusalCode::Invalid),
                e.to_string(),
            ),
            IngestError::Store(_) | IngestError::Log(_) => AppError::internal(e),
        }
    }
}

/// Access refusals of [`crate::access`]'s extractors, in the one error shape.
impl From<Denied> for AppError {
    fn from(d: Denied) -> AppError {
        match &d {
            Denied::NoToken | Denied::UnknownToken => AppError::unauthorized(d.to_string()),
            Denied::AdminOnly { path, .. } => {
                let hint = if path == "/metrics" {
                    "; or scrape the hub's metrics_listen address (hub.toml)"
                } else {
                    ""
                };
                AppError::forbidden(format!("{d}{hint}"))
            }
            Denied::BadRegion(_) => AppError::bad_request(d.to_string()),
            Denied::Region { .. } => AppError::forbidden(d.to_string()),
            Denied::Unavailable(_) => AppError::internal(d),
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        AppError::from(self).into_response()
    }
}

/// Builds the router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(PATH_INGEST, post(ingest))
        .route(PATH_HUB_PUBKEY, get(pubkey))
        .route(wire::PATH_CHECKPOINT, get(checkpoint))
        .route(wire::PATH_COSIGNATURE, post(cosignature))
        .route(wire::PATH_COSIGNATURE_WANTED, get(cosignature_wanted))
        .route(wire::PATH_AGENT_LOG_ALARM, post(agent_log_alarm))
        .route(wire::PATH_WITNESSES, get(witnesses))
        .route("/v1/proof/inclusion", get(inclusion))
        .route("/v1/proof/consistency", get(consistency))
        .route(PATH_AGENT_HEAD, get(agent_head))
        .route(wire::PATH_AGENT_ENTRIES, get(agent_entries))
        .route(PATH_AGENT_NOTICES, get(agent_notices))
        .route(PATH_AGENT_NOTICES_ACK, post(agent_notices_ack))
        .route("/v1/progress", get(progress))
        .route("/v1/regions/{code}", get(region))
        .route("/v1/sources", get(sources))
        .route("/v1/notices", get(notices_list))
        .route("/v1/bulletins", get(bulletins))
        .route("/v1/bulletins/{file}", get(bulletin_file))
        .route("/v1/bulletins/{n}/flags.csv", get(bulletin_flags_csv))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .merge(crate::admin::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            caught_up,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::map_response(bare_errors_as_json))
        .with_state(state)
}

/// Before every request but `/healthz` and `/metrics`: the hub catches up with what other
/// replicas on its database committed ([`crate::hub::Hub::sync`]: one primary-key read when nothing
/// moved; the notice book likewise), so no answer comes from state another replica's commit
/// made stale. While the store cannot be read, the answer is 503.
async fn caught_up(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/metrics") {
        return next.run(req).await;
    }
    let (hub, notices) = (s.hub.clone(), s.notices.clone());
    let synced = tokio::task::spawn_blocking(move || {
        hub.sync()?;
        notices.refresh(hub.store.as_ref())
    });
    match synced.await {
        Ok(Ok(())) => next.run(req).await,
        Ok(Err(e)) => AppError::internal(e).into_response(),
        Err(e) => {
            AppError::internal(format!("catching up with the store failed: {e}")).into_response()
        }
    }
}

/// Error answers made by layers below the handlers (e.g. an unsupported
/// `Content-Encoding` refused by the decompression layer) come without a body; give them
/// the standard error JSON so every client parses one shape.
async fn bare_errors_as_json(r: Response) -> Response {
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error())
        || r.headers().contains_key(header::CONTENT_TYPE)
    {
        return r;
    }
    let msg = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "unsupported Content-Encoding; send the body uncompressed or with Content-Encoding: gzip"
                .to_string()
        }
        StatusCode::NOT_FOUND => "no such endpoint; see the README for the API".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "this endpoint does not take that method".to_string(),
        other => format!("the request was refused ({other})"),
    };
    let code = (status == StatusCode::UNSUPPORTED_MEDIA_TYPE).then_some(RefusalCode::Invalid);
    AppError::new(status, code, msg).into_response()
}

/// Serves until `shutdown` completes, then finishes in-flight requests, under the
/// connection caps and timeouts of `state.conn_limits` (`spacesync_http::serve`, which
/// also gives every request its peer address for the per-address limiter).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        state,
        spacesync_http::EdgeOptions::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with TLS and trusted proxies ([`spacesync_http::serve_with`]).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    options: spacesync_http::EdgeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.conn_limits;
    let stats = state.conns.clone();
    spacesync_http::serve_with(listener, app(state), limits, stats, options, shutdown).await
}

/// The router of the separate metrics listener (`metrics_listen` in hub.toml): only
/// `/metrics`, without a token. Bind it to an address only the monitoring system reaches.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { metrics_text(&s) }),
        )
        .layer(axum::middleware::map_response(bare_errors_as_json))
        .with_state(state)
}

/// Serves [`metrics_app`] until `shutdown` completes.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.conn_limits;
    // Its own counters: the main listener's caps are not spent by the scraper.
    let stats = Arc::new(spacesync_http::Stats::default());
    spacesync_http::serve(listener, metrics_app(state), limits, stats, shutdown).await
}

fn json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// Reads an ingest batch from the request.
fn read_batch(
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<IngestBatch, AppError> {
    if !json_content_type(headers) {
        return Err(AppError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some(RefusalCode::Invalid),
            "an ingest batch must be sent as Content-Type: application/json",
        ));
    }
    // Body failures (too large, also after gzip decoding; a broken gzip stream) answer in
    // the same ErrorBody form as every other refusal.
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(RefusalCode::TooLarge),
                format!("the request body is larger than {MAX_BODY} bytes (after decompression); send fewer entries per batch"),
            )
        } else {
            AppError::bad_request(format!("the request body could not be read: {}", e.body_text()))
        }
    })?;
    let text = std::str::from_utf8(&body).map_err(|e| {
        AppError::bad_request(format!(
            "the body is not valid UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    serde_json::from_str(text).map_err(|e| {
        AppError::bad_request(format!(
            "the body is not an ingest batch: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// Reads a request body (already decompressed by the layer) up to [`MAX_BODY`], taking
/// its size from the hub-wide [`BODY_BUDGET`] as it arrives; the permit is held until the
/// batch is answered. When the budget is spent the request is answered 503 at once.
async fn read_budgeted(
    s: &AppState,
    body: axum::body::Body,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), AppError> {
    use http_body_util::BodyExt as _;
    let too_much = || {
        let mut e = AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "the hub is receiving too many batches at once; nothing was stored; retry shortly",
        );
        e.retry_after = Some(2);
        e
    };
    let mut held = s
        .body_budget
        .clone()
        .try_acquire_many_owned(1)
        .map_err(|_| too_much())?;
    let mut buf = Vec::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            AppError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > MAX_BODY {
            return Err(AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(RefusalCode::TooLarge),
                format!(
                    "the request body is larger than {MAX_BODY} bytes (after decompression); send fewer entries per batch"
                ),
            ));
        }
        buf.extend_from_slice(&data);
        let want = buf.len().div_ceil(1024).max(1) as u32;
        if want > held.num_permits() as u32 {
            let more = s
                .body_budget
                .clone()
                .try_acquire_many_owned(want - held.num_permits() as u32)
                .map_err(|_| too_much())?;
            held.merge(more);
        }
    }
    Ok((buf.into(), held))
}

/// `POST /v1/ingest`, counted for `/metrics`: entries appended, refusals by code (of
/// entries, or of the whole batch), and how long the answer took (429s are counted apart,
/// in `spacesync_hub_throttled_total`).
async fn ingest(
    State(s): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, AppError> {
    let started = std::time::Instant::now();
    let metrics = s.ingest_metrics.clone();
    let answer = ingest_answer(State(s), client, headers, body).await;
    match &answer {
        Ok((outcome, _)) => metrics.batch(
            started.elapsed(),
            outcome.appended,
            outcome.response.refused.iter().map(|r| r.code),
            None,
        ),
        Err(e) if e.status != StatusCode::TOO_MANY_REQUESTS => {
            metrics.batch(started.elapsed(), 0, [], e.body.code)
        }
        Err(_) => {}
    }
    answer.map(|(_, response)| response)
}

async fn ingest_answer(
    State(s): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(crate::ingest::IngestOutcome, Response), AppError> {
    if !json_content_type(&headers) {
        return Err(s.refuse(
            &client,
            AppError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some(RefusalCode::Invalid),
                "an ingest batch must be sent as Content-Type: application/json",
            ),
        ));
    }
    let (body, permit) = match read_budgeted(&s, body).await {
        Ok(x) => x,
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return Err(e),
        Err(e) => return Err(s.refuse(&client, e)),
    };
    // Parsing (up to MAX_BODY of JSON) and verification run off the async runtime, so a
    // flood of large bodies cannot stall other requests such as /healthz; and below the
    // writer's priority, so they never slow the one serial stage (`check_pool`).
    let form = ReceiptForm::requested(
        headers
            .get(wire::HDR_RECEIPTS)
            .and_then(|v| v.to_str().ok()),
    );
    // The body's share of the budget goes with it into the queue: a client that hangs up
    // while its batch waits gives the share back only when the job is done or dropped,
    // so the budget bounds what the queue holds.
    let (unsettled, permit) = {
        let s = s.clone();
        s.check_pool
            .clone()
            .run(move || {
                let checked = read_batch(&headers, Ok(body))
                    .map_err(|e| s.refuse(&client, e))
                    .and_then(|batch| check_blocking(&s, &client, batch));
                (checked, permit)
            })
            .await
            .map_err(AppError::internal)?
    };
    let mut unsettled = unsettled?;
    // The torsion test of the signatures' R points, with the batches checked meanwhile.
    let debt = std::mem::take(&mut unsettled.debt);
    let clean = s
        .check_pool
        .torsion_free(debt)
        .await
        .map_err(AppError::internal)?;
    let checked = if clean {
        unsettled.settle(true)
    } else {
        // Some R carried torsion (an attack, or a broken signer): the exact path names
        // the first entry refused, again on a check thread.
        s.check_pool
            .run(move || unsettled.settle(false))
            .await
            .map_err(AppError::internal)?
    };
    let outcome = s
        .admit_pool
        .clone()
        .run(move || {
            let out = admit_blocking(&s, &client, checked, form);
            drop(permit);
            out
        })
        .await
        .map_err(AppError::internal)??;
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    let response = (status, Json(&outcome.response)).into_response();
    Ok((outcome, response))
}

/// Reads a batch's entries and verifies their signatures (on a check thread; the admission
/// is [`admit_blocking`]'s).
fn check_blocking(
    s: &AppState,
    client: &ClientAddr,
    batch: IngestBatch,
) -> Result<crate::ingest::UnsettledBatch, AppError> {
    // An address that has used up its allowance gets one signature checked, not a
    // thousand: a flood of junk costs a parse and one verification per request, while a
    // real agent behind the same address (a NAT, the TLS proxy) still gets through.
    if s.on_probation(client) && !s.hub.first_entry_verifies(&batch) {
        return Err(s.refuse(
            client,
            AppError::new(
                StatusCode::UNAUTHORIZED,
                Some(RefusalCode::BadSignature),
                format!(
                    "the batch's first entry is not validly signed by a registered source {}",
                    batch.source
                ),
            ),
        ));
    }
    s.hub
        .check_deferring(batch)
        .map_err(|e| s.refuse(client, e.into()))
}

/// Charges a checked batch to the right budget and appends it (under the writer lock).
/// Whose budget a batch spends:
/// - every signature verifies and it carries a seq the hub does not hold yet: the
///   source's (only the key holder can make such a batch);
/// - every signature verifies but it only resends held entries: the source's separate
///   resend budget (anyone who saw the batch can replay it; this way a replay can delay
///   only resends, never new entries);
/// - anything else (unknown or revoked source, a malformed or unsigned entry): the client
///   address's.
fn admit_blocking(
    s: &AppState,
    client: &ClientAddr,
    checked: crate::ingest::CheckedBatch,
    form: ReceiptForm,
) -> Result<crate::ingest::IngestOutcome, AppError> {
    let source = checked.source().clone();
    if checked.authentic() {
        let held = s.hub.head(&source).held_through;
        if checked.goes_beyond(held) {
            s.charge_source(&source, source.as_str())?;
        } else {
            s.charge_source(&source, &format!("{source} resend"))?;
        }
    } else if let Some(addr) = client.0 {
        s.addr_limiter
            .take(&AddrKey::of(addr.ip()))
            .map_err(|wait| {
                s.address_throttled(
                    addr,
                    wait,
                    &format!("a batch naming {source} carried an entry that is malformed or not signed by its key"),
                )
            })?;
    }
    Ok(s.hub.append_with(checked, form)?)
}

async fn pubkey(State(s): State<AppState>) -> String {
    format!("{}\n", public_key_line(&s.hub.key.verifying_key()))
}

#[derive(Deserialize)]
struct CheckpointQuery {
    size: Option<u64>,
}

/// `GET /v1/checkpoint[?size=N]`: the signed checkpoint note (the newest, or of the tree of
/// `N` leaves) with the witnesses' cosignature lines collected for exactly that checkpoint.
async fn checkpoint(
    State(s): State<AppState>,
    q: Result<Query<CheckpointQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = q.map_err(query_error)?;
    let hub = s.hub.clone();
    let note = tokio::task::spawn_blocking(move || witness::note(&hub, q.size))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::from)?
        .ok_or_else(|| {
            AppError::not_found(format!(
                "the log has {} entries, fewer than the checkpoint asked for",
                s.hub.snapshot().log_size
            ))
        })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

/// A signed agent request's JSON body of at most `max` bytes (refused 413 before its
/// signature is checked), signed with the source's current key, read strictly (duplicate
/// members refused): the source and the body. `what` names the body in errors.
async fn signed_json<T: serde::de::DeserializeOwned>(
    s: &AppState,
    client: &ClientAddr,
    (method, uri, headers, body): (&Method, &Uri, &HeaderMap, &Bytes),
    max: usize,
    what: &str,
) -> Result<(SourceId, T), AppError> {
    if body.len() > max {
        return Err(s.refuse(
            client,
            AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(RefusalCode::TooLarge),
                format!("{what} is at most {max} bytes"),
            ),
        ));
    }
    let source = signed_source(s, client, Keys::Current, method, uri, headers, body).await?;
    let value = spacesync_shared::json::from_slice(body)
        .and_then(serde_json::from_value)
        .map_err(|e| AppError::bad_request(format!("{what} is not the expected JSON: {e}")))?;
    Ok((source, value))
}

/// `POST /v1/cosignature`, signed by the source: its witness cosignature of a checkpoint
/// it audited; checked and kept ([`witness::accept`]).
async fn cosignature(
    State(s): State<AppState>,
    client: ClientAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<wire::CosignatureAccepted>, AppError> {
    let (source, sub): (_, wire::CosignatureSubmission) = signed_json(
        &s,
        &client,
        (&method, &uri, &headers, &body),
        MAX_COSIGNATURE_BODY,
        "the cosignature",
    )
    .await?;
    let (hub, window, now) = (s.hub.clone(), s.nonces.window(), s.hub.clock.now());
    let id = source.clone();
    let done = tokio::task::spawn_blocking(move || witness::accept(&hub, &id, &sub, now, window))
        .await
        .map_err(AppError::internal)?;
    match done {
        Ok(a) => Ok(Json(a)),
        Err(e) => {
            if matches!(e, witness::WitnessError::WrongRoot { .. }) {
                // A witness that saw another tree of this size: worth a person's look.
                tracing::warn!(source = %source, error = %e, "A witness cosigned a tree the hub does not hold.");
            }
            Err(e.into())
        }
    }
}

/// `POST /v1/agent/log-alarm`, signed by the source: its agent's log alarm, raised or
/// cleared ([`witness::report_alarm`]), kept for `/v1/sources` and the dashboard.
async fn agent_log_alarm(
    State(s): State<AppState>,
    client: ClientAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let (source, report): (_, wire::LogAlarmReport) = signed_json(
        &s,
        &client,
        (&method, &uri, &headers, &body),
        MAX_LOG_ALARM_BODY,
        "the log alarm report",
    )
    .await?;
    report
        .check()
        .map_err(|e| AppError::bad_request(format!("the log alarm report is refused: {e}")))?;
    let (hub, now) = (s.hub.clone(), s.hub.clock.now());
    let id = source.clone();
    let r = report.clone();
    tokio::task::spawn_blocking(move || witness::report_alarm(&hub, &id, &r, now))
        .await
        .map_err(AppError::internal)??;
    if report.cleared {
        tracing::info!(source = %source, code = %report.code, "A source's agent reports its log alarm cleared by its operator.");
    } else {
        // The text is the agent's: escaped.
        tracing::warn!(source = %source, code = %report.code, detected = ?report.detected, "A source's agent reports a log alarm: its audit of this hub's log failed.");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Largest `POST /v1/agent/log-alarm` body: every report within
/// [`wire::LogAlarmReport::check`]'s bounds fits, however its JSON escapes the text (2048
/// characters, each at most 12 bytes as a `\uXXXX\uXXXX` surrogate pair; a code of 64;
/// the time), and nothing much larger is read.
pub const MAX_LOG_ALARM_BODY: usize = 32 << 10;

/// `GET /v1/cosignature/wanted`: the bulletins' checkpoints still short of the quorum.
async fn cosignature_wanted(
    State(s): State<AppState>,
) -> Result<Json<wire::WitnessWanted>, AppError> {
    let hub = s.hub.clone();
    let w = tokio::task::spawn_blocking(move || witness::wanted(&hub))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
    Ok(Json(w))
}

/// `GET /v1/witnesses`: every registered, unrevoked source's witness verifier key.
async fn witnesses(State(s): State<AppState>) -> Json<wire::Witnesses> {
    let snap = s.hub.snapshot();
    let mut recs: Vec<_> = snap
        .registry
        .values()
        .filter(|r| r.status == SourceStatus::Active)
        .collect();
    recs.sort_by(|a, b| a.id.cmp(&b.id));
    Json(wire::Witnesses {
        witnesses: recs
            .into_iter()
            .filter_map(witness::cosigner)
            .map(|c| c.to_vkey())
            .collect(),
    })
}

/// Largest `POST /v1/cosignature` body: a checkpoint text and one line are a few hundred
/// bytes.
pub const MAX_COSIGNATURE_BODY: usize = 4096;

impl From<witness::WitnessError> for AppError {
    fn from(e: witness::WitnessError) -> AppError {
        use witness::WitnessError as W;
        let (status, code) = match &e {
            W::UnknownSource(_) => (StatusCode::UNAUTHORIZED, Some(RefusalCode::UnknownSource)),
            W::Revoked(_) => (StatusCode::FORBIDDEN, Some(RefusalCode::RevokedKey)),
            W::Malformed(_) => (StatusCode::BAD_REQUEST, Some(RefusalCode::Invalid)),
            W::UnknownCheckpoint(_) => (StatusCode::CONFLICT, Some(RefusalCode::UnknownCheckpoint)),
            W::WrongRoot { .. } => (StatusCode::CONFLICT, Some(RefusalCode::WrongRoot)),
            W::BadCosignature { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(RefusalCode::BadCosignature),
            ),
            W::Stale { .. } => (StatusCode::CONFLICT, Some(RefusalCode::StaleCosignature)),
            W::Store(_) | W::Log(_) => return AppError::internal(e),
        };
        AppError::new(status, code, e.to_string())
    }
}

#[derive(Deserialize)]
struct InclusionQuery {
    index: u64,
    size: Option<u64>,
}

/// A query string that does not parse answers in the ErrorBody form, naming the field.
fn query_error(e: axum::extract::rejection::QueryRejection) -> AppError {
    AppError::bad_request(e.body_text())
}

async fn inclusion(
    State(s): State<AppState>,
    q: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = q.map_err(query_error)?;
    let size = q.size.unwrap_or_else(|| s.hub.snapshot().log_size);
    if size > s.hub.snapshot().log_size {
        return Err(AppError::bad_request(format!(
            "size {size} is larger than the log"
        )));
    }
    let proof = log::inclusion_proof(s.hub.store.as_ref(), q.index, size).map_err(|e| match e {
        log::LogError::Proof(m) => AppError::bad_request(m),
        other => AppError::internal(other),
    })?;
    let leaf = log::read(s.hub.store.as_ref(), q.index)
        .map_err(AppError::internal)?
        .ok_or_else(|| AppError::not_found(format!("no leaf {}", q.index)))?;
    Ok(Json(json!({
        "index": q.index,
        "size": size,
        "leaf_hash": STANDARD.encode(leaf.leaf_hash()),
        "proof": proof.iter().map(|h| STANDARD.encode(h)).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    old: u64,
    new: Option<u64>,
}

async fn consistency(
    State(s): State<AppState>,
    q: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = q.map_err(query_error)?;
    let size = s.hub.snapshot().log_size;
    let new = q.new.unwrap_or(size);
    if new > size {
        return Err(AppError::bad_request(format!(
            "new size {new} is larger than the log ({size})"
        )));
    }
    let proof = log::consistency_proof(s.hub.store.as_ref(), q.old, new).map_err(|e| match e {
        log::LogError::Proof(m) => AppError::bad_request(m),
        other => AppError::internal(other),
    })?;
    Ok(Json(json!({
        "old": q.old,
        "new": new,
        "proof": proof.iter().map(|h| STANDARD.encode(h)).collect::<Vec<_>>(),
    })))
}

/// How long after it handed over an earlier key may still read its source's chain (an
/// agent restored from a backup older than that cannot take back; its operator restores a
/// newer backup or runs `rotate-key --lost`). Bounded, so a retired key leaked from an old
/// backup does not read the province's records for ever.
const RETIRED_KEY_READ_DAYS: i64 = 90;

/// Which of a source's keys may sign a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// Only the key in the registry now: every request that writes or concerns anything
    /// but the source's own chain (notices, acknowledgements, cosignatures).
    Current,
    /// Any key the source has had that handed over to its successor itself: only the
    /// reads of its own chain (`/v1/agent/head`, `/v1/agent/entries`). An agent restored
    /// from a backup made before a key rotation holds the older key; it must still learn
    /// what the hub holds, take it back and meet the rotation in its chain, which tells its
    /// operator what to do. A key replaced by the admin (`agents rotate`, for a key lost or
    /// stolen) reads nothing: its successor is not a key-transition entry of the chain;
    /// nor does one retired more than [`RETIRED_KEY_READ_DAYS`] ago.
    /// Nothing it may append is accepted under an earlier key: ingest checks each entry
    /// against the key in force at its seq.
    AnyHeld,
}

/// Verifies a signed agent request and charges it: to the source's budget when it
/// verifies, to the client address's when it does not (a forged, stale or replayed
/// request). Returns the source.
async fn signed_source(
    s: &AppState,
    client: &ClientAddr,
    keys: Keys,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<SourceId, AppError> {
    let (source, nonce, ts, retired) =
        verify_signed(s, keys, method, uri, headers, body).map_err(|e| s.refuse(client, e))?;
    // A request signed by a retired key has a budget of its own: a copy of an old key (from
    // an old backup) cannot throttle the source's own agent.
    let bucket = match retired {
        true => format!("{source}/retired"),
        false => source.to_string(),
    };
    // A source over its rate is refused before its nonce is stored.
    if !s.limiter.has_token(&bucket) {
        s.charge_source(&source, &bucket)?;
    }
    let (nonces, hub) = (s.nonces.clone(), s.hub.clone());
    let now = s.hub.clock.now();
    let fresh = tokio::task::spawn_blocking(move || {
        nonces.check_and_insert(hub.store.as_ref(), &nonce, ts, now)
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)?;
    match fresh {
        crate::auth::NonceCheck::Fresh => {}
        crate::auth::NonceCheck::Replayed => {
            return Err(s.refuse(
                client,
                AppError::unauthorized(
                    "this signed request was already used (replay refused); sign each request with a fresh nonce",
                ),
            ));
        }
        crate::auth::NonceCheck::BeforeHighWater(hw) => {
            return Err(s.refuse(
                client,
                AppError::unauthorized(format!(
                    "this request was signed at {}, more than the request window before {} (the latest time a signed request was accepted at, possibly by another hub replica); check that the agent's clock and every hub replica's clock are synchronised (NTP), then retry",
                    ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    hw.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )),
            ));
        }
    }
    s.charge_source(&source, &bucket)?;
    Ok(source)
}

/// Checks a signed agent request's headers, source and signature (by a key `keys`
/// allows), and its timestamp against the hub clock; returns the source, the nonce, the
/// timestamp, and whether a retired key (not the current one) signed it.
fn verify_signed(
    s: &AppState,
    keys: Keys,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(SourceId, String, chrono::DateTime<chrono::Utc>, bool), AppError> {
    let h = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                AppError::unauthorized(format!("signed request header {name} is missing"))
            })
    };
    let source =
        SourceId::parse(h(wire::HDR_SOURCE)?).map_err(|e| AppError::unauthorized(e.to_string()))?;
    let reg = s
        .hub
        .snapshot()
        .registry
        .get(&source)
        .cloned()
        .ok_or_else(|| {
            AppError::new(
                StatusCode::UNAUTHORIZED,
                Some(RefusalCode::UnknownSource),
                format!("source {source} is not registered at this hub"),
            )
        })?;
    if reg.status == SourceStatus::Revoked {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            Some(RefusalCode::RevokedKey),
            format!("source {source} has been revoked"),
        ));
    }
    let parse = |k: &str| spacesync_shared::keys::parse_public_key(k).ok();
    let key = reg
        .current_key()
        .and_then(parse)
        .ok_or_else(|| AppError::internal(format!("registered key of {source} does not parse")))?;
    // The current key first; for `AnyHeld` the earlier ones after it, newest first.
    // A key counts only when its successor came from a key-transition entry of the chain
    // at the seq before the successor's first (signed by that key): looked up only when
    // the current key does not verify.
    let earlier = || -> Vec<ed25519_dalek::VerifyingKey> {
        match keys {
            Keys::Current => Vec::new(),
            Keys::AnyHeld => reg
                .keys
                .windows(2)
                .rev()
                .filter(|w| {
                    (s.hub.clock.now() - w[1].added_at).num_days() < RETIRED_KEY_READ_DAYS
                        && w[1].from_seq >= 2
                        && s.hub
                            .handed_over(&source, w[1].from_seq - 1, &w[1].key)
                            .unwrap_or(false)
                })
                .filter_map(|w| parse(&w[0].key))
                .collect(),
        }
    };
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    let nonce = h(wire::HDR_NONCE)?;
    let (stamp, signature) = (h(wire::HDR_TIMESTAMP)?, h(wire::HDR_SIGNATURE)?);
    let verify = |key: &ed25519_dalek::VerifyingKey| {
        wire::verify_request(key, method.as_str(), path, stamp, nonce, signature, body)
    };
    let (ts, retired) = match verify(&key) {
        Ok(ts) => (ts, false),
        // The current key's error is the one told: it is the key the source should use.
        Err(e) => earlier()
            .iter()
            .find_map(|k| verify(k).ok())
            .map(|ts| (ts, true))
            .ok_or_else(|| AppError::unauthorized(e.to_string()))?,
    };
    let now = s.hub.clock.now();
    let window = s.nonces.window();
    if (ts - now).abs() > window {
        return Err(AppError::unauthorized(format!(
            "request timestamp {ts} is more than {} minutes from the hub's clock ({now}); check the agent's clock",
            window.num_minutes()
        )));
    }
    Ok((source, nonce.to_string(), ts, retired))
}

async fn agent_head(
    State(s): State<AppState>,
    client: ClientAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<wire::SourceHead>, AppError> {
    let source = signed_source(&s, &client, Keys::AnyHeld, &method, &uri, &headers, b"").await?;
    Ok(Json(s.hub.head(&source)))
}

#[derive(Deserialize)]
struct EntriesQuery {
    from: u64,
    limit: Option<usize>,
}

/// The signing source's own entries from a seq, with a batch receipt: what an agent
/// restored from an older backup takes back (it checks every entry against its own keys
/// and chain, and the receipt against the hub key it pins).
async fn agent_entries(
    State(s): State<AppState>,
    client: ClientAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<EntriesQuery>,
) -> Result<Json<wire::EntriesPage>, AppError> {
    let source = signed_source(&s, &client, Keys::AnyHeld, &method, &uri, &headers, b"").await?;
    let limit = q
        .limit
        .unwrap_or(wire::MAX_ENTRIES_PAGE)
        .clamp(1, wire::MAX_ENTRIES_PAGE);
    let hub = s.hub.clone();
    let page = tokio::task::spawn_blocking(move || {
        hub.held_entries(&source, q.from, limit, wire::MAX_ENTRIES_PAGE_BYTES)
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)?;
    Ok(Json(page))
}

#[derive(Deserialize)]
struct NoticesQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn agent_notices(
    State(s): State<AppState>,
    client: ClientAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<NoticesQuery>,
) -> Result<Json<NoticesPage>, AppError> {
    let source = signed_source(&s, &client, Keys::Current, &method, &uri, &headers, b"").await?;
    let scope = source_scope(&s, &source)?;
    let notices = s
        .notices
        .fetch(
            s.hub.store.as_ref(),
            &source,
            scope,
            q.after,
            q.limit.unwrap_or(100).clamp(1, 1000),
            s.hub.clock.now(),
        )
        .map_err(AppError::internal)?;
    Ok(Json(NoticesPage { notices }))
}

fn source_scope(s: &AppState, source: &SourceId) -> Result<RegionCode, AppError> {
    s.hub
        .snapshot()
        .registry
        .get(source)
        .map(|r| r.scope)
        .ok_or_else(|| {
            AppError::new(
                StatusCode::UNAUTHORIZED,
                Some(RefusalCode::UnknownSource),
                format!("source {source} is not registered"),
            )
        })
}

async fn agent_notices_ack(
    State(s): State<AppState>,
    client: ClientAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let source = signed_source(&s, &client, Keys::Current, &method, &uri, &headers, &body).await?;
    let ack: NoticeAck = serde_json::from_slice(&body)
        .map_err(|e| AppError::bad_request(format!("not a notice acknowledgement: {e}")))?;
    let scope = source_scope(&s, &source)?;
    s.notices
        .ack(
            s.hub.store.as_ref(),
            &source,
            scope,
            ack.through,
            s.hub.clock.now(),
        )
        .map_err(AppError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn progress(
    State(s): State<AppState>,
    Reader(role): Reader,
) -> Result<Json<Value>, AppError> {
    let hub = &s.hub;
    let st = hub.snapshot();
    let rollup = st.views.rollup(&hub.campaign);
    let provinces: Vec<Value> = hub
        .campaign
        .units
        .iter()
        .filter(|u| role.can_read(**u))
        .map(|u| {
            let mut v = json!(FigureSet::from(&rollup.region(*u)));
            v["code"] = json!(u.to_string());
            v["name"] = json!(region_name(*u));
            v["name_en"] = json!(
                PROVINCIAL_UNITS
                    .iter()
                    .find(|p| p.code == u.as_u32())
                    .map(|p| p.name_en)
            );
            v["target"] = json!(hub.campaign.target.provinces.get(u));
            v
        })
        .collect();
    let mut body = json!({
        "campaign": hub.campaign.id,
        "as_of": hub.clock.now(),
        "log_size": st.log_size,
        "target": { "new_spaces": hub.campaign.target.new_spaces, "by": hub.campaign.target.by },
        "provinces": provinces,
        "flags": rollup.flags.iter().filter(|f| match f {
            crate::views::Flag::Decrease { region, .. } | crate::views::Flag::Conflict { region, .. } | crate::views::Flag::Discrepancy { region, .. } => role.can_read(*region),
        }).collect::<Vec<_>>(),
    });
    if role.reads_all() {
        body["nation"] = json!(FigureSet::from(&rollup.nation));
    }
    Ok(Json(body))
}

async fn region(
    State(s): State<AppState>,
    RegionReader { code, .. }: RegionReader,
) -> Result<Json<Value>, AppError> {
    let hub = &s.hub;
    let st = hub.snapshot();
    let rollup = st.views.rollup(&hub.campaign);
    let mut v = json!(FigureSet::from(&rollup.region(code)));
    v["code"] = json!(code.to_string());
    v["name"] = json!(region_name(code));
    v["level"] = json!(code.level());
    let children: Vec<Value> = rollup
        .totals
        .iter()
        .filter(|(c, _)| c.parent() == Some(code))
        .map(|(c, f)| {
            let mut cv = json!(FigureSet::from(f));
            cv["code"] = json!(c.to_string());
            cv["name"] = json!(region_name(*c));
            cv
        })
        .collect();
    v["children"] = json!(children);
    if code.level() != Level::Province {
        let schools: Vec<Value> = rollup
            .schools_in(code)
            .iter()
            .map(|(sc, f)| {
                let mut sv = json!(FigureSet::from(f));
                sv["code"] = json!(sc.to_string());
                sv
            })
            .collect();
        v["schools"] = json!(schools);
    }
    Ok(Json(v))
}

async fn sources(State(s): State<AppState>, Reader(role): Reader) -> Result<Json<Value>, AppError> {
    let hub = &s.hub;
    let st = hub.snapshot();
    let now = hub.clock.now();
    let mut readable: Vec<&SourceRecord> = st
        .registry
        .values()
        .filter(|r| role.can_read(r.scope))
        .collect();
    // In source order: a hash map's order changes from one start to the next.
    readable.sort_by(|a, b| a.id.cmp(&b.id));
    let list: Vec<Value> = readable
        .into_iter()
        .map(|r| {
            let head = st.heads.get(&r.id).copied().unwrap_or_default();
            let act = st.views.sources().get(&r.id);
            let last = act.and_then(|a| a.last_received);
            let w = witness::of_source(hub.store.as_ref(), &r.id).map_err(AppError::internal)?;
            Ok(json!({
                "source": r.id,
                "scope": r.scope,
                "status": r.status,
                "key": r.current_key(),
                "head_seq": head.seq,
                "last_seen": last,
                "lag_seconds": last.map(|l| (now - l).num_seconds()),
                "alarms": st.alarms.iter().filter(|a| a.source == r.id).collect::<Vec<_>>(),
                "witness": w,
            }))
        })
        .collect::<Result<_, AppError>>()?;
    Ok(Json(json!({ "sources": list })))
}

async fn notices_list(
    State(s): State<AppState>,
    Reader(role): Reader,
) -> Result<Json<Value>, AppError> {
    Ok(Json(json!({ "notices": s.notices.list(role) })))
}

async fn bulletins(State(s): State<AppState>, _: Reader) -> Result<Json<Value>, AppError> {
    let mut list = crate::bulletin::list(s.hub.store.as_ref()).map_err(AppError::internal)?;
    let snap = s.hub.snapshot();
    for b in &mut list {
        let c = &b.checkpoint;
        b.witnessed = Some(
            witness::status_now(
                s.hub.store.as_ref(),
                snap.registry.values(),
                &s.hub.campaign,
                c.size,
                &c.note,
                b.issued_at,
            )
            .map_err(AppError::internal)?,
        );
    }
    Ok(Json(json!({ "bulletins": list })))
}

#[derive(Deserialize)]
struct LangQuery {
    lang: Option<String>,
}

async fn bulletin_file(
    State(s): State<AppState>,
    Path(file): Path<String>,
    Query(q): Query<LangQuery>,
    // Bulletins are published to every reader: any valid token may read them.
    Reader(role): Reader,
) -> Result<Response, AppError> {
    let (n, ext) = file.rsplit_once('.').ok_or_else(|| {
        AppError::not_found(
            "ask for /v1/bulletins/<n>.json, .html, .md or .csv, or /v1/bulletins/<n>/flags.csv",
        )
    })?;
    let n = bulletin_number(n)?;
    let lang = bulletin_lang(&q)?;
    let mut doc = bulletin_doc(&s, n)?;
    let format = Format::from_extension(ext).ok_or_else(|| {
        AppError::not_found(format!(
            "no bulletin format {ext:?}; use json, html, md or csv"
        ))
    })?;
    // Bulletins issued before webhooks were named by id held their URLs (secrets).
    if role != Role::Admin {
        crate::notices::redact_legacy_webhooks(&mut doc);
    }
    let witnessed = bulletin_witnessed(&s, &doc)?;
    let body = crate::bulletin::show_witnessed(&doc, format, lang, witnessed)
        .map_err(AppError::internal)?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// `GET /v1/bulletins/{n}/flags.csv`: every data flag of bulletin `n`, one row each, after
/// a UTF-8 byte-order mark. The bulletin's HTML and Markdown summarise the flags and point
/// here; the same readers may read it.
async fn bulletin_flags_csv(
    State(s): State<AppState>,
    Path(n): Path<String>,
    Query(q): Query<LangQuery>,
    // Bulletins are published to every reader: any valid token may read them.
    _: Reader,
) -> Result<Response, AppError> {
    let n = bulletin_number(&n)?;
    let lang = bulletin_lang(&q)?;
    let format = Format::Rendered(Rendering::FlagsCsv);
    let body = crate::bulletin::show(&bulletin_doc(&s, n)?, format, lang)
        .map_err(|e| AppError::internal(format!("bulletin {n}: {e}")))?;
    let disposition = format!("attachment; filename=\"bulletin-{n}-flags.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

fn bulletin_number(n: &str) -> Result<u64, AppError> {
    n.parse()
        .map_err(|_| AppError::not_found(format!("{n:?} is not a bulletin number")))
}

fn bulletin_lang(q: &LangQuery) -> Result<crate::render::Lang, AppError> {
    match q.lang.as_deref() {
        None => Ok(crate::render::Lang::Zh),
        Some(l) => crate::render::Lang::parse(l)
            .ok_or_else(|| AppError::bad_request("lang must be zh or en")),
    }
}

/// How far a stored bulletin's checkpoint is witnessed (`None` for a document without a
/// readable checkpoint: it renders as unreadable anyway).
fn bulletin_witnessed(
    s: &AppState,
    doc: &Value,
) -> Result<Option<crate::assessment::WitnessStatus>, AppError> {
    let cp = &doc["checkpoint"];
    let (Some(size), Some(note), Some(at)) = (
        cp["size"].as_u64(),
        cp["note"].as_str(),
        doc["issued_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()),
    ) else {
        return Ok(None);
    };
    witness::status_now(
        s.hub.store.as_ref(),
        s.hub.snapshot().registry.values(),
        &s.hub.campaign,
        size,
        note,
        at.to_utc(),
    )
    .map(Some)
    .map_err(AppError::internal)
}

fn bulletin_doc(s: &AppState, n: u64) -> Result<Value, AppError> {
    crate::bulletin::get(s.hub.store.as_ref(), n).map_err(|e| match e {
        crate::bulletin::BulletinError::NotFound(_) => AppError::not_found(e.to_string()),
        other => AppError::internal(other),
    })
}

async fn readyz(State(s): State<AppState>) -> Result<&'static str, AppError> {
    s.hub
        .store
        .get(b"meta/frontier")
        .map_err(AppError::internal)?;
    Ok("ready\n")
}

/// `/metrics` on the main listener: admin tokens only (it names every source and its
/// head). Without a token, scrape the separate `metrics_listen` address instead.
async fn metrics(State(s): State<AppState>, _: Admin) -> Response {
    metrics_text(&s)
}

/// Raises the open-file soft limit to the hard limit (see [`spacesync_http::raise_fd_limit`]).
pub use spacesync_http::{private_umask, raise_fd_limit};

/// Connection counters of the accept loop, as Prometheus text.
fn connection_metrics(prefix: &str, c: &spacesync_http::Stats) -> String {
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "# HELP {prefix}_connections_open Client connections open now.\n# TYPE {prefix}_connections_open gauge\n{prefix}_connections_open {}\n\
         # HELP {prefix}_connections_accepted_total Client connections accepted.\n# TYPE {prefix}_connections_accepted_total counter\n{prefix}_connections_accepted_total {}\n\
         # HELP {prefix}_connections_refused_total Connections closed on accept at a connection cap (total or per address).\n# TYPE {prefix}_connections_refused_total counter\n{prefix}_connections_refused_total {}\n\
         # HELP {prefix}_connections_evicted_total Idle connections closed to make room for a newcomer at the total cap.\n# TYPE {prefix}_connections_evicted_total counter\n{prefix}_connections_evicted_total {}\n\
         # HELP {prefix}_accept_errors_total Failed accepts (e.g. out of file descriptors).\n# TYPE {prefix}_accept_errors_total counter\n{prefix}_accept_errors_total {}\n",
        v(&c.open),
        v(&c.accepted),
        v(&c.refused),
        v(&c.evicted),
        v(&c.accept_errors)
    )
}

/// The Prometheus text of the hub's metrics.
fn metrics_text(s: &AppState) -> Response {
    let st = s.hub.snapshot();
    let mut out = String::new();
    out.push_str("# HELP spacesync_hub_log_size Leaves in the transparency log.\n# TYPE spacesync_hub_log_size gauge\n");
    out.push_str(&format!("spacesync_hub_log_size {}\n", st.log_size));
    out.push_str(
        "# HELP spacesync_hub_sources Registered sources.\n# TYPE spacesync_hub_sources gauge\n",
    );
    out.push_str(&format!("spacesync_hub_sources {}\n", st.registry.len()));
    out.push_str("# HELP spacesync_hub_alarms Alarms raised (equivocations).\n# TYPE spacesync_hub_alarms gauge\n");
    out.push_str(&format!("spacesync_hub_alarms {}\n", st.alarms.len()));
    // One record read per source (the registry holds a few dozen).
    if let Ok(n) = witness::alarmed_sources(s.hub.store.as_ref(), st.registry.values()) {
        out.push_str("# HELP spacesync_hub_sources_log_alarm Sources whose agent reports a log alarm (its audit of this hub's log failed).\n# TYPE spacesync_hub_sources_log_alarm gauge\n");
        out.push_str(&format!("spacesync_hub_sources_log_alarm {n}\n"));
    }
    out.push_str("# HELP spacesync_hub_source_head_seq Highest seq held per source.\n# TYPE spacesync_hub_source_head_seq gauge\n");
    let mut heads: Vec<_> = st.heads.iter().collect();
    heads.sort_by(|a, b| a.0.cmp(b.0));
    for (id, h) in heads {
        out.push_str(&format!(
            "spacesync_hub_source_head_seq{{source=\"{id}\"}} {}\n",
            h.seq
        ));
    }
    // When each source's latest entry arrived (hub clock): one index read per source.
    out.push_str("# HELP spacesync_hub_source_last_seen_timestamp_seconds When the hub received the newest entry it holds of each source (Unix time, hub clock).\n# TYPE spacesync_hub_source_last_seen_timestamp_seconds gauge\n");
    let mut sources: Vec<_> = st.heads.iter().map(|(id, h)| (id.clone(), h.seq)).collect();
    sources.sort();
    drop(st);
    for (id, seq) in sources {
        if seq == 0 {
            continue;
        }
        if let Ok(Some(held)) = s.hub.held(&id, seq) {
            out.push_str(&format!(
                "spacesync_hub_source_last_seen_timestamp_seconds{{source=\"{id}\"}} {:.3}\n",
                held.received_at.timestamp_millis() as f64 / 1000.0
            ));
        }
    }
    s.ingest_metrics.render(&mut out);
    s.check_pool.render(&mut out);
    let notices = s.notices.list(crate::auth::Role::Admin);
    out.push_str("# HELP spacesync_hub_notices_pending Notices raised that no agent fetched and no webhook accepted yet.\n# TYPE spacesync_hub_notices_pending gauge\n");
    out.push_str(&format!(
        "spacesync_hub_notices_pending {}\n",
        notices.iter().filter(|n| n.state == "pending").count()
    ));
    let (mut failures, mut failing) = (0u64, 0u64);
    for w in notices.iter().flat_map(|n| n.webhooks.values()) {
        let delivered = u64::from(w.delivered_at.is_some());
        failures += u64::from(w.attempts).saturating_sub(delivered);
        failing += u64::from(w.delivered_at.is_none() && w.attempts > 0);
    }
    out.push_str("# HELP spacesync_hub_webhook_failures_total Webhook delivery attempts that failed (every replica's, as stored).\n# TYPE spacesync_hub_webhook_failures_total counter\n");
    out.push_str(&format!(
        "spacesync_hub_webhook_failures_total {failures}\n"
    ));
    out.push_str("# HELP spacesync_hub_webhook_deliveries_failing Webhook deliveries tried and not yet accepted (still being retried).\n# TYPE spacesync_hub_webhook_deliveries_failing gauge\n");
    out.push_str(&format!(
        "spacesync_hub_webhook_deliveries_failing {failing}\n"
    ));
    out.push_str("# HELP spacesync_hub_build_info The running hub's version (always 1).\n# TYPE spacesync_hub_build_info gauge\n");
    out.push_str(&format!(
        "spacesync_hub_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str("# HELP spacesync_hub_throttled_total Requests answered 429, by whose budget ran out.\n# TYPE spacesync_hub_throttled_total counter\n");
    for (budget, n) in [
        ("address", &s.throttled.address),
        ("source", &s.throttled.source),
    ] {
        out.push_str(&format!(
            "spacesync_hub_throttled_total{{budget=\"{budget}\"}} {}\n",
            n.load(Ordering::Relaxed)
        ));
    }
    out.push_str("# HELP spacesync_hub_tracked_addresses Client addresses with a refused-request budget in use.\n# TYPE spacesync_hub_tracked_addresses gauge\n");
    out.push_str(&format!(
        "spacesync_hub_tracked_addresses {}\n",
        s.addr_limiter.tracked()
    ));
    out.push_str(&connection_metrics("spacesync_hub", &s.conns));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spacesync_shared::record::{Population, SpaceKind};

    use super::*;
    use crate::views::Figures;

    /// The figures' JSON is what it was when it was built member by member with `json!`.
    #[test]
    fn figures_have_their_wire_members() {
        let mut f = Figures::default();
        f.spaces.set(SpaceKind::Teacher, Some(120));
        f.spaces.set(SpaceKind::Student, Some(900));
        f.real_name.set(SpaceKind::Teacher, Some(100));
        f.baseline.set(SpaceKind::Teacher, Some(20));
        f.population = Population {
            teachers: Some(200),
            students: None,
            schools: Some(3),
        };
        let new_by_kind: BTreeMap<&str, i64> = SpaceKind::ALL
            .iter()
            .filter_map(|k| f.new_of(*k).map(|n| (k.as_str(), n)))
            .collect();
        let want = json!({
            "spaces": f.spaces,
            "real_name": f.real_name,
            "baseline": f.baseline,
            "population": f.population,
            "new_spaces": f.new_spaces(),
            "new_by_kind": new_by_kind,
            "coverage": f.coverage(),
        });
        assert_eq!(json!(FigureSet::from(&f)), want);
        assert_eq!(
            want["new_by_kind"],
            json!({ "teacher": 100, "student": 900 })
        );
        assert_eq!(
            json!(FigureSet::from(&Figures::default()))["new_by_kind"],
            json!({})
        );
    }
}
