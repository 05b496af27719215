//! Campaign tracking: deadlines per provincial unit × milestone, plan checks, pace
//! against the target trajectory, quota violations, silent sources and the lagging list.
//!
//! Everything here is a pure function of the views, the campaign, the registry and one
//! instant, so a bulletin can be recomputed from the log later and compared.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::Value;
use spacesync_shared::RegionCode;
#[cfg(test)]
use spacesync_shared::SourceId;
use spacesync_shared::campaign::{Campaign, MilestoneKind};
use spacesync_shared::record::{Milestone, SpaceKind};
use spacesync_shared::region::PROVINCIAL_UNITS;

use crate::assessment::{
    ActivityCount, Assessment, Deliverable, FORMAT, FigureSet, Lagging, Nation, PaceFacts,
    PlanFacts, PlanItem, QuotaViolationItem, Reason, SilentSource, Target, Trajectory, UnitStatus,
    Window, WindowState,
};
pub use crate::assessment::{MilestoneCell, MilestoneStatus, Pace, PaceClass};
use crate::registry::SourceRecord;
use crate::views::{Extension, Figures, Meta, Views, region_name};
pub use spacesync_shared::wire::PlanProblem;

/// Judges one deliverable for one unit at `now`.
pub fn milestone_cell(
    campaign: &Campaign,
    due: NaiveDate,
    extension: Option<NaiveDate>,
    submissions: &[(&Meta, &Milestone)],
    now: DateTime<Utc>,
) -> MilestoneCell {
    let deadline_day = extension.map_or(due, |x| x.max(due));
    let deadline = campaign.end_of_day(deadline_day);
    let today = campaign.local_date(now);
    let first = submissions
        .iter()
        .filter(|(m, _)| m.received_at <= now)
        .min_by_key(|(m, _)| m.log_index);
    let mut cell = MilestoneCell {
        status: MilestoneStatus::NotDue,
        due: deadline_day,
        extended_until: extension.filter(|x| *x > due),
        submitted_at: None,
        submitted_on: None,
        days_late: None,
        days_left: None,
        submissions: submissions
            .iter()
            .filter(|(m, _)| m.received_at <= now)
            .count(),
        within_grace: false,
    };
    match first {
        Some((m, _)) => {
            let received = m.received_at;
            cell.submitted_at = Some(received);
            cell.submitted_on = Some(campaign.local_date(received));
            let grace_end = deadline + Duration::days(i64::from(campaign.grace_days));
            if received < deadline {
                cell.status = MilestoneStatus::OnTime;
            } else if received < grace_end && m.recorded_at < deadline && m.recorded_at <= received
            {
                cell.status = MilestoneStatus::OnTime;
                cell.within_grace = true;
            } else {
                cell.status = MilestoneStatus::Late;
                cell.days_late = Some(
                    (campaign.local_date(received) - deadline_day)
                        .num_days()
                        .max(1),
                );
            }
        }
        None if now >= deadline => {
            cell.status = MilestoneStatus::Missing;
            cell.days_late = Some((today - deadline_day).num_days().max(1));
        }
        None => {
            let left = (deadline_day - today).num_days();
            cell.days_left = Some(left);
            cell.status = if left <= i64::from(campaign.lagging.due_soon_days) {
                MilestoneStatus::DueSoon
            } else {
                MilestoneStatus::NotDue
            };
        }
    }
    cell
}

/// Expected share of the target by `today`: 0 at the baseline, 1 at the target date.
pub fn trajectory_share(campaign: &Campaign, today: NaiveDate) -> f64 {
    let span = (campaign.target.by - campaign.baseline).num_days().max(1) as f64;
    let done = (today - campaign.baseline).num_days() as f64;
    (done / span).clamp(0.0, 1.0)
}

fn pace(campaign: &Campaign, target: Option<u64>, actual: i64, today: NaiveDate) -> Pace {
    let share = trajectory_share(campaign, today);
    let expected = target.map(|t| (t as f64 * share).round() as u64);
    let ratio = expected
        .filter(|e| *e > 0)
        .map(|e| actual as f64 / e as f64);
    let class = match ratio {
        None => PaceClass::Unknown,
        Some(r) if r >= campaign.lagging.behind => PaceClass::OnTrack,
        Some(r) if r >= campaign.lagging.far_behind => PaceClass::Behind,
        Some(_) => PaceClass::FarBehind,
    };
    Pace {
        target,
        expected,
        actual,
        ratio,
        class,
    }
}

