//! `spacesync-hub check`: the files and the store are checked without starting; each
//! problem is named with its file (and line), and what fixes it.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::cli::{ok, run};

fn fails_with(dir: &std::path::Path, want: &[&str]) {
    let out = run(dir, &["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check passed; wanted {want:?}");
    for w in want {
        assert!(err.contains(w), "{err:?} does not say {w:?}");
    }
}

#[test]
fn check_names_each_broken_file_and_passes_a_sound_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    ok(dir.path(), &["init"]);
    // A registered source: a signed checkpoint in the store.
    let key = spacesync_shared::keys::public_key_line(
        &ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key(),
    );
    ok(
        dir.path(),
        &[
            "agents", "add", "--source", "gd-a", "--scope", "440000", "--key", &key,
        ],
    );
    let out = ok(dir.path(), &["check"]);
    assert!(
        out.starts_with("ok: ") && out.contains("store opens"),
        "{out}"
    );

    let config = dir.path().join("hub.toml");
    let good = std::fs::read_to_string(&config).expect("hub.toml");

    // Open to others: the chmod that fixes it.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    fails_with(dir.path(), &["hub.toml", "chmod"]);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // A syntax error: its line.
    let mut lines: Vec<&str> = good.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("listen"))
        .expect("a listen line");
    lines[at] = "listen = ";
    std::fs::write(&config, lines.join("\n")).expect("write");
    fails_with(dir.path(), &["hub.toml", &format!("line {}", at + 1)]);

    // A typo in log_format is an error, not a silent default.
    std::fs::write(
        &config,
        good.replace("log_format = \"human\"", "log_format = \"jsn\""),
    )
    .expect("write");
    fails_with(dir.path(), &["log_format", "jsn"]);
    std::fs::write(&config, &good).expect("write");

    // A broken campaign file: its line.
    let campaign = dir.path().join("campaign.toml");
    let text = std::fs::read_to_string(&campaign).expect("campaign.toml");
    std::fs::write(&campaign, format!("{text}\n[[nonsense\n")).expect("write");
    fails_with(dir.path(), &["campaign.toml", "line"]);
    std::fs::write(&campaign, &text).expect("write");

    // Another hub's key in this directory: the store is not its own.
    let other = tempfile::tempdir().expect("tempdir");
    ok(other.path(), &["init"]);
    std::fs::copy(other.path().join("hub.key"), dir.path().join("hub.key")).expect("copy key");
    fails_with(dir.path(), &["belongs to another hub"]);
}
