//! The record model against the foundation issue's acceptance criteria:
//!
//! 1. the spec's five examples and the spec's CSV form are read and pass validation, and
//!    every valid record survives a JSON round trip (space counts a CSV one too);
//! 4. a Guangdong source cannot produce a valid record about another province;
//! 5. every kind of bad input is refused with its position, field and reason.
//!
//! Batches are read the way the agent reads them ([`read`]): record checks, then the
//! context checks of `validate::check` (2018 campaign, scope 440000, today 2018-12-01,
//! next seq 100) and the quota ledger, carried across the batch.

mod common;

use proptest::prelude::*;
use serde_json::Value;
use spacesync_shared::batch::{self, Format, Refusal};
use spacesync_shared::campaign::QuotaLedger;
use spacesync_shared::record::{Record, SpaceCount};
use spacesync_shared::validate::{self, Context};

/// Largest batch the tests read.
const MAX: usize = 10_000;

/// The spec header of the CSV form.
const CSV_HEADER: &str = "region,school,as_of,teacher,student,parent,master_teacher,school_spaces,class,club,region_spaces,teachers,students,schools";

/// The five examples of `spec/records.md`, copied verbatim into a JSON array.
const SPEC_EXAMPLES: &str = include_str!("../testdata/spec-examples.json");

/// Reads a batch as the agent does, in `ctx`.
fn read_in(input: &[u8], format: Format, ctx: &Context<'_>) -> Result<Vec<Record>, Refusal> {
    let mut ledger = QuotaLedger::new();
    batch::parse(input, format, MAX, |_, r| {
        let mut problems = validate::check(r, ctx);
        problems.extend(validate::check_quota(r, ctx.campaign, &ledger));
        if let (true, Record::Recommendation(rec)) = (problems.is_empty(), r) {
            // Counted only when the whole record is good, as the agent does.
            let _ = ledger.add(&ctx.campaign.quotas, rec);
        }
        problems
    })
}

/// Reads a batch in the issue's context.
fn read(input: &[u8], format: Format) -> Result<Vec<Record>, Refusal> {
    read_in(input, format, &common::context())
}

/// One behaviour: `input` is accepted and reads as exactly `expected`.
fn check_accepted(input: &[u8], format: Format, expected: &[Record]) {
    match read(input, format) {
        Ok(records) => assert_eq!(records, expected, "{}", String::from_utf8_lossy(input)),
        Err(refusal) => panic!(
            "{}\nwas refused:\n{refusal}",
            String::from_utf8_lossy(input)
        ),
    }
}

/// One behaviour (`what`): `input` is refused whole, with exactly these lines, in this order.
fn check_refused(what: &str, input: &[u8], format: Format, expected: &[&str]) {
    match read(input, format) {
        Ok(records) => panic!(
            "{what}: {}\nwas accepted as {records:?}; expected {expected:#?}",
            String::from_utf8_lossy(input)
        ),
        Err(refusal) => assert_eq!(
            refusal.lines(),
            expected,
            "{what}: {}",
            String::from_utf8_lossy(input)
        ),
    }
}

fn spec_examples() -> Vec<Value> {
    match serde_json::from_str(SPEC_EXAMPLES) {
        Ok(Value::Array(items)) => items,
        other => panic!("test setup: testdata/spec-examples.json is not an array: {other:?}"),
    }
}

/// The spec examples, one compact object a line.
fn spec_examples_ndjson() -> String {
    spec_examples().iter().map(|v| format!("{v}\n")).collect()
}

// ---- 1. the spec's examples and CSV form -------------------------------------------------

#[test]
fn spec_examples_are_accepted_as_an_array_and_as_ndjson() {
    let values = spec_examples();
    let kinds: Vec<&str> = values
        .iter()
        .filter_map(|v| v.get("kind").and_then(Value::as_str))
        .collect();
    assert_eq!(
        kinds,
        [
            "space_count",
            "milestone",
            "recommendation",
            "activity",
            "withdrawal"
        ]
    );
    let expected: Vec<Record> = values
        .iter()
        .map(|v| Record::from_value(v).unwrap_or_else(|p| panic!("{v}: {p:?}")))
        .collect();
    check_accepted(SPEC_EXAMPLES.as_bytes(), Format::Json, &expected);
    check_accepted(spec_examples_ndjson().as_bytes(), Format::Json, &expected);
    // A byte-order mark, as Windows editors write it, is not a problem.
    check_accepted(
        format!("\u{feff}{}", spec_examples_ndjson()).as_bytes(),
        Format::Json,
        &expected,
    );
}

#[test]
fn spec_examples_write_back_as_the_same_json() {
    for v in spec_examples() {
        let record = Record::from_value(&v).unwrap_or_else(|p| panic!("{v}: {p:?}"));
        assert_eq!(record.to_value(), v, "{record:?}");
        assert_eq!(Record::from_value(&record.to_value()), Ok(record));
    }
}

