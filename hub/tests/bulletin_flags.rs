//! Data flags in bulletins: with thousands of flags the HTML shows the summary (counts by
//! provincial unit and kind, the 20 largest drops, where the complete list is) and stays
//! small, and the flags CSV — `GET /v1/bulletins/N/flags.csv` and `bulletin show N
//! --format flags-csv` — holds every flag of the bulletin, one row each, after a UTF-8
//! byte-order mark, with the dashboard's columns.
//!
//! This is the flag-heavy, scaled-down counterpart of `tests/tests/bulletin_demo_size.rs`
//! (the demo campaign's bulletin 13, 90 s or more in a debug build, so it runs on request).

mod common;

use axum::http::{StatusCode, header};
use common::*;
use serde_json::{Value, json};
use spacesync_hub::assessment::Bulletin;
use spacesync_hub::auth::Role;
use spacesync_hub::render::{self, FLAGS_CSV_HEADER, LARGEST_DROPS, Lang};
use spacesync_hub::wording::bulletin::words;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Schools per county; four counties in Guangzhou, two in Beijing. Each school reports
/// two snapshots whose four kinds all go down: four decreases per school.
const SCHOOLS: u32 = 150;
const GD_COUNTIES: [&str; 4] = ["440103", "440104", "440105", "440106"];
const BJ_COUNTIES: [&str; 2] = ["110101", "110105"];

/// Two snapshots of one school; the teacher drop grows with `k`, so the largest are known.
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

/// A hub with two bulletins: the first after Guangdong's figures, the second a week later
/// after Beijing's too (so it has one earlier bulletin in its history).
async fn two_bulletins(th: &TestHub) -> Value {
    let mut gd = Agent::new("gd-a", 1, "440000");
    let mut bj = Agent::new("bj-a", 2, "110000");
    th.register(&gd);
    th.register(&bj);
    send_all(th, &mut gd, &GD_COUNTIES).await;
    spacesync_hub::bulletin::issue(&th.hub, None, &[]).expect("bulletin 1");
    th.clock.advance(chrono::Duration::days(7));
    send_all(th, &mut bj, &BJ_COUNTIES).await;
    spacesync_hub::bulletin::issue(&th.hub, None, &[]).expect("bulletin 2")
}

/// The rows of a flags CSV after its BOM, header first.
fn rows(body: &[u8]) -> Vec<csv::StringRecord> {
    let rest = body
        .strip_prefix(BOM)
        .unwrap_or_else(|| panic!("no byte-order mark: {:?}", &body[..body.len().min(8)]));
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(rest);
    r.records().map(|x| x.expect("a CSV record")).collect()
}

