//! A seeded, reproducible generator of realistic 2018 campaign input for all 32 provincial
//! units: real GB/T 2260 cities and counties from the bundled directory, schools in every
//! provincial capital's districts, weekly space-count snapshots growing in proportion to
//! each unit's size and pace, milestones on time, late or never, nominations within and
//! beyond quota, activities, and some bad records.
//!
//! The output is a timeline per unit: what the platform hands its agent on which day.
//! Records are delivered the day after the date they carry, so an agent whose clock is a
//! few virtual hours behind never sees a date in its future.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use spacesync_shared::Campaign;
use spacesync_shared::region::{Directory, Level, RegionCode};

/// What one provincial unit's platform does over the campaign.
#[derive(Debug, Clone)]
pub struct UnitPlan {
    /// The unit.
    pub unit: RegionCode,
    /// Its agent's source id.
    pub source: String,
    /// Good records to hand over, by delivery day (each day's records are one batch).
    pub days: BTreeMap<NaiveDate, Vec<Value>>,
    /// Bad records, each handed over alone, with the reason it must be refused.
    pub bad: BTreeMap<NaiveDate, Vec<(Value, &'static str)>>,
    /// How this unit was scripted (for the summary): pace factor and milestone behaviour.
    pub script: UnitScript,
}

/// The behaviour planted for a unit.
#[derive(Debug, Clone, Default)]
pub struct UnitScript {
    /// Growth relative to its share of the target (1.0 = on target).
    pub pace: f64,
    /// Milestone id → "on_time" | "late" | "missing" | "bad_plan".
    pub milestones: BTreeMap<&'static str, &'static str>,
    /// Nominations planted beyond quota (refused by the agent).
    pub over_quota: bool,
}

impl UnitPlan {
    /// Total good records.
    pub fn records(&self) -> usize {
        self.days.values().map(Vec::len).sum()
    }
}

/// Every space-count week from the baseline to just past the campaign's reporting end.
fn report_dates(campaign: &Campaign, every: i64) -> Vec<NaiveDate> {
    let mut out = vec![campaign.baseline];
    let mut d = campaign.baseline + Duration::days(6);
    let end = NaiveDate::from_ymd_opt(2019, 1, 13).unwrap_or(campaign.ends_on);
    while d <= end {
        out.push(d);
        d += Duration::days(every);
    }
    out
}

/// Growth share reached on `d`: straight line to the target date, slower after it.
fn growth_share(campaign: &Campaign, d: NaiveDate) -> f64 {
    let span = (campaign.target.by - campaign.baseline).num_days().max(1) as f64;
    let x = (d - campaign.baseline).num_days() as f64 / span;
    if x <= 1.0 { x } else { 1.0 + (x - 1.0) * 0.3 }
}

fn school_code(county: RegionCode, n: u32) -> String {
    format!("1{county}{n:03}")
}

const SURNAMES: [&str; 12] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙",
];
const GIVEN: [&str; 12] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳",
];

