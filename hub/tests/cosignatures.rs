//! Witness cosignatures (issue 16): agents post `cosignature/v1` lines on checkpoints they
//! audited; the hub checks each against the source's key in force and the tree it signed,
//! keeps it (sled and PostgreSQL), and serves it on `/v1/checkpoint` for exactly that
//! checkpoint — a note every verifier that knows only the hub key still opens.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use ed25519_dalek::SigningKey;
use serde_json::json;
use spacesync_shared::clock::Clock as _;
use spacesync_shared::cosign::{self, Cosigner};
use spacesync_shared::merkle::{self, Checkpoint, NoteVerifier};
use spacesync_shared::wire::{self, CosignatureAccepted, PATH_COSIGNATURE};

/// The text (body lines) of a checkpoint note.
fn text(note: &str) -> String {
    note[..=note.find("\n\n").expect("blank line")].to_string()
}

fn witness(a: &Agent) -> Cosigner {
    Cosigner::new(&cosign::witness_name(&a.id), a.key.verifying_key()).expect("cosigner")
}

fn now_secs(th: &TestHub) -> u64 {
    th.clock.now().timestamp() as u64
}

/// `a`'s line over `text` at `ts`, with its own key under its own witness name.
fn line(a: &Agent, text: &str, ts: u64) -> String {
    cosign::cosign(text, &cosign::witness_name(&a.id), &a.key, ts).expect("cosign")
}

/// Posts `checkpoint` + `cosignature` as a request signed by `signer`.
async fn post(th: &TestHub, signer: &Agent, checkpoint: &str, cosignature: &str) -> Reply {
    let body = serde_json::to_vec(&json!({
        "checkpoint": checkpoint,
        "cosignature": cosignature,
    }))
    .expect("json");
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("random");
    let headers = wire::sign_request(
        &signer.key,
        &signer.id,
        "POST",
        PATH_COSIGNATURE,
        th.clock.now(),
        nonce,
        &body,
    );
    let mut req = Request::post(PATH_COSIGNATURE).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    th.send(req.body(Body::from(body)).expect("request")).await
}

fn hub_verifier() -> NoteVerifier {
    NoteVerifier::new(ORIGIN, hub_key().verifying_key()).expect("verifier")
}

/// Two provinces that sent a few entries each.
fn provinces() -> (Agent, Agent) {
    (
        Agent::new("gd-agent", 1, "440000"),
        Agent::new("bj-agent", 2, "110000"),
    )
}

async fn grow(th: &TestHub, a: &mut Agent, n: usize) {
    let region = if a.scope.to_string() == "440000" {
        "440106"
    } else {
        "110105"
    };
    let records: Vec<_> = (0..n)
        .map(|i| activity(region, "2018-11-10", &format!("活动 {i}")))
        .collect();
    th.ingest_ok(&a.batch(&records)).await;
}

