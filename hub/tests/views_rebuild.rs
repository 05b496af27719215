//! The merged views kept incrementally on ingest equal the views rebuilt from the log, and
//! the views a restarted hub loads; and the merge rules hold on small hand-computed cases.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Instant;

use chrono::NaiveDate;
use common::*;
use serde_json::{Value, json};
use spacesync_hub::store::{Reader, Store, WriteBatch, keys};
use spacesync_hub::views::{Figures, Flag, Meta, Views};
use spacesync_hub::{log, maintenance};
use spacesync_shared::campaign::QuotaViolation;
use spacesync_shared::merkle;
use spacesync_shared::record::{Activity, Milestone, Recommendation, SpaceCounts, SpaceKind};
use spacesync_shared::region::{Directory, Level, SchoolCode};
use spacesync_shared::wire::IngestBatch;
use spacesync_shared::{Campaign, Record, RegionCode, SourceId};

// ---- snapshots of everything the views answer --------------------------------------------

/// (province, milestone id).
type MilestoneKey = (RegionCode, String);

/// Everything the views answer, owned, so views from different hubs can be compared.
#[derive(Debug, PartialEq)]
struct Snapshot {
    items: Vec<(Meta, Value)>,
    nation: Figures,
    totals: BTreeMap<RegionCode, Figures>,
    schools: BTreeMap<RegionCode, Vec<(SchoolCode, Figures)>>,
    flags: Vec<Flag>,
    milestones: Vec<(MilestoneKey, Vec<(Meta, Milestone)>)>,
    counted: Vec<(Meta, Recommendation)>,
    violations: Vec<(Meta, QuotaViolation)>,
    activities: Vec<(Meta, Activity)>,
    sources: Value,
}

/// What `v` answers; `r` is where its items are stored (the store, or for rebuilt views
/// the rebuild's batch over it).
fn snapshot<R: Reader + ?Sized>(v: &Views, r: &R, campaign: &Campaign) -> Snapshot {
    let rollup = v.rollup(campaign);
    // The roll-up kept as subjects change (region sums, flagged subjects, summaries) against
    // the one merging every subject afresh from its stored snapshots, on every state these
    // tests reach.
    let afresh = v.rollup_afresh(r, campaign).expect("afresh");
    assert_eq!(rollup.nation, afresh.nation, "maintained vs afresh: nation");
    assert_eq!(rollup.totals, afresh.totals, "maintained vs afresh: totals");
    assert_eq!(
        rollup.schools(),
        afresh.schools(),
        "maintained vs afresh: schools"
    );
    assert_eq!(rollup.flags, afresh.flags, "maintained vs afresh: flags");
    for region in afresh.totals.keys() {
        assert_eq!(
            rollup.schools_in(*region),
            afresh.schools_in(*region),
            "maintained vs afresh: schools of {region}"
        );
    }
    let noms = v.nominations(campaign);
    Snapshot {
        items: v
            .items(r)
            .expect("items")
            .into_iter()
            .map(|i| (i.meta, i.record.to_value()))
            .collect(),
        nation: rollup.nation.clone(),
        totals: rollup.totals.clone(),
        schools: rollup.schools(),
        flags: rollup.flags.clone(),
        milestones: v
            .milestones()
            .into_iter()
            .map(|(k, list)| {
                (
                    k,
                    list.into_iter()
                        .map(|(m, x)| (m.clone(), x.clone()))
                        .collect(),
                )
            })
            .collect(),
        counted: noms
            .counted
            .iter()
            .map(|(m, r)| ((*m).clone(), (*r).clone()))
            .collect(),
        violations: noms.violations.clone(),
        activities: v
            .activities()
            .into_iter()
            .map(|(m, a)| (m.clone(), a.clone()))
            .collect(),
        sources: serde_json::to_value(v.sources()).expect("json"),
    }
}

/// Asserts two snapshots are equal, naming the first part that differs.
fn assert_same(what: &str, a: &Snapshot, b: &Snapshot) {
    fn part<T: PartialEq + Debug>(what: &str, name: &str, a: &T, b: &T) {
        if a != b {
            let (da, db) = (format!("{a:?}"), format!("{b:?}"));
            let at = da
                .bytes()
                .zip(db.bytes())
                .take_while(|(x, y)| x == y)
                .count();
            let from = at.saturating_sub(200);
            panic!(
                "{what}: {name} differ at byte {at}:\n left: …{}\nright: …{}",
                &da[from..(at + 400).min(da.len())],
                &db[from..(at + 400).min(db.len())]
            );
        }
    }
    part(what, "items", &a.items, &b.items);
    part(what, "nation", &a.nation, &b.nation);
    part(what, "totals", &a.totals, &b.totals);
    part(what, "schools", &a.schools, &b.schools);
    part(what, "flags", &a.flags, &b.flags);
    part(what, "milestones", &a.milestones, &b.milestones);
    part(what, "counted nominations", &a.counted, &b.counted);
    part(what, "quota violations", &a.violations, &b.violations);
    part(what, "activities", &a.activities, &b.activities);
    part(what, "source activity", &a.sources, &b.sources);
}

