//! Hostile ingest requests: each is refused with its exact status, refusal code and a reason
//! a person can act on, and none of them changes anything a reader sees — the merged
//! progress, the log size and the signed checkpoint stay byte-for-byte what they were. The
//! idempotent replay is the one 200 in the table; it changes nothing either.

mod common;

use axum::body::Body;
use axum::http::Request;
use chrono::Duration;
use common::*;
use serde_json::{Value, json};
use spacesync_hub::http::MAX_BODY;
use spacesync_shared::dsse::Envelope;
use spacesync_shared::entry::ENTRY_PAYLOAD_TYPE;
use spacesync_shared::wire::{IngestBatch, IngestResponse, Receipt, RefusalCode};
use spacesync_shared::{Digest, Entry};

/// The hub clock has sub-millisecond digits, as a real clock does: a replayed batch must
/// still get byte-identical receipts.
fn hub_now() -> chrono::DateTime<chrono::Utc> {
    t0() + Duration::nanoseconds(123_456_789)
}

/// The state every hostile request is sent against.
struct Fixture {
    th: TestHub,
    _dir: tempfile::TempDir,
    /// gd-a holds seqs 1‥5, sent as batches 1‥3 and 4‥5.
    a: Agent,
    first_batch: IngestBatch,
    first_reply: IngestResponse,
    last_batch: IngestBatch,
    last_reply_bytes: Vec<u8>,
    /// bj-a (Beijing) holds seqs 1‥2.
    bj: Agent,
    /// gd-rev held seq 1 and was revoked.
    rev: Agent,
    /// gd-rot signed seqs 1‥2 with its old key, then rotated; the new key signed 3‥4.
    rot_old: Agent,
    /// Never registered.
    stranger: Agent,
}

async fn fixture(backend: Backend) -> Fixture {
    let dir = store_dir(backend);
    let th = TestHub::open_at(dir.path(), hub_now());

    let mut a = Agent::new("gd-a", 1, "440000");
    th.register(&a);
    let first_batch = a.batch(&[
        teachers("440106", "4144010601", "2018-11-01", 100),
        teachers("440106", "4144010602", "2018-11-01", 50),
        activity("440100", "2018-11-02", "培训"),
    ]);
    let first_reply = th.ingest_ok(&first_batch).await;
    let last_batch = a.batch(&[
        teachers("440106", "4144010601", "2018-11-05", 120),
        milestone("implementation_plan", "440000", "2018-11-10"),
    ]);
    let r = th.ingest(&last_batch).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let last_reply_bytes = r.body;

    let mut bj = Agent::new("bj-a", 2, "110000");
    th.register(&bj);
    th.ingest_ok(&bj.batch(&[
        teachers("110105", "1111010501", "2018-11-01", 70),
        teachers("110105", "1111010501", "2018-11-06", 75),
    ]))
    .await;

    let mut rev = Agent::new("gd-rev", 3, "440000");
    th.register(&rev);
    th.ingest_ok(&rev.batch(&[activity("440300", "2018-11-03", "会议")]))
        .await;
    th.hub.revoke_source("gd-rev").expect("revoke");

    let mut rot_old = Agent::new("gd-rot", 4, "440000");
    th.register(&rot_old);
    th.ingest_ok(&rot_old.batch(&[
        teachers("440303", "4144030301", "2018-11-01", 10),
        teachers("440303", "4144030301", "2018-11-02", 11),
    ]))
    .await;
    let mut rot_new = rot_old.clone();
    rot_new.key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    th.hub
        .rotate_source("gd-rot", &rot_new.key_line(), None)
        .expect("rotate");
    th.ingest_ok(&rot_new.batch(&[
        teachers("440303", "4144030301", "2018-11-03", 12),
        teachers("440303", "4144030301", "2018-11-04", 13),
    ]))
    .await;
    // The old key's chain position follows the new key's entries.
    rot_old.next = rot_new.next;
    rot_old.prev = rot_new.prev;

    Fixture {
        th,
        _dir: dir,
        a,
        first_batch,
        first_reply,
        last_batch,
        last_reply_bytes,
        bj,
        rev,
        rot_old,
        stranger: Agent::new("gd-x", 6, "440000"),
    }
}

/// What a hostile request must get back.
struct Expect {
    status: u16,
    code: Option<RefusalCode>,
    /// Substring of the reason (the refusal's, or the error body's).
    reason: &'static str,
    extra: Extra,
}

