//! The pages: the overview, a region, a school, the notice log, source health, an issued
//! bulletin, and the flag lists as CSV.
//!
//! Each page is two steps: its handler reads the hub's state into a plain model (names
//! already in the page's language, times already formatted), and a pure function draws
//! the model with maud's `html!`. The drawing functions are public so that tests can feed
//! them any name (`hub/tests/dashboard_escaping.rs` feeds `<`, `>`, `&`, `"` and `'`).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use maud::{Markup, PreEscaped, html};
use spacesync_shared::RegionCode;
use spacesync_shared::record::SpaceKind;
use spacesync_shared::region::{Directory, Level, SchoolCode};

use super::flags::{self, FlagsView};
use super::layout::{
    Frame, cell, html_response, link, opt_count, page, pct, pct_bar, pct_cell, region_label, when,
};
use crate::access::{DashboardRegion, DashboardUser, PageDenied, PageRefusal, Subject};
use crate::assessment::Bulletin;
use crate::auth::Role;
use crate::registry::SourceStatus;
use crate::render::{Format, Rendering};
use crate::state::AppState;
use crate::views::{Figures, Rollup};
use crate::wording::dashboard::{self as wd, words};
use crate::wording::{Lang, count, date};

/// The notice log a role may read, newest first, as the notice book's JSON (`id`, `rule`,
/// `subject`, `addressee`, `created`, `state`, `text`, `text_en`, …). The one place the
/// dashboard reads notices.
pub fn notices_for_dashboard(s: &AppState, role: Role) -> Vec<crate::notices::NoticeView> {
    s.notices.list(role)
}