#[test]
fn spec_examples_read_as_the_values_they_show() {
    let records = match read(SPEC_EXAMPLES.as_bytes(), Format::Json) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let [
        Record::SpaceCount(sc),
        Record::Milestone(m),
        Record::Recommendation(rec),
        Record::Activity(a),
        Record::Withdrawal(w),
    ] = records.as_slice()
    else {
        panic!("unexpected kinds: {records:?}");
    };
    use spacesync_shared::record::SpaceKind::*;
    let spaces: Vec<_> = sc.spaces.iter().collect();
    assert_eq!(
        spaces,
        [
            (Teacher, 1200),
            (Student, 30500),
            (Parent, 800),
            (MasterTeacher, 15),
            (School, 1),
            (Region, 0),
            (Class, 640),
            (Club, 12)
        ]
    );
    assert_eq!(sc.real_name.map(|r| r.total()), Some(1150 + 24000));
    assert_eq!(sc.population.and_then(|p| p.students), Some(32000));
    assert_eq!(sc.school, Some(common::school("4144010601")));
    assert_eq!(m.details.years.as_ref().map(|y| y.len()), Some(2));
    assert_eq!(rec.nominee.region(), common::region("440106"));
    assert_eq!(a.participants, Some(320));
    assert_eq!(w.target_seq, 42);
}

#[test]
fn space_counts_are_read_from_the_spec_csv_form() {
    let csv = format!(
        "{CSV_HEADER}\n\
         440106,4144010601,2018-11-20,1200,30500,800,15,1,640,12,0,1300,32000,1\n\
         440106,,2018-11-21,9000,,,,,,,,,,\n\
         440100,,2018-11-22,,,,,,,,3,,,\n"
    );
    // The first row is the JSON example without its real-name figures (the spec's CSV
    // header has no real-name columns).
    let mut example = spec_examples()[0].clone();
    if let Some(o) = example.as_object_mut() {
        o.remove("real_name");
    }
    let expected = [
        common::record(&example.to_string()),
        common::record(
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-21","spaces":{"teacher":9000}}"#,
        ),
        common::record(
            r#"{"kind":"space_count","region":"440100","as_of":"2018-11-22","spaces":{"region":3}}"#,
        ),
    ];
    check_accepted(csv.as_bytes(), Format::Csv, &expected);
    // Real-name columns extend the form; CRLF line ends and a BOM are fine.
    let csv = format!(
        "\u{feff}{CSV_HEADER},real_name_teacher,real_name_student\r\n\
         440106,4144010601,2018-11-20,1200,30500,800,15,1,640,12,0,1300,32000,1,1150,24000\r\n"
    );
    let example = common::record(&spec_examples()[0].to_string());
    check_accepted(csv.as_bytes(), Format::Csv, &[example]);
}

#[test]
fn boundaries_are_accepted() {
    let cases: &[(&str, &str)] = &[
        (
            "as_of on the earliest accepted date (campaign start minus one year)",
            r#"{"kind":"space_count","region":"440106","as_of":"2017-10-01","spaces":{"teacher":1}}"#,
        ),
        (
            "as_of today",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-12-01","spaces":{"teacher":1}}"#,
        ),
        (
            "the largest count",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1000000000}}"#,
        ),
        (
            "zero counts",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":0},"real_name":{"teacher":0}}"#,
        ),
        (
            "real_name equal to spaces",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":5},"real_name":{"teacher":5}}"#,
        ),
        (
            "a school in a city without counties",
            r#"{"kind":"space_count","region":"441900","school":"4144190001","as_of":"2018-11-20","spaces":{"school":1}}"#,
        ),
        (
            "withdrawal of the seq just before next_seq",
            r#"{"kind":"withdrawal","target_seq":99,"reason":"typo"}"#,
        ),
        (
            "a county nominating one of its schools",
            r#"{"kind":"recommendation","level":"county","by":"440106","nominee":{"type":"school","code":"4144010601","region":"440106"}}"#,
        ),
        (
            "a province nominating a region",
            r#"{"kind":"recommendation","level":"province","by":"440000","nominee":{"type":"region","code":"440100","name":"广州市"}}"#,
        ),
        (
            "a region nominee that repeats its own code as region",
            r#"{"kind":"recommendation","level":"city","by":"440100","nominee":{"type":"region","code":"440106","region":"440106"}}"#,
        ),
        (
            "contact_form with its contacts",
            r#"{"kind":"milestone","milestone":"contact_form","region":"440000","submitted_on":"2018-10-18","document":{"title":"联系表","sha256":"0000000000000000000000000000000000000000000000000000000000000000"},"details":{"contacts":[{"name":"张三","role":"处长","phone":"020-1234","email":"a@b.cn"}]}}"#,
        ),
        (
            "explicit nulls for optional fields",
            r#"{"kind":"space_count","region":"440106","school":null,"as_of":"2018-11-20","spaces":{"teacher":1,"student":null},"real_name":null,"population":null}"#,
        ),
    ];
    for (what, json) in cases {
        let record = Record::from_value(&serde_json::from_str(json).unwrap_or(Value::Null));
        let Ok(record) = record else {
            panic!("{what}: {record:?}");
        };
        match read(json.as_bytes(), Format::Json) {
            Ok(got) => assert_eq!(got, [record], "{what}"),
            Err(e) => panic!("{what}: refused: {e}"),
        }
    }
}

