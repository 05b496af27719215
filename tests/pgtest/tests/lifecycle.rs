//! A test process's server: started on first use, a fresh database each time.

#[test]
fn databases_are_fresh_and_distinct() {
    let a = spacesync_pgtest::database();
    let b = spacesync_pgtest::database();
    assert_ne!(a, b);
    assert!(spacesync_pgtest::shared().pid().is_some());
}

/// A kill leaves nothing to answer: a connection opened before it fails on its next
/// query, and its backend process is gone when `kill` returns (PostgreSQL's backends
/// each call `setsid()`, so killing the postmaster's process group alone left them
/// serving open connections for a moment — CI caught a read answered after a "kill").
#[test]
fn a_kill_takes_every_backend_with_it() {
    let mut server =
        spacesync_pgtest::PgServer::start(&spacesync_pgtest::binaries()).expect("server");
    let url = server.url("postgres");
    // A connection held open across the kill, driven on a runtime that outlives it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let held = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    });
    let held_pid: i32 = rt
        .block_on(held.query_one("SELECT pg_backend_pid()", &[]))
        .expect("held backend pid")
        .get(0);
    server.kill().expect("kill");
    let state = std::fs::read_to_string(format!("/proc/{held_pid}/stat")).unwrap_or_default();
    let alive = state
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|s| s != "Z" && s != "X");
    assert!(
        !alive,
        "backend {held_pid} still runs after the kill: {state}"
    );
    let after = rt.block_on(held.query_one("SELECT 1", &[]));
    assert!(after.is_err(), "a query answered after the kill");
}
