//! Realistic input: weekly space-count snapshots of schools, as provincial platforms hand
//! them to their agents over the 2018 campaign (Mondays from 2018-09-03 to 2018-12-31).
//!
//! Schools sit in real counties of the bundled GB/T 2260 directory (the Corps, which has
//! none listed, gets eight synthetic divisions), carry 10-digit school codes, and report
//! cumulative teacher, student, parent, class and school spaces that grow week by week,
//! with real-name figures and populations, like `spacesync-tests`' campaign generator.
//! Everything is a pure function of the shape, so the `presign` process and the parent
//! (for the PostgreSQL peer's unsigned rows) generate the same records.

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use spacesync_shared::region::{Directory, Level, RegionCode};
use spacesync_shared::{Campaign, Digest, Entry, Envelope, Record, SourceId};

/// Weekly reports from 2018-09-03 to 2018-12-31.
pub const WEEKS: u64 = 18;

/// The hub clock while serving the generated entries (`serve --now`): the day after the
/// last report was recorded.
pub const HUB_NOW: &str = "2019-01-02T02:00:00Z";

/// The first report date.
pub fn first_week() -> NaiveDate {
    NaiveDate::from_ymd_opt(2018, 9, 3).unwrap_or(NaiveDate::MIN)
}

/// How the entries are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// `total` entries over `sources` sources (one per provincial unit, cycling when more
    /// than 32): each source reports ⌈n/18⌉ schools weekly, cut at its share of `total`.
    Entries {
        /// Entries in all.
        total: u64,
        /// Sources.
        sources: usize,
    },
    /// `schools` schools spread over the 32 units (one source each), every school
    /// reporting every week: `18 × schools` entries.
    Schools {
        /// Schools in all.
        schools: u64,
    },
}

/// One school.
#[derive(Debug, Clone)]
pub struct School {
    /// 10-digit school code.
    pub code: String,
    /// The county it sits in.
    pub county: RegionCode,
    /// Teachers and students on the roll (the population).
    teachers: u64,
    students: u64,
    /// Share of teachers and students with a space in the first week.
    start_share: f64,
    classes: u64,
}

/// One source: a provincial platform's agent.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    /// Source id (`bench-440000`).
    pub id: String,
    /// Its scope: the provincial unit.
    pub unit: RegionCode,
    /// Its signing key (derived from its id, so every process derives the same).
    pub key: SigningKey,
    /// Its schools.
    pub schools: Vec<School>,
    /// How many entries it sends (≤ schools × weeks).
    pub entries: u64,
}

impl SourcePlan {
    /// The record of entry `k` (0-based): week `k / schools`, school `k % schools`.
    pub fn record(&self, k: u64) -> Value {
        let n = self.schools.len() as u64;
        let (week, school) = (k / n, &self.schools[(k % n) as usize]);
        let as_of = first_week() + Duration::weeks(week as i64);
        // Cumulative spaces: a start share growing linearly towards 95 % at week 26.
        let share =
            (school.start_share + (0.95 - school.start_share) * week as f64 / 26.0).min(0.95);
        let t = (school.teachers as f64 * share) as u64;
        let s = (school.students as f64 * share) as u64;
        json!({
            "kind": "space_count",
            "region": school.county.to_string(),
            "school": school.code,
            "as_of": as_of.to_string(),
            "spaces": {"teacher": t, "student": s, "parent": s / 3, "school": 1, "class": school.classes},
            "real_name": {"teacher": t * 9 / 10, "student": s * 7 / 10},
            "population": {"teachers": school.teachers, "students": school.students, "schools": 1},
        })
    }

    /// `recorded_at` of entry `k`: the day after its `as_of`, 10:00 in Beijing.
    pub fn recorded_at(&self, k: u64) -> DateTime<Utc> {
        let week = k / self.schools.len() as u64;
        let day = first_week() + Duration::weeks(week as i64) + Duration::days(1);
        day.and_hms_opt(2, 0, 0).unwrap_or_default().and_utc()
    }