#[tokio::test]
async fn a_flag_heavy_bulletin_is_summarised_and_its_csv_holds_every_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let doc = two_bulletins(&th).await;
    let flags = doc["flags"].as_array().map_or(0, Vec::len);
    let want = 4 * SCHOOLS as usize * (GD_COUNTIES.len() + BJ_COUNTIES.len());
    assert_eq!(flags, want, "four decreases per school");
    let b = Bulletin::from_document(&doc).expect("the bulletin reads back");
    assert_eq!(b.history.len(), 1);

    for lang in [Lang::Zh, Lang::En] {
        let html = render::html(&b, lang);
        // Printed one per line, 3,600 flags made this page about a megabyte.
        assert!(html.len() < 100 * 1024, "{lang:?}: {} bytes", html.len());
        assert_eq!(
            html.matches("<tr data-drop=\"").count(),
            LARGEST_DROPS,
            "{lang:?}: the largest drops"
        );
        // Counted by provincial unit: Beijing and Guangdong, every flag a decrease.
        let n = flags / 6;
        assert!(html.contains("<tr data-flags=\"110000\">"), "{lang:?}");
        assert!(html.contains("<tr data-flags=\"440000\">"), "{lang:?}");
        assert!(
            html.contains(&format!(
                "<td class=\"num\">{}</td>",
                render::count(lang, (4 * n) as i64)
            )),
            "{lang:?}: Guangdong's decreases"
        );
        // The largest drop: the last school of a county, 650 → 400 teacher spaces.
        assert!(html.contains("<tr data-drop=\"1\">"), "{lang:?}");
        let first = &html[html.find("<tr data-drop=\"1\">").unwrap_or(0)..];
        assert!(
            first.contains("0150"),
            "{lang:?}: {}",
            &first[..300.min(first.len())]
        );
        // Where the rest are.
        assert!(html.contains("/v1/bulletins/2/flags.csv"), "{lang:?}");
        assert!(html.contains("--format flags-csv"), "{lang:?}");
        assert!(
            !html.contains("\"before\":["),
            "{lang:?}: a flag printed as JSON"
        );
        let md = render::markdown(&b, lang);
        assert!(
            md.len() < 40 * 1024,
            "{lang:?}: {} bytes of Markdown",
            md.len()
        );
        assert!(md.contains("/v1/bulletins/2/flags.csv"), "{lang:?}");
        // History: one point per bulletin.
        assert_eq!(
            html.matches("<circle class=\"point\"").count(),
            2,
            "{lang:?}"
        );
        assert!(html.contains("data-number=\"1\""), "{lang:?}");
        assert!(html.contains("data-number=\"2\""), "{lang:?}");
        // And nothing of the empty sections is left without words.
        let w = words(lang);
        for sentence in [w.no_quota_violations, w.no_extensions, w.no_notices] {
            assert!(html.contains(sentence), "{lang:?}: {sentence}");
            assert!(md.contains(sentence), "{lang:?}: {sentence}");
        }
    }

    let ministry = th.token(Role::Ministry);
    let guangdong = th.token(Role::Province("440000".parse().expect("code")));
    for (lang, token) in [("zh", &ministry), ("en", &guangdong)] {
        let r = th
            .get(
                &format!("/v1/bulletins/2/flags.csv?lang={lang}"),
                Some(token),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/csv; charset=utf-8")
        );
        assert_eq!(
            r.headers
                .get(header::CONTENT_DISPOSITION)
                .and_then(|v| v.to_str().ok()),
            Some("attachment; filename=\"bulletin-2-flags.csv\"")
        );
        let rows = rows(&r.body);
        assert_eq!(
            rows[0].iter().collect::<Vec<_>>(),
            FLAGS_CSV_HEADER,
            "{lang}: the header"
        );
        assert_eq!(rows.len(), 1 + flags, "{lang}: one row per flag");
        assert!(rows.iter().all(|row| row.len() == FLAGS_CSV_HEADER.len()));
        let names: std::collections::BTreeSet<&str> = rows[1..].iter().map(|r| &r[2]).collect();
        let dongcheng = "东城区";
        assert!(names.contains(dongcheng), "{lang}: {names:?}");
        let drop_col = FLAGS_CSV_HEADER
            .iter()
            .position(|h| *h == "drop")
            .expect("drop column");
        assert_eq!(
            rows[1..].iter().filter(|r| &r[drop_col] == "250").count(),
            6,
            "{lang}: the largest drop, once per county"
        );
    }
    // The same readers as the bulletin itself: a token is needed, the number must exist.
    assert_eq!(
        th.get("/v1/bulletins/2/flags.csv", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        th.get("/v1/bulletins/9/flags.csv", Some(&ministry))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        th.get("/v1/bulletins/two/flags.csv", Some(&ministry))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        th.get("/v1/bulletins/2/flags.csv?lang=fr", Some(&ministry))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn the_flags_csv_has_the_dashboards_columns() {
    assert_eq!(
        FLAGS_CSV_HEADER,
        spacesync_hub::dashboard::flags::CSV_HEADER
    );
}

#[cfg(unix)]
#[test]
fn bulletin_show_flags_csv_opens_with_a_bom_and_a_header() {
    const BIN: &str = env!("CARGO_BIN_EXE_spacesync-hub");
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("hub");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("--data")
            .arg(&dir)
            .args(args)
            .output()
            .expect("run spacesync-hub");
        (out.status.success(), out.stdout, out.stderr)
    };
    let ok = |args: &[&str]| {
        let (ok, stdout, stderr) = run(args);
        assert!(ok, "{args:?}: {}", String::from_utf8_lossy(&stderr));
        stdout
    };
    ok(&["init"]);
    ok(&["bulletin", "issue", "--now", "2018-11-20T01:00:00Z"]);
    let doc: Value =
        serde_json::from_slice(&ok(&["bulletin", "show", "1", "--format", "json"])).expect("json");
    let flags = doc["flags"].as_array().map_or(0, Vec::len);
    for lang in ["zh", "en"] {
        let out = ok(&[
            "bulletin",
            "show",
            "1",
            "--format",
            "flags-csv",
            "--lang",
            lang,
        ]);
        let rows = rows(&out);
        assert_eq!(rows[0].iter().collect::<Vec<_>>(), FLAGS_CSV_HEADER);
        assert_eq!(rows.len(), 1 + flags, "{lang}");
    }
    let (ok, _, stderr) = run(&["bulletin", "show", "1", "--format", "flags"]);
    assert!(!ok);
    assert!(
        String::from_utf8_lossy(&stderr).contains("flags-csv"),
        "the refusal names the formats: {}",
        String::from_utf8_lossy(&stderr)
    );
}
