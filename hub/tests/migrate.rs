//! `spacesync-hub --data DIR migrate --to postgres://…` moves a stopped sled hub into an
//! empty database: the same root, checkpoint, head and bulletins (verified by
//! recomputation), `verify` passes there, hub.toml names it and the hub serves from it. A
//! migrate killed mid-copy (SIGKILL) finishes when run again; a database holding anything
//! else is refused. On a real private PostgreSQL (spacesync-pgtest).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Days;
use common::cli::{BIN, ok, run};
use common::{Agent, activity, milestone, t0, teachers, withdrawal};
use spacesync_hub::bulletin;
use spacesync_hub::config::{self, DataDir};
use spacesync_hub::log::{self, Log};
use spacesync_hub::migrate::PROGRESS_KEY;
use spacesync_hub::store::pg::PgStore;
use spacesync_hub::store::{Store, keys};
use spacesync_shared::admin::Extend;
use spacesync_shared::clock::FixedClock;

/// What the embedded hub holds before the move, to compare with afterwards.
struct Before {
    root: [u8; 32],
    size: u64,
    head: u64,
    checkpoint: Vec<u8>,
    bulletins: Vec<String>,
    list: String,
    /// gd-a after its last entry, on its rotated key.
    gd: Agent,
}

/// Runs `args` on the CLI once the embedded store's lock of this process's last handle
/// is let go (sled releases it from background threads a moment after the drop).
fn ok_when_free(dir: &Path, args: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let out = run(dir, args);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success()
            && err.contains("in use by another process")
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        return ok(dir, args);
    }
}

/// An embedded hub with three sources, a key rotation (entries on both keys), a
/// revocation, a withdrawal, an extension and two bulletins at different instants.
fn busy_sled_hub(dir: &Path) -> Before {
    ok(dir, &["init"]);
    let data = DataDir(dir.to_path_buf());
    let clock = Arc::new(FixedClock::new(t0()));
    let (hub, _) = config::open_hub(&data, clock.clone()).expect("open the embedded hub");
    let mut gd = Agent::new("gd-a", 1, "440000");
    let mut bj = Agent::new("bj-a", 2, "110000");
    let mut js = Agent::new("js-a", 3, "320000");
    for a in [&gd, &bj, &js] {
        hub.add_source(a.id.clone(), a.scope, &a.key_line())
            .expect("add source");
    }
    let ingest = |hub: &spacesync_hub::hub::Hub, batch| {
        let out = hub.ingest(batch).expect("ingest");
        assert!(out.response.refused.is_empty(), "{:?}", out.response);
        assert!(out.appended > 0);
    };
    for day in 0..12u32 {
        let date = format!("2018-11-{:02}", day + 1);
        ingest(
            &hub,
            gd.batch(&[
                teachers("440106", "4401060001", &date, 10 + u64::from(day)),
                teachers("440106", "4401060002", &date, 3 * u64::from(day)),
            ]),
        );
        ingest(
            &hub,
            bj.batch(&[teachers("110101", "1101010001", &date, 5 + u64::from(day))]),
        );
        ingest(&hub, js.batch(&[activity("320102", &date, "应用培训")]));
        if day == 4 {
            ingest(
                &hub,
                gd.batch(&[milestone("implementation_plan", "440000", "2018-11-05")]),
            );
            clock.set(t0() + Days::hours(2));
            bulletin::issue(&hub, None, &[]).expect("bulletin 1");
        }
        if day == 6 {
            // gd-a's key is rotated: its next entries verify only under the new key.
            let new = Agent::new("gd-a", 9, "440000");
            hub.rotate_source("gd-a", &new.key_line(), None)
                .expect("rotate");
            gd.key = new.key;
            let withdrawn = gd.next - 1;
            ingest(&hub, gd.batch(&[withdrawal(withdrawn)]));
        }
        if day == 8 {
            hub.revoke_source("bj-a").expect("revoke");
            bj.next = u64::MAX; // never used again
            break;
        }
    }
    for day in 9..12u32 {
        let date = format!("2018-11-{:02}", day + 1);
        ingest(
            &hub,
            gd.batch(&[teachers("440106", "4401060001", &date, 30 + u64::from(day))]),
        );
    }
    spacesync_hub::admin::extend(
        &hub,
        &Extend {
            region: "440000".into(),
            milestone: "implementation_plan".into(),
            until: chrono::NaiveDate::from_ymd_opt(2018, 11, 22).expect("date"),
            reason: "flood".into(),
        },
    )
    .expect("extend");
    clock.set(t0() + Days::hours(30));
    bulletin::issue(&hub, None, &[]).expect("bulletin 2");
    let store = hub.store.clone();
    let log = Log::load(store.as_ref()).expect("log");
    let before = Before {
        root: log.root(),
        size: log.size(),
        head: store.head().expect("head"),
        checkpoint: store
            .get(keys::CHECKPOINT)
            .expect("get")
            .expect("checkpoint"),
        bulletins: Vec::new(),
        list: String::new(),
        gd: gd.clone(),
    };
    drop(hub);
    drop(store);
    let mut before = before;
    before.list = ok_when_free(dir, &["bulletin", "list", "--json"]);
    for n in ["1", "2"] {
        before
            .bulletins
            .push(ok(dir, &["bulletin", "show", n, "--format", "csv"]));
    }
    assert!(before.size > 40, "a busy log: {} leaves", before.size);
    before
}

