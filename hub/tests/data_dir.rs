//! The data directory through the real binary: `init` makes everything private from the
//! start, every command refuses a directory, configuration or key that others may read
//! (naming the path, its mode and the `chmod` that fixes it), an old hub gets its
//! webhook key, and tokens are listed and revoked by id.

#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{BIN, ok, run};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

/// `serve` with a deadline: its exit status and stderr (killed if it is still running,
/// which counts as not refused).
fn serve(dir: &Path) -> (bool, String) {
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            return (
                status.success(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            return (true, String::from_utf8_lossy(&out.stderr).to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts `what` refused with the path, its mode and the fix.
fn assert_refused(what: &str, ok: bool, stderr: &str, path: &Path, mode: &str, fix: &str) {
    assert!(!ok, "{what} was not refused: {stderr}");
    let p = path.display().to_string();
    assert!(stderr.contains(&p), "{what}: names {p}: {stderr}");
    assert!(
        stderr.contains(&format!("mode {mode}")),
        "{what}: names mode {mode}: {stderr}"
    );
    assert!(
        stderr.contains(&format!("chmod {fix} {p}")),
        "{what}: says `chmod {fix} {p}`: {stderr}"
    );
}

#[test]
fn init_makes_everything_private_and_commands_refuse_open_permissions() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("hub");
    let hub_line = ok(&dir, &["init"]);
    assert!(hub_line.starts_with("ed25519:"));
    assert_eq!(mode(&dir), 0o700, "data directory");
    for f in ["hub.toml", "hub.key", "webhook.key", "campaign.toml"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&dir.join("db")), 0o700, "sled directory");
    // The webhook key is its own, not the hub key.
    let webhook_line = ok(&dir, &["webhook-key"]);
    assert!(webhook_line.starts_with("ed25519:"));
    assert_ne!(webhook_line, hub_line);
    assert_eq!(ok(&dir, &["pubkey"]), hub_line);
    let config = std::fs::read_to_string(dir.join("hub.toml")).expect("hub.toml");
    assert!(config.contains("X-Spacesync-Timestamp") && config.contains("webhook-key"));
    assert!(!config.contains("X-Spacesync-Key"));

    // hub.toml readable by others: serve and the other commands refuse, saying how to fix.
    let toml = dir.join("hub.toml");
    chmod(&toml, 0o644);
    let (served, err) = serve(&dir);
    assert_refused("serve", served, &err, &toml, "644", "600");
    let out = run(&dir, &["verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_refused("verify", out.status.success(), &err, &toml, "644", "600");
    chmod(&toml, 0o600);

    // The data directory open to others.
    chmod(&dir, 0o755);
    let (served, err) = serve(&dir);
    assert_refused("serve", served, &err, &dir, "755", "700");
    let out = run(&dir, &["token", "create", "--role", "ministry"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_refused(
        "token create",
        out.status.success(),
        &err,
        &dir,
        "755",
        "700",
    );
    chmod(&dir, 0o700);

    // A key file readable by the group.
    let key = dir.join("webhook.key");
    chmod(&key, 0o640);
    let out = run(&dir, &["agents", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_refused(
        "agents list",
        out.status.success(),
        &err,
        &key,
        "640",
        "600",
    );
    chmod(&key, 0o600);
    ok(&dir, &["agents", "list"]);

    // init into an empty directory made beforehand (mkdir, a mount) makes it private;
    // into a non-empty one that others may read, it refuses and changes nothing.
    let made = parent.path().join("made");
    std::fs::create_dir(&made).expect("mkdir");
    chmod(&made, 0o755);
    ok(&made, &["init"]);
    assert_eq!(mode(&made), 0o700);
    let open = parent.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::write(open.join("notes.txt"), "x").expect("write");
    chmod(&open, 0o755);
    let out = run(&open, &["init"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_refused("init", out.status.success(), &err, &open, "755", "700");
    assert!(!open.join("hub.key").exists());
    assert_eq!(mode(&open), 0o755);
}

#[test]
fn a_hub_from_before_webhook_keys_gets_one_and_tokens_are_revoked_by_id() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("hub");
    ok(&dir, &["init"]);
    std::fs::remove_file(dir.join("webhook.key")).expect("rm");
    let line = ok(&dir, &["webhook-key"]);
    assert!(line.starts_with("ed25519:"));
    assert_eq!(mode(&dir.join("webhook.key")), 0o600);
    assert_eq!(
        ok(&dir, &["webhook-key"]),
        line,
        "generated once, then kept"
    );

    let out = run(
        &dir,
        &["token", "create", "--role", "ministry", "--label", "alice"],
    );
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let list = ok(&dir, &["token", "list", "--json"]);
    assert!(!list.contains(&token), "token list never shows tokens");
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    let id = list[0]["id"].as_str().expect("id").to_string();
    assert!(stderr.contains(&id), "create names the id: {stderr}");
    assert_eq!(list[0]["label"], "alice");
    assert!(list[0]["revoked_at"].is_null());

    let said = ok(&dir, &["token", "revoke", &id]);
    assert!(said.contains(&id), "{said}");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&dir, &["token", "list", "--json"])).expect("json");
    assert!(list[0]["revoked_at"].is_string());
    let out = run(&dir, &["token", "revoke", "ffffffffffff"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token list"));
    let out = run(&dir, &["token", "revoke", "sst_not-a-real-token-at-all"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not-a-real"));
}

/// Every file and directory the hub creates, sled's own included, is private to its user,
/// whatever umask it was started with (it sets 0077 itself).
#[test]
fn every_file_the_hub_creates_is_private() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("hub");
    // Started from a permissive shell.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 022 && {BIN} --data {d} init && {BIN} --data {d} token create --role admin",
            d = dir.display()
        ))
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut open = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(p) = stack.pop() {
        let m = mode(&p);
        if m & 0o077 != 0 {
            open.push(format!("{} {m:o}", p.display()));
        }
        if p.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    assert!(open.is_empty(), "open to group or others: {open:?}");
    assert!(
        dir.join("db").join("conf").exists(),
        "sled created its files"
    );
}
