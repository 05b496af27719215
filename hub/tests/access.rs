//! Who may read what: a province token sees only its own province on every read endpoint,
//! the ministry and admins see everything, and requests without a valid token are refused.
//! Agents' signed pulls are refused when unsigned, replayed, stale or signed by another key.

mod common;

use axum::body::Body;
use axum::http::{Request, header};
use chrono::Duration;
use common::*;
use serde_json::Value;
use spacesync_hub::auth::Role;
use spacesync_shared::wire::{self, PATH_AGENT_HEAD, SourceHead};

struct Fixture {
    th: TestHub,
    _dir: tempfile::TempDir,
    gd: Agent,
    bj: Agent,
    gd_token: String,
    ministry: String,
}

/// Guangdong and Beijing each report a school whose count went down (a flag in each
/// province), and Beijing's source equivocated once (an alarm).
async fn fixture(backend: Backend) -> Fixture {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    let mut bj = Agent::new("bj-a", 2, "110000");
    th.register(&gd);
    th.register(&bj);
    th.ingest_ok(&gd.batch(&[
        teachers("440106", "4144010601", "2018-11-01", 100),
        teachers("440106", "4144010601", "2018-11-05", 90),
    ]))
    .await;
    let sent = bj.batch(&[
        teachers("110105", "1111010501", "2018-11-01", 70),
        teachers("110105", "1111010501", "2018-11-05", 60),
    ]);
    th.ingest_ok(&sent).await;
    let mut fork = bj.clone();
    fork.next = 2;
    fork.prev = sent.entries[0].payload_hash();
    let r = th
        .ingest(&fork.batch(&[activity("110105", "2018-11-06", "另一个")]))
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let gd_token = th.token("province:440000".parse().expect("role"));
    let ministry = th.token(Role::Ministry);
    Fixture {
        th,
        _dir: dir,
        gd,
        bj,
        gd_token,
        ministry,
    }
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Nobody,
    Bogus,
    BasicAuth,
    Guangdong,
    Ministry,
    Admin,
}

enum Want {
    Status(u16),
    /// 200, and the body passes this check.
    Ok(fn(&Value)),
}

fn codes(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|v| v[key].as_str().expect("string").to_string())
        .collect()
}

fn flag_regions(progress: &Value) -> Vec<String> {
    codes(&progress["flags"], "region")
}

/// `GET path` as `who`.
async fn request(fx: &Fixture, who: Who, path: &str) -> Reply {
    let mut b = Request::get(path);
    b = match who {
        Who::Nobody => b,
        Who::Bogus => b.header(header::AUTHORIZATION, "Bearer sst_not-a-token"),
        Who::BasicAuth => b.header(header::AUTHORIZATION, format!("Basic {}", fx.ministry)),
        Who::Guangdong => b.header(header::AUTHORIZATION, format!("Bearer {}", fx.gd_token)),
        Who::Ministry => b.header(header::AUTHORIZATION, format!("Bearer {}", fx.ministry)),
        Who::Admin => b.header(header::AUTHORIZATION, format!("Bearer {}", fx.th.admin)),
    };
    fx.th.send(b.body(Body::empty()).expect("request")).await
}

async fn check(fx: &Fixture, who: Who, path: &str, want: Want) {
    let r = request(fx, who, path).await;
    match want {
        Want::Status(s) => {
            assert_eq!(r.status, s, "{who:?} GET {path}: {}", r.text());
            assert!(
                r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{who:?} GET {path}: no reason"
            );
        }
        Want::Ok(f) => {
            assert_eq!(r.status, 200, "{who:?} GET {path}: {}", r.text());
            f(&r.json());
        }
    }
}

