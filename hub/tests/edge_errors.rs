//! Errors made below the handlers still answer in the one error shape.

mod common;

use axum::http::StatusCode;
use common::{TestHub, get_req, ingest_req};

#[tokio::test]
async fn layer_errors_answer_in_the_standard_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = TestHub::open(dir.path());
    let cases = [
        (
            ingest_req(b"{}".to_vec(), Some("application/json"), Some("br")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding",
        ),
        (
            get_req("/v1/no-such-thing", None),
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
    ];
    for (req, status, reason) in cases {
        let r = t.send(req).await;
        assert_eq!(r.status, status, "{}", r.text());
        let body = r.json();
        assert!(
            body["error"].as_str().unwrap_or("").contains(reason),
            "{body}"
        );
    }
}
