//! The bulletin CSV as Excel and programs get it: from `bulletin show N --format csv` and
//! from `/v1/bulletins/N.csv`, it opens with a UTF-8 byte-order mark (so Excel reads the
//! Chinese names as UTF-8), and it reads back through `csv::Reader` with one row per
//! provincial unit.

mod common;

use axum::http::{StatusCode, header};
use common::{Backend, TestHub};
use spacesync_hub::auth::Role;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The rows of a bulletin CSV after its BOM, header first.
fn rows(body: &[u8]) -> Vec<csv::StringRecord> {
    let rest = body
        .strip_prefix(BOM)
        .unwrap_or_else(|| panic!("no byte-order mark: {:?}", &body[..body.len().min(8)]));
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(rest);
    r.records().map(|x| x.expect("a CSV record")).collect()
}

async fn the_http_csv_opens_with_a_bom_and_reads_back(backend: Backend) {
    let dir = common::store_dir(backend);
    let t = TestHub::open(dir.path());
    let doc =
        spacesync_hub::bulletin::issue(&t.hub, None, &t.notices.log()).expect("issue a bulletin");
    let n = doc["number"].as_u64().expect("number");
    let reader = t.token(Role::Ministry);
    for lang in ["zh", "en"] {
        let r = t
            .get(&format!("/v1/bulletins/{n}.csv?lang={lang}"), Some(&reader))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/csv; charset=utf-8")
        );
        assert!(r.body.starts_with(BOM), "{lang}: {:?}", &r.body[..8]);
        let rows = rows(&r.body);
        assert_eq!(&rows[0][0], "rank", "{lang}: the header row");
        assert_eq!(rows.len(), 1 + 32, "{lang}: one row per provincial unit");
        assert!(rows.iter().all(|row| row.len() == rows[0].len()));
        let names: Vec<&str> = rows[1..].iter().map(|row| &row[2]).collect();
        let beijing = if lang == "zh" { "北京市" } else { "Beijing" };
        assert!(names.contains(&beijing), "{lang}: {names:?}");
    }
}

#[cfg(unix)]
#[test]
fn bulletin_show_csv_opens_with_a_bom() {
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
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(&["init"]);
    run(&["bulletin", "issue", "--now", "2018-11-20T01:00:00Z"]);
    for lang in ["zh", "en"] {
        let out = run(&["bulletin", "show", "1", "--format", "csv", "--lang", lang]);
        assert!(
            out.starts_with(BOM),
            "{lang}: {:?}",
            &out[..out.len().min(8)]
        );
        let rows = rows(&out);
        assert_eq!(&rows[0][0], "rank");
        assert_eq!(rows.len(), 1 + 32, "{lang}");
    }
}

backends!(async the_http_csv_opens_with_a_bom_and_reads_back);