    /// Entry `k` (0-based, seq `k + 1`), unsigned, chained to `prev`.
    pub fn entry(&self, k: u64, prev: Digest) -> Result<Entry> {
        let source = SourceId::parse(&self.id).map_err(|e| anyhow!("source id: {e}"))?;
        let record = Record::from_value(&self.record(k))
            .map_err(|p| anyhow!("generated record {k} of {} is invalid: {p:?}", self.id))?;
        Ok(Entry {
            source,
            seq: k + 1,
            prev,
            recorded_at: self.recorded_at(k),
            campaign: "2018".into(),
            record,
        })
    }

    /// Signs entries `from..to` (0-based), chained to `prev` (the payload hash of entry
    /// `from - 1`, zeros for the first).
    pub fn sign(&self, from: u64, to: u64, mut prev: Digest) -> Result<Vec<Envelope>> {
        let mut out = Vec::with_capacity((to - from) as usize);
        for k in from..to {
            let env = self.entry(k, prev)?.sign(&self.key);
            prev = env.payload_hash();
            out.push(env);
        }
        Ok(out)
    }
}

/// The signing key of source `id`: SHA-256 of a label and the id.
pub fn key_for(id: &str) -> SigningKey {
    let seed: [u8; 32] = Sha256::new()
        .chain_update(b"spacesync-bench source key\n")
        .chain_update(id.as_bytes())
        .finalize()
        .into();
    SigningKey::from_bytes(&seed)
}

/// The counties (or, where a city has none, the city) of a provincial unit, in code order;
/// eight synthetic divisions for a unit the directory does not list (the Corps).
pub fn counties(unit: RegionCode) -> Result<Vec<RegionCode>> {
    let dir = Directory::bundled();
    let mut out: Vec<RegionCode> = Vec::new();
    for city in dir.children(unit) {
        let kids: Vec<RegionCode> = dir
            .children(*city)
            .iter()
            .copied()
            .filter(|c| c.level() == Level::County)
            .collect();
        if kids.is_empty() && city.level() == Level::City {
            out.push(*city);
        }
        out.extend(kids);
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        for k in 1..=8 {
            let code = format!("{:06}", unit.as_u32() + 100 + k);
            out.push(RegionCode::parse(&code).map_err(|e| anyhow!("{code}: {e}"))?);
        }
    }
    Ok(out)
}

/// Small deterministic mixing (splitmix64), so records need no random state.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// School number `n` of a unit (0-based) in `counties`: round-robin over the counties, the
/// code `D` + county + 3 digits with `D` = 1 + n / 1000 per county (up to 9,000 a county).
fn school(unit_counties: &[RegionCode], n: u64) -> Result<School> {
    let c = unit_counties.len() as u64;
    let county = unit_counties[(n % c) as usize];
    let local = n / c;
    if local >= 9000 {
        bail!("more than 9,000 schools in county {county}; use fewer schools");
    }
    let code = format!("{}{county}{:03}", 1 + local / 1000, local % 1000);
    let h = mix(u64::from(county.as_u32()) << 20 ^ local);
    let teachers = 40 + h % 160;
    Ok(School {
        code,
        county,
        teachers,
        students: teachers * (12 + (h >> 8) % 7),
        start_share: 0.35 + ((h >> 16) % 30) as f64 / 100.0,
        classes: 12 + (h >> 24) % 48,
    })
}

