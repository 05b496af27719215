//! The hub binary records time from its clock: a campaign replayed with `--now 2018-…`
//! registers, rotates and revokes its sources, grants extensions and issues bulletins at
//! those instants, never at the wall clock's; `--now` / `--speed` are judged as the agent
//! judges them.

mod common;

use std::path::Path;

use common::cli::{ok, run};

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use serde_json::Value;
use spacesync_shared::keys::public_key_line;

fn refused(dir: &Path, args: &[&str], says: &str) {
    let out = run(dir, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(err.contains(says), "{args:?}: expected {says:?} in {err}");
}

fn key(seed: u8) -> String {
    public_key_line(&SigningKey::from_bytes(&[seed; 32]).verifying_key())
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("instant")
        .with_timezone(&Utc)
}

fn time(v: &Value) -> DateTime<Utc> {
    at(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
}

#[test]
fn a_replayed_campaign_registers_rotates_and_revokes_at_its_own_instants() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    ok(&dir, &["init"]);
    let added = "2018-10-01T08:00:00+08:00";
    let rotated = "2018-10-12T09:30:00+08:00";
    let revoked = "2018-11-02T17:00:00+08:00";
    let (gd, bj) = (key(1), key(2));
    ok(
        &dir,
        &[
            "agents", "add", "--source", "gd-a", "--scope", "440000", "--key", &gd, "--now", added,
        ],
    );
    // `--now` is an option of `agents` as a whole, so it may also come first.
    ok(
        &dir,
        &[
            "agents", "--now", added, "add", "--source", "bj-a", "--scope", "110000", "--key", &bj,
        ],
    );
    ok(
        &dir,
        &[
            "agents",
            "rotate",
            "gd-a",
            "--key",
            &key(3),
            "--from-seq",
            "5",
            "--now",
            rotated,
        ],
    );
    assert_eq!(
        ok(&dir, &["agents", "revoke", "bj-a", "--now", revoked]),
        "revoked bj-a"
    );
    let list: Value =
        serde_json::from_str(&ok(&dir, &["agents", "list", "--json"])).expect("list JSON");
    let by_id = |id: &str| {
        list.as_array()
            .expect("array")
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
    };
    let g = by_id("gd-a");
    assert_eq!(time(&g["added_at"]), at(added), "{g}");
    assert_eq!(time(&g["keys"][0]["added_at"]), at(added), "{g}");
    assert_eq!(time(&g["keys"][1]["added_at"]), at(rotated), "{g}");
    let b = by_id("bj-a");
    assert_eq!(time(&b["added_at"]), at(added), "{b}");
    assert_eq!(time(&b["revoked_at"]), at(revoked), "{b}");

    // Extensions and bulletins are stamped by the same clock.
    let granted = "2018-11-05T10:00:00+08:00";
    let out = ok(
        &dir,
        &[
            "extend",
            "--region",
            "440000",
            "--milestone",
            "implementation_plan",
            "--until",
            "2018-12-01",
            "--reason",
            "flood",
            "--now",
            granted,
        ],
    );
    assert!(out.starts_with("extension for 440000"), "{out}");
    let issued = "2018-11-20T10:00:00+08:00";
    assert_eq!(ok(&dir, &["bulletin", "issue", "--now", issued]), "1");
    let doc: Value = serde_json::from_str(&ok(&dir, &["bulletin", "show", "1"])).expect("JSON");
    assert_eq!(time(&doc["issued_at"]), at(issued), "{}", doc["issued_at"]);
    refused(
        &dir,
        &["bulletin", "show", "1", "--format", "pdf"],
        "invalid value 'pdf' for '--format",
    );
    // The whole replay happened in 2018: nothing in the log is stamped later.
    assert!(ok(&dir, &["verify"]).starts_with("ok:"));
}

#[test]
fn now_and_speed_are_judged_as_the_agent_judges_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    ok(&dir, &["init"]);
    refused(
        &dir,
        &["agents", "list", "--now", "yesterday"],
        "give an RFC 3339 instant",
    );
    refused(
        &dir,
        &[
            "serve",
            "--now",
            "2018-10-01T08:00:00+08:00",
            "--speed",
            "0",
        ],
        "--speed 0: must be a positive number",
    );
    refused(&dir, &["serve", "--speed", "60"], "--now");
}
