//! The dashboard states dates in the campaign's time zone: a bulletin issued at 07:30 in
//! Beijing (23:30 UTC the day before) was issued on the Beijing day, the day its data date
//! is counted in — not on the UTC day, which once showed an issue date before the data date.

mod common;

use chrono::{DateTime, Utc};
use spacesync_hub::auth::Role;
use spacesync_hub::dashboard::pages::bulletin_box;
use spacesync_hub::render::Lang;
use spacesync_hub::state::AppState;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

#[test]
fn the_bulletin_box_gives_the_issue_day_in_the_campaign_time_zone() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 2018-11-20 07:30 in Beijing.
    let th = common::TestHub::open_at(dir.path(), at("2018-11-19T23:30:00Z"));
    spacesync_hub::bulletin::issue(&th.hub, None, &[]).expect("issue");
    let state = AppState::new(th.hub.clone(), th.notices.clone(), 100.0, 100.0);
    let zh = bulletin_box(&state, Lang::Zh, Role::Ministry)
        .expect("box")
        .into_string();
    assert!(zh.contains("发布于 2018年11月20日"), "{zh}");
    assert!(!zh.contains("2018年11月19日"), "{zh}");
    let en = bulletin_box(&state, Lang::En, Role::Ministry)
        .expect("box")
        .into_string();
    assert!(en.contains("2018-11-20"), "{en}");
    assert!(!en.contains("2018-11-19"), "{en}");
}
