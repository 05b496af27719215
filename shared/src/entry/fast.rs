//! Direct readers for the common entry: a space count written the way agents write it.
//!
//! The full reader ([`Entry::from_payload_fully`](super::Entry::from_payload_fully)) reads
//! a payload into a JSON tree (refusing duplicate keys) and then walks the tree with the
//! record reader, which collects every problem with its field path. That is what an error
//! message needs, and most of the cost of reading an entry where nothing is wrong (the hub
//! reads each one at ingest, `verify` and `rebuild`). Here a space count is read straight
//! from the bytes into its types, twice over: [`plain`] reads the plainest JSON without
//! serde (what agents write), and, when it gives up, [`Fast`] reads the record through
//! serde's visitors (whitespace and key order as JSON allows, escapes outside the record).
//! Each gives up — `None` — at anything it does not take in its plainest form: another
//! kind, a `null`, an escaped string (inside the record, for `Fast`), a number that is not
//! a plain whole number, an unknown or repeated key, any value the record reader would
//! refuse. [`Entry::from_payload`](super::Entry::from_payload) then reads the payload the
//! full way, which accepts or refuses it with its problems named.
//!
//! `entry.rs` reads the entry around `Fast`'s record (the same derived fields as the full
//! reader) and holds both readers to the full reader: its `fast_tests` check that each
//! direct reader only ever says yes to a payload the full reader takes, with the same
//! entry, over hostile inputs, and that both take every entry an agent writes.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
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
        let mut p = Parts::default();
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "kind" if !p.kind => {
                    if map.next_value::<&str>()? != "space_count" {
                        return Err(give_up());
                    }
                    p.kind = true;
                }
                "region" if p.region.is_none() => {
                    let s = map.next_value::<&str>()?;
                    p.region = Some(RegionCode::parse(s).map_err(|_| give_up())?);
                }
                "school" if p.school.is_none() => {
                    let s = map.next_value::<&str>()?;
                    p.school = Some(SchoolCode::parse(s).map_err(|_| give_up())?);
                }
                "as_of" if p.as_of.is_none() => {
                    p.as_of = Some(date(map.next_value::<&str>()?).ok_or_else(give_up)?);
                }
                "spaces" if p.spaces.is_none() => p.spaces = Some(map.next_value::<Counts>()?.0),
                "real_name" if p.real_name.is_none() => {
                    p.real_name = Some(map.next_value::<Counts>()?.0)
                }
                "population" if p.population.is_none() => {
                    p.population = Some(map.next_value::<Pop>()?.0)
                }
                // Unknown or repeated: the full reader names it.
                _ => return Err(give_up()),
            }
        }
        p.finish().map(Fast).ok_or_else(give_up)
    }
}

/// A space count's fields as read, each at most once.
#[derive(Default)]
struct Parts {
    kind: bool,
    region: Option<RegionCode>,
    school: Option<SchoolCode>,
    as_of: Option<NaiveDate>,
    spaces: Option<SpaceCounts>,
    real_name: Option<SpaceCounts>,
    population: Option<Population>,
}

impl Parts {
    /// The record, if its fields make one the record reader takes.
    fn finish(self) -> Option<SpaceCount> {
        let Parts {
            kind: true,
            region: Some(region),
            school,
            as_of: Some(as_of),
            spaces: Some(spaces),
            real_name,
            population,
        } = self
        else {
            return None;
        };
        if spaces.is_empty() {
            return None;
        }
        if let Some(real) = &real_name {
            for (k, r) in real.iter() {
                if spaces.get(k).is_none_or(|s| r > s) {
                    return None;
                }
            }
        }
        if school.is_some() && region.level() == Level::Province {
            return None;
        }
        Some(SpaceCount {
            region,
            school,
            as_of,
            spaces,
            real_name,
            population,
        })
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

/// An entry's fields as [`plain`] read them, its text borrowed from the payload (the
/// caller checks the source id: its type lives with the entry's, which this module does
/// not import).
pub(super) struct PlainEntry<'a> {
    pub(super) source: &'a str,
    pub(super) seq: u64,
    pub(super) prev: crate::dsse::Digest,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) campaign: &'a str,
    pub(super) record: SpaceCount,
}

