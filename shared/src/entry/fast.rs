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
//! This file reads the record; `entry.rs` reads the entry around it (the same derived
//! fields as the full reader) and holds both to the full reader: its `fast_tests` check
//! that the direct reader only ever says yes to a payload the full reader takes, with the
//! same entry, over hostile inputs, and that it takes every entry an agent writes.

use std::fmt;

use chrono::NaiveDate;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::record::{MAX_COUNT, Population, SpaceCount, SpaceCounts, SpaceKind};
use crate::region::{Level, RegionCode, SchoolCode};

/// A space-count record read directly; a deserialisation error when this reader gives up
/// (for any reason: the full reader says which).
pub(super) struct Fast(pub(super) SpaceCount);

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
