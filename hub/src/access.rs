//! Who is asking, and may they: the extractors handlers take instead of checking roles
//! themselves. A handler that names [`Reader`] runs only for a valid bearer token; one
//! that names [`RegionReader`] only when the role may read the region in its path.
//!
//! | extractor | used by | refused with |
//! | --- | --- | --- |
//! | [`Reader`] | the API | [`Denied`]: no or unknown bearer token |
//! | [`Admin`] | the API's admin-only endpoints | [`Denied`]: as `Reader`, or not an admin |
//! | [`RegionReader`] | `/v1/regions/{code}` | [`Denied`]: as `Reader`, a malformed code, a region the role may not read |
//!
//! This module decides; it does not draw. A [`Denied`] is answered as the API's JSON
//! problem by [`crate::http`] (its `IntoResponse` impl lives there), so no wire JSON is
//! known here.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use spacesync_shared::RegionCode;

use crate::auth::{Role, lookup_token};
use crate::state::AppState;

// ---------------------------------------------------------------------------------------
// The API: bearer tokens.

/// Why the API refuses a request before its handler runs. [`crate::http`] answers each
/// with its status and this text as the JSON problem.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// No `Authorization: Bearer` header.
    #[error(
        "send Authorization: Bearer <token> (create one with `spacesync-hub token create --role …`)"
    )]
    NoToken,
    /// The token is not known to the hub (never issued, or revoked).
    #[error("unknown token")]
    UnknownToken,
    /// The endpoint at `path` is for admin tokens only.
    #[error("{path} is for admin tokens (this one is {role})")]
    AdminOnly {
        /// The caller's role.
        role: Role,
        /// The endpoint asked for.
        path: String,
    },
    /// The region code in the path does not parse.
    #[error("region code: {0}")]
    BadRegion(String),
    /// The role may not read the region.
    #[error("the role {role} cannot read region {code}")]
    Region {
        /// The caller's role.
        role: Role,
        /// The region asked for.
        code: RegionCode,
    },
    /// The token store could not be read; the hub's fault, not the caller's.
    #[error("the token store could not be read: {0}")]
    Unavailable(String),
}

/// The role of the request's bearer token.
pub fn bearer_role(s: &AppState, headers: &HeaderMap) -> Result<Role, Denied> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Denied::NoToken)?;
    match lookup_token(s.hub.store.as_ref(), token) {
        Ok(Some(rec)) => Ok(rec.role),
        Ok(None) => Err(Denied::UnknownToken),
        Err(e) => Err(Denied::Unavailable(e.to_string())),
    }
}

/// Any valid bearer token, with its role.
#[derive(Debug, Clone, Copy)]
pub struct Reader(pub Role);

impl FromRequestParts<AppState> for Reader {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Reader, Denied> {
        bearer_role(s, &parts.headers).map(Reader)
    }
}

/// An admin bearer token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Admin, Denied> {
        match bearer_role(s, &parts.headers)? {
            Role::Admin => Ok(Admin),
            role => Err(Denied::AdminOnly {
                role,
                path: parts.uri.path().to_string(),
            }),
        }
    }
}

/// A bearer token whose role may read the region named by the route's one path
/// parameter. Checked in this order: the token (401), the code (400), the role (403).
#[derive(Debug, Clone, Copy)]
pub struct RegionReader {
    /// The caller's role.
    pub role: Role,
    /// The region, which the role may read.
    pub code: RegionCode,
}

impl FromRequestParts<AppState> for RegionReader {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<RegionReader, Denied> {
        let role = bearer_role(s, &parts.headers)?;
        let Path(raw) = Path::<String>::from_request_parts(parts, s)
            .await
            .map_err(|e| Denied::BadRegion(e.body_text()))?;
        let code = RegionCode::parse(&raw).map_err(|e| Denied::BadRegion(e.to_string()))?;
        if !role.can_read(code) {
            return Err(Denied::Region { role, code });
        }
        Ok(RegionReader { role, code })
    }
}
