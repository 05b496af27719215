//! Who is asking, and may they: the extractors handlers take instead of checking roles
//! themselves, and the dashboard's session table. A handler that names [`Reader`] runs only
//! for a valid bearer token; one that names [`DashboardUser`] only for a logged-in person
//! (or a bearer token); one that names [`RegionReader`] or [`DashboardRegion`] only when
//! the role may read the region in its path.
//!
//! | extractor | used by | refused with |
//! | --- | --- | --- |
//! | [`Reader`] | the API | [`Denied`]: no or unknown bearer token |
//! | [`Admin`] | the API's admin-only endpoints | [`Denied`]: as `Reader`, or not an admin |
//! | [`RegionReader`] | `/v1/regions/{code}` | [`Denied`]: as `Reader`, a malformed code, a region the role may not read |
//! | [`DashboardUser`] | every dashboard page | [`PageRefusal`]: to the login form, or an unknown bearer token |
//! | [`DashboardRegion`] | `/r/{code}`, `/r/{code}/s/{school}` and their flag lists | [`PageRefusal`]: as `DashboardUser`, a code that does not parse (404), a region the role may not read (403) |
//!
//! This module decides; it does not draw. A [`Denied`] is answered as the API's JSON
//! problem by [`crate::http`], a [`PageRefusal`] as a page by [`crate::dashboard`] (their
//! `IntoResponse` impls live there), so neither wire JSON nor HTML is known here and
//! neither surface needs the other.
//!
//! # Sessions
//! A dashboard session is a way of presenting a token without sending it again: the table
//! maps the SHA-256 of a random session id to the SHA-256 of the token that opened it
//! ([`crate::auth::token_hash`]), for [`SESSION_TTL`] of real time. Every request looks the
//! token up again, so a revoked token ends its sessions and the role is the token's
//! current one. Each token holds at most [`MAX_SESSIONS_PER_TOKEN`] sessions (a new login
//! past that ends that token's oldest, never another token's), the table at most
//! [`MAX_SESSIONS`]. The dashboard's router puts its own table on every request
//! ([`crate::dashboard::routes`]), so two hubs in one process never share sessions.
//! Logging in and out is [`crate::dashboard::sessions`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use spacesync_shared::RegionCode;
use spacesync_shared::dsse::Digest;
use spacesync_shared::region::SchoolCode;

use crate::auth::{Role, lookup_token, lookup_token_hash, token_hash};
use crate::state::AppState;
use crate::wording::Lang;

/// How long a session lasts, in real time (not the campaign clock: it protects people's
/// logins, not campaign deadlines).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most sessions held at once; beyond that, expired ones go first, then the oldest. With
/// [`MAX_SESSIONS_PER_TOKEN`] no single token holder can reach it.
pub const MAX_SESSIONS: usize = 10_000;

/// Most sessions one token holds; a login past that ends the token's oldest session.
pub const MAX_SESSIONS_PER_TOKEN: usize = 8;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "spacesync_session";

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
        Ok(Some(rec)) => {
            crate::auth::note_use(s.hub.store.as_ref(), &token_hash(token), s.hub.clock.now());
            Ok(rec.role)
        }
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

// ---------------------------------------------------------------------------------------
// The dashboard: bearer tokens or session cookies.

/// A dashboard request refused; [`crate::dashboard`] draws it as a page in `lang`, with
/// the reader's navigation where there is a reader.
#[derive(Debug)]
pub struct PageRefusal {
    /// The page's language (`?lang=`).
    pub lang: Lang,
    /// The page asked for, with its query: where the login form sends the person back
    /// to, and where the language switch of an error page points.
    pub path: String,
    /// Why.
    pub why: PageDenied,
}

/// Why a dashboard page is not shown.
#[derive(Debug)]
pub enum PageDenied {
    /// Nobody is logged in (no bearer token, no live session): to the login form.
    LogIn,
    /// A bearer token the hub does not know (never issued, or revoked).
    UnknownToken,
    /// What the page names does not exist or does not parse (404).
    NotFound {
        /// The reader's role.
        role: Role,
        /// What was asked for.
        what: Subject,
    },
    /// The reader's role may not read what the page names (403).
    Forbidden {
        /// The reader's role.
        role: Role,
        /// What was asked for.
        what: Subject,
    },
    /// The hub could not answer (the error, for the log).
    Unavailable(String),
}

