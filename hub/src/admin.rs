//! Administration of a hub, running or stopped: the operations behind `agents`, `token`,
//! `extend`, `notice-rules`, `bulletin issue` and `agents invite`, and the admin API that serves them
//! (`/v1/admin/…`, admin tokens only) plus the enrolment endpoint (`/v1/enrol`, the
//! one-time code as credential).
//!
//! One code path: each operation takes the request type of [`spacesync_shared::admin`]
//! and checks every field itself, so the CLI on a stopped store (which calls the
//! operation directly) and the CLI with `--hub URL` (whose request the handler here hands
//! to the same operation) refuse the same things with the same words.
//!
//! Audit: changes to what bulletins compute (the registry, extensions, notice rules) are
//! hub-signed log entries, as they always were ([`Hub::add_source`] and friends); every admin call
//! is also logged (`audit` target) with the calling token's id — never a token or a
//! secret.
//!
//! Enrolment: an invitation stores only the SHA-256 of its secret (`inv/<hash>`), with
//! source, scope and expiry on the hub clock. The enrolling agent sends the secret, its
//! new key, and that key's signature over [`admin::enrol_message`]; the hub registers the
//! key as [`Hub::add_source`] does and marks the invitation used, so a code works once.
//! A retry with the same key after a lost answer gets the same answer; any other use of a
//! used code is refused.

use std::net::SocketAddr;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use spacesync_shared::admin::{
    self, AddSource, CreateToken, CreatedToken, EnrolRequest, Enrolled, Extend, Extended, Invite,
    Invited, Issued, KeyInfo, NoticeRuleInfo, NoticeRuleSet, NoticeRules, RotateSource, RuleOrigin,
    SetNoticeRule, SourceInfo, SourceList, SourceRef, TokenInfo, TokenList, TokenRef,
};
use spacesync_shared::campaign::NoticeRule;
use spacesync_shared::dsse::Digest;
use spacesync_shared::keys::public_key_line;
use spacesync_shared::wire::{ErrorBody, RefusalCode};
use spacesync_shared::{RegionCode, SourceId};
use tracing::{error, info};

use crate::access::{Denied, bearer_role};
use crate::auth::{self, Role, TokenError};
use crate::bulletin::{self, BulletinError};
use crate::hub::Hub;
use crate::ingest::{IngestError, RuleChangeError};
use crate::registry::{RegistryError, SourceRecord, SourceStatus};
use crate::state::{AddrKey, AppState};
use crate::store::{Store, StoreError, WriteBatch};
use crate::views::{Extension, HubEntry};

/// Longest an invitation may be valid.
pub const MAX_INVITE: Duration = Duration::days(30);

/// Where invitations are stored: `inv/<SHA-256 hex of the secret>`.
const INVITE: &[u8] = b"inv/";

/// Why an admin operation is refused or failed. Each says what and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A request field is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A registry change was refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A token operation was refused or failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Appending a hub entry failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Issuing a bulletin failed.
    #[error(transparent)]
    Bulletin(#[from] BulletinError),
    /// A notice rule change was refused or failed.
    #[error(transparent)]
    Rule(#[from] RuleChangeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The enrolment code is not one this hub issued, or was used by another key.
    #[error(
        "this enrolment code is not valid at this hub (never issued here, or already used); ask the hub's admin for a new one (`spacesync-hub agents invite`)"
    )]
    CodeUnknown,
    /// The enrolment code expired.
    #[error(
        "this enrolment code expired at {0}; ask the hub's admin for a new one (`spacesync-hub agents invite`)"
    )]
    CodeExpired(DateTime<Utc>),
    /// The request body is too large, or could not be read.
    #[error("{0}")]
    Body(String),
    /// No randomness for a secret.
    #[error("cannot generate a secret: the system random source failed ({0})")]
    Random(String),
}