async fn read_endpoints_honour_roles(backend: Backend) {
    let fx = fixture(backend).await;
    use Who::*;
    let reads = ["/v1/progress", "/v1/regions/440106", "/v1/sources"];
    for path in reads {
        for who in [Nobody, Bogus, BasicAuth] {
            check(&fx, who, path, Want::Status(401)).await;
        }
    }

    // A province token: its own province only, everywhere.
    check(
        &fx,
        Guangdong,
        "/v1/progress",
        Want::Ok(|v| {
            assert_eq!(codes(&v["provinces"], "code"), ["440000"]);
            assert!(v.get("nation").is_none(), "nation shown to a province");
            let flags = flag_regions(v);
            assert!(!flags.is_empty(), "its own flag is shown");
            assert!(flags.iter().all(|r| r.starts_with("44")), "{flags:?}");
        }),
    )
    .await;
    for other in [
        "/v1/regions/110105",
        "/v1/regions/110000",
        "/v1/regions/110100",
    ] {
        check(&fx, Guangdong, other, Want::Status(403)).await;
    }
    check(
        &fx,
        Guangdong,
        "/v1/regions/440106",
        Want::Ok(|v| assert_eq!(v["spaces"]["teacher"], 90)),
    )
    .await;
    check(
        &fx,
        Guangdong,
        "/v1/regions/440000",
        Want::Ok(|v| {
            let children = codes(&v["children"], "code");
            assert_eq!(children, ["440100"]);
        }),
    )
    .await;
    check(
        &fx,
        Guangdong,
        "/v1/sources",
        Want::Ok(|v| {
            assert_eq!(codes(&v["sources"], "source"), ["gd-a"]);
            assert!(v.to_string().find("bj-a").is_none(), "{v}");
        }),
    )
    .await;

    // The ministry and admins: everything.
    for who in [Ministry, Admin] {
        check(
            &fx,
            who,
            "/v1/progress",
            Want::Ok(|v| {
                assert_eq!(v["provinces"].as_array().map(Vec::len), Some(32));
                assert_eq!(v["nation"]["spaces"]["teacher"], 150);
                let flags = flag_regions(v);
                assert!(flags.iter().any(|r| r.starts_with("44")), "{flags:?}");
                assert!(flags.iter().any(|r| r.starts_with("11")), "{flags:?}");
            }),
        )
        .await;
        check(
            &fx,
            who,
            "/v1/regions/110105",
            Want::Ok(|v| assert_eq!(v["spaces"]["teacher"], 60)),
        )
        .await;
        check(
            &fx,
            who,
            "/v1/sources",
            Want::Ok(|v| {
                // In source order, whatever the registry's hash order.
                assert_eq!(codes(&v["sources"], "source"), ["bj-a", "gd-a"]);
                let bj = v["sources"]
                    .as_array()
                    .expect("sources")
                    .iter()
                    .find(|s| s["source"] == "bj-a")
                    .expect("bj-a");
                assert_eq!(bj["alarms"].as_array().map(Vec::len), Some(1));
            }),
        )
        .await;
    }
    // A malformed region code is a 400 for anyone allowed to ask.
    check(&fx, Ministry, "/v1/regions/44", Want::Status(400)).await;
}