#[test]
fn whole_numbers_written_with_a_fraction_part_are_counts() {
    // Python and pandas write whole numbers as 1200.0 (pandas does so for any CSV column
    // with an empty cell); they are whole numbers, as the spec asks.
    let expected = common::record(
        r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1200,"student":0}}"#,
    );
    check_accepted(
        br#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1200.0,"student":0.0}}"#,
        Format::Json,
        std::slice::from_ref(&expected),
    );
    check_accepted(
        format!("{CSV_HEADER}\n440106,,2018-11-20,1200.0,0.0,,,,,,,,,\n").as_bytes(),
        Format::Csv,
        &[expected],
    );
}

// ---- 1. round trips (properties) ---------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_valid_record_survives_a_json_round_trip(record in common::any_record()) {
        prop_assert_eq!(Record::from_value(&record.to_value()), Ok(record.clone()));
        // And through the bytes an agent would sign.
        let text = serde_json::to_string(&record).unwrap_or_default();
        let back: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        prop_assert_eq!(Record::from_value(&back), Ok(record));
    }

    #[test]
    fn space_counts_survive_a_csv_round_trip(
        rows in prop::collection::vec(common::space_count(), 1..20)
    ) {
        let csv = batch::space_counts_to_csv(&rows);
        let read = batch::parse(csv.as_bytes(), Format::Csv, MAX, |_, _| Vec::new());
        let expected: Vec<Record> = rows.into_iter().map(Record::SpaceCount).collect();
        prop_assert_eq!(read, Ok(expected), "{}", csv);
    }
}

#[test]
fn space_counts_to_csv_writes_the_spec_header() {
    let Record::SpaceCount(sc) = common::record(&spec_examples()[0].to_string()) else {
        panic!("test setup: the first example is a space count");
    };
    let without_real = SpaceCount {
        real_name: None,
        ..sc.clone()
    };
    let csv = batch::space_counts_to_csv(&[without_real]);
    assert_eq!(
        csv,
        format!(
            "{CSV_HEADER}\n440106,4144010601,2018-11-20,1200,30500,800,15,1,640,12,0,1300,32000,1\n"
        )
    );
    let csv = batch::space_counts_to_csv(&[sc]);
    assert_eq!(
        csv.lines().next(),
        Some(&*format!(
            "{CSV_HEADER},real_name_teacher,real_name_student"
        ))
    );
}

// ---- 4. scope ----------------------------------------------------------------------------

/// One behaviour: in a source of `scope`, `validate::check` finds exactly these problems.
fn check_scope(scope: &str, json: &str, expected: &[&str]) {
    let ctx = Context {
        scope: common::region(scope),
        ..common::context()
    };
    let problems: Vec<String> = validate::check(&common::record(json), &ctx)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems, expected, "scope {scope}: {json}");
    // And the batch reader refuses it the same way.
    if !expected.is_empty() {
        let lines: Vec<String> = expected
            .iter()
            .map(|p| format!("record 1 (line 1): {p}"))
            .collect();
        match read_in(json.as_bytes(), Format::Json, &ctx) {
            Ok(r) => panic!("scope {scope}: {json} accepted as {r:?}"),
            Err(e) => assert_eq!(e.lines(), lines),
        }
    }
}

#[test]
fn a_source_cannot_speak_about_regions_outside_its_scope() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "440000",
            r#"{"kind":"space_count","region":"110105","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["region: 110105 is outside this source's scope 440000"],
        ),
        (
            "440000",
            r#"{"kind":"space_count","region":"110105","school":"1111010501","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["region: 110105 is outside this source's scope 440000"],
        ),
        (
            "440000",
            r#"{"kind":"activity","region":"110105","date":"2018-11-20","category":"training","title":"培训"}"#,
            &["region: 110105 is outside this source's scope 440000"],
        ),
        (
            "440000",
            r#"{"kind":"recommendation","level":"city","by":"110100","nominee":{"type":"school","code":"1111010501","region":"110105"}}"#,
            &[
                "by: 110100 is outside this source's scope 440000",
                "nominee.region: 110105 is outside this source's scope 440000",
            ],
        ),
        (
            "440000",
            r#"{"kind":"recommendation","level":"province","by":"110000","nominee":{"type":"region","code":"110105"}}"#,
            &[
                "by: 110000 is outside this source's scope 440000",
                "nominee.code: 110105 is outside this source's scope 440000",
            ],
        ),
        (
            "440000",
            r#"{"kind":"milestone","milestone":"recommendations","region":"110000","submitted_on":"2018-11-20","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}}"#,
            &["region: 110000 is outside this source's scope 440000"],
        ),
        (
            "440000",
            r#"{"kind":"milestone","milestone":"implementation_plan","region":"440000","submitted_on":"2018-11-12","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000"},"details":{"years":{"2018":["440100","110105","440300"]}}}"#,
            &[
                "details.years.2018[1]: 110105 is outside this source's scope 440000",
                "details.years.2018[1]: 110105 is not inside 440000",
            ],
        ),
        // Inside the scope, at every level.
        (
            "440000",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &[],
        ),
        (
            "440000",
            r#"{"kind":"space_count","region":"440000","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &[],
        ),
        // A source scoped to a city or a county is held to it.
        (
            "440100",
            r#"{"kind":"space_count","region":"440306","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["region: 440306 is outside this source's scope 440100"],
        ),
        (
            "440100",
            r#"{"kind":"space_count","region":"440000","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["region: 440000 is outside this source's scope 440100"],
        ),
        (
            "440106",
            r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"other","title":"x"}"#,
            &["region: 440100 is outside this source's scope 440106"],
        ),
        (
            "440106",
            r#"{"kind":"activity","region":"440106","date":"2018-11-20","category":"other","title":"x"}"#,
            &[],
        ),
    ];
    for (scope, json, expected) in cases {
        check_scope(scope, json, expected);
    }
}

