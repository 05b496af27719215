//! A direct reader for the common entry: a space count written the way agents write it.
//!
//! [`Entry::from_payload`](super::Entry::from_payload) reads every payload into a JSON
//! tree (refusing duplicate keys) and then walks the tree with the record reader, which
//! collects every problem with its field path. That is what an error message needs, and
//! most of the cost of reading an entry where nothing is wrong (the hub reads each one
//! at ingest, `verify` and `rebuild`). Here a space count is read straight from the
//! bytes into its types, and the reader gives up — `None` — at anything it does not take
//! in its plainest form: another kind, a `null`, an escaped string, a number that is not
//! a plain whole number, an unknown or repeated key, any value the record reader would
//! refuse. The caller then reads the payload the full way, which accepts or refuses it
//! with its problems named.
//!
//! So this reader only ever says yes to a payload the full reader takes, with the same
//! entry: the property tests below hold it to that over hostile inputs, and hold it to
//! taking every entry an agent writes.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::dsse::Digest;
use crate::record::{MAX_COUNT, Population, Record, SpaceCount, SpaceCounts, SpaceKind};
use crate::region::{Level, RegionCode, SchoolCode};

use super::{Entry, SourceId};

/// The entry's fields, with the record read by `R`. The same shape as the full reader's
/// (unknown and repeated fields refused by the derive).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntry<R> {
    pub(super) source: SourceId,
    pub(super) seq: u64,
    pub(super) prev: Digest,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) campaign: String,
    pub(super) record: R,
}

/// The entry in `payload` when it is a space count this reader takes; `None` sends the
/// payload to the full reader.
pub(super) fn space_count_entry(payload: &[u8]) -> Option<Entry> {
    let raw: RawEntry<Fast> = serde_json::from_slice(payload).ok()?;
    if raw.seq == 0 {
        return None;
    }
    Some(Entry {
        source: raw.source,
        seq: raw.seq,
        prev: raw.prev,
        recorded_at: raw.recorded_at,
        campaign: raw.campaign,
        record: Record::SpaceCount(raw.record.0),
    })
}

/// A space count read directly, or a deserialisation error (any reason: the full reader
/// says which).
struct Fast(SpaceCount);

/// Why this reader gave up; never shown (the full reader names the problem).
fn give_up<E: de::Error>() -> E {
    E::custom("not a plain space count")
}

impl<'de> Deserialize<'de> for Fast {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fast, D::Error> {
        d.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Fast;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a space count record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fast, A::Error> {
        let mut kind = false;
        let mut region = None;
        let mut school = None;
        let mut as_of = None;
        let mut spaces = None;
        let mut real_name = None;
        let mut population = None;
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "kind" if !kind => {
                    if map.next_value::<&str>()? != "space_count" {
                        return Err(give_up());
                    }
                    kind = true;
                }
                "region" if region.is_none() => {
                    let s = map.next_value::<&str>()?;
                    region = Some(RegionCode::parse(s).map_err(|_| give_up())?);
                }
                "school" if school.is_none() => {
                    let s = map.next_value::<&str>()?;
                    school = Some(SchoolCode::parse(s).map_err(|_| give_up())?);
                }
                "as_of" if as_of.is_none() => {
                    as_of = Some(date(map.next_value::<&str>()?).ok_or_else(give_up)?);
                }
                "spaces" if spaces.is_none() => spaces = Some(map.next_value::<Counts>()?.0),
                "real_name" if real_name.is_none() => {
                    real_name = Some(map.next_value::<Counts>()?.0)
                }
                "population" if population.is_none() => {
                    population = Some(map.next_value::<Pop>()?.0)
                }
                // Unknown or repeated: the full reader names it.
                _ => return Err(give_up()),
            }
        }
        let (true, Some(region), Some(as_of), Some(spaces)) = (kind, region, as_of, spaces) else {
            return Err(give_up());
        };
        if spaces.is_empty() {
            return Err(give_up());
        }
        if let Some(real) = &real_name {
            for (k, r) in real.iter() {
                if spaces.get(k).is_none_or(|s| r > s) {
                    return Err(give_up());
                }
            }
        }
        if school.is_some() && region.level() == Level::Province {
            return Err(give_up());
        }
        Ok(Fast(SpaceCount {
            region,
            school,
            as_of,
            spaces,
            real_name,
            population,
        }))
    }
}

