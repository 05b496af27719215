//! sled writes its snapshot (the page table, as of a log position) only while it opens a
//! store, after replaying the log written since the last one; `serve` therefore brings it
//! up to date after a clean stop ([`SledStore::snapshot`]), so that the next start reads
//! the page table instead of replaying what the run wrote. These tests tell "replayed" from
//! "not" by sled's snapshot file: an open that replays something writes a new one (its name
//! is the log position it is as of), an open with nothing to replay leaves it as it is.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{BIN, ok};
use common::*;
use spacesync_hub::store::{SledStore, Store, WriteBatch};

/// sled's snapshot files in the store directory `db` (normally exactly one).
fn snapshots(db: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(db)
        .expect("read the store directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("snap."))
        .collect();
    v.sort();
    v
}

/// Opens the store at `db` (waiting while this process's last handle lets go of it),
/// runs `f` on it and closes it again.
fn with_store<T>(db: &Path, f: impl FnOnce(&SledStore) -> T) -> T {
    let start = Instant::now();
    loop {
        match SledStore::open(db) {
            Ok(s) => return f(&s),
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open {}: {e}", db.display()),
        }
    }
}

/// Writes `n` keys `t/<i>` of 1 KiB each, `from` on.
fn write_keys(store: &SledStore, from: u32, n: u32) {
    let mut b = WriteBatch::new();
    for i in from..from + n {
        b.put(format!("t/{i:08}").into_bytes(), vec![i as u8; 1024]);
    }
    store.apply(b).expect("apply");
    store.flush().expect("flush");
}

#[test]
fn an_open_after_the_snapshot_replays_nothing_and_reads_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("db");
    with_store(&db, |s| write_keys(s, 0, 500));
    // The next open replays those writes and writes its snapshot.
    with_store(&db, |s| write_keys(s, 500, 500));
    let before = snapshots(&db);
    assert_eq!(before.len(), 1, "{before:?}");

    // Without the snapshot, an open replays what was written since (a new file): the check
    // below can see a replay.
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(&db, copy.path());
    with_store(copy.path(), |_| ());
    assert_ne!(snapshots(copy.path()), before, "an open replayed nothing");

    SledStore::snapshot(&db).expect("snapshot");
    let brought = snapshots(&db);
    assert_eq!(brought.len(), 1, "{brought:?}");
    assert_ne!(brought, before, "the snapshot was not brought up to date");
    let read = with_store(&db, |s| {
        s.scan(b"t/")
            .map(|r| r.expect("scan"))
            .map(|(k, v)| (String::from_utf8(k).expect("key"), v))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        snapshots(&db),
        brought,
        "the open after the snapshot replayed"
    );
    assert_eq!(read.len(), 1000);
    for (i, (k, v)) in read.iter().enumerate() {
        assert_eq!(k, &format!("t/{i:08}"));
        assert_eq!(v, &vec![i as u8; 1024]);
    }
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// One HTTP/1.1 request over a fresh connection: the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    s.write_all(body).expect("send body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A running `serve`: killed and reaped if the test ends without [`Serving::stop`].
struct Serving {
    child: Option<std::process::Child>,
    port: u16,
}

impl Serving {
    /// `serve` on `dir`, its stderr to `log`: waits for `/readyz`.
    fn start(dir: &Path, log: &Path) -> Serving {
        let port = free_port();
        let serving = Serving {
            child: Some(
                Command::new(BIN)
                    .arg("--data")
                    .arg(dir)
                    .args(["serve", "--now", "2018-11-20T02:00:00Z", "--listen"])
                    .arg(format!("127.0.0.1:{port}"))
                    .env("RUST_LOG", "info")
                    .env_remove("SPACESYNC_HUB_DATA")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(log).expect("log file"))
                    .spawn()
                    .expect("spawn serve"),
            ),
            port,
        };
        let start = Instant::now();
        while !(TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200)
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "serve did not become ready: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        serving
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        child.wait().expect("wait")
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The figures a ministry reader gets.
fn progress(port: u16, token: &str) -> String {
    let (status, body) = http(
        port,
        "GET",
        "/v1/progress",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn serve_brings_the_snapshot_up_to_date_at_a_clean_stop_and_reopens_with_the_same_figures() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("hub");
    ok(&dir, &["init"]);
    let mut agent = Agent::new("gd-a", 7, "440000");
    ok(
        &dir,
        &[
            "agents",
            "--now",
            "2018-09-01T00:00:00Z",
            "add",
            "--source",
            "gd-a",
            "--scope",
            "440000",
            "--key",
            &agent.key_line(),
        ],
    );
    let token = ok(&dir, &["token", "create", "--role", "ministry"]);
    let db = dir.join("db");
    let log = tmp.path().join("serve.log");

    let serving = Serving::start(&dir, &log);
    let port = serving.port;
    let opened = snapshots(&db);
    // Entries written while serving: the log the next start would replay.
    for week in 0..6 {
        let day = format!("2018-10-{:02}", 1 + week * 5);
        let records: Vec<_> = (0..40)
            .map(|i| teachers("440106", &format!("41440106{i:02}"), &day, 50 + i))
            .collect();
        let body = serde_json::to_vec(&agent.batch(&records)).expect("json");
        let (status, answer) = http(
            port,
            "POST",
            "/v1/ingest",
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(status, 200, "{answer}");
    }
    let figures = progress(port, &token);
    assert!(serving.stop().success());
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("Wrote the store's snapshot; the next start replays nothing."),
        "{text}"
    );
    assert!(
        text.contains("Wrote the views checkpoint for the next start."),
        "{text}"
    );
    assert!(db.join("views.ckpt").is_file(), "no views checkpoint");
    let stopped = snapshots(&db);
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_ne!(
        stopped, opened,
        "the stop did not bring the snapshot up to date"
    );

    // The next start replays nothing and serves the same figures.
    let serving = Serving::start(&dir, &log);
    assert_eq!(
        snapshots(&db),
        stopped,
        "the start after a clean stop replayed"
    );
    assert_eq!(progress(serving.port, &token), figures);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("Read the summaries from the views checkpoint of the last stop."),
        "the start after a clean stop read the summaries from the store: {text}"
    );
    assert!(
        !db.join("views.ckpt").exists(),
        "the start left the checkpoint for the next"
    );
    assert!(serving.stop().success());

    // And everything the run wrote is there: `verify` checks every leaf.
    let out = ok(&dir, &["verify"]);
    assert!(out.starts_with("ok: 241 leaves"), "{out}");
}
