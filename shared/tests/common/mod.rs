//! Fixtures shared by the integration tests of `spacesync-shared`: the fixed signing key,
//! the validation context the foundation issue names, a signed chain, and proptest
//! strategies that generate *valid* records of every kind.
//!
//! Each test file includes this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use spacesync_shared::campaign::{Campaign, NomineeType};
use spacesync_shared::dsse::{Digest, Envelope};
use spacesync_shared::entry::{Entry, SourceId};
use spacesync_shared::record::{
    Activity, ActivityCategory, Contact, Document, MAX_COUNT, Milestone, MilestoneDetails, Nominee,
    Population, Recommendation, Record, SpaceCount, SpaceCounts, SpaceKind, Withdrawal,
};
use spacesync_shared::region::{Level, PROVINCIAL_UNITS, RegionCode, SchoolCode};
use spacesync_shared::validate::Context;

/// The fixed test seed: the 32 bytes 0x01, 0x02, …, 0x20.
pub const SEED: [u8; 32] = {
    let mut s = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = i as u8 + 1;
        i += 1;
    }
    s
};

/// The signing key made from [`SEED`].
pub fn key() -> SigningKey {
    SigningKey::from_bytes(&SEED)
}

/// Another key, for "signed by the wrong key" cases.
pub fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// The source the fixtures sign as.
pub fn source() -> SourceId {
    SourceId::parse("gd-rrt").expect("test setup: source id")
}

/// Test setup: a region code that must parse.
pub fn region(s: &str) -> RegionCode {
    RegionCode::parse(s).unwrap_or_else(|e| panic!("test setup: region {s}: {e}"))
}

/// Test setup: a school code that must parse.
pub fn school(s: &str) -> SchoolCode {
    SchoolCode::parse(s).unwrap_or_else(|e| panic!("test setup: school {s}: {e}"))
}

/// Test setup: a date that must parse.
pub fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_else(|e| panic!("test setup: date {s}: {e}"))
}

/// Test setup: an RFC 3339 instant that must parse.
pub fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("test setup: instant {s}: {e}"))
        .with_timezone(&Utc)
}

/// The bundled 2018 campaign, loaded once.
pub fn campaign() -> &'static Campaign {
    static C: OnceLock<Campaign> = OnceLock::new();
    C.get_or_init(Campaign::builtin_2018)
}

/// The context of the issue: the 2018 campaign, a Guangdong source (scope 440000),
/// today 2018-12-01, next seq 100.
pub fn context() -> Context<'static> {
    Context {
        campaign: campaign(),
        scope: region("440000"),
        today: date("2018-12-01"),
        next_seq: 100,
    }
}

/// Test setup: a record read from JSON text that must be valid on its own.
pub fn record(json: &str) -> Record {
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("test setup: {json}: {e}"));
    Record::from_value(&v).unwrap_or_else(|p| panic!("test setup: {json}: {p:?}"))
}

/// Test setup: a recommendation record that must be valid on its own.
pub fn recommendation(json: &str) -> Recommendation {
    match record(json) {
        Record::Recommendation(r) => r,
        other => panic!("test setup: not a recommendation: {other:?}"),
    }
}

/// An entry of [`source`] in campaign 2018.
pub fn entry(seq: u64, prev: Digest, recorded_at: DateTime<Utc>, record: Record) -> Entry {
    Entry {
        source: source(),
        seq,
        prev,
        recorded_at,
        campaign: "2018".into(),
        record,
    }
}

/// The record of seq `seq` in [`chain`]: mostly space counts, with every kind mixed in.
pub fn chain_record(seq: u64) -> Record {
    let json = match seq % 10 {
        3 => format!(
            r#"{{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"培训 {seq}","participants":{seq}}}"#
        ),
        7 if seq > 1 => format!(
            r#"{{"kind":"withdrawal","target_seq":{},"reason":"duplicate submission"}}"#,
            seq - 1
        ),
        _ => format!(
            r#"{{"kind":"space_count","region":"440106","school":"4144010601","as_of":"2018-11-20","spaces":{{"teacher":{seq},"student":{}}}}}"#,
            seq * 10
        ),
    };
    record(&json)
}

