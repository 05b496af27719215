//! The ministry dashboard seen through a real browser: a hub runs in-process on port 0
//! with a few signed space counts from Guangdong and Beijing and one issued bulletin;
//! headless Chromium (scripts disabled, driven over the DevTools protocol — see
//! `spacesync_tests::browser` for why) logs in through the form, follows the drill-down
//! links it finds in the DOM from the nation to a school, and every figure it reads is
//! checked against the JSON API with the same token; the data flags are counted by unit
//! and kind with a link to every flag as CSV (checked for its byte-order mark and rows). A
//! province token must see only its own province. Screenshots of each step go to
//! `<target>/screenshots/`.
//!
//! Chromium missing is a failure with the install command, not a skip.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use reqwest::StatusCode;
use serde_json::{Value, json};
use spacesync_hub::auth::{self, Role};
use spacesync_hub::http::{self as hubhttp, AppState};
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::notices::NoticeBook;
use spacesync_hub::render::{Lang, count};
use spacesync_hub::store::SledStore;
use spacesync_shared::clock::FixedClock;
use spacesync_shared::keys::public_key_line;
use spacesync_shared::wire::{IngestBatch, LogAlarmReport};
use spacesync_shared::{Campaign, Digest, Entry, Record, RegionCode, SourceId};
use spacesync_tests::browser::{Browser, Loaded, require_chromium};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A province's platform: signs hash-chained entries and hands them to the hub.
struct Source {
    id: SourceId,
    scope: RegionCode,
    key: SigningKey,
    seq: u64,
    prev: Digest,
}

impl Source {
    fn new(id: &str, scope: &str, n: u8) -> Source {
        Source {
            id: SourceId::parse(id).unwrap(),
            scope: RegionCode::parse(scope).unwrap(),
            key: SigningKey::from_bytes(&[n; 32]),
            seq: 0,
            prev: Digest::ZERO,
        }
    }

    fn send(&mut self, hub: &Hub, record: Value) {
        let record = Record::from_value(&record).unwrap_or_else(|p| panic!("{p:?}"));
        self.seq += 1;
        let env = Entry {
            source: self.id.clone(),
            seq: self.seq,
            prev: self.prev,
            recorded_at: hub.clock.now(),
            campaign: "2018".into(),
            record,
        }
        .sign(&self.key);
        self.prev = env.payload_hash();
        let out = hub
            .ingest(IngestBatch {
                source: self.id.clone(),
                entries: vec![env],
            })
            .expect("ingest");
        assert_eq!(out.status, 200, "{:?}", out.response.refused);
    }
}

/// `<target>/screenshots`, from the test binary's place (`<target>/<profile>/deps/<test>`).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create screenshots dir");
    dir
}

/// The hub over HTTP, for the JSON the pages are checked against.
struct Api {
    rt: tokio::runtime::Runtime,
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        self.rt.block_on(async {
            let mut req = self.client.get(format!("{}{path}", self.base));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let r = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            let (status, h) = (r.status(), r.headers().clone());
            (status, h, r.text().await.unwrap_or_default())
        })
    }

    fn json(&self, path: &str, token: &str) -> Value {
        let (status, _, body) = self.get(path, &[("authorization", &format!("Bearer {token}"))]);
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("—".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn num(lang: Lang, v: &Value) -> String {
    v.as_i64().map_or("—".to_string(), |n| count(lang, n))
}

fn total(spaces: &Value) -> Option<i64> {
    let m = spaces.as_object()?;
    (!m.is_empty()).then(|| m.values().filter_map(Value::as_i64).sum())
}

fn field<'a>(fields: &'a BTreeMap<String, String>, key: &str, page: &str) -> &'a str {
    fields
        .get(key)
        .unwrap_or_else(|| panic!("{page}: no field {key} on the page; fields: {fields:?}"))
}

