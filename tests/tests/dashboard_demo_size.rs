//! The dashboard's overview on the demo campaign stays under 200 KB. The campaign is the one
//! `spacesync-demo` runs (`simulate::generate`, seed 2018): every good record of the 32
//! units, signed and ingested in-process with the hub's clock at the campaign's end, and
//! one bulletin issued. Printing every data flag made this page 1.9 MB in the demo; the
//! summary (counts by unit and kind, the 20 largest drops, a CSV link) keeps it small
//! however many flags there are. The CSV holds every flag.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use spacesync_hub::auth::{self, Role};
use spacesync_hub::http::{self as hubhttp, AppState};
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::notices::NoticeBook;
use spacesync_hub::store::SledStore;
use spacesync_shared::clock::FixedClock;
use spacesync_shared::keys::public_key_line;
use spacesync_shared::wire::IngestBatch;
use spacesync_shared::{Campaign, Digest, Entry, Record, SourceId};
use spacesync_tests::simulate;
use tower::ServiceExt;

const LIMIT: usize = 200 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_of_the_demo_campaign_stays_under_200_kb() {
    let campaign = Campaign::builtin_2018();
    let plans = simulate::generate(&campaign, 2018);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path()).expect("store"));
    let now: DateTime<Utc> = DateTime::parse_from_rfc3339("2019-01-15T12:00:00+08:00")
        .expect("time")
        .with_timezone(&Utc);
    let hub = Arc::new(
        Hub::open(
            store.clone(),
            SigningKey::from_bytes(&[7; 32]),
            "spacesync-hub/test/demo".into(),
            campaign.clone(),
            Arc::new(FixedClock::new(now)),
            Limits::default(),
        )
        .expect("hub"),
    );
    let mut records = 0;
    for (i, plan) in plans.iter().enumerate() {
        let id = SourceId::parse(&plan.source).expect("source id");
        let key = SigningKey::from_bytes(&[u8::try_from(i + 1).expect("32 units"); 32]);
        hub.add_source(
            id.clone(),
            plan.unit,
            &public_key_line(&key.verifying_key()),
        )
        .expect("register");
        let (mut seq, mut prev) = (0u64, Digest::ZERO);
        let all: Vec<_> = plan.days.values().flatten().collect();
        for chunk in all.chunks(500) {
            let entries = chunk
                .iter()
                .map(|v| {
                    let record = Record::from_value(v).unwrap_or_else(|p| panic!("{p:?}: {v}"));
                    seq += 1;
                    let env = Entry {
                        source: id.clone(),
                        seq,
                        prev,
                        recorded_at: now,
                        campaign: campaign.id.clone(),
                        record,
                    }
                    .sign(&key);
                    prev = env.payload_hash();
                    env
                })
                .collect();
            let out = hub
                .ingest(IngestBatch {
                    source: id.clone(),
                    entries,
                })
                .expect("ingest");
            assert_eq!(out.status, 200, "{:?}", out.response.refused);
            records += chunk.len();
        }
    }
    spacesync_hub::bulletin::issue(&hub, None, &[]).expect("bulletin");
    let ministry = auth::create_token(store.as_ref(), Role::Ministry, None, now).expect("token");
    let guangdong = auth::create_token(
        store.as_ref(),
        "province:440000".parse().expect("role"),
        None,
        now,
    )
    .expect("token");
    let book = Arc::new(NoticeBook::load(hub.store.as_ref()).expect("notices"));
    let app = hubhttp::app(AppState::new(hub.clone(), book, 1e9, 1e9));
    let get = |path: &str, token: &str| {
        let req = Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let app = app.clone();
        async move {
            let r = app.oneshot(req).await.expect("answer");
            assert_eq!(r.status(), 200);
            axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .expect("body")
        }
    };
    let flags = hub.snapshot().views.rollup(&hub.campaign).flags.len();
    for (path, token) in [
        ("/", &ministry),
        ("/?lang=en", &ministry),
        ("/", &guangdong),
        ("/r/440000", &ministry),
    ] {
        let body = get(path, token).await;
        eprintln!(
            "{path} ({}): {} bytes; {records} records, {flags} flags",
            if *token == ministry {
                "ministry"
            } else {
                "Guangdong"
            },
            body.len()
        );
        assert!(body.len() < LIMIT, "{path}: {} bytes", body.len());
    }
    let csv = get("/flags.csv", &ministry).await;
    let rows = csv.iter().filter(|b| **b == b'\n').count();
    eprintln!("/flags.csv: {} bytes, {rows} lines", csv.len());
    assert_eq!(rows, flags + 1, "a header and one row per flag");
}