/// What a dashboard page names, as the request spelled it (it may not parse).
#[derive(Debug, Clone)]
pub enum Subject {
    /// A region code.
    Region(String),
    /// A school code within a region code.
    School {
        /// The region code.
        region: String,
        /// The school code.
        school: String,
    },
    /// A bulletin number.
    Bulletin(String),
}

impl PageRefusal {
    /// A refusal of `user`'s request.
    pub fn of(user: &DashboardUser, why: PageDenied) -> PageRefusal {
        PageRefusal {
            lang: user.lang,
            path: user.path.clone(),
            why,
        }
    }
}

/// A person logged in (or a script with a bearer token), with the page's language and
/// its path (for links that keep the language, and the language switch).
#[derive(Debug, Clone)]
pub struct DashboardUser {
    /// The reader's role, as its token has it now.
    pub role: Role,
    /// `?lang=en` or Chinese.
    pub lang: Lang,
    /// The page's path and query.
    pub path: String,
}

#[derive(Debug, Default, Deserialize)]
struct LangQuery {
    lang: Option<String>,
}

/// The page's language from its query: Chinese unless `lang` says otherwise.
pub fn page_lang(parts: &Parts) -> Lang {
    Query::<LangQuery>::try_from_uri(&parts.uri)
        .ok()
        .and_then(|Query(q)| q.lang)
        .as_deref()
        .and_then(Lang::parse)
        .unwrap_or(Lang::Zh)
}

impl FromRequestParts<AppState> for DashboardUser {
    type Rejection = PageRefusal;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &AppState,
    ) -> Result<DashboardUser, PageRefusal> {
        let lang = page_lang(parts);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        match dashboard_role(s, parts) {
            Ok(role) => Ok(DashboardUser { role, lang, path }),
            Err(why) => Err(PageRefusal { lang, path, why }),
        }
    }
}

/// Who is asking: a bearer token, else a session cookie.
fn dashboard_role(s: &AppState, parts: &Parts) -> Result<Role, PageDenied> {
    let store = s.hub.store.as_ref();
    if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        return match lookup_token(store, token) {
            Ok(Some(rec)) => Ok(rec.role),
            Ok(None) => Err(PageDenied::UnknownToken),
            Err(e) => Err(PageDenied::Unavailable(e.to_string())),
        };
    }
    if let Some(sessions) = parts.extensions.get::<Arc<Sessions>>()
        && let Some(id) = cookie_value(&parts.headers, SESSION_COOKIE)
        && let Some(token) = sessions.token(id)
    {
        // The session holds only while its token does (not revoked), with its role now.
        match lookup_token_hash(store, &token) {
            Ok(Some(rec)) => return Ok(rec.role),
            Ok(None) => sessions.end(id),
            Err(e) => return Err(PageDenied::Unavailable(e.to_string())),
        }
    }
    Err(PageDenied::LogIn)
}

/// A dashboard reader whose role may read the region (and school) the path names: the
/// route's `code` and optional `school` parameters. A code that does not parse is a 404,
/// a region the role may not read a 403, whatever the URL says.
#[derive(Debug, Clone)]
pub struct DashboardRegion {
    /// Who is asking.
    pub user: DashboardUser,
    /// The region.
    pub code: RegionCode,
    /// The school, for school pages.
    pub school: Option<SchoolCode>,
    /// What the path names, as spelled (for a "not found" page after a lookup).
    pub what: Subject,
}