/// After the move: the database holds the same log and bulletins, hub.toml names it,
/// `verify` passes, and the hub takes new entries from it.
fn check_moved(dir: &Path, url: &str, before: &Before) {
    let toml = std::fs::read_to_string(dir.join("hub.toml")).expect("hub.toml");
    assert!(toml.contains(&format!("store = \"{url}\"")), "{toml}");
    let store = PgStore::open(url).expect("open the database");
    let log = Log::load(&store).expect("log");
    assert_eq!(log.size(), before.size);
    assert_eq!(log.root(), before.root, "the same Merkle root");
    assert_eq!(store.head().expect("head"), before.head, "the same head");
    assert_eq!(
        store.get(keys::CHECKPOINT).expect("get"),
        Some(before.checkpoint.clone())
    );
    assert_eq!(store.get(PROGRESS_KEY).expect("get"), None);
    // The sled store's compressed packs arrive plain: the analyst views unpack them in SQL.
    let tags: Vec<u8> = store
        .scan(keys::LOG)
        .map(|r| r.expect("scan").1[0])
        .collect();
    assert!(
        !tags.is_empty() && !tags.contains(&log::pack::PACK_LZ4),
        "{tags:?}"
    );
    assert_eq!(
        store.get(keys::HEAD).expect("get"),
        None,
        "the head is a row"
    );
    drop(store);
    let verified = ok(dir, &["verify"]);
    assert!(verified.starts_with("ok:"), "{verified}");
    assert_eq!(ok(dir, &["bulletin", "list", "--json"]), before.list);
    for (i, csv) in before.bulletins.iter().enumerate() {
        let n = (i + 1).to_string();
        assert_eq!(
            &ok(dir, &["bulletin", "show", &n, "--format", "csv"]),
            csv,
            "bulletin {n}'s figures"
        );
        let json = ok(dir, &["bulletin", "show", &n]);
        let file = dir.join(format!("b{n}.json"));
        std::fs::write(&file, json).expect("write");
        let out = ok(dir, &["bulletin", "verify", file.to_str().expect("utf-8")]);
        assert!(out.starts_with("ok:"), "{out}");
    }
    // The hub now runs on the database: a new entry from the rotated key is taken, after
    // the moved ones, and `verify` still passes.
    let data = DataDir(dir.to_path_buf());
    let clock = Arc::new(FixedClock::new(t0() + Days::hours(31)));
    let (hub, _) = config::open_hub(&data, clock).expect("open the moved hub");
    let mut gd = before.gd.clone();
    let out = hub
        .ingest(gd.batch(&[teachers("440106", "4401060001", "2018-11-20", 50)]))
        .expect("ingest");
    assert_eq!(out.appended, 1, "{:?}", out.response);
    assert_eq!(hub.snapshot().log_size, before.size + 1);
    drop(hub);
    assert!(ok(dir, &["verify"]).starts_with("ok:"));
    serves(dir);
}

