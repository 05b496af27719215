//! Dashboard sessions under attack by a token holder: logging in over and over must not
//! push anyone else out, and revoking a token ends the sessions opened with it. A session
//! passes the same access checks as a bearer token (its role's pages and flag CSV, 403 and
//! 404 pages elsewhere), and logging out (from this site only) ends it for every page.

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

/// `GET path` with a session cookie.
async fn with_session(t: &TestHub, session: &str, path: &str) -> common::Reply {
    let req = Request::get(path)
        .header(header::COOKIE, format!("{SESSION_COOKIE}={session}"))
        .body(Body::empty())
        .expect("request");
    t.send(req).await
}

/// `POST /logout` with a session cookie, from `origin` if any.
async fn logout(t: &TestHub, session: &str, origin: Option<&str>) -> common::Reply {
    let mut b = Request::post("/logout")
        .header(header::HOST, "127.0.0.1:7400")
        .header(header::COOKIE, format!("{SESSION_COOKIE}={session}"));
    if let Some(o) = origin {
        b = b.header(header::ORIGIN, o);
    }
    t.send(b.body(Body::empty()).expect("request")).await
}

#[tokio::test]
async fn a_session_reaches_what_its_role_may_read_and_logging_out_ends_it_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = TestHub::open(dir.path());
    let gd = t.token(Role::Province("440000".parse().expect("code")));
    let session = login(&t, &gd).await;
    let own = [
        "/",
        "/?lang=en",
        "/r/440000",
        "/r/440106",
        "/notices",
        "/sources",
        "/flags.csv",
        "/r/440000/flags.csv",
    ];
    for path in own {
        let r = with_session(&t, &session, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    let csv = with_session(&t, &session, "/flags.csv").await;
    assert!(csv.body.starts_with("\u{feff}".as_bytes()), "a UTF-8 BOM");

    // Another province: a 403 page (the reader is logged in), not a way to the login form.
    for path in ["/r/110000", "/r/110105/s/1101050001", "/r/110000/flags.csv"] {
        let r = with_session(&t, &session, path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert!(r.text().contains("无权查看"), "{path}: {}", r.text());
        assert!(
            r.text().contains("id=\"logout\""),
            "{path}: the reader keeps the header"
        );
    }
    let r = with_session(&t, &session, "/r/44?lang=en").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.text().contains("Region 44 was not found."),
        "{}",
        r.text()
    );

    // A logout posted from another site is refused and ends nothing.
    let r = logout(&t, &session, Some("https://evil.example")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(home(&t, &session).await.0, StatusCode::OK);

    // Logging out clears the cookie and ends the session for every page.
    let r = logout(&t, &session, None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let cookie = r
        .headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    for path in own {
        let r = with_session(&t, &session, path).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        let to = r
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(to.starts_with("/login?next=%2F"), "{path}: {to}");
    }
}