/// Generates the whole campaign's input. Same seed, same output.
pub fn generate(campaign: &Campaign, seed: u64) -> Vec<UnitPlan> {
    let dir = Directory::bundled();
    let mut rng = StdRng::seed_from_u64(seed);
    let units = campaign.units.clone();
    // Planted behaviours, by position in a seeded shuffle of the units.
    let mut order: Vec<usize> = (0..units.len()).collect();
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let role = |i: usize| order.iter().position(|&o| o == i).unwrap_or(0);

    // Sizes: counties per unit (the Corps, unlisted, counts as 8).
    let counties_of = |u: RegionCode| -> Vec<RegionCode> {
        let mut v: Vec<RegionCode> = dir
            .children(u)
            .iter()
            .flat_map(|c| dir.children(*c).iter().copied())
            .filter(|c| c.level() == Level::County)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let sizes: Vec<usize> = units.iter().map(|u| counties_of(*u).len().max(8)).collect();
    let total_size: usize = sizes.iter().sum();

    let mut plans = Vec::new();
    for (i, unit) in units.iter().copied().enumerate() {
        let r = role(i);
        let mut script = UnitScript {
            pace: match r {
                0..=2 => rng.random_range(0.25..0.45),
                3..=6 => rng.random_range(0.55..0.75),
                _ => rng.random_range(0.8..1.15),
            },
            ..UnitScript::default()
        };
        let mut days: BTreeMap<NaiveDate, Vec<Value>> = BTreeMap::new();
        let mut bad: BTreeMap<NaiveDate, Vec<(Value, &'static str)>> = BTreeMap::new();
        let mut put =
            |d: NaiveDate, v: Value| days.entry(d + Duration::days(1)).or_default().push(v);

        // The unit's share of the +10M target, spread over its regions.
        let unit_target = campaign.target.new_spaces as f64 * sizes[i] as f64 / total_size as f64;
        let cities: Vec<RegionCode> = dir.children(unit).to_vec();
        let capital = cities.first().copied();
        let mut counties = counties_of(unit);
        if counties.is_empty() {
            counties.push(unit);
        }
        let weight: Vec<f64> = counties
            .iter()
            .map(|_| rng.random_range(0.6..1.4))
            .collect();
        let wsum: f64 = weight.iter().sum();
        let weekly = report_dates(campaign, 7);
        let biweekly = report_dates(campaign, 14);
        for (c, w) in counties.iter().zip(&weight) {
            let teachers = (rng.random_range(1_500..4_500) as f64 * w) as u64;
            let students = teachers * rng.random_range(12..18);
            let schools = (teachers / 60).max(3);
            let base_t = (teachers as f64 * rng.random_range(0.45..0.7)) as u64;
            let base_s = (students as f64 * rng.random_range(0.35..0.6)) as u64;
            let grow = unit_target * w / wsum * script.pace;
            let in_capital = capital.is_some_and(|cap| c.is_within(cap) && *c != cap);
            if in_capital && c.level() == Level::County {
                // Schools report one by one; the district sends no total of its own.
                let n = rng.random_range(6..12u32);
                for k in 1..=n {
                    let st = teachers / u64::from(n);
                    let ss = students / u64::from(n);
                    let bt = base_t / u64::from(n);
                    let bs = base_s / u64::from(n);
                    let g = grow / f64::from(n);
                    let code = school_code(*c, k);
                    let dip = rng.random_range(0..40) == 0;
                    for (j, d) in biweekly.iter().enumerate() {
                        let share = growth_share(campaign, *d);
                        let mut t = bt + (g * 0.06 * share) as u64;
                        let s = bs + (g * 0.94 * share) as u64;
                        if dip && j == 3 {
                            t = t.saturating_sub(5); // a correction the hub must flag
                        }
                        put(
                            *d,
                            json!({"kind":"space_count","region":c.to_string(),"school":code,"as_of":d.to_string(),
                            "spaces":{"teacher":t.min(st),"student":s.min(ss + g as u64),"school":1,"class":rng.random_range(20..60),"parent":s / 3},
                            "real_name":{"teacher":t.min(st) * 9 / 10,"student":s.min(ss + g as u64) * 7 / 10},
                            "population":{"teachers":st,"students":ss,"schools":1}}),
                        );
                    }
                }
            } else {
                for d in &weekly {
                    let share = growth_share(campaign, *d);
                    let t = base_t + (grow * 0.06 * share) as u64;
                    let s = base_s + (grow * 0.94 * share) as u64;
                    put(
                        *d,
                        json!({"kind":"space_count","region":c.to_string(),"as_of":d.to_string(),
                        "spaces":{"teacher":t,"student":s,"school":(schools as f64 * 0.8) as u64,"class":schools * 20,"parent":s / 4,"master_teacher":teachers / 100},
                        "real_name":{"teacher":t * 9 / 10,"student":s * 7 / 10},
                        "population":{"teachers":teachers,"students":students,"schools":schools}}),
                    );
                }
            }
        }

        // Milestones.
        let sha = |rng: &mut StdRng| -> String {
            (0..64)
                .map(|_| format!("{:x}", rng.random_range(0..16u8)))
                .collect()
        };
        let date =
            |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d).unwrap_or(campaign.baseline);
        let unit_name = spacesync_shared::region::unit(unit).map_or("", |u| u.name_zh);
        let contact_status = match r {
            7 => "missing",
            8 | 9 => "late",
            _ => "on_time",
        };
        let contact_day = match contact_status {
            "late" => date(2018, 10, 23),
            _ => date(2018, 10, rng.random_range(10..19)),
        };
        script.milestones.insert("contact_form", contact_status);
        if contact_status != "missing" {
            let name = format!(
                "{}{}",
                SURNAMES[rng.random_range(0..12)],
                GIVEN[rng.random_range(0..12)]
            );
            put(
                contact_day,
                json!({"kind":"milestone","milestone":"contact_form","region":unit.to_string(),"submitted_on":contact_day.to_string(),
                "document":{"title":format!("{unit_name}活动工作联系表"),"sha256":sha(&mut rng)},
                "details":{"contacts":[{"name":name,"role":"信息化处处长","phone":format!("010-6{:07}",rng.random_range(0..10_000_000)),"email":format!("contact{}@edu.example.cn",unit.as_u32() / 10_000)}]}}),
            );
        }
        let plan_status = match r {
            0 | 10 => "missing",
            3 | 11 | 12 => "late",
            13 | 14 => "bad_plan",
            _ => "on_time",
        };
        script.milestones.insert("implementation_plan", plan_status);
        let plan_cities: Vec<String> = cities.iter().map(|c| c.to_string()).collect();
        let mut years = serde_json::Map::new();
        let per_year = plan_cities.len().div_ceil(3).max(3);
        for (k, y) in ["2018", "2019", "2020"].iter().enumerate() {
            let chunk: Vec<&String> = plan_cities
                .iter()
                .skip(k * per_year)
                .take(per_year)
                .collect();
            if !chunk.is_empty() {
                years.insert(y.to_string(), json!(chunk));
            }
        }
        if plan_status == "bad_plan" {
            years.retain(|y, _| y == "2018");
        }
        let plan_day = match plan_status {
            "late" => date(2018, 11, rng.random_range(17..26)),
            _ => date(2018, 11, rng.random_range(5..15)),
        };
        if plan_status != "missing" && !years.is_empty() {
            put(
                plan_day,
                json!({"kind":"milestone","milestone":"implementation_plan","region":unit.to_string(),"submitted_on":plan_day.to_string(),
                "document":{"title":format!("{unit_name}网络学习空间应用普及实施方案（2018—2020年）"),"sha256":sha(&mut rng),"uri":format!("https://platform.example/{}/plan.pdf",unit.as_u32())},
                "details":{"years":years}}),
            );
        }
        let rec_status = match r {
            1 => "missing",
            4 | 15 => "late",
            _ => "on_time",
        };
        script.milestones.insert("recommendations", rec_status);
        let rec_day = match rec_status {
            "late" => date(2018, 12, 4),
            _ => date(2018, 11, rng.random_range(22..30)),
        };
        if rec_status != "missing" {
            put(
                rec_day,
                json!({"kind":"milestone","milestone":"recommendations","region":unit.to_string(),"submitted_on":rec_day.to_string(),
                "document":{"title":format!("{unit_name}优秀区域和学校推荐汇总表"),"sha256":sha(&mut rng)}}),
            );
        }

        // Nominations: the capital recommends schools, the province selects regions.
        if let Some(cap) = capital {
            let schools: Vec<(String, RegionCode)> = days
                .values()
                .flatten()
                .filter_map(|v| {
                    Some((
                        v["school"].as_str()?.to_string(),
                        RegionCode::parse(v["region"].as_str()?).ok()?,
                    ))
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let n = if r == 5 || r == 16 {
                12
            } else {
                rng.random_range(4..10)
            };
            script.over_quota = n > 10;
            let nom_day = date(2018, 11, 20);
            for (k, (code, region)) in schools.iter().take(n).enumerate() {
                let rec = json!({"kind":"recommendation","level":"city","by":cap.to_string(),
                    "nominee":{"type":"school","code":code,"region":region.to_string()}});
                if k < 10 {
                    days.entry(nom_day + Duration::days(1))
                        .or_default()
                        .push(rec);
                } else {
                    bad.entry(nom_day + Duration::days(2))
                        .or_default()
                        .push((rec, "city quota of 10 schools"));
                }
            }
            for city in cities.iter().take(3) {
                days.entry(date(2018, 11, 27)).or_default().push(json!({"kind":"recommendation","level":"province","by":unit.to_string(),
                    "nominee":{"type":"region","code":city.to_string(),"name":dir.name(*city).unwrap_or("")}}));
            }
        }

        // Activities.
        let n_act = rng.random_range(3..10);
        for _ in 0..n_act {
            let d = date(2018, 11, 1) + Duration::days(rng.random_range(0..60));
            let region = counties[rng.random_range(0..counties.len())];
            let cat = ["training", "conference", "exhibition", "research", "other"]
                [rng.random_range(0..5)];
            days.entry(d + Duration::days(1)).or_default().push(json!({"kind":"activity","region":region.to_string(),"date":d.to_string(),
                "category":cat,"title":format!("{}网络学习空间应用{}", dir.name(region).unwrap_or(""), match cat { "training" => "培训", "conference" => "推进会", "exhibition" => "展示", "research" => "调研", _ => "活动" }),
                "participants":rng.random_range(30..600)}));
        }

        // Bad records a platform might send; each must be refused with its reason.
        let c0 = counties[0].to_string();
        if r % 4 == 0 {
            bad.entry(date(2018, 10, 20)).or_default().push((json!({"kind":"space_count","region":c0,"as_of":"2018-10-19","spaces":{"teacher":-5}}), "negative count"));
        }
        if r % 4 == 1 {
            bad.entry(date(2018, 11, 3)).or_default().push((json!({"kind":"space_count","region":"110105","as_of":"2018-11-02","spaces":{"teacher":5}}), "out of scope"));
        }
        if r % 4 == 2 {
            bad.entry(date(2018, 11, 10)).or_default().push((json!({"kind":"activity","region":c0,"date":"2018-11-09","category":"party","title":"x"}), "unknown category"));
        }
        if r % 4 == 3 {
            bad.entry(date(2018, 12, 1)).or_default().push((json!({"kind":"space_count","region":c0,"as_of":"2018-12-30","spaces":{"teacher":5}}), "future date"));
        }
        plans.push(UnitPlan {
            unit,
            source: format!("prov-{unit}"),
            days,
            bad,
            script,
        });
    }
    // An out-of-scope region code in a unit of another province is only "out of scope"
    // where that unit is not Beijing itself.
    for p in &mut plans {
        if p.unit.province().as_u32() == 110000 {
            for list in p.bad.values_mut() {
                for (v, why) in list.iter_mut() {
                    if *why == "out of scope" {
                        v["region"] = json!("440106");
                    }
                }
            }
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;
    use spacesync_shared::Record;

    #[test]
    fn the_same_seed_gives_the_same_campaign_and_every_good_record_is_valid() {
        let c = Campaign::builtin_2018();
        let a = generate(&c, 7);
        let b = generate(&c, 7);
        assert_eq!(a.len(), 32);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.days, y.days);
        }
        let total: usize = a.iter().map(UnitPlan::records).sum();
        assert!(total > 20_000, "{total} records");
        let schools: std::collections::BTreeSet<&str> = a
            .iter()
            .flat_map(|p| p.days.values().flatten())
            .filter_map(|v| v["school"].as_str())
            .collect();
        assert!(schools.len() > 1_000, "{} schools", schools.len());
        for p in &a {
            for (day, list) in &p.days {
                for v in list {
                    let r = Record::from_value(v).unwrap_or_else(|e| panic!("{v}: {e:?}"));
                    for (field, code) in r.regions() {
                        assert!(code.is_within(p.unit), "{field} {code} outside {}", p.unit);
                    }
                    let carried = v["as_of"]
                        .as_str()
                        .or(v["date"].as_str())
                        .or(v["submitted_on"].as_str());
                    if let Some(d) = carried {
                        let d = NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
                        assert!(d < *day, "{v} delivered on {day}");
                    }
                }
            }
            for (v, why) in p.bad.values().flatten() {
                let ok = Record::from_value(v).is_ok();
                assert!(
                    !ok || matches!(
                        *why,
                        "out of scope" | "future date" | "city quota of 10 schools"
                    ),
                    "{why}: {v}"
                );
            }
        }
    }
}
