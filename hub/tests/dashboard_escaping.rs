//! Names and reasons on dashboard pages cannot become markup. Region, school and source
//! names, codes, notice texts, alarm details and what a URL names are drawn as text on
//! every page that shows them, whatever characters they hold.
//!
//! The property: a page drawn with hostile strings equals the same page drawn with inert
//! placeholders, each placeholder replaced by its string with `&`, `<`, `>` and `"` turned
//! into entities. So every occurrence is escaped, and nothing else on the page changes.
//! The single quote `'` is left as it is, as maud leaves it: every attribute the pages
//! write is double-quoted (checked below), so `'` can end neither an attribute nor a tag.
//! Pages whose names come from requests (a region code in the path, the login form's
//! `next`) are also checked through HTTP.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use proptest::prelude::*;
use spacesync_hub::access::{PageDenied, PageRefusal, Subject};
use spacesync_hub::auth::Role;
use spacesync_hub::dashboard::flags::{DropRow, FlagCounts, FlagsView};
use spacesync_hub::dashboard::layout::Frame;
use spacesync_hub::dashboard::pages::{
    AlarmRow, Children, Crumb, FiguresRow, HomePage, LogAlarmFlag, NoticeRow, NoticesPage,
    RegionPage, SchoolPage, SourceRow, SourceState, SourcesPage, Summary, bulletin_box_markup,
    home_page, notices_page_markup, region_page_markup, school_page_markup, sources_page_markup,
};
use spacesync_hub::views::Figures;
use spacesync_hub::wording::Lang;
use spacesync_shared::record::SpaceKind;
use spacesync_shared::region::Level;