/// People a unit serves (teachers + students), for apportioning the national target.
fn people(f: &Figures) -> Option<u64> {
    match (f.population.teachers, f.population.students) {
        (None, None) => None,
        (t, s) => Some(t.unwrap_or(0) + s.unwrap_or(0)),
    }
}

/// Problems of the latest implementation plan of a unit.
pub fn plan_problems(campaign: &Campaign, unit: RegionCode, plan: &Milestone) -> Vec<PlanProblem> {
    let rules = campaign.plan;
    let mut out = Vec::new();
    let years = plan.details.years.clone().unwrap_or_default();
    let n = years.len() as u32;
    if n < rules.min_years || n > rules.max_years {
        out.push(PlanProblem::Years {
            covered: n,
            min: rules.min_years,
            max: rules.max_years,
        });
    }
    for (year, regions) in &years {
        let inside = regions
            .iter()
            .filter(|r| r.is_within(unit) && **r != unit)
            .count() as u32;
        if inside < rules.min_regions_per_year {
            out.push(PlanProblem::Regions {
                year: *year,
                regions: inside,
                min: rules.min_regions_per_year,
            });
        }
    }
    out
}

/// The id of the implementation plan milestone, the one the plan rules apply to.
pub const PLAN_MILESTONE: &str = "implementation_plan";

/// Members each format added, by lagging reason (and for `plan_problems` items): format
/// 2 added the structured facts.
const FORMAT_2_MEMBERS: &[(&str, &[&str])] = &[
    ("milestone_missing", &["days_late"]),
    ("milestone_late", &["submitted_on"]),
    (
        "plan_incomplete",
        &["milestone", "due", "days_late", "received_at"],
    ),
    ("behind_pace", &["target", "reached", "due"]),
    ("far_behind_pace", &["target", "reached", "due"]),
];

/// An [`assess`] result as JSON in the shape of format 1 (bulletins issued before
/// `format` existed): without `format` and without the members format 2 added. `verify`
/// compares old bulletins in this shape.
pub fn as_format_1(body: &mut Value) {
    let Some(o) = body.as_object_mut() else {
        return;
    };
    o.remove("format");
    let strip = |v: &mut Value, members: &[&str]| {
        if let Some(m) = v.as_object_mut() {
            for k in members {
                m.remove(*k);
            }
        }
    };
    for l in o
        .get_mut("lagging")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for r in l["reasons"].as_array_mut().into_iter().flatten() {
            let reason = r["reason"].as_str().unwrap_or_default().to_string();
            if let Some((_, members)) = FORMAT_2_MEMBERS.iter().find(|(k, _)| *k == reason) {
                strip(r, members);
            }
        }
    }
    for p in o
        .get_mut("plan_problems")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        strip(p, &["milestone", "due", "days_late", "received_at"]);
    }
}

/// The target of a unit: the campaign's own figure, or the national target apportioned by
/// the people the unit serves.
fn unit_target(
    campaign: &Campaign,
    unit: RegionCode,
    f: &Figures,
    nation_people: Option<u64>,
) -> Option<u64> {
    campaign
        .target
        .provinces
        .get(&unit)
        .copied()
        .or_else(|| match (people(f), nation_people) {
            (Some(p), Some(n)) if n > 0 => {
                Some((campaign.target.new_spaces as f64 * p as f64 / n as f64).round() as u64)
            }
            _ => None,
        })
}