// ---- the randomized run ------------------------------------------------------------------

/// Where one source may report: real codes from the bundled directory.
#[derive(Clone)]
struct Area {
    province: RegionCode,
    cities: Vec<RegionCode>,
    counties: Vec<RegionCode>,
}

fn area(province: RegionCode, rng: &mut Rng) -> Area {
    let dir = Directory::bundled();
    let mut cities: Vec<RegionCode> = dir
        .children(province)
        .iter()
        .copied()
        .filter(|c| c.level() == Level::City)
        .collect();
    // A few cities and counties per province, so snapshots collide on subjects.
    while cities.len() > 3 {
        cities.remove(rng.below(cities.len() as u64) as usize);
    }
    let mut counties = Vec::new();
    for c in &cities {
        let mut list: Vec<RegionCode> = dir
            .children(*c)
            .iter()
            .copied()
            .filter(|c| c.level() == Level::County)
            .collect();
        while list.len() > 2 {
            list.remove(rng.below(list.len() as u64) as usize);
        }
        counties.extend(list);
    }
    Area {
        province,
        cities,
        counties,
    }
}

fn date(rng: &mut Rng) -> String {
    // Twelve dates five days apart around the baseline (2018-10-01): ties are common.
    let d = NaiveDate::from_ymd_opt(2018, 9, 26).expect("date")
        + chrono::Duration::days(5 * rng.below(12) as i64);
    d.to_string()
}

fn school_of(county: RegionCode, rng: &mut Rng) -> String {
    format!("{county}{:04}", rng.range(1, 4))
}

fn counts(rng: &mut Rng) -> (Value, Option<Value>) {
    let mut spaces = serde_json::Map::new();
    let mut real = serde_json::Map::new();
    for k in SpaceKind::ALL {
        if k == SpaceKind::Teacher || rng.chance(40) {
            let n = rng.range(0, 5000);
            spaces.insert(k.as_str().into(), json!(n));
            if rng.chance(30) {
                real.insert(k.as_str().into(), json!(rng.range(0, n)));
            }
        }
    }
    let real = (!real.is_empty()).then_some(Value::Object(real));
    (Value::Object(spaces), real)
}

fn random_record(rng: &mut Rng, area: &Area, seq: u64) -> Value {
    let p = area.province.to_string();
    let has_counties = !area.counties.is_empty();
    let roll = rng.below(100);
    if seq > 1 && roll < 10 {
        return withdrawal(rng.range(1, seq - 1));
    }
    if roll < 70 {
        let (region, school) = match rng.below(100) {
            0..=64 if has_counties => {
                let c = *rng.pick(&area.counties);
                (c.to_string(), school_of(c, rng))
            }
            65..=84 if has_counties => (rng.pick(&area.counties).to_string(), String::new()),
            85..=94 if has_counties => (rng.pick(&area.cities).to_string(), String::new()),
            _ => (p.clone(), String::new()),
        };
        let (spaces, real) = counts(rng);
        let mut v = space_count(&region, &school, &date(rng), spaces);
        if let Some(r) = real {
            v["real_name"] = r;
        }
        if rng.chance(20) {
            v["population"] =
                json!({ "teachers": rng.range(1, 9000), "students": rng.range(1, 90000) });
        }
        return v;
    }
    if roll < 76 {
        let ids = ["contact_form", "implementation_plan", "recommendations"];
        let id = *rng.pick(&ids);
        let mut v = milestone(id, &p, &date(rng));
        if v["milestone"] == "implementation_plan" && area.cities.len() >= 3 {
            let cs: Vec<String> = area.cities.iter().map(ToString::to_string).collect();
            v["details"] = json!({ "years": { "2018": cs, "2019": cs } });
        }
        if v["milestone"] == "contact_form" {
            v["details"] = json!({ "contacts": [{ "name": "张三", "role": "处长",
                "phone": "020-12345678", "email": "zhang@example.cn" }] });
        }
        return v;
    }
    if roll < 88 && has_counties {
        let county = *rng.pick(&area.counties);
        let school = school_of(county, rng);
        return match rng.below(4) {
            0 => recommendation("county", &county.to_string(), &school, &county.to_string()),
            1 => {
                let city = county.city().expect("county has a city");
                recommendation("city", &city.to_string(), &school, &county.to_string())
            }
            2 => recommendation("province", &p, &school, &county.to_string()),
            _ => json!({ "kind": "recommendation", "level": "province", "by": p,
                         "nominee": { "type": "region", "code": county.to_string() } }),
        };
    }
    let region = if has_counties {
        rng.pick(&area.counties).to_string()
    } else {
        p
    };
    activity(&region, &date(rng), "应用培训")
}