/// The expected text of `s` in HTML, written independently of the template library.
fn expected(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// The `i`-th inert placeholder: no character of it needs escaping, and no page or
/// hostile string contains it otherwise.
fn placeholder(i: usize) -> String {
    format!("\u{2603}{i}\u{2603}")
}

/// Every page that shows names, drawn with the strings `n(0)`, `n(1)`, …
fn pages(lang: Lang, n: &dyn Fn(usize) -> String) -> Vec<(&'static str, String)> {
    let frame = |i: usize| Frame {
        lang,
        reader: Some(Role::Ministry),
        path: n(i),
        title: n(i + 1),
    };
    let row = |i: usize| FiguresRow {
        row: n(i),
        code: n(i + 1),
        name: n(i + 2),
        href: n(i + 3),
        figures: Figures::default(),
    };
    let flags = FlagsView {
        total: 3,
        by: Level::Province,
        groups: vec![FlagCounts {
            code: n(40),
            name: n(41),
            decrease: 1,
            conflict: 1,
            discrepancy: 1,
        }],
        drops: vec![DropRow {
            code: n(42),
            region: n(43),
            school: Some(n(44)),
            kind: SpaceKind::Teacher,
            before: ("2018-11-01".into(), 10),
            after: ("2018-11-05".into(), 5),
            source: n(45),
        }],
        csv_href: n(46),
    };
    let children = Children {
        of: Level::Province,
        rows: vec![row(50)],
        without_data: 2,
    };
    let crumbs = vec![
        Crumb {
            name: n(60),
            href: Some(n(61)),
        },
        Crumb {
            name: n(62),
            href: None,
        },
    ];
    let summary = Summary {
        figures: Figures::default(),
        target: Some((100, 50)),
    };
    // A real issued bulletin (the scripted 2018 campaign's second), with hostile titles.
    let mut doc = spacesync_hub::assessment::Bulletin::from_document(
        &serde_json::from_str::<serde_json::Value>(include_str!(
            "../testdata/bulletin-2018-2.json"
        ))
        .expect("json"),
    )
    .expect("bulletin");
    doc.title = n(70);
    doc.title_en = n(70);
    let home = HomePage {
        frame: frame(0),
        bulletin: bulletin_box_markup(
            lang,
            Role::Province("440000".parse().expect("code")),
            Some((3, &doc, doc.assessment.as_of_date)),
        ),
        as_of: n(2),
        log_size: 7,
        summary: summary.clone(),
        units: vec![row(10)],
        children: Some(children.clone()),
        flags: flags.clone(),
    };
    let region = RegionPage {
        frame: frame(0),
        crumbs: crumbs.clone(),
        code: n(2),
        level: Level::City,
        has_data: false,
        summary: summary.clone(),
        children: Some(children),
        schools: Some(vec![row(20)]),
        flags,
    };
    let school = SchoolPage {
        frame: frame(0),
        crumbs,
        region: n(2),
        summary,
    };
    let notices = NoticesPage {
        frame: frame(0),
        notices: vec![NoticeRow {
            id: 1,
            created: n(80),
            rule: n(81),
            subject: n(82),
            addressee: n(83),
            escalated: true,
            deadline: n(84),
            state: n(85),
            text: n(86),
        }],
    };
    let sources = SourcesPage {
        frame: frame(0),
        as_of: n(2),
        sources: vec![SourceRow {
            id: n(90),
            scope: n(91),
            state: SourceState::Silent,
            head_seq: 3,
            entries: 4,
            last_seen: Some(n(92)),
            lag: Some(n(93)),
            alarms: 1,
            witnessed: Some(5),
            saw_another_tree: Some(n(98)),
            log_alarm: Some(LogAlarmFlag {
                flag: n(99),
                detected: n(87),
            }),
        }],
        alarms: vec![AlarmRow {
            at: n(94),
            source: n(95),
            seq: 2,
            code: n(96),
            detail: n(97),
        }],
    };
    vec![
        ("home", home_page(&home).into_string()),
        ("region", region_page_markup(&region).into_string()),
        ("school", school_page_markup(&school).into_string()),
        ("notices", notices_page_markup(&notices).into_string()),
        ("sources", sources_page_markup(&sources).into_string()),
    ]
}

/// The error pages, whose subject comes from the request.
fn error_pages(
    rt: &tokio::runtime::Runtime,
    lang: Lang,
    n: &dyn Fn(usize) -> String,
) -> Vec<(&'static str, String)> {
    let page = |why: PageDenied| {
        let r = PageRefusal {
            lang,
            path: n(0),
            why,
        }
        .into_response();
        let body = rt
            .block_on(r.into_body().collect())
            .expect("body")
            .to_bytes();
        String::from_utf8(body.to_vec()).expect("utf-8")
    };
    let role = Role::Province("440000".parse().expect("code"));
    vec![
        (
            "404 region",
            page(PageDenied::NotFound {
                role,
                what: Subject::Region(n(1)),
            }),
        ),
        (
            "403 school",
            page(PageDenied::Forbidden {
                role,
                what: Subject::School {
                    region: n(1),
                    school: n(2),
                },
            }),
        ),
        (
            "404 bulletin",
            page(PageDenied::NotFound {
                role,
                what: Subject::Bulletin(n(1)),
            }),
        ),
    ]
}

/// A string with at least one character HTML gives a meaning to.
fn hostile() -> impl Strategy<Value = String> {
    (
        "[a-z区 ]{0,4}",
        prop::sample::select(vec!['<', '>', '&', '"', '\'']),
        "[a-z<>&\"'区/=; ]{0,8}",
    )
        .prop_map(|(a, c, b)| format!("{a}{c}{b}"))
}

fn check(name: &str, lang: Lang, neutral: &str, hostile: &str, strings: &[String]) {
    let mut want = neutral.to_string();
    for (i, s) in strings.iter().enumerate() {
        want = want.replace(&placeholder(i), &expected(s));
    }
    assert!(
        hostile == want,
        "{name} ({lang:?}): a name changed the page beyond its escaped text"
    );
    assert!(
        !neutral.contains("='"),
        "{name}: a single-quoted attribute, where ' would end it"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn names_and_reasons_are_escaped_on_every_page(
        strings in prop::collection::vec(hostile(), 100),
        english in any::<bool>(),
    ) {
        let lang = if english { Lang::En } else { Lang::Zh };
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let s = |i: usize| strings[i].clone();
        let neutral = pages(lang, &placeholder);
        let hostile = pages(lang, &s);
        for ((name, n), (_, h)) in neutral.iter().zip(&hostile) {
            // Every placeholder the page shows is there; the check is not vacuous.
            prop_assert!(n.contains(&placeholder(2)) || n.contains(&placeholder(1)), "{name}");
            check(name, lang, n, h, &strings);
        }
        let neutral = error_pages(&rt, lang, &placeholder);
        let hostile = error_pages(&rt, lang, &s);
        for ((name, n), (_, h)) in neutral.iter().zip(&hostile) {
            prop_assert!(n.contains(&placeholder(1)), "{name}");
            check(name, lang, n, h, &strings);
        }
    }
}

/// The names a request puts on a page: a region code that does not parse, a school code,
/// the login form's `next`.
#[tokio::test]
async fn names_from_requests_are_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = common::TestHub::open(dir.path());
    let ministry = th.token(Role::Ministry);
    let hostile = "%3Cb%3E'%22&amp;x";
    let raw = "<b>'\"&amp;x";
    for path in [
        format!("/r/{hostile}"),
        format!("/r/440106/s/{hostile}"),
        format!("/r/{hostile}/flags.csv"),
    ] {
        let req = Request::get(&path)
            .header(header::AUTHORIZATION, format!("Bearer {ministry}"))
            .body(Body::empty())
            .expect("request");
        let r = th.send(req).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        let html = r.text();
        assert!(html.contains(&expected(raw)), "{path}: {html}");
        assert!(!html.contains("<b>"), "{path}: {html}");
    }
    let req = Request::get("/login?next=/%22%3E%3Cscript%3Ex()%3C/script%3E")
        .body(Body::empty())
        .expect("request");
    let r = th.send(req).await;
    let html = r.text();
    assert!(!html.contains("<script"), "{html}");
    assert!(
        html.contains("value=\"/&quot;&gt;&lt;script&gt;x()&lt;/script&gt;\""),
        "{html}"
    );
}
