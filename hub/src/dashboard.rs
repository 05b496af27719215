//! The ministry dashboard: server-rendered HTML pages for people, readable without
//! JavaScript (the pages carry no script, and their Content-Security-Policy allows none).
//!
//! # Pages
//! - `GET /` — the latest bulletin (headline figures, links), live progress, and the table
//!   of the 32 provincial units with links to drill down. A province role sees its own
//!   unit only, with its cities.
//! - `GET /r/{code}` — one region: its figures per space kind, its child regions with data,
//!   and for cities and counties their schools.
//! - `GET /r/{code}/s/{school}` — one school's figures.
//! - `GET /notices` — the notice log the role may read.
//! - `GET /sources` — source health: registry status, head, last seen, lag, alarms.
//! - `GET /bulletins/{n}` — an issued bulletin rendered by [`crate::render::html`], for
//!   browser sessions (the API's `/v1/bulletins/{n}.html` takes a bearer token only).
//! - `GET /login`, `POST /login` (form field `token`), `POST /logout`.
//!
//! Every page is Chinese by default; `?lang=en` switches to English and every link the
//! page makes keeps the choice. Numbers go through [`crate::render::count`], coverage is a
//! percentage with an inline CSS bar. All text from data is escaped.
//!
//! # Sessions
//! A person logs in once with a bearer token (`spacesync-hub token create`); the hub checks
//! it with [`lookup_token`] and answers with a cookie holding a fresh random session id
//! (32 bytes from the OS), `HttpOnly; SameSite=Strict; Path=/`, plus `Secure` when a TLS
//! proxy says `X-Forwarded-Proto: https`. The token itself never goes into the cookie, a
//! URL or a log line: there is deliberately no `GET /login?token=` link. Sessions live in
//! memory in this module (keyed by the SHA-256 of the id, mapped to the SHA-256 of the
//! token that opened it) for [`SESSION_TTL`] of real time. Each token holds at most
//! [`MAX_SESSIONS_PER_TOKEN`] sessions — a new login past that ends that token's oldest
//! session, never another token's — and the table at most [`MAX_SESSIONS`]. A session is
//! honoured only while its token is: every request looks the token up again, so revoking
//! it (`spacesync-hub token revoke`) ends its sessions, and the role shown is the token's
//! current one. A restart or `POST /logout` ends them too. Each [`routes`] call has its
//! own session table, so two hubs in one process never share sessions. `POST` requests
//! whose `Origin` names another host are refused (login CSRF); `SameSite=Strict` covers
//! the rest. Pages also accept `Authorization: Bearer <token>` for scripts.
//!
//! Unauthenticated page requests are redirected to `/login?next=<page>`. A role that may
//! not read a region gets a 403 page, whatever the URL says.
//!
//! Architecture invariant: this module reads the hub's state and renders; it writes
//! nothing to the store, and it never shows personal data (contact forms are not read).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use spacesync_shared::dsse::Digest;
use spacesync_shared::record::SpaceKind;
use spacesync_shared::region::{Directory, Level, SchoolCode, unit};
use spacesync_shared::{RegionCode, SourceId};
use tracing::error;

use crate::auth::{Role, lookup_token, lookup_token_hash, token_hash};
use crate::registry::SourceStatus;
use crate::render::{Lang, count, date};
use crate::state::AppState;
use crate::views::{Figures, Flag, Rollup, region_name};

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
    serial: std::sync::atomic::AtomicU64,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for the token whose hash is `token`; returns the id to put in the
    /// cookie. The token's sessions past [`MAX_SESSIONS_PER_TOKEN`] − 1 end, oldest first.
    fn create(&self, token: &str) -> Result<String, getrandom::Error> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)?;
        let id = URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    fn token(&self, id: &str) -> Option<String> {
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
    fn end(&self, id: &str) {
        self.lock().remove(&Digest::of(id.as_bytes()).to_hex());
    }
}

/// The dashboard's routes, to be merged into [`crate::http::app`]. Each call has its own
/// session table.
pub fn routes() -> Router<AppState> {
    let sessions = Arc::new(Sessions::default());
    Router::new()
        .route("/", get(home))
        .route("/r/{code}", get(region_page))
        .route("/r/{code}/s/{school}", get(school_page))
        .route("/notices", get(notices_page))
        .route("/sources", get(sources_page))
        .route("/bulletins/{n}", get(bulletin_page))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .layer(Extension(sessions))
}

/// The notice log a role may read, newest first, as the notice book's JSON (`id`, `rule`,
/// `subject`, `addressee`, `created`, `state`, `text`, `text_en`, …). The one place the
/// dashboard reads notices.
pub fn notices_for_dashboard(s: &AppState, role: Role) -> Vec<Value> {
    s.hub.notices.list(role)
}

// ---------------------------------------------------------------------------------------
// Requests: language, who is asking.

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    lang: Option<String>,
    next: Option<String>,
}

impl PageQuery {
    fn lang(&self) -> Lang {
        self.lang
            .as_deref()
            .and_then(Lang::parse)
            .unwrap_or(Lang::Zh)
    }
}

fn t(lang: Lang, zh: &'static str, en: &'static str) -> &'static str {
    match lang {
        Lang::Zh => zh,
        Lang::En => en,
    }
}

/// `path` with the language kept (`?lang=en` only for English, the default being Chinese).
fn link(path: &str, lang: Lang) -> String {
    match lang {
        Lang::Zh => path.to_string(),
        Lang::En if path.contains('?') => format!("{path}&lang=en"),
        Lang::En => format!("{path}?lang=en"),
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Who is asking: a bearer token, else a session cookie; otherwise the answer to send
/// (a redirect to the login page, or an error page for a bad token).
fn who(
    s: &AppState,
    sessions: &Sessions,
    headers: &HeaderMap,
    uri: &Uri,
    lang: Lang,
) -> Result<Role, Box<Response>> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        return match lookup_token(s.hub.store.as_ref(), token) {
            Ok(Some(rec)) => Ok(rec.role),
            Ok(None) => Err(Box::new(message_page(
                lang,
                None,
                StatusCode::UNAUTHORIZED,
                t(lang, "令牌无效", "Unknown token"),
                t(
                    lang,
                    "请求所带的 Authorization: Bearer 令牌不存在。",
                    "The Authorization: Bearer token is not known to this hub.",
                ),
            ))),
            Err(e) => Err(Box::new(unavailable(lang, e))),
        };
    }
    if let Some(id) = cookie_value(headers, SESSION_COOKIE)
        && let Some(token) = sessions.token(id)
    {
        // The session holds only while its token does (not revoked), with its role now.
        match lookup_token_hash(s.hub.store.as_ref(), &token) {
            Ok(Some(rec)) => return Ok(rec.role),
            Ok(None) => sessions.end(id),
            Err(e) => return Err(Box::new(unavailable(lang, e))),
        }
    }
    let next = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    Err(Box::new(redirect(&format!(
        "/login?next={}",
        url_encode(&next)
    ))))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A `next` target that stays on this site: a path, not `//host` or `/\host`.
fn safe_next(next: Option<&str>) -> Option<&str> {
    next.filter(|n| {
        n.starts_with('/')
            && !n.starts_with("//")
            && !n.starts_with("/\\")
            && !n.chars().any(|c| c.is_control())
    })
}

/// A `POST` whose `Origin` names another host is refused (cross-site form posts). The host
/// is `Host`, or `X-Forwarded-Host` behind a proxy that rewrites `Host`.
fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin_host = origin
        .split_once("://")
        .map(|(_, h)| h)
        .unwrap_or(origin)
        .trim_end_matches('/');
    let ours = [header::HOST.as_str(), "x-forwarded-host"]
        .into_iter()
        .filter_map(|h| headers.get(h).and_then(|v| v.to_str().ok()))
        .flat_map(|v| v.split(','))
        .any(|h| h.trim().eq_ignore_ascii_case(origin_host));
    !ours
}