/// An independent model of one subject's merge: per kind, among snapshots not withdrawn,
/// the latest `as_of` wins and a tie goes to the later log entry.
fn model_school_spaces(
    views: &Views,
    store: &dyn Store,
) -> BTreeMap<(RegionCode, SchoolCode), SpaceCounts> {
    // Per school and kind: (as_of, log index, count) of the winner so far.
    type Slots = [Option<(NaiveDate, u64, u64)>; 8];
    let mut best: BTreeMap<(RegionCode, SchoolCode), Slots> = BTreeMap::new();
    for item in views.live(store).expect("items") {
        let Record::SpaceCount(s) = &item.record else {
            continue;
        };
        let Some(school) = s.school else { continue };
        let slots = best.entry((s.region, school)).or_default();
        for (k, v) in s.spaces.iter() {
            let cand = (s.as_of, item.meta.log_index, v);
            let slot = &mut slots[k.index()];
            if slot.is_none_or(|b| (cand.0, cand.1) > (b.0, b.1)) {
                *slot = Some(cand);
            }
        }
    }
    best.into_iter()
        .map(|(k, slots)| {
            let mut c = SpaceCounts::default();
            for kind in SpaceKind::ALL {
                c.set(kind, slots[kind.index()].map(|s| s.2));
            }
            (k, c)
        })
        .collect()
}