// ---- 5. bad records ----------------------------------------------------------------------

#[test]
fn bad_records_are_refused_naming_position_field_and_reason() {
    let cases: &[(&str, &str, &[&str])] = &[
        // Counts.
        (
            "negative count",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":-1}}"#,
            &["record 1 (line 1): spaces.teacher: must be ≥ 0"],
        ),
        (
            "negative fractional count",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":-0.5}}"#,
            &["record 1 (line 1): spaces.teacher: must be ≥ 0"],
        ),
        (
            "fractional count",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1.5}}"#,
            &["record 1 (line 1): spaces.teacher: must be a whole number"],
        ),
        (
            "count above the largest",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1000000001}}"#,
            &["record 1 (line 1): spaces.teacher: must be at most 1000000000"],
        ),
        (
            "count beyond 64 bits",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"student":1e30}}"#,
            &["record 1 (line 1): spaces.student: must be at most 1000000000"],
        ),
        (
            "count as a string",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":"1200"}}"#,
            &["record 1 (line 1): spaces.teacher: must be a whole number"],
        ),
        (
            "negative population",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1},"population":{"students":-5}}"#,
            &["record 1 (line 1): population.students: must be ≥ 0"],
        ),
        (
            "fractional participants",
            r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t","participants":3.5}"#,
            &["record 1 (line 1): participants: must be a whole number"],
        ),
        // Kinds.
        (
            "unknown kind",
            r#"{"kind":"space_counts","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &[
                "record 1 (line 1): kind: unknown kind \"space_counts\"; expected space_count, milestone, recommendation, activity or withdrawal",
            ],
        ),
        (
            "missing kind",
            r#"{"region":"440106","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): kind: is required"],
        ),
        (
            "kind not a string",
            r#"{"kind":1,"region":"440106"}"#,
            &["record 1 (line 1): kind: must be a string"],
        ),
        (
            "record not an object",
            r#""space_count""#,
            &["record 1 (line 1): must be a JSON object"],
        ),
        // Unknown fields.
        (
            "unknown top-level field",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1},"note":"x"}"#,
            &["record 1 (line 1): note: is not a field of space_count records"],
        ),
        (
            "unknown nested field spaces.teachers",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teachers":5,"student":1}}"#,
            &["record 1 (line 1): spaces.teachers: is not a field of space_count records"],
        ),
        (
            "unknown nested field in real_name",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":5},"real_name":{"teachers":5}}"#,
            &["record 1 (line 1): real_name.teachers: is not a field of space_count records"],
        ),
        (
            "unknown nested field in document",
            r#"{"kind":"milestone","milestone":"recommendations","region":"440000","submitted_on":"2018-11-20","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000","author":"x"}}"#,
            &["record 1 (line 1): document.author: is not a field of milestone records"],
        ),
        (
            "unknown nested field in nominee",
            r#"{"kind":"recommendation","level":"city","by":"440100","nominee":{"type":"school","code":"4144010601","region":"440106","grade":"A"}}"#,
            &["record 1 (line 1): nominee.grade: is not a field of recommendation records"],
        ),
        // Region codes.
        (
            "region with 5 digits",
            r#"{"kind":"space_count","region":"44010","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): region: must be a 6-digit GB/T 2260 code, got \"44010\""],
        ),
        (
            "region with letters",
            r#"{"kind":"space_count","region":"44a106","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): region: must be a 6-digit GB/T 2260 code, got \"44a106\""],
        ),
        (
            "region in an unknown province",
            r#"{"kind":"space_count","region":"990000","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &[
                "record 1 (line 1): region: \"990000\" is not inside any of the 32 provincial units (its first two digits are unknown)",
            ],
        ),
        (
            "county without city",
            r#"{"kind":"space_count","region":"440006","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): region: \"440006\" has a county part but no city part"],
        ),
        (
            "region as a number",
            r#"{"kind":"space_count","region":440106,"as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): region: must be a 6-digit region code string"],
        ),
        // Schools.
        (
            "school without region",
            r#"{"kind":"space_count","school":"4144010601","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): region: is required"],
        ),
        (
            "school with a province-level region",
            r#"{"kind":"space_count","region":"440000","school":"4144010601","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &[
                "record 1 (line 1): region: 440000 is a province code; expected a county or city code",
            ],
        ),
        (
            "school code of 9 digits",
            r#"{"kind":"space_count","region":"440106","school":"414401060","as_of":"2018-11-20","spaces":{"teacher":1}}"#,
            &[
                "record 1 (line 1): school: must be a 10-digit school identification code, got \"414401060\"",
            ],
        ),
        // Dates.
        (
            "future as_of",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-12-02","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): as_of: 2018-12-02 is after today (2018-12-01)"],
        ),
        (
            "as_of before the campaign start minus one year",
            r#"{"kind":"space_count","region":"440106","as_of":"2017-09-30","spaces":{"teacher":1}}"#,
            &[
                "record 1 (line 1): as_of: 2017-09-30 is before 2017-10-01, one year before the campaign starts",
            ],
        ),
        (
            "impossible date",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-02-30","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): as_of: must be a date YYYY-MM-DD, got \"2018-02-30\""],
        ),
        (
            "date with slashes",
            r#"{"kind":"space_count","region":"440106","as_of":"2018/11/20","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): as_of: must be a date YYYY-MM-DD, got \"2018/11/20\""],
        ),
        (
            "date without separators",
            r#"{"kind":"space_count","region":"440106","as_of":"20181120","spaces":{"teacher":1}}"#,
            &["record 1 (line 1): as_of: must be a date YYYY-MM-DD, got \"20181120\""],
        ),
        (
            "future activity date",
            r#"{"kind":"activity","region":"440100","date":"2019-01-01","category":"training","title":"t"}"#,
            &["record 1 (line 1): date: 2019-01-01 is after today (2018-12-01)"],
        ),
        // Real-name and spaces.
        (
            "real_name exceeding spaces",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1200},"real_name":{"teacher":1300}}"#,
            &[
                "record 1 (line 1): real_name.teacher: 1300 real-name spaces exceed the 1200 spaces reported in spaces.teacher",
            ],
        ),
        (
            "real_name without spaces",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{"teacher":1200},"real_name":{"student":5}}"#,
            &[
                "record 1 (line 1): real_name.student: spaces.student must be given when real_name.student is",
            ],
        ),
        (
            "empty spaces object",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20","spaces":{}}"#,
            &["record 1 (line 1): spaces: must give at least one space kind"],
        ),
        (
            "missing spaces",
            r#"{"kind":"space_count","region":"440106","as_of":"2018-11-20"}"#,
            &["record 1 (line 1): spaces: is required"],
        ),
        // Recommendations.
        (
            "nominee outside the recommender",
            r#"{"kind":"recommendation","level":"city","by":"440100","nominee":{"type":"school","code":"4144030601","region":"440306"}}"#,
            &["record 1 (line 1): nominee.region: 440306 is not inside 440100"],
        ),
        (
            "region nominee outside the recommender",
            r#"{"kind":"recommendation","level":"city","by":"440100","nominee":{"type":"region","code":"440306"}}"#,
            &["record 1 (line 1): nominee.code: 440306 is not inside 440100"],
        ),
        (
            "recommender level mismatch (level city, by a province)",
            r#"{"kind":"recommendation","level":"city","by":"440000","nominee":{"type":"school","code":"4144010601","region":"440106"}}"#,
            &["record 1 (line 1): by: 440000 is a province code; expected a city code"],
        ),
        (
            "unknown level",
            r#"{"kind":"recommendation","level":"district","by":"440106","nominee":{"type":"school","code":"4144010601","region":"440106"}}"#,
            &["record 1 (line 1): level: must be one of county, city, province, got \"district\""],
        ),
        (
            "nominee type unknown",
            r#"{"kind":"recommendation","level":"city","by":"440100","nominee":{"type":"teacher","code":"4144010601","region":"440106"}}"#,
            &["record 1 (line 1): nominee.type: must be one of school, region, got \"teacher\""],
        ),
        (
            "region nominee with a school code",
            r#"{"kind":"recommendation","level":"city","by":"440100","nominee":{"type":"region","code":"4144010601"}}"#,
            &[
                "record 1 (line 1): nominee.code: must be a 6-digit GB/T 2260 code, got \"4144010601\"",
            ],
        ),
        (
            "school nominee without region",
            r#"{"kind":"recommendation","level":"city","by":"440100","nominee":{"type":"school","code":"4144010601"}}"#,
            &["record 1 (line 1): nominee.region: is required"],
        ),
        (
            "quota malformed: level as a number",
            r#"{"kind":"recommendation","level":5,"by":"440100","nominee":{"type":"school","code":"4144010601","region":"440106"}}"#,
            &["record 1 (line 1): level: must be a string"],
        ),
        // Milestones.
        (
            "milestone with an unknown id",
            r#"{"kind":"milestone","milestone":"kickoff","region":"440000","submitted_on":"2018-11-20","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}}"#,
            &[
                "record 1 (line 1): milestone: \"kickoff\" is not a deliverable of campaign 2018; expected one of contact_form, implementation_plan, recommendations",
            ],
        ),
        (
            "milestone naming a window, not a deliverable",
            r#"{"kind":"milestone","milestone":"regional_activities","region":"440000","submitted_on":"2018-11-20","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}}"#,
            &[
                "record 1 (line 1): milestone: \"regional_activities\" is not a deliverable of campaign 2018; expected one of contact_form, implementation_plan, recommendations",
            ],
        ),
        (
            "milestone region not provincial",
            r#"{"kind":"milestone","milestone":"recommendations","region":"440100","submitted_on":"2018-11-20","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}}"#,
            &["record 1 (line 1): region: 440100 is a city code; expected a provincial code"],
        ),
        (
            "document sha256 of the wrong length",
            r#"{"kind":"milestone","milestone":"recommendations","region":"440000","submitted_on":"2018-11-20","document":{"title":"t","sha256":"9f2c4b6e"}}"#,
            &["record 1 (line 1): document.sha256: must be 64 lower-case hex digits (SHA-256)"],
        ),
        (
            "document sha256 in upper case",
            r#"{"kind":"milestone","milestone":"recommendations","region":"440000","submitted_on":"2018-11-20","document":{"title":"t","sha256":"9F2C4B6E1A3D5F7081C2E4A6B8D0F1E3C5A7B9D1F3E5A7C9B1D3F5A7C9E1B3D5"}}"#,
            &["record 1 (line 1): document.sha256: must be 64 lower-case hex digits (SHA-256)"],
        ),
        (
            "implementation_plan without details.years",
            r#"{"kind":"milestone","milestone":"implementation_plan","region":"440000","submitted_on":"2018-11-12","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}}"#,
            &["record 1 (line 1): details.years: is required"],
        ),
        (
            "contact_form without contacts",
            r#"{"kind":"milestone","milestone":"contact_form","region":"440000","submitted_on":"2018-10-18","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000"},"details":{"contacts":[]}}"#,
            &["record 1 (line 1): details.contacts: is required"],
        ),
        (
            "plan year that is not a year",
            r#"{"kind":"milestone","milestone":"implementation_plan","region":"440000","submitted_on":"2018-11-12","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000"},"details":{"years":{"18":["440100"]}}}"#,
            &["record 1 (line 1): details.years.18: must be a year such as \"2019\""],
        ),
        (
            "plan naming the province itself",
            r#"{"kind":"milestone","milestone":"implementation_plan","region":"440000","submitted_on":"2018-11-12","document":{"title":"t","sha256":"0000000000000000000000000000000000000000000000000000000000000000"},"details":{"years":{"2018":["440000"]}}}"#,
            &["record 1 (line 1): details.years.2018[0]: 440000 is not inside 440000"],
        ),
        // Activities.
        (
            "activity with an unknown category",
            r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"party","title":"t"}"#,
            &[
                "record 1 (line 1): category: must be one of training, conference, exhibition, research, other, got \"party\"",
            ],
        ),
        (
            "activity with an empty title",
            r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":""}"#,
            &["record 1 (line 1): title: must not be empty"],
        ),
        (
            "activity with a blank title",
            r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":" \t "}"#,
            &["record 1 (line 1): title: must not be empty"],
        ),
        // Withdrawals.
        (
            "withdrawal of seq 0",
            r#"{"kind":"withdrawal","target_seq":0,"reason":"r"}"#,
            &["record 1 (line 1): target_seq: must be ≥ 1 (seqs start at 1)"],
        ),
        (
            "withdrawal of the seq this record would get",
            r#"{"kind":"withdrawal","target_seq":100,"reason":"r"}"#,
            &["record 1 (line 1): target_seq: must be an earlier seq of this source (1 … 99)"],
        ),
        (
            "withdrawal of a later seq",
            r#"{"kind":"withdrawal","target_seq":250,"reason":"r"}"#,
            &["record 1 (line 1): target_seq: must be an earlier seq of this source (1 … 99)"],
        ),
        (
            "withdrawal without reason",
            r#"{"kind":"withdrawal","target_seq":5}"#,
            &["record 1 (line 1): reason: is required"],
        ),
        // Every problem of a record is reported, in field order.
        (
            "several problems in one record",
            r#"{"kind":"space_count","region":"44010","as_of":"2018/11/20","spaces":{"teacher":-1},"extra":1}"#,
            &[
                "record 1 (line 1): extra: is not a field of space_count records",
                "record 1 (line 1): region: must be a 6-digit GB/T 2260 code, got \"44010\"",
                "record 1 (line 1): as_of: must be a date YYYY-MM-DD, got \"2018/11/20\"",
                "record 1 (line 1): spaces.teacher: must be ≥ 0",
            ],
        ),
        (
            "a bad population does not hide the other problems",
            r#"{"kind":"space_count","region":"440000","school":"4144010601","as_of":"2018-11-20","spaces":{"teacher":1},"population":"many"}"#,
            &[
                "record 1 (line 1): population: must be an object",
                "record 1 (line 1): region: 440000 is a province code; expected a county or city code",
            ],
        ),
    ];
    assert!(cases.len() >= 30);
    for (what, input, expected) in cases {
        check_refused(what, input.as_bytes(), Format::Json, expected);
    }
}

