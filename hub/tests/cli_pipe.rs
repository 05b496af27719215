//! The hub's commands write to a reader that may go away (`spacesync-hub agents list | head`):
//! they end quietly with the status a `SIGPIPE` gives (141), not with a panic; a reader
//! that stays gets everything.

use std::path::Path;
use std::process::{Command, Stdio};

use spacesync_shared::out::BROKEN_PIPE_STATUS;

const BIN: &str = env!("CARGO_BIN_EXE_spacesync-hub");

fn hub(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--data")
        .arg(dir)
        .args(args)
        .env_remove("SPACESYNC_HUB_DATA");
    c
}

#[test]
fn a_reader_that_went_away_ends_the_output_without_a_panic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    let init = hub(&dir, &["init"]).output().expect("run init");
    assert!(init.status.success(), "{init:?}");

    for args in [
        &["pubkey"][..],
        &["agents", "list", "--json"],
        &["agents", "list"],
    ] {
        // The pipe's reading end is closed before the command starts: its first write fails.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = hub(&dir, args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run spacesync-hub");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} wrote to stderr: {err}");
        assert_eq!(
            out.status.code(),
            Some(BROKEN_PIPE_STATUS),
            "{args:?}: {err}"
        );
    }

    // With a reader, the same command succeeds and says its line.
    let out = hub(&dir, &["pubkey"]).output().expect("run pubkey");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ed25519:"),
        "{out:?}"
    );
}
