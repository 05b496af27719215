//! Nomination quotas (acceptance criterion 6): `campaign::QuotaLedger` refuses the
//! nomination that breaks a quota, naming the quota and the nominations already counted;
//! renominating a counted nominee costs nothing; a removed nomination frees its place.

mod common;

use spacesync_shared::batch::{self, Format};
use spacesync_shared::campaign::QuotaLedger;
use spacesync_shared::record::Recommendation;
use spacesync_shared::validate;

/// What the test does to the ledger.
enum Step {
    /// `ledger.add`, expecting `Ok` (`None`) or a violation with this Display (`Some`).
    Add(Recommendation, Option<String>),
    /// `ledger.remove`.
    Remove(Recommendation),
}

/// One behaviour: the steps, in order, give the expected answers.
fn check(what: &str, steps: Vec<Step>) {
    let quotas = &common::campaign().quotas;
    let mut ledger = QuotaLedger::new();
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Add(r, expected) => {
                let checked = ledger.check(quotas, &r).map_err(|v| v.to_string());
                let added = ledger.add(quotas, &r).map_err(|v| v.to_string());
                assert_eq!(checked, added, "{what}: step {i}: check and add disagree");
                assert_eq!(added.err(), expected, "{what}: step {i}: {r:?}");
            }
            Step::Remove(r) => ledger.remove(&r),
        }
    }
}

/// A nomination of school `4401000nnn` by `level` `by`; the school sits in county
/// `PPCC06` of the recommender (440106 for the province).
fn school(level: &str, by: &str, n: u32) -> Recommendation {
    let county = if by.ends_with("0000") {
        "440106".to_string()
    } else {
        format!("{}06", &by[..4])
    };
    common::recommendation(&format!(
        r#"{{"kind":"recommendation","level":"{level}","by":"{by}","nominee":{{"type":"school","code":"4401000{n:03}","region":"{county}"}}}}"#
    ))
}

/// A nomination of region `code` by province 440000.
fn region(code: &str) -> Recommendation {
    common::recommendation(&format!(
        r#"{{"kind":"recommendation","level":"province","by":"440000","nominee":{{"type":"region","code":"{code}"}}}}"#
    ))
}

fn ok(r: Recommendation) -> Step {
    Step::Add(r, None)
}

fn refused(r: Recommendation, why: &str) -> Step {
    Step::Add(r, Some(why.to_string()))
}

/// The first `n` schools, as the Display of a violation lists them.
fn listed(n: u32) -> String {
    (1..=n)
        .map(|i| format!("4401000{i:03}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const CITY_FULL: &str =
    "quota exceeded: a city recommends at most 10 schools; 440100 has already nominated 10";

#[test]
fn quotas_refuse_the_nomination_that_breaks_them() {
    let city = |n| school("city", "440100", n);
    let mut ten: Vec<Step> = (1..=10).map(|n| ok(city(n))).collect();
    let eleventh = format!(
        "{CITY_FULL} ({}), so 4401000011 cannot be added",
        listed(10)
    );

    // A city with 10 schools refuses the 11th, naming the quota and the 10 counted.
    check("city 11th school", {
        ten.push(refused(city(11), &eleventh));
        ten
    });

    // Renominating a counted school is fine, however often.
    check("city renomination", {
        let mut s: Vec<Step> = (1..=10).map(|n| ok(city(n))).collect();
        s.extend([ok(city(3)), ok(city(10)), ok(city(1))]);
        s.push(refused(city(11), &eleventh));
        s
    });

    // After a removal there is room again, and the list names who is counted now.
    check("city removal", {
        let mut s: Vec<Step> = (1..=10).map(|n| ok(city(n))).collect();
        s.push(Step::Remove(city(4)));
        s.push(ok(city(11)));
        let counted: Vec<String> = [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
            .iter()
            .map(|i| format!("4401000{i:03}"))
            .collect();
        s.push(refused(
            city(12),
            &format!(
                "{CITY_FULL} ({}), so 4401000012 cannot be added",
                counted.join(", ")
            ),
        ));
        // Removing what is not counted changes nothing.
        s.push(Step::Remove(city(99)));
        s.push(refused(
            city(12),
            &format!(
                "{CITY_FULL} ({}), so 4401000012 cannot be added",
                counted.join(", ")
            ),
        ));
        s
    });

    // A county may nominate 5 schools.
    check("county 6th school", {
        let mut s: Vec<Step> = (1..=5).map(|n| ok(school("county", "440106", n))).collect();
        s.push(refused(
            school("county", "440106", 6),
            &format!(
                "quota exceeded: a county recommends at most 5 schools; 440106 has already nominated 5 ({}), so 4401000006 cannot be added",
                listed(5)
            ),
        ));
        s
    });

    // A province selects 3 regions and 15 schools, counted separately.
    check("province 4th region", {
        let mut s = vec![
            ok(region("440100")),
            ok(region("440300")),
            ok(region("440106")),
        ];
        s.extend((1..=15).map(|n| ok(school("province", "440000", n))));
        s.push(ok(region("440300")));
        s.push(refused(
            region("440600"),
            "quota exceeded: a province recommends at most 3 regions; 440000 has already nominated 3 (440100, 440300, 440106), so 440600 cannot be added",
        ));
        s.push(refused(
            school("province", "440000", 16),
            &format!(
                "quota exceeded: a province recommends at most 15 schools; 440000 has already nominated 15 ({}), so 4401000016 cannot be added",
                listed(15)
            ),
        ));
        s.push(Step::Remove(region("440100")));
        s.push(ok(region("440600")));
        s
    });

    // Quotas are per recommender and per level: another city, or the province, is not
    // held to 440100's count.
    check("per recommender", {
        let mut s: Vec<Step> = (1..=10).map(|n| ok(city(n))).collect();
        s.push(ok(school("city", "440300", 11)));
        s.push(ok(school("province", "440000", 11)));
        s.push(ok(school("county", "440106", 11)));
        s
    });
}

#[test]
fn a_batch_that_breaks_a_quota_is_refused_naming_the_record() {
    // 11 nominations by one city in one batch: the 11th is refused, and with it the batch.
    let lines: String = (1..=11)
        .map(|n| {
            format!(
                "{{\"kind\":\"recommendation\",\"level\":\"city\",\"by\":\"440100\",\"nominee\":{{\"type\":\"school\",\"code\":\"4401000{n:03}\",\"region\":\"440106\"}}}}\n"
            )
        })
        .collect();
    let ctx = common::context();
    let mut ledger = QuotaLedger::new();
    let read = batch::parse(lines.as_bytes(), Format::Json, 100, |_, r| {
        let mut p = validate::check(r, &ctx);
        p.extend(validate::check_quota(r, ctx.campaign, &ledger));
        if let (true, spacesync_shared::Record::Recommendation(rec)) = (p.is_empty(), r) {
            let _ = ledger.add(&ctx.campaign.quotas, rec);
        }
        p
    });
    let lines = read.map_err(|e| e.lines());
    assert_eq!(
        lines,
        Err(vec![format!(
            "record 11 (line 11): nominee: {CITY_FULL} ({}), so 4401000011 cannot be added",
            listed(10)
        )])
    );
}