#[test]
fn text_longer_than_500_characters_is_refused() {
    let title = "空".repeat(500);
    let ok = format!(
        r#"{{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"{title}"}}"#
    );
    check_accepted(ok.as_bytes(), Format::Json, &[common::record(&ok)]);
    let long = ok.replace(&title, &format!("{title}x"));
    check_refused(
        "text of 501 characters",
        long.as_bytes(),
        Format::Json,
        &["record 1 (line 1): title: must be at most 500 characters"],
    );
}

#[test]
fn each_problem_names_the_record_that_has_it() {
    let good = r#"{"kind":"withdrawal","target_seq":1,"reason":"r"}"#;
    let bad = r#"{"kind":"withdrawal","target_seq":0,"reason":"r"}"#;
    let cases: Vec<(String, Vec<&str>)> = vec![
        // NDJSON: blank lines are skipped but counted.
        (
            format!("{good}\n\n{bad}\n{good}\n"),
            vec!["record 2 (line 3): target_seq: must be ≥ 1 (seqs start at 1)"],
        ),
        // Several bad records: each is named.
        (
            format!("{bad}\n{good}\n{bad}\n"),
            vec![
                "record 1 (line 1): target_seq: must be ≥ 1 (seqs start at 1)",
                "record 3 (line 3): target_seq: must be ≥ 1 (seqs start at 1)",
            ],
        ),
        // Pretty-printed objects: the line where the record starts.
        (
            "{\n  \"kind\": \"withdrawal\",\n  \"target_seq\": 1,\n  \"reason\": \"r\"\n}\n{\n  \"kind\": \"withdrawal\",\n  \"target_seq\": 0,\n  \"reason\": \"r\"\n}\n"
                .to_string(),
            vec!["record 2 (line 6): target_seq: must be ≥ 1 (seqs start at 1)"],
        ),
        // Objects on CRLF lines, with leading white space.
        (
            format!("  {good}\r\n\r\n  {bad}\r\n"),
            vec!["record 2 (line 3): target_seq: must be ≥ 1 (seqs start at 1)"],
        ),
        // A JSON array has no lines: the index names the record.
        (
            format!("[{good},\n{bad}]"),
            vec!["record 2: target_seq: must be ≥ 1 (seqs start at 1)"],
        ),
        // A single object.
        (
            bad.to_string(),
            vec!["record 1 (line 1): target_seq: must be ≥ 1 (seqs start at 1)"],
        ),
    ];
    for (input, expected) in cases {
        check_refused("positions", input.as_bytes(), Format::Json, &expected);
    }
}