/// Ingests `total` random entries from 32 sources in batches of 1‥150 (one source per
/// batch), then compares live, rebuilt and reloaded views.
fn run(backend: Backend, seed: u64, total: usize) {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let campaign = Campaign::builtin_2018();
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());

    // 31 provincial units with one source each, and a second source for Guangdong, so
    // cross-source conflicts and per-province quotas across sources occur.
    let mut scopes: Vec<RegionCode> = campaign.units.iter().copied().take(30).collect();
    scopes.push(RegionCode::parse("660000").expect("code"));
    scopes.push(RegionCode::parse("440000").expect("code"));
    assert_eq!(scopes.len(), 32);
    let mut agents: Vec<(Agent, Area)> = scopes
        .iter()
        .enumerate()
        .map(|(i, scope)| {
            let a = Agent::new(&format!("src-{i:02}"), 100 + i as u8, &scope.to_string());
            th.register(&a);
            (a, area(*scope, &mut rng))
        })
        .collect();
    // Guangdong's two platforms report on the same cities and counties.
    let gd = agents
        .iter()
        .position(|(a, _)| a.scope == scopes[31])
        .expect("gd");
    agents[31].1 = agents[gd].1.clone();
    // The registrations (the hub's own entries) stored the views' position with them.
    assert_eq!(
        stored_position(th.hub.store.as_ref()),
        th.log_size(),
        "seed {seed}: v/n after the registrations"
    );

    let mut sent = 0;
    let mut batches = 0;
    while sent < total {
        let (agent, area) = &mut agents[rng.below(32) as usize];
        let n = (rng.range(1, 150) as usize).min(total - sent);
        let records: Vec<Value> = (0..n)
            .map(|i| random_record(&mut rng, area, agent.next + i as u64))
            .collect();
        let batch: IngestBatch = agent.batch(&records);
        let out = th.hub.ingest(batch).expect("ingest");
        assert_eq!(out.status, 200, "seed {seed}: {:?}", out.response.refused);
        assert_eq!(out.appended, n);
        sent += n;
        batches += 1;
    }
    assert_eq!(th.source_leaves(), total as u64);

    let store = th.hub.store.as_ref();
    let live = snapshot(&th.hub.state().views, store, &campaign);
    // Settling every 3 leaves: the rebuild reads back from the store the space counts it
    // found equal there, and must come to the same figures as one holding them all.
    let rb =
        maintenance::rebuild_views_settling(store, th.hub.campaign.baseline, u64::MAX, 3, |_| {})
            .expect("rebuild");
    assert_same(
        &format!("seed {seed}: live vs rebuilt"),
        &live,
        &snapshot(&rb.views, &rb.reader(store), &campaign),
    );

    // The run exercised what it claims to.
    let withdrawn = live
        .items
        .iter()
        .filter(|(m, _)| m.withdrawn_by.is_some())
        .count();
    let kinds = |f: fn(&Flag) -> bool| live.flags.iter().filter(|x| f(x)).count();
    let decreases = kinds(|f| matches!(f, Flag::Decrease { .. }));
    let conflicts = kinds(|f| matches!(f, Flag::Conflict { .. }));
    let discrepancies = kinds(|f| matches!(f, Flag::Discrepancy { .. }));
    assert!(withdrawn > 0 && decreases > 0 && conflicts > 0 && discrepancies > 0);
    assert!(!live.milestones.is_empty() && !live.activities.is_empty());
    assert!(!live.counted.is_empty() && !live.violations.is_empty());

    // The merged school figures agree with the independent model.
    let model = model_school_spaces(&th.hub.state().views, store);
    let merged: BTreeMap<(RegionCode, SchoolCode), SpaceCounts> = live
        .schools
        .iter()
        .flat_map(|(r, list)| list.iter().map(move |(s, f)| ((*r, *s), f.spaces)))
        .collect();
    assert_eq!(merged, model, "seed {seed}: school figures vs model");

    // Each batch stored the sources' activity and the views' position it left (written
    // once a batch): a rebuild writes exactly the same.
    let activity = |store: &dyn Store| -> Vec<(Vec<u8>, Vec<u8>)> {
        store.scan(b"v/a/").map(|r| r.expect("scan")).collect()
    };
    let before = activity(store);
    assert!(
        !before.is_empty() && before.len() <= 32,
        "seed {seed}: one v/a/ per source that sent"
    );
    assert_eq!(stored_position(store), th.log_size(), "seed {seed}: v/n");
    maintenance::rebuild(store, th.hub.campaign.baseline, |_| {}).expect("rebuild");
    assert_eq!(activity(store), before, "seed {seed}: v/a/ rebuilt");
    assert_eq!(
        stored_position(store),
        th.log_size(),
        "seed {seed}: v/n rebuilt"
    );

    // A restarted hub loads the same views, and a rebuild over its store agrees too.
    drop(th);
    let th = TestHub::open(dir.path());
    let store = th.hub.store.as_ref();
    let loaded = snapshot(&th.hub.state().views, store, &campaign);
    assert_same(&format!("seed {seed}: live vs reloaded"), &live, &loaded);
    let rb = maintenance::rebuild_views(store, th.hub.campaign.baseline, |_| {}).expect("rebuild");
    assert_same(
        &format!("seed {seed}: reloaded vs rebuilt"),
        &loaded,
        &snapshot(&rb.views, &rb.reader(store), &campaign),
    );
    eprintln!(
        "seed {seed}: {total} entries in {batches} batches from 32 sources; {} items withdrawn, \
         {decreases} decreases, {conflicts} conflicts, {discrepancies} discrepancies, {} quota \
         violations flagged; {:.1} s",
        withdrawn,
        live.violations.len(),
        started.elapsed().as_secs_f64()
    );
}

/// `v/n`: the log index after the last entry the stored views hold.
fn stored_position(store: &dyn Store) -> u64 {
    let b = store.get(b"v/n").expect("read v/n").expect("v/n stored");
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

fn incremental_views_equal_rebuilt_views_10000_entries(backend: Backend) {
    run(backend, 0x5eed_2018, 10_000);
}

fn incremental_views_equal_rebuilt_views_other_seeds(backend: Backend) {
    for seed in [1, 2] {
        run(backend, seed, 3_000);
    }
}

// ---- the merge rules, by hand --------------------------------------------------------------

const COUNTY: &str = "440106";
const S1: &str = "4144010601";
const S2: &str = "4144010602";

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
}

fn counts_of(list: &[(&str, u64)]) -> SpaceCounts {
    let mut c = SpaceCounts::default();
    for (k, v) in list {
        c.set(SpaceKind::parse(k).expect("kind"), Some(*v));
    }
    c
}

