//! The admin commands' `--hub` path without a hub to talk to: where the token comes from
//! (a file only its owner may read), what is refused before any request, and the error
//! naming the hub when it cannot be reached. (The path against a running hub is
//! `tests/tests/live_admin.rs`.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn hub(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::cli::BIN)
        .args(args)
        .env_remove("SPACESYNC_HUB_DATA")
        .env_remove("SPACESYNC_HUB_TOKEN")
        .output()
        .expect("run spacesync-hub");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_token_comes_from_a_private_file_or_is_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nothing listens on.
    let port = spacesync_pgtest::free_port();
    let url = format!("http://127.0.0.1:{port}");

    let (ok, err) = hub(&["token", "list", "--hub", &url]);
    assert!(!ok);
    assert!(
        err.contains("SPACESYNC_HUB_TOKEN") && err.contains("--token-file"),
        "{err}"
    );

    let file = dir.path().join("admin.token");
    std::fs::write(&file, "sst_abc\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let f = file.to_str().expect("utf-8 path");
    let (ok, err) = hub(&["token", "list", "--hub", &url, "--token-file", f]);
    assert!(!ok);
    assert!(err.contains("chmod 600"), "{err}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (ok, err) = hub(&["token", "list", "--hub", &url, "--token-file", f]);
    assert!(!ok);
    assert!(
        err.contains(&format!("the hub at {url}")) && err.contains("cannot reach"),
        "{err}"
    );

    // A running hub records on its own clock: --now is refused before anything is sent.
    let (ok, err) = hub(&[
        "agents",
        "revoke",
        "gd-a",
        "--now",
        "2018-11-20T10:00:00+08:00",
        "--hub",
        &url,
        "--token",
        "sst_x",
    ]);
    assert!(!ok);
    assert!(err.contains("--now applies to a stopped store"), "{err}");

    // An invitation names the hub URL, so it needs --hub.
    let (ok, err) = hub(&[
        "--data",
        dir.path().to_str().expect("utf-8"),
        "agents",
        "invite",
        "--source",
        "gd-a",
        "--scope",
        "440000",
    ]);
    assert!(!ok);
    assert!(err.contains("agents invite needs --hub"), "{err}");
    let (ok, err) = hub(&[
        "agents",
        "invite",
        "--source",
        "gd-a",
        "--scope",
        "440000",
        "--hub",
        &url,
        "--token",
        "sst_x",
        "--expires",
        "3 days",
    ]);
    assert!(!ok);
    assert!(err.contains("--expires"), "{err}");
}