#[test]
fn unreadable_batches_are_refused_whole() {
    let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let nested_objects = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"kind\":\"withdrawal\",\"target_seq\":1,\"reason\":\"r\"}\n{\"kind\":\"activity\",\"title\":\"\xb5\xda\"}\n".to_vec(),
            "line 2: the batch is not valid UTF-8 (byte 78); save the file as UTF-8",
        ),
        (
            // The offset counts from the first byte sent, byte-order mark included.
            b"\xEF\xBB\xBF{\"title\":\"\xff\"}".to_vec(),
            "line 1: the batch is not valid UTF-8 (byte 13); save the file as UTF-8",
        ),
        (b"".to_vec(), "the batch is empty: send at least one record"),
        (b"  \n".to_vec(), "the batch is empty: send at least one record"),
        (b"\xEF\xBB\xBF\r\n".to_vec(), "the batch is empty: send at least one record"),
        (b"[]".to_vec(), "the batch is empty: send at least one record"),
        (b" [ \n ] ".to_vec(), "the batch is empty: send at least one record"),
        (
            br#"{"kind":"activity","region":"44"#.to_vec(),
            "line 1, column 31: malformed JSON: EOF while parsing a string",
        ),
        (
            b"{\"kind\":\"withdrawal\",\"target_seq\":1,\"reason\":\"r\"}\n{\"kind\":\"withdrawal\",\"target_seq\":".to_vec(),
            "line 2, column 34: malformed JSON: EOF while parsing a value",
        ),
        (
            br#"[{"kind":"withdrawal","target_seq":1,"reason":"r"},"#.to_vec(),
            "line 1, column 51: malformed JSON: EOF while parsing a value",
        ),
        (
            br#"[{"kind":"withdrawal","target_seq":1,"reason":"r"}] x"#.to_vec(),
            "line 1, column 53: malformed JSON: trailing characters",
        ),
        (
            nested.into_bytes(),
            "line 1, column 128: malformed JSON: recursion limit exceeded",
        ),
        (
            nested_objects.into_bytes(),
            "line 1, column 636: malformed JSON: recursion limit exceeded",
        ),
    ];
    for (input, expected) in cases {
        check_refused("unreadable batch", &input, Format::Json, &[expected]);
    }
}