/// A row of a regions/schools table against its JSON figures.
fn check_row(lang: Lang, fields: &BTreeMap<String, String>, row: &str, j: &Value, page: &str) {
    let spaces = total(&j["spaces"]);
    let expect = [
        ("spaces", spaces.map_or("—".into(), |n| count(lang, n))),
        (
            "new_spaces",
            if spaces.is_some() {
                num(lang, &j["new_spaces"])
            } else {
                "—".into()
            },
        ),
        ("cov_teachers", pct(&j["coverage"]["teachers"])),
        ("cov_students", pct(&j["coverage"]["students"])),
        ("cov_schools", pct(&j["coverage"]["schools"])),
    ];
    for (f, want) in expect {
        assert_eq!(
            field(fields, &format!("{row}/{f}"), page),
            want,
            "{page}: {row}/{f} differs from the API"
        );
    }
}

/// The summary block and the per-kind table against figures JSON.
fn check_summary(lang: Lang, fields: &BTreeMap<String, String>, j: &Value, page: &str) {
    let want = [
        (
            "spaces",
            total(&j["spaces"]).map_or("—".into(), |n| count(lang, n)),
        ),
        ("new_spaces", num(lang, &j["new_spaces"])),
        ("cov_teachers", pct(&j["coverage"]["teachers"])),
        ("cov_students", pct(&j["coverage"]["students"])),
        ("cov_schools", pct(&j["coverage"]["schools"])),
        ("pop_teachers", num(lang, &j["population"]["teachers"])),
        ("pop_students", num(lang, &j["population"]["students"])),
        ("pop_schools", num(lang, &j["population"]["schools"])),
    ];
    for (f, w) in want {
        assert_eq!(
            field(fields, &format!("summary/{f}"), page),
            w,
            "{page}: summary {f} differs from the API"
        );
    }
    let kinds = j["spaces"].as_object().cloned().unwrap_or_default();
    for (k, v) in &kinds {
        let row = format!("kind:{k}");
        assert_eq!(
            field(fields, &format!("{row}/spaces"), page),
            num(lang, v),
            "{page}: {row}"
        );
        assert_eq!(
            field(fields, &format!("{row}/real_name"), page),
            num(lang, &j["real_name"][k]),
            "{page}: {row} real-name"
        );
        assert_eq!(
            field(fields, &format!("{row}/baseline"), page),
            num(lang, &j["baseline"][k]),
            "{page}: {row} baseline"
        );
        assert_eq!(
            field(fields, &format!("{row}/new"), page),
            num(lang, &j["new_by_kind"][k]),
            "{page}: {row} new"
        );
    }
    let shown: Vec<&String> = fields
        .keys()
        .filter(|k| k.starts_with("kind:") && k.ends_with("/spaces"))
        .collect();
    let baseline_only = j["baseline"]
        .as_object()
        .map_or(0, |b| b.keys().filter(|k| !kinds.contains_key(*k)).count());
    assert_eq!(
        shown.len(),
        kinds.len() + baseline_only,
        "{page}: kind rows {shown:?}"
    );
}