fn decrease(before: (&str, u64), after: (&str, u64), source: &str) -> Flag {
    Flag::Decrease {
        region: RegionCode::parse(COUNTY).expect("code"),
        school: Some(SchoolCode::parse(S1).expect("code")),
        kind: SpaceKind::Teacher,
        before: (day(before.0), before.1),
        after: (day(after.0), after.1),
        source: SourceId::parse(source).expect("id"),
    }
}

/// The county's merged figures and the flags raised.
struct Want {
    spaces: &'static [(&'static str, u64)],
    baseline: &'static [(&'static str, u64)],
    new_spaces: i64,
    flags: Vec<Flag>,
}

/// Sends `entries` (source 0 = gd-a, 1 = gd-b, both scoped to Guangdong) and checks the
/// county 440106's figures and the flags, in the live views, the rebuilt views and the API.
async fn check(backend: Backend, name: &str, entries: &[(usize, Value)], want: Want) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut agents = [
        Agent::new("gd-a", 1, "440000"),
        Agent::new("gd-b", 2, "440000"),
    ];
    for a in &agents {
        th.register(a);
    }
    for (who, rec) in entries {
        let batch = agents[*who].batch(std::slice::from_ref(rec));
        th.ingest_ok(&batch).await;
    }
    let campaign = Campaign::builtin_2018();
    let county = RegionCode::parse(COUNTY).expect("code");
    let rebuilt =
        maintenance::rebuild_views(th.hub.store.as_ref(), th.hub.campaign.baseline, |_| {})
            .expect("rebuild")
            .views;
    for (label, rollup) in [
        ("live", th.hub.state().views.rollup(&campaign)),
        ("rebuilt", rebuilt.rollup(&campaign)),
    ] {
        let f = rollup.region(county);
        assert_eq!(f.spaces, counts_of(want.spaces), "{name} ({label}): spaces");
        assert_eq!(
            f.baseline,
            counts_of(want.baseline),
            "{name} ({label}): baseline"
        );
        assert_eq!(f.new_spaces(), want.new_spaces, "{name} ({label}): new");
        assert_eq!(rollup.flags, want.flags, "{name} ({label}): flags");
        // The county's figures carry up to its city and province unchanged.
        for up in ["440100", "440000"] {
            let r = RegionCode::parse(up).expect("code");
            assert_eq!(rollup.region(r).spaces, f.spaces, "{name} ({label}): {up}");
        }
    }
    let api = th.get_json(&format!("/v1/regions/{COUNTY}")).await;
    assert_eq!(api["new_spaces"], json!(want.new_spaces), "{name}: API");
    for (k, v) in want.spaces {
        assert_eq!(api["spaces"][k], json!(v), "{name}: API spaces.{k}");
    }
}