#[test]
fn too_many_records_are_refused() {
    let one = "{\"kind\":\"withdrawal\",\"target_seq\":1,\"reason\":\"r\"}\n";
    let cases: Vec<(String, Format, Result<usize, &str>)> = vec![
        (one.repeat(3), Format::Json, Ok(3)),
        (
            one.repeat(4),
            Format::Json,
            Err("the batch has more than 3 records; split it"),
        ),
        (
            format!("[{}]", [one.trim(); 4].join(",")),
            Format::Json,
            Err("the batch has more than 3 records; split it"),
        ),
        (
            format!(
                "{CSV_HEADER}\n{}",
                "440106,,2018-11-20,1,,,,,,,,,,\n".repeat(4)
            ),
            Format::Csv,
            Err("the batch has more than 3 records; split it"),
        ),
    ];
    for (input, format, expected) in cases {
        let got = batch::parse(input.as_bytes(), format, 3, |_, _| Vec::new())
            .map(|r| r.len())
            .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_string), "{input}");
    }
}

#[test]
fn bad_csv_is_refused_naming_line_and_column() {
    let h = CSV_HEADER;
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            "region,school,as_of,teachr\n440106,,2018-11-20,5\n".to_string(),
            vec![format!(
                "line 1: unknown column \"teachr\"; the columns are {h} (and real_name_<kind>)"
            )],
        ),
        (
            "region,school,teacher\n440106,,5\n".into(),
            vec!["line 1: the header has no \"as_of\" column".into()],
        ),
        (
            format!("{h}\n440106,,2018-11-20,1,,,,,,,,,,,\n"),
            vec!["record 1 (line 2): the row has 15 cells but the header has 14".into()],
        ),
        (
            format!("{h}\n440106,,2018-11-20,-5,,,,,,,,,,\n"),
            vec!["record 1 (line 2): column teacher: must be ≥ 0".into()],
        ),
        (
            format!("{h}\n440106,,2018-11-20,5,,,,1.5,,,,,,\n"),
            vec!["record 1 (line 2): column school_spaces: must be a whole number".into()],
        ),
        (
            format!("{h}\n440106,,2018-11-20,5,,,,,,,,,-1,\n"),
            vec!["record 1 (line 2): column students: must be ≥ 0".into()],
        ),
        (
            format!("{h},real_name_teacher\n440106,,2018-11-20,5,,,,,,,,,,,6\n"),
            vec!["record 1 (line 2): column real_name_teacher: 6 real-name spaces exceed the 5 spaces reported in spaces.teacher".into()],
        ),
        (
            format!("{h}\n440106,,2018-12-02,5,,,,,,,,,,\n"),
            vec!["record 1 (line 2): column as_of: 2018-12-02 is after today (2018-12-01)".into()],
        ),
        (
            format!("{h}\n110105,,2018-11-20,5,,,,,,,,,,\n"),
            vec!["record 1 (line 2): column region: 110105 is outside this source's scope 440000".into()],
        ),
        (
            format!("{h}\n4401,,2018-11-20,5,,,,,,,,,,\n"),
            vec!["record 1 (line 2): column region: must be a 6-digit GB/T 2260 code, got \"4401\"".into()],
        ),
        (
            // A blank row is skipped; positions stay those of the file.
            format!("{h}\n440106,,2018-11-20,5,,,,,,,,,,\n,,,,,,,,,,,,,\n440106,,2018-11-20,x,,,,,,,,,,\n"),
            vec!["record 2 (line 4): column teacher: must be a whole number".into()],
        ),
        (
            format!("{h}\n"),
            vec!["the batch is empty: send at least one record".into()],
        ),
        (
            "".into(),
            vec!["the batch is empty: send at least one record".into()],
        ),
    ];
    for (input, expected) in cases {
        check_refused(
            "bad CSV",
            input.as_bytes(),
            Format::Csv,
            &expected.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    // A GBK-encoded export (a common mistake) is not UTF-8.
    let mut gbk = format!("{h}\n").into_bytes();
    gbk.extend_from_slice(b"440106,\xcc\xec,2018-11-20,5,,,,,,,,,,\n");
    check_refused(
        "GBK CSV",
        &gbk,
        Format::Csv,
        &["line 2: the batch is not valid UTF-8 (byte 130); save the file as UTF-8"],
    );
}

#[test]
fn a_refused_batch_keeps_nothing() {
    // One bad record among good ones: the whole batch is refused, and the good ones are
    // not returned.
    let input = format!(
        "{}\n{}\n",
        spec_examples_ndjson().trim_end(),
        r#"{"kind":"withdrawal","target_seq":0,"reason":"r"}"#
    );
    check_refused(
        "one bad record among good ones",
        input.as_bytes(),
        Format::Json,
        &["record 6 (line 6): target_seq: must be ≥ 1 (seqs start at 1)"],
    );
}