/// Everything a bulletin says, computed at one instant.
pub fn assess(
    campaign: &Campaign,
    views: &Views,
    registry: &[SourceRecord],
    now: DateTime<Utc>,
) -> Assessment {
    // The file's rules with the live changes the views hold (none past their log size).
    let rules = views.rules(campaign);
    let campaign = rules.as_ref();
    let today = campaign.local_date(now);
    let rollup = views.rollup(campaign);
    let milestones = views.milestones();
    let nominations = views.nominations(campaign);
    let extensions: Vec<&Extension> = views.extensions().filter(|x| x.granted_at <= now).collect();
    let nation_people = people(&rollup.nation);

    let mut provinces = Vec::new();
    let mut lagging = Vec::new();
    let mut plan_list = Vec::new();
    let mut summary: BTreeMap<String, BTreeMap<MilestoneStatus, u32>> = BTreeMap::new();
    for unit in &campaign.units {
        let f = rollup.region(*unit);
        let target = unit_target(campaign, *unit, &f, nation_people);
        let p = pace(campaign, target, f.new_spaces(), today);
        let mut reasons: Vec<Reason> = Vec::new();
        let mut cells = BTreeMap::new();
        let mut plan_cell = None;
        for def in campaign.deliverables() {
            let subs = milestones
                .get(&(*unit, def.id.clone()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let ext = extensions
                .iter()
                .filter(|x| x.region.province() == *unit && x.milestone == def.id)
                .map(|x| x.until)
                .max();
            let cell = milestone_cell(campaign, def.due, ext, subs, now);
            *summary
                .entry(def.id.clone())
                .or_default()
                .entry(cell.status)
                .or_default() += 1;
            // `days_late` beside the older `days_overdue`: one name for programs, as in notices.
            match cell.status {
                MilestoneStatus::Missing => reasons.push(Reason::MilestoneMissing {
                    milestone: def.id.clone(),
                    due: cell.due,
                    days_overdue: cell.days_late,
                    days_late: cell.days_late,
                }),
                MilestoneStatus::Late => reasons.push(Reason::MilestoneLate {
                    milestone: def.id.clone(),
                    due: cell.due,
                    days_late: cell.days_late,
                    submitted_on: cell.submitted_on,
                }),
                _ => {}
            }
            if def.id == PLAN_MILESTONE {
                plan_cell = Some(cell.clone());
            }
            cells.insert(def.id.clone(), cell);
        }
        if let Some(plan) = milestones
            .get(&(*unit, PLAN_MILESTONE.to_string()))
            .and_then(|subs| {
                subs.iter()
                    .filter(|(m, _)| m.received_at <= now)
                    .max_by_key(|(m, _)| m.log_index)
            })
        {
            let problems = plan_problems(campaign, *unit, plan.1);
            if !problems.is_empty() {
                // The milestone, its deadline, the plan judged (received when) and how
                // late the first plan came, as fields.
                let facts = PlanFacts {
                    milestone: Some(PLAN_MILESTONE.to_string()),
                    due: plan_cell.as_ref().map(|c| c.due),
                    days_late: plan_cell.as_ref().and_then(|c| c.days_late),
                    received_at: Some(plan.0.received_at),
                };
                reasons.push(Reason::PlanIncomplete {
                    problems: problems.clone(),
                    facts: facts.clone(),
                });
                plan_list.push(PlanItem {
                    code: *unit,
                    name: region_name(*unit),
                    problems,
                    facts,
                });
            }
        }
        let pace_facts = PaceFacts {
            ratio: p.ratio,
            expected: p.expected,
            actual: p.actual,
            target: p.target,
            reached: Some(p.actual),
            due: Some(campaign.target.by),
        };
        match p.class {
            PaceClass::Behind => reasons.push(Reason::BehindPace(pace_facts)),
            PaceClass::FarBehind => reasons.push(Reason::FarBehindPace(pace_facts)),
            _ => {}
        }
        let violations = nominations
            .violations
            .iter()
            .filter(|(m, _)| m.received_at <= now)
            .filter(|(_, v)| v.by.province() == *unit)
            .count();
        if violations > 0 {
            reasons.push(Reason::QuotaViolation { count: violations });
        }
        let silent: Vec<&SourceRecord> = registry
            .iter()
            .filter(|r| r.scope.province() == *unit && r.active_at(now))
            .filter(|r| source_is_silent(campaign, views, r, now))
            .collect();
        if !silent.is_empty() {
            reasons.push(Reason::SourceSilent {
                sources: silent.iter().map(|r| r.id.clone()).collect(),
            });
        }
        let unit_info = PROVINCIAL_UNITS.iter().find(|u| u.code == unit.as_u32());
        let name = unit_info.map(|u| u.name_zh.to_string());
        let name_en = unit_info.map(|u| u.name_en.to_string());
        if !reasons.is_empty() {
            lagging.push(Lagging {
                code: *unit,
                name: name.clone(),
                name_en: name_en.clone(),
                reasons,
            });
        }
        provinces.push(UnitStatus {
            code: *unit,
            name,
            name_en,
            figures: FigureSet::from(&f),
            pace: p,
            milestones: cells,
            real_name_share: real_name_share(&f),
            rank: 0,
        });
    }
    // Rank: by pace ratio where known, then by new spaces.
    provinces.sort_by(|a, b| {
        let key = |u: &UnitStatus| (u.pace.ratio.unwrap_or(-1.0), u.figures.new_spaces);
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    for (i, p) in provinces.iter_mut().enumerate() {
        p.rank = i + 1;
    }

    let nation = Nation {
        figures: FigureSet::from(&rollup.nation),
        pace: pace(
            campaign,
            Some(campaign.target.new_spaces),
            rollup.nation.new_spaces(),
            today,
        ),
        target: Target {
            new_spaces: campaign.target.new_spaces,
            by: campaign.target.by,
        },
        milestones: summary,
        real_name_share: real_name_share(&rollup.nation),
        trajectory: trajectory(campaign, rollup.nation.new_spaces(), today),
    };

    let silent_sources = registry
        .iter()
        .filter(|r| r.active_at(now))
        .filter(|r| source_is_silent(campaign, views, r, now))
        .map(|r| {
            let last = views.sources().get(&r.id).and_then(|a| a.last_received);
            SilentSource {
                source: r.id.clone(),
                scope: r.scope,
                last_seen: last,
                days_silent: (now - last.unwrap_or(r.added_at)).num_days(),
            }
        })
        .collect();

    let quota_violations = nominations
        .violations
        .iter()
        .filter(|(m, _)| m.received_at <= now)
        .map(|(m, v)| QuotaViolationItem {
            province: v.by.province(),
            level: v.level,
            by: v.by,
            nominee_type: v.nominee_type,
            nominee: v.nominee.clone(),
            limit: v.limit,
            counted: v.counted.clone(),
            source: m.source.clone(),
            seq: m.seq,
            text: v.to_string(),
        })
        .collect();

    let windows = campaign
        .milestones
        .iter()
        .filter(|m| m.kind == MilestoneKind::Window)
        .map(|m| Window {
            id: m.id.clone(),
            title: m.title.clone(),
            title_en: m.title_en.clone(),
            opens: m.opens,
            due: m.due,
            state: if today < m.opens.unwrap_or(m.due) {
                WindowState::Upcoming
            } else if today <= m.due {
                WindowState::Open
            } else {
                WindowState::Closed
            },
        })
        .collect();

    Assessment {
        format: Some(FORMAT),
        campaign: campaign.id.clone(),
        as_of_date: today,
        nation,
        provinces,
        quota_violations,
        plan_problems: plan_list,
        lagging,
        silent_sources,
        flags: rollup.flags,
        extensions: extensions.into_iter().cloned().collect(),
        windows,
        deliverables: campaign
            .deliverables()
            .map(|d| Deliverable {
                id: d.id.clone(),
                title: d.title.clone(),
                title_en: d.title_en.clone(),
                due: d.due,
            })
            .collect(),
        activities: activities_summary(views, now),
    }
}

fn real_name_share(f: &Figures) -> Option<f64> {
    let personal: u64 = SpaceKind::ALL
        .iter()
        .filter(|k| k.is_personal())
        .filter_map(|k| f.real_name.get(*k).and(f.spaces.get(*k)))
        .sum();
    let real: u64 = SpaceKind::ALL
        .iter()
        .filter(|k| k.is_personal())
        .filter_map(|k| f.spaces.get(*k).and(f.real_name.get(*k)))
        .sum();
    (personal > 0).then(|| real as f64 / personal as f64)
}

/// Is `r` silent at `now`: nothing received for longer than the campaign allows (with
/// the live notice rule changes the views hold)?
pub fn source_is_silent(
    campaign: &Campaign,
    views: &Views,
    r: &SourceRecord,
    now: DateTime<Utc>,
) -> bool {
    let last = views
        .sources()
        .get(&r.id)
        .and_then(|a| a.last_received)
        .filter(|t| *t <= now)
        .unwrap_or(r.added_at);
    let after = views.rules(campaign).silent_after_days;
    now - last > Duration::days(i64::from(after))
}

/// The national trajectory: expected vs actual at the bulletin date, and the line's ends.
fn trajectory(campaign: &Campaign, actual: i64, today: NaiveDate) -> Trajectory {
    Trajectory {
        baseline: campaign.baseline,
        target_date: campaign.target.by,
        target: campaign.target.new_spaces,
        today,
        expected_today: (campaign.target.new_spaces as f64 * trajectory_share(campaign, today))
            .round() as u64,
        actual_today: actual,
    }
}

fn activities_summary(views: &Views, now: DateTime<Utc>) -> Vec<ActivityCount> {
    let mut per: BTreeMap<RegionCode, (u64, u64)> = BTreeMap::new();
    for (m, a) in views.activities() {
        if m.received_at <= now {
            let e = per.entry(a.region.province()).or_default();
            e.0 += 1;
            e.1 += a.participants.unwrap_or(0);
        }
    }
    per.into_iter()
        .map(|(code, (activities, participants))| ActivityCount {
            code,
            activities,
            participants,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spacesync_shared::record::{Document, MilestoneDetails};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap()
    }

    fn meta(received: &str, recorded: &str) -> Meta {
        Meta {
            log_index: 1,
            received_at: t(received),
            source: SourceId::parse("gd-rrt").unwrap(),
            seq: 1,
            recorded_at: t(recorded),
            withdrawn_by: None,
        }
    }

    fn plan() -> Milestone {
        Milestone {
            milestone: "implementation_plan".into(),
            region: RegionCode::parse("440000").unwrap(),
            submitted_on: NaiveDate::from_ymd_opt(2018, 11, 12).unwrap(),
            document: Document {
                title: "plan".into(),
                sha256: "0".repeat(64),
                uri: None,
            },
            details: MilestoneDetails::default(),
        }
    }

    /// (received, recorded, now) → (status, days_late)
    fn check(received: Option<(&str, &str)>, now: &str, want: (MilestoneStatus, Option<i64>)) {
        let c = Campaign::builtin_2018();
        let due = NaiveDate::from_ymd_opt(2018, 11, 15).unwrap();
        let p = plan();
        let m = received.map(|(a, b)| meta(a, b));
        let subs: Vec<(&Meta, &Milestone)> = m.iter().map(|m| (m, &p)).collect();
        let cell = milestone_cell(&c, due, None, &subs, t(now));
        assert_eq!((cell.status, cell.days_late), want, "{received:?} at {now}");
    }

    #[test]
    fn deadlines_are_judged_in_china_time_with_grace() {
        use MilestoneStatus::*;
        // Due 2018-11-15 CST = ends 2018-11-15T16:00Z.
        check(
            Some(("2018-11-15T15:59:00Z", "2018-11-15T15:00:00Z")),
            "2018-11-20T00:00:00Z",
            (OnTime, None),
        );
        check(
            Some(("2018-11-15T16:01:00Z", "2018-11-15T16:00:30Z")),
            "2018-11-20T00:00:00Z",
            (Late, Some(1)),
        );
        // Signed in time, delivered a day late: within the 2-day grace → on time.
        check(
            Some(("2018-11-16T10:00:00Z", "2018-11-15T12:00:00Z")),
            "2018-11-20T00:00:00Z",
            (OnTime, None),
        );
        // Signed in time but delivered after the grace → late by the receive date.
        check(
            Some(("2018-11-18T10:00:00Z", "2018-11-15T12:00:00Z")),
            "2018-11-20T00:00:00Z",
            (Late, Some(3)),
        );
        check(None, "2018-11-16T01:00:00Z", (Missing, Some(1)));
        check(None, "2018-11-10T01:00:00Z", (DueSoon, None));
        check(None, "2018-11-01T01:00:00Z", (NotDue, None));
        // A submission received after the bulletin's instant does not count yet.
        check(
            Some(("2018-11-17T10:00:00Z", "2018-11-17T10:00:00Z")),
            "2018-11-16T01:00:00Z",
            (Missing, Some(1)),
        );
    }

    #[test]
    fn pace_classes_follow_the_campaign_thresholds() {
        let c = Campaign::builtin_2018();
        let mid = c.baseline + Duration::days((c.target.by - c.baseline).num_days() / 2);
        let expected = (10_000_000.0 * trajectory_share(&c, mid)).round() as i64;
        assert_eq!(
            pace(&c, Some(10_000_000), expected, mid).class,
            PaceClass::OnTrack
        );
        assert_eq!(
            pace(&c, Some(10_000_000), expected * 7 / 10, mid).class,
            PaceClass::Behind
        );
        assert_eq!(
            pace(&c, Some(10_000_000), expected / 3, mid).class,
            PaceClass::FarBehind
        );
        assert_eq!(pace(&c, None, 5, mid).class, PaceClass::Unknown);
        assert_eq!(pace(&c, Some(10), 0, c.baseline).class, PaceClass::Unknown);
    }

    #[test]
    fn plans_need_two_to_three_years_of_three_regions() {
        let c = Campaign::builtin_2018();
        let gd = RegionCode::parse("440000").unwrap();
        let r = |s: &str| RegionCode::parse(s).unwrap();
        let mut p = plan();
        p.details.years = Some(BTreeMap::from([
            (2018, vec![r("440100"), r("440300"), r("440600")]),
            (2019, vec![r("440200"), r("440400")]),
        ]));
        let problems = plan_problems(&c, gd, &p);
        assert_eq!(
            problems,
            [PlanProblem::Regions {
                year: 2019,
                regions: 2,
                min: 3
            }]
        );
        p.details.years = Some(BTreeMap::from([(
            2018,
            vec![r("440100"), r("440300"), r("440600")],
        )]));
        assert_eq!(
            plan_problems(&c, gd, &p),
            [PlanProblem::Years {
                covered: 1,
                min: 2,
                max: 3
            }]
        );
    }
}