fn unavailable(user: &DashboardUser, e: impl std::fmt::Display) -> PageRefusal {
    PageRefusal::of(user, PageDenied::Unavailable(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// Pieces several pages share.

/// One row of a table of regions or schools.
#[derive(Debug, Clone)]
pub struct FiguresRow {
    /// `data-row` of the row (`unit:440000`, `child:440100`, `school:…`).
    pub row: String,
    /// The region or school code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// Where its page is.
    pub href: String,
    /// Its figures.
    pub figures: Figures,
}

/// The summary of one region, school or the nation.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The figures.
    pub figures: Figures,
    /// The target of new spaces and what the plan expects by now, where there is one.
    pub target: Option<(u64, u64)>,
}

/// The divisions below a region.
#[derive(Debug, Clone)]
pub struct Children {
    /// The region's own level (its children are one below).
    pub of: Level,
    /// Children with data.
    pub rows: Vec<FiguresRow>,
    /// Listed children without data.
    pub without_data: usize,
}

/// One step of the breadcrumbs.
#[derive(Debug, Clone)]
pub struct Crumb {
    /// The name shown.
    pub name: String,
    /// Where it leads; the last step (a school) leads nowhere.
    pub href: Option<String>,
}

fn spaces_total(f: &Figures) -> Option<i64> {
    (!f.spaces.is_empty()).then(|| f.spaces.total() as i64)
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

/// The header row of a table of regions or schools.
fn figures_header(lang: Lang, first: &str) -> Markup {
    let w = words(lang);
    html! {
        tr {
            th { (w.code) } th { (first) } th { (w.spaces_total) } th { (w.new_spaces) }
            th { (w.cov_teachers) } th { (w.cov_students) } th { (w.cov_schools) }
        }
    }
}

/// One row of a table of regions or schools, linking to its page.
fn figures_row(lang: Lang, r: &FiguresRow) -> Markup {
    let f = &r.figures;
    let c = f.coverage();
    let new = if f.spaces.is_empty() {
        "—".to_string()
    } else {
        count(lang, f.new_spaces())
    };
    html! {
        tr data-row=(r.row) data-code=(r.code) {
            td { (r.code) }
            td { a.drill href=(r.href) { (r.name) } }
            (cell("spaces", &opt_count(lang, spaces_total(f))))
            (cell("new_spaces", &new))
            (pct_cell("cov_teachers", c.teachers))
            (pct_cell("cov_students", c.students))
            (pct_cell("cov_schools", c.schools))
        }
    }
}

fn figures_table(lang: Lang, id: &str, first: &str, rows: &[FiguresRow]) -> Markup {
    html! {
        table id=(id) {
            (figures_header(lang, first))
            @for r in rows { (figures_row(lang, r)) }
        }
    }
}

/// New spaces against a target, coverage, real-name share and denominators, then the
/// figures per space kind.
fn summary(lang: Lang, s: &Summary) -> Markup {
    let w = words(lang);
    let f = &s.figures;
    let c = f.coverage();
    let p = &f.population;
    let n = |v: Option<u64>| opt_count(lang, v.map(|v| v as i64));
    let kinds: Vec<SpaceKind> = SpaceKind::ALL
        .into_iter()
        .filter(|k| f.spaces.get(*k).is_some() || f.baseline.get(*k).is_some())
        .collect();
    html! {
        table #summary {
            tbody data-row="summary" {
                tr {
                    th { (w.spaces_total) } (cell("spaces", &opt_count(lang, spaces_total(f))))
                    th { (w.new_spaces) } (cell("new_spaces", &count(lang, f.new_spaces())))
                }
                @if let Some((target, expected)) = s.target {
                    @let ratio = (target > 0).then(|| f.new_spaces() as f64 / target as f64);
                    @let pace = (expected > 0).then(|| f.new_spaces() as f64 / expected as f64);
                    tr {
                        th { (w.target_new) } (cell("target", &count(lang, target as i64)))
                        th { (w.expected_by_now) } (cell("expected", &count(lang, expected as i64)))
                    }
                    tr {
                        th { (w.of_target) }
                        td.num colspan="3" {
                            (pct_bar(ratio, 0.0)) span data-field="target_share" { (pct(ratio)) }
                            " · " (w.against_plan) " " span data-field="pace" { (pct(pace)) }
                        }
                    }
                }
                tr {
                    th { (w.cov_teachers) } (pct_cell("cov_teachers", c.teachers))
                    th { (w.cov_students) } (pct_cell("cov_students", c.students))
                }
                tr {
                    th { (w.cov_schools) } (pct_cell("cov_schools", c.schools))
                    th { (w.real_name_share) } (pct_cell("real_name_share", real_name_share(f)))
                }
                tr {
                    th { (w.teachers) } (cell("pop_teachers", &n(p.teachers)))
                    th { (w.students) } (cell("pop_students", &n(p.students)))
                }
                tr {
                    th { (w.schools_count) } (cell("pop_schools", &n(p.schools)))
                    th {} td {}
                }
            }
        }
        h2 { (w.spaces_by_kind) }
        @if kinds.is_empty() {
            p #no-kinds { (w.no_kinds) }
        } @else {
            table #kinds {
                tr {
                    th { (w.kind) } th { (w.spaces) } th { (w.real_name) } th { (w.baseline) } th { (w.new) }
                }
                @for k in kinds {
                    tr data-row={ "kind:" (k.as_str()) } {
                        td { (wd::kind(lang, k)) }
                        (cell("spaces", &n(f.spaces.get(k))))
                        (cell("real_name", &n(f.real_name.get(k))))
                        (cell("baseline", &n(f.baseline.get(k))))
                        (cell("new", &opt_count(lang, f.new_of(k))))
                    }
                }
            }
        }
    }
}

/// Child regions with data, linked, and a note on listed children without data.
fn children_section(lang: Lang, c: &Children) -> Markup {
    let w = words(lang);
    let heading = match c.of {
        Level::Province => w.cities,
        _ => w.counties,
    };
    html! {
        h2 { (heading) }
        @if c.rows.is_empty() {
            p #no-children { (w.no_child_data) }
        } @else {
            (figures_table(lang, "children", w.division, &c.rows))
        }
        @if c.without_data > 0 {
            p.meta { (wd::more_divisions_without_data(lang, c.without_data)) }
        }
    }
}

fn crumbs(list: &[Crumb]) -> Markup {
    html! {
        nav.crumbs {
            @for (i, c) in list.iter().enumerate() {
                @if i > 0 { " › " }
                @match &c.href {
                    Some(h) => a href=(h) { (c.name) },
                    None => (c.name),
                }
            }
        }
    }
}

/// Breadcrumbs from the nation (for roles that read it) down to `code` (and `school`).
fn crumbs_to(lang: Lang, role: Role, code: RegionCode, school: Option<SchoolCode>) -> Vec<Crumb> {
    let mut chain = vec![code];
    let mut c = code;
    while let Some(p) = c.parent() {
        chain.push(p);
        c = p;
    }
    chain.reverse();
    let mut out = Vec::new();
    if role.reads_all() {
        out.push(Crumb {
            name: words(lang).nation.to_string(),
            href: Some(link("/", lang)),
        });
    }
    for r in chain {
        out.push(Crumb {
            name: region_label(r, lang),
            href: Some(link(&format!("/r/{r}"), lang)),
        });
    }
    if let Some(sc) = school {
        out.push(Crumb {
            name: sc.to_string(),
            href: None,
        });
    }
    out
}

/// The children of `code` in the roll-up, and how many listed children have no data.
fn children_of(lang: Lang, rollup: &Rollup, code: RegionCode) -> Children {
    let rows: Vec<FiguresRow> = rollup
        .totals
        .iter()
        .filter(|(c, _)| c.parent() == Some(code))
        .map(|(c, f)| FiguresRow {
            row: format!("child:{c}"),
            code: c.to_string(),
            name: region_label(*c, lang),
            href: link(&format!("/r/{c}"), lang),
            figures: f.clone(),
        })
        .collect();
    let listed = Directory::bundled()
        .children(code)
        .iter()
        .filter(|c| c.parent() == Some(code))
        .count();
    Children {
        of: code.level(),
        without_data: listed.saturating_sub(rows.len()),
        rows,
    }
}

/// The flags of the roll-up within `code` (all of them for `None`), summarised.
fn flags_of(lang: Lang, rollup: &Rollup, code: Option<RegionCode>) -> FlagsView {
    let list = flags::within(&rollup.flags, code);
    let csv = match code {
        Some(c) => format!("/r/{c}/flags.csv"),
        None => "/flags.csv".to_string(),
    };
    flags::view(lang, &list, code, csv)
}

/// The target of new spaces of a provincial unit (or the nation for `None`), and what the
/// plan expects by today.
fn target_now(s: &AppState, unit: Option<RegionCode>) -> Option<(u64, u64)> {
    let campaign = &s.hub.campaign;
    let share = crate::tracking::trajectory_share(campaign, campaign.local_date(s.hub.clock.now()));
    let t = match unit {
        None => Some(campaign.target.new_spaces),
        Some(u) => campaign.target.provinces.get(&u).copied(),
    }?;
    Some((t, (t as f64 * share).round() as u64))
}

// ---------------------------------------------------------------------------------------
// The overview.

/// The overview: the latest bulletin, live figures, the provincial units (a province
/// reader: its own, with its cities), the data flags.
#[derive(Debug, Clone)]
pub struct HomePage {
    /// The frame; its title is the page's heading.
    pub frame: Frame,
    /// The latest bulletin's box ([`bulletin_box`]).
    pub bulletin: Markup,
    /// The hub's clock, formatted.
    pub as_of: String,
    /// Entries in the log.
    pub log_size: u64,
    /// The nation's figures, or the province's.
    pub summary: Summary,
    /// The provincial units the reader may read.
    pub units: Vec<FiguresRow>,
    /// A province reader's cities.
    pub children: Option<Children>,
    /// The data flags the reader may read.
    pub flags: FlagsView,
}

/// Draws the overview.
pub fn home_page(m: &HomePage) -> Markup {
    let lang = m.frame.lang;
    let w = words(lang);
    page(
        &m.frame,
        html! {
            h1 { (m.frame.title) }
            (m.bulletin)
            h2 { (w.live_progress) }
            p.meta #live {
                (w.as_of) " " (m.as_of) " · " (w.log_entries) " " (count(lang, m.log_size as i64))
            }
            (summary(lang, &m.summary))
            h2 { (w.provincial_units) }
            (figures_table(lang, "units", w.unit, &m.units))
            @if let Some(c) = &m.children { (children_section(lang, c)) }
            (flags::section(lang, &m.flags))
        },
    )
}

