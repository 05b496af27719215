//! The hub's secrets against a province token holder and a network eavesdropper, through
//! the real binary on loopback: webhook URLs (which carry `?apikey=`) reach admins only —
//! never the notices API of other roles, a bulletin, or the log — and every delivery is
//! signed with the webhook key (not the log key) over a timestamp, so a captured delivery
//! replayed later is refused by a receiver that verifies as the README says.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use spacesync_shared::keys::parse_public_key;
use spacesync_tests::hub_harness::{HubProc, free_port, now};

const SECRET: &str = "apikey-9f8e7d6c5b4a";

/// What the receiver saw: each delivery, and whether it verified.
#[derive(Default)]
struct Seen {
    deliveries: Vec<(HeaderMap, Bytes, Result<(), &'static str>)>,
}

/// The README's receiver: signature over `spacesync-webhook-v1\n<ts>\n<body>` with the
/// configured key, timestamp within 5 minutes of the receiver's clock `clock` (here the
/// hub's fixed `--now`).
fn verify(
    key: &VerifyingKey,
    headers: &HeaderMap,
    body: &[u8],
    clock: i64,
) -> Result<(), &'static str> {
    let ts = headers
        .get("x-spacesync-timestamp")
        .and_then(|v| v.to_str().ok())
        .ok_or("no timestamp")?;
    let sig = headers
        .get("x-spacesync-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| STANDARD.decode(s).ok())
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .ok_or("no signature")?;
    let mut msg = format!("spacesync-webhook-v1\n{ts}\n").into_bytes();
    msg.extend_from_slice(body);
    key.verify_strict(&msg, &Signature::from_bytes(&sig))
        .map_err(|_| "bad signature")?;
    let ts: i64 = ts.parse().map_err(|_| "bad timestamp")?;
    if (clock - ts).abs() > 300 {
        return Err("stale");
    }
    Ok(())
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_urls_stay_with_admins_and_deliveries_cannot_be_replayed() {
    let mut hub = HubProc::init();
    let key_out = hub.cli(&["webhook-key"]);
    assert!(key_out.status.success(), "{}", text(&key_out));
    let webhook_key = parse_public_key(String::from_utf8_lossy(&key_out.stdout).trim())
        .expect("webhook-key prints a key line");
    assert_ne!(webhook_key, hub.key, "the webhook key is not the log key");

    // A receiver configured with that key, and a webhook nobody listens on.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    let clock = now().timestamp();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen2.clone();
            async move {
                let v = verify(&webhook_key, &headers, &body, clock);
                let status = if v.is_ok() {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                };
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .deliveries
                    .push((headers, body, v));
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let receiver = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let live = format!("http://{addr}/hook?apikey={SECRET}");
    let dead = format!("http://127.0.0.1:{}/hook?apikey={SECRET}", free_port());
    let cfg = hub.dir.path().join("hub.toml");
    let mut toml = std::fs::read_to_string(&cfg).expect("hub.toml");
    toml.push_str(&format!(
        "\n[[webhooks]]\nurl = \"{live}\"\n\n[[webhooks]]\nurl = \"{dead}\"\n"
    ));
    std::fs::write(&cfg, toml).expect("hub.toml");

    let province = {
        let out = hub.cli(&["token", "create", "--role", "province:110000"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let admin = {
        let out = hub.cli(&["token", "create", "--role", "admin"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    hub.start().await;

    // The hub clock is past the implementation plan's deadline: every province is overdue.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deliveries
            .len();
        if n >= 3 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let get = |path: &str, token: &str| {
        http.get(format!("{}{path}", hub.url()))
            .bearer_auth(token)
            .send()
    };
    // The province's notices, once the dead webhook has been tried for them: its
    // failures are shown by id, the URL never.
    let dead_id = spacesync_hub::notices::webhook_id(&dead);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mine = loop {
        let mine = get("/v1/notices", &province)
            .await
            .expect("notices")
            .text()
            .await
            .expect("body");
        if mine.contains(&dead_id) || Instant::now() > deadline {
            break mine;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(mine.contains(&dead_id), "{mine}");
    assert!(mine.contains("last_error"), "{mine}");
    assert!(
        !mine.contains(SECRET),
        "a province token sees a webhook URL"
    );
    let all = get("/v1/notices", &admin)
        .await
        .expect("notices")
        .text()
        .await
        .expect("body");
    assert!(all.contains(SECRET), "admins see the URLs");
    hub.kill();
    receiver.abort();

    // Every delivery verified with the configured key; none offered a key of its own.
    let (captured, body) = {
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!s.deliveries.is_empty(), "no delivery; log:\n{}", hub.log());
        for (h, _, v) in &s.deliveries {
            assert_eq!(*v, Ok(()), "{h:?}");
            assert!(!h.contains_key("x-spacesync-key"));
        }
        (s.deliveries[0].0.clone(), s.deliveries[0].1.clone())
    };
    // Replayed an hour later byte for byte: refused by the signed timestamp; with a fresh
    // timestamp: refused by the signature.
    assert_eq!(
        verify(&webhook_key, &captured, &body, clock + 3600),
        Err("stale")
    );
    let mut refreshed = captured.clone();
    refreshed.insert(
        "x-spacesync-timestamp",
        (clock + 3600).to_string().parse().expect("header"),
    );
    assert_eq!(
        verify(&webhook_key, &refreshed, &body, clock + 3600),
        Err("bad signature")
    );

    // The log names the failing webhook by its id, never its URL.
    let log = hub.log();
    assert!(log.contains("Webhook delivery failed"), "{log}");
    assert!(log.contains(&dead_id), "{log}");
    assert!(!log.contains(SECRET), "the log holds a webhook URL:\n{log}");

    // A bulletin issued now carries the delivery record without URLs, in every format,
    // and `bulletin verify` recomputes it from the log.
    let out = hub.cli(&["bulletin", "issue", "--now", "2018-11-25T03:00:00Z"]);
    assert!(out.status.success(), "{}", text(&out));
    let n = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for format in ["json", "html", "md", "csv"] {
        let out = hub.cli(&["bulletin", "show", &n, "--format", format, "--lang", "en"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(!text(&out).contains(SECRET), "bulletin {n}.{format}");
    }
    let out = hub.cli(&["bulletin", "show", &n, "--format", "json"]);
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(json.contains("\"attempts\""), "deliveries recorded: {json}");
    let file = hub.dir.path().join("b.json");
    std::fs::write(&file, json).expect("write");
    let out = hub.cli(&["bulletin", "verify", &file.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
}