/// Every `prefix:<code>` row on the page is in `list` and vice versa, with equal figures.
fn check_rows(
    lang: Lang,
    fields: &BTreeMap<String, String>,
    prefix: &str,
    list: &Value,
    page: &str,
) {
    let list = list.as_array().cloned().unwrap_or_default();
    let shown: std::collections::BTreeSet<String> = fields
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{prefix}:")))
        .filter_map(|k| k.split('/').next())
        .map(str::to_string)
        .collect();
    let want: std::collections::BTreeSet<String> = list
        .iter()
        .map(|c| c["code"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(shown, want, "{page}: {prefix} rows differ from the API");
    for c in &list {
        check_row(
            lang,
            fields,
            &format!("{prefix}:{}", c["code"].as_str().unwrap()),
            c,
            page,
        );
    }
}

fn path_of(l: &Loaded) -> String {
    let after_scheme = l.url.split_once("://").map_or(l.url.as_str(), |(_, r)| r);
    after_scheme
        .find('/')
        .map_or("/".to_string(), |i| after_scheme[i..].to_string())
}

/// Follows the link `selector` finds in the current page; expects 200 at `path`.
fn follow(b: &mut Browser, selector: &str, path: &str) -> Loaded {
    let href = b
        .href(selector)
        .unwrap_or_else(|| panic!("no link {selector} on the page:\n{}", b.text()));
    let l = b.goto(&href);
    assert_eq!(l.status, 200, "{href}: {}", b.text());
    assert_eq!(path_of(&l), path, "{selector} led to {}", l.url);
    l
}

fn log_in(b: &mut Browser, base: &str, token: &str) -> Loaded {
    let l = b.goto(&format!("{base}/"));
    assert_eq!(l.status, 200);
    assert_eq!(
        path_of(&l),
        "/login?next=%2F",
        "an anonymous / goes to the login form"
    );
    let tok = serde_json::to_string(token).unwrap();
    let l = b.act(&format!(
        "document.querySelector('#login input[name=token]').value = {tok}; \
         document.querySelector('#login button[type=submit]').click(); true"
    ));
    assert_eq!(l.status, 200, "after login: {}", b.text());
    assert_eq!(path_of(&l), "/", "login returns to the page asked for");
    l
}

#[test]
fn dashboard_drill_down_in_chromium() {
    require_chromium();
    let shots = screenshot_dir();

    // A hub on the campaign clock: 2018-11-20 10:00 CST.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let now = at("2018-11-20T10:00:00+08:00");
    let hub = Arc::new(
        Hub::open(
            store.clone(),
            SigningKey::from_bytes(&[7; 32]),
            "spacesync-hub/test/dashboard".into(),
            Campaign::builtin_2018(),
            Arc::new(FixedClock::new(now)),
            Limits::default(),
        )
        .unwrap(),
    );
    let mut gd = Source::new("src-440000", "440000", 1);
    let mut bj = Source::new("src-110000", "110000", 2);
    for s in [&gd, &bj] {
        hub.add_source(
            s.id.clone(),
            s.scope,
            &public_key_line(&s.key.verifying_key()),
        )
        .unwrap();
    }
    for r in [
        json!({"kind":"space_count","region":"440106","school":"4401060001","as_of":"2018-10-01",
               "spaces":{"teacher":100,"student":2000,"school":1},
               "population":{"teachers":120,"students":3000,"schools":1}}),
        json!({"kind":"space_count","region":"440106","school":"4401060001","as_of":"2018-11-15",
               "spaces":{"teacher":115,"student":12345,"school":1,"parent":800},
               "real_name":{"teacher":110,"student":9000},
               "population":{"teachers":120,"students":14000,"schools":1}}),
        json!({"kind":"space_count","region":"440106","school":"4401060002","as_of":"2018-11-15",
               "spaces":{"teacher":40,"student":900,"school":1},
               "population":{"teachers":50,"students":1000,"schools":1}}),
        json!({"kind":"space_count","region":"440104","school":"4401040001","as_of":"2018-11-15",
               "spaces":{"teacher":60,"student":1500},
               "population":{"teachers":60,"students":2000,"schools":1}}),
        // A correction downwards: the data flag the overview counts.
        json!({"kind":"space_count","region":"440104","school":"4401040001","as_of":"2018-11-18",
               "spaces":{"teacher":55,"student":1500},
               "population":{"teachers":60,"students":2000,"schools":1}}),
        json!({"kind":"space_count","region":"440305","as_of":"2018-11-15",
               "spaces":{"teacher":3000,"student":45000,"school":20},
               "population":{"teachers":3500,"students":60000,"schools":25}}),
    ] {
        gd.send(&hub, r);
    }
    for r in [
        json!({"kind":"space_count","region":"110105","school":"1101050001","as_of":"2018-10-01",
               "spaces":{"teacher":80,"student":1000}}),
        json!({"kind":"space_count","region":"110105","school":"1101050001","as_of":"2018-11-18",
               "spaces":{"teacher":90,"student":1600,"school":1},
               "population":{"teachers":100,"students":2000,"schools":1}}),
    ] {
        bj.send(&hub, r);
    }
    spacesync_hub::bulletin::issue(&hub, None, &[]).expect("issue bulletin");
    // Guangdong's agent reported a log alarm (issue 16): its row flags it, the agent's
    // text (markup included) on hover.
    let detected = "fork (the hub's log does not extend the one it showed before <b>x</b>)";
    spacesync_hub::witness::report_alarm(
        &hub,
        &gd.id,
        &LogAlarmReport {
            code: "fork".into(),
            detected: detected.into(),
            at: now,
            cleared: false,
        },
        now,
    )
    .expect("report the log alarm");
    let ministry = auth::create_token(store.as_ref(), Role::Ministry, None, now).unwrap();
    let beijing = auth::create_token(
        store.as_ref(),
        "province:110000".parse().unwrap(),
        None,
        now,
    )
    .unwrap();

    // Serve on port 0 until the test ends.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(hubhttp::serve(
        listener,
        AppState::new(
            hub.clone(),
            Arc::new(NoticeBook::load(hub.store.as_ref()).unwrap()),
            1e9,
            1e9,
        ),
        async {
            let _ = stopped.await;
        },
    ));
    let api = Api {
        rt,
        base: base.clone(),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };

    // Without a browser: anonymous pages redirect to the login form; bearer tokens work.
    let (status, h, _) = api.get("/r/440000?lang=en", &[]);
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/login?next=%2Fr%2F440000%3Flang%3Den");
    let bearer = |t: &str| format!("Bearer {t}");
    let (status, _, body) = api.get("/r/440000", &[("authorization", &bearer(&beijing))]);
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, _) = api.get("/", &[("authorization", "Bearer sst_wrong")]);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, h, body) = api.get("/r/440106", &[("authorization", &bearer(&ministry))]);
    assert_eq!(status, StatusCode::OK);
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(!body.contains("<script"), "pages carry no script");

    let progress = api.json("/v1/progress", &ministry);
    let bulletin = api.json("/v1/bulletins/1.json", &ministry);
    let mut b = Browser::launch();
    let mut step = 0;
    let mut shot = |b: &mut Browser, name: &str| {
        step += 1;
        b.screenshot(&shots.join(format!("dashboard-{step:02}-{name}.png")))
    };

    // Log in through the form, as a ministry reader.
    let l = b.goto(&format!("{base}/"));
    assert_eq!(path_of(&l), "/login?next=%2F");
    shot(&mut b, "login");
    log_in(&mut b, &base, &ministry);
    let cookies = b.cookies();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let c = &cookies[0];
    assert_eq!(c["name"], "spacesync_session");
    assert_eq!(c["httpOnly"], true);
    assert_eq!(c["sameSite"], "Strict");
    assert!(
        !c["value"]
            .as_str()
            .unwrap()
            .contains(ministry.trim_start_matches("sst_"))
    );
    assert_eq!(
        b.eval("document.cookie"),
        "",
        "the session cookie is HttpOnly"
    );
    assert_eq!(b.eval("document.scripts.length"), 0);

    // The nation: 32 units, national figures, the latest bulletin.
    let page = "/";
    let f = b.fields();
    let units = progress["provinces"].as_array().unwrap();
    assert_eq!(units.len(), 32);
    check_rows(Lang::Zh, &f, "unit", &progress["provinces"], page);
    assert_eq!(
        f["summary/new_spaces"],
        num(Lang::Zh, &progress["nation"]["new_spaces"])
    );
    assert_eq!(
        f["summary/spaces"],
        count(Lang::Zh, total(&progress["nation"]["spaces"]).unwrap())
    );
    assert_eq!(
        f["summary/target"],
        num(Lang::Zh, &progress["target"]["new_spaces"])
    );
    assert_eq!(
        f["bulletin/new_spaces"],
        num(Lang::Zh, &bulletin["nation"]["new_spaces"])
    );
    assert_eq!(
        f["bulletin/target"],
        num(Lang::Zh, &bulletin["nation"]["target"]["new_spaces"])
    );
    assert_eq!(
        f["bulletin/cov_teachers"],
        pct(&bulletin["nation"]["coverage"]["teachers"])
    );
    assert!(
        b.href("#bulletin a[href='/v1/bulletins/1.html']").is_some(),
        "the API link to the bulletin"
    );
    let text = b.text();
    assert!(text.contains("全国工作进度") && text.contains("广东省") && text.contains("北京市"));
    // 12,345 students in one school read as 万 in Chinese.
    assert!(
        f["unit:440000/spaces"].ends_with('万'),
        "{}",
        f["unit:440000/spaces"]
    );
    // The data flags: counted by unit and kind, the largest drops, every flag as CSV.
    assert_eq!(f["flags:440000/decrease"], "1");
    assert_eq!(f["flags:440000/total"], "1");
    assert_eq!(f["drop:1/drop"], "5");
    let csv_href = b.href("#flags-csv").expect("a link to the flags CSV");
    assert!(csv_href.ends_with("/flags.csv"), "{csv_href}");
    let csv = api.rt.block_on(async {
        let r = api
            .client
            .get(&csv_href)
            .header("authorization", bearer(&ministry))
            .send()
            .await
            .expect("GET /flags.csv");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
        r.bytes().await.expect("CSV body")
    });
    assert!(csv.starts_with("\u{feff}".as_bytes()), "a UTF-8 BOM");
    let csv = String::from_utf8_lossy(&csv);
    assert_eq!(csv.lines().count(), 2, "a header and the one flag: {csv}");
    assert!(
        csv.contains("decrease,440104,越秀区,4401040001,teacher"),
        "{csv}"
    );
    shot(&mut b, "nation");

    // Drill down: nation → province → city → county → school, by the page's own links.
    let open_region = |b: &mut Browser, sel: &str, code: &str| {
        follow(b, sel, &format!("/r/{code}"));
        let j = api.json(&format!("/v1/regions/{code}"), &ministry);
        let f = b.fields();
        let page = format!("/r/{code}");
        check_summary(Lang::Zh, &f, &j, &page);
        check_rows(Lang::Zh, &f, "child", &j["children"], &page);
        check_rows(Lang::Zh, &f, "school", &j["schools"], &page);
        assert!(
            b.text().contains(j["name"].as_str().unwrap()),
            "{page} names the region"
        );
        j
    };
    open_region(&mut b, "tr[data-row='unit:440000'] a.drill", "440000");
    shot(&mut b, "province-440000");
    open_region(&mut b, "tr[data-row='child:440100'] a.drill", "440100");
    shot(&mut b, "city-440100");
    let county = open_region(&mut b, "tr[data-row='child:440106'] a.drill", "440106");
    assert_eq!(county["schools"].as_array().unwrap().len(), 2);
    shot(&mut b, "county-440106");
    follow(
        &mut b,
        "tr[data-row='school:4401060001'] a.drill",
        "/r/440106/s/4401060001",
    );
    let school = county["schools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["code"] == "4401060001")
        .unwrap()
        .clone();
    let f = b.fields();
    check_summary(Lang::Zh, &f, &school, "/r/440106/s/4401060001");
    assert_eq!(f["kind:student/spaces"], "1.23万");
    shot(&mut b, "school-4401060001");

    // The bulletin, notices and sources, reached by links.
    follow(&mut b, "nav.crumbs a[href='/']", "/");
    follow(&mut b, "#bulletin-link", "/bulletins/1");
    assert!(b.text().contains("进度通报（第1期）"), "{}", b.text());
    shot(&mut b, "bulletin-1");
    b.goto(&format!("{base}/"));
    follow(&mut b, "header a[href='/notices']", "/notices");
    assert!(b.text().contains("通知记录"));
    shot(&mut b, "notices");
    follow(&mut b, "header a[href='/sources']", "/sources");
    let f = b.fields();
    let sources = api.json("/v1/sources", &ministry);
    for s in sources["sources"].as_array().unwrap() {
        let row = format!("source:{}", s["source"].as_str().unwrap());
        assert_eq!(
            f[&format!("{row}/head_seq")],
            s["head_seq"].to_string(),
            "{row}"
        );
        assert_ne!(f[&format!("{row}/last_seen")], "—", "{row}");
    }
    assert_eq!(f["source:src-440000/entries"], "6");
    assert_eq!(f["source:src-440000/log_alarm"], "日志审计告警：fork");
    assert!(!f.contains_key("source:src-110000/log_alarm"), "{f:?}");
    let title = b.eval(
        "document.querySelector(\"tr[data-row='source:src-440000'] [data-field='log_alarm']\").title",
    );
    assert_eq!(title, detected);
    let red = b.eval(
        "getComputedStyle(document.querySelector(\"tr[data-row='source:src-440000'] [data-field='log_alarm']\")).color",
    );
    assert_eq!(red, "rgb(187, 0, 0)");
    shot(&mut b, "sources");

    // English keeps itself in links and formats numbers the English way.
    b.goto(&format!("{base}/"));
    let l = follow(&mut b, "#lang-switch", "/?lang=en");
    assert_eq!(l.status, 200);
    let f = b.fields();
    check_rows(Lang::En, &f, "unit", &progress["provinces"], "/?lang=en");
    let href = b.href("tr[data-row='unit:440000'] a.drill").unwrap();
    assert!(href.ends_with("/r/440000?lang=en"), "{href}");
    assert!(b.text().contains("Guangdong"));
    shot(&mut b, "nation-en");

    // Log out: the session is gone.
    let l = b.act("document.querySelector('#logout button').click(); true");
    assert_eq!(path_of(&l), "/login");
    assert!(b.cookies().is_empty(), "logout clears the cookie");
    let (status, _, _) = api.get(
        "/",
        &[(
            "cookie",
            &format!("spacesync_session={}", c["value"].as_str().unwrap()),
        )],
    );
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the old session id no longer works"
    );

    // A Beijing reader sees Beijing only, and gets 403 for Guangdong.
    log_in(&mut b, &base, &beijing);
    let f = b.fields();
    let bj_progress = api.json("/v1/progress", &beijing);
    assert_eq!(bj_progress["provinces"].as_array().unwrap().len(), 1);
    check_rows(
        Lang::Zh,
        &f,
        "unit",
        &bj_progress["provinces"],
        "/ as Beijing",
    );
    let j = api.json("/v1/regions/110000", &beijing);
    check_rows(Lang::Zh, &f, "child", &j["children"], "/ as Beijing");
    let own = bulletin["provinces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "110000")
        .unwrap();
    assert_eq!(f["bulletin-own/rank"], num(Lang::Zh, &own["rank"]));
    assert_eq!(
        f["bulletin-own/new_spaces"],
        num(Lang::Zh, &own["new_spaces"])
    );
    assert_eq!(f["bulletin-own/pace"], pct(&own["pace"]["ratio"]));
    let text = b.text();
    assert!(text.contains("北京市"));
    assert!(
        !text.contains("广东省") && !text.contains("440000"),
        "{text}"
    );
    assert!(
        text.contains("无数据标记"),
        "an empty section says so: {text}"
    );
    shot(&mut b, "beijing-home");
    follow(&mut b, "tr[data-row='child:110100'] a.drill", "/r/110100");
    let l = b.goto(&format!("{base}/r/440000"));
    assert_eq!(l.status, 403, "{}", b.text());
    assert!(b.text().contains("无权"), "{}", b.text());
    shot(&mut b, "beijing-forbidden-440000");
    let l = b.goto(&format!("{base}/r/440106/s/4401060001"));
    assert_eq!(l.status, 403);

    drop(b);
    let _ = stop.send(());
    api.rt
        .block_on(server)
        .expect("server task")
        .expect("server");
    eprintln!("screenshots in {}", shots.display());
}