/// The entry in `payload` read without serde, when it is a space count in the plainest
/// JSON: every string free of escapes and control characters, every number a plain whole
/// number, keys in any order but each once; `None` at anything else (the serde readers
/// then take it). Agents write exactly this; reading it here instead of through serde's
/// visitors took ~40 % off reading an entry (a few per cent of an ingest's CPU). What
/// this reader takes, it reads as the JSON it is — the same fields as the serde readers,
/// held to them by `fast_tests` (seq 0 is refused where both readers' fields become an
/// entry).
pub(super) fn plain(payload: &[u8]) -> Option<PlainEntry<'_>> {
    let mut l = Lex { b: payload, i: 0 };
    let (mut source, mut seq, mut prev, mut at, mut campaign, mut record) =
        (None, None, None, None, None, None);
    l.object(|l, key| {
        match key {
            b"source" if source.is_none() => source = Some(l.str()?),
            b"seq" if seq.is_none() => seq = Some(l.uint()?),
            b"prev" if prev.is_none() => prev = Some(crate::dsse::Digest::from_hex(l.str()?)?),
            b"recorded_at" if at.is_none() => at = Some(time(l.str()?)?),
            b"campaign" if campaign.is_none() => campaign = Some(l.str()?),
            b"record" if record.is_none() => record = Some(plain_record(l)?),
            _ => return None,
        }
        Some(())
    })?;
    l.ws();
    if l.i != l.b.len() {
        return None;
    }
    Some(PlainEntry {
        source: source?,
        seq: seq?,
        prev: prev?,
        recorded_at: at?,
        campaign: campaign?,
        record: record?,
    })
}

/// The space count at `l`, as [`RecordVisitor`] reads it.
fn plain_record(l: &mut Lex<'_>) -> Option<SpaceCount> {
    let mut p = Parts::default();
    l.object(|l, key| {
        match key {
            b"kind" if !p.kind => {
                if l.str()? != "space_count" {
                    return None;
                }
                p.kind = true;
            }
            b"region" if p.region.is_none() => p.region = Some(RegionCode::parse(l.str()?).ok()?),
            b"school" if p.school.is_none() => p.school = Some(SchoolCode::parse(l.str()?).ok()?),
            b"as_of" if p.as_of.is_none() => p.as_of = Some(date(l.str()?)?),
            b"spaces" if p.spaces.is_none() => p.spaces = Some(plain_counts(l)?),
            b"real_name" if p.real_name.is_none() => p.real_name = Some(plain_counts(l)?),
            b"population" if p.population.is_none() => {
                let mut pop = Population::default();
                l.object(|l, key| {
                    let slot = match key {
                        b"teachers" => &mut pop.teachers,
                        b"students" => &mut pop.students,
                        b"schools" => &mut pop.schools,
                        _ => return None,
                    };
                    if slot.is_some() {
                        return None;
                    }
                    *slot = Some(l.uint().filter(|n| *n <= MAX_COUNT)?);
                    Some(())
                })?;
                p.population = Some(pop);
            }
            _ => return None,
        }
        Some(())
    })?;
    p.finish()
}

/// Counts per kind at `l`, as [`Counts`] reads them.
fn plain_counts(l: &mut Lex<'_>) -> Option<SpaceCounts> {
    let mut out = SpaceCounts::default();
    l.object(|l, key| {
        let k = SpaceKind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes() == key)
            .filter(|k| out.get(*k).is_none())?;
        out.set(k, Some(l.uint().filter(|n| *n <= MAX_COUNT)?));
        Some(())
    })?;
    Some(out)
}

/// A time in the plainest RFC 3339 form, `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, as chrono reads
/// it; `None` for any other form (other offsets, a leap second), which chrono reads.
fn time(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[b.len() - 1] != b'Z' {
        return None;
    }
    let day = date(s.get(..10)?)?;
    let two = |at: usize| -> Option<u32> {
        let (h, l) = (b[at], b[at + 1]);
        (h.is_ascii_digit() && l.is_ascii_digit())
            .then(|| u32::from(h - b'0') * 10 + u32::from(l - b'0'))
    };
    let (h, m, sec) = (two(11)?, two(14)?, two(17)?);
    let frac = &b[19..b.len() - 1];
    let nanos = match frac {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let mut n = 0u32;
            for d in digits {
                if !d.is_ascii_digit() {
                    return None;
                }
                n = n * 10 + u32::from(d - b'0');
            }
            n * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    if sec >= 60 {
        return None;
    }
    Some(day.and_hms_nano_opt(h, m, sec, nanos)?.and_utc())
}

/// A cursor over JSON bytes that takes only the plainest forms.
struct Lex<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Lex<'a> {
    /// Past JSON's whitespace.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Past `c` (after whitespace), if it is next.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// A string without escapes or control characters.
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.raw_str()?).ok()
    }

    /// The bytes of a string without escapes or control characters (a key is compared
    /// as bytes: one that is not valid UTF-8 matches no field).
    fn raw_str(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = self.b.get(self.i..)?;
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        let s = &rest[..len];
        self.i += len + 1;
        Some(s)
    }

    /// A whole number without sign, fraction, exponent or leading zero that fits a u64.
    fn uint(&mut self) -> Option<u64> {
        self.ws();
        let rest = self.b.get(self.i..)?;
        let len = rest
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if len == 0 || (len > 1 && rest[0] == b'0') {
            return None;
        }
        if matches!(rest.get(len), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut n = 0u64;
        for d in &rest[..len] {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.i += len;
        Some(n)
    }

    /// An object: `each` reads the value of each key.
    fn object(&mut self, mut each: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.raw_str()?;
            self.eat(b':')?;
            each(self, key)?;
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
        }
    }
}
