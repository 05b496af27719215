//! Data flags on the dashboard: with thousands of flags the overview stays under 200 KB and
//! shows the summary (counts by provincial unit and kind, the 20 largest drops, a link to
//! the CSV), and the CSV holds every flag the reader may read, one row each, after a UTF-8
//! byte-order mark, behind the same access checks as the pages.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use serde_json::{Value, json};
use spacesync_hub::auth::Role;
use spacesync_hub::dashboard::flags::{CSV_BOM, CSV_HEADER, LARGEST_DROPS};
use spacesync_hub::wording::{Lang, count};

/// Schools per county; four counties in Guangzhou, two in Beijing. Each school reports
/// two snapshots whose four kinds all go down: four decreases per school.
const SCHOOLS: u32 = 120;
const GD_COUNTIES: [&str; 4] = ["440103", "440104", "440105", "440106"];
const BJ_COUNTIES: [&str; 2] = ["110101", "110105"];

/// Two snapshots of one school; the drop grows with `k`, so the largest are known.
fn school_records(county: &str, k: u32) -> [Value; 2] {
    let school = format!("{county}{k:04}");
    let k = u64::from(k);
    [
        space_count(
            county,
            &school,
            "2018-11-01",
            json!({"teacher": 500 + k, "student": 5000, "parent": 900, "class": 40}),
        ),
        space_count(
            county,
            &school,
            "2018-11-05",
            json!({"teacher": 400, "student": 4990, "parent": 899, "class": 39}),
        ),
    ]
}

async fn send_all(th: &TestHub, agent: &mut Agent, counties: &[&str]) {
    let records: Vec<Value> = counties
        .iter()
        .flat_map(|c| (1..=SCHOOLS).flat_map(move |k| school_records(c, k)))
        .collect();
    for chunk in records.chunks(500) {
        th.ingest_ok(&agent.batch(chunk)).await;
    }
}

struct Fixture {
    th: TestHub,
    _dir: tempfile::TempDir,
    ministry: String,
    guangdong: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    let mut bj = Agent::new("bj-a", 2, "110000");
    th.register(&gd);
    th.register(&bj);
    send_all(&th, &mut gd, &GD_COUNTIES).await;
    send_all(&th, &mut bj, &BJ_COUNTIES).await;
    let ministry = th.token(Role::Ministry);
    let guangdong = th.token(Role::Province("440000".parse().expect("code")));
    Fixture {
        th,
        _dir: dir,
        ministry,
        guangdong,
    }
}

async fn get(fx: &Fixture, path: &str, token: Option<&str>) -> Reply {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    fx.th.send(b.body(Body::empty()).expect("request")).await
}

/// The `data-field` cell of row `row` on an HTML page.
fn field(html: &str, row: &str, field: &str) -> String {
    let at = html
        .find(&format!("data-row=\"{row}\""))
        .unwrap_or_else(|| panic!("no row {row}"));
    let rest = &html[at..];
    let end = rest.find("</tr>").unwrap_or(rest.len());
    let tr = &rest[..end];
    let marker = format!("data-field=\"{field}\">");
    let from = tr
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {field} in {tr}"))
        + marker.len();
    tr[from..].split('<').next().unwrap_or("").to_string()
}

/// Every row of a CSV answer after checking the BOM and the header.
fn csv_rows(r: &Reply) -> Vec<csv::StringRecord> {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/csv; charset=utf-8")
    );
    assert!(
        r.body.starts_with(CSV_BOM.as_bytes()),
        "the CSV starts with a UTF-8 byte-order mark"
    );
    let mut reader = csv::Reader::from_reader(&r.body[CSV_BOM.len()..]);
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header, CSV_HEADER);
    reader.records().map(|r| r.expect("row")).collect()
}

#[tokio::test]
async fn the_overview_with_thousands_of_flags_stays_small_and_shows_the_summary() {
    let fx = fixture().await;
    let progress = get(&fx, "/v1/progress", Some(&fx.ministry)).await.json();
    let flags = progress["flags"].as_array().expect("flags").len();
    let schools = SCHOOLS as usize * (GD_COUNTIES.len() + BJ_COUNTIES.len());
    assert_eq!(flags, schools * 4, "four decreases per school");

    let n = |lang: Lang, x: usize| count(lang, x as i64);
    for (q, lang) in [("", Lang::Zh), ("?lang=en", Lang::En)] {
        let r = get(&fx, &format!("/{q}"), Some(&fx.ministry)).await;
        assert_eq!(r.status, StatusCode::OK);
        let html = r.text();
        eprintln!("overview{q}: {} bytes with {flags} flags", r.body.len());
        assert!(
            r.body.len() < 200_000,
            "the overview is {} bytes with {flags} flags",
            r.body.len()
        );
        // Counts by provincial unit and kind.
        let gd = SCHOOLS as usize * GD_COUNTIES.len() * 4;
        let bj = SCHOOLS as usize * BJ_COUNTIES.len() * 4;
        assert_eq!(field(&html, "flags:440000", "decrease"), n(lang, gd));
        assert_eq!(field(&html, "flags:110000", "decrease"), n(lang, bj));
        assert_eq!(field(&html, "flags:440000", "conflict"), "0");
        assert_eq!(field(&html, "flags:440000", "total"), n(lang, gd));
        assert_eq!(html.matches("data-row=\"flags:").count(), 2);
        // The largest drops: 20, the largest first (the last school of a county: 500 +
        // SCHOOLS teachers down to 400).
        assert_eq!(html.matches("data-row=\"drop:").count(), LARGEST_DROPS);
        assert_eq!(field(&html, "drop:1", "drop"), (100 + SCHOOLS).to_string());
        // And the way to the rest.
        let csv = if q.is_empty() {
            "href=\"/flags.csv\""
        } else {
            "href=\"/flags.csv?lang=en\""
        };
        assert!(html.contains(csv), "a link to the CSV");
    }

    // A province reader: its own flags, counted by city.
    let r = get(&fx, "/", Some(&fx.guangdong)).await;
    let html = r.text();
    assert!(r.body.len() < 200_000);
    assert_eq!(
        field(&html, "flags:440100", "decrease"),
        n(Lang::Zh, SCHOOLS as usize * GD_COUNTIES.len() * 4)
    );
    assert!(!html.contains("flags:110000"), "no other province's flags");

    // A county page counts its own flags.
    let r = get(&fx, "/r/440106", Some(&fx.ministry)).await;
    let html = r.text();
    assert_eq!(
        field(&html, "flags:440106", "decrease"),
        n(Lang::Zh, SCHOOLS as usize * 4)
    );
    assert!(html.contains("href=\"/r/440106/flags.csv\""));
}

