//! The database goes away under a serving hub and comes back: requests that need it are
//! answered 503 meanwhile, nothing is acknowledged that is not committed, and after the
//! server is back the next request works and the log verifies.

mod common;

use axum::http::StatusCode;
use common::*;
use spacesync_hub::maintenance;

#[tokio::test]
async fn a_database_restart_is_503_then_business_as_usual() {
    let mut server =
        spacesync_pgtest::PgServer::start(&spacesync_pgtest::binaries()).expect("server");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("store-url"), server.url("postgres")).expect("store-url");
    let th = TestHub::open(dir.path());
    let mut a = Agent::new("gd-a", 1, "440000");
    th.register(&a);
    th.ingest_ok(&a.batch(&[teachers("440106", "4401060001", "2018-11-05", 100)]))
        .await;

    server.kill().expect("kill");
    // An ingest during the outage is refused with 503 and nothing held.
    let pending = a.batch(&[teachers("440106", "4401060001", "2018-11-12", 110)]);
    let r = th.ingest(&pending).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    // Token lookups need the database too.
    let r = th.get("/v1/progress", Some(&th.admin)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());

    server.restart().expect("restart");
    // The agent resends the same batch: held now, as if the outage never happened.
    let resp = th.ingest_ok(&pending).await;
    assert_eq!(resp.held_through, 2);
    th.ingest_ok(&a.batch(&[teachers("440106", "4401060001", "2018-11-19", 120)]))
        .await;
    let progress = th.get_json("/v1/regions/440106").await;
    assert_eq!(progress["spaces"]["teacher"], 120, "{progress}");
    let report = maintenance::verify(
        th.hub.store.as_ref(),
        &hub_key().verifying_key(),
        ORIGIN,
        |_| {},
    )
    .expect("verify");
    assert!(report.ok(), "{:#?}", report.problems);
    // And a restarted hub reads the same.
    drop(th);
    let th = TestHub::open(dir.path());
    let again = th.get_json("/v1/regions/440106").await;
    assert_eq!(again, progress);
}
