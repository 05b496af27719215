//! The bulletin list (`GET /v1/bulletins`, `bulletin list`, the dashboard's latest
//! bulletin) names each issued bulletin as its stored document does: number, issue time,
//! schedule slot, title, checkpoint and how many units it lists as lagging (the API adds
//! how far the checkpoint is witnessed).

mod common;

use axum::http::StatusCode;
use chrono::Duration;
use common::{Backend, TestHub, store_dir};
use serde_json::{Value, json};
use spacesync_hub::auth::Role;
use spacesync_hub::bulletin;

/// The list entry of a stored bulletin document, member by member.
fn listed(doc: &Value) -> Value {
    json!({
        "number": doc["number"], "issued_at": doc["issued_at"],
        "scheduled_for": doc["scheduled_for"], "title": doc["title"],
        "checkpoint": doc["checkpoint"],
        "lagging": doc["lagging"].as_array().map_or(0, Vec::len),
    })
}

async fn the_list_names_each_bulletin_as_its_document_does(backend: Backend) {
    let dir = store_dir(backend);
    let t = TestHub::open(dir.path());
    let campaign = t.hub.campaign.clone();
    // One on demand, one for the first schedule slot.
    bulletin::issue(&t.hub, None, &t.notices.log()).expect("issue");
    t.clock
        .set(bulletin::slot_time(&campaign, 0) + Duration::minutes(1));
    let issued = bulletin::issue_due(&t.hub, || t.notices.log()).expect("issue due");
    assert_eq!(issued, [2]);

    let store = t.hub.store.as_ref();
    let docs: Vec<Value> = (1..=2)
        .map(|n| bulletin::get(store, n).expect("get"))
        .collect();
    assert!(docs[0]["scheduled_for"].is_null());
    assert!(docs[1]["scheduled_for"].is_string());
    assert!(
        docs.iter()
            .any(|d| d["lagging"].as_array().is_some_and(|l| !l.is_empty()))
    );
    let want: Vec<Value> = docs.iter().map(listed).collect();

    let list = bulletin::list(store).expect("list");
    assert_eq!(serde_json::to_value(&list).expect("json"), json!(want));
    // The API adds how far each checkpoint is witnessed (no source registered: none).
    let want_api: Vec<Value> = docs
        .iter()
        .map(|d| {
            let mut v = listed(d);
            v["witnessed"] = json!({
                "size": d["checkpoint"]["size"], "witnesses": [], "units": [], "of": 32, "quorum": 17,
            });
            v
        })
        .collect();
    let r = t.get("/v1/bulletins", Some(&t.token(Role::Ministry))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({ "bulletins": want_api }));
}

backends!(async the_list_names_each_bulletin_as_its_document_does);
