//! The read-only SQL views for analysts (schema migration 3, `store/pg/0003_analyst_views.sql`)
//! after real ingest on a real PostgreSQL: queried through a plain SQL connection, as a
//! role granted SELECT on the views only (as the operator's guide says), and compared with
//! the hub's own figures: the log, `/v1/regions/{code}` per school, the bulletin's
//! milestone statuses.

mod common;

use std::collections::BTreeMap;

use chrono::Duration;
use common::{Agent, TestHub, activity, get_req, milestone, send, space_count, store_dir, t0};
use serde_json::{Value, json};
use spacesync_hub::bulletin;
use spacesync_shared::admin::Extend;
use tokio_postgres::NoTls;

/// What the operator's guide grants analysts (`spacesync_log`, with the signed bytes, is
/// for administrators).
const VIEWS: &[&str] = &[
    "spacesync_entries",
    "spacesync_unit_figures",
    "spacesync_bulletins",
    "spacesync_milestone_statuses",
];

/// The contact form's personal data, which no analyst view may show.
const PHONE: &str = "020-87654321";
const EMAIL: &str = "wang.contact@platform.example.gd.cn";

fn contact_form() -> Value {
    let mut m = milestone("contact_form", "440000", "2018-10-18");
    m["details"] = json!({ "contacts": [
        { "name": "王某某", "role": "省电教馆 项目联系人", "phone": PHONE, "email": EMAIL } ] });
    m
}

fn ingest(th: &TestHub, agent: &mut Agent, records: &[Value]) {
    let out = th.hub.ingest(agent.batch(records)).expect("ingest");
    assert!(out.response.refused.is_empty(), "{:?}", out.response);
}

/// Connects as `role` (trust authentication on the private server) to the test database.
async fn connect(url: &str, role: &str) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = url.parse().expect("url");
    config.user(role);
    let (client, conn) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// A map of kind → count from a figure set's JSON object (`spaces`, `baseline`, …).