/// Cosignatures are kept for their checkpoint, served on it (and not on another), survive
/// a restart, and leave a note that opens with the hub key alone.
async fn cosignatures_are_collected_per_checkpoint(backend: Backend) {
    let dir = store_dir(backend);
    let (mut gd, mut bj) = provinces();
    let old_note;
    let new_note;
    {
        let th = TestHub::open(dir.path());
        th.register(&gd);
        th.register(&bj);
        grow(&th, &mut gd, 3).await;
        old_note = th.get("/v1/checkpoint", None).await.text();
        // A bulletin pins the older size: its lines are kept after newer ones.
        spacesync_hub::bulletin::issue(&th.hub, None, &[]).expect("issue");
        grow(&th, &mut bj, 2).await;
        new_note = th.get("/v1/checkpoint", None).await.text();
        let ts = now_secs(&th);
        // Both cosign the newest; only gd the older (the bulletin's) one.
        for a in [&gd, &bj] {
            let r = post(&th, a, &text(&new_note), &line(a, &text(&new_note), ts)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        let r = post(&th, &gd, &text(&old_note), &line(&gd, &text(&old_note), ts)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let a: CosignatureAccepted = serde_json::from_slice(&r.body).expect("answer");
        let old_size = merkle::open_checkpoint(&old_note, &hub_verifier(), ORIGIN)
            .expect("old")
            .size;
        assert_eq!(
            a,
            CosignatureAccepted {
                size: old_size,
                witnesses: 1
            }
        );
    }
    // Reopened: what was kept is served.
    let th = TestHub::open(dir.path());
    let served = th.get("/v1/checkpoint", None).await.text();
    assert!(served.starts_with(&new_note), "{served}");
    // A verifier that knows only the hub key opens it (other lines are ignored).
    let cp = merkle::open_checkpoint(&served, &hub_verifier(), ORIGIN).expect("opens");
    assert_eq!(cp.size, th.log_size());
    let got = cosign::verify(&served, &[witness(&gd), witness(&bj)]).expect("cosignatures");
    let names: Vec<_> = got.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        names,
        [cosign::witness_name(&gd.id), cosign::witness_name(&bj.id)]
    );
    // The bulletin's checkpoint, asked by size: gd's line only, and the same hub-signed text.
    let old_size = merkle::open_checkpoint(&old_note, &hub_verifier(), ORIGIN)
        .expect("old")
        .size;
    let old_served = th
        .get(&format!("/v1/checkpoint?size={old_size}"), None)
        .await
        .text();
    assert!(old_served.starts_with(&old_note), "{old_served}");
    let got = cosign::verify(&old_served, &[witness(&gd), witness(&bj)]).expect("cosigs");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, cosign::witness_name(&gd.id));
    // Beyond the log: 404.
    let r = th
        .get(&format!("/v1/checkpoint?size={}", th.log_size() + 1), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
}

/// Every cosignature the hub must not keep is refused with its own code, and nothing of
/// it is served.
async fn bad_cosignatures_are_refused_with_a_code(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let (mut gd, bj) = provinces();
    th.register(&gd);
    th.register(&bj);
    let stranger = Agent::new("xx-agent", 9, "440000");
    let revoked = Agent::new("hb-agent", 3, "420000");
    th.register(&revoked);
    th.hub
        .revoke_source(revoked.id.as_str())
        .expect("revoke hb-agent");
    grow(&th, &mut gd, 4).await;
    let note = th.get("/v1/checkpoint", None).await.text();
    let t = text(&note);
    let cp = merkle::open_checkpoint(&note, &hub_verifier(), ORIGIN).expect("opens");
    let ts = now_secs(&th);
    let body_of = |c: &Checkpoint| c.body();
    let larger = body_of(&Checkpoint {
        size: cp.size + 1,
        ..cp.clone()
    });
    let other_origin = body_of(&Checkpoint {
        origin: "another.example/log".into(),
        ..cp.clone()
    });
    let mut forked_root = cp.root;
    forked_root[0] ^= 1;
    let forked = body_of(&Checkpoint {
        root: forked_root,
        ..cp.clone()
    });
    // gd's line with bj's key (under gd's name): not gd's witness key.
    let wrong_key = cosign::cosign(&t, &cosign::witness_name(&gd.id), &bj.key, ts).expect("line");
    // A good line with one signature byte changed.
    let good = line(&gd, &t, ts);
    let mut blob = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        good.rsplit(' ').next().expect("b64"),
    )
    .expect("b64");
    blob[40] ^= 1;
    let flipped = format!(
        "— {} {}",
        cosign::witness_name(&gd.id),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, blob)
    );
    let far = ts - 3600;
    let cases: Vec<(&str, &Agent, String, String, StatusCode, &str)> = vec![
        (
            "a tree larger than the log",
            &gd,
            larger.clone(),
            line(&gd, &larger, ts),
            StatusCode::CONFLICT,
            "unknown_checkpoint",
        ),
        (
            "another log's checkpoint",
            &gd,
            other_origin.clone(),
            line(&gd, &other_origin, ts),
            StatusCode::CONFLICT,
            "unknown_checkpoint",
        ),
        (
            "a root that is not the hub's at that size",
            &gd,
            forked.clone(),
            line(&gd, &forked, ts),
            StatusCode::CONFLICT,
            "wrong_root",
        ),
        (
            "a line by another key",
            &gd,
            t.clone(),
            wrong_key,
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_cosignature",
        ),
        (
            "a signature byte changed",
            &gd,
            t.clone(),
            flipped,
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_cosignature",
        ),
        (
            "another witness's line sent by gd",
            &gd,
            t.clone(),
            line(&bj, &t, ts),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_cosignature",
        ),
        (
            "a line over another checkpoint",
            &gd,
            t.clone(),
            line(&gd, &larger, ts),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_cosignature",
        ),
        (
            "a timestamp an hour from the hub's clock",
            &gd,
            t.clone(),
            line(&gd, &t, far),
            StatusCode::CONFLICT,
            "stale_cosignature",
        ),
        (
            "an unknown source",
            &stranger,
            t.clone(),
            line(&stranger, &t, ts),
            StatusCode::UNAUTHORIZED,
            "unknown_source",
        ),
        (
            "a revoked source",
            &revoked,
            t.clone(),
            line(&revoked, &t, ts),
            StatusCode::FORBIDDEN,
            "revoked_key",
        ),
    ];
    for (what, signer, checkpoint, cosig, status, code) in cases {
        let r = post(&th, signer, &checkpoint, &cosig).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(r.json()["code"], code, "{what}: {}", r.text());
    }
    let served = th.get("/v1/checkpoint", None).await.text();
    assert_eq!(served, note, "nothing refused is served");

    // Accepted once; the same line again (a new request), or an older one, is stale.
    let r = post(&th, &gd, &t, &good).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for (what, l) in [
        ("the same line again", good.clone()),
        ("an older line", line(&gd, &t, ts - 1)),
    ] {
        let r = post(&th, &gd, &t, &l).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{what}: {}", r.text());
        assert_eq!(r.json()["code"], "stale_cosignature", "{what}");
    }
    // A newer one replaces it: one line per witness.
    let newer = line(&gd, &t, ts + 1);
    let r = post(&th, &gd, &t, &newer).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let served = th.get("/v1/checkpoint", None).await.text();
    assert!(
        served.contains(&newer) && !served.contains(&good),
        "{served}"
    );

    // The source list and the dashboard show the last witnessed checkpoint, and that gd
    // once cosigned another tree; bj never cosigned.
    let list = th.get_json("/v1/sources").await;
    let of = |id: &str| {
        list["sources"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["source"] == id).cloned())
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
    };
    let w = &of("gd-agent")["witness"];
    assert_eq!(w["last_size"], cp.size, "{w}");
    assert_eq!(w["last_timestamp"], ts + 1, "{w}");
    assert_eq!(w["wrong_root"]["size"], cp.size, "{w}");
    let w = &of("bj-agent")["witness"];
    assert!(w["last_size"].is_null() && w["wrong_root"].is_null(), "{w}");
    let page = th
        .get("/sources?lang=en", Some(&th.admin.clone()))
        .await
        .text();
    let cell = format!("{} · cosigned another tree of {} entries", cp.size, cp.size);
    assert!(page.contains(&cell), "{page}");
}