// ---------------------------------------------------------------------------------------
// Responses.

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // No script may run: the pages are plain HTML and CSS.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const CSS: &str = r#"
body{font-family:"Noto Sans CJK SC","Source Han Sans SC","Microsoft YaHei",sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#8b1a1a;color:#fff;padding:.6em 1.5em;display:flex;flex-wrap:wrap;align-items:center;gap:1.2em}
header a{color:#fff;text-decoration:none} header a:hover{text-decoration:underline}
header .site{font-weight:bold;font-size:1.1em} header .spacer{flex:1}
header form{margin:0} header button{background:none;border:1px solid #fff;color:#fff;padding:.15em .6em;cursor:pointer}
main{padding:1em 1.5em 3em;max-width:80em}
h1{font-size:1.4em;margin:.4em 0} h2{font-size:1.1em;margin-top:1.6em;border-bottom:2px solid #b22;padding-bottom:.2em}
nav.crumbs{font-size:.9em;color:#555;margin-top:.5em} nav.crumbs a{color:#1a4f8b}
table{border-collapse:collapse;background:#fff;font-size:.9em;margin:.4em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:middle}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
a{color:#1a4f8b}
.bar{display:inline-block;background:#e4e4e4;height:.75em;width:7em;vertical-align:middle;margin-right:.4em}
.bar span{display:block;height:100%;background:#2a7}
.bar span.low{background:#e90} .bar span.none{background:none}
.box{background:#fff;border:1px solid #ddd;padding:.6em 1em;margin:.6em 0}
.meta{color:#666;font-size:.85em} .warn{color:#b00;font-weight:bold} .ok{color:#272}
.error{background:#fee;border:1px solid #c66;padding:.5em 1em}
caption{text-align:left;font-weight:bold;padding:.2em 0}
"#;

/// A whole page: header with navigation, language switch and logout, then `body`.
fn page(lang: Lang, role: Option<Role>, path: &str, title: &str, body: &str) -> String {
    let mut s = String::new();
    let other = match lang {
        Lang::Zh => ("English", with_lang(path, Lang::En)),
        Lang::En => ("中文", with_lang(path, Lang::Zh)),
    };
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"{}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · {}</title><style>{CSS}</style></head><body><header>\
         <a class=\"site\" href=\"{}\">{}</a>",
        t(lang, "zh-CN", "en"),
        esc(title),
        t(lang, "网络学习空间应用普及活动", "Learning spaces campaign"),
        esc(&link("/", lang)),
        t(
            lang,
            "网络学习空间应用普及活动 · 工作看板",
            "Learning spaces campaign · Dashboard"
        ),
    );
    if let Some(role) = role {
        let _ = write!(
            s,
            "<a href=\"{}\">{}</a><a href=\"{}\">{}</a><a href=\"{}\">{}</a>",
            esc(&link("/", lang)),
            t(lang, "进度总览", "Progress"),
            esc(&link("/notices", lang)),
            t(lang, "通知记录", "Notices"),
            esc(&link("/sources", lang)),
            t(lang, "数据源状态", "Sources"),
        );
        let _ = write!(
            s,
            "<span class=\"spacer\"></span><span id=\"role\" data-role=\"{}\">{}</span>",
            esc(&role.to_string()),
            esc(&role_label(role, lang)),
        );
    } else {
        s.push_str("<span class=\"spacer\"></span>");
    }
    let _ = write!(
        s,
        "<a id=\"lang-switch\" href=\"{}\">{}</a>",
        esc(&other.1),
        other.0
    );
    if role.is_some() {
        let _ = write!(
            s,
            "<form id=\"logout\" method=\"post\" action=\"/logout\"><button type=\"submit\">{}</button></form>",
            t(lang, "退出", "Log out")
        );
    }
    let _ = writeln!(s, "</header><main>{body}</main></body></html>");
    s
}

/// `path` (which may carry `?lang=`) switched to `lang`.
fn with_lang(path: &str, lang: Lang) -> String {
    let (p, q) = path.split_once('?').unwrap_or((path, ""));
    let rest: Vec<&str> = q
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("lang="))
        .collect();
    let base = if rest.is_empty() {
        p.to_string()
    } else {
        format!("{p}?{}", rest.join("&"))
    };
    link(&base, lang)
}

/// A page with one message; `reader` keeps the header (navigation, language switch back to
/// the same page) for a logged-in reader.
fn message_page(
    lang: Lang,
    reader: Option<(Role, &str)>,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"error\" id=\"message\">{}</p><p><a href=\"{}\">{}</a></p>",
        esc(title),
        esc(text),
        esc(&link("/", lang)),
        t(lang, "返回总览", "Back to the overview"),
    );
    let (role, path) = reader.map_or((None, "/"), |(r, p)| (Some(r), p));
    html(status, page(lang, role, path, title, &body))
}

fn forbidden(lang: Lang, role: Role, path: &str, what: &str) -> Response {
    let text = match lang {
        Lang::Zh => format!("当前身份（{}）无权查看{}。", role_label(role, lang), what),
        Lang::En => format!(
            "Your role ({}) may not read {what}.",
            role_label(role, lang)
        ),
    };
    message_page(
        lang,
        Some((role, path)),
        StatusCode::FORBIDDEN,
        t(lang, "无权访问", "Forbidden"),
        &text,
    )
}

fn not_found(lang: Lang, role: Role, path: &str, what: &str) -> Response {
    let text = match lang {
        Lang::Zh => format!("找不到{what}。"),
        Lang::En => format!("{what} was not found."),
    };
    message_page(
        lang,
        Some((role, path)),
        StatusCode::NOT_FOUND,
        t(lang, "未找到", "Not found"),
        &text,
    )
}

fn unavailable(lang: Lang, e: impl std::fmt::Display) -> Response {
    error!(error = %e, "Dashboard page failed.");
    message_page(
        lang,
        None,
        StatusCode::SERVICE_UNAVAILABLE,
        t(lang, "暂时无法显示", "Temporarily unavailable"),
        t(
            lang,
            "服务暂时无法完成请求，请稍后重试（详情见服务日志）。",
            "The hub could not complete the request; retry later (details are in the hub's log).",
        ),
    )
}

// ---------------------------------------------------------------------------------------
// Formatting.

fn role_label(role: Role, lang: Lang) -> String {
    match role {
        Role::Admin => t(lang, "管理员", "admin").to_string(),
        Role::Ministry => t(lang, "教育部", "ministry").to_string(),
        Role::Province(p) => region_label(p, lang),
    }
}

/// A region's name for display: the unit's English name for provinces in English, else
/// the directory's Chinese name (a municipality's `市辖区` gets its province's name).
fn region_label(code: RegionCode, lang: Lang) -> String {
    if code.level() == Level::Province
        && lang == Lang::En
        && let Some(u) = unit(code).filter(|u| u.code == code.as_u32())
    {
        return u.name_en.to_string();
    }
    match region_name(code) {
        Some(n) if n == "市辖区" || n == "县" => {
            format!("{}{n}", region_name(code.province()).unwrap_or_default())
        }
        Some(n) => n,
        None => code.to_string(),
    }
}

fn kind_label(k: SpaceKind, lang: Lang) -> &'static str {
    match k {
        SpaceKind::Teacher => t(lang, "教师个人空间", "Teacher"),
        SpaceKind::Student => t(lang, "学生个人空间", "Student"),
        SpaceKind::Parent => t(lang, "家长个人空间", "Parent"),
        SpaceKind::MasterTeacher => t(lang, "名师个人空间", "Master teacher"),
        SpaceKind::School => t(lang, "学校机构空间", "School"),
        SpaceKind::Region => t(lang, "区域机构空间", "Region"),
        SpaceKind::Class => t(lang, "班级机构空间", "Class"),
        SpaceKind::Club => t(lang, "社团机构空间", "Club"),
    }
}

fn level_label(l: Level, lang: Lang) -> &'static str {
    match l {
        Level::Province => t(lang, "省级单位", "Provincial unit"),
        Level::City => t(lang, "地市", "City"),
        Level::County => t(lang, "区县", "County"),
    }
}

fn opt_count(lang: Lang, n: Option<i64>) -> String {
    n.map_or("—".to_string(), |n| count(lang, n))
}

fn pct(r: Option<f64>) -> String {
    r.map_or("—".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// A percentage with an inline bar (capped at 100 % wide).
fn pct_bar(r: Option<f64>, low: f64) -> String {
    let (w, class) = match r {
        Some(r) => (
            (r * 100.0).clamp(0.0, 100.0),
            if r < low { "low" } else { "" },
        ),
        None => (0.0, "none"),
    };
    format!("<span class=\"bar\"><span class=\"{class}\" style=\"width:{w:.1}%\"></span></span>")
}

/// A table cell the tests (and people) can find: `data-field` names the figure.
fn cell(field: &str, text: &str) -> String {
    format!(
        "<td class=\"num\" data-field=\"{}\">{}</td>",
        esc(field),
        esc(text)
    )
}

fn pct_cell(field: &str, r: Option<f64>) -> String {
    format!(
        "<td class=\"num\">{}<span data-field=\"{}\">{}</span></td>",
        pct_bar(r, 0.5),
        esc(field),
        pct(r)
    )
}

/// A time on the campaign's clock: `2018年11月20日 10:00` or `2018-11-20 10:00`.
fn when(s: &AppState, lang: Lang, at: DateTime<Utc>) -> String {
    let local = at.with_timezone(&s.hub.campaign.utc_offset);
    format!(
        "{} {}",
        date(lang, &local.format("%Y-%m-%d").to_string()),
        local.format("%H:%M")
    )
}

fn lag_text(lang: Lang, secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match lang {
        Lang::Zh if secs < 60 => "不到1分钟".into(),
        Lang::En if secs < 60 => "under a minute".into(),
        Lang::Zh if d > 0 => format!("{d}天{h}小时"),
        Lang::En if d > 0 => format!("{d} d {h} h"),
        Lang::Zh if h > 0 => format!("{h}小时{m}分"),
        Lang::En if h > 0 => format!("{h} h {m} min"),
        Lang::Zh => format!("{m}分钟"),
        Lang::En => format!("{m} min"),
    }
}

/// Real-name share of personal spaces (kinds where both figures are known).
fn real_name_share(f: &Figures) -> Option<f64> {
    let (mut all, mut real) = (0u64, 0u64);
    for k in SpaceKind::ALL.iter().filter(|k| k.is_personal()) {
        if let (Some(a), Some(r)) = (f.spaces.get(*k), f.real_name.get(*k)) {
            all += a;
            real += r;
        }
    }
    (all > 0).then(|| real as f64 / all as f64)
}

fn spaces_total(f: &Figures) -> Option<i64> {
    (!f.spaces.is_empty()).then(|| f.spaces.total() as i64)
}

/// The header row of a table of regions or schools.
fn figures_header(lang: Lang, first: &str) -> String {
    format!(
        "<tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t(lang, "代码", "Code"),
        esc(first),
        t(lang, "空间总数", "Spaces"),
        t(lang, "新增空间", "New spaces"),
        t(lang, "教师覆盖率", "Teacher coverage"),
        t(lang, "学生覆盖率", "Student coverage"),
        t(lang, "学校覆盖率", "School coverage"),
    )
}

/// One row of a table of regions or schools, linking to `href`.
fn figures_row(lang: Lang, row: &str, code: &str, name: &str, href: &str, f: &Figures) -> String {
    let c = f.coverage();
    format!(
        "<tr data-row=\"{}\" data-code=\"{}\"><td>{}</td><td><a class=\"drill\" href=\"{}\">{}</a></td>{}{}{}{}{}</tr>",
        esc(row),
        esc(code),
        esc(code),
        esc(href),
        esc(name),
        cell("spaces", &opt_count(lang, spaces_total(f))),
        cell(
            "new_spaces",
            &if f.spaces.is_empty() {
                "—".to_string()
            } else {
                count(lang, f.new_spaces())
            }
        ),
        pct_cell("cov_teachers", c.teachers),
        pct_cell("cov_students", c.students),
        pct_cell("cov_schools", c.schools),
    )
}

/// Summary of one region, school or the nation: new spaces against a target, coverage,
/// real-name share and denominators, then the figures per space kind.
fn summary(lang: Lang, f: &Figures, target: Option<(u64, u64)>) -> String {
    let mut s = String::new();
    let c = f.coverage();
    s.push_str("<table id=\"summary\"><tbody data-row=\"summary\">");
    let _ = write!(
        s,
        "<tr><th>{}</th>{}<th>{}</th>{}</tr>",
        t(lang, "空间总数", "Spaces"),
        cell("spaces", &opt_count(lang, spaces_total(f))),
        t(lang, "新增空间", "New spaces"),
        cell("new_spaces", &count(lang, f.new_spaces())),
    );
    if let Some((target, expected)) = target {
        let ratio = (target > 0).then(|| f.new_spaces() as f64 / target as f64);
        let pace = (expected > 0).then(|| f.new_spaces() as f64 / expected as f64);
        let _ = write!(
            s,
            "<tr><th>{}</th>{}<th>{}</th>{}</tr><tr><th>{}</th><td class=\"num\" colspan=\"3\">{}<span data-field=\"target_share\">{}</span> · {} <span data-field=\"pace\">{}</span></td></tr>",
            t(lang, "新增目标", "Target (new)"),
            cell("target", &count(lang, target as i64)),
            t(lang, "按计划应达", "Expected by now"),
            cell("expected", &count(lang, expected as i64)),
            t(lang, "完成目标", "Of target"),
            pct_bar(ratio, 0.0),
            pct(ratio),
            t(lang, "相对计划进度", "against plan"),
            pct(pace),
        );
    }
    let _ = write!(
        s,
        "<tr><th>{}</th>{}<th>{}</th>{}</tr><tr><th>{}</th>{}<th>{}</th>{}</tr>",
        t(lang, "教师覆盖率", "Teacher coverage"),
        pct_cell("cov_teachers", c.teachers),
        t(lang, "学生覆盖率", "Student coverage"),
        pct_cell("cov_students", c.students),
        t(lang, "学校覆盖率", "School coverage"),
        pct_cell("cov_schools", c.schools),
        t(lang, "实名制比例", "Real-name share"),
        pct_cell("real_name_share", real_name_share(f)),
    );
    let p = &f.population;
    let _ = write!(
        s,
        "<tr><th>{}</th>{}<th>{}</th>{}</tr><tr><th>{}</th>{}<th></th><td></td></tr>",
        t(lang, "教师数", "Teachers"),
        cell(
            "pop_teachers",
            &opt_count(lang, p.teachers.map(|v| v as i64))
        ),
        t(lang, "学生数", "Students"),
        cell(
            "pop_students",
            &opt_count(lang, p.students.map(|v| v as i64))
        ),
        t(lang, "学校数", "Schools"),
        cell("pop_schools", &opt_count(lang, p.schools.map(|v| v as i64))),
    );
    s.push_str("</tbody></table>");
    let _ = write!(
        s,
        "<h2>{}</h2><table id=\"kinds\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t(lang, "分类空间", "Spaces by kind"),
        t(lang, "空间类型", "Kind"),
        t(lang, "空间数", "Spaces"),
        t(lang, "其中实名", "Real-name"),
        t(lang, "基线", "Baseline"),
        t(lang, "新增", "New"),
    );
    for k in SpaceKind::ALL {
        if f.spaces.get(k).is_none() && f.baseline.get(k).is_none() {
            continue;
        }
        let g = |v: Option<u64>| opt_count(lang, v.map(|v| v as i64));
        let _ = write!(
            s,
            "<tr data-row=\"kind:{}\"><td>{}</td>{}{}{}{}</tr>",
            k.as_str(),
            kind_label(k, lang),
            cell("spaces", &g(f.spaces.get(k))),
            cell("real_name", &g(f.real_name.get(k))),
            cell("baseline", &g(f.baseline.get(k))),
            cell("new", &opt_count(lang, f.new_of(k))),
        );
    }
    s.push_str("</table>");
    s
}

fn flag_text(lang: Lang, f: &Flag) -> String {
    let subject = |r: &RegionCode, sc: &Option<SchoolCode>| match sc {
        Some(sc) => format!("{} {sc}", region_label(*r, lang)),
        None => region_label(*r, lang),
    };
    match f {
        Flag::Decrease {
            region,
            school,
            kind,
            before,
            after,
            source,
        } => format!(
            "{}：{} {} {}（{}）→ {}（{}），{} {source}",
            t(lang, "数量减少", "Decrease"),
            subject(region, school),
            kind_label(*kind, lang),
            count(lang, before.1 as i64),
            date(lang, &before.0.to_string()),
            count(lang, after.1 as i64),
            date(lang, &after.0.to_string()),
            t(lang, "来源", "source"),
        ),
        Flag::Conflict {
            region,
            school,
            as_of,
            sources,
        } => format!(
            "{}：{} {} {}",
            t(
                lang,
                "多源同日报送",
                "Same-day reports from several sources"
            ),
            subject(region, school),
            date(lang, &as_of.to_string()),
            sources
                .iter()
                .map(SourceId::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Flag::Discrepancy {
            region,
            kind,
            reported,
            sum_of_parts,
        } => format!(
            "{}：{} {} {} {}，{} {}",
            t(lang, "合计不一致", "Discrepancy"),
            region_label(*region, lang),
            kind_label(*kind, lang),
            t(lang, "自报", "reported"),
            count(lang, *reported as i64),
            t(lang, "下级合计", "sum of parts"),
            count(lang, *sum_of_parts as i64),
        ),
    }
}

fn flag_region(f: &Flag) -> RegionCode {
    match f {
        Flag::Decrease { region, .. }
        | Flag::Conflict { region, .. }
        | Flag::Discrepancy { region, .. } => *region,
    }
}

/// Flags about regions inside `within` (all flags when `None`).
fn flags_section(lang: Lang, rollup: &Rollup, within: Option<RegionCode>) -> String {
    let flags: Vec<&Flag> = rollup
        .flags
        .iter()
        .filter(|f| within.is_none_or(|w| flag_region(f).is_within(w)))
        .collect();
    if flags.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "<h2>{}</h2><ul id=\"flags\">",
        t(
            lang,
            "数据标记（减少、冲突、不一致）",
            "Flagged data (decreases, conflicts, discrepancies)"
        )
    );
    for f in flags {
        let _ = write!(s, "<li>{}</li>", esc(&flag_text(lang, f)));
    }
    s.push_str("</ul>");
    s
}

/// Breadcrumbs from the nation (for roles that read it) down to `code`.
fn crumbs(lang: Lang, role: Role, code: RegionCode, school: Option<SchoolCode>) -> String {
    let mut chain = vec![code];
    let mut c = code;
    while let Some(p) = c.parent() {
        chain.push(p);
        c = p;
    }
    chain.reverse();
    let mut parts = Vec::new();
    if role.reads_all() {
        parts.push(format!(
            "<a href=\"{}\">{}</a>",
            esc(&link("/", lang)),
            t(lang, "全国", "Nation")
        ));
    }
    for r in chain {
        parts.push(format!(
            "<a href=\"{}\">{}</a>",
            esc(&link(&format!("/r/{r}"), lang)),
            esc(&region_label(r, lang))
        ));
    }
    if let Some(sc) = school {
        parts.push(esc(&sc.to_string()));
    }
    format!("<nav class=\"crumbs\">{}</nav>", parts.join(" › "))
}

// ---------------------------------------------------------------------------------------
// Pages.

/// The latest bulletin's headline figures and links; for a province role, also its own
/// line of the bulletin (bulletins are published to every reader, as in the API).
fn bulletin_box(s: &AppState, lang: Lang, role: Role) -> Result<String, Box<Response>> {
    let list =
        crate::bulletin::list(s.hub.store.as_ref()).map_err(|e| Box::new(unavailable(lang, e)))?;
    let mut out = format!(
        "<h2>{}</h2><div class=\"box\" id=\"bulletin\">",
        t(lang, "最新进度通报", "Latest bulletin")
    );
    let Some(n) = list.last().and_then(|b| b["number"].as_u64()) else {
        let _ = write!(
            out,
            "<p>{}</p></div>",
            t(
                lang,
                "尚未发布进度通报。",
                "No bulletin has been issued yet."
            )
        );
        return Ok(out);
    };
    let doc = crate::bulletin::get(s.hub.store.as_ref(), n)
        .map_err(|e| Box::new(unavailable(lang, e)))?;
    let nation = &doc["nation"];
    let title = doc[t(lang, "title", "title_en")].as_str().unwrap_or("");
    let _ = write!(
        out,
        "<p><b><a id=\"bulletin-link\" href=\"{}\">{}</a></b> <span class=\"meta\">{} {} · {} {}</span></p>",
        esc(&link(&format!("/bulletins/{n}"), lang)),
        esc(title),
        t(lang, "数据截至", "data as of"),
        esc(&date(lang, doc["as_of_date"].as_str().unwrap_or(""))),
        t(lang, "发布于", "issued"),
        esc(&date(lang, doc["issued_at"].as_str().unwrap_or(""))),
    );
    let num = |v: &Value| v.as_i64().map_or("—".to_string(), |n| count(lang, n));
    let ratio = |v: &Value| pct(v.as_f64());
    let _ = write!(
        out,
        "<table><caption>{}</caption><tbody data-row=\"bulletin\"><tr><th>{}</th>{}<th>{}</th>{}<th>{}</th>{}</tr>\
         <tr><th>{}</th>{}<th>{}</th>{}<th>{}</th>{}</tr></tbody></table>",
        t(lang, "全国", "Nation"),
        t(lang, "新增空间", "New spaces"),
        cell("new_spaces", &num(&nation["new_spaces"])),
        t(lang, "目标", "Target"),
        cell("target", &num(&nation["target"]["new_spaces"])),
        t(lang, "按计划应达", "Expected by then"),
        cell("expected", &num(&nation["pace"]["expected"])),
        t(lang, "教师覆盖率", "Teacher coverage"),
        cell("cov_teachers", &ratio(&nation["coverage"]["teachers"])),
        t(lang, "学生覆盖率", "Student coverage"),
        cell("cov_students", &ratio(&nation["coverage"]["students"])),
        t(lang, "进度落后单位", "Lagging units"),
        cell(
            "lagging",
            &doc["lagging"].as_array().map_or(0, Vec::len).to_string()
        ),
    );
    if let Role::Province(p) = role
        && let Some(own) = doc["provinces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["code"].as_str() == Some(p.to_string().as_str()))
    {
        let _ = write!(
            out,
            "<table><caption>{}</caption><tbody data-row=\"bulletin-own\"><tr><th>{}</th>{}<th>{}</th>{}<th>{}</th>{}</tr></tbody></table>",
            esc(&region_label(p, lang)),
            t(lang, "排名", "Rank"),
            cell("rank", &num(&own["rank"])),
            t(lang, "新增空间", "New spaces"),
            cell("new_spaces", &num(&own["new_spaces"])),
            t(lang, "相对计划进度", "Against plan"),
            cell("pace", &ratio(&own["pace"]["ratio"])),
        );
    }
    let _ = write!(
        out,
        "<p class=\"meta\">{} <a href=\"{}\">/v1/bulletins/{n}.html</a> · <a href=\"{}\">.json</a> · <a href=\"{}\">.csv</a>{}</p></div>",
        t(lang, "接口（需 Bearer 令牌）：", "API (bearer token):"),
        esc(&link(&format!("/v1/bulletins/{n}.html"), lang)),
        esc(&format!("/v1/bulletins/{n}.json")),
        esc(&link(&format!("/v1/bulletins/{n}.csv"), lang)),
        match list.len() {
            1 => String::new(),
            k => match lang {
                Lang::Zh => format!(" · 共{k}期"),
                Lang::En => format!(" · {k} issued"),
            },
        },
    );
    Ok(out)
}

async fn home(
    State(s): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let lang = q.lang();
    let role = match who(&s, &sessions, &headers, &uri, lang) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let bulletin = match bulletin_box(&s, lang, role) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let hub = &s.hub;
    let now = hub.clock.now();
    let (rollup, log_size) = {
        let st = hub.state();
        (st.views.rollup(&hub.campaign), st.log.size())
    };
    let campaign = &hub.campaign;
    let share = crate::tracking::trajectory_share(campaign, campaign.local_date(now));
    let mut body = String::new();
    let heading = match role {
        Role::Province(p) => match lang {
            Lang::Zh => format!("{}工作进度", region_label(p, lang)),
            Lang::En => format!("{}: progress", region_label(p, lang)),
        },
        _ => t(lang, "全国工作进度", "National progress").to_string(),
    };
    let _ = write!(body, "<h1>{}</h1>", esc(&heading));
    body.push_str(&bulletin);
    let _ = write!(
        body,
        "<h2>{}</h2><p class=\"meta\" id=\"live\">{} {} · {} {}</p>",
        t(lang, "实时进度", "Live progress"),
        t(lang, "截至", "As of"),
        esc(&when(&s, lang, now)),
        t(lang, "日志条目", "log entries"),
        count(lang, log_size as i64),
    );
    let units: Vec<RegionCode> = campaign
        .units
        .iter()
        .copied()
        .filter(|u| role.can_read(*u))
        .collect();
    match role {
        Role::Province(p) => {
            let f = rollup.region(p);
            let target = campaign
                .target
                .provinces
                .get(&p)
                .map(|t| (*t, (*t as f64 * share).round() as u64));
            body.push_str(&summary(lang, &f, target));
        }
        _ => {
            let t_all = campaign.target.new_spaces;
            body.push_str(&summary(
                lang,
                &rollup.nation,
                Some((t_all, (t_all as f64 * share).round() as u64)),
            ));
        }
    }
    let _ = write!(
        body,
        "<h2>{}</h2><table id=\"units\">{}",
        t(lang, "省级单位", "Provincial units"),
        figures_header(lang, t(lang, "单位", "Unit"))
    );
    for u in &units {
        body.push_str(&figures_row(
            lang,
            &format!("unit:{u}"),
            &u.to_string(),
            &region_label(*u, lang),
            &link(&format!("/r/{u}"), lang),
            &rollup.region(*u),
        ));
    }
    body.push_str("</table>");
    if let Role::Province(p) = role {
        body.push_str(&children_section(lang, &rollup, p));
        body.push_str(&flags_section(lang, &rollup, Some(p)));
    } else {
        body.push_str(&flags_section(lang, &rollup, None));
    }
    let title = heading;
    html(
        StatusCode::OK,
        page(lang, Some(role), &path_of(&uri), &title, &body),
    )
}

fn path_of(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string())
}

/// Child regions with data, linked, and a note on listed children without data.
fn children_section(lang: Lang, rollup: &Rollup, code: RegionCode) -> String {
    let children: Vec<(&RegionCode, &Figures)> = rollup
        .totals
        .iter()
        .filter(|(c, _)| c.parent() == Some(code))
        .collect();
    let listed = Directory::bundled()
        .children(code)
        .iter()
        .filter(|c| c.parent() == Some(code))
        .count();
    let heading = match code.level() {
        Level::Province => t(lang, "地市", "Cities"),
        _ => t(lang, "区县", "Counties"),
    };
    let mut s = format!("<h2>{heading}</h2>");
    if children.is_empty() {
        let _ = write!(
            s,
            "<p>{}</p>",
            t(
                lang,
                "下级区划暂无数据。",
                "No data from the divisions below yet."
            )
        );
    } else {
        let _ = write!(
            s,
            "<table id=\"children\">{}",
            figures_header(lang, t(lang, "区划", "Division"))
        );
        for (c, f) in &children {
            s.push_str(&figures_row(
                lang,
                &format!("child:{c}"),
                &c.to_string(),
                &region_label(**c, lang),
                &link(&format!("/r/{c}"), lang),
                f,
            ));
        }
        s.push_str("</table>");
    }
    let silent = listed.saturating_sub(children.len());
    if silent > 0 {
        let _ = write!(
            s,
            "<p class=\"meta\">{}</p>",
            match lang {
                Lang::Zh => format!("另有{silent}个下级区划暂无数据。"),
                Lang::En => format!("{silent} more listed divisions have no data yet."),
            }
        );
    }
    s
}

async fn region_page(
    State(s): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Path(code): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let lang = q.lang();
    let role = match who(&s, &sessions, &headers, &uri, lang) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let path = path_of(&uri);
    let Ok(code) = RegionCode::parse(&code) else {
        return not_found(
            lang,
            role,
            &path,
            &match lang {
                Lang::Zh => format!("区划 {code}"),
                Lang::En => format!("Region {code}"),
            },
        );
    };
    if !role.can_read(code) {
        return forbidden(
            lang,
            role,
            &path,
            &match lang {
                Lang::Zh => format!("区划 {code}"),
                Lang::En => format!("region {code}"),
            },
        );
    }
    let hub = &s.hub;
    let rollup = hub.state().views.rollup(&hub.campaign);
    let f = rollup.region(code);
    let name = region_label(code, lang);
    let mut body = crumbs(lang, role, code, None);
    let _ = write!(
        body,
        "<h1>{} <span class=\"meta\">{} · {}</span></h1>",
        esc(&name),
        code,
        level_label(code.level(), lang)
    );
    let target = (code.level() == Level::Province)
        .then(|| hub.campaign.target.provinces.get(&code).copied())
        .flatten()
        .map(|t| {
            let share = crate::tracking::trajectory_share(
                &hub.campaign,
                hub.campaign.local_date(hub.clock.now()),
            );
            (t, (t as f64 * share).round() as u64)
        });
    if !rollup.totals.contains_key(&code) {
        let _ = write!(
            body,
            "<p>{}</p>",
            t(lang, "该区划暂无数据。", "No data for this region yet.")
        );
    }
    body.push_str(&summary(lang, &f, target));
    if code.level() != Level::County {
        body.push_str(&children_section(lang, &rollup, code));
    }
    if code.level() != Level::Province {
        let schools = rollup.schools.get(&code).map(Vec::as_slice).unwrap_or(&[]);
        let _ = write!(body, "<h2>{}</h2>", t(lang, "学校", "Schools"));
        if schools.is_empty() {
            let _ = write!(
                body,
                "<p>{}</p>",
                t(
                    lang,
                    "暂无按学校报送的数据。",
                    "No figures reported per school."
                )
            );
        } else {
            let _ = write!(
                body,
                "<table id=\"schools\">{}",
                figures_header(lang, t(lang, "学校标识码", "School code"))
            );
            for (sc, sf) in schools {
                body.push_str(&figures_row(
                    lang,
                    &format!("school:{sc}"),
                    &sc.to_string(),
                    &sc.to_string(),
                    &link(&format!("/r/{code}/s/{sc}"), lang),
                    sf,
                ));
            }
            body.push_str("</table>");
        }
    }
    body.push_str(&flags_section(lang, &rollup, Some(code)));
    html(StatusCode::OK, page(lang, Some(role), &path, &name, &body))
}

async fn school_page(
    State(s): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Path((code, school)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let lang = q.lang();
    let role = match who(&s, &sessions, &headers, &uri, lang) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let what = match lang {
        Lang::Zh => format!("学校 {school}（区划 {code}）"),
        Lang::En => format!("School {school} (region {code})"),
    };
    let path = path_of(&uri);
    let (Ok(code), Ok(sc)) = (RegionCode::parse(&code), SchoolCode::parse(&school)) else {
        return not_found(lang, role, &path, &what);
    };
    if !role.can_read(code) {
        return forbidden(lang, role, &path, &what);
    }
    let hub = &s.hub;
    let rollup = hub.state().views.rollup(&hub.campaign);
    let Some(f) = rollup
        .schools
        .get(&code)
        .and_then(|l| l.iter().find(|(c, _)| *c == sc))
        .map(|(_, f)| f.clone())
    else {
        return not_found(lang, role, &path, &what);
    };
    let mut body = crumbs(lang, role, code, Some(sc));
    let title = match lang {
        Lang::Zh => format!("学校 {sc}"),
        Lang::En => format!("School {sc}"),
    };
    let _ = write!(
        body,
        "<h1>{} <span class=\"meta\">{}</span></h1>",
        esc(&title),
        esc(&region_label(code, lang))
    );
    body.push_str(&summary(lang, &f, None));
    html(StatusCode::OK, page(lang, Some(role), &path, &title, &body))
}

fn rule_label(rule: &str, lang: Lang) -> String {
    match rule {
        "milestone_due_7d" => t(lang, "7天内到期提醒", "due within 7 days"),
        "milestone_due_3d" => t(lang, "3天内到期提醒", "due within 3 days"),
        "milestone_overdue" => t(lang, "逾期未交", "overdue"),
        "milestone_escalated" => t(lang, "逾期上报", "escalated"),
        "behind_pace" => t(lang, "进度落后", "behind pace"),
        "quota_violation" => t(lang, "推荐超额", "over quota"),
        "plan_incomplete" => t(lang, "实施方案不完整", "plan incomplete"),
        "source_silent" => t(lang, "数据源未报送", "silent source"),
        other => return other.to_string(),
    }
    .to_string()
}

fn state_label(state: &str, lang: Lang) -> String {
    match state {
        "pending" => t(lang, "待送达", "pending"),
        "delivered" => t(lang, "已送达", "delivered"),
        "acknowledged" => t(lang, "已确认", "acknowledged"),
        other => return other.to_string(),
    }
    .to_string()
}

fn code_label(v: &Value, lang: Lang) -> String {
    v.as_str()
        .and_then(|c| RegionCode::parse(c).ok())
        .map_or_else(
            || v.as_str().unwrap_or("").to_string(),
            |c| region_label(c, lang),
        )
}

async fn notices_page(
    State(s): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let lang = q.lang();
    let role = match who(&s, &sessions, &headers, &uri, lang) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let list = notices_for_dashboard(&s, role);
    let title = t(lang, "通知记录", "Notice log");
    let mut body = format!("<h1>{title}</h1>");
    if list.is_empty() {
        let _ = write!(
            body,
            "<p id=\"no-notices\">{}</p>",
            t(lang, "暂无通知。", "No notices.")
        );
    } else {
        let _ = write!(
            body,
            "<table id=\"notices\"><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            t(lang, "时间", "Raised"),
            t(lang, "规则", "Rule"),
            t(lang, "涉及", "About"),
            t(lang, "发送给", "To"),
            t(lang, "截止", "Deadline"),
            t(lang, "状态", "State"),
            t(lang, "内容", "Text"),
        );
        for n in &list {
            let created = n["created"]
                .as_str()
                .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
                .map(|c| when(&s, lang, c.with_timezone(&Utc)))
                .unwrap_or_default();
            let escalated = if n["escalated"].as_bool() == Some(true) {
                t(lang, "（已上报）", " (escalated)")
            } else {
                ""
            };
            let _ = write!(
                body,
                "<tr data-row=\"notice:{id}\"><td class=\"num\">{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&created),
                esc(&rule_label(n["rule"].as_str().unwrap_or(""), lang)),
                esc(&code_label(&n["subject"], lang)),
                esc(&code_label(&n["addressee"], lang)),
                escalated,
                esc(&n["deadline"]
                    .as_str()
                    .map(|d| date(lang, d))
                    .unwrap_or_default()),
                esc(&state_label(n["state"].as_str().unwrap_or(""), lang)),
                esc(n[t(lang, "text", "text_en")].as_str().unwrap_or("")),
                id = n["id"].as_u64().unwrap_or(0),
            );
        }
        body.push_str("</table>");
    }
    html(
        StatusCode::OK,
        page(lang, Some(role), &path_of(&uri), title, &body),
    )
}

async fn sources_page(
    State(s): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let lang = q.lang();
    let role = match who(&s, &sessions, &headers, &uri, lang) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let hub = &s.hub;
    let now = hub.clock.now();
    let title = t(lang, "数据源状态", "Source health");
    let mut body = format!(
        "<h1>{title}</h1><p class=\"meta\">{} {}</p>",
        t(lang, "截至", "As of"),
        esc(&when(&s, lang, now))
    );
    let st = hub.state();
    let mut regs: Vec<_> = st
        .registry
        .values()
        .filter(|r| role.can_read(r.scope))
        .collect();
    regs.sort_by(|a, b| a.id.cmp(&b.id));
    if regs.is_empty() {
        let _ = write!(
            body,
            "<p>{}</p>",
            t(lang, "没有登记的数据源。", "No registered sources.")
        );
    } else {
        let _ = write!(
            body,
            "<table id=\"sources\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            t(lang, "数据源", "Source"),
            t(lang, "范围", "Scope"),
            t(lang, "状态", "Status"),
            t(lang, "已收序号", "Held through seq"),
            t(lang, "条目", "Entries"),
            t(lang, "最近接收", "Last seen"),
            t(lang, "距今", "Lag"),
            t(lang, "告警", "Alarms"),
        );
        for r in &regs {
            let head = st.heads.get(&r.id).copied().unwrap_or_default();
            let act = st.views.sources().get(&r.id);
            let last = act.and_then(|a| a.last_received);
            let silent = crate::tracking::source_is_silent(&hub.campaign, &st.views, r, now);
            let alarms = st.alarms.iter().filter(|a| a.source == r.id).count();
            let status = match r.status {
                SourceStatus::Active if silent => {
                    format!(
                        "<span class=\"warn\">{}</span>",
                        t(lang, "长期未报送", "silent")
                    )
                }
                SourceStatus::Active => {
                    format!("<span class=\"ok\">{}</span>", t(lang, "正常", "active"))
                }
                SourceStatus::Revoked => {
                    format!(
                        "<span class=\"warn\">{}</span>",
                        t(lang, "已吊销", "revoked")
                    )
                }
            };
            let _ = write!(
                body,
                "<tr data-row=\"source:{id}\"><td>{id}</td><td>{}</td><td>{status}</td>{}{}<td data-field=\"last_seen\">{}</td><td class=\"num\" data-field=\"lag\">{}</td><td class=\"num{}\" data-field=\"alarms\">{alarms}</td></tr>",
                esc(&region_label(r.scope, lang)),
                cell("head_seq", &head.seq.to_string()),
                cell("entries", &act.map_or(0, |a| a.entries).to_string()),
                esc(&last.map_or("—".to_string(), |l| when(&s, lang, l))),
                esc(&last.map_or("—".to_string(), |l| lag_text(
                    lang,
                    (now - l).num_seconds()
                ))),
                if alarms > 0 { " warn" } else { "" },
                id = esc(r.id.as_str()),
            );
        }
        body.push_str("</table>");
    }
    let alarms: Vec<_> = st
        .alarms
        .iter()
        .filter(|a| regs.iter().any(|r| r.id == a.source))
        .collect();
    if !alarms.is_empty() {
        let _ = write!(
            body,
            "<h2>{}</h2><table id=\"alarms\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            t(lang, "告警", "Alarms"),
            t(lang, "时间", "At"),
            t(lang, "数据源", "Source"),
            t(lang, "序号", "Seq"),
            t(lang, "类型", "Code"),
            t(lang, "说明", "Detail"),
        );
        for a in alarms {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&when(&s, lang, a.at)),
                esc(a.source.as_str()),
                a.seq,
                esc(&serde_json::to_value(a.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()),
                esc(&a.detail),
            );
        }
        body.push_str("</table>");
    }
    drop(st);
    html(
        StatusCode::OK,
        page(lang, Some(role), &path_of(&uri), title, &body),
    )
}

async fn bulletin_page(
    State(s): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Path(n): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let lang = q.lang();
    // Bulletins are published to every reader, as in the API.
    let role = match who(&s, &sessions, &headers, &uri, lang) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let path = path_of(&uri);
    let what = match lang {
        Lang::Zh => format!("第{n}期通报"),
        Lang::En => format!("Bulletin {n}"),
    };
    let Ok(num) = n.parse::<u64>() else {
        return not_found(lang, role, &path, &what);
    };
    match crate::bulletin::get(s.hub.store.as_ref(), num) {
        Ok(doc) => html(StatusCode::OK, crate::render::html(&doc, lang)),
        Err(crate::bulletin::BulletinError::NotFound(_)) => not_found(lang, role, &path, &what),
        Err(e) => unavailable(lang, e),
    }
}

// ---------------------------------------------------------------------------------------
// Login and logout.

fn login_page(
    lang: Lang,
    status: StatusCode,
    next: Option<&str>,
    problem: Option<&str>,
) -> Response {
    let mut body = format!("<h1>{}</h1>", t(lang, "登录", "Log in"));
    if let Some(p) = problem {
        let _ = write!(body, "<p class=\"error\" id=\"message\">{}</p>", esc(p));
    }
    let _ = write!(
        body,
        "<form id=\"login\" class=\"box\" method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\"><input type=\"hidden\" name=\"lang\" value=\"{}\">\
         <p><label>{} <input type=\"password\" name=\"token\" autocomplete=\"off\" required size=\"50\"></label></p>\
         <p><button type=\"submit\">{}</button></p></form><p class=\"meta\">{}</p>",
        esc(safe_next(next).unwrap_or("/")),
        t(lang, "zh", "en"),
        t(lang, "访问令牌", "Access token"),
        t(lang, "登录", "Log in"),
        t(
            lang,
            "令牌由中心管理员用 spacesync-hub token create --role … 生成。登录后会话保持12小时；令牌本身不会保存在浏览器中。",
            "Tokens are made by the hub's admin with spacesync-hub token create --role …. A login lasts 12 hours; the token itself is not kept in the browser."
        ),
    );
    let path = match next {
        Some(n) => format!("/login?next={}", url_encode(n)),
        None => "/login".to_string(),
    };
    html(
        status,
        page(lang, None, &path, t(lang, "登录", "Log in"), &body),
    )
}

async fn login_form(Query(q): Query<PageQuery>) -> Response {
    login_page(q.lang(), StatusCode::OK, safe_next(q.next.as_deref()), None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
    lang: Option<String>,
}

fn session_cookie(headers: &HeaderMap, value: &str, max_age: u64) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let c = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn login(
    State(s): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let lang = f.lang.as_deref().and_then(Lang::parse).unwrap_or(Lang::Zh);
    let next = safe_next(f.next.as_deref());
    if cross_origin(&headers) {
        return message_page(
            lang,
            None,
            StatusCode::FORBIDDEN,
            t(lang, "拒绝跨站登录", "Cross-site login refused"),
            t(
                lang,
                "登录表单必须从本站提交。",
                "The login form must be sent from this site.",
            ),
        );
    }
    match lookup_token(s.hub.store.as_ref(), f.token.trim()) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return login_page(
                lang,
                StatusCode::UNAUTHORIZED,
                next,
                Some(t(
                    lang,
                    "令牌无效，请检查后重试。",
                    "Unknown token; check it and try again.",
                )),
            );
        }
        Err(e) => return unavailable(lang, e),
    };
    let id = match sessions.create(&token_hash(&f.token)) {
        Ok(id) => id,
        Err(e) => return unavailable(lang, e),
    };
    let mut to = next.unwrap_or("/").to_string();
    if lang == Lang::En && !to.contains("lang=") {
        to = link(&to, Lang::En);
    }
    let mut r = redirect(&to);
    r.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&headers, &id, SESSION_TTL.as_secs()),
    );
    r
}

async fn logout(Extension(sessions): Extension<Arc<Sessions>>, headers: HeaderMap) -> Response {
    if cross_origin(&headers) {
        return message_page(
            Lang::Zh,
            None,
            StatusCode::FORBIDDEN,
            "拒绝跨站请求",
            "退出请求必须从本站提交。",
        );
    }
    if let Some(id) = cookie_value(&headers, SESSION_COOKIE) {
        sessions.end(id);
    }
    let mut r = redirect("/login");
    r.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&headers, "", 0));
    r
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
    fn next_stays_on_site_and_lang_is_kept() {
        assert_eq!(safe_next(Some("/r/440000")), Some("/r/440000"));
        assert_eq!(safe_next(Some("//evil.example/")), None);
        assert_eq!(safe_next(Some("/\\evil.example")), None);
        assert_eq!(safe_next(Some("https://evil.example/")), None);
        assert_eq!(link("/r/1", Lang::En), "/r/1?lang=en");
        assert_eq!(link("/r/1", Lang::Zh), "/r/1");
        assert_eq!(with_lang("/r/1?lang=en", Lang::Zh), "/r/1");
        assert_eq!(
            with_lang("/login?next=%2F", Lang::En),
            "/login?next=%2F&lang=en"
        );
        assert_eq!(url_encode("/r/1?lang=en"), "%2Fr%2F1%3Flang%3Den");
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn cross_origin_posts_are_spotted() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!cross_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(!cross_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(cross_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://hub.example"),
        );
        assert!(cross_origin(&h));
        h.insert("x-forwarded-host", HeaderValue::from_static("hub.example"));
        assert!(!cross_origin(&h));
    }
}