/// `serve` starts on the data directory and answers /healthz.
fn serves(dir: &Path) {
    use std::io::{Read, Write};
    let port = spacesync_pgtest::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(dir)
        .args(["serve", "--listen", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let start = Instant::now();
    let answer = loop {
        let got = std::net::TcpStream::connect(&addr).and_then(|mut s| {
            write!(
                s,
                "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        match got {
            Ok(text) => break text,
            Err(_) if start.elapsed() < Duration::from_secs(30) => {
                if let Some(status) = child.try_wait().expect("wait") {
                    panic!("serve ended: {status}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("serve did not answer: {e}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_sled_hub_moves_to_postgres_with_the_same_root_and_bulletins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    let before = busy_sled_hub(&dir);
    let url = spacesync_pgtest::database();
    let said = ok(&dir, &["migrate", "--to", &url]);
    assert!(said.contains("keys copied"), "{said}");
    assert!(
        said.contains(&hex::encode(before.root)),
        "names the root: {said}"
    );
    assert!(said.contains("2 bulletins"), "{said}");
    check_moved(&dir, &url, &before);

    // Run again: hub.toml names the database now, nothing is done.
    let out = run(&dir, &["migrate", "--to", &url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already keeps this hub's state"),
        "{out:?}"
    );

    // Another embedded hub is refused that database, and its hub.toml is left alone.
    let other = tmp.path().join("other");
    ok(&other, &["init"]);
    let toml = std::fs::read_to_string(other.join("hub.toml")).expect("hub.toml");
    let out = run(&other, &["migrate", "--to", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds a hub"), "{err}");
    assert!(err.contains("empty database"), "{err}");
    assert_eq!(
        std::fs::read_to_string(other.join("hub.toml")).expect("hub.toml"),
        toml
    );
}

/// SIGKILL in the middle of the copy leaves hub.toml as it was and the database with a
/// partial copy and its progress record; running migrate again goes on from there and
/// ends exactly as an uninterrupted run.
#[test]
fn a_migrate_killed_mid_copy_finishes_when_run_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    let before = busy_sled_hub(&dir);
    let toml = std::fs::read_to_string(dir.join("hub.toml")).expect("hub.toml");
    let url = spacesync_pgtest::database();
    let watch = PgStore::open(&url).expect("open the database");
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(&dir)
        .args(["migrate", "--to", &url, "--keys-per-transaction", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start migrate");
    // Killed once some keys are in, well before the last.
    let start = Instant::now();
    let copied = loop {
        let n = watch.scan(b"").take(40).count();
        if n >= 30 {
            break n;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("migrate ended before it could be killed: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(copied >= 30);
    assert!(
        watch.get(PROGRESS_KEY).expect("get").is_some(),
        "the progress record of an unfinished copy"
    );
    assert_eq!(watch.head().expect("head"), 0, "no head adopted yet");
    assert_eq!(
        std::fs::read_to_string(dir.join("hub.toml")).expect("hub.toml"),
        toml,
        "hub.toml untouched by a killed migrate"
    );
    drop(watch);

    // A copy whose hub.toml an operator pointed at the database by hand before the copy
    // finished: refused, not served from a half-copied key space.
    let early = tmp.path().join("early");
    std::fs::create_dir(&early).expect("mkdir");
    std::fs::set_permissions(&early, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod 700");
    for f in ["hub.key", "webhook.key", "campaign.toml"] {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), early.join(f)).expect("copy");
        }
    }
    std::fs::write(
        early.join("hub.toml"),
        format!("store = {url:?}\n{}", toml.replace("store =", "# store =")),
    )
    .expect("hub.toml");
    std::fs::set_permissions(
        early.join("hub.toml"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod 600");
    let out = run(&early, &["verify"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a half-migrated database was opened");
    assert!(
        said.contains("holds a migration that has not finished"),
        "{said}"
    );

    // `serve` on the embedded store still works meanwhile: nothing of it was changed.
    assert!(ok(&dir, &["verify"]).starts_with("ok:"));

    let said = ok(&dir, &["migrate", "--to", &url]);
    assert!(said.contains("going on from an interrupted run"), "{said}");
    assert!(said.contains(&hex::encode(before.root)), "{said}");
    check_moved(&dir, &url, &before);
}

/// A database holding other data is refused before anything is written to it.
#[test]
fn a_database_holding_data_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    ok(&dir, &["init"]);
    let url = spacesync_pgtest::database();
    let store = PgStore::open(&url).expect("open");
    let mut b = spacesync_hub::store::WriteBatch::new();
    b.put(b"x/someone-else".to_vec(), b"1".to_vec());
    store.apply(b).expect("apply");
    let out = run(&dir, &["migrate", "--to", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds data"), "{err}");
    assert_eq!(store.scan(b"").count(), 1, "nothing written");
    assert_eq!(store.head().expect("head"), 0);
}