fn counts(v: &Value) -> BTreeMap<String, i64> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, n)| n.as_i64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn analyst_views_match_the_hubs_own_figures() {
    let dir = store_dir(common::Backend::Postgres);
    let url = std::fs::read_to_string(dir.path().join("store-url")).expect("store-url");
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    let mut gz = Agent::new("gz-a", 2, "440000");
    th.register(&gd);
    th.register(&gz);
    let school = |n: u32| format!("44010600{n:02}");
    let spaces = |t: u64, s: u64| json!({ "teacher": t, "student": s });
    // Before, on and after the baseline (2018-10-01); a school reported by two sources;
    // one snapshot later withdrawn; one arriving after a later-dated one; real names.
    ingest(
        &th,
        &mut gd,
        &[
            space_count("440106", &school(1), "2018-09-20", spaces(4, 40)),
            space_count("440106", &school(1), "2018-10-01", spaces(5, 50)),
            space_count("440106", &school(2), "2018-09-28", spaces(1, 0)),
            space_count("440106", "", "2018-10-01", spaces(100, 1000)),
        ],
    );
    let mut late = space_count("440106", &school(1), "2018-11-10", spaces(20, 300));
    late["real_name"] = json!({ "teacher": 15 });
    ingest(
        &th,
        &mut gd,
        &[
            late,
            space_count("440106", &school(2), "2018-11-12", spaces(9, 90)),
            milestone("implementation_plan", "440000", "2018-11-10"),
            contact_form(),
        ],
    );
    // Earlier-dated, arriving last: it does not win over 2018-11-10.
    ingest(
        &th,
        &mut gz,
        &[
            space_count("440106", &school(1), "2018-11-01", spaces(12, 120)),
            space_count("440106", &school(3), "2018-11-15", spaces(7, 70)),
            activity("440106", "2018-11-05", "应用培训"),
        ],
    );
    let withdrawn_seq = gz.next;
    ingest(
        &th,
        &mut gz,
        &[space_count(
            "440106",
            &school(3),
            "2018-11-16",
            spaces(70, 700),
        )],
    );
    ingest(&th, &mut gz, &[common::withdrawal(withdrawn_seq)]);
    spacesync_hub::admin::extend(
        &th.hub,
        &Extend {
            region: "440000".into(),
            milestone: "implementation_plan".into(),
            until: chrono::NaiveDate::from_ymd_opt(2018, 11, 22).expect("date"),
            reason: "flood".into(),
        },
    )
    .expect("extend");
    th.clock.set(t0() + Duration::hours(5));
    let doc = bulletin::issue(&th.hub, None, &[]).expect("bulletin");

    // The hub role (the store's owner) grants a read-only role the views alone, as the
    // operator's guide says.
    let owner = connect(&url, "spacesync").await;
    let analyst = format!("analyst_{}", std::process::id());
    owner
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {analyst}; CREATE ROLE {analyst} LOGIN; \
             GRANT USAGE ON SCHEMA public TO {analyst}; \
             GRANT SELECT ON {} TO {analyst};",
            VIEWS.join(", ")
        ))
        .await
        .expect("create the analyst role");
    let sql = connect(&url, &analyst).await;
    let denied = sql.query("SELECT count(*) FROM kv", &[]).await;
    assert!(denied.is_err(), "the analyst role cannot read kv itself");
    let denied = sql
        .execute("DELETE FROM spacesync_entries WHERE log_index = 0", &[])
        .await;
    assert!(denied.is_err(), "the views are read-only");

    // Entries: one row per leaf, in log order, the records' fields as columns.
    let rows = sql
        .query(
            "SELECT log_index, source, seq, kind, region, school, as_of, withdrawn_by, hub_entry, \
             received_at, spaces FROM spacesync_entries ORDER BY log_index",
            &[],
        )
        .await
        .expect("entries");
    let size = th.hub.snapshot().log_size;
    assert_eq!(rows.len() as u64, size);
    let indexes: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(indexes, (0..size as i64).collect::<Vec<_>>());
    for r in &rows {
        let index: i64 = r.get(0);
        let rec = spacesync_hub::log::read(th.hub.store.as_ref(), index as u64)
            .expect("read")
            .expect("leaf");
        let source: Option<String> = r.get(1);
        assert_eq!(source, rec.source.as_ref().map(|s| s.to_string()));
        assert_eq!(r.get::<_, i64>(2) as u64, rec.seq);
        assert_eq!(r.get::<_, bool>(8), rec.source.is_none());
        let at: std::time::SystemTime = r.get(9);
        let at: chrono::DateTime<chrono::Utc> = at.into();
        assert_eq!(at.timestamp_micros(), rec.received_at.timestamp_micros());
    }
    let kinds: Vec<(Option<String>, i64, Option<String>)> = rows
        .iter()
        .filter(|r| r.get::<_, Option<String>>(1).as_deref() == Some("gz-a"))
        .map(|r| (r.get(3), r.get(2), r.get(5)))
        .collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert_eq!(kinds[0].0.as_deref(), Some("space_count"));
    assert_eq!(kinds[2].0.as_deref(), Some("activity"));
    assert_eq!(kinds[4].0.as_deref(), Some("withdrawal"));
    assert_eq!(kinds[1].2.as_deref(), Some("4401060003"));
    let withdrawn: Vec<(i64, Option<i64>)> = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(7).is_some())
        .map(|r| (r.get(2), r.get(7)))
        .collect();
    assert_eq!(withdrawn.len(), 1, "{withdrawn:?}");
    assert_eq!(withdrawn[0].0 as u64, withdrawn_seq);
    let hub_kinds: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(8))
        .map(|r| r.get(3))
        .collect();
    assert_eq!(hub_kinds, ["source_added", "source_added", "extension"]);

    // Figures per school: the same as the hub's API.
    let api = send(&th.app, get_req("/v1/regions/440106", Some(&th.admin)))
        .await
        .json();
    let schools = api["schools"].as_array().expect("schools");
    assert_eq!(schools.len(), 3, "{api}");
    for s in schools {
        let code = s["code"].as_str().expect("code");
        let rows = sql
            .query(
                "SELECT kind, spaces, baseline, real_name, new_spaces FROM spacesync_unit_figures \
                 WHERE region = '440106' AND school = $1",
                &[&code],
            )
            .await
            .expect("figures");
        let col = |i: usize| -> BTreeMap<String, i64> {
            rows.iter()
                .filter_map(|r| r.get::<_, Option<i64>>(i).map(|n| (r.get(0), n)))
                .collect()
        };
        assert_eq!(col(1), counts(&s["spaces"]), "{code} spaces: {s}");
        assert_eq!(col(2), counts(&s["baseline"]), "{code} baseline: {s}");
        assert_eq!(col(3), counts(&s["real_name"]), "{code} real names: {s}");
        assert_eq!(col(4), counts(&s["new_by_kind"]), "{code} new: {s}");
    }
    // School 1: 20 teachers (2018-11-10 beats the later-arriving 2018-11-01), baseline 5.
    let one: (i64, i64, i64) = sql
        .query_one(
            "SELECT spaces, baseline, new_spaces FROM spacesync_unit_figures \
             WHERE school = '4401060001' AND kind = 'teacher'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .expect("school 1");
    assert_eq!(one, (20, 5, 15));
    // School 3: the withdrawn 70 does not count.
    let three: i64 = sql
        .query_one(
            "SELECT spaces FROM spacesync_unit_figures WHERE school = '4401060003' AND kind = 'teacher'",
            &[],
        )
        .await
        .expect("school 3")
        .get(0);
    assert_eq!(three, 7);

    // Milestone statuses: the bulletin's, per unit.
    let rows = sql
        .query(
            "SELECT bulletin, unit, milestone, status, due::text, extended_until::text, submitted_on::text \
             FROM spacesync_milestone_statuses",
            &[],
        )
        .await
        .expect("statuses");
    let mut expected = 0;
    for p in doc["provinces"].as_array().expect("provinces") {
        for (m, cell) in p["milestones"].as_object().expect("milestones") {
            expected += 1;
            let row = rows
                .iter()
                .find(|r| {
                    r.get::<_, String>(1) == p["code"].as_str().unwrap_or_default()
                        && r.get::<_, String>(2) == *m
                })
                .unwrap_or_else(|| panic!("{} {m} missing", p["code"]));
            assert_eq!(row.get::<_, i64>(0), doc["number"].as_i64().expect("n"));
            assert_eq!(row.get::<_, String>(3), cell["status"].as_str().expect("s"));
            let day = |i: usize| row.get::<_, Option<String>>(i);
            assert_eq!(day(4).as_deref(), cell["due"].as_str());
            assert_eq!(day(5).as_deref(), cell["extended_until"].as_str());
            assert_eq!(day(6).as_deref(), cell["submitted_on"].as_str());
        }
    }
    assert_eq!(rows.len(), expected);
    let gd_plan: (String, Option<String>) = sql
        .query_one(
            "SELECT status, extended_until::text FROM spacesync_milestone_statuses \
             WHERE unit = '440000' AND milestone = 'implementation_plan'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("440000");
    assert_eq!(gd_plan.1.as_deref(), Some("2018-11-22"), "{gd_plan:?}");
    let bulletins: i64 = sql
        .query_one("SELECT count(*) FROM spacesync_bulletins", &[])
        .await
        .expect("bulletins")
        .get(0);
    assert_eq!(bulletins, 1);

    // Personal data: in no row of any analyst view (the contact form itself is there,
    // without its contacts); the administrators' spacesync_log holds the signed bytes.
    for view in VIEWS {
        let rows = sql
            .query(&format!("SELECT t::text FROM {view} t"), &[])
            .await
            .unwrap_or_else(|e| panic!("{view}: {e}"));
        for r in rows {
            let row: String = r.get(0);
            assert!(
                !row.contains(PHONE) && !row.contains(EMAIL) && !row.contains("王某某"),
                "{view} shows a contact: {row}"
            );
        }
    }
    let forms: i64 = sql
        .query_one(
            "SELECT count(*) FROM spacesync_entries WHERE milestone = 'contact_form' \
             AND record ? 'document' AND NOT (record -> 'details') ? 'contacts'",
            &[],
        )
        .await
        .expect("contact form")
        .get(0);
    assert_eq!(forms, 1, "the contact form is listed, without its contacts");
    let denied = sql.query("SELECT count(*) FROM spacesync_log", &[]).await;
    assert!(denied.is_err(), "spacesync_log is not granted to analysts");
    let held: i64 = owner
        .query_one(
            "SELECT count(*) FROM spacesync_log WHERE position($1::bytea IN payload) > 0",
            &[&PHONE.as_bytes()],
        )
        .await
        .expect("spacesync_log")
        .get(0);
    assert_eq!(
        held, 1,
        "the signed bytes keep the contact for administrators"
    );
    owner
        .batch_execute(&format!(
            "REVOKE ALL ON {} FROM {analyst}; REVOKE USAGE ON SCHEMA public FROM {analyst}; DROP ROLE {analyst};",
            VIEWS.join(", ")
        ))
        .await
        .expect("drop the role");
}
