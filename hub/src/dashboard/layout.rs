//! The page frame (header, navigation, language switch, logout), the answers every page
//! shares (HTML with its security headers, redirects, message and error pages), and the
//! labels and number formats of the pages. Words come from [`crate::wording::dashboard`];
//! markup is written with maud's `html!`, which escapes everything it is given.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use spacesync_shared::RegionCode;
use spacesync_shared::region::{Level, unit};
use tracing::error;

use crate::access::{PageDenied, PageRefusal, Subject};
use crate::auth::Role;
use crate::state::AppState;
use crate::views::region_name;
use crate::wording::dashboard::{self as wd, words};
use crate::wording::{Lang, count, date};

/// The pages' only style sheet, inline (the Content-Security-Policy allows no other).
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

/// What the frame of a page needs.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The page's language.
    pub lang: Lang,
    /// The logged-in reader (navigation and logout), or nobody (login and error pages).
    pub reader: Option<Role>,
    /// The page's path and query, for the language switch.
    pub path: String,
    /// The page's title.
    pub title: String,
}

/// A whole page: header with navigation, language switch and logout, then `body`.
pub fn page(f: &Frame, body: Markup) -> Markup {
    let lang = f.lang;
    let w = words(lang);
    let other = match lang {
        Lang::Zh => Lang::En,
        Lang::En => Lang::Zh,
    };
    html! {
        (DOCTYPE)
        html lang=(w.html_lang) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (f.title) " · " (w.campaign) }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    a.site href=(link("/", lang)) { (w.site) }
                    @if f.reader.is_some() {
                        a href=(link("/", lang)) { (w.nav_progress) }
                        a href=(link("/notices", lang)) { (w.nav_notices) }
                        a href=(link("/sources", lang)) { (w.nav_sources) }
                    }
                    span.spacer {}
                    @if let Some(role) = f.reader {
                        span #role data-role=(role.to_string()) { (role_label(role, lang)) }
                    }
                    a #lang-switch href=(with_lang(&f.path, other)) { (w.other_language) }
                    @if f.reader.is_some() {
                        form #logout method="post" action="/logout" {
                            button type="submit" { (w.log_out) }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page as an answer: HTML with the headers that keep it inert (no script may run, no
/// framing, no sniffing, no caching).
pub fn html_response(status: StatusCode, page: Markup) -> Response {
    let mut r = (status, page.into_string()).into_response();
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

/// A `303 See Other` to `to`, not cached.
pub fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A page with one message; `reader` keeps the header (navigation, language switch back to
/// the same page) for a logged-in reader.
pub fn message_page(
    lang: Lang,
    reader: Option<(Role, &str)>,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    let (role, path) = reader.map_or((None, "/"), |(r, p)| (Some(r), p));
    let frame = Frame {
        lang,
        reader: role,
        path: path.to_string(),
        title: title.to_string(),
    };
    let body = html! {
        h1 { (title) }
        p.error #message { (text) }
        p { a href=(link("/", lang)) { (words(lang).back_to_overview) } }
    };
    html_response(status, page(&frame, body))
}

/// What a page names, in an error sentence; `object` for "may not read …".
fn subject(lang: Lang, what: &Subject, object: bool) -> String {
    match what {
        Subject::Region(code) if object => wd::region_object(lang, code),
        Subject::Region(code) => wd::region_subject(lang, code),
        Subject::School { region, school } => wd::school_subject(lang, school, region),
        Subject::Bulletin(n) => wd::bulletin_name(lang, n),
    }
}

impl IntoResponse for PageRefusal {
    fn into_response(self) -> Response {
        let lang = self.lang;
        let w = words(lang);
        match self.why {
            PageDenied::LogIn => redirect(&format!("/login?next={}", url_encode(&self.path))),
            PageDenied::UnknownToken => message_page(
                lang,
                None,
                StatusCode::UNAUTHORIZED,
                w.unknown_token,
                w.unknown_token_text,
            ),
            PageDenied::NotFound { role, what } => message_page(
                lang,
                Some((role, &self.path)),
                StatusCode::NOT_FOUND,
                w.not_found,
                &wd::was_not_found(lang, &subject(lang, &what, false)),
            ),
            PageDenied::Forbidden { role, what } => message_page(
                lang,
                Some((role, &self.path)),
                StatusCode::FORBIDDEN,
                w.forbidden,
                &wd::may_not_read(lang, &role_label(role, lang), &subject(lang, &what, true)),
            ),
            PageDenied::Unavailable(e) => {
                error!(error = %e, "Dashboard page failed.");
                message_page(
                    lang,
                    None,
                    StatusCode::SERVICE_UNAVAILABLE,
                    w.unavailable,
                    w.unavailable_text,
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Links.

/// `path` with the language kept (`?lang=en` only for English, the default being Chinese).
pub fn link(path: &str, lang: Lang) -> String {
    match lang {
        Lang::Zh => path.to_string(),
        Lang::En if path.contains('?') => format!("{path}&lang=en"),
        Lang::En => format!("{path}?lang=en"),
    }
}

/// `path` (which may carry `?lang=`) switched to `lang`.
pub fn with_lang(path: &str, lang: Lang) -> String {
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

/// Percent-encodes everything but RFC 3986 unreserved characters (for `?next=`).
pub fn url_encode(s: &str) -> String {
    use std::fmt::Write as _;
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

// ---------------------------------------------------------------------------------------
// Labels and formats.

/// A role for display: admin, the ministry, or its province's name.
pub fn role_label(role: Role, lang: Lang) -> String {
    let w = words(lang);
    match role {
        Role::Admin => w.role_admin.to_string(),
        Role::Ministry => w.role_ministry.to_string(),
        Role::Province(p) => region_label(p, lang),
    }
}

/// A region's name for display: the unit's English name for provinces in English, else
/// the directory's Chinese name (a municipality's `市辖区` gets its province's name).
pub fn region_label(code: RegionCode, lang: Lang) -> String {
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

/// A count, or a dash when unknown.
pub fn opt_count(lang: Lang, n: Option<i64>) -> String {
    n.map_or("—".to_string(), |n| count(lang, n))
}

/// A ratio as a percentage with one decimal, or a dash.
pub fn pct(r: Option<f64>) -> String {
    r.map_or("—".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// A percentage bar (capped at 100 % wide); below `low` it is drawn in amber.
pub fn pct_bar(r: Option<f64>, low: f64) -> Markup {
    let (w, class) = match r {
        Some(r) => (
            (r * 100.0).clamp(0.0, 100.0),
            if r < low { "low" } else { "" },
        ),
        None => (0.0, "none"),
    };
    html! { span.bar { span class=(class) style=(format!("width:{w:.1}%")) {} } }
}

/// A table cell the tests (and people) can find: `data-field` names the figure.
pub fn cell(field: &str, text: &str) -> Markup {
    html! { td.num data-field=(field) { (text) } }
}

/// A cell with a percentage and its bar.
pub fn pct_cell(field: &str, r: Option<f64>) -> Markup {
    html! { td.num { (pct_bar(r, 0.5)) span data-field=(field) { (pct(r)) } } }
}

/// A time on the campaign's clock: `2018年11月20日 10:00` or `2018-11-20 10:00`.
pub fn when(s: &AppState, lang: Lang, at: DateTime<Utc>) -> String {
    let local = at.with_timezone(&s.hub.campaign.utc_offset);
    format!(
        "{} {}",
        date(lang, &local.format("%Y-%m-%d").to_string()),
        local.format("%H:%M")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_the_language() {
        assert_eq!(link("/r/1", Lang::En), "/r/1?lang=en");
        assert_eq!(link("/r/1", Lang::Zh), "/r/1");
        assert_eq!(with_lang("/r/1?lang=en", Lang::Zh), "/r/1");
        assert_eq!(
            with_lang("/login?next=%2F", Lang::En),
            "/login?next=%2F&lang=en"
        );
        assert_eq!(url_encode("/r/1?lang=en"), "%2Fr%2F1%3Flang%3Den");
    }
}
