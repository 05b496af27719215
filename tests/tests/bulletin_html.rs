//! HTML bulletins render in headless Chromium, and the Chinese and English versions carry
//! the same figures; the trajectory has a point per bulletin, and every empty section
//! says so in a sentence. Screenshots go to target/screenshots/.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use spacesync_hub::assessment::Bulletin;
use spacesync_hub::bulletin;
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::render::{self, Lang};
use spacesync_hub::store::SledStore;
use spacesync_shared::clock::{Clock, FixedClock};
use spacesync_shared::keys::public_key_line;
use spacesync_shared::wire::IngestBatch;
use spacesync_shared::{Campaign, Digest, Entry, Record, SourceId};
use spacesync_tests::browser::Browser;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// A hub with two provinces' data and two bulletins; returns the second.
fn a_bulletin(dir: &std::path::Path) -> Value {
    let store = Arc::new(SledStore::open(dir).expect("store"));
    let clock = Arc::new(FixedClock::new(at("2018-11-20T09:00:00+08:00")));
    let hub = Hub::open(
        store.clone(),
        SigningKey::from_bytes(&[9; 32]),
        "spacesync-hub/test".into(),
        Campaign::builtin_2018(),
        clock.clone(),
        Limits::default(),
    )
    .expect("hub");
    for (n, (id, scope, county)) in [
        ("gd-rrt", "440000", "440106"),
        ("bj-rrt", "110000", "110105"),
    ]
    .into_iter()
    .enumerate()
    {
        let key = SigningKey::from_bytes(&[n as u8 + 1; 32]);
        let sid = SourceId::parse(id).expect("id");
        let scope_code = spacesync_shared::RegionCode::parse(scope).expect("scope");
        // Registered at the campaign's start (an `agents add` then), issued at the clock's now.
        let issue_at = clock.now();
        clock.set(at("2018-10-01T00:00:00Z"));
        hub.add_source(
            sid.clone(),
            scope_code,
            &public_key_line(&key.verifying_key()),
        )
        .expect("add");
        clock.set(issue_at);
        let records = [
            json!({"kind":"space_count","region":county,"as_of":"2018-10-01","spaces":{"teacher":1000 + n * 100,"student":20000},
                   "population":{"teachers":1500,"students":40000}}),
            json!({"kind":"space_count","region":county,"as_of":"2018-11-18","spaces":{"teacher":1400 + n * 100,"student":31000 + n * 5000},
                   "real_name":{"teacher":1300,"student":25000},"population":{"teachers":1500,"students":40000}}),
            json!({"kind":"milestone","milestone":"implementation_plan","region":scope,"submitted_on":"2018-11-12",
                   "document":{"title":"实施方案","sha256":"c".repeat(64)}}),
        ];
        let mut prev = Digest::ZERO;
        let mut entries = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let entry = Entry {
                source: sid.clone(),
                seq: i as u64 + 1,
                prev,
                recorded_at: at("2018-11-19T09:00:00+08:00"),
                campaign: "2018".into(),
                record: Record::from_value(r).expect("record"),
            };
            let env = entry.sign(&key);
            prev = env.payload_hash();
            entries.push(env);
        }
        let out = hub
            .ingest(IngestBatch {
                source: sid,
                entries,
            })
            .expect("ingest");
        assert_eq!(out.status, 200, "{:?}", out.response.refused);
    }
    // Two bulletins a day apart, so the second has one earlier bulletin in its history.
    bulletin::issue(&hub, None, &[]).expect("issue");
    clock.set(at("2018-11-21T09:00:00+08:00"));
    bulletin::issue(&hub, None, &[]).expect("issue")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_bulletins_render_in_chromium_with_the_same_figures_in_both_languages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = a_bulletin(dir.path());
    let typed = Bulletin::from_document(&b).expect("the bulletin reads back");
    let zh = render::html(&typed, Lang::Zh);
    let en = render::html(&typed, Lang::En);
    let app = Router::new()
        .route("/zh", get(move || async move { Html(zh) }))
        .route("/en", get(move || async move { Html(en) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let rows = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch();
        let mut out = Vec::new();
        for lang in ["zh", "en"] {
            let loaded = browser.goto(&format!("http://{addr}/{lang}"));
            assert_eq!(loaded.status, 200);
            // Parsed as HTML without errors: the document is complete and well formed.
            assert_eq!(browser.eval("document.readyState"), json!("complete"));
            assert_eq!(browser.eval("document.querySelectorAll('parsererror').length"), json!(0));
            assert_eq!(browser.eval("document.querySelectorAll('svg').length"), json!(1), "trajectory chart");
            let rows = browser.eval(
                "Array.from(document.querySelectorAll('tr[data-code]')).map(r => [r.dataset.code, r.dataset.new, r.dataset.pace, \
                 Array.from(r.querySelectorAll('td')).slice(5).map(td => td.className)])",
            );
            let title = browser.eval("document.title");
            // The trajectory: one point per bulletin (the first from the history).
            let points = browser.eval(
                "Array.from(document.querySelectorAll('svg circle.point')).map(c => c.dataset.number)",
            );
            assert_eq!(points, json!(["1", "2"]), "{lang}: a point per bulletin");
            let history = browser.eval(
                "Array.from(document.querySelectorAll('#history tr[data-number]')).map(r => r.dataset.number)",
            );
            assert_eq!(history, json!(["1", "2"]), "{lang}: the history table");
            // Every section has something under its heading: its list, or a sentence.
            assert_eq!(
                browser.eval("Array.from(document.querySelectorAll('section')).filter(s => s.children.length < 2 || s.innerText.trim() === s.querySelector('h2').innerText.trim()).length"),
                json!(0),
                "{lang}: a heading with nothing under it"
            );
            let empty = browser.eval(
                "Object.fromEntries(Array.from(document.querySelectorAll('section > p.none')).map(p => [p.parentElement.id, p.innerText]))",
            );
            let shot = browser.screenshot(&screenshots().join(format!("bulletin-{lang}.png")));
            assert!(shot.exists());
            out.push((rows, title, empty));
        }
        out
    })
    .await
    .expect("browser task");
    let (zh_rows, zh_title, zh_empty) = &rows[0];
    let (en_rows, en_title, en_empty) = &rows[1];
    // The empty sections of this bulletin say so in words.
    for (id, zh, en) in [
        (
            "silent-sources",
            "长期未报送的数据源：无。",
            "No silent sources.",
        ),
        ("flags", "数据标记：无。", "No flagged data."),
        (
            "quota-violations",
            "推荐超额：无。",
            "No nominations over quota.",
        ),
        ("extensions", "延期：无。", "No deadline extensions."),
        ("notices", "通知记录：无。", "No notices."),
    ] {
        assert_eq!(zh_empty[id], json!(zh), "zh {id}: {zh_empty}");
        assert_eq!(en_empty[id], json!(en), "en {id}: {en_empty}");
    }
    assert_eq!(
        zh_rows.as_array().map(Vec::len),
        Some(32),
        "every unit has a row"
    );
    assert_eq!(
        zh_rows, en_rows,
        "the same figures and statuses in both languages"
    );
    assert!(
        zh_title
            .as_str()
            .unwrap_or("")
            .contains("进度通报（第2期）"),
        "{zh_title}"
    );
    assert!(
        en_title
            .as_str()
            .unwrap_or("")
            .contains("Progress Bulletin No. 2"),
        "{en_title}"
    );
    // The figures shown are the bulletin's.
    let gd = zh_rows
        .as_array()
        .and_then(|r| r.iter().find(|row| row[0] == "440000"))
        .cloned()
        .expect("Guangdong row");
    let want = b["provinces"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["code"] == "440000"))
        .map(|p| p["new_spaces"].to_string())
        .expect("Guangdong in bulletin");
    assert_eq!(gd[1].as_str(), Some(want.as_str()));
}