/// Cosignatures on two different trees of one size never count for each other: a
/// witness's line moved onto the other tree's note does not verify, and the hub keeps
/// lines only for its own root.
#[test]
fn no_line_counts_for_another_tree_of_the_same_size() {
    let (gd, _) = provinces();
    let mk = |root: [u8; 32]| {
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size: 10,
            root,
        };
        merkle::sign_checkpoint(&cp, ORIGIN, &hub_key()).expect("sign")
    };
    let (a, b) = (mk([1; 32]), mk([2; 32]));
    let on_a = line(&gd, &text(&a), 1_600_000_000);
    let moved = cosign::add(&b, &[on_a]).expect("add");
    assert!(cosign::verify(&moved, &[witness(&gd)]).is_err());
    // And a key that is not the hub's cannot make either note.
    let forged = merkle::sign_checkpoint(
        &merkle::open_checkpoint(&a, &hub_verifier(), ORIGIN).expect("a"),
        ORIGIN,
        &SigningKey::from_bytes(&[7; 32]),
    )
    .expect("sign");
    assert!(merkle::open_checkpoint(&forged, &hub_verifier(), ORIGIN).is_err());
}

/// Issues the next bulletin: its document, checkpoint size and note.
fn issue(th: &TestHub) -> (serde_json::Value, u64, String) {
    let doc = spacesync_hub::bulletin::issue(&th.hub, None, &[]).expect("issue");
    let size = doc["checkpoint"]["size"].as_u64().expect("size");
    let note = doc["checkpoint"]["note"]
        .as_str()
        .expect("note")
        .to_string();
    (doc, size, note)
}

/// A hub on the 2018 campaign narrowed to three units (Beijing, Hubei, Guangdong) with a
/// quorum of 2, the smallest strict majority of three.
fn quorum_two(dir: &std::path::Path) -> TestHub {
    TestHub::open_with(dir, t0(), three_units(2))
}

/// The 2018 campaign narrowed to Beijing, Hubei and Guangdong, with `quorum`.
fn three_units(quorum: u32) -> spacesync_shared::Campaign {
    let text = spacesync_shared::campaign::CAMPAIGN_2018_TOML
        .replace("witness_quorum = 17", &format!("witness_quorum = {quorum}"));
    let start = text.find("[units]").expect("units");
    let text = format!(
        "{}[units]\ncodes = [\"110000\", \"420000\", \"440000\"]\n",
        &text[..start]
    );
    spacesync_shared::Campaign::from_toml(&text).expect("campaign")
}

