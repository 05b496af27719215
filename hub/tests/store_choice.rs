//! The store is chosen at `init` (`--store postgres://…`, or sled under the data
//! directory) and every command opens the one hub.toml names; a database holds one hub.

mod common;

use std::path::Path;

use common::cli::{ok, run};

fn failed(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
}

/// `init --store` puts the hub's state in the database: hub.toml names it, DIR holds no
/// store, admin commands work, a copy of DIR opens the same hub, and a second `init` into
/// the database is refused without touching its directory.
#[test]
fn init_store_keeps_the_hub_in_the_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    let url = spacesync_pgtest::database();
    let out = run(&dir, &["init", "--store", &url]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PostgreSQL database"),
        "{out:?}"
    );
    let toml = std::fs::read_to_string(dir.join("hub.toml")).expect("hub.toml");
    assert!(toml.contains(&format!("store = \"{url}\"")), "{toml}");
    assert!(!dir.join("db").exists(), "no sled store beside a database");

    let agent = common::Agent::new("gd-a", 1, "440000");
    ok(
        &dir,
        &[
            "agents",
            "add",
            "--source",
            "gd-a",
            "--scope",
            "440000",
            "--key",
            &agent.key_line(),
            "--now",
            "2018-10-01T08:00:00+08:00",
        ],
    );
    ok(
        &dir,
        &[
            "token", "create", "--role", "ministry", "--label", "analyst",
        ],
    );
    ok(
        &dir,
        &[
            "extend",
            "--region",
            "440000",
            "--milestone",
            "implementation_plan",
            "--until",
            "2018-11-22",
            "--reason",
            "flood",
            "--now",
            "2018-11-01T08:00:00+08:00",
        ],
    );
    assert_eq!(
        ok(
            &dir,
            &["bulletin", "issue", "--now", "2018-11-20T10:00:00+08:00"]
        ),
        "1"
    );
    ok(&dir, &["verify"]);

    // A copy of the directory is another client of the same hub.
    let copy = tmp.path().join("copy");
    copy_dir(&dir, &copy);
    assert!(ok(&copy, &["agents", "list"]).contains("gd-a"));
    assert!(ok(&copy, &["token", "list"]).contains("analyst"));
    assert!(ok(&copy, &["bulletin", "list"]).contains('1'));
    ok(&copy, &["rebuild"]);
    ok(&copy, &["verify"]);

    // A second hub is refused the database, and its directory stays uninitialised.
    let other = tmp.path().join("other");
    let err = failed(&other, &["init", "--store", &url]);
    assert!(err.contains("already holds a hub"), "{err}");
    assert!(!other.join("hub.key").exists(), "nothing written: {err}");
    // A directory of another key pointed at the database is refused too.
    ok(&other, &["init"]);
    let toml = std::fs::read_to_string(other.join("hub.toml")).expect("hub.toml");
    std::fs::write(
        other.join("hub.toml"),
        toml.replacen("listen =", &format!("store = \"{url}\"\nlisten ="), 1),
    )
    .expect("write hub.toml");
    let err = failed(&other, &["agents", "list"]);
    assert!(err.contains("holds the log of another hub"), "{err}");
}

/// A database that cannot be reached is named without its password, with what to check,
/// and `init` leaves nothing behind.
#[test]
fn an_unreachable_database_is_named_without_its_password() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    let port = spacesync_pgtest::free_port();
    let url = format!("postgres://hub:s3cretpw@127.0.0.1:{port}/spacesync?sslmode=disable");
    let err = failed(&dir, &["init", "--store", &url]);
    assert!(!err.contains("s3cretpw"), "{err}");
    assert!(
        err.contains(&format!("postgres://hub:***@127.0.0.1:{port}/spacesync")),
        "{err}"
    );
    assert!(err.contains("is the database server up"), "{err}");
    assert!(!dir.join("hub.key").exists());

    let err = failed(&dir, &["init", "--store", "mysql://hub:pw@db/x"]);
    assert!(err.contains("not a PostgreSQL URL"), "{err}");
    assert!(!err.contains(":pw@"), "{err}");
}

/// Without `--store`, `init` makes the embedded store as before and hub.toml names none.
#[test]
fn init_without_store_is_sled_as_before() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    ok(&dir, &["init"]);
    assert!(dir.join("db").is_dir());
    let toml = std::fs::read_to_string(dir.join("hub.toml")).expect("hub.toml");
    assert!(!toml.contains("store ="), "{toml}");
    ok(&dir, &["verify"]);
}