/// A date in its one canonical form, `YYYY-MM-DD` (what the full reader takes).
fn date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i32::try_from(digits(0..4)?).ok()?;
    NaiveDate::from_ymd_opt(year, digits(5..7)?, digits(8..10)?)
}

/// A count: a plain whole number up to [`MAX_COUNT`].
fn count<'de, A: MapAccess<'de>>(map: &mut A) -> Result<u64, A::Error> {
    let n = map.next_value::<u64>()?;
    if n > MAX_COUNT {
        return Err(give_up());
    }
    Ok(n)
}

/// Counts per kind, each kind at most once.
struct Counts(SpaceCounts);

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Counts, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Counts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("counts per space kind")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
                let mut out = SpaceCounts::default();
                while let Some(key) = map.next_key::<&str>()? {
                    let Some(k) = SpaceKind::parse(key).filter(|k| out.get(*k).is_none()) else {
                        return Err(give_up());
                    };
                    out.set(k, Some(count(&mut map)?));
                }
                Ok(Counts(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The population, each field at most once.
struct Pop(Population);

impl<'de> Deserialize<'de> for Pop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pop, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pop;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a population")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pop, A::Error> {
                let mut p = Population::default();
                while let Some(key) = map.next_key::<&str>()? {
                    let slot = match key {
                        "teachers" => &mut p.teachers,
                        "students" => &mut p.students,
                        "schools" => &mut p.schools,
                        _ => return Err(give_up()),
                    };
                    if slot.is_some() {
                        return Err(give_up());
                    }
                    *slot = Some(count(&mut map)?);
                }
                Ok(Pop(p))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// A county, a city without counties' district, a city, a province (only without a
    /// school), and one the full reader refuses (no such province).
    const REGIONS: [&str; 5] = ["440106", "110101", "440100", "440000", "990101"];

    fn entry(record: SpaceCount, seq: u64) -> Entry {
        Entry {
            source: SourceId::parse("gd-agent").unwrap(),
            seq,
            prev: Digest([7; 32]),
            recorded_at: Utc.timestamp_millis_opt(1_543_622_400_123).unwrap(),
            campaign: "2018-online-learning-space".into(),
            record: Record::SpaceCount(record),
        }
    }

    fn counts() -> impl Strategy<Value = SpaceCounts> {
        proptest::array::uniform8(proptest::option::of(0..=MAX_COUNT)).prop_map(SpaceCounts)
    }

    /// Space counts the full reader takes, in every optional shape.
    fn valid() -> impl Strategy<Value = SpaceCount> {
        (
            0..4usize,
            proptest::option::of(1_000_000_000u64..=9_999_999_999),
            (0i32..=9999, 1u32..=12, 1u32..=31),
            counts().prop_filter("one kind at least", |c| !c.is_empty()),
            proptest::option::of(proptest::array::uniform8(0.0..=1.0f64)),
            proptest::option::of((
                proptest::option::of(0..=MAX_COUNT),
                proptest::option::of(0..=MAX_COUNT),
                proptest::option::of(0..=MAX_COUNT),
            )),
        )
            .prop_filter_map(
                "a valid record",
                |(r, school, (y, m, d), spaces, real, pop)| {
                    let region = RegionCode::parse(REGIONS[r]).ok()?;
                    let school = school.map(|s| SchoolCode::parse(&s.to_string()).ok());
                    if school.is_some() && region.level() == Level::Province {
                        return None;
                    }
                    // Real-name counts are a share of each known kind.
                    let real_name = real.map(|share| {
                        let mut out = SpaceCounts::default();
                        for (k, v) in spaces.iter() {
                            out.set(k, Some((v as f64 * share[k.index()]) as u64));
                        }
                        out
                    });
                    Some(SpaceCount {
                        region,
                        school: school.flatten(),
                        as_of: NaiveDate::from_ymd_opt(y, m, d)?,
                        spaces,
                        real_name,
                        population: pop.map(|(teachers, students, schools)| Population {
                            teachers,
                            students,
                            schools,
                        }),
                    })
                },
            )
    }

    /// Dates in canonical and near-canonical forms.
    const DATES: [&str; 18] = [
        "2018-11-30",
        "2018/11-30",
        "2018-11/30",
        "2018-2-28",
        "2018-02-29",
        "2020-02-29",
        "+2018-11-30",
        "-018-11-30",
        "0000-01-01",
        "0999-12-31",
        "2018-11-30 ",
        "2018/11/30",
        "20181130",
        "2018-11-3x",
        "2018-13-01",
        "2018-00-10",
        "2018-11-00",
        "9999-12-31",
    ];

    /// Codes, good and bad, and other strings.
    const TEXTS: [&str; 12] = [
        "440106",
        "4401060001",
        "44010600011",
        "440000",
        "440100",
        "990101",
        "440190",
        "44010a",
        "space_count",
        "milestone",
        "",
        " ",
    ];

    /// A count at or around the edges the readers check.
    fn edge_count() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0..=3u64).prop_map(|n| json!(n)),
            (MAX_COUNT - 1..=MAX_COUNT + 1).prop_map(|n| json!(n)),
            (0..=MAX_COUNT + 1).prop_map(|n| json!(n)),
            (0..=MAX_COUNT + 1).prop_map(|n| json!(n as f64)),
            Just(json!(-1)),
            Just(json!(-0.0)),
            Just(json!(1.5)),
            Just(json!(u64::MAX)),
            Just(Value::Null),
            Just(json!("7")),
        ]
    }

    /// JSON values that stress each reader where they could part: types, number forms,
    /// dates in near-canonical forms, codes, empty and odd objects.
    fn hostile_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => edge_count(),
            3 => prop::sample::select(&DATES[..]).prop_map(|s| json!(s)),
            3 => prop::sample::select(&TEXTS[..]).prop_map(|s| json!(s)),
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::Bool),
            1 => any::<f64>().prop_map(|f| json!(f)),
            1 => Just(json!({})),
            1 => Just(json!([])),
            2 => (0..8usize, edge_count())
                .prop_map(|(k, v)| json!({ SpaceKind::ALL[k].as_str(): v })),
            1 => Just(json!({"teacher": 1, "student": null})),
            1 => Just(json!({"teachers": 5, "schools": 1})),
            1 => Just(json!({"nope": 1})),
        ]
    }

    /// The keys a mutation picks from: the record's own, the counts', the population's,
    /// and strangers.
    const KEYS: [&str; 16] = [
        "kind",
        "region",
        "school",
        "as_of",
        "spaces",
        "real_name",
        "population",
        "teacher",
        "student",
        "club",
        "teachers",
        "students",
        "schools",
        "Kind",
        "extra",
        "spaces ",
    ];

    #[derive(Debug, Clone)]
    enum Mutation {
        /// Sets a key of the record, or of one of its objects, to a value.
        Set(usize, usize, Value),
        /// Removes a key of the record or of one of its objects.
        Remove(usize, usize),
        /// Writes the payload's `n`th `"key":value` pair twice.
        Repeat(usize),
        /// Writes the `n`th string's first character as a `\u` escape.
        Escape(usize),
        /// Sets `as_of` to the `n`th of [`DATES`].
        Date(usize),
        /// Sets `region` (0) or `school` (1) to the `n`th of [`TEXTS`].
        Code(usize, usize),
        /// Sets a kind's real-name count to its spaces (0 when unknown) plus -1, 0 or 1.
        RealName(usize, i8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            6 => (0..4usize, 0..KEYS.len(), hostile_value())
                .prop_map(|(at, k, v)| Mutation::Set(at, k, v)),
            2 => (0..4usize, 0..KEYS.len()).prop_map(|(at, k)| Mutation::Remove(at, k)),
            1 => (0..40usize).prop_map(Mutation::Repeat),
            1 => (0..40usize).prop_map(Mutation::Escape),
            2 => (0..DATES.len()).prop_map(Mutation::Date),
            2 => (0..2usize, 0..TEXTS.len()).prop_map(|(f, n)| Mutation::Code(f, n)),
            2 => (0..8usize, -1i8..=1).prop_map(|(k, d)| Mutation::RealName(k, d)),
        ]
    }

    /// The object `at` picks (the record, its spaces, real_name or population), if there.
    fn object_at(record: &mut Value, at: usize) -> Option<&mut serde_json::Map<String, Value>> {
        let name = ["", "spaces", "real_name", "population"][at];
        let v = if name.is_empty() {
            record
        } else {
            record.get_mut(name)?
        };
        v.as_object_mut()
    }

    /// The payload text of `entry` with `mutations` applied.
    fn mutated(entry: &Entry, mutations: &[Mutation]) -> Vec<u8> {
        let mut v: Value = serde_json::to_value(entry).unwrap();
        let mut text_edits = Vec::new();
        for m in mutations {
            let record = &mut v["record"];
            match m {
                Mutation::Set(at, k, value) => {
                    if let Some(o) = object_at(record, *at) {
                        o.insert(KEYS[*k].to_string(), value.clone());
                    }
                }
                Mutation::Remove(at, k) => {
                    if let Some(o) = object_at(record, *at) {
                        o.remove(KEYS[*k]);
                    }
                }
                Mutation::Date(n) => record["as_of"] = json!(DATES[*n]),
                Mutation::Code(f, n) => record[["region", "school"][*f]] = json!(TEXTS[*n]),
                Mutation::RealName(k, d) => {
                    let kind = SpaceKind::ALL[*k].as_str();
                    let spaces = record["spaces"][kind].as_u64().unwrap_or(0);
                    let real = spaces.saturating_add_signed(i64::from(*d));
                    if !record["real_name"].is_object() {
                        record["real_name"] = json!({});
                    }
                    record["real_name"][kind] = json!(real);
                }
                other => text_edits.push(other.clone()),
            }
        }
        let mut text = serde_json::to_string(&v).unwrap();
        for edit in text_edits {
            text = match edit {
                Mutation::Repeat(n) => repeat_pair(&text, n),
                Mutation::Escape(n) => escape_string(&text, n),
                _ => text,
            };
        }
        text.into_bytes()
    }

    /// `text` with the `n`th (mod their number) `"key":<scalar>` pair written twice.
    fn repeat_pair(text: &str, n: usize) -> String {
        let pairs: Vec<(usize, usize)> = text
            .match_indices("\":")
            .filter_map(|(colon, _)| {
                let start = text[..colon].rfind([',', '{'])? + 1;
                let end = colon + 2 + text[colon + 2..].find([',', '}'])?;
                let value = &text[colon + 2..end];
                (!value.contains(['{', '['])).then_some((start, end))
            })
            .collect();
        if pairs.is_empty() {
            return text.to_string();
        }
        let (start, end) = pairs[n % pairs.len()];
        format!("{},{}{}", &text[..end], &text[start..end], &text[end..])
    }

    /// `text` with the first character of its `n`th (mod their number) string written as
    /// a `\u` escape: the same JSON, the same value.
    fn escape_string(text: &str, n: usize) -> String {
        let starts: Vec<usize> = text
            .match_indices('"')
            .map(|(i, _)| i + 1)
            .step_by(2)
            .filter(|i| text[*i..].starts_with(|c: char| c.is_ascii_alphanumeric()))
            .collect();
        if starts.is_empty() {
            return text.to_string();
        }
        let at = starts[n % starts.len()];
        let c = text.as_bytes()[at];
        format!("{}\\u{:04x}{}", &text[..at], c, &text[at + 1..])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// Every space count an agent writes is read directly, as the full reader reads it.
        #[test]
        fn entries_as_agents_write_them_are_read_directly(record in valid(), seq in 1u64..) {
            let e = entry(record, seq);
            let payload = e.to_payload();
            prop_assert_eq!(space_count_entry(&payload), Some(e.clone()));
            prop_assert_eq!(Entry::from_payload_fully(&payload), Ok(e));
        }

        /// Whatever the direct reader takes, the full reader takes, as the same entry.
        #[test]
        fn the_direct_reader_takes_nothing_the_full_reader_refuses(
            record in valid(),
            mutations in proptest::collection::vec(mutation(), 1..4),
        ) {
            let payload = mutated(&entry(record, 1), &mutations);
            if let Some(fast) = space_count_entry(&payload) {
                prop_assert_eq!(
                    Entry::from_payload_fully(&payload),
                    Ok(fast),
                    "{}",
                    String::from_utf8_lossy(&payload)
                );
            }
        }
    }

    #[test]
    fn near_misses_go_the_full_way() {
        let e = entry(
            SpaceCount {
                region: RegionCode::parse("440106").unwrap(),
                school: None,
                as_of: NaiveDate::from_ymd_opt(2018, 11, 30).unwrap(),
                spaces: SpaceCounts([Some(10), None, None, None, None, None, None, None]),
                real_name: None,
                population: None,
            },
            3,
        );
        let text = String::from_utf8(e.to_payload()).unwrap();
        assert!(space_count_entry(text.as_bytes()).is_some(), "{text}");
        // Each is accepted by the full reader (so the fast path must not differ from it)
        // or refused; either way the direct reader leaves it.
        for (from, to) in [
            ("\"teacher\":10", "\"teacher\":10.0"),
            ("\"teacher\":10", "\"teacher\":10,\"student\":null"),
            ("\"teacher\":10", "\"teacher\":1e1"),
            ("\"teacher\":10", "\"teacher\":10,\"teacher\":10"),
            (
                "\"as_of\":\"2018-11-30\"",
                "\"as_of\":\"2018-11-30\",\"school\":null",
            ),
            ("\"region\":\"440106\"", "\"region\":\"\\u003440106\""),
            ("\"teacher\":10", "\"teacher\":1000000001"),
            ("\"spaces\":{\"teacher\":10}", "\"spaces\":{}"),
            ("\"as_of\":\"2018-11-30\"", "\"as_of\":\"2018/11-30\""),
            ("\"as_of\":\"2018-11-30\"", "\"as_of\":\"2018-11/30\""),
            (
                "\"spaces\":{\"teacher\":10}",
                "\"spaces\":{\"teacher\":10},\"spaces\":{\"teacher\":10}",
            ),
            (
                "\"spaces\":{\"teacher\":10}",
                "\"spaces\":{\"teacher\":10},\"real_name\":{\"teacher\":5},\"real_name\":{\"teacher\":5}",
            ),
            (
                "\"spaces\":{\"teacher\":10}",
                "\"spaces\":{\"teacher\":10},\"population\":{\"teachers\":5},\"population\":{\"teachers\":5}",
            ),
            (
                "\"kind\":\"space_count\"",
                "\"kind\":\"space_count\",\"kind\":\"space_count\"",
            ),
            ("\"kind\":\"space_count\"", "\"kind\":\"milestone\""),
            ("\"seq\":3", "\"seq\":0"),
        ] {
            let changed = text.replacen(from, to, 1);
            assert_ne!(changed, text, "{from} not in {text}");
            assert_eq!(space_count_entry(changed.as_bytes()), None, "{changed}");
        }
        // And through the public door the full reader's verdict stands.
        let whole = text.replacen("\"teacher\":10", "\"teacher\":10.0", 1);
        assert_eq!(Entry::from_payload(whole.as_bytes()), Ok(e));
        let dup = text.replacen("\"teacher\":10", "\"teacher\":10,\"teacher\":10", 1);
        assert!(Entry::from_payload(dup.as_bytes()).is_err());
    }
}