/// One signed pull, possibly tampered with.
async fn head(fx: &Fixture, headers: &[(&'static str, String)], path: &str) -> Reply {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    fx.th.send(b.body(Body::empty()).expect("request")).await
}

/// Signed-request headers as `wire::sign_request` makes them.
type Headers = Vec<(&'static str, String)>;

fn signed(
    a: &Agent,
    path: &str,
    at: chrono::DateTime<chrono::Utc>,
    nonce: u8,
) -> Vec<(&'static str, String)> {
    wire::sign_request(&a.key, &a.id, "GET", path, at, [nonce; 16], b"")
}

async fn signed_pulls_are_refused_unless_fresh_and_signed_by_the_source(backend: Backend) {
    let fx = fixture(backend).await;
    let good = signed(&fx.gd, PATH_AGENT_HEAD, t0(), 1);
    let r = head(&fx, &good, PATH_AGENT_HEAD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h: SourceHead = serde_json::from_slice(&r.body).expect("head");
    assert_eq!((h.source.as_str(), h.held_through), ("gd-a", 2));

    let mut impostor = signed(&fx.bj, PATH_AGENT_HEAD, t0(), 2);
    impostor[0].1 = "gd-a".into();
    let mut unknown = signed(&fx.gd, PATH_AGENT_HEAD, t0(), 6);
    unknown[0].1 = "gd-zz".into();
    let cases: Vec<(&str, Headers, &str, &str)> = vec![
        ("unsigned", vec![], PATH_AGENT_HEAD, "missing"),
        ("replayed", good.clone(), PATH_AGENT_HEAD, "replay"),
        (
            "signed by another source's key",
            impostor,
            PATH_AGENT_HEAD,
            "does not verify",
        ),
        (
            "unregistered source",
            unknown,
            PATH_AGENT_HEAD,
            "not registered",
        ),
        (
            "ten minutes old",
            signed(&fx.gd, PATH_AGENT_HEAD, t0() - Duration::minutes(10), 3),
            PATH_AGENT_HEAD,
            "minutes from the hub's clock",
        ),
        (
            "signed for another path",
            signed(&fx.gd, "/v1/agent/notices", t0(), 4),
            PATH_AGENT_HEAD,
            "does not verify",
        ),
        (
            "query added after signing",
            signed(&fx.gd, PATH_AGENT_HEAD, t0(), 5),
            "/v1/agent/head?x=1",
            "does not verify",
        ),
    ];
    for (name, headers, path, reason) in cases {
        let r = head(&fx, &headers, path).await;
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        let err = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains(reason), "{name}: {err:?} lacks {reason:?}");
    }
}

/// `GET /v1/agent/entries` (what an agent restored from an older backup takes back): the
/// signing source's own entries exactly as received, from the seq asked for, at most
/// `limit` (at least one), with one batch receipt by the hub key covering each; another
/// source's never; signed requests only.
async fn entries_pages_are_the_signing_sources_own_with_a_receipt(backend: Backend) {
    let mut fx = fixture(backend).await;
    let more = fx.gd.batch(&[
        teachers("440106", "4144010601", "2018-11-06", 95),
        teachers("440106", "4144010601", "2018-11-07", 96),
        teachers("440106", "4144010601", "2018-11-08", 97),
    ]);
    fx.th.ingest_ok(&more).await;
    let hub = hub_key().verifying_key();
    let mut nonce = 10u8;
    let mut page = |a: &Agent, query: &str| {
        nonce += 1;
        let path = format!("{}?{query}", wire::PATH_AGENT_ENTRIES);
        (signed(a, &path, t0(), nonce), path)
    };
    // (who asks, query, seqs expected, held_through)
    let cases: Vec<(&Agent, &str, Vec<u64>, u64)> = vec![
        (&fx.gd, "from=3", vec![3, 4, 5], 5),
        (&fx.gd, "from=2&limit=2", vec![2, 3], 5),
        (&fx.gd, "from=1&limit=0", vec![1], 5),
        (&fx.gd, "from=6", vec![], 5),
        (&fx.bj, "from=1", vec![1, 2], 2),
    ];
    for (who, query, seqs, held) in cases {
        let (headers, path) = page(who, query);
        let r = head(&fx, &headers, &path).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        let p: wire::EntriesPage = serde_json::from_slice(&r.body).expect("page");
        assert_eq!((&p.source, p.held_through), (&who.id, held), "{query}");
        let got: Vec<u64> = p
            .entries
            .iter()
            .map(|e| spacesync_shared::entry::Entry::open(e, &who.key.verifying_key()))
            .map(|e| e.expect("the source's own signed entry").seq)
            .collect();
        assert_eq!(got, seqs, "{}: {query}", who.id);
        for (env, seq) in p.entries.iter().zip(&seqs) {
            if who.id == fx.gd.id && *seq >= 3 {
                assert_eq!(
                    env,
                    &more.entries[*seq as usize - 3],
                    "seq {seq} as received"
                );
            }
        }
        match &p.batch_receipt {
            None => assert!(seqs.is_empty(), "{query}: no receipt"),
            Some(b) => {
                let b = wire::BatchReceipt::open(b, &hub).expect("signed by the hub key");
                assert_eq!(b.source, who.id);
                let covered: Vec<(u64, spacesync_shared::Digest)> =
                    b.entries.iter().map(|i| (i.seq, i.entry_hash)).collect();
                let sent: Vec<(u64, spacesync_shared::Digest)> = seqs
                    .iter()
                    .copied()
                    .zip(p.entries.iter().map(|e| e.payload_hash()))
                    .collect();
                assert_eq!(covered, sent, "{query}");
            }
        }
    }
    let r = head(&fx, &[], &format!("{}?from=1", wire::PATH_AGENT_ENTRIES)).await;
    assert_eq!(r.status, 401, "unsigned: {}", r.text());
}

/// The refusals of the access extractors, exactly as the handlers gave them before: the
/// status, the reason, the refusal code (only for a malformed code), and the order of the checks (the token before the
/// region code, the code before the role).
async fn refusals_keep_their_status_reason_and_order(backend: Backend) {
    let fx = fixture(backend).await;
    use Who::*;
    const NO_TOKEN: &str = "send Authorization: Bearer <token> (create one with `spacesync-hub token create --role …`)";
    let cases: &[(Who, &str, u16, &str)] = &[
        (Nobody, "/v1/progress", 401, NO_TOKEN),
        (BasicAuth, "/v1/sources", 401, NO_TOKEN),
        (Nobody, "/v1/bulletins/1.json", 401, NO_TOKEN),
        (Bogus, "/v1/notices", 401, "unknown token"),
        (Bogus, "/v1/bulletins", 401, "unknown token"),
        (Bogus, "/v1/regions/44", 401, "unknown token"),
        (Nobody, "/metrics", 401, NO_TOKEN),
        (
            Ministry,
            "/v1/regions/44",
            400,
            "region code: must be a 6-digit GB/T 2260 code, got \"44\"",
        ),
        (
            Guangdong,
            "/v1/regions/110105",
            403,
            "the role province:440000 cannot read region 110105",
        ),
        (
            Ministry,
            "/metrics",
            403,
            "/metrics is for admin tokens (this one is ministry); or scrape the hub's metrics_listen address (hub.toml)",
        ),
    ];
    for (who, path, status, reason) in cases {
        let r = request(&fx, *who, path).await;
        assert_eq!(r.status, *status, "{who:?} GET {path}: {}", r.text());
        let body = r.json();
        assert_eq!(body["error"], *reason, "{who:?} GET {path}");
        // Only a malformed request carries a refusal code (as every 400 of the API does).
        let code = (*status == 400).then_some("invalid");
        assert_eq!(body["code"].as_str(), code, "{who:?} GET {path}: {body}");
        assert_eq!(
            r.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{who:?} GET {path}"
        );
    }
    let r = request(&fx, Admin, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

backends!(async read_endpoints_honour_roles, signed_pulls_are_refused_unless_fresh_and_signed_by_the_source, entries_pages_are_the_signing_sources_own_with_a_receipt, refusals_keep_their_status_reason_and_order);
