//! The admin API (`/v1/admin/…`) and enrolment (`/v1/enrol`) on a live hub, through the
//! router: admin tokens only; registry changes and extensions land as hub-signed log
//! entries; tokens are created, listed (role, last use) and revoked (then refused);
//! refusals read exactly as on a stopped store (one code path); an enrolment code works
//! once, for one key, until it expires.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Duration;
use common::*;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use spacesync_hub::admin;
use spacesync_hub::auth::Role;
use spacesync_shared::admin::{self as wire, EnrolCode, Extend};

fn post(path: &str, token: Option<&str>, body: &Value) -> Request<Body> {
    post_raw(path, token, serde_json::to_vec(body).expect("json"))
}

fn post_raw(path: &str, token: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(body)).expect("request")
}

async fn admin_calls_need_an_admin_token(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let ministry = th.token(Role::Ministry);
    let calls: Vec<(bool, &str, Value)> = vec![
        (false, wire::PATH_SOURCES, Value::Null),
        (
            true,
            wire::PATH_SOURCES,
            json!({"source": "x-a", "scope": "440000", "key": "k"}),
        ),
        (true, wire::PATH_SOURCES_REVOKE, json!({"source": "x-a"})),
        (
            true,
            wire::PATH_SOURCES_ROTATE,
            json!({"source": "x-a", "key": "k"}),
        ),
        (false, wire::PATH_TOKENS, Value::Null),
        (true, wire::PATH_TOKENS, json!({"role": "admin"})),
        (true, wire::PATH_TOKENS_REVOKE, json!({"token": th.admin})),
        (true, wire::PATH_EXTENSIONS, json!({})),
        (false, wire::PATH_NOTICE_RULES, Value::Null),
        (
            true,
            wire::PATH_NOTICE_RULES,
            json!({"setting": "behind", "value": "0.7"}),
        ),
        (true, wire::PATH_BULLETINS_ISSUE, json!({})),
        (true, wire::PATH_INVITES, json!({})),
    ];
    let size = th.log_size();
    for (is_post, path, body) in &calls {
        for (who, want) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("sst_bogus"), StatusCode::UNAUTHORIZED),
            (Some(ministry.as_str()), StatusCode::FORBIDDEN),
        ] {
            let r = if *is_post {
                th.send(post(path, who, body)).await
            } else {
                th.get(path, who).await
            };
            assert_eq!(r.status, want, "{path} as {who:?}: {}", r.text());
            assert!(r.json()["error"].is_string(), "{path}: {}", r.text());
        }
    }
    // Nothing was changed by the refused calls: the admin token still works.
    assert_eq!(th.log_size(), size);
    let r = th.get(wire::PATH_TOKENS, Some(&th.admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

async fn the_api_changes_what_the_stopped_store_commands_change(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let admin_token = th.admin.clone();
    let a = Some(admin_token.as_str());
    let gd = Agent::new("gd-a", 1, "440000");

    // Sources: add, list, rotate, revoke; each registry change is one hub-signed leaf.
    let size = th.log_size();
    let r = th
        .send(post(
            wire::PATH_SOURCES,
            a,
            &json!({"source": "gd-a", "scope": "440000", "key": gd.key_line()}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["keys"][0]["key"], json!(gd.key_line()));
    assert_eq!(th.log_size(), size + 1);
    let list = th.get_json(wire::PATH_SOURCES).await;
    assert_eq!(list["sources"][0]["id"], "gd-a");
    assert_eq!(list["sources"][0]["status"], "active");
    // Refusals name the problem, with the status that fits, as on a stopped store.
    let again = th
        .send(post(
            wire::PATH_SOURCES,
            a,
            &json!({"source": "gd-a", "scope": "440000", "key": gd.key_line()}),
        ))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text());
    assert!(
        again.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("already registered"))
    );
    let bad_scope = th
        .send(post(
            wire::PATH_SOURCES,
            a,
            &json!({"source": "gd-b", "scope": "44", "key": gd.key_line()}),
        ))
        .await;
    assert_eq!(
        bad_scope.status,
        StatusCode::BAD_REQUEST,
        "{}",
        bad_scope.text()
    );
    let new_key = Agent::new("gd-a", 9, "440000");
    let r = th
        .send(post(
            wire::PATH_SOURCES_ROTATE,
            a,
            &json!({"source": "gd-a", "key": new_key.key_line(), "from_seq": 5}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["keys"][1]["from_seq"], 5);
    assert_eq!(th.log_size(), size + 2);
    let r = th
        .send(post(
            wire::PATH_SOURCES_REVOKE,
            a,
            &json!({"source": "gd-a"}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");
    assert_eq!(th.log_size(), size + 3);
    let unknown = th
        .send(post(
            wire::PATH_SOURCES_REVOKE,
            a,
            &json!({"source": "nope"}),
        ))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());

    // Tokens: create (the token works), list (role, last use), revoke (refused after).
    let r = th
        .send(post(
            wire::PATH_TOKENS,
            a,
            &json!({"role": "ministry", "label": "analyst"}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let made = r.json();
    let token = made["token"].as_str().expect("token").to_string();
    let id = made["id"].as_str().expect("id").to_string();
    assert_eq!(
        th.get("/v1/progress", Some(&token)).await.status,
        StatusCode::OK
    );
    let list = th.get_json(wire::PATH_TOKENS).await;
    let mine = list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["id"] == json!(id))
        .expect("the new token is listed")
        .clone();
    assert_eq!(mine["role"], "ministry");
    assert_eq!(mine["label"], "analyst");
    assert_eq!(mine["last_used_at"], json!(t0()), "{mine}");
    assert!(!list.to_string().contains(&token), "a listed token: {list}");
    let r = th
        .send(post(wire::PATH_TOKENS_REVOKE, a, &json!({"token": id})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        th.get("/v1/progress", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let bad_role = th
        .send(post(wire::PATH_TOKENS, a, &json!({"role": "root"})))
        .await;
    assert_eq!(bad_role.status, StatusCode::BAD_REQUEST);

    // An extension is a hub-signed leaf; a bad one is refused in the stopped store's words.
    let size = th.log_size();
    let ext = json!({"region": "440000", "milestone": "implementation_plan",
                     "until": "2018-11-30", "reason": "flood"});
    let r = th.send(post(wire::PATH_EXTENSIONS, a, &ext)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["log_index"], json!(size));
    assert_eq!(th.log_size(), size + 1);
    let wrong = Extend {
        region: "440000".into(),
        milestone: "no_such_milestone".into(),
        until: chrono::NaiveDate::from_ymd_opt(2018, 11, 30).expect("date"),
        reason: "flood".into(),
    };
    let r = th
        .send(post(
            wire::PATH_EXTENSIONS,
            a,
            &serde_json::to_value(&wrong).expect("json"),
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let offline = admin::extend(&th.hub, &wrong).expect_err("refused");
    assert_eq!(r.json()["error"], json!(offline.to_string()));
    assert_eq!(th.log_size(), size + 1);

    // Bulletins are numbered from 1 and show the extension.
    for n in 1..=2 {
        let r = th
            .send(post(wire::PATH_BULLETINS_ISSUE, a, &json!({})))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["number"], n);
    }
    let doc = th.get_json("/v1/bulletins/2.json").await;
    assert!(
        doc.to_string().contains("2018-11-30"),
        "extension not shown"
    );

    // Unknown fields, duplicate keys and oversized bodies are refused in the one shape.
    for body in [
        br#"{"role": "admin", "extra": 1}"#.to_vec(),
        br#"{"role": "admin", "role": "ministry"}"#.to_vec(),
        vec![b' '; wire::MAX_ADMIN_BODY + 1],
    ] {
        let r = th.send(post_raw(wire::PATH_TOKENS, a, body)).await;
        assert!(r.status.is_client_error(), "{}", r.status);
        assert!(r.json()["error"].is_string());
    }
}

async fn an_enrolment_code_works_once_for_one_key_until_it_expires(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let admin_token = th.admin.clone();
    let a = Some(admin_token.as_str());
    let invite = |source: &str, secs: u64| {
        post(
            wire::PATH_INVITES,
            a,
            &json!({"source": source, "scope": "440000", "expires_in_secs": secs}),
        )
    };
    let r = th.send(invite("gd-new", 3600)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let inv = r.json();
    let code = EnrolCode {
        hub: "http://hub.invalid".into(),
        hub_key: inv["hub_key"].as_str().expect("hub key").into(),
        secret: inv["secret"].as_str().expect("secret").into(),
    };
    assert_eq!(
        code.hub_key,
        spacesync_shared::keys::public_key_line(&hub_key().verifying_key())
    );
    // The store holds only the secret's hash.
    let raw: Vec<u8> = th
        .hub
        .store
        .scan(b"")
        .flat_map(|r| {
            let (k, v) = r.expect("scan");
            [k, v]
        })
        .flatten()
        .collect();
    assert!(
        !raw.windows(code.secret.len())
            .any(|w| w == code.secret.as_bytes()),
        "the secret is stored"
    );

    let key = SigningKey::from_bytes(&[77; 32]);
    let req = wire::enrol_request(&code, &key);
    let body = serde_json::to_value(&req).expect("json");
    // A forged proof (signed by another key) is refused and changes nothing.
    let mut forged = req.clone();
    forged.key =
        spacesync_shared::keys::public_key_line(&SigningKey::from_bytes(&[78; 32]).verifying_key());
    let r = th
        .send(post(
            wire::PATH_ENROL,
            None,
            &serde_json::to_value(&forged).expect("json"),
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let size = th.log_size();
    let r = th.send(post(wire::PATH_ENROL, None, &body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["source"], "gd-new");
    assert_eq!(th.log_size(), size + 1, "one hub-signed registry entry");
    let reg = th.hub.snapshot().registry.clone();
    let rec = reg
        .get(&spacesync_shared::SourceId::parse("gd-new").expect("id"))
        .expect("registered");
    assert_eq!(
        rec.current_key(),
        Some(spacesync_shared::keys::public_key_line(&key.verifying_key()).as_str())
    );
    // The same agent again (a lost answer): the same answer, nothing new logged.
    let r = th.send(post(wire::PATH_ENROL, None, &body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(th.log_size(), size + 1);
    // Another key with the used code: refused.
    let other = wire::enrol_request(&code, &SigningKey::from_bytes(&[79; 32]));
    let r = th
        .send(post(
            wire::PATH_ENROL,
            None,
            &serde_json::to_value(&other).expect("json"),
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.text().contains("agents invite"));
    // A code never issued: refused.
    let mut unknown = code.clone();
    unknown.secret = "0".repeat(64);
    let r = th
        .send(post(
            wire::PATH_ENROL,
            None,
            &serde_json::to_value(wire::enrol_request(&unknown, &key)).expect("json"),
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    // Expiry follows the hub clock.
    let r = th.send(invite("gd-late", 60)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let late = EnrolCode {
        secret: r.json()["secret"].as_str().expect("secret").into(),
        ..code.clone()
    };
    th.clock.set(t0() + Duration::seconds(61));
    let r = th
        .send(post(
            wire::PATH_ENROL,
            None,
            &serde_json::to_value(wire::enrol_request(
                &late,
                &SigningKey::from_bytes(&[80; 32]),
            ))
            .expect("json"),
        ))
        .await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.text());
    // An invitation for a registered source, or valid too long, is refused.
    assert_eq!(
        th.send(invite("gd-new", 60)).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        th.send(invite("gd-x", 31 * 86_400)).await.status,
        StatusCode::BAD_REQUEST
    );
}

/// Made-up codes from one address are refused and spend its allowance; once it is spent,
/// every enrolment from that address is answered 429 before any work — even one with a
/// real code (review finding 4: refused attempts queued on the enrolment lock and the
/// blocking pool) — while another address still enrols.
async fn made_up_codes_spend_the_address_allowance_before_any_work(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let from = |req: Request<Body>, last: u8| {
        let mut req = req;
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [203, 0, 113, last],
                40000,
            ))));
        req
    };
    let r = th
        .send(post(
            wire::PATH_INVITES,
            Some(th.admin.as_str()),
            &json!({"source": "gd-new", "scope": "440000", "expires_in_secs": 3600}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let code = EnrolCode {
        hub: "http://127.0.0.1:9".into(),
        hub_key: r.json()["hub_key"].as_str().expect("hub key").into(),
        secret: r.json()["secret"].as_str().expect("secret").into(),
    };
    let key = SigningKey::from_bytes(&[90; 32]);
    let made_up = EnrolCode {
        secret: "1".repeat(64),
        ..code.clone()
    };
    let mut refused = 0;
    loop {
        let req = post(
            wire::PATH_ENROL,
            None,
            &serde_json::to_value(wire::enrol_request(&made_up, &key)).expect("json"),
        );
        let r = th.send(from(req, 7)).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
        refused += 1;
        assert!(refused < 1000, "made-up codes are never throttled");
    }
    let real = serde_json::to_value(wire::enrol_request(&code, &key)).expect("json");
    let r = th.send(from(post(wire::PATH_ENROL, None, &real), 7)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    let id = spacesync_shared::SourceId::parse("gd-new").expect("id");
    assert!(
        !th.hub.snapshot().registry.contains_key(&id),
        "enrolled while throttled"
    );
    let r = th.send(from(post(wire::PATH_ENROL, None, &real), 8)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

backends!(async admin_calls_need_an_admin_token, the_api_changes_what_the_stopped_store_commands_change, an_enrolment_code_works_once_for_one_key_until_it_expires);

backends!(async made_up_codes_spend_the_address_allowance_before_any_work);