/// `GET /`.
pub async fn home(State(s): State<AppState>, user: DashboardUser) -> Result<Response, PageRefusal> {
    let (lang, role) = (user.lang, user.role);
    let bulletin = bulletin_box(&s, lang, role).map_err(|e| unavailable(&user, e))?;
    let hub = &s.hub;
    let now = hub.clock.now();
    let (rollup, log_size) = {
        let st = hub.snapshot();
        (st.views.rollup(&hub.campaign), st.log_size)
    };
    let units: Vec<FiguresRow> = hub
        .campaign
        .units
        .iter()
        .copied()
        .filter(|u| role.can_read(*u))
        .map(|u| FiguresRow {
            row: format!("unit:{u}"),
            code: u.to_string(),
            name: region_label(u, lang),
            href: link(&format!("/r/{u}"), lang),
            figures: rollup.region(u),
        })
        .collect();
    let (title, summary, children, flags) = match role {
        Role::Province(p) => (
            wd::unit_progress(lang, &region_label(p, lang)),
            Summary {
                figures: rollup.region(p),
                target: target_now(&s, Some(p)),
            },
            Some(children_of(lang, &rollup, p)),
            flags_of(lang, &rollup, Some(p)),
        ),
        _ => (
            words(lang).national_progress.to_string(),
            Summary {
                figures: rollup.nation.clone(),
                target: target_now(&s, None),
            },
            None,
            flags_of(lang, &rollup, None),
        ),
    };
    let m = HomePage {
        frame: Frame {
            lang,
            reader: Some(role),
            path: user.path.clone(),
            title,
        },
        bulletin,
        as_of: when(&s, lang, now),
        log_size,
        summary,
        units,
        children,
        flags,
    };
    Ok(html_response(StatusCode::OK, home_page(&m)))
}

