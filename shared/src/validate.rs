//! Checks that need context: the agent's current date, the campaign, the source's
//! scope and its seq. [`crate::record`] checks what a record says on its own; this
//! module checks whether this source may say it today.

use chrono::NaiveDate;

use crate::campaign::{Campaign, QuotaLedger, Requirement};
use crate::record::{Problem, ProblemKind, Record};
use crate::region::{Directory, RegionCode};

/// What a record is judged against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The campaign.
    pub campaign: &'a Campaign,
    /// The source's scope region.
    pub scope: RegionCode,
    /// The current date in the campaign's time zone.
    pub today: NaiveDate,
    /// The seq this record would get; withdrawals must point below it.
    pub next_seq: u64,
}

/// Every contextual problem of `record` (scope, dates, milestone ids, withdrawal targets).
/// Quotas are checked separately with [`QuotaLedger`] since they depend on what is held.
pub fn check(record: &Record, ctx: &Context<'_>) -> Vec<Problem> {
    let mut out = Vec::new();
    for (field, code) in record.regions() {
        if !code.is_within(ctx.scope) {
            out.push(Problem::new(
                field,
                ProblemKind::OutOfScope {
                    code,
                    scope: ctx.scope,
                },
            ));
        }
    }
    let mut date = |field: &str, d: NaiveDate| {
        let earliest = ctx.campaign.earliest_record_date();
        if d > ctx.today {
            out.push(Problem::new(
                field,
                ProblemKind::FutureDate {
                    date: d,
                    today: ctx.today,
                },
            ));
        } else if d < earliest {
            out.push(Problem::new(
                field,
                ProblemKind::TooEarly { date: d, earliest },
            ));
        }
    };
    match record {
        Record::SpaceCount(s) => date("as_of", s.as_of),
        Record::Activity(a) => date("date", a.date),
        Record::Milestone(m) => {
            date("submitted_on", m.submitted_on);
            check_milestone(m, ctx.campaign, &mut out);
        }
        Record::Withdrawal(w) => {
            if w.target_seq >= ctx.next_seq {
                out.push(Problem::new(
                    "target_seq",
                    ProblemKind::BadTarget(ctx.next_seq.saturating_sub(1)),
                ));
            }
        }
        // A key transition is the agent's own entry, never judged as a platform's record.
        Record::Recommendation(_) | Record::KeyTransition(_) => {}
    }
    out
}

fn check_milestone(m: &crate::record::Milestone, campaign: &Campaign, out: &mut Vec<Problem>) {
    let Some(def) = campaign.deliverables().find(|d| d.id == m.milestone) else {
        out.push(Problem::new(
            "milestone",
            ProblemKind::UnknownMilestone {
                got: m.milestone.clone(),
                campaign: campaign.id.clone(),
                known: campaign
                    .deliverables()
                    .map(|d| d.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        ));
        return;
    };
    for req in &def.requires {
        let present = match req {
            Requirement::Contacts => m.details.contacts.as_ref().is_some_and(|c| !c.is_empty()),
            Requirement::Years => m.details.years.as_ref().is_some_and(|y| !y.is_empty()),
        };
        if !present {
            let field = match req {
                Requirement::Contacts => "details.contacts",
                Requirement::Years => "details.years",
            };
            out.push(Problem::new(field, ProblemKind::Missing));
        }
    }
    for (year, list) in m.details.years.iter().flatten() {
        for (i, r) in list.iter().enumerate() {
            if !r.is_within(m.region) || *r == m.region {
                out.push(Problem::new(
                    format!("details.years.{year}[{i}]"),
                    ProblemKind::NotInside {
                        code: *r,
                        container: m.region,
                    },
                ));
            }
        }
    }
}

/// Checks a recommendation against the quotas, given what the source already holds.
pub fn check_quota(record: &Record, campaign: &Campaign, ledger: &QuotaLedger) -> Option<Problem> {
    let Record::Recommendation(r) = record else {
        return None;
    };
    ledger
        .check(&campaign.quotas, r)
        .err()
        .map(|v| Problem::new("nominee", ProblemKind::Quota(Box::new(v))))
}

/// Codes the bundled directory does not list: warnings, since the 2018 campaign predates
/// the directory's 2023 vintage.
pub fn unknown_codes(record: &Record) -> Vec<(String, RegionCode)> {
    let dir = Directory::bundled();
    record
        .regions()
        .into_iter()
        .filter(|(_, c)| dir.get(*c).is_none())
        .collect()
}