/// A valid signed chain of `n` entries by [`key`], seqs 1 … n, one second apart.
pub fn chain(n: u64) -> (Vec<Entry>, Vec<Envelope>) {
    let key = key();
    let start = instant("2018-11-20T01:00:00Z");
    let mut entries = Vec::new();
    let mut envs = Vec::new();
    let mut prev = Digest::ZERO;
    for seq in 1..=n {
        let e = entry(
            seq,
            prev,
            start + Duration::seconds(seq as i64),
            chain_record(seq),
        );
        let env = e.sign(&key);
        prev = env.payload_hash();
        entries.push(e);
        envs.push(env);
    }
    (entries, envs)
}

// ---- strategies for valid records --------------------------------------------------------

/// A whole number the reader accepts, with the edges weighted in.
pub fn count() -> BoxedStrategy<u64> {
    prop_oneof![
        1 => Just(0u64),
        1 => Just(MAX_COUNT),
        8 => 0..=MAX_COUNT,
    ]
    .boxed()
}

/// Text the reader accepts: 1–40 characters of anything (control characters, quotes,
/// backslashes, CJK …), not blank.
pub fn text() -> BoxedStrategy<String> {
    "(?s).{1,40}"
        .prop_filter("text must not be blank", |s| !s.trim().is_empty())
        .boxed()
}

/// (province index, city part 1–99, county part 1–99).
fn parts() -> BoxedStrategy<(RegionCode, u32, u32)> {
    (0..PROVINCIAL_UNITS.len(), 1..100u32, 1..100u32)
        .prop_map(|(p, c, d)| (PROVINCIAL_UNITS[p].region(), c, d))
        .boxed()
}

fn at(province: RegionCode, city: u32, county: u32) -> RegionCode {
    region(&format!("{:06}", province.as_u32() + city * 100 + county))
}

/// A provincial code.
pub fn province() -> BoxedStrategy<RegionCode> {
    parts().prop_map(|(p, _, _)| p).boxed()
}

/// A city or county code.
pub fn below_province() -> BoxedStrategy<RegionCode> {
    (parts(), any::<bool>())
        .prop_map(|((p, c, d), county)| at(p, c, if county { d } else { 0 }))
        .boxed()
}

/// A code at any level.
pub fn any_region() -> BoxedStrategy<RegionCode> {
    prop_oneof![province(), below_province()].boxed()
}

/// Any 10-digit school code (leading zeros included).
pub fn school_code() -> BoxedStrategy<SchoolCode> {
    (0..10_000_000_000u64)
        .prop_map(|n| school(&format!("{n:010}")))
        .boxed()
}

/// A date from 1970 to 2099.
pub fn any_date() -> BoxedStrategy<NaiveDate> {
    (0..47_000i64)
        .prop_map(|d| date("1970-01-01") + Duration::days(d))
        .boxed()
}

/// Counts with at least one kind known.
pub fn space_counts() -> BoxedStrategy<SpaceCounts> {
    prop::array::uniform8(prop::option::of(count()))
        .prop_filter("at least one kind", |a| a.iter().any(Option::is_some))
        .prop_map(SpaceCounts)
        .boxed()
}

/// Real-name counts that fit `spaces`: a subset of its kinds, each at most its count;
/// `None` when the subset is empty.
fn real_name_for(spaces: SpaceCounts) -> BoxedStrategy<Option<SpaceCounts>> {
    prop::array::uniform8(prop::option::of(0..=1000u64))
        .prop_map(move |share| {
            let mut real = SpaceCounts::default();
            for k in SpaceKind::ALL {
                if let (Some(s), Some(per_mille)) = (spaces.get(k), share[k.index()]) {
                    real.set(k, Some(s * per_mille / 1000));
                }
            }
            (!real.is_empty()).then_some(real)
        })
        .boxed()
}

/// A population with at least one figure known, or none.
pub fn population() -> BoxedStrategy<Option<Population>> {
    (
        prop::option::of(count()),
        prop::option::of(count()),
        prop::option::of(count()),
    )
        .prop_map(|(teachers, students, schools)| {
            let p = Population {
                teachers,
                students,
                schools,
            };
            (p != Population::default()).then_some(p)
        })
        .boxed()
}

/// A valid space count snapshot (a school's sits in a city or county).
pub fn space_count() -> BoxedStrategy<SpaceCount> {
    let place = prop_oneof![
        any_region().prop_map(|r| (r, None)),
        (below_province(), school_code()).prop_map(|(r, s)| (r, Some(s))),
    ];
    (place, any_date(), space_counts(), population())
        .prop_flat_map(|(place, as_of, spaces, population)| {
            real_name_for(spaces).prop_map(move |real_name| SpaceCount {
                region: place.0,
                school: place.1,
                as_of,
                spaces,
                real_name,
                population,
            })
        })
        .boxed()
}