/// The latest bulletin's headline figures and links; for a province role, also its own
/// line of the bulletin (bulletins are published to every reader, as in the API). Read
/// from the stored bulletin document.
pub fn bulletin_box(
    s: &AppState,
    lang: Lang,
    role: Role,
) -> Result<Markup, crate::bulletin::BulletinError> {
    let list = crate::bulletin::list(s.hub.store.as_ref())?;
    let Some(n) = list.last().map(|b| b.number) else {
        return Ok(bulletin_box_markup(lang, role, None));
    };
    let doc = crate::bulletin::get(s.hub.store.as_ref(), n)?;
    let b = Bulletin::from_document(&doc)
        .map_err(|e| crate::bulletin::BulletinError::Malformed(format!("bulletin {n}: {e}")))?;
    // The day it was issued in the campaign's time zone, as its data date is.
    let issued_on = s.hub.campaign.local_date(b.issued_at);
    Ok(bulletin_box_markup(
        lang,
        role,
        Some((list.len(), &b, issued_on)),
    ))
}

/// Draws the bulletin box for the latest of `issued` bulletins, issued on the given day in
/// the campaign's time zone (`None`: none issued yet).
pub fn bulletin_box_markup(
    lang: Lang,
    role: Role,
    latest: Option<(usize, &Bulletin, chrono::NaiveDate)>,
) -> Markup {
    let w = words(lang);
    let num = |n: i64| count(lang, n);
    let opt = |n: Option<u64>| n.map_or("—".to_string(), |n| count(lang, n as i64));
    html! {
        h2 { (w.latest_bulletin) }
        div.box #bulletin {
            @match latest {
                None => p { (w.no_bulletin) },
                Some((issued, b, issued_on)) => {
                    @let n = b.number;
                    @let a = &b.assessment;
                    @let nation = &a.nation;
                    @let title = if lang == Lang::Zh { &b.title } else { &b.title_en };
                    p {
                        b { a #bulletin-link href=(link(&format!("/bulletins/{n}"), lang)) { (title) } }
                        " "
                        span.meta {
                            (w.data_as_of) " " (date(lang, &a.as_of_date.to_string()))
                            " · " (w.issued) " " (date(lang, &issued_on.to_string()))
                        }
                    }
                    table {
                        caption { (w.nation) }
                        tbody data-row="bulletin" {
                            tr {
                                th { (w.new_spaces) } (cell("new_spaces", &num(nation.figures.new_spaces)))
                                th { (w.target) } (cell("target", &opt(Some(nation.target.new_spaces))))
                                th { (w.expected_by_then) } (cell("expected", &opt(nation.pace.expected)))
                            }
                            tr {
                                th { (w.cov_teachers) } (cell("cov_teachers", &pct(nation.figures.coverage.teachers)))
                                th { (w.cov_students) } (cell("cov_students", &pct(nation.figures.coverage.students)))
                                th { (w.lagging_units) } (cell("lagging", &a.lagging.len().to_string()))
                            }
                        }
                    }
                    @if let Role::Province(p) = role {
                        @if let Some(own) = a.unit(p) {
                            table {
                                caption { (region_label(p, lang)) }
                                tbody data-row="bulletin-own" {
                                    tr {
                                        th { (w.rank) } (cell("rank", &num(own.rank as i64)))
                                        th { (w.new_spaces) } (cell("new_spaces", &num(own.figures.new_spaces)))
                                        th { (w.against_plan_title) } (cell("pace", &pct(own.pace.ratio)))
                                    }
                                }
                            }
                        }
                    }
                    p.meta {
                        (w.api_links) " "
                        a href=(link(&format!("/v1/bulletins/{n}.html"), lang)) { "/v1/bulletins/" (n) ".html" }
                        " · "
                        a href=(format!("/v1/bulletins/{n}.json")) { ".json" }
                        " · "
                        a href=(link(&format!("/v1/bulletins/{n}.csv"), lang)) { ".csv" }
                        @if issued > 1 { " · " (wd::bulletins_issued(lang, issued)) }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A region, a school.

/// One region: its figures per kind, its child regions with data, and for cities and
/// counties their schools.
#[derive(Debug, Clone)]
pub struct RegionPage {
    /// The frame; its title is the region's name.
    pub frame: Frame,
    /// From the nation down to the region.
    pub crumbs: Vec<Crumb>,
    /// The region's code.
    pub code: String,
    /// Its level.
    pub level: Level,
    /// Whether anything was reported for it.
    pub has_data: bool,
    /// Its figures.
    pub summary: Summary,
    /// Its divisions (not for counties).
    pub children: Option<Children>,
    /// Its schools (not for provinces).
    pub schools: Option<Vec<FiguresRow>>,
    /// Its data flags.
    pub flags: FlagsView,
}

/// Draws a region's page.
pub fn region_page_markup(m: &RegionPage) -> Markup {
    let lang = m.frame.lang;
    let w = words(lang);
    page(
        &m.frame,
        html! {
            (crumbs(&m.crumbs))
            h1 { (m.frame.title) " " span.meta { (m.code) " · " (wd::level(lang, m.level)) } }
            @if !m.has_data { p #no-data { (w.no_region_data) } }
            (summary(lang, &m.summary))
            @if let Some(c) = &m.children { (children_section(lang, c)) }
            @if let Some(schools) = &m.schools {
                h2 { (w.schools) }
                @if schools.is_empty() {
                    p #no-schools { (w.no_school_data) }
                } @else {
                    (figures_table(lang, "schools", w.school_code, schools))
                }
            }
            (flags::section(lang, &m.flags))
        },
    )
}

/// `GET /r/{code}`.
pub async fn region_page(
    State(s): State<AppState>,
    r: DashboardRegion,
) -> Result<Response, PageRefusal> {
    let (lang, role, code) = (r.user.lang, r.user.role, r.code);
    let hub = &s.hub;
    let rollup = hub.snapshot().views.rollup(&hub.campaign);
    let schools = (code.level() != Level::Province).then(|| {
        rollup
            .schools_in(code)
            .iter()
            .map(|(sc, f)| FiguresRow {
                row: format!("school:{sc}"),
                code: sc.to_string(),
                name: sc.to_string(),
                href: link(&format!("/r/{code}/s/{sc}"), lang),
                figures: f.clone(),
            })
            .collect()
    });
    let m = RegionPage {
        frame: Frame {
            lang,
            reader: Some(role),
            path: r.user.path.clone(),
            title: region_label(code, lang),
        },
        crumbs: crumbs_to(lang, role, code, None),
        code: code.to_string(),
        level: code.level(),
        has_data: rollup.totals.contains_key(&code),
        summary: Summary {
            figures: rollup.region(code),
            target: if code.level() == Level::Province {
                target_now(&s, Some(code))
            } else {
                None
            },
        },
        children: (code.level() != Level::County).then(|| children_of(lang, &rollup, code)),
        schools,
        flags: flags_of(lang, &rollup, Some(code)),
    };
    Ok(html_response(StatusCode::OK, region_page_markup(&m)))
}

/// One school's figures.
#[derive(Debug, Clone)]
pub struct SchoolPage {
    /// The frame; its title names the school.
    pub frame: Frame,
    /// From the nation down to the school.
    pub crumbs: Vec<Crumb>,
    /// The name of the school's region.
    pub region: String,
    /// Its figures.
    pub summary: Summary,
}

/// Draws a school's page.
pub fn school_page_markup(m: &SchoolPage) -> Markup {
    page(
        &m.frame,
        html! {
            (crumbs(&m.crumbs))
            h1 { (m.frame.title) " " span.meta { (m.region) } }
            (summary(m.frame.lang, &m.summary))
        },
    )
}

/// `GET /r/{code}/s/{school}`.
pub async fn school_page(
    State(s): State<AppState>,
    r: DashboardRegion,
) -> Result<Response, PageRefusal> {
    let (lang, role, code) = (r.user.lang, r.user.role, r.code);
    let not_found = || {
        PageRefusal::of(
            &r.user,
            PageDenied::NotFound {
                role,
                what: r.what.clone(),
            },
        )
    };
    let sc = r.school.ok_or_else(not_found)?;
    let hub = &s.hub;
    let rollup = hub.snapshot().views.rollup(&hub.campaign);
    let f = rollup
        .schools_in(code)
        .into_iter()
        .find(|(c, _)| *c == sc)
        .map(|(_, f)| f)
        .ok_or_else(not_found)?;
    let m = SchoolPage {
        frame: Frame {
            lang,
            reader: Some(role),
            path: r.user.path.clone(),
            title: wd::school_title(lang, &sc.to_string()),
        },
        crumbs: crumbs_to(lang, role, code, Some(sc)),
        region: region_label(code, lang),
        summary: Summary {
            figures: f,
            target: None,
        },
    };
    Ok(html_response(StatusCode::OK, school_page_markup(&m)))
}

// ---------------------------------------------------------------------------------------
// Notices, sources.

/// One notice, as the log shows it.
#[derive(Debug, Clone)]
pub struct NoticeRow {
    /// Its number.
    pub id: u64,
    /// When it was raised.
    pub created: String,
    /// The rule that raised it.
    pub rule: String,
    /// The region it is about.
    pub subject: String,
    /// Whom it was sent to.
    pub addressee: String,
    /// Whether it went up a level.
    pub escalated: bool,
    /// Its deadline, if any.
    pub deadline: String,
    /// Its delivery state.
    pub state: String,
    /// Its text.
    pub text: String,
}

/// The notice log.
#[derive(Debug, Clone)]
pub struct NoticesPage {
    /// The frame.
    pub frame: Frame,
    /// Newest first.
    pub notices: Vec<NoticeRow>,
}

/// Draws the notice log.
pub fn notices_page_markup(m: &NoticesPage) -> Markup {
    let w = words(m.frame.lang);
    page(
        &m.frame,
        html! {
            h1 { (m.frame.title) }
            @if m.notices.is_empty() {
                p #no-notices { (w.no_notices) }
            } @else {
                table #notices {
                    tr {
                        th { "#" } th { (w.raised) } th { (w.rule) } th { (w.about) } th { (w.to) }
                        th { (w.deadline) } th { (w.state) } th { (w.text) }
                    }
                    @for n in &m.notices {
                        tr data-row={ "notice:" (n.id) } {
                            td.num { (n.id) }
                            td { (n.created) }
                            td { (n.rule) }
                            td { (n.subject) }
                            td { (n.addressee) @if n.escalated { (w.escalated) } }
                            td { (n.deadline) }
                            td { (n.state) }
                            td { (n.text) }
                        }
                    }
                }
            }
        },
    )
}

/// `GET /notices`.
pub async fn notices_page(
    State(s): State<AppState>,
    user: DashboardUser,
) -> Result<Response, PageRefusal> {
    let lang = user.lang;
    let notices = notices_for_dashboard(&s, user.role)
        .iter()
        .map(|n| NoticeRow {
            id: n.id,
            created: when(&s, lang, n.created),
            rule: wd::rule(lang, &n.rule),
            subject: region_label(n.subject, lang),
            addressee: region_label(n.addressee, lang),
            escalated: n.escalated,
            deadline: n
                .deadline
                .map(|d| date(lang, &d.to_string()))
                .unwrap_or_default(),
            state: wd::notice_state(lang, n.state),
            text: match lang {
                Lang::Zh => n.text.clone(),
                Lang::En => n.text_en.clone(),
            },
        })
        .collect();
    let m = NoticesPage {
        frame: Frame {
            lang,
            reader: Some(user.role),
            path: user.path.clone(),
            title: words(lang).notice_log.to_string(),
        },
        notices,
    };
    Ok(html_response(StatusCode::OK, notices_page_markup(&m)))
}

/// A source's standing, as source health shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Registered and reporting.
    Active,
    /// Registered but nothing received for longer than the campaign allows.
    Silent,
    /// Its key was revoked.
    Revoked,
}

/// One source's health.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// The source id.
    pub id: String,
    /// The name of its scope.
    pub scope: String,
    /// Its standing.
    pub state: SourceState,
    /// The highest seq held.
    pub head_seq: u64,
    /// Entries received.
    pub entries: u64,
    /// When it was last heard from.
    pub last_seen: Option<String>,
    /// How long ago that was.
    pub lag: Option<String>,
    /// Alarms raised about it.
    pub alarms: usize,
    /// The largest checkpoint its agent cosigned.
    pub witnessed: Option<u64>,
    /// What it said when it cosigned a tree the hub does not hold.
    pub saw_another_tree: Option<String>,
    /// The log alarm its agent reports (its audit of the hub's log failed).
    pub log_alarm: Option<LogAlarmFlag>,
}

/// A source's reported log alarm, as its row shows it.
#[derive(Debug, Clone)]
pub struct LogAlarmFlag {
    /// The flag ("log alarm: fork").
    pub flag: String,
    /// The agent's alarm text, shown on hover (the agent's words: escaped like any text).
    pub detected: String,
}

/// One alarm.
#[derive(Debug, Clone)]
pub struct AlarmRow {
    /// When.
    pub at: String,
    /// The source.
    pub source: String,
    /// The seq concerned.
    pub seq: u64,
    /// The refusal code.
    pub code: String,
    /// What happened.
    pub detail: String,
}

/// Source health.
#[derive(Debug, Clone)]
pub struct SourcesPage {
    /// The frame.
    pub frame: Frame,
    /// The hub's clock, formatted.
    pub as_of: String,
    /// The sources the reader may read, by id.
    pub sources: Vec<SourceRow>,
    /// Their alarms.
    pub alarms: Vec<AlarmRow>,
}

/// Draws source health.
pub fn sources_page_markup(m: &SourcesPage) -> Markup {
    let w = words(m.frame.lang);
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".to_string());
    page(
        &m.frame,
        html! {
            h1 { (m.frame.title) }
            p.meta { (w.as_of) " " (m.as_of) }
            @if m.sources.is_empty() {
                p #no-sources { (w.no_sources) }
            } @else {
                table #sources {
                    tr {
                        th { (w.source) } th { (w.scope) } th { (w.status) } th { (w.held_through) }
                        th { (w.entries) } th { (w.last_seen) } th { (w.lag) } th { (w.witnessed) }
                        th { (w.alarms) }
                    }
                    @for r in &m.sources {
                        tr data-row={ "source:" (r.id) } {
                            td { (r.id) }
                            td { (r.scope) }
                            td {
                                @match r.state {
                                    SourceState::Silent => span.warn { (w.silent) },
                                    SourceState::Active => span.ok { (w.active) },
                                    SourceState::Revoked => span.warn { (w.revoked) },
                                }
                            }
                            (cell("head_seq", &r.head_seq.to_string()))
                            (cell("entries", &r.entries.to_string()))
                            td data-field="last_seen" { (dash(&r.last_seen)) }
                            td.num data-field="lag" { (dash(&r.lag)) }
                            td.num.warn[r.saw_another_tree.is_some()] data-field="witnessed" {
                                (dash(&r.witnessed.map(|n| n.to_string())))
                                @if let Some(t) = &r.saw_another_tree { " · " (t) }
                                @if let Some(a) = &r.log_alarm {
                                    " · " span.warn data-field="log_alarm" title=(a.detected) { (a.flag) }
                                }
                            }
                            td.num.warn[r.alarms > 0] data-field="alarms" { (r.alarms) }
                        }
                    }
                }
            }
            h2 { (w.alarms) }
            @if m.alarms.is_empty() {
                p #no-alarms { (w.no_alarms) }
            } @else {
                table #alarms {
                    tr { th { (w.at) } th { (w.source) } th { (w.seq) } th { (w.alarm_code) } th { (w.detail) } }
                    @for a in &m.alarms {
                        tr {
                            td { (a.at) } td { (a.source) } td.num { (a.seq) } td { (a.code) } td { (a.detail) }
                        }
                    }
                }
            }
        },
    )
}

/// `GET /sources`.
pub async fn sources_page(
    State(s): State<AppState>,
    user: DashboardUser,
) -> Result<Response, PageRefusal> {
    let (lang, role) = (user.lang, user.role);
    let hub = &s.hub;
    let now = hub.clock.now();
    let st = hub.snapshot();
    let mut regs: Vec<_> = st
        .registry
        .values()
        .filter(|r| role.can_read(r.scope))
        .collect();
    regs.sort_by(|a, b| a.id.cmp(&b.id));
    let sources = regs
        .iter()
        .map(|r| {
            let act = st.views.sources().get(&r.id);
            let last = act.and_then(|a| a.last_received);
            let silent = crate::tracking::source_is_silent(&hub.campaign, &st.views, r, now);
            // A damaged record shows as unknown here; the API answers it as an error.
            let witness = crate::witness::of_source(hub.store.as_ref(), &r.id).ok();
            SourceRow {
                id: r.id.to_string(),
                scope: region_label(r.scope, lang),
                state: match r.status {
                    SourceStatus::Active if silent => SourceState::Silent,
                    SourceStatus::Active => SourceState::Active,
                    SourceStatus::Revoked => SourceState::Revoked,
                },
                head_seq: st.heads.get(&r.id).copied().unwrap_or_default().seq,
                entries: act.map_or(0, |a| a.entries),
                last_seen: last.map(|l| when(&s, lang, l)),
                lag: last.map(|l| wd::lag(lang, (now - l).num_seconds())),
                alarms: st.alarms.iter().filter(|a| a.source == r.id).count(),
                witnessed: witness.as_ref().and_then(|w| w.last_size),
                saw_another_tree: witness
                    .as_ref()
                    .and_then(|w| w.wrong_root.as_ref())
                    .map(|x| wd::saw_another_tree(lang, x.size)),
                log_alarm: witness
                    .as_ref()
                    .and_then(|w| w.log_alarm.as_ref())
                    .map(|a| LogAlarmFlag {
                        flag: wd::log_alarm(lang, &a.code),
                        detected: a.detected.clone(),
                    }),
            }
        })
        .collect();
    let alarms = st
        .alarms
        .iter()
        .filter(|a| regs.iter().any(|r| r.id == a.source))
        .map(|a| AlarmRow {
            at: when(&s, lang, a.at),
            source: a.source.to_string(),
            seq: a.seq,
            code: serde_json::to_value(a.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            detail: a.detail.clone(),
        })
        .collect();
    drop(st);
    let m = SourcesPage {
        frame: Frame {
            lang,
            reader: Some(role),
            path: user.path.clone(),
            title: words(lang).source_health.to_string(),
        },
        as_of: when(&s, lang, now),
        sources,
        alarms,
    };
    Ok(html_response(StatusCode::OK, sources_page_markup(&m)))
}

// ---------------------------------------------------------------------------------------
// Bulletins, flag lists.

/// `GET /bulletins/{n}`: an issued bulletin rendered by [`crate::render::html`] (already
/// a whole, escaped document; a page saying why for a document that does not read as a
/// bulletin), for browser sessions.
pub async fn bulletin_page(
    State(s): State<AppState>,
    user: DashboardUser,
    Path(n): Path<String>,
) -> Result<Response, PageRefusal> {
    // Bulletins are published to every reader, as in the API.
    let not_found = || {
        PageRefusal::of(
            &user,
            PageDenied::NotFound {
                role: user.role,
                what: Subject::Bulletin(n.clone()),
            },
        )
    };
    let num = n.parse::<u64>().map_err(|_| not_found())?;
    let html = Format::Rendered(Rendering::Html);
    match crate::bulletin::get(s.hub.store.as_ref(), num) {
        Ok(doc) => match crate::bulletin::show(&doc, html, user.lang) {
            Ok(page) => Ok(html_response(StatusCode::OK, PreEscaped(page))),
            Err(e) => Err(unavailable(&user, e)),
        },
        Err(crate::bulletin::BulletinError::NotFound(_)) => Err(not_found()),
        Err(e) => Err(unavailable(&user, e)),
    }
}

/// Every flag within `code` (the reader's whole scope for `None`) as a CSV download.
fn flags_csv_response(
    s: &AppState,
    user: &DashboardUser,
    code: Option<RegionCode>,
) -> Result<Response, PageRefusal> {
    let rollup = s.hub.snapshot().views.rollup(&s.hub.campaign);
    let scope = code.or(match user.role {
        Role::Province(p) => Some(p),
        _ => None,
    });
    let list = flags::within(&rollup.flags, scope);
    let body = flags::csv(user.lang, &list).map_err(|e| unavailable(user, e))?;
    let name = match scope {
        Some(c) => format!("attachment; filename=\"flags-{c}.csv\""),
        None => "attachment; filename=\"flags.csv\"".to_string(),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `GET /flags.csv`: every flag the reader may read.
pub async fn flags_csv(
    State(s): State<AppState>,
    user: DashboardUser,
) -> Result<Response, PageRefusal> {
    flags_csv_response(&s, &user, None)
}

/// `GET /r/{code}/flags.csv`: every flag within a region the reader may read.
pub async fn region_flags_csv(
    State(s): State<AppState>,
    r: DashboardRegion,
) -> Result<Response, PageRefusal> {
    flags_csv_response(&s, &r.user, Some(r.code))
}