async fn merge_rules_hold_on_hand_computed_cases(backend: Backend) {
    check(
        backend,
        "latest as_of wins, whatever the arrival order",
        &[
            (0, teachers(COUNTY, S1, "2018-11-01", 100)),
            (0, teachers(COUNTY, S1, "2018-11-05", 120)),
            (0, teachers(COUNTY, S1, "2018-11-03", 110)),
        ],
        Want {
            spaces: &[("teacher", 120)],
            baseline: &[],
            new_spaces: 120,
            flags: vec![],
        },
    )
    .await;
    check(
        backend,
        "equal as_of: the later entry (a correction) wins, even when lower",
        &[
            (0, teachers(COUNTY, S1, "2018-11-05", 125)),
            (0, teachers(COUNTY, S1, "2018-11-05", 120)),
        ],
        Want {
            spaces: &[("teacher", 120)],
            baseline: &[],
            new_spaces: 120,
            flags: vec![],
        },
    )
    .await;
    check(
        backend,
        "a lower count later is kept and flagged",
        &[
            (0, teachers(COUNTY, S1, "2018-11-01", 100)),
            (0, teachers(COUNTY, S1, "2018-11-05", 90)),
        ],
        Want {
            spaces: &[("teacher", 90)],
            baseline: &[],
            new_spaces: 90,
            flags: vec![decrease(("2018-11-01", 100), ("2018-11-05", 90), "gd-a")],
        },
    )
    .await;
    check(
        backend,
        "own total within 1 % of its schools: own total, no flag",
        &[
            (0, teachers(COUNTY, "", "2018-11-05", 1000)),
            (0, teachers(COUNTY, S1, "2018-11-05", 600)),
            (0, teachers(COUNTY, S2, "2018-11-05", 390)),
        ],
        Want {
            spaces: &[("teacher", 1000)],
            baseline: &[],
            new_spaces: 1000,
            flags: vec![],
        },
    )
    .await;
    check(
        backend,
        "own total more than 1 % off its schools: own total, discrepancy flagged",
        &[
            (0, teachers(COUNTY, "", "2018-11-05", 1000)),
            (0, teachers(COUNTY, S1, "2018-11-05", 600)),
            (0, teachers(COUNTY, S2, "2018-11-05", 380)),
        ],
        Want {
            spaces: &[("teacher", 1000)],
            baseline: &[],
            new_spaces: 1000,
            flags: vec![Flag::Discrepancy {
                region: RegionCode::parse(COUNTY).expect("code"),
                kind: SpaceKind::Teacher,
                reported: 1000,
                sum_of_parts: 980,
            }],
        },
    )
    .await;
    check(
        backend,
        "a withdrawal removes a snapshot's contribution",
        &[
            (0, teachers(COUNTY, S1, "2018-11-05", 100)),
            (0, teachers(COUNTY, S2, "2018-11-05", 50)),
            (0, withdrawal(2)),
        ],
        Want {
            spaces: &[("teacher", 100)],
            baseline: &[],
            new_spaces: 100,
            flags: vec![],
        },
    )
    .await;
    check(
        backend,
        "withdrawing the lower, later snapshot restores the earlier and drops the flag",
        &[
            (0, teachers(COUNTY, S1, "2018-11-01", 100)),
            (0, teachers(COUNTY, S1, "2018-11-05", 90)),
            (0, withdrawal(2)),
        ],
        Want {
            spaces: &[("teacher", 100)],
            baseline: &[],
            new_spaces: 100,
            flags: vec![],
        },
    )
    .await;
    check(
        backend,
        "new spaces = now − the latest snapshot on or before the baseline date",
        &[
            (0, teachers(COUNTY, S1, "2018-09-30", 40)),
            (0, teachers(COUNTY, S1, "2018-10-01", 60)),
            (0, teachers(COUNTY, S1, "2018-11-20", 100)),
        ],
        Want {
            spaces: &[("teacher", 100)],
            baseline: &[("teacher", 60)],
            new_spaces: 40,
            flags: vec![],
        },
    )
    .await;
    check(
        backend,
        "two sources, same school and date: the later in the log wins, conflict flagged",
        &[
            (0, teachers(COUNTY, S1, "2018-11-05", 100)),
            (1, teachers(COUNTY, S1, "2018-11-05", 80)),
        ],
        Want {
            spaces: &[("teacher", 80)],
            baseline: &[],
            new_spaces: 80,
            flags: vec![Flag::Conflict {
                region: RegionCode::parse(COUNTY).expect("code"),
                school: Some(SchoolCode::parse(S1).expect("code")),
                as_of: day("2018-11-05"),
                sources: vec![
                    SourceId::parse("gd-a").expect("id"),
                    SourceId::parse("gd-b").expect("id"),
                ],
            }],
        },
    )
    .await;
    check(
        backend,
        "a kind no snapshot gives stays unknown, not zero",
        &[
            (0, teachers(COUNTY, S1, "2018-11-05", 10)),
            (
                0,
                space_count(COUNTY, S2, "2018-11-05", json!({ "student": 5 })),
            ),
        ],
        Want {
            spaces: &[("teacher", 10), ("student", 5)],
            baseline: &[],
            new_spaces: 15,
            flags: vec![],
        },
    )
    .await;
}

// ---- maintenance::verify on a damaged copy -------------------------------------------------

/// A closed store whose log is, by index:
/// 0‥3 gd-a 1‥4 · 4‥6 gd-b 1‥3 · 7‥9 gd-a 5‥7 · 10‥11 gd-c 1‥2 · 12‥13 gd-b 4‥5.
async fn good_store(backend: Backend) -> tempfile::TempDir {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut a = Agent::new("gd-a", 1, "440000");
    let mut b = Agent::new("gd-b", 2, "440000");
    let mut c = Agent::new("bj-c", 3, "110000");
    // As an old hub registered them (no log entry), so the indexes below are the sources'.
    for x in [&a, &b, &c] {
        th.register_unlogged(x);
    }
    let gd = |n: u64| -> Vec<Value> {
        (0..n)
            .map(|i| teachers(COUNTY, S1, "2018-11-05", 100 + i))
            .collect()
    };
    let bj = |n: u64| -> Vec<Value> {
        (0..n)
            .map(|i| activity("110105", "2018-11-05", &format!("活动 {i}")))
            .collect()
    };
    th.ingest_ok(&a.batch(&gd(4))).await;
    th.ingest_ok(&b.batch(&gd(3))).await;
    th.ingest_ok(&a.batch(&gd(3))).await;
    th.ingest_ok(&c.batch(&bj(2))).await;
    th.ingest_ok(&b.batch(&gd(2))).await;
    assert_eq!(th.log_size(), 14);
    // As a clean stop does: every summary under its own key (the damage below is to them).
    th.hub.fold_summaries().expect("fold");
    dir
}

