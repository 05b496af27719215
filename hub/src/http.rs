//! The hub's HTTP edge: the only module that knows the wire JSON and status codes.
//!
//! `app(state)` builds the whole router; tests drive it with `tower::ServiceExt::oneshot`
//! and a few real-socket tests on port 0. Every non-2xx answer is a `wire::ErrorBody`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
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
    PATH_AGENT_NOTICES_ACK, PATH_HUB_PUBKEY, PATH_INGEST, RefusalCode,
};
use spacesync_shared::{RegionCode, SourceId};
use tower_http::decompression::RequestDecompressionLayer;
use tracing::error;

use crate::auth::{NonceCache, REQUEST_WINDOW, Role, lookup_token};
use crate::ingest::{Hub, IngestError};
use crate::log;
use crate::registry::SourceStatus;
use crate::views::{figures_json, region_name};

/// Largest accepted request body, after decompression.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Shared state of the HTTP layer.
#[derive(Clone)]
pub struct AppState {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Signed-request nonces.
    pub nonces: Arc<NonceCache>,
    /// Per-source request buckets.
    pub limiter: Arc<RateLimiter>,
}

impl AppState {
    /// State over a hub with the given per-source rate (requests per second, burst).
    pub fn new(hub: Arc<Hub>, rate: f64, burst: f64) -> AppState {
        AppState {
            hub,
            nonces: Arc::new(NonceCache::default()),
            limiter: Arc::new(RateLimiter::new(rate, burst)),
        }
    }

    /// For a hub clock running `speed` times real time: the signed-request window is kept
    /// at the same span of real time.
    pub fn with_time_scale(mut self, speed: f64) -> AppState {
        let ms = (REQUEST_WINDOW.num_milliseconds() as f64 * speed.max(1.0)).min(1e15) as i64;
        self.nonces = Arc::new(NonceCache::new(chrono::Duration::milliseconds(ms)));
        self
    }
}

/// A token bucket per source. Uses monotonic real time: it protects the machine, not
/// the campaign calendar.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` tokens a second, up to `burst`.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `who`; on refusal, the seconds until one is available.
    pub fn take(&self, who: &str) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = b.entry(who.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
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
            IngestError::Store(_) | IngestError::Log(_) => AppError::internal(e),
        }
    }
}

/// Builds the router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(PATH_INGEST, post(ingest))
        .route(PATH_HUB_PUBKEY, get(pubkey))
        .route("/v1/checkpoint", get(checkpoint))
        .route("/v1/proof/inclusion", get(inclusion))
        .route("/v1/proof/consistency", get(consistency))
        .route(PATH_AGENT_HEAD, get(agent_head))
        .route(PATH_AGENT_NOTICES, get(agent_notices))
        .route(PATH_AGENT_NOTICES_ACK, post(agent_notices_ack))
        .route("/v1/progress", get(progress))
        .route("/v1/regions/{code}", get(region))
        .route("/v1/sources", get(sources))
        .route("/v1/notices", get(notices_list))
        .route("/v1/bulletins", get(bulletins))
        .route("/v1/bulletins/{file}", get(bulletin_file))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::map_response(bare_errors_as_json))
        .with_state(state)
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

/// Serves until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
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

