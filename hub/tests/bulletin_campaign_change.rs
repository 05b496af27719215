//! A bulletin verifies with the campaign rules it was issued under: after `campaign.toml`
//! changes (a target raised), `bulletin verify` of an earlier bulletin still passes (the
//! hub kept the file it was computed under, named by the bulletin's signed
//! `campaign_digest`), and a bulletin issued under the new file carries the new digest.

mod common;

use common::cli::ok;

fn digest(json: &str) -> String {
    let doc: serde_json::Value = serde_json::from_str(json).expect("bulletin JSON");
    doc["campaign_digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no campaign_digest in {json}"))
        .to_string()
}

#[test]
fn an_earlier_bulletin_verifies_after_the_campaign_file_changed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    ok(&dir, &["init"]);
    ok(
        &dir,
        &["bulletin", "issue", "--now", "2018-11-20T01:00:00Z"],
    );
    let first = tmp.path().join("1.json");
    let json = ok(&dir, &["bulletin", "show", "1", "--format", "json"]);
    std::fs::write(&first, &json).expect("write bulletin 1");
    let before = digest(&json);
    ok(&dir, &["bulletin", "verify", first.to_str().expect("path")]);

    // The ministry raises the national target: today's rules give other figures.
    let campaign = dir.join("campaign.toml");
    let text = std::fs::read_to_string(&campaign).expect("campaign.toml");
    assert!(text.contains("new_spaces = 10_000_000"), "{text}");
    std::fs::write(
        &campaign,
        text.replace("new_spaces = 10_000_000", "new_spaces = 12_000_000"),
    )
    .expect("edit campaign.toml");

    ok(&dir, &["bulletin", "verify", first.to_str().expect("path")]);

    ok(
        &dir,
        &["bulletin", "issue", "--now", "2018-11-27T01:00:00Z"],
    );
    let second = tmp.path().join("2.json");
    let json2 = ok(&dir, &["bulletin", "show", "2", "--format", "json"]);
    std::fs::write(&second, &json2).expect("write bulletin 2");
    assert_ne!(digest(&json2), before, "issued under the edited file");
    assert!(
        json2.contains("12000000"),
        "the new target is in bulletin 2"
    );
    ok(
        &dir,
        &["bulletin", "verify", second.to_str().expect("path")],
    );
    ok(&dir, &["bulletin", "verify", first.to_str().expect("path")]);
}