impl AdminError {
    /// The HTTP status of this refusal.
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::Registry(e) => match e {
                RegistryError::Unknown(_) => StatusCode::NOT_FOUND,
                RegistryError::Key(_) => StatusCode::BAD_REQUEST,
                RegistryError::Exists(_)
                | RegistryError::KeyInUse(_)
                | RegistryError::RotationSeq { .. }
                | RegistryError::Revoked(_) => StatusCode::CONFLICT,
                RegistryError::Store(_) | RegistryError::Log(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            AdminError::Rule(e) => match e {
                RuleChangeError::NotAdjustable { .. } => StatusCode::FORBIDDEN,
                RuleChangeError::Value(_) => StatusCode::BAD_REQUEST,
                RuleChangeError::Store(_) | RuleChangeError::Log(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            AdminError::Token(TokenError::NotFound(_)) => StatusCode::NOT_FOUND,
            AdminError::Token(TokenError::Ambiguous(_)) => StatusCode::CONFLICT,
            AdminError::Body(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::CodeUnknown => StatusCode::FORBIDDEN,
            AdminError::CodeExpired(_) => StatusCode::GONE,
            AdminError::Token(_)
            | AdminError::Ingest(_)
            | AdminError::Bulletin(_)
            | AdminError::Store(_)
            | AdminError::Random(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            // Logged once here; the caller gets the generic words (as the API's others).
            error!(error = %self, "Internal error.");
            "the hub could not complete the request; retry later (details are in the hub's log)"
                .to_string()
        } else {
            self.to_string()
        };
        let code = match status {
            StatusCode::BAD_REQUEST => Some(RefusalCode::Invalid),
            StatusCode::PAYLOAD_TOO_LARGE => Some(RefusalCode::TooLarge),
            _ => None,
        };
        let body = ErrorBody {
            error: message,
            code,
            problems: Vec::new(),
        };
        (status, Json(body)).into_response()
    }
}

// ---------------------------------------------------------------------------------------
// The operations, shared by the CLI on a stopped store and the API.

fn source_info(r: &SourceRecord) -> SourceInfo {
    SourceInfo {
        id: r.id.to_string(),
        scope: r.scope.to_string(),
        status: match r.status {
            SourceStatus::Active => "active".into(),
            SourceStatus::Revoked => "revoked".into(),
        },
        added_at: r.added_at,
        revoked_at: r.revoked_at,
        keys: r
            .keys
            .iter()
            .map(|k| KeyInfo {
                key: k.key.clone(),
                from_seq: k.from_seq,
                added_at: k.added_at,
            })
            .collect(),
    }
}

fn parse_source(s: &str) -> Result<SourceId, AdminError> {
    SourceId::parse(s).map_err(|e| AdminError::Invalid(format!("source {s:?}: {e}")))
}

fn parse_scope(s: &str) -> Result<RegionCode, AdminError> {
    RegionCode::parse(s).map_err(|e| AdminError::Invalid(format!("scope {s:?}: {e}")))
}

/// Every source, in id order.
pub fn list_sources(hub: &Hub) -> SourceList {
    let snap = hub.snapshot();
    let mut all: Vec<&SourceRecord> = snap.registry.values().collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    SourceList {
        sources: all.into_iter().map(source_info).collect(),
    }
}

/// Registers a source (a hub-signed log entry).
pub fn add_source(hub: &Hub, req: &AddSource) -> Result<SourceInfo, AdminError> {
    let id = parse_source(&req.source)?;
    let scope = parse_scope(&req.scope)?;
    Ok(source_info(&hub.add_source(id, scope, &req.key)?))
}

/// Revokes a source (a hub-signed log entry; revoking twice changes nothing).
pub fn revoke_source(hub: &Hub, req: &SourceRef) -> Result<SourceInfo, AdminError> {
    Ok(source_info(&hub.revoke_source(&req.source)?))
}

/// Gives a source a new key from a seq on (a hub-signed log entry): for a lost key.
pub fn rotate_source(hub: &Hub, req: &RotateSource) -> Result<SourceInfo, AdminError> {
    Ok(source_info(&hub.rotate_source(
        &req.source,
        &req.key,
        req.from_seq,
    )?))
}

/// Creates a token; the answer holds the token, shown once.
pub fn create_token(hub: &Hub, req: &CreateToken) -> Result<CreatedToken, AdminError> {
    let role: Role = req
        .role
        .parse()
        .map_err(|e: auth::RoleError| AdminError::Invalid(format!("role: {e}")))?;
    if let Some(l) = &req.label
        && (l.chars().count() > 200 || l.chars().any(char::is_control))
    {
        return Err(AdminError::Invalid(
            "label: at most 200 characters, no control characters".into(),
        ));
    }
    let token = auth::create_token(hub.store.as_ref(), role, req.label.clone(), hub.clock.now())?;
    Ok(CreatedToken {
        id: auth::token_id(&token),
        token,
        role: role.to_string(),
    })
}

/// Every token (never the tokens themselves), with its last use at the running hub.
pub fn list_tokens(store: &dyn Store) -> Result<TokenList, AdminError> {
    let used = auth::token_uses(store)?;
    let tokens = auth::list_tokens(store)?
        .into_iter()
        .map(|(id, r)| TokenInfo {
            last_used_at: used.get(&id).copied(),
            id,
            role: r.role.to_string(),
            created_at: r.created_at,
            revoked_at: r.revoked_at,
            label: r.label,
        })
        .collect();
    Ok(TokenList { tokens })
}

/// Revokes a token: refused everywhere from then on; its dashboard sessions end at their
/// next request (every request looks the token up again).
pub fn revoke_token(hub: &Hub, req: &TokenRef) -> Result<TokenInfo, AdminError> {
    let (id, r) = auth::revoke_token(hub.store.as_ref(), &req.token, hub.clock.now())?;
    Ok(TokenInfo {
        id,
        role: r.role.to_string(),
        created_at: r.created_at,
        last_used_at: None,
        revoked_at: r.revoked_at,
        label: r.label,
    })
}

/// Grants a deadline extension after checking region, milestone and reason against the
/// hub's campaign: the hub-signed [`Extension`] entry, stamped by the hub clock.
pub fn extend(hub: &Hub, req: &Extend) -> Result<Extended, AdminError> {
    let region = RegionCode::parse(&req.region)
        .map_err(|e| AdminError::Invalid(format!("region {:?}: {e}", req.region)))?;
    if !hub.campaign.is_unit(region.province()) {
        return Err(AdminError::Invalid(format!(
            "region {region} is not inside one of the campaign's provincial units"
        )));
    }
    if hub.campaign.deliverables().all(|d| d.id != req.milestone) {
        return Err(AdminError::Invalid(format!(
            "milestone {:?} is not a deliverable of campaign {}; expected one of {}",
            req.milestone,
            hub.campaign.id,
            hub.campaign
                .deliverables()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if req.reason.trim().is_empty() || req.reason.chars().count() > 2000 {
        return Err(AdminError::Invalid(
            "reason must say why the extension is granted (at most 2000 characters)".into(),
        ));
    }
    let (log_index, _) = hub.append_hub_entry(|seq, at| {
        HubEntry::Extension(Extension {
            seq,
            region,
            milestone: req.milestone.clone(),
            until: req.until,
            reason: req.reason.clone(),
            granted_at: at,
        })
    })?;
    Ok(Extended { log_index })
}

/// The notice rules in force (the campaign file's, with the changes the log holds), each
/// with where its value comes from and whether it may be changed live.
pub fn notice_rules(hub: &Hub) -> NoticeRules {
    let snap = hub.snapshot();
    let rules = snap.views.rules(&hub.campaign);
    let mut origin = std::collections::HashMap::new();
    for (log_index, c) in snap.views.rule_changes() {
        origin.insert(
            c.setting,
            RuleOrigin {
                log_index,
                seq: c.seq,
                at: c.at,
                token: c.token.clone(),
            },
        );
    }
    NoticeRules {
        campaign: hub.campaign.id.clone(),
        rules: NoticeRule::ALL
            .into_iter()
            .map(|r| NoticeRuleInfo {
                setting: r,
                value: rules.rule(r),
                adjustable: hub.campaign.is_adjustable(r),
                changed: origin.remove(&r),
            })
            .collect(),
    }
}

/// Changes a notice rule the campaign file lets change (a hub-signed log entry naming
/// the old and new value, `token` — the calling admin token's id, none on the stopped
/// store — and the hub clock's time). The value already in force changes nothing.
pub fn set_notice_rule(
    hub: &Hub,
    req: &SetNoticeRule,
    token: Option<&str>,
) -> Result<NoticeRuleSet, AdminError> {
    let rule = NoticeRule::parse(&req.setting).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let (change, log_index) = hub.change_notice_rule(rule, &req.value, token)?;
    Ok(NoticeRuleSet {
        setting: rule,
        old: change.old,
        new: change.new,
        log_index,
    })
}

/// Issues a bulletin now, with the notice book's log as its notice log.
pub fn issue_bulletin(
    hub: &Hub,
    notices: &[crate::assessment::BulletinNotice],
) -> Result<Issued, AdminError> {
    let doc = bulletin::issue(hub, None, notices)?;
    let number = doc["number"]
        .as_u64()
        .ok_or_else(|| BulletinError::Malformed("the issued bulletin has no number".into()))?;
    Ok(Issued { number })
}

/// A stored invitation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InviteRecord {
    source: SourceId,
    scope: RegionCode,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// The key that enrolled with it, once used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_by: Option<String>,
}

fn invite_key(secret: &str) -> Vec<u8> {
    let mut k = INVITE.to_vec();
    k.extend_from_slice(Digest::of(secret.as_bytes()).to_hex().as_bytes());
    k
}

/// Makes a one-time enrolment secret for `source` with `scope`; stores only its hash.
/// The source must not be registered yet (checked again at enrolment).
pub fn invite(hub: &Hub, req: &Invite) -> Result<Invited, AdminError> {
    let source = parse_source(&req.source)?;
    let scope = parse_scope(&req.scope)?;
    if hub.snapshot().registry.contains_key(&source) {
        return Err(RegistryError::Exists(source).into());
    }
    let secs = i64::try_from(req.expires_in_secs).unwrap_or(i64::MAX);
    if secs <= 0 || secs > MAX_INVITE.num_seconds() {
        return Err(AdminError::Invalid(format!(
            "expires: {} s is not between 1 s and {} days",
            req.expires_in_secs,
            MAX_INVITE.num_days()
        )));
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| AdminError::Random(e.to_string()))?;
    let secret = hex::encode(raw);
    let now = hub.clock.now();
    let rec = InviteRecord {
        source,
        scope,
        created_at: now,
        expires_at: now + Duration::seconds(secs),
        used_by: None,
    };
    let mut b = WriteBatch::new();
    b.put(
        invite_key(&secret),
        serde_json::to_vec(&rec).unwrap_or_default(),
    );
    hub.store.apply(b)?;
    hub.store.flush()?;
    Ok(Invited {
        secret,
        hub_key: public_key_line(&hub.key.verifying_key()),
        expires_at: rec.expires_at,
    })
}

/// Enrols an agent: checks its proof, the code (known, unused or used by this same key,
/// not expired), registers the key as `agents add` does (a hub-signed log entry) and
/// marks the code used, durably, before answering.
pub fn enrol(hub: &Hub, req: &EnrolRequest) -> Result<Enrolled, AdminError> {
    // Everything anyone can send is judged before the lock: the secret's form, that an
    // invitation with it exists (one key read), then the proof (one verification). An
    // unknown code never waits on, or holds, the lock.
    if !admin::valid_secret(&req.secret) {
        return Err(AdminError::CodeUnknown);
    }
    let k = invite_key(&req.secret);
    let read = || -> Result<InviteRecord, AdminError> {
        hub.store
            .get(&k)?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .ok_or(AdminError::CodeUnknown)
    };
    read()?;
    let hub_key = public_key_line(&hub.key.verifying_key());
    let key = admin::verify_enrol(&hub_key, req)
        .map_err(|e| AdminError::Invalid(format!("enrolment request: {e}")))?;
    let line = public_key_line(&key);
    // One enrolment at a time, so two uses of one code cannot both pass the check below
    // (the code's record is read again under it).
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let mut rec = read()?;
    // Signed, so the agent believes it only from the hub its code pins.
    let answer = Enrolled::signed(&hub.key, rec.source.as_str(), &rec.scope.to_string(), &line);
    match &rec.used_by {
        // The same agent again (its answer was lost): the same answer.
        Some(used) if *used == line => return Ok(answer),
        Some(_) => return Err(AdminError::CodeUnknown),
        None => {}
    }
    if hub.clock.now() >= rec.expires_at {
        return Err(AdminError::CodeExpired(rec.expires_at));
    }
    hub.add_source(rec.source.clone(), rec.scope, &line)?;
    rec.used_by = Some(line);
    let mut b = WriteBatch::new();
    b.put(k, serde_json::to_vec(&rec).unwrap_or_default());
    hub.store.apply(b)?;
    hub.store.flush()?;
    Ok(answer)
}

// ---------------------------------------------------------------------------------------
// The API.

/// An admin bearer token, with its id for the audit lines.
struct AdminCaller {
    /// The first digits of the token's hash ([`auth::token_id`]).
    id: String,
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<AdminCaller, Denied> {
        match bearer_role(s, &parts.headers)? {
            Role::Admin => {
                let token = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                Ok(AdminCaller {
                    id: auth::token_id(token),
                })
            }
            role => Err(Denied::AdminOnly {
                role,
                path: parts.uri.path().to_string(),
            }),
        }
    }
}

/// The admin API's routes and the enrolment endpoint, mounted by [`crate::http::app`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(admin::PATH_SOURCES, get(sources_list).post(sources_add))
        .route(admin::PATH_SOURCES_REVOKE, post(sources_revoke))
        .route(admin::PATH_SOURCES_ROTATE, post(sources_rotate))
        .route(admin::PATH_TOKENS, get(tokens_list).post(tokens_create))
        .route(admin::PATH_TOKENS_REVOKE, post(tokens_revoke))
        .route(admin::PATH_EXTENSIONS, post(extensions_add))
        .route(
            admin::PATH_NOTICE_RULES,
            get(notice_rules_list).post(notice_rules_set),
        )
        .route(admin::PATH_BULLETINS_ISSUE, post(bulletins_issue))
        .route(admin::PATH_INVITES, post(invites_create))
        .route(admin::PATH_ENROL, post(enrol_handler))
        .route(
            admin::PATH_BUNDLE_BATCH,
            // Inside the router-wide limit, so this one wins for this route.
            post(bundle_batch).layer(DefaultBodyLimit::max(crate::state::MAX_BODY)),
        )
        .layer(DefaultBodyLimit::max(admin::MAX_ADMIN_BODY))
}

/// `POST` [`admin::PATH_BUNDLE_BATCH`]: one batch of an offline bundle through the ingest
/// path (`import-bundle --hub`). A batch refused as a whole is an answer, not an HTTP
/// error (the CLI tells it from a refused token); only a storage failure is 503.
async fn bundle_batch(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<admin::BundleBatchAnswer>, AdminError> {
    let bytes = bytes.map_err(|e| {
        AdminError::Body(format!(
            "the batch could not be read ({}); a batch is at most {} bytes",
            e.body_text(),
            crate::state::MAX_BODY
        ))
    })?;
    let batch: spacesync_shared::wire::IngestBatch = spacesync_shared::json::from_slice(&bytes)
        .and_then(serde_json::from_value)
        .map_err(|e| AdminError::Invalid(format!("the body is not an ingest batch: {e}")))?;
    let (source, entries) = (batch.source.clone(), batch.entries.len());
    let hub = s.hub.clone();
    let answer = blocking(move || {
        match hub.ingest_with(batch, spacesync_shared::wire::ReceiptForm::Batch) {
            Ok(o) => Ok(admin::BundleBatchAnswer::Ingested {
                status: o.status,
                appended: o.appended,
                response: o.response,
            }),
            Err(e @ (IngestError::Store(_) | IngestError::Log(_))) => Err(e.into()),
            Err(e) => Ok(admin::BundleBatchAnswer::Refused {
                error: e.to_string(),
            }),
        }
    })
    .await?;
    let appended = match &answer {
        admin::BundleBatchAnswer::Ingested { appended, .. } => *appended,
        admin::BundleBatchAnswer::Refused { .. } => 0,
    };
    info!(target: "audit", admin = %caller.id, action = "bundle.batch", source = %source, entries, appended, "Admin call.");
    Ok(Json(answer))
}

/// The request body as read by axum (within [`admin::MAX_ADMIN_BODY`]), or its refusal.
type Body = Result<Bytes, BytesRejection>;

/// Reads a JSON request body, refusing it in the API's error shape.
fn body<T: serde::de::DeserializeOwned>(bytes: &Body) -> Result<T, AdminError> {
    let bytes = bytes.as_ref().map_err(|e| {
        AdminError::Body(format!(
            "the request body could not be read ({}); an admin request body is at most {} bytes",
            e.body_text(),
            admin::MAX_ADMIN_BODY
        ))
    })?;
    // Duplicate keys refused: two readers of one request cannot disagree about it.
    spacesync_shared::json::from_slice(bytes)
        .and_then(serde_json::from_value)
        .map_err(|e| AdminError::Invalid(format!("the request body is not the expected JSON: {e}")))
}

/// Runs a blocking operation (store writes and flushes) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdminError::Invalid(format!("the operation did not finish: {e}")))?
}

async fn sources_list(
    State(s): State<AppState>,
    caller: AdminCaller,
) -> Result<Json<SourceList>, AdminError> {
    info!(target: "audit", admin = %caller.id, action = "sources.list", "Admin call.");
    Ok(Json(list_sources(&s.hub)))
}

async fn sources_add(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Body,
) -> Result<Json<SourceInfo>, AdminError> {
    let req: AddSource = body(&bytes)?;
    let hub = s.hub.clone();
    let out = blocking(move || add_source(&hub, &req)).await?;
    info!(target: "audit", admin = %caller.id, action = "sources.add", source = %out.id, scope = %out.scope, "Admin call.");
    Ok(Json(out))
}

async fn sources_revoke(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Body,
) -> Result<Json<SourceInfo>, AdminError> {
    let req: SourceRef = body(&bytes)?;
    let hub = s.hub.clone();
    let out = blocking(move || revoke_source(&hub, &req)).await?;
    info!(target: "audit", admin = %caller.id, action = "sources.revoke", source = %out.id, "Admin call.");
    Ok(Json(out))
}

async fn sources_rotate(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Body,
) -> Result<Json<SourceInfo>, AdminError> {
    let req: RotateSource = body(&bytes)?;
    let hub = s.hub.clone();
    let out = blocking(move || rotate_source(&hub, &req)).await?;
    info!(target: "audit", admin = %caller.id, action = "sources.rotate", source = %out.id, from_seq = out.keys.last().map_or(0, |k| k.from_seq), "Admin call.");
    Ok(Json(out))
}

async fn tokens_list(
    State(s): State<AppState>,
    caller: AdminCaller,
) -> Result<Json<TokenList>, AdminError> {
    let hub = s.hub.clone();
    let out = blocking(move || list_tokens(hub.store.as_ref())).await?;
    info!(target: "audit", admin = %caller.id, action = "tokens.list", "Admin call.");
    Ok(Json(out))
}

async fn tokens_create(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Body,
) -> Result<Json<CreatedToken>, AdminError> {
    let req: CreateToken = body(&bytes)?;
    let hub = s.hub.clone();
    let out = blocking(move || create_token(&hub, &req)).await?;
    info!(target: "audit", admin = %caller.id, action = "tokens.create", token = %out.id, role = %out.role, "Admin call.");
    Ok(Json(out))
}

async fn tokens_revoke(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Body,
) -> Result<Json<TokenInfo>, AdminError> {
    let req: TokenRef = body(&bytes)?;
    let hub = s.hub.clone();
    let out = blocking(move || revoke_token(&hub, &req)).await?;
    info!(target: "audit", admin = %caller.id, action = "tokens.revoke", token = %out.id, role = %out.role, "Admin call.");
    Ok(Json(out))
}

async fn extensions_add(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Body,
) -> Result<Json<Extended>, AdminError> {
    let req: Extend = body(&bytes)?;
    let (region, milestone, until) = (req.region.clone(), req.milestone.clone(), req.until);
    let hub = s.hub.clone();
    let out = blocking(move || extend(&hub, &req)).await?;
    info!(target: "audit", admin = %caller.id, action = "extensions.add", region = %region, milestone = %milestone, until = %until, log_index = out.log_index, "Admin call.");
    Ok(Json(out))
}

async fn notice_rules_list(
    State(s): State<AppState>,
    caller: AdminCaller,
) -> Result<Json<NoticeRules>, AdminError> {
    info!(target: "audit", admin = %caller.id, action = "notice_rules.list", "Admin call.");
    Ok(Json(notice_rules(&s.hub)))
}

async fn notice_rules_set(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Body,
) -> Result<Json<NoticeRuleSet>, AdminError> {
    let req: SetNoticeRule = body(&bytes)?;
    let hub = s.hub.clone();
    let id = caller.id.clone();
    let out = blocking(move || set_notice_rule(&hub, &req, Some(&id))).await?;
    info!(target: "audit", admin = %caller.id, action = "notice_rules.set", setting = %out.setting, old = %out.old, new = %out.new, log_index = ?out.log_index, "Admin call.");
    Ok(Json(out))
}

/// The body of `POST` [`admin::PATH_BULLETINS_ISSUE`]: nothing yet.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {}

async fn bulletins_issue(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Body,
) -> Result<Json<Issued>, AdminError> {
    if !bytes.as_ref().is_ok_and(|b| b.is_empty()) {
        let _: IssueBody = body(&bytes)?;
    }
    let (hub, book) = (s.hub.clone(), s.notices.clone());
    let out = blocking(move || issue_bulletin(&hub, &book.log())).await?;
    info!(target: "audit", admin = %caller.id, action = "bulletins.issue", number = out.number, "Admin call.");
    Ok(Json(out))
}

async fn invites_create(
    State(s): State<AppState>,
    caller: AdminCaller,
    bytes: Body,
) -> Result<Json<Invited>, AdminError> {
    let req: Invite = body(&bytes)?;
    let (source, scope) = (req.source.clone(), req.scope.clone());
    let hub = s.hub.clone();
    let out = blocking(move || invite(&hub, &req)).await?;
    info!(target: "audit", admin = %caller.id, action = "invites.create", source = %source, scope = %scope, expires_at = %out.expires_at, "Admin call.");
    Ok(Json(out))
}

/// `POST /v1/enrol`: no token; the code's secret is the credential. A refused attempt is
/// charged to the client's address, as other refused unauthenticated requests are.
async fn enrol_handler(State(s): State<AppState>, Client(addr): Client, bytes: Body) -> Response {
    let refuse = |e: AdminError| -> Response {
        if e.status().is_client_error()
            && let Some(a) = addr
            && let Err(wait) = s.addr_limiter.take(&AddrKey::of(a.ip()))
        {
            let body = ErrorBody {
                error: format!(
                    "too many refused requests from {}; retry after {wait} s (the last was refused because: {e})",
                    a.ip()
                ),
                code: Some(RefusalCode::RateLimited),
                problems: Vec::new(),
            };
            let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            if let Ok(v) = wait.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        e.into_response()
    };
    // An address that has used up its allowance of refused requests is answered before
    // any work (a flood of made-up codes costs nothing but this check).
    if let Some(a) = addr
        && !s.addr_limiter.has_token(&AddrKey::of(a.ip()))
    {
        return refuse(AdminError::CodeUnknown);
    }
    let req: EnrolRequest = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    let key = req.key.clone();
    let hub = s.hub.clone();
    match blocking(move || enrol(&hub, &req)).await {
        Ok(out) => {
            info!(target: "audit", action = "enrol", source = %out.source, scope = %out.scope, key = %key, "Agent enrolled.");
            Json(out).into_response()
        }
        Err(e) => {
            info!(target: "audit", action = "enrol", error = %e, "Enrolment refused.");
            refuse(e)
        }
    }
}

/// The client address of a request, if it came over a socket (in-process callers have
/// none and are not limited per address).
struct Client(Option<SocketAddr>);

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut Parts,
        _: &AppState,
    ) -> Result<Client, std::convert::Infallible> {
        Ok(Client(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}