async fn ingest(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, AppError> {
    if !json_content_type(&headers) {
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
    let batch: IngestBatch = serde_json::from_str(text).map_err(|e| {
        AppError::bad_request(format!(
            "the body is not an ingest batch: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    // Only registered sources get a bucket, so made-up ids cannot grow the table; an
    // unregistered source is refused by ingest with 401 as usual.
    let registered = s.hub.state().registry.contains_key(&batch.source);
    let taken = if registered {
        s.limiter.take(batch.source.as_str())
    } else {
        Ok(())
    };
    if let Err(wait) = taken {
        let mut e = AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Some(RefusalCode::RateLimited),
            format!(
                "source {} is sending too fast; retry after {wait} s",
                batch.source
            ),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let hub = s.hub.clone();
    let outcome = tokio::task::spawn_blocking(move || hub.ingest(batch))
        .await
        .map_err(AppError::internal)??;
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    Ok((status, Json(outcome.response)).into_response())
}

async fn pubkey(State(s): State<AppState>) -> String {
    format!("{}\n", public_key_line(&s.hub.key.verifying_key()))
}

async fn checkpoint(State(s): State<AppState>) -> Response {
    let note = s.hub.state().checkpoint.clone();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response()
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
    let size = q.size.unwrap_or_else(|| s.hub.state().log.size());
    if size > s.hub.state().log.size() {
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
    let size = s.hub.state().log.size();
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

/// Verifies a signed agent request; returns the source.
fn signed_source(
    s: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<SourceId, AppError> {
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
        .state()
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
    let key = reg
        .current_key()
        .and_then(|k| spacesync_shared::keys::parse_public_key(k).ok())
        .ok_or_else(|| AppError::internal(format!("registered key of {source} does not parse")))?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    let nonce = h(wire::HDR_NONCE)?;
    let ts = wire::verify_request(
        &key,
        method.as_str(),
        path,
        h(wire::HDR_TIMESTAMP)?,
        nonce,
        h(wire::HDR_SIGNATURE)?,
        body,
    )
    .map_err(|e| AppError::unauthorized(e.to_string()))?;
    let now = s.hub.clock.now();
    let window = s.nonces.window();
    if (ts - now).abs() > window {
        return Err(AppError::unauthorized(format!(
            "request timestamp {ts} is more than {} minutes from the hub's clock ({now}); check the agent's clock",
            window.num_minutes()
        )));
    }
    if !s.nonces.check_and_insert(nonce, now) {
        return Err(AppError::unauthorized(
            "this signed request was already used (replay refused); sign each request with a fresh nonce",
        ));
    }
    Ok(source)
}

async fn agent_head(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<wire::SourceHead>, AppError> {
    let source = signed_source(&s, &method, &uri, &headers, b"")?;
    Ok(Json(s.hub.head(&source)))
}

#[derive(Deserialize)]
struct NoticesQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn agent_notices(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<NoticesQuery>,
) -> Result<Json<NoticesPage>, AppError> {
    let source = signed_source(&s, &method, &uri, &headers, b"")?;
    let scope = source_scope(&s, &source)?;
    let notices = s
        .hub
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
        .state()
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
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let source = signed_source(&s, &method, &uri, &headers, &body)?;
    let ack: NoticeAck = serde_json::from_slice(&body)
        .map_err(|e| AppError::bad_request(format!("not a notice acknowledgement: {e}")))?;
    let scope = source_scope(&s, &source)?;
    s.hub
        .notices
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

/// The role of a bearer token.
pub fn bearer_role(s: &AppState, headers: &HeaderMap) -> Result<Role, AppError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| AppError::unauthorized("send Authorization: Bearer <token> (create one with `spacesync-hub token create --role …`)"))?;
    let rec = lookup_token(s.hub.store.as_ref(), token)
        .map_err(AppError::internal)?
        .ok_or_else(|| AppError::unauthorized("unknown token"))?;
    Ok(rec.role)
}

async fn progress(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let role = bearer_role(&s, &headers)?;
    let hub = &s.hub;
    let st = hub.state();
    let rollup = st.views.rollup(&hub.campaign);
    let provinces: Vec<Value> = hub
        .campaign
        .units
        .iter()
        .filter(|u| role.can_read(**u))
        .map(|u| {
            let mut v = figures_json(&rollup.region(*u));
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
        "log_size": st.log.size(),
        "target": { "new_spaces": hub.campaign.target.new_spaces, "by": hub.campaign.target.by },
        "provinces": provinces,
        "flags": rollup.flags.iter().filter(|f| match f {
            crate::views::Flag::Decrease { region, .. } | crate::views::Flag::Conflict { region, .. } | crate::views::Flag::Discrepancy { region, .. } => role.can_read(*region),
        }).collect::<Vec<_>>(),
    });
    if role.reads_all() {
        body["nation"] = figures_json(&rollup.nation);
    }
    Ok(Json(body))
}

async fn region(
    State(s): State<AppState>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let role = bearer_role(&s, &headers)?;
    let code =
        RegionCode::parse(&code).map_err(|e| AppError::bad_request(format!("region code: {e}")))?;
    if !role.can_read(code) {
        return Err(AppError::forbidden(format!(
            "the role {role} cannot read region {code}"
        )));
    }
    let hub = &s.hub;
    let st = hub.state();
    let rollup = st.views.rollup(&hub.campaign);
    let mut v = figures_json(&rollup.region(code));
    v["code"] = json!(code.to_string());
    v["name"] = json!(region_name(code));
    v["level"] = json!(code.level());
    let children: Vec<Value> = rollup
        .totals
        .iter()
        .filter(|(c, _)| c.parent() == Some(code))
        .map(|(c, f)| {
            let mut cv = figures_json(f);
            cv["code"] = json!(c.to_string());
            cv["name"] = json!(region_name(*c));
            cv
        })
        .collect();
    v["children"] = json!(children);
    if code.level() != Level::Province {
        let schools: Vec<Value> = rollup
            .schools
            .get(&code)
            .into_iter()
            .flatten()
            .map(|(sc, f)| {
                let mut sv = figures_json(f);
                sv["code"] = json!(sc.to_string());
                sv
            })
            .collect();
        v["schools"] = json!(schools);
    }
    Ok(Json(v))
}

async fn sources(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let role = bearer_role(&s, &headers)?;
    let hub = &s.hub;
    let st = hub.state();
    let now = hub.clock.now();
    let list: Vec<Value> = st
        .registry
        .values()
        .filter(|r| role.can_read(r.scope))
        .map(|r| {
            let head = st.heads.get(&r.id).copied().unwrap_or_default();
            let act = st.views.sources().get(&r.id);
            let last = act.and_then(|a| a.last_received);
            json!({
                "source": r.id,
                "scope": r.scope,
                "status": r.status,
                "key": r.current_key(),
                "head_seq": head.seq,
                "last_seen": last,
                "lag_seconds": last.map(|l| (now - l).num_seconds()),
                "alarms": st.alarms.iter().filter(|a| a.source == r.id).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "sources": list })))
}

async fn notices_list(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let role = bearer_role(&s, &headers)?;
    Ok(Json(json!({ "notices": s.hub.notices.list(role) })))
}

async fn bulletins(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    bearer_role(&s, &headers)?;
    let list = crate::bulletin::list(s.hub.store.as_ref()).map_err(AppError::internal)?;
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
    headers: HeaderMap,
) -> Result<Response, AppError> {
    // Bulletins are published to every reader: any valid token may read them.
    bearer_role(&s, &headers)?;
    let (n, ext) = file
        .rsplit_once('.')
        .ok_or_else(|| AppError::not_found("ask for /v1/bulletins/<n>.json, .html, .md or .csv"))?;
    let n: u64 = n
        .parse()
        .map_err(|_| AppError::not_found(format!("{n:?} is not a bulletin number")))?;
    let lang = match q.lang.as_deref() {
        None => crate::render::Lang::Zh,
        Some(l) => crate::render::Lang::parse(l)
            .ok_or_else(|| AppError::bad_request("lang must be zh or en"))?,
    };
    let doc = crate::bulletin::get(s.hub.store.as_ref(), n).map_err(|e| match e {
        crate::bulletin::BulletinError::NotFound(_) => AppError::not_found(e.to_string()),
        other => AppError::internal(other),
    })?;
    let (ct, body) = match ext {
        "json" => (
            "application/json",
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
        ),
        "html" => ("text/html; charset=utf-8", crate::render::html(&doc, lang)),
        "md" => (
            "text/markdown; charset=utf-8",
            crate::render::markdown(&doc, lang),
        ),
        "csv" => ("text/csv; charset=utf-8", crate::render::csv(&doc, lang)),
        other => {
            return Err(AppError::not_found(format!(
                "no bulletin format {other:?}; use json, html, md or csv"
            )));
        }
    };
    Ok(([(header::CONTENT_TYPE, ct)], body).into_response())
}

async fn readyz(State(s): State<AppState>) -> Result<&'static str, AppError> {
    s.hub
        .store
        .get(b"meta/frontier")
        .map_err(AppError::internal)?;
    Ok("ready\n")
}

async fn metrics(State(s): State<AppState>) -> Response {
    let st = s.hub.state();
    let mut out = String::new();
    out.push_str("# HELP spacesync_hub_log_size Leaves in the transparency log.\n# TYPE spacesync_hub_log_size gauge\n");
    out.push_str(&format!("spacesync_hub_log_size {}\n", st.log.size()));
    out.push_str(
        "# HELP spacesync_hub_sources Registered sources.\n# TYPE spacesync_hub_sources gauge\n",
    );
    out.push_str(&format!("spacesync_hub_sources {}\n", st.registry.len()));
    out.push_str("# HELP spacesync_hub_alarms Alarms raised (equivocations).\n# TYPE spacesync_hub_alarms gauge\n");
    out.push_str(&format!("spacesync_hub_alarms {}\n", st.alarms.len()));
    out.push_str("# HELP spacesync_hub_source_head_seq Highest seq held per source.\n# TYPE spacesync_hub_source_head_seq gauge\n");
    for (id, h) in &st.heads {
        out.push_str(&format!(
            "spacesync_hub_source_head_seq{{source=\"{id}\"}} {}\n",
            h.seq
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