/// The sources of a shape, with their schools and entry counts.
pub fn plan(shape: Shape) -> Result<Vec<SourcePlan>> {
    let units = Campaign::builtin_2018().units;
    // Per source index: (schools, entries).
    type PerSource = Box<dyn Fn(usize) -> (u64, u64)>;
    let (n_sources, per_source): (usize, PerSource) = match shape {
        Shape::Entries { total, sources } => {
            if sources == 0 {
                bail!("--sources must be at least 1");
            }
            let s = sources as u64;
            let f = move |i: usize| {
                let n = total / s + u64::from((i as u64) < total % s);
                (n.div_ceil(WEEKS), n)
            };
            (sources, Box::new(f))
        }
        Shape::Schools { schools } => {
            let u = units.len() as u64;
            let f = move |i: usize| {
                let n = schools / u + u64::from((i as u64) < schools % u);
                (n, n * WEEKS)
            };
            (units.len(), Box::new(f))
        }
    };
    let mut next_school: Vec<u64> = vec![0; units.len()];
    let mut out = Vec::with_capacity(n_sources);
    for i in 0..n_sources {
        let u = i % units.len();
        let unit = units[u];
        let id = if n_sources <= units.len() {
            format!("bench-{unit}")
        } else {
            format!("bench-{unit}-{}", i / units.len())
        };
        let (n_schools, entries) = per_source(i);
        let cs = counties(unit)?;
        let schools = (next_school[u]..next_school[u] + n_schools.max(1))
            .map(|n| school(&cs, n))
            .collect::<Result<Vec<_>>>()?;
        next_school[u] += n_schools.max(1);
        out.push(SourcePlan {
            key: key_for(&id),
            id,
            unit,
            schools,
            entries,
        });
    }
    Ok(out)
}

/// One source `id` in `unit` reporting `entries` entries: ⌈entries/18⌉ schools, weekly.
pub fn unit_plan(unit: RegionCode, id: &str, entries: u64) -> Result<SourcePlan> {
    let cs = counties(unit)?;
    let schools = (0..entries.div_ceil(WEEKS).max(1))
        .map(|n| school(&cs, n))
        .collect::<Result<Vec<_>>>()?;
    Ok(SourcePlan {
        id: id.to_string(),
        unit,
        key: key_for(id),
        schools,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_has_divisions_and_records_are_valid() {
        let plans = plan(Shape::Schools { schools: 64 }).expect("plan");
        assert_eq!(plans.len(), 32);
        for p in &plans {
            assert_eq!(p.entries, 2 * WEEKS);
            for k in [0, p.entries - 1] {
                let v = p.record(k);
                let r = Record::from_value(&v).unwrap_or_else(|e| panic!("{v}: {e:?}"));
                let region = RegionCode::parse(v["region"].as_str().unwrap_or("")).expect("code");
                assert!(region.is_within(p.unit), "{v} outside {}", p.unit);
                drop(r);
            }
            let now: DateTime<Utc> = HUB_NOW.parse().expect("HUB_NOW");
            assert!(p.recorded_at(p.entries - 1) < now);
        }
    }

    #[test]
    fn entries_are_split_over_sources_exactly() {
        let plans = plan(Shape::Entries {
            total: 2003,
            sources: 32,
        })
        .expect("plan");
        assert_eq!(plans.iter().map(|p| p.entries).sum::<u64>(), 2003);
        assert!(
            plans
                .iter()
                .all(|p| p.schools.len() as u64 * WEEKS >= p.entries)
        );
        let codes: std::collections::BTreeSet<&str> = plans
            .iter()
            .flat_map(|p| p.schools.iter().map(|s| s.code.as_str()))
            .collect();
        assert_eq!(
            codes.len(),
            plans.iter().map(|p| p.schools.len()).sum::<usize>(),
            "school codes are unique"
        );
    }

    #[test]
    fn a_chain_links() {
        let plans = plan(Shape::Entries {
            total: 64,
            sources: 32,
        })
        .expect("plan");
        let envs = plans[0].sign(0, 2, Digest::ZERO).expect("sign");
        let second = Entry::from_payload(&envs[1].payload).expect("entry");
        assert_eq!(second.prev, envs[0].payload_hash());
        assert_eq!(second.seq, 2);
    }
}
