//! Logging in and out: the login form, `POST /login` (form field `token`) and
//! `POST /logout`, and the session cookie.
//!
//! A person logs in once with a bearer token (`spacesync-hub token create`); the hub checks
//! it with [`lookup_token`] and answers with a cookie holding a fresh random session id
//! (32 bytes from the OS), `HttpOnly; SameSite=Strict; Path=/`, plus `Secure` when a TLS
//! proxy says `X-Forwarded-Proto: https`. The token itself never goes into the cookie, a
//! URL or a log line: there is deliberately no `GET /login?token=` link. The session table
//! and its limits are [`crate::access::Sessions`]; a restart or `POST /logout` ends
//! sessions too. `POST` requests whose `Origin` names another host are refused (login
//! CSRF); `SameSite=Strict` covers the rest.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::layout::{Frame, html_response, link, message_page, page, redirect, url_encode};
use crate::access::{SESSION_COOKIE, SESSION_TTL, Sessions, cookie_value};
use crate::auth::{lookup_token, token_hash};
use crate::state::AppState;
use crate::wording::Lang;
use crate::wording::dashboard::words;

/// The login form's query: where to go after logging in, and the language.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    lang: Option<String>,
    next: Option<String>,
}

/// A `next` target that stays on this site: a path, not `//host` or `/\host`.
pub fn safe_next(next: Option<&str>) -> Option<&str> {
    next.filter(|n| {
        n.starts_with('/')
            && !n.starts_with("//")
            && !n.starts_with("/\\")
            && !n.chars().any(|c| c.is_control())
    })
}

/// A `POST` whose `Origin` names another host is refused (cross-site form posts). The host
/// is `Host`, or `X-Forwarded-Host` behind a proxy that rewrites `Host`.
pub fn cross_origin(headers: &HeaderMap) -> bool {
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

/// The login form, with a problem above it when the last try failed.
pub fn login_page(
    lang: Lang,
    status: StatusCode,
    next: Option<&str>,
    problem: Option<&str>,
) -> Response {
    let w = words(lang);
    let body = html! {
        h1 { (w.log_in) }
        @if let Some(p) = problem {
            p.error #message { (p) }
        }
        form #login .box method="post" action="/login" {
            input type="hidden" name="next" value=(safe_next(next).unwrap_or("/"));
            input type="hidden" name="lang" value=(lang_code(lang));
            p { label { (w.access_token) " " input type="password" name="token" autocomplete="off" required size="50"; } }
            p { button type="submit" { (w.log_in) } }
        }
        p.meta { (w.login_help) }
    };
    let path = match next {
        Some(n) => format!("/login?next={}", url_encode(n)),
        None => "/login".to_string(),
    };
    let frame = Frame {
        lang,
        reader: None,
        path,
        title: w.log_in.to_string(),
    };
    html_response(status, page(&frame, body))
}

fn lang_code(lang: Lang) -> &'static str {
    match lang {
        Lang::Zh => "zh",
        Lang::En => "en",
    }
}

/// `GET /login`.
pub async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    let lang = q.lang.as_deref().and_then(Lang::parse).unwrap_or(Lang::Zh);
    login_page(lang, StatusCode::OK, safe_next(q.next.as_deref()), None)
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
    lang: Option<String>,
}

/// The session cookie with `value`, lasting `max_age` seconds (0 ends it).
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

/// `POST /login`: a known token opens a session and goes back to `next`.
pub async fn login(
    State(s): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let lang = f.lang.as_deref().and_then(Lang::parse).unwrap_or(Lang::Zh);
    let w = words(lang);
    let next = safe_next(f.next.as_deref());
    if cross_origin(&headers) {
        return message_page(
            lang,
            None,
            StatusCode::FORBIDDEN,
            w.cross_site_login,
            w.cross_site_login_text,
        );
    }
    match lookup_token(s.hub.store.as_ref(), f.token.trim()) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return login_page(
                lang,
                StatusCode::UNAUTHORIZED,
                next,
                Some(w.login_unknown_token),
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

fn unavailable(lang: Lang, e: impl std::fmt::Display) -> Response {
    use axum::response::IntoResponse as _;
    crate::access::PageRefusal {
        lang,
        path: "/login".to_string(),
        why: crate::access::PageDenied::Unavailable(e.to_string()),
    }
    .into_response()
}

/// `POST /logout`: ends the session and clears the cookie.
pub async fn logout(Extension(sessions): Extension<Arc<Sessions>>, headers: HeaderMap) -> Response {
    if cross_origin(&headers) {
        let w = words(Lang::Zh);
        return message_page(
            Lang::Zh,
            None,
            StatusCode::FORBIDDEN,
            w.cross_site_request,
            w.cross_site_logout_text,
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
    fn next_stays_on_site() {
        assert_eq!(safe_next(Some("/r/440000")), Some("/r/440000"));
        assert_eq!(safe_next(Some("//evil.example/")), None);
        assert_eq!(safe_next(Some("/\\evil.example")), None);
        assert_eq!(safe_next(Some("https://evil.example/")), None);
        assert_eq!(safe_next(Some("/r/1\n")), None);
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
