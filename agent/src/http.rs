//! The local HTTP API, built in one place by [`app`].
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/records` | a batch (JSON object, array, NDJSON; `text/csv` for space counts); `?dry_run=true` judges only; `Idempotency-Key` makes retries safe |
//! | GET | `/v1/status` | the status report (same JSON as `status --json`) |
//! | GET | `/v1/notices` | notices received, newest first (marks them read) |
//! | GET | `/v1/verify` | runs `verify` on the live store |
//! | GET | `/healthz` | `ok` |
//! | GET | `/metrics` | Prometheus text |
//!
//! Every non-2xx answer is a [`spacesync_shared::wire::ErrorBody`]. Client errors say why;
//! internal errors say "see the agent's log" and are logged once here.

#[cfg(test)]
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use spacesync_shared::batch::Format;
use spacesync_shared::clock::Clock;
use spacesync_shared::wire::ErrorBody;
use tracing::error;

use crate::config::Config;
use crate::intake::{Identity, IntakeError, IntakeHandle, Submission};
use crate::pusher::{SharedPushState, lock};
use crate::status;
use crate::store::Store;
use crate::verify;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The writer task.
    pub intake: IntakeHandle,
    /// Read access for status, notices and verify.
    pub store: Store,
    /// The configuration (token, limits, identity for status).
    pub cfg: Arc<Config>,
    /// Who signs (for verify).
    pub ident: Arc<Identity>,
    /// The pusher's view.
    pub push: SharedPushState,
    /// The agent clock.
    pub clock: Arc<dyn Clock>,
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
            IntakeError::Stopped => AppError::Client(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody {
                    error: "the agent is shutting down; nothing was stored; retry shortly".into(),
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
    Router::new()
        .route("/v1/records", post(post_records))
        .route("/v1/status", get(get_status))
        .route("/v1/notices", get(get_notices))
        .route("/v1/verify", get(get_verify))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(get_metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn authorized(cfg: &Config, headers: &HeaderMap) -> Result<(), AppError> {
    let Some(token) = &cfg.intake_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time comparison: the token must not leak through timing.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(client(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token; send `Authorization: Bearer <intake_token from agent.toml>`",
            vec![],
        ))
    }
}

#[derive(Deserialize)]
struct RecordsQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn post_records(
    State(st): State<AppState>,
    Query(q): Query<RecordsQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    authorized(&st.cfg, &headers)?;
    let body = body.map_err(|e| {
        client(
            e.status(),
            format!(
                "cannot read the request body ({e}); the limit is intake.max_body_bytes = {} bytes — split the batch",
                st.cfg.intake.max_body_bytes
            ),
            vec![],
        )
    })?;
    let format = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(Format::from_content_type)
        .unwrap_or(Format::Json);
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
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
    if let Some(max) = list.iter().map(|n| n.id).max() {
        st.store
            .mark_notices_read(max)
            .map_err(|e| AppError::Internal(e.to_string()))?;
    }
    list.reverse();
    Ok(axum::Json(list).into_response())
}

async fn get_verify(State(st): State<AppState>) -> Result<Response, AppError> {
    let hub_key = crate::cli::hub_key(&st.cfg, &st.store);
    let store = st.store.clone();
    let ident = st.ident.clone();
    let rep = tokio::task::spawn_blocking(move || verify::verify(&store, &ident, hub_key.as_ref()))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(axum::Json(rep).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::spawn_writer;
    use crate::intake::tests::{clock, identity, writer};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    fn state(dir: &Path) -> AppState {
        let store = Store::open(&dir.join("db")).unwrap_or_else(|e| panic!("{e}"));
        let (intake, _task) = spawn_writer(writer(&store, Default::default()), Arc::default());
        let mut cfg = Config::new(
            "gd-rrt".parse().unwrap_or_else(|e| panic!("{e}")),
            "440000".parse().unwrap_or_else(|e| panic!("{e}")),
            "http://127.0.0.1:9".into(),
        );
        cfg.intake_token = Some("t0ken".into());
        AppState {
            intake,
            store,
            cfg: Arc::new(cfg),
            ident: identity(),
            push: Arc::default(),
            clock: clock(),
        }
    }

    /// Sends one request through the router (no socket) and checks status and body.
    async fn check(app: &Router, req: Request<Body>, status: u16, expected: &[&str]) {
        let resp = app
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {});
        let got = resp.status().as_u16();
        let retry = resp.headers().get(header::RETRY_AFTER).is_some();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(got, status, "{text}");
        assert_eq!(retry, status == 503, "Retry-After only on 503");
        for e in expected {
            assert!(text.contains(e), "{e:?} not in {text}");
        }
    }

    fn post(body: &str, ct: &str, token: Option<&str>) -> Request<Body> {
        let mut b = Request::post("/v1/records").header(header::CONTENT_TYPE, ct);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Body::from(body.to_string()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn the_edge_answers_every_case_in_one_error_format() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let app = app(state(dir.path()));
        let act = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;
        check(
            &app,
            post(act, "application/json", None),
            401,
            &["bearer token"],
        )
        .await;
        check(
            &app,
            post(act, "application/json", Some("nope")),
            401,
            &["intake_token"],
        )
        .await;
        check(
            &app,
            post("{\"kind\":\"party\"}", "application/json", Some("t0ken")),
            422,
            &[
                "nothing was stored",
                "record 1 (line 1): kind: unknown kind \\\"party\\\"",
            ],
        )
        .await;
        check(
            &app,
            post("region,as_of\n", "text/csv", Some("t0ken")),
            422,
            &["the batch is empty"],
        )
        .await;
        check(
            &app,
            post(act, "application/json", Some("t0ken")),
            200,
            &["\"seqs\":[1]"],
        )
        .await;
        let get = |p: &str| {
            Request::get(p)
                .body(Body::empty())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        check(
            &app,
            get("/v1/status"),
            200,
            &["\"head_seq\":1", "\"buffered\":1"],
        )
        .await;
        check(&app, get("/healthz"), 200, &["ok"]).await;
        check(&app, get("/metrics"), 200, &["spacesync_agent_head_seq 1"]).await;
        check(&app, get("/v1/verify"), 200, &["\"problems\":[]"]).await;
    }

    #[tokio::test]
    async fn a_full_buffer_is_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut st = state(dir.path());
        let limits = crate::config::BufferConfig {
            max_entries: 1,
            max_bytes: 1 << 20,
        };
        let (intake, _task) = spawn_writer(writer(&st.store, limits), Arc::default());
        st.intake = intake;
        let app = app(st);
        let act = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;
        check(&app, post(act, "application/json", Some("t0ken")), 200, &[]).await;
        check(
            &app,
            post(act, "application/json", Some("t0ken")),
            503,
            &["buffer is full"],
        )
        .await;
    }
}
