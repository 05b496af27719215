//! The files under deploy/ are what operators copy: they must be accepted as they stand.

use chrono::NaiveDate;
use spacesync_shared::batch::{self, Format};
use spacesync_shared::validate::{self, Context};
use spacesync_shared::{Campaign, RegionCode};

fn accepted(text: &str, format: Format) -> usize {
    let campaign = Campaign::builtin_2018();
    let ctx = Context {
        campaign: &campaign,
        scope: RegionCode::parse("440000").expect("scope"),
        today: NaiveDate::from_ymd_opt(2018, 11, 21).expect("date"),
        next_seq: 1,
    };
    match batch::parse(text.as_bytes(), format, 1000, |_, r| {
        validate::check(r, &ctx)
    }) {
        Ok(records) => records.len(),
        Err(e) => panic!("{}", e.lines().join("\n")),
    }
}

#[test]
fn the_example_records_are_accepted() {
    assert_eq!(
        accepted(
            include_str!("../../deploy/examples/records.ndjson"),
            Format::Json
        ),
        3
    );
    assert_eq!(
        accepted(
            include_str!("../../deploy/examples/space-counts.csv"),
            Format::Csv
        ),
        2
    );
}

#[test]
fn the_shipped_campaign_file_loads() {
    let c =
        Campaign::from_toml(include_str!("../../deploy/campaigns/2018.toml")).expect("campaign");
    assert_eq!(c.units.len(), 32);
}
