//! Dashboard sessions under attack by a token holder: logging in over and over must not
//! push anyone else out, and revoking a token ends the sessions opened with it.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::TestHub;
use spacesync_hub::auth::{self, Role};
use spacesync_hub::dashboard::{MAX_SESSIONS, MAX_SESSIONS_PER_TOKEN, SESSION_COOKIE};

/// Logs in with `token` through `POST /login`; returns the session cookie's value.
async fn login(t: &TestHub, token: &str) -> String {
    let req = Request::post("/login")
        .header(header::HOST, "127.0.0.1:7400")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}&next=%2F")))
        .expect("request");
    let r = t.send(req).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "login: {}", r.text());
    let cookie = r
        .headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie");
    cookie
        .strip_prefix(&format!("{SESSION_COOKIE}="))
        .and_then(|c| c.split(';').next())
        .expect("cookie value")
        .to_string()
}

/// `GET /` with a session cookie: 200 for a live session, else where it was sent.
async fn home(t: &TestHub, session: &str) -> (StatusCode, String) {
    let req = Request::get("/")
        .header(header::COOKIE, format!("{SESSION_COOKIE}={session}"))
        .body(Body::empty())
        .expect("request");
    let r = t.send(req).await;
    let location = r
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.status, location)
}

#[tokio::test]
async fn one_token_holder_cannot_evict_others_and_revoking_a_token_ends_its_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = TestHub::open(dir.path());
    let a = t.token(Role::Province("440000".parse().expect("code")));
    let b = t.token(Role::Ministry);
    let b_session = login(&t, &b).await;
    assert_eq!(home(&t, &b_session).await.0, StatusCode::OK);

    // Token A logs in once more than the whole session table holds.
    let mut a_sessions = Vec::new();
    for _ in 0..=MAX_SESSIONS {
        a_sessions.push(login(&t, &a).await);
    }
    assert_eq!(
        home(&t, &b_session).await.0,
        StatusCode::OK,
        "B's session survives A's logins"
    );
    let newest = &a_sessions[a_sessions.len() - MAX_SESSIONS_PER_TOKEN..];
    for s in newest {
        assert_eq!(home(&t, s).await.0, StatusCode::OK);
    }
    // A's older sessions ended: only the last MAX_SESSIONS_PER_TOKEN hold.
    assert_eq!(
        home(
            &t,
            &a_sessions[a_sessions.len() - MAX_SESSIONS_PER_TOKEN - 1]
        )
        .await
        .0,
        StatusCode::SEE_OTHER
    );
    assert_eq!(home(&t, &a_sessions[0]).await.0, StatusCode::SEE_OTHER);

    // Revoking A's token (by its id, as `token revoke` does) ends A's sessions at once,
    // and the token itself is refused; B is untouched.
    auth::revoke_token(t.hub.store.as_ref(), &auth::token_id(&a), common::t0()).expect("revoke");
    for s in newest {
        let (status, location) = home(&t, s).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(location.starts_with("/login"), "{location}");
    }
    let r = t.get("/", Some(&a)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t.get("/v1/progress", Some(&a)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let req = Request::post("/login")
        .header(header::HOST, "127.0.0.1:7400")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={a}")))
        .expect("request");
    assert_eq!(t.send(req).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(home(&t, &b_session).await.0, StatusCode::OK);
}