fn put(store: &dyn Store, key: Vec<u8>, value: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.put(key, value);
    store.apply(b).expect("apply");
}

/// Stores `bytes` as leaf `index`'s record, inside the pack that holds it.
fn put_leaf(store: &dyn Store, index: u64, bytes: Vec<u8>) {
    log::replace_record(store, index, Some(bytes)).expect("replace");
}

fn delete(store: &dyn Store, key: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.delete(key);
    store.apply(b).expect("apply");
}

/// Damages a copy of `good` with `damage` and checks that `verify` reports exactly the
/// problems `want` (one substring per problem, in order).
fn check_verify(good: &std::path::Path, name: &str, damage: impl Fn(&dyn Store), want: &[&str]) {
    let copy = copy_of(good);
    let store = open_store(copy.path());
    let store = store.as_ref();
    damage(store);
    let report = maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {})
        .expect("verify runs");
    assert_eq!(
        report.problems.len(),
        want.len(),
        "{name}: problems {:#?}",
        report.problems
    );
    for (got, want) in report.problems.iter().zip(want) {
        assert!(got.contains(want), "{name}: {got:?} lacks {want:?}");
    }
    // The rebuild verify compares with lets go of the space counts it finds equal in the
    // store; how often it looks must not change its verdict.
    let settling = maintenance::views_problems(store, 2).expect("views verdict");
    let whole = maintenance::views_problems(store, u64::MAX).expect("views verdict");
    assert_eq!(
        settling, whole,
        "{name}: the views' verdict settling every 2 leaves"
    );
}

