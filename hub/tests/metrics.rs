//! `/metrics` after real ingest: entries ingested, refusals by code, the batch-duration
//! histogram, per-source last seen, log size, notices pending, webhook failures, build info
//! — each value checked against what was sent; and the whole exposition checked by
//! Prometheus's own `promtool check metrics` when it is installed (Debian's `prometheus`
//! package; `.ci/run` installs it and sets `SPACESYNC_REQUIRE_PROMTOOL=1`, so CI cannot
//! skip it). On both stores.

mod common;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use common::{Agent, Backend, TestHub, get_req, ingest_req, send, store_dir, t0, teachers};

/// `name{labels} value` lines, by `name{labels}`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn metrics_after_ingest(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let good = gd.batch(&[
        teachers("440106", "4401060001", "2018-11-01", 5),
        teachers("440106", "4401060002", "2018-11-01", 6),
        teachers("440106", "4401060003", "2018-11-01", 7),
    ]);
    let reply = send(
        &th.app,
        ingest_req(
            serde_json::to_vec(&good).expect("json"),
            Some("application/json"),
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // The same batch again: held already, nothing new, nothing refused.
    let again = send(
        &th.app,
        ingest_req(
            serde_json::to_vec(&good).expect("json"),
            Some("application/json"),
            None,
        ),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    // A source nobody registered: the whole batch refused.
    let mut stranger = Agent::new("xx-a", 7, "440000");
    let unknown = stranger.batch(&[teachers("440106", "4401060001", "2018-11-02", 1)]);
    let reply = send(
        &th.app,
        ingest_req(
            serde_json::to_vec(&unknown).expect("json"),
            Some("application/json"),
            None,
        ),
    )
    .await;
    assert!(reply.status.is_client_error(), "{}", reply.text());
    assert!(reply.text().contains("unknown_source"), "{}", reply.text());
    // A good chain whose second entry's signature was damaged: that entry is refused.
    let mut bad = gd.batch(&[
        teachers("440106", "4401060001", "2018-11-03", 8),
        teachers("440106", "4401060002", "2018-11-03", 9),
    ]);
    bad.entries[1].signatures[0].sig[0] ^= 1;
    let reply = send(
        &th.app,
        ingest_req(
            serde_json::to_vec(&bad).expect("json"),
            Some("application/json"),
            None,
        ),
    )
    .await;
    let refused = reply.json();
    let codes: Vec<&str> = refused["refused"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["code"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(codes, ["bad_signature"], "{refused}");

    let reply = send(&th.app, get_req("/metrics", Some(&th.admin))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text();
    let m = samples(&text);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} missing from\n{text}"))
    };
    assert_eq!(get("spacesync_hub_entries_ingested_total"), 4.0, "3 + 1");
    // Every batch was read and verified on the check threads (four requests), none waits.
    assert_eq!(get("spacesync_hub_ingest_checks_total"), 4.0);
    assert_eq!(get("spacesync_hub_ingest_checks_waiting"), 0.0);
    // The two batches that passed their checks had their R points tested for torsion, one
    // request after the other: a test each (the bad signature was refused before it).
    assert_eq!(get("spacesync_hub_ingest_torsion_batches_total"), 2.0);
    assert_eq!(get("spacesync_hub_ingest_torsion_settles_total"), 2.0);
    assert_eq!(
        get("spacesync_hub_ingest_refusals_total{code=\"unknown_source\"}"),
        1.0
    );
    assert_eq!(
        get("spacesync_hub_ingest_refusals_total{code=\"bad_signature\"}"),
        1.0
    );
    assert_eq!(
        get("spacesync_hub_ingest_batch_duration_seconds_count"),
        4.0
    );
    assert_eq!(
        get("spacesync_hub_ingest_batch_duration_seconds_bucket{le=\"+Inf\"}"),
        4.0
    );
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("spacesync_hub_ingest_batch_duration_seconds_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(buckets.len(), 13);
    assert!(get("spacesync_hub_ingest_batch_duration_seconds_sum") > 0.0);
    assert_eq!(
        get("spacesync_hub_source_last_seen_timestamp_seconds{source=\"gd-a\"}"),
        t0().timestamp() as f64,
        "received on the hub clock"
    );
    assert_eq!(
        get("spacesync_hub_log_size"),
        th.hub.snapshot().log_size as f64
    );
    let pending = th
        .notices
        .list(spacesync_hub::auth::Role::Admin)
        .iter()
        .filter(|n| n.state == "pending")
        .count();
    assert_eq!(get("spacesync_hub_notices_pending"), pending as f64);
    assert_eq!(get("spacesync_hub_webhook_failures_total"), 0.0);
    assert_eq!(
        get(&format!(
            "spacesync_hub_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    spacesync_pgtest::promtool_accepts(&text);
}

backends!(async metrics_after_ingest);