#[tokio::test]
async fn the_flags_csv_has_a_bom_a_header_and_one_row_per_flag_behind_the_page_checks() {
    let fx = fixture().await;
    let progress = get(&fx, "/v1/progress", Some(&fx.ministry)).await.json();
    let flags = progress["flags"].as_array().expect("flags").clone();

    // Every flag, once, with its figures.
    let rows = csv_rows(&get(&fx, "/flags.csv", Some(&fx.ministry)).await);
    assert_eq!(rows.len(), flags.len());
    let mut from_csv: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r[1].to_string(),
                r[3].to_string(),
                r[4].to_string(),
                r[8].to_string(),
            )
        })
        .collect();
    let mut from_api: Vec<(String, String, String, String)> = flags
        .iter()
        .map(|f| {
            (
                f["region"].as_str().unwrap_or("").to_string(),
                f["school"].as_str().unwrap_or("").to_string(),
                f["kind"].as_str().unwrap_or("").to_string(),
                f["after"][1].to_string(),
            )
        })
        .collect();
    from_csv.sort();
    from_api.sort();
    assert_eq!(from_csv, from_api);
    assert!(rows.iter().all(|r| &r[0] == "decrease"));
    let first = rows
        .iter()
        .find(|r| &r[3] == "4401060001" && &r[4] == "teacher")
        .expect("a row of school 4401060001");
    assert_eq!(
        (&first[5], &first[6], &first[7], &first[8], &first[9]),
        ("2018-11-01", "501", "2018-11-05", "400", "101")
    );
    assert_eq!(&first[2], "天河区", "names in the page's language");
    let r = get(&fx, "/flags.csv?lang=en", Some(&fx.ministry)).await;
    assert_eq!(csv_rows(&r).len(), flags.len());

    // A province reader gets its own flags only, from both addresses.
    let gd = csv_rows(&get(&fx, "/flags.csv", Some(&fx.guangdong)).await);
    assert_eq!(gd.len(), SCHOOLS as usize * GD_COUNTIES.len() * 4);
    assert!(gd.iter().all(|r| r[1].starts_with("44")));
    let county = csv_rows(&get(&fx, "/r/440106/flags.csv", Some(&fx.guangdong)).await);
    assert_eq!(county.len(), SCHOOLS as usize * 4);
    assert!(county.iter().all(|r| &r[1] == "440106"));

    // The page checks: login, unknown token, another province, a bad code.
    let r = get(&fx, "/flags.csv", None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok()),
        Some("/login?next=%2Fflags.csv")
    );
    let r = get(&fx, "/flags.csv", Some("sst_not-a-token")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = get(&fx, "/r/110105/flags.csv", Some(&fx.guangdong)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("无权"), "{}", r.text());
    let r = get(&fx, "/r/44/flags.csv", Some(&fx.ministry)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn empty_sections_say_so_in_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let ministry = th.token(Role::Ministry);
    let get = |p: &'static str| {
        let req = Request::get(p)
            .header(header::AUTHORIZATION, format!("Bearer {ministry}"))
            .body(Body::empty())
            .expect("request");
        th.send(req)
    };
    let home = get("/").await.text();
    for id in ["no-flags", "no-kinds"] {
        assert!(home.contains(&format!("id=\"{id}\"")), "{id}: {home}");
    }
    assert!(home.contains("无数据标记。"));
    assert!(home.contains("尚未发布进度通报。"));
    let sources = get("/sources").await.text();
    for id in ["no-sources", "no-alarms"] {
        assert!(sources.contains(&format!("id=\"{id}\"")), "{id}: {sources}");
    }
    let county = get("/r/440106?lang=en").await.text();
    for id in ["no-data", "no-schools", "no-flags", "no-kinds"] {
        assert!(county.contains(&format!("id=\"{id}\"")), "{id}: {county}");
    }
    assert!(county.contains("No flagged data."));
    let notices = get("/notices").await.text();
    assert!(notices.contains("id=\"no-notices\""));
    // No heading is followed directly by another heading or the end of the page.
    for (name, page) in [
        ("/", &home),
        ("/sources", &sources),
        ("/r/440106", &county),
        ("/notices", &notices),
    ] {
        for pair in [
            "</h2><h2",
            "</h2><h3",
            "</h3><h2",
            "</h2></main>",
            "</h3></main>",
        ] {
            assert!(!page.contains(pair), "{name}: an empty section ({pair})");
        }
    }
}