async fn verify_names_the_damaged_leaf_source_and_seq(backend: Backend) {
    let dir = good_store(backend).await;
    let good = dir.path();
    {
        let store = open_store(good);
        let store = store.as_ref();
        let report = maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {})
            .expect("verify runs");
        assert!(report.ok(), "{:#?}", report.problems);
        assert_eq!((report.leaves, report.sources), (14, 3));
    }

    let flip_payload = |index: u64| {
        move |s: &dyn Store| {
            let mut rec = log::read(s, index).expect("read").expect("leaf");
            rec.envelope.payload[20] ^= 0x01;
            put_leaf(s, index, serde_json::to_vec(&rec).expect("json"));
        }
    };
    check_verify(
        good,
        "payload byte overwritten in the middle of a chain",
        flip_payload(2),
        &[
            // Nodes below level 4 are computed from the log, not stored: no stored node
            // covers leaf 2 in a log of 14 leaves (the first completes with leaf 15).
            "log leaf 2 (gd-a seq 3): bad signature",
            "the stored tree root",
            "differs from the signed checkpoint",
        ],
    );
    check_verify(
        good,
        "payload byte overwritten in the last leaf",
        flip_payload(13),
        &[
            // No stored node covers the last two leaves of 14 yet.
            "log leaf 13 (gd-b seq 5): bad signature",
            "the stored tree root",
            "differs from the signed checkpoint",
        ],
    );
    check_verify(
        good,
        "log record no longer JSON",
        |s| put_leaf(s, 7, b"{\"received_at\":".to_vec()),
        &["log leaf 7 (gd-a seq 5): stored value under log/7 is damaged"],
    );
    check_verify(
        good,
        "log key deleted",
        |s| log::replace_record(s, 5, None).expect("remove leaf"),
        &["log leaf 5 (gd-b seq 2) is missing"],
    );
    check_verify(
        good,
        "last log key deleted",
        |s| log::replace_record(s, 13, None).expect("remove leaf"),
        &[
            "log leaf 13 (gd-b seq 5) is missing",
            "the latest checkpoint covers 14 leaves but the log has 13",
        ],
    );
    check_verify(
        good,
        "source index run deleted",
        |s| {
            let id = SourceId::parse("bj-c").expect("id");
            let key = spacesync_hub::log::index::key_of(s, &id, 1)
                .expect("lookup")
                .expect("indexed");
            delete(s, key)
        },
        // One run per batch: bj-c's batch of two entries lose their index together.
        &[
            "log leaf 10 (bj-c seq 1): the source index does not point at this leaf",
            "log leaf 11 (bj-c seq 2): the source index does not point at this leaf",
        ],
    );
    check_verify(
        good,
        "tree node overwritten",
        |s| put(s, keys::node(1, 2), vec![7; 32]),
        &["log leaf 5: the stored tree node (level 1, index 2)"],
    );
    check_verify(
        good,
        "checkpoint size line altered",
        |s| {
            let note = String::from_utf8(s.get(keys::CHECKPOINT).expect("get").expect("note"))
                .expect("utf8");
            put(
                s,
                keys::CHECKPOINT.to_vec(),
                note.replacen("\n14\n", "\n15\n", 1).into_bytes(),
            );
        },
        &["the latest checkpoint does not verify"],
    );
    check_verify(
        good,
        "checkpoint signed by another key",
        |s| {
            let cp = merkle::Checkpoint {
                origin: ORIGIN.into(),
                size: 14,
                root: log::root_at(s, 14).expect("root"),
            };
            let note = merkle::sign_checkpoint(
                &cp,
                ORIGIN,
                &ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
            )
            .expect("sign");
            put(s, keys::CHECKPOINT.to_vec(), note.into_bytes());
        },
        &["the latest checkpoint does not verify"],
    );
    check_verify(
        good,
        "checkpoint rolled back to an older, validly signed one",
        |s| {
            let cp = merkle::Checkpoint {
                origin: ORIGIN.into(),
                size: 10,
                root: log::root_at(s, 10).expect("root"),
            };
            let note = merkle::sign_checkpoint(&cp, ORIGIN, &hub_key()).expect("sign");
            put(s, keys::CHECKPOINT.to_vec(), note.into_bytes());
        },
        &["the latest checkpoint covers 10 leaves but the log has 14"],
    );
    let subject_key = |prefix: &[u8]| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(&440106u32.to_be_bytes());
        k.push(1);
        k.extend_from_slice(&4144010601u64.to_be_bytes());
        k
    };
    check_verify(
        good,
        "a stored block of snapshots deleted",
        |s| {
            // Leaf 2's block (log indexes 0..=15) under the key of its last index.
            let k = [b"v/c/".as_slice(), &15u64.to_be_bytes()].concat();
            assert!(s.get(&k).expect("get").is_some());
            delete(s, k);
        },
        // The block held every space count of leaves 0..=15: each is missing, the first named.
        &[
            "disagree with the log at 12 log leaves: the view item of log leaf 0 is missing from what the log holds",
        ],
    );
    check_verify(
        good,
        "a stored snapshot damaged",
        |s| {
            put(
                s,
                [b"v/c/".as_slice(), &15u64.to_be_bytes()].concat(),
                vec![2, 2, 200],
            )
        },
        &["the stored views are damaged: stored value under v/c/"],
    );
    check_verify(
        good,
        "where a subject's chain of snapshots starts moved",
        |s| {
            // A summary: [2, newest log index + 1 (LEB128), ...].
            let mut v = s.get(&subject_key(b"v/s/")).expect("get").expect("summary");
            assert_eq!(v[0], 2);
            v[1] ^= 1;
            put(s, subject_key(b"v/s/"), v)
        },
        &[
            "1 stored subject summaries disagree with the snapshots in the log (first: school 4144010601 (region 440106))",
        ],
    );
    check_verify(
        good,
        "a stored summary deleted",
        |s| delete(s, subject_key(b"v/s/")),
        &[
            "1 stored subject summaries disagree with the snapshots in the log (first: school 4144010601 (region 440106))",
        ],
    );
    check_verify(
        good,
        "a stored summary damaged",
        |s| put(s, subject_key(b"v/s/"), vec![1, 200]),
        &["the stored views are damaged: stored value under v/s/"],
    );
    check_verify(
        good,
        "a source's activity deleted",
        |s| delete(s, b"v/a/gd-a".to_vec()),
        &["the stored per-source activity"],
    );
    check_verify(
        good,
        "checkpoint deleted",
        |s| delete(s, keys::CHECKPOINT.to_vec()),
        &["no signed checkpoint is stored"],
    );
}

backends!(async merge_rules_hold_on_hand_computed_cases, verify_names_the_damaged_leaf_source_and_seq);

backends!(sync incremental_views_equal_rebuilt_views_10000_entries, incremental_views_equal_rebuilt_views_other_seeds);