impl FromRequestParts<AppState> for DashboardRegion {
    type Rejection = PageRefusal;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &AppState,
    ) -> Result<DashboardRegion, PageRefusal> {
        let user = DashboardUser::from_request_parts(parts, s).await?;
        let params = Path::<HashMap<String, String>>::from_request_parts(parts, s)
            .await
            .map(|Path(p)| p)
            .unwrap_or_default();
        let raw = params.get("code").cloned().unwrap_or_default();
        let (what, school) = match params.get("school") {
            Some(sc) => (
                Subject::School {
                    region: raw.clone(),
                    school: sc.clone(),
                },
                Some(SchoolCode::parse(sc).map_err(|_| ())),
            ),
            None => (Subject::Region(raw.clone()), None),
        };
        let role = user.role;
        let (Ok(code), Ok(school)) = (RegionCode::parse(&raw), school.transpose()) else {
            return Err(PageRefusal::of(&user, PageDenied::NotFound { role, what }));
        };
        if !role.can_read(code) {
            return Err(PageRefusal::of(&user, PageDenied::Forbidden { role, what }));
        }
        Ok(DashboardRegion {
            user,
            code,
            school,
            what,
        })
    }
}

/// The value of cookie `name`.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------------------------------
// The session table.

/// One logged-in browser.
#[derive(Debug, Clone)]
struct Session {
    /// The SHA-256 of the token presented at login ([`crate::auth::token_hash`]): the
    /// session holds only while that token does, and counts against its quota.
    token: String,
    /// Login order, to end a token's oldest session first.
    serial: u64,
    /// When the session stops being accepted.
    expires: Instant,
}

/// The in-memory session table: SHA-256 of the session id → session. Storing the hash means
/// a memory dump does not hand out live cookies.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    /// The next login's serial.
    serial: AtomicU64,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for the token whose hash is `token`; returns the id to put in the
    /// cookie. The token's sessions past [`MAX_SESSIONS_PER_TOKEN`] − 1 end, oldest first.
    pub fn create(&self, token: &str) -> Result<String, getrandom::Error> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)?;
        let id = URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        let mut mine: Vec<(u64, String)> = map
            .iter()
            .filter(|(_, s)| s.token == token)
            .map(|(k, s)| (s.serial, k.clone()))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_TOKEN {
            mine.sort_unstable();
            for (_, k) in &mine[..=mine.len() - MAX_SESSIONS_PER_TOKEN] {
                map.remove(k);
            }
        }
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.serial)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            Digest::of(id.as_bytes()).to_hex(),
            Session {
                token: token.to_string(),
                serial,
                expires: now + SESSION_TTL,
            },
        );
        Ok(id)
    }

    /// The token hash of a live session.
    pub fn token(&self, id: &str) -> Option<String> {
        let key = Digest::of(id.as_bytes()).to_hex();
        let mut map = self.lock();
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.token.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        self.lock().remove(&Digest::of(id.as_bytes()).to_hex());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_end_and_store_no_id() {
        let s = Sessions::default();
        let id = s.create("hash-a").unwrap();
        assert_eq!(s.token(&id).as_deref(), Some("hash-a"));
        assert!(!s.lock().keys().any(|k| k.contains(&id)));
        assert_eq!(s.token("nope"), None);
        s.lock()
            .values_mut()
            .for_each(|v| v.expires = Instant::now());
        assert_eq!(s.token(&id), None);
        let id = s.create("hash-b").unwrap();
        s.end(&id);
        assert_eq!(s.token(&id), None);
    }

    #[test]
    fn one_token_cannot_evict_another_tokens_sessions() {
        let s = Sessions::default();
        let b = s.create("hash-b").unwrap();
        let a: Vec<String> = (0..MAX_SESSIONS + 1)
            .map(|_| s.create("hash-a").unwrap())
            .collect();
        assert_eq!(s.token(&b).as_deref(), Some("hash-b"));
        assert_eq!(s.lock().len(), MAX_SESSIONS_PER_TOKEN + 1);
        // A's newest sessions live, its older ones ended.
        let (old, new) = a.split_at(a.len() - MAX_SESSIONS_PER_TOKEN);
        assert!(new.iter().all(|id| s.token(id).is_some()));
        assert!(old.iter().all(|id| s.token(id).is_none()));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; spacesync_session=xyz".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie_value(&h, "b"), None);
    }
}
