//! The ingest check pool (`check_pool.rs`) attacked as a hostile client would (an outside
//! review of 0c8b54f found both holes; each test failed before the fix):
//!
//! - a client that sends a whole body and hangs up while its batch waits for a check thread
//!   must not get its share of the hub-wide body budget back before the queued body is
//!   gone: else hanging up over and over queues bodies without bound;
//! - a batch that waits in the queue longer than the connection's idle timeout must still
//!   be answered: the hub's own queue is not the client idling.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spacesync_hub::check_pool::CheckPool;
use spacesync_hub::http::{self as hubhttp, AppState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (checks_total, checks_waiting) as `/metrics` would show them.
fn gauges(pool: &CheckPool) -> (u64, u64) {
    let mut out = String::new();
    pool.render(&mut out);
    let get = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from {out}"))
    };
    (
        get("spacesync_hub_ingest_checks_total"),
        get("spacesync_hub_ingest_checks_waiting"),
    )
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Occupies the pool's only thread until the returned sender is dropped or sent to.
async fn block_the_pool(pool: &Arc<CheckPool>) -> std::sync::mpsc::Sender<()> {
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let p = pool.clone();
    tokio::spawn(async move {
        p.run(move || {
            let _ = gate.recv();
        })
        .await
    });
    until("the blocker runs", || gauges(pool) == (1, 0)).await;
    release
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_leaves_its_budget_share_with_its_queued_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut state =
        AppState::new(th.hub.clone(), th.notices.clone(), 1e9, 1e9).with_address_limit(1e9, 1e9);
    // A 64 KiB budget instead of 256 MiB (as hostile_clients.rs does): two 32 KiB bodies at once.
    let budget = Arc::new(tokio::sync::Semaphore::new(64));
    state.body_budget = budget.clone();
    let pool = Arc::new(CheckPool::new(1, 0));
    state.check_pool = pool.clone();
    let server = tokio::spawn(hubhttp::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let release = block_the_pool(&pool).await;

    // Control: while two clients stay connected with 32 KiB bodies queued, a third is 503.
    let body = vec![b' '; 32 * 1024];
    let head = format!(
        "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut held = Vec::new();
    for n in 1..=2u64 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&body).await.expect("write");
        until("queued", || gauges(&pool).1 == n).await;
        held.push(s);
    }
    assert_eq!(budget.available_permits(), 0, "two bodies hold the budget");
    {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&body).await.expect("write");
        let mut out = vec![0; 256];
        let n = s.read(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out[..n]);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    }
    // The attack: the same two clients hang up, then 18 more send a body and hang up.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 3..=20u64 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&body).await.expect("write");
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, waiting) = gauges(&pool);
    let free = budget.available_permits() as u64;
    eprintln!(
        "queued bodies: {waiting} x 32 KiB = {} KiB held; body budget free: {free} of 64 KiB",
        waiting * 32
    );
    // Every queued body must be covered by the budget it took (64 KiB in all).
    assert!(
        waiting * 32 <= 64 - free,
        "{waiting} bodies of 32 KiB are queued ({} KiB) while {free} of the 64 KiB budget is free: \
         hanging up releases the budget but not the queued body",
        waiting * 32
    );
    drop(release);
    let _ = stop.send(());
    let _ = server.await;
}

/// A batch waiting for a check thread longer than `idle_timeout` (60 s by default; 1 s
/// here) is answered (before the fix the hub cut the connection, then checked the batch
/// for nobody).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_queued_longer_than_the_idle_timeout_is_answered() {
    queued_batch(Duration::from_secs(1)).await;
}

/// Control: the same 2.5 s queue with the default 60 s idle timeout is answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_the_same_queue_under_the_default_idle_timeout_is_answered() {
    queued_batch(spacesync_http::Limits::default().idle_timeout).await;
}

async fn queued_batch(idle_timeout: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    let mut bj = Agent::new("bj-rrt", 2, "110000");
    th.register(&bj);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = spacesync_http::Limits {
        idle_timeout,
        ..spacesync_http::Limits::default()
    };
    let mut state =
        AppState::new(th.hub.clone(), th.notices.clone(), 1e9, 1e9).with_connection_limits(limits);
    let pool = Arc::new(CheckPool::new(1, 0));
    state.check_pool = pool.clone();
    let server = tokio::spawn(hubhttp::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let release = block_the_pool(&pool).await;
    let good = serde_json::to_vec(&bj.batch(&[teachers("110105", "1111010501", "2018-11-01", 70)]))
        .expect("json");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!(
            "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            good.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    s.write_all(&good).await.expect("write");
    // The check threads are busy for 2.5 s (a queue), longer than the idle timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(release);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    until("checked", || gauges(&pool) == (2, 0)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    eprintln!("answer: {text:?}; log size {}", th.log_size());
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the agent got no answer ({text:?}) although its batch was checked afterwards; stored: {}",
        th.source_leaves()
    );
    let _ = stop.send(());
    let _ = server.await;
}