async fn get_text(th: &TestHub, path: &str) -> String {
    let r = th.get(path, Some(&th.admin.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
    r.text()
}

/// A bulletin names its checkpoint; the hub asks for it to be cosigned until the quorum is
/// there (also once the log has grown past it); the bulletin says in words whether it is
/// witnessed; the count against the registry as of the checkpoint survives a later
/// revocation.
async fn bulletins_are_pinned_to_a_witnessed_checkpoint(backend: Backend) {
    let dir = store_dir(backend);
    let th = quorum_two(dir.path());
    let (mut gd, bj) = provinces();
    let hb = Agent::new("hb-agent", 3, "420000");
    for a in [&gd, &bj, &hb] {
        th.register(a);
    }
    grow(&th, &mut gd, 3).await;
    let (doc, size, note) = issue(&th);
    assert_eq!(size, th.log_size());
    let wanted = |th: &TestHub| {
        spacesync_hub::witness::wanted(&th.hub)
            .expect("wanted")
            .sizes
    };
    assert_eq!(wanted(&th), [size]);
    let r = th.get("/v1/cosignature/wanted", None).await;
    assert_eq!(r.json()["sizes"], json!([size]), "{}", r.text());
    let html = get_text(&th, "/v1/bulletins/1.html?lang=en").await;
    assert!(
        html.contains(
            "Log checkpoint not yet witnessed: 0 of 3 provincial units have cosigned it, short of the quorum of 2"
        ),
        "{html}"
    );

    // gd cosigns it; the log grows; bj cosigns the bulletin's (now older) checkpoint.
    let ts = now_secs(&th);
    let r = post(&th, &gd, &text(&note), &line(&gd, &text(&note), ts)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(wanted(&th), [size], "one of two");
    grow(&th, &mut gd, 2).await;
    let served = th
        .get(&format!("/v1/checkpoint?size={size}"), None)
        .await
        .text();
    assert!(served.starts_with(&note), "{served}");
    let r = post(&th, &bj, &text(&served), &line(&bj, &text(&served), ts)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(wanted(&th).is_empty(), "the quorum is there");

    let html = get_text(&th, "/v1/bulletins/1.html?lang=en").await;
    assert!(
        html.contains("Log checkpoint witnessed by 2 of 3 provincial units (quorum 2)"),
        "{html}"
    );
    let md = get_text(&th, "/v1/bulletins/1.md").await;
    assert!(
        md.contains("日志检查点已由3个省级单位中的2个见证联署（法定数2）"),
        "{md}"
    );
    let list = th.get_json("/v1/bulletins").await;
    assert_eq!(
        list["bulletins"][0]["witnessed"],
        json!({"size": size, "witnesses": ["bj-agent", "gd-agent"], "units": ["110000", "440000"], "of": 3, "quorum": 2})
    );
    // The signed document is unchanged by its cosignatures.
    let stored = spacesync_hub::bulletin::get(th.hub.store.as_ref(), 1).expect("get");
    assert_eq!(stored, doc);

    // Against the registry as of the checkpoint: bj counts even after it is revoked.
    th.hub.revoke_source(bj.id.as_str()).expect("revoke");
    let w = as_of(&th, size, &note).expect("status");
    assert_eq!(w.witnesses, ["bj-agent", "gd-agent"]);
    assert_eq!((w.of, w.reached()), (3, true));
}

/// The hub keeps each source's line for the newest checkpoint it cosigned and every line
/// for a bulletin's checkpoint, nothing else: a line for an older size is deleted when the
/// source's next one arrives, unless a bulletin pinned that size; an older unpinned size is
/// refused; `prune` pins the bulletins of a store from before pins and clears what such a
/// store kept.
async fn cosignatures_are_kept_for_the_newest_and_for_bulletins_only(backend: Backend) {
    use spacesync_hub::witness::{collected, prune};
    let dir = store_dir(backend);
    let th = quorum_two(dir.path());
    let (mut gd, bj) = provinces();
    th.register(&gd);
    th.register(&bj);
    let ts = now_secs(&th);
    let cosign = async |th: &TestHub, a: &Agent| {
        let note = th.get("/v1/checkpoint", None).await.text();
        let r = post(th, a, &text(&note), &line(a, &text(&note), ts)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        th.log_size()
    };
    let held = |size: u64| -> Vec<String> {
        collected(th.hub.store.as_ref(), size)
            .expect("collected")
            .into_keys()
            .map(|s| s.to_string())
            .collect()
    };
    grow(&th, &mut gd, 2).await;
    let s1 = cosign(&th, &gd).await;
    let s1_note = th.get("/v1/checkpoint", None).await.text();
    grow(&th, &mut gd, 2).await;
    let s2 = cosign(&th, &gd).await;
    assert_eq!((held(s1), held(s2)), (vec![], vec!["gd-agent".to_string()]));
    // A bulletin pins its size: gd's line for it outlives gd's next one.
    grow(&th, &mut gd, 1).await;
    spacesync_hub::bulletin::issue(&th.hub, None, &[]).expect("issue");
    let s3 = cosign(&th, &gd).await;
    let s3_bj = cosign(&th, &bj).await;
    assert_eq!(s3, s3_bj);
    grow(&th, &mut gd, 1).await;
    let s4 = cosign(&th, &gd).await;
    let _ = cosign(&th, &bj).await;
    assert_eq!(held(s3), ["bj-agent", "gd-agent"]);
    assert_eq!(held(s4), ["bj-agent", "gd-agent"]);
    // An older size no bulletin pinned is refused, and nothing is kept for it.
    let r = post(
        &th,
        &gd,
        &text(&s1_note),
        &line(&gd, &text(&s1_note), ts + 1),
    )
    .await;
    assert_eq!(r.json()["code"], "stale_cosignature", "{}", r.text());
    assert!(held(s1).is_empty());

    // A store from before pins: no pin for the bulletin, and gd's old line for s1 kept.
    let mut b = spacesync_hub::store::WriteBatch::new();
    b.delete(spacesync_hub::bulletin::pin_key(s3));
    let old_line =
        json!({"line": line(&gd, &text(&s1_note), ts), "timestamp": ts, "key": gd.key_line()});
    b.put(
        [b"cos/".as_slice(), &s1.to_be_bytes(), b"gd-agent"].concat(),
        serde_json::to_vec(&old_line).expect("json"),
    );
    th.hub.store.apply(b).expect("apply");
    assert_eq!(held(s1), ["gd-agent"]);
    assert_eq!(prune(th.hub.store.as_ref()).expect("prune"), 1);
    assert!(held(s1).is_empty());
    assert_eq!(
        held(s3),
        ["bj-agent", "gd-agent"],
        "the bulletin's lines stay"
    );
    assert_eq!(prune(th.hub.store.as_ref()).expect("prune again"), 0);
    // The pin is back: gd's next line does not take its s3 line away.
    grow(&th, &mut gd, 1).await;
    let _ = cosign(&th, &gd).await;
    assert_eq!(held(s3), ["bj-agent", "gd-agent"]);
}

/// Two halves of the units cannot both be a quorum: a campaign file asking for half (or
/// fewer) is refused, so a hub that shows one tree to half the provinces and another to
/// the rest never gets both witnessed (outside review, session 9: 16 of 32 could).
async fn a_quorum_of_half_the_units_is_refused(_backend: Backend) {
    let text = spacesync_shared::campaign::CAMPAIGN_2018_TOML
        .replace("witness_quorum = 17", "witness_quorum = 16");
    let e = spacesync_shared::Campaign::from_toml(&text).expect_err("half is no quorum");
    assert!(
        e.to_string().contains("more than half of the 32 units"),
        "{e}"
    );
    assert_eq!(
        spacesync_shared::Campaign::builtin_2018().witness_quorum,
        17
    );
    let start = text.find("[units]").expect("units");
    let four = format!(
        "{}[units]\ncodes = [\"110000\", \"120000\", \"420000\", \"440000\"]\n",
        &text[..start].replace("witness_quorum = 16", "witness_quorum = 2")
    );
    assert!(
        spacesync_shared::Campaign::from_toml(&four).is_err(),
        "2 of 4"
    );
    let three = three_units(2);
    assert_eq!((three.units.len(), three.witness_quorum), (3, 2));
}

/// More than a note's worth of witnesses: once 100 sources cosigned one size, the served
/// checkpoint still opens (at most 99 lines, each unit's first) and the bulletin's quorum
/// is still counted from every stored line (outside review, session 9: the hub answered
/// 400 and every agent's audit stopped).
async fn the_checkpoint_stays_readable_with_a_hundred_witnesses(backend: Backend) {
    let dir = store_dir(backend);
    let th = quorum_two(dir.path());
    let units: Vec<String> = th
        .hub
        .campaign
        .units
        .iter()
        .map(|u| u.to_string())
        .collect();
    let agents: Vec<Agent> = (0..100u8)
        .map(|i| Agent::new(&format!("w-{i}"), i + 1, &units[i as usize % units.len()]))
        .collect();
    for a in &agents {
        th.register(a);
    }
    let (_, size, note) = issue(&th);
    let ts = now_secs(&th);
    for a in &agents {
        let r = post(&th, a, &text(&note), &line(a, &text(&note), ts)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let r = th.get("/v1/checkpoint", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let served = r.text();
    merkle::open_checkpoint(&served, &hub_verifier(), ORIGIN).expect("the note opens");
    let all: Vec<Cosigner> = agents.iter().map(witness).collect();
    let got = cosign::verify(&served, &all).expect("cosignatures");
    assert_eq!(got.len(), spacesync_hub::witness::MAX_LINES);
    let w = as_of(&th, size, &note).expect("status");
    assert_eq!((w.witnesses.len(), w.units.len()), (100, 3));
    let list = th.get_json("/v1/bulletins").await;
    assert_eq!(
        list["bulletins"][0]["witnessed"]["units"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

/// `bulletin verify`'s count: the registry replayed to the checkpoint for who could
/// witness, today's registry (the whole log) for their keys.
fn as_of(
    th: &TestHub,
    size: u64,
    note: &str,
) -> Result<spacesync_hub::assessment::WitnessStatus, spacesync_hub::witness::WitnessError> {
    let registry = spacesync_hub::registry::load_all(th.hub.store.as_ref()).expect("registry");
    spacesync_hub::witness::status_as_of(
        th.hub.store.as_ref(),
        &registry,
        &th.hub.campaign,
        size,
        note,
    )
}

/// The quorum counts provincial units, not sources: sources a hub operator registers in a
/// unit beside the province's own agent neither witness that unit without it nor count
/// twice with it.
async fn the_quorum_counts_units_not_sources(backend: Backend) {
    let dir = store_dir(backend);
    let th = quorum_two(dir.path());
    let (mut gd, _) = provinces();
    let puppets = [
        Agent::new("gd-extra-1", 11, "440000"),
        Agent::new("gd-extra-2", 12, "440100"),
    ];
    th.register(&gd);
    for p in &puppets {
        th.register(p);
    }
    grow(&th, &mut gd, 2).await;
    let (_, size, note) = issue(&th);
    let ts = now_secs(&th);
    for p in &puppets {
        let r = post(&th, p, &text(&note), &line(p, &text(&note), ts)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // Two sources cosigned, both in Guangdong, without Guangdong's own agent: no unit.
    let w = as_of(&th, size, &note).expect("status");
    assert_eq!(w.witnesses, ["gd-extra-1", "gd-extra-2"]);
    assert!(w.units.is_empty(), "{w:?}");
    assert!(!w.reached());
    assert_eq!(
        spacesync_hub::witness::wanted(&th.hub)
            .expect("wanted")
            .sizes,
        [size],
        "still wanted"
    );
    // With it, Guangdong counts once: one unit of the quorum of two.
    let r = post(&th, &gd, &text(&note), &line(&gd, &text(&note), ts)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let w = as_of(&th, size, &note).expect("status");
    assert_eq!(
        (w.witnesses.len(), w.units.clone()),
        (3, vec!["440000".to_string()])
    );
    assert!(!w.reached());
    let list = th.get_json("/v1/bulletins").await;
    assert_eq!(
        list["bulletins"][0]["witnessed"]["units"],
        json!(["440000"])
    );
    assert_eq!(
        spacesync_hub::witness::wanted(&th.hub)
            .expect("wanted")
            .sizes,
        [size]
    );
}

/// A cosignature made after a rotation, with the new key, of a checkpoint from before it
/// counts the same in the bulletin list (today's registry) and in `bulletin verify` (the
/// registry as of the checkpoint, keys from the whole log).
async fn a_cosignature_with_a_key_rotated_in_later_counts_in_both_readings(backend: Backend) {
    let dir = store_dir(backend);
    let th = quorum_two(dir.path());
    let (mut gd, bj) = provinces();
    th.register(&gd);
    th.register(&bj);
    grow(&th, &mut gd, 2).await;
    let (_, size, note) = issue(&th);
    let ts = now_secs(&th);
    let r = post(&th, &gd, &text(&note), &line(&gd, &text(&note), ts)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // bj's key is replaced (a lost key); bj cosigns the old checkpoint with the new one.
    let bj2 = Agent::new("bj-agent", 22, "110000");
    th.hub
        .rotate_source("bj-agent", &bj2.key_line(), None)
        .expect("rotate");
    let served = th
        .get(&format!("/v1/checkpoint?size={size}"), None)
        .await
        .text();
    let r = post(&th, &bj2, &text(&served), &line(&bj2, &text(&served), ts)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = th.get_json("/v1/bulletins").await;
    assert_eq!(
        list["bulletins"][0]["witnessed"]["units"],
        json!(["110000", "440000"])
    );
    let w = as_of(&th, size, &note).expect("status");
    assert_eq!(w.units, ["110000", "440000"]);
    assert!(w.reached());
}

/// A forking hub shows two agents two different trees of one size: each cosigns what it
/// saw. The lines for one tree never count for the other — the honest hub refuses the
/// other's line (`wrong_root`), and a hub that stores it anyway gets a bulletin whose
/// cosignatures do not verify, never a quorum.
async fn no_quorum_for_two_trees_of_one_size(backend: Backend) {
    let (da, db) = (store_dir(backend), store_dir(backend));
    let (ta, tb) = (quorum_two(da.path()), quorum_two(db.path()));
    let (gd, bj) = provinces();
    let (mut gd_a, mut gd_b) = (gd.clone(), gd.clone());
    for th in [&ta, &tb] {
        th.register(&gd);
        th.register(&bj);
    }
    // Same size, different entries: the fork.
    grow(&ta, &mut gd_a, 3).await;
    let records: Vec<_> = (0..3)
        .map(|i| activity("440106", "2018-11-11", &format!("另一棵树 {i}")))
        .collect();
    tb.ingest_ok(&gd_b.batch(&records)).await;
    let (na, nb) = (
        ta.get("/v1/checkpoint", None).await.text(),
        tb.get("/v1/checkpoint", None).await.text(),
    );
    assert_eq!(ta.log_size(), tb.log_size());
    assert_ne!(text(&na), text(&nb));
    let (_, size, _) = issue(&ta);
    let ts = now_secs(&ta);
    // gd saw tree A, bj saw tree B.
    let r = post(&ta, &gd, &text(&na), &line(&gd, &text(&na), ts)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let bj_on_b = line(&bj, &text(&nb), ts);
    let r = post(&ta, &bj, &text(&nb), &bj_on_b).await;
    assert_eq!(r.json()["code"], "wrong_root", "{}", r.text());
    let r = post(&ta, &bj, &text(&na), &bj_on_b).await;
    assert_eq!(r.json()["code"], "bad_cosignature", "{}", r.text());
    let w = as_of(&ta, size, &na).expect("status");
    assert_eq!((w.witnesses.len(), w.reached()), (1, false));
    // A lying hub keeps bj's line for tree B under tree A's size anyway.
    let mut b = spacesync_hub::store::WriteBatch::new();
    let key = [
        b"cos/".as_slice(),
        &size.to_be_bytes(),
        bj.id.as_str().as_bytes(),
    ]
    .concat();
    b.put(
        key,
        serde_json::to_vec(&json!({"line": bj_on_b, "timestamp": ts, "key": bj.key_line()}))
            .expect("json"),
    );
    ta.hub.store.apply(b).expect("apply");
    let e = as_of(&ta, size, &na).expect_err("a line for the other tree");
    assert!(e.to_string().contains("spacesync-witness/bj-agent"), "{e}");
}

/// Posts `body` to `/v1/agent/log-alarm`, signed with `key` for source `id` (no headers
/// at all when `key` is `None`).
async fn post_alarm(th: &TestHub, key: Option<&SigningKey>, id: &str, body: Vec<u8>) -> Reply {
    let mut req =
        Request::post(wire::PATH_AGENT_LOG_ALARM).header("content-type", "application/json");
    if let Some(key) = key {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("random");
        let id = spacesync_shared::SourceId::parse(id).expect("source id");
        let headers = wire::sign_request(
            key,
            &id,
            "POST",
            wire::PATH_AGENT_LOG_ALARM,
            th.clock.now(),
            nonce,
            &body,
        );
        for (k, v) in headers {
            req = req.header(k, v);
        }
    }
    th.send(req.body(Body::from(body)).expect("request")).await
}

fn alarm_body(code: &str, detected: &str, cleared: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "code": code,
        "detected": detected,
        "at": "2018-11-20T01:00:00Z",
        "cleared": cleared,
    }))
    .expect("json")
}

/// Issue 16: the dashboard and `/v1/sources` show each province's log alarm. A report
/// signed by the source is kept (with the agent's time and the hub's) and shown in
/// `/v1/sources`, on the sources page (escaped: the text is the agent's) and in the
/// metrics; a request not signed by that source, too large or malformed changes nothing;
/// a cleared report removes it.
async fn log_alarm_reports_are_kept_shown_and_cleared(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let (gd, bj) = provinces();
    th.register(&gd);
    th.register(&bj);
    let text = "fork (the hub's log does not extend the one it showed before <b>\"x\"</b>)";
    let r = post_alarm(
        &th,
        Some(&gd.key),
        "gd-agent",
        alarm_body("fork", text, false),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());

    let shown = |list: &serde_json::Value, id: &str| {
        list["sources"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["source"] == id).cloned())
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))["witness"]["log_alarm"]
            .clone()
    };
    let list = th.get_json("/v1/sources").await;
    let a = shown(&list, "gd-agent");
    assert_eq!(a["code"], "fork", "{a}");
    assert_eq!(a["detected"], text, "{a}");
    assert_eq!(a["at"], "2018-11-20T01:00:00Z", "{a}");
    assert_eq!(
        a["received_at"],
        serde_json::to_value(th.clock.now()).expect("json"),
        "{a}"
    );
    assert!(shown(&list, "bj-agent").is_null(), "{list}");
    let page = th
        .get("/sources?lang=en", Some(&th.admin.clone()))
        .await
        .text();
    assert!(
        page.contains(
            "<span class=\"warn\" data-field=\"log_alarm\" title=\"fork (the hub&#39;s log does not extend the one it showed before &lt;b&gt;&quot;x&quot;&lt;/b&gt;)\">log alarm: fork</span>"
        ) || page.contains(
            "<span class=\"warn\" data-field=\"log_alarm\" title=\"fork (the hub's log does not extend the one it showed before &lt;b&gt;&quot;x&quot;&lt;/b&gt;)\">log alarm: fork</span>"
        ),
        "{page}"
    );
    assert!(!page.contains("<b>"), "the agent's text is escaped: {page}");
    let zh = th.get("/sources", Some(&th.admin.clone())).await.text();
    assert!(zh.contains("日志审计告警：fork"), "{zh}");
    let metrics = th.get("/metrics", Some(&th.admin.clone())).await.text();
    assert!(
        metrics.contains("\nspacesync_hub_sources_log_alarm 1\n"),
        "{metrics}"
    );

    // Refused, and nothing stored: each would replace gd's alarm.
    let long_code = "a".repeat(wire::MAX_LOG_ALARM_CODE + 1);
    let long_text = "x".repeat(wire::MAX_LOG_ALARM_TEXT + 1);
    let huge = "x".repeat(40_000);
    let cases: Vec<(&str, Option<&SigningKey>, Vec<u8>, StatusCode)> = vec![
        (
            "unsigned",
            None,
            alarm_body("rollback", "r", false),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "signed by another source's key",
            Some(&bj.key),
            alarm_body("rollback", "r", false),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "a cleared report signed by another source's key",
            Some(&bj.key),
            alarm_body("fork", "", true),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "not JSON",
            Some(&gd.key),
            b"fork".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an unknown field",
            Some(&gd.key),
            serde_json::to_vec(&json!({"code": "rollback", "detected": "r",
                "at": "2018-11-20T01:00:00Z", "cleared": false, "evil": 1}))
            .expect("json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a field missing",
            Some(&gd.key),
            serde_json::to_vec(&json!({"code": "rollback", "detected": "r", "cleared": false}))
                .expect("json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a code with markup",
            Some(&gd.key),
            alarm_body("<b>", "r", false),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an empty code",
            Some(&gd.key),
            alarm_body("", "r", false),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a code too long",
            Some(&gd.key),
            alarm_body(&long_code, "r", false),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a text too long",
            Some(&gd.key),
            alarm_body("rollback", &long_text, false),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a body too large",
            Some(&gd.key),
            alarm_body("rollback", &huge, false),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (what, key, body, status) in cases {
        let r = post_alarm(&th, key, "gd-agent", body).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let now = shown(&th.get_json("/v1/sources").await, "gd-agent");
        assert_eq!(now, a, "{what}: stored");
    }

    // Cleared by gd's operator: gone from the list, the page and the metric.
    th.clock.set(th.clock.now() + chrono::TimeDelta::minutes(5));
    let r = post_alarm(
        &th,
        Some(&gd.key),
        "gd-agent",
        alarm_body("fork", text, true),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let list = th.get_json("/v1/sources").await;
    assert!(shown(&list, "gd-agent").is_null(), "{list}");
    let w = &list["sources"][1]["witness"];
    assert_eq!(
        w["log_alarm_cleared_at"],
        serde_json::to_value(th.clock.now()).expect("json"),
        "{list}"
    );
    let page = th
        .get("/sources?lang=en", Some(&th.admin.clone()))
        .await
        .text();
    assert!(!page.contains("log alarm"), "{page}");
    let metrics = th.get("/metrics", Some(&th.admin.clone())).await.text();
    assert!(
        metrics.contains("\nspacesync_hub_sources_log_alarm 0\n"),
        "{metrics}"
    );
}

backends!(
    async log_alarm_reports_are_kept_shown_and_cleared,
    cosignatures_are_collected_per_checkpoint,
    bad_cosignatures_are_refused_with_a_code,
    bulletins_are_pinned_to_a_witnessed_checkpoint,
    no_quorum_for_two_trees_of_one_size,
    a_quorum_of_half_the_units_is_refused,
    the_checkpoint_stays_readable_with_a_hundred_witnesses,
    the_quorum_counts_units_not_sources,
    a_cosignature_with_a_key_rotated_in_later_counts_in_both_readings,
    cosignatures_are_kept_for_the_newest_and_for_bulletins_only
);