enum Extra {
    None,
    /// 409 with `resend_from`.
    ResendFrom(u64),
    /// An equivocation alarm for this source and seq, visible to admins.
    Alarm(&'static str, u64),
    /// 200 whose body is byte-identical to this one.
    SameBody(Vec<u8>),
    /// 200 whose receipts are byte-identical to these.
    SameReceipts(Vec<Envelope>),
}

fn refused(status: u16, code: RefusalCode, reason: &'static str) -> Expect {
    Expect {
        status,
        code: Some(code),
        reason,
        extra: Extra::None,
    }
}

fn json_req(body: Vec<u8>) -> Request<Body> {
    ingest_req(body, Some("application/json"), None)
}

fn batch_req(source: &str, entries: Vec<Envelope>) -> Request<Body> {
    json_req(serde_json::to_vec(&json!({ "source": source, "entries": entries })).expect("json"))
}

/// Everything a reader can see that no hostile request may change.
async fn observed(th: &TestHub) -> (Value, u64, String, usize) {
    let progress = th.get_json("/v1/progress").await;
    let cp = th.get("/v1/checkpoint", None).await.text();
    let sources = th.get_json("/v1/sources").await;
    let alarms = sources["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| s["alarms"].as_array().map_or(0, Vec::len))
        .sum();
    (progress, th.log_size(), cp, alarms)
}

async fn check(fx: &Fixture, name: &str, req: Request<Body>, want: Expect) {
    let before = observed(&fx.th).await;
    let r = fx.th.send(req).await;
    assert_eq!(r.status.as_u16(), want.status, "{name}: {}", r.text());
    let body = r.json();
    let (code, reason) = match body.get("refused") {
        Some(list) => (
            list[0].get("code").cloned(),
            list[0]["reason"].as_str().unwrap_or_default().to_string(),
        ),
        None => (
            body.get("code").cloned(),
            body["error"].as_str().unwrap_or_default().to_string(),
        ),
    };
    let code: Option<RefusalCode> = code.map(|c| serde_json::from_value(c).expect("code"));
    assert_eq!(code, want.code, "{name}: {body}");
    assert!(
        reason.contains(want.reason),
        "{name}: reason {reason:?} lacks {:?}",
        want.reason
    );
    if want.status == 409 || want.status == 422 {
        let resp: IngestResponse = serde_json::from_value(body.clone()).expect("ingest response");
        assert_eq!(resp.refused.len(), 1, "{name}: {body}");
    }
    let mut alarm_added = 0;
    match &want.extra {
        Extra::None => {}
        Extra::ResendFrom(n) => assert_eq!(body["resend_from"], json!(n), "{name}: {body}"),
        Extra::Alarm(source, seq) => {
            alarm_added = 1;
            let sources = fx.th.get_json("/v1/sources").await;
            let s = sources["sources"]
                .as_array()
                .expect("sources")
                .iter()
                .find(|s| s["source"] == *source)
                .expect("source listed");
            assert!(
                s["alarms"]
                    .as_array()
                    .expect("alarms")
                    .iter()
                    .any(|a| a["seq"] == *seq && a["code"] == "fork"),
                "{name}: no alarm in {s}"
            );
        }
        Extra::SameBody(b) => assert_eq!(
            r.text(),
            String::from_utf8_lossy(b),
            "{name}: replay answer differs"
        ),
        Extra::SameReceipts(rs) => {
            let resp: IngestResponse = serde_json::from_value(body.clone()).expect("response");
            assert_eq!(&resp.receipts, rs, "{name}: replayed receipts differ");
            assert!(resp.refused.is_empty(), "{name}");
        }
    }
    let after = observed(&fx.th).await;
    assert_eq!(after.0, before.0, "{name}: /v1/progress changed");
    assert_eq!(after.1, before.1, "{name}: the log grew");
    assert_eq!(after.2, before.2, "{name}: the checkpoint changed");
    assert_eq!(after.3, before.3 + alarm_added, "{name}: alarms");
}

/// A JSON value nested `depth` arrays deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

async fn hostile_ingest_requests_are_refused_and_change_nothing(backend: Backend) {
    let fx = fixture(backend).await;
    let a = &fx.a;
    let rec = activity("440100", "2018-11-12", "展示");
    let good = |a: &Agent| a.entry(&rec).sign(&a.key);

    let mut cases: Vec<(&str, Request<Body>, Expect)> = Vec::new();

    // -- signatures and keys --------------------------------------------------------------
    let mut forged = good(a);
    forged.payload = a
        .entry(&activity("440100", "2018-11-12", "改过的"))
        .to_payload();
    cases.push((
        "payload altered after signing",
        batch_req("gd-a", vec![forged]),
        refused(422, RefusalCode::BadSignature, "bad signature by key"),
    ));
    let mut flipped = good(a);
    flipped.signatures[0].sig[10] ^= 1;
    cases.push((
        "signature bytes flipped",
        batch_req("gd-a", vec![flipped]),
        refused(422, RefusalCode::BadSignature, "bad signature by key"),
    ));
    cases.push((
        "signed by a key the source was never given",
        batch_req("gd-a", vec![a.entry(&rec).sign(&fx.stranger.key)]),
        refused(422, RefusalCode::BadSignature, "no signature by key"),
    ));
    let mut short = good(a);
    short.signatures[0].sig.truncate(63);
    cases.push((
        "signature of 63 bytes",
        batch_req("gd-a", vec![short]),
        refused(422, RefusalCode::BadSignature, "expected 64"),
    ));
    cases.push((
        "wrong payloadType",
        batch_req(
            "gd-a",
            vec![Envelope::sign(
                &a.key,
                "application/json",
                a.entry(&rec).to_payload(),
            )],
        ),
        refused(422, RefusalCode::BadSignature, "payloadType"),
    ));
    cases.push((
        "unregistered source with a valid signature",
        batch_req("gd-x", vec![good(&fx.stranger)]),
        refused(401, RefusalCode::UnknownSource, "not registered"),
    ));
    cases.push((
        "revoked source",
        batch_req("gd-rev", vec![good(&fx.rev)]),
        refused(403, RefusalCode::RevokedKey, "revoked"),
    ));
    cases.push((
        "signed by the key rotated out: named as retired",
        batch_req("gd-rot", vec![good(&fx.rot_old)]),
        refused(
            422,
            RefusalCode::RevokedKey,
            "signed by a retired key of gd-rot",
        ),
    ));

    // -- what the entries say -------------------------------------------------------------
    cases.push((
        "record outside the source's scope, validly signed",
        batch_req(
            "gd-a",
            vec![
                a.entry(&teachers("110105", "1111010501", "2018-11-07", 1))
                    .sign(&a.key),
            ],
        ),
        refused(
            422,
            RefusalCode::OutOfScope,
            "outside the source's scope 440000",
        ),
    ));
    cases.push((
        "batch mixing two sources",
        batch_req("gd-a", vec![good(&fx.bj), good(a)]),
        refused(422, RefusalCode::WrongSource, "one source per batch"),
    ));
    let mut future = a.entry(&rec);
    future.recorded_at = hub_now() + Duration::days(2);
    cases.push((
        "recorded_at two days ahead of the hub",
        batch_req("gd-a", vec![future.sign(&a.key)]),
        refused(
            422,
            RefusalCode::FutureTimestamp,
            "ahead of the hub's clock",
        ),
    ));
    let mut epoch = a.entry(&rec);
    epoch.recorded_at = chrono::DateTime::UNIX_EPOCH;
    cases.push((
        "recorded_at in 1970",
        batch_req("gd-a", vec![epoch.sign(&a.key)]),
        refused(422, RefusalCode::Invalid, "before the campaign started"),
    ));
    let mut bad_prev = a.entry(&rec);
    bad_prev.prev = Digest::of(b"not the previous entry");
    cases.push((
        "prev does not chain",
        batch_req("gd-a", vec![bad_prev.sign(&a.key)]),
        refused(
            422,
            RefusalCode::BadPrev,
            "does not match the hash of seq 5",
        ),
    ));
    let mut campaign = a.entry(&rec);
    campaign.campaign = "2019".into();
    cases.push((
        "another campaign",
        batch_req("gd-a", vec![campaign.sign(&a.key)]),
        refused(422, RefusalCode::WrongSource, "campaign \"2019\""),
    ));
    let mut seq0 = a.entry(&rec);
    seq0.seq = 0;
    cases.push((
        "seq 0",
        batch_req("gd-a", vec![seq0.sign(&a.key)]),
        refused(422, RefusalCode::Invalid, "seq must be ≥ 1"),
    ));
    cases.push((
        "withdrawal of a seq not yet sent",
        batch_req("gd-a", vec![a.entry(&withdrawal(9)).sign(&a.key)]),
        refused(
            422,
            RefusalCode::Invalid,
            "target_seq 9 is not an earlier entry",
        ),
    ));
    let unknown_kind = serde_json::to_vec(&json!({
        "source": "gd-a", "seq": 6, "prev": a.prev, "recorded_at": "2018-11-20T01:00:00.000Z",
        "campaign": "2018", "record": { "kind": "rumour", "region": "440100" }
    }))
    .expect("json");
    cases.push((
        "unknown record kind, validly signed",
        batch_req(
            "gd-a",
            vec![Envelope::sign(&a.key, ENTRY_PAYLOAD_TYPE, unknown_kind)],
        ),
        refused(422, RefusalCode::Invalid, "unknown kind \"rumour\""),
    ));
    let deep_payload = format!(
        r#"{{"source":"gd-a","seq":6,"prev":"{}","recorded_at":"2018-11-20T01:00:00.000Z","campaign":"2018","record":{}}}"#,
        a.prev,
        nested(5000)
    );
    cases.push((
        "deep nesting inside a signed entry",
        batch_req(
            "gd-a",
            vec![Envelope::sign(
                &a.key,
                ENTRY_PAYLOAD_TYPE,
                deep_payload.into_bytes(),
            )],
        ),
        refused(422, RefusalCode::Invalid, "recursion limit"),
    ));

    // -- chain position -------------------------------------------------------------------
    cases.push((
        "replay of the last batch",
        json_req(serde_json::to_vec(&fx.last_batch).expect("json")),
        Expect {
            status: 200,
            code: None,
            reason: "",
            extra: Extra::SameBody(fx.last_reply_bytes.clone()),
        },
    ));
    cases.push((
        "replay of an earlier batch",
        json_req(serde_json::to_vec(&fx.first_batch).expect("json")),
        Expect {
            status: 200,
            code: None,
            reason: "",
            extra: Extra::SameReceipts(fx.first_reply.receipts.clone()),
        },
    ));
    let mut fork = a.clone();
    fork.next = 3;
    fork.prev = fx.first_batch.entries[1].payload_hash();
    cases.push((
        "equivocation: a different, validly signed seq 3",
        batch_req("gd-a", vec![good(&fork)]),
        Expect {
            status: 409,
            code: Some(RefusalCode::Fork),
            reason: "equivocation",
            extra: Extra::Alarm("gd-a", 3),
        },
    ));
    let mut forged_fork = fx.first_batch.entries[2].clone();
    forged_fork.payload = fork.entry(&rec).to_payload();
    cases.push((
        "forged (unsigned) entry for a held seq raises no alarm",
        batch_req("gd-a", vec![forged_fork]),
        refused(422, RefusalCode::BadSignature, "bad signature by key"),
    ));
    let mut ahead = a.clone();
    ahead.next = 7;
    cases.push((
        "gap: seq 7 when 5 is held",
        batch_req("gd-a", vec![good(&ahead)]),
        Expect {
            extra: Extra::ResendFrom(6),
            ..refused(409, RefusalCode::Gap, "resend from seq 6")
        },
    ));
    let mut six = a.clone();
    let e6 = six.sign_next(&rec);
    let e7 = six.sign_next(&rec);
    cases.push((
        "reordered seqs 7, 6",
        batch_req("gd-a", vec![e7, e6]),
        Expect {
            extra: Extra::ResendFrom(6),
            ..refused(409, RefusalCode::Gap, "the next entry sent is seq 7")
        },
    ));

    // -- the request itself ---------------------------------------------------------------
    cases.push((
        "empty batch",
        batch_req("gd-a", vec![]),
        refused(400, RefusalCode::Invalid, "no entries"),
    ));
    cases.push((
        "1001 entries",
        batch_req("gd-a", vec![good(a); 1001]),
        refused(413, RefusalCode::TooLarge, "at most 1000"),
    ));
    let mut huge = br#"{"source":"gd-a","entries":["#.to_vec();
    huge.resize(MAX_BODY + 1, b' ');
    huge.extend_from_slice(b"]}");
    cases.push((
        "body over MAX_BODY",
        json_req(huge),
        refused(413, RefusalCode::TooLarge, "larger than"),
    ));
    let mut bomb = br#"{"source":"gd-a","entries":["#.to_vec();
    bomb.resize(MAX_BODY * 4, b' ');
    bomb.extend_from_slice(b"]}");
    cases.push((
        "gzip bomb (64 MiB inflated)",
        ingest_req(gzip(&bomb), Some("application/json"), Some("gzip")),
        refused(413, RefusalCode::TooLarge, "larger than"),
    ));
    cases.push((
        "Content-Encoding gzip on bytes that are not gzip",
        ingest_req(
            serde_json::to_vec(&fx.last_batch).expect("json"),
            Some("application/json"),
            Some("gzip"),
        ),
        refused(400, RefusalCode::Invalid, "could not be read"),
    ));
    let full = serde_json::to_vec(&fx.last_batch).expect("json");
    let mut cut_gzip = gzip(&full);
    cut_gzip.truncate(cut_gzip.len() / 2);
    cases.push((
        "gzip stream cut in half",
        ingest_req(cut_gzip, Some("application/json"), Some("gzip")),
        refused(400, RefusalCode::Invalid, "could not be read"),
    ));
    cases.push((
        "truncated JSON",
        json_req(full[..full.len() / 2].to_vec()),
        refused(400, RefusalCode::Invalid, "not an ingest batch"),
    ));
    cases.push((
        "text/plain content type",
        ingest_req(full.clone(), Some("text/plain"), None),
        refused(415, RefusalCode::Invalid, "Content-Type: application/json"),
    ));
    cases.push((
        "no content type",
        ingest_req(full.clone(), None, None),
        refused(415, RefusalCode::Invalid, "Content-Type: application/json"),
    ));
    cases.push((
        "deeply nested body",
        json_req(format!(r#"{{"source":"gd-a","entries":{}}}"#, nested(100_000)).into_bytes()),
        refused(400, RefusalCode::Invalid, "not an ingest batch"),
    ));
    let mut not_utf8 = full.clone();
    let at = not_utf8.len() - 3;
    not_utf8[at] = 0xff;
    cases.push((
        "invalid UTF-8",
        json_req(not_utf8),
        refused(400, RefusalCode::Invalid, "not valid UTF-8"),
    ));
    let mut bad_b64 = serde_json::to_value(&fx.last_batch).expect("json");
    bad_b64["entries"][0]["payload"] = json!("this is *not* base64!");
    cases.push((
        "envelope payload not base64",
        json_req(serde_json::to_vec(&bad_b64).expect("json")),
        refused(400, RefusalCode::Invalid, "invalid base64"),
    ));
    let mut bad_sig_b64 = serde_json::to_value(&fx.last_batch).expect("json");
    bad_sig_b64["entries"][0]["signatures"][0]["sig"] = json!("%%%");
    cases.push((
        "signature not base64",
        json_req(serde_json::to_vec(&bad_sig_b64).expect("json")),
        refused(400, RefusalCode::Invalid, "invalid base64"),
    ));
    cases.push((
        "malformed source id",
        batch_req("GD_A", vec![good(a)]),
        refused(400, RefusalCode::Invalid, "source id \"GD_A\""),
    ));
    let mut extra_field = serde_json::to_value(&fx.last_batch).expect("json");
    extra_field["priority"] = json!("urgent");
    cases.push((
        "unknown field in the batch",
        json_req(serde_json::to_vec(&extra_field).expect("json")),
        refused(400, RefusalCode::Invalid, "unknown field `priority`"),
    ));

    assert!(cases.len() >= 20);
    let n = cases.len();
    for (name, req, want) in cases {
        check(&fx, name, req, want).await;
    }
    eprintln!("{n} hostile requests refused without effect");
}

/// The good path next to the refusals: the next entry is accepted, the receipt verifies
/// with the hub key and names the entry, and a gzip-encoded batch is read the same way.
async fn after_the_refusals_the_next_entries_are_accepted(backend: Backend) {
    let mut fx = fixture(backend).await;
    let before = fx.th.log_size();
    let batch =
        fx.a.batch(&[activity("440100", "2018-11-12", "展示"), withdrawal(3)]);
    let body = serde_json::to_vec(&batch).expect("json");
    let r = fx
        .th
        .send(ingest_req(
            gzip(&body),
            Some("application/json"),
            Some("gzip"),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let resp: IngestResponse = serde_json::from_slice(&r.body).expect("response");
    assert_eq!(resp.held_through, 7);
    for (env, sent) in resp.receipts.iter().zip(&batch.entries) {
        let rc = Receipt::open(env, &hub_key().verifying_key()).expect("receipt verifies");
        assert_eq!(rc.entry_hash, sent.payload_hash());
        assert_eq!(rc.source.as_str(), "gd-a");
        assert_eq!(
            Entry::from_payload(&sent.payload).expect("entry").seq,
            rc.seq
        );
    }
    assert_eq!(fx.th.log_size(), before + 2);
}

backends!(async hostile_ingest_requests_are_refused_and_change_nothing, after_the_refusals_the_next_entries_are_accepted);