fn contact() -> BoxedStrategy<Contact> {
    (text(), text(), text(), text())
        .prop_map(|(name, role, phone, email)| Contact {
            name,
            role,
            phone,
            email,
        })
        .boxed()
}

/// A valid milestone (its id is free text: only the campaign check knows the ids).
pub fn milestone() -> BoxedStrategy<Milestone> {
    let years = prop::collection::btree_map(
        2000..=2100u16,
        prop::collection::vec(any_region(), 0..5),
        0..4,
    );
    let details = (
        prop::option::of(years),
        prop::option::of(prop::collection::vec(contact(), 0..3)),
    )
        .prop_map(
            |(years, contacts): (Option<BTreeMap<_, _>>, _)| MilestoneDetails { years, contacts },
        );
    let document = (text(), "[0-9a-f]{64}", prop::option::of(text()))
        .prop_map(|(title, sha256, uri)| Document { title, sha256, uri });
    (text(), province(), any_date(), document, details)
        .prop_map(
            |(milestone, region, submitted_on, document, details)| Milestone {
                milestone,
                region,
                submitted_on,
                document,
                details,
            },
        )
        .boxed()
}

/// A valid nomination: every shape the reader accepts (county → school in it; city →
/// school in it or a county; province → school in it, a city or a county).
pub fn recommendation_strategy() -> BoxedStrategy<Recommendation> {
    (parts(), school_code(), prop::option::of(text()), 0..7u8)
        .prop_map(|((p, c, d), code, name, shape)| {
            let city = at(p, c, 0);
            let county = at(p, c, d);
            let school = |region| Nominee::School {
                code,
                name: name.clone(),
                region,
            };
            let reg = |code| Nominee::Region {
                code,
                name: name.clone(),
            };
            let (level, by, nominee) = match shape {
                0 => (Level::County, county, school(county)),
                1 => (Level::City, city, school(county)),
                2 => (Level::City, city, school(city)),
                3 => (Level::City, city, reg(county)),
                4 => (Level::Province, p, school(county)),
                5 => (Level::Province, p, reg(city)),
                _ => (Level::Province, p, reg(county)),
            };
            debug_assert_eq!(
                nominee.nominee_type() == NomineeType::Region,
                matches!(shape, 3 | 5 | 6)
            );
            Recommendation { level, by, nominee }
        })
        .boxed()
}

/// A valid activity.
pub fn activity() -> BoxedStrategy<Activity> {
    let category = prop::sample::select(vec![
        ActivityCategory::Training,
        ActivityCategory::Conference,
        ActivityCategory::Exhibition,
        ActivityCategory::Research,
        ActivityCategory::Other,
    ]);
    (
        any_region(),
        any_date(),
        category,
        text(),
        prop::option::of(count()),
    )
        .prop_map(|(region, date, category, title, participants)| Activity {
            region,
            date,
            category,
            title,
            participants,
        })
        .boxed()
}

/// A valid withdrawal.
pub fn withdrawal() -> BoxedStrategy<Withdrawal> {
    (1..=MAX_COUNT, text())
        .prop_map(|(target_seq, reason)| Withdrawal { target_seq, reason })
        .boxed()
}

/// A valid record of any kind.
pub fn any_record() -> BoxedStrategy<Record> {
    // Boxed: the unboxed value trees of these nested strategies overflow a test thread's
    // stack in debug builds.
    prop_oneof![
        space_count().prop_map(Record::SpaceCount).boxed(),
        milestone().prop_map(Record::Milestone).boxed(),
        recommendation_strategy()
            .prop_map(Record::Recommendation)
            .boxed(),
        activity().prop_map(Record::Activity).boxed(),
        withdrawal().prop_map(Record::Withdrawal).boxed(),
    ]
    .boxed()
}

/// A valid entry of [`source`] holding any record, with a millisecond-precision time (the
/// precision entries are written with).
pub fn any_entry() -> BoxedStrategy<Entry> {
    (
        1..1_000_000u64,
        any::<[u8; 32]>(),
        0..4_000_000_000_000i64,
        any_record(),
    )
        .prop_map(|(seq, prev, ms, record)| {
            let at = DateTime::from_timestamp_millis(ms).expect("test setup: time in range");
            entry(seq, Digest(prev), at, record)
        })
        .boxed()
}
