//! The ministry dashboard: server-rendered HTML pages for people, readable without
//! JavaScript (the pages carry no script, and their Content-Security-Policy allows none).
//!
//! # Pages
//! - `GET /` — the latest bulletin (headline figures, links), live progress, the table of
//!   the 32 provincial units with links to drill down, and the data flags summarised
//!   (counts by unit and kind, the largest drops, a link to every flag as CSV). A
//!   province role sees its own unit only, with its cities.
//! - `GET /r/{code}` — one region: its figures per space kind, its child regions with data,
//!   for cities and counties their schools, and its data flags summarised.
//! - `GET /r/{code}/s/{school}` — one school's figures.
//! - `GET /notices` — the notice log the role may read.
//! - `GET /sources` — source health: registry status, head, last seen, lag, alarms.
//! - `GET /bulletins/{n}` — an issued bulletin rendered by [`crate::render::html`], for
//!   browser sessions (the API's `/v1/bulletins/{n}.html` takes a bearer token only).
//! - `GET /flags.csv`, `GET /r/{code}/flags.csv` — every data flag the role may read
//!   (within the region), one CSV row each, after a UTF-8 byte-order mark.
//! - `GET /login`, `POST /login` (form field `token`), `POST /logout` ([`sessions`]).
//!
//! Every page is Chinese by default; `?lang=en` switches to English and every link the
//! page makes keeps the choice. Numbers go through [`crate::wording::count`], coverage is a
//! percentage with an inline CSS bar. Every sentence is in [`crate::wording::dashboard`];
//! every page is written with maud's `html!`, which escapes all text it is given, so no
//! name from data can become markup. Every empty section says so in words.
//!
//! Who may see what is decided by the extractors of [`crate::access`]: pages take a
//! [`DashboardUser`](crate::access::DashboardUser) (a bearer token or a session cookie) or
//! a [`DashboardRegion`](crate::access::DashboardRegion) (and the role may read the
//! region). Unauthenticated page requests are redirected to `/login?next=<page>`; a role
//! that may not read a region gets a 403 page, whatever the URL says.
//!
//! # Layout
//! - [`sessions`]: the login form, logging in and out, the session cookie.
//! - [`layout`]: the page frame, navigation, error pages, labels and formats.
//! - [`pages`]: each page's model, its drawing, and its handler.
//! - [`flags`]: data flags summarised for a page, and as CSV.
//!
//! Architecture invariant: this module reads the hub's state and renders; it writes
//! nothing to the store, and it never shows personal data (contact forms are not read).

pub mod flags;
pub mod layout;
pub mod pages;
pub mod sessions;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::access::Sessions;
pub use crate::access::{MAX_SESSIONS, MAX_SESSIONS_PER_TOKEN, SESSION_COOKIE, SESSION_TTL};
use crate::state::AppState;

/// The dashboard's routes, to be merged into [`crate::http::app`]. Each call has its own
/// session table.
pub fn routes() -> Router<AppState> {
    let sessions = Arc::new(Sessions::default());
    Router::new()
        .route("/", get(pages::home))
        .route("/flags.csv", get(pages::flags_csv))
        .route("/r/{code}", get(pages::region_page))
        .route("/r/{code}/flags.csv", get(pages::region_flags_csv))
        .route("/r/{code}/s/{school}", get(pages::school_page))
        .route("/notices", get(pages::notices_page))
        .route("/sources", get(pages::sources_page))
        .route("/bulletins/{n}", get(pages::bulletin_page))
        .route("/login", get(sessions::login_form).post(sessions::login))
        .route("/logout", post(sessions::logout))
        .layer(Extension(sessions))
}
