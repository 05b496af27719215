//! `docs/records.md` is the contract provincial platforms code against; this test holds it
//! to the code, so the document fails the build when the two drift apart.
//!
//! What it checks, by the marks the document carries:
//! - Every fenced `json` block of records (an object with `"kind"`, or an array of them), every
//!   `ndjson` block and every `csv` block is a batch the agent accepts: it is judged by the
//!   agent's own [`Writer`] as a dry run, in [`judge`]'s context (source `gd-rrt`, scope
//!   `440000`, the bundled 2018 campaign, 2018-11-25 10:00 Beijing time, 50 entries already
//!   stored); each JSON record is also read alone by the strict reader `Record::from_value`.
//! - A block after `<!-- refused -->` is refused, and the next fenced block is the agent's
//!   answer, exactly (status 422, the `ErrorBody` JSON). A block after `<!-- accepted -->` is
//!   stored, and the next block is its 200 answer, exactly.
//! - The first `csv` block's header line is `batch::CSV_COLUMNS`, and each space kind's CSV
//!   column in the table is the one the CSV reader maps to that kind.
//! - The tables after `<!-- values: NAME -->` list exactly the code's values, in its order:
//!   space kinds, categories, levels and nominee types (read from the reader's own refusals),
//!   record kinds, and the 2018 deliverables with their due dates and required details.
//! - The table after `<!-- limits -->` states the code's constants and defaults.
//! - The signed-entry example is a real one: the envelope verifies with the known-answer key
//!   of `shared/testdata/vectors.json` and opens as an entry, the payload block is its payload
//!   byte for byte, the document states its hash, and the receipt example reads as a receipt
//!   of that entry.

use std::path::Path;
use std::sync::Arc;

use axum::response::IntoResponse;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use spacesync_agent::config::{BufferConfig, DEFAULT_IDEMPOTENCY_RETENTION_SECS, IntakeConfig};
use spacesync_agent::http::AppError;
use spacesync_agent::intake::{Accepted, Identity, IntakeError, MAX_KEY_BYTES, Submission, Writer};
use spacesync_agent::store::Store;
use spacesync_shared::batch::{CSV_COLUMNS, Format};
use spacesync_shared::campaign::Requirement;
use spacesync_shared::clock::FixedClock;
use spacesync_shared::dsse::{Digest, Envelope, key_id};
use spacesync_shared::entry::{ENTRY_PAYLOAD_TYPE, Entry};
use spacesync_shared::record::{MAX_COUNT, MAX_TEXT, ProblemKind, Record, SpaceKind};
use spacesync_shared::wire::Receipt;
use spacesync_shared::{Campaign, RegionCode, SourceId};

/// Entries the judging agent holds before each example (so `target_seq: 42` is earlier).
const HELD: u64 = 50;

/// The known-answer key of `shared/testdata/vectors.json`: seed bytes 1, 2, …, 32.
fn vectors_key() -> SigningKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    SigningKey::from_bytes(&seed)
}

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/records.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One fenced block of the document.
struct Block {
    /// The fence's language (`json`, `ndjson`, `csv`, `sh`, …).
    lang: String,
    /// The lines between the fences.
    text: String,
    /// 1-based line of the opening fence, for messages.
    line: usize,
    /// `refused` or `accepted` when the block follows `<!-- refused -->` / `<!-- accepted -->`.
    mark: Option<&'static str>,
}

fn blocks(doc: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let mark = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| match l.trim() {
                "<!-- refused -->" => Some("refused"),
                "<!-- accepted -->" => Some("accepted"),
                _ => None,
            });
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            body.push(lines[i]);
            i += 1;
        }
        assert!(
            i < lines.len(),
            "line {}: the block is never closed",
            start + 1
        );
        out.push(Block {
            lang: lang.trim().to_string(),
            text: body.join("\n") + "\n",
            line: start + 1,
            mark,
        });
        i += 1;
    }
    out
}

/// The agent's writer, as source `gd-rrt` of Guangdong would run it on 2018-11-25, holding
/// [`HELD`] entries.
struct Judge {
    writer: Writer,
    _dir: tempfile::TempDir,
}

fn judge() -> Judge {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(&dir.path().join("db")).expect("store");
    let ident = Arc::new(Identity {
        source: SourceId::parse("gd-rrt").expect("source"),
        scope: RegionCode::parse("440000").expect("scope"),
        campaign: Campaign::builtin_2018(),
        key: vectors_key(),
    });
    let now = chrono::DateTime::parse_from_rfc3339("2018-11-25T10:00:00+08:00")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let mut writer = Writer::open(
        store,
        ident,
        Arc::new(FixedClock::new(now)),
        BufferConfig::default(),
        IntakeConfig::default().max_records,
        1,
        DEFAULT_IDEMPOTENCY_RETENTION_SECS,
    )
    .expect("writer");
    let filler: String = (1..=HELD)
        .map(|i| {
            format!(
                "{{\"kind\":\"activity\",\"region\":\"440100\",\"date\":\"2018-11-20\",\"category\":\"other\",\"title\":\"entry {i}\"}}\n"
            )
        })
        .collect();
    let held = writer.submit(&submission(filler, Format::Json, false), &mut |_| {});
    assert_eq!(held.map(|a| a.accepted).ok(), Some(HELD as usize));
    Judge { writer, _dir: dir }
}

fn submission(body: String, format: Format, dry_run: bool) -> Submission {
    Submission {
        body: body.into_bytes(),
        format,
        dry_run,
        idempotency_key: None,
    }
}

/// The HTTP answer the agent gives to a submission's result: status and JSON body.
async fn answer(result: Result<Accepted, IntakeError>) -> (u16, Value) {
    let resp = match result {
        Ok(a) => axum::Json(a).into_response(),
        Err(e) => AppError::from(e).into_response(),
    };
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("answer body");
    let body = serde_json::from_slice(&bytes).expect("answer is JSON");
    (status, body)
}

fn format_of(b: &Block) -> Format {
    match b.lang.as_str() {
        "csv" => Format::Csv,
        _ => Format::Json,
    }
}

/// The records of a `json` block, when it is a record or an array of records.
fn json_records(b: &Block) -> Option<Vec<Value>> {
    if b.lang != "json" {
        return None;
    }
    let v: Value = serde_json::from_str(&b.text)
        .unwrap_or_else(|e| panic!("line {}: the json block does not parse: {e}", b.line));
    let is_record = |v: &Value| v.get("kind").is_some();
    match v {
        Value::Object(_) if is_record(&v) => Some(vec![v]),
        Value::Array(items) if !items.is_empty() && items.iter().all(is_record) => Some(items),
        _ => None,
    }
}

/// The records of an `ndjson` block, one a line.
fn ndjson_records(b: &Block) -> Vec<Value> {
    b.text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line {}: an NDJSON line does not parse: {e}", b.line))
        })
        .collect()
}

#[tokio::test]
async fn every_example_is_judged_as_the_document_says() {
    let doc = doc();
    let blocks = blocks(&doc);
    let mut kinds_accepted = std::collections::BTreeSet::new();
    let (mut accepted, mut refused, mut answered) = (0, 0, 0);
    let mut i = 0;
    while i < blocks.len() {
        let b = &blocks[i];
        i += 1;
        let is_batch = matches!(b.lang.as_str(), "ndjson" | "csv") || json_records(b).is_some();
        if !is_batch {
            continue;
        }
        let values = match b.lang.as_str() {
            "csv" => vec![],
            "ndjson" => ndjson_records(b),
            _ => json_records(b).unwrap_or_default(),
        };
        let mut j = judge();
        match b.mark {
            Some("refused") => {
                let result = j
                    .writer
                    .submit(&submission(b.text.clone(), format_of(b), true), &mut |_| {});
                let (status, body) = answer(result).await;
                let shown = blocks
                    .get(i)
                    .filter(|a| a.lang == "json")
                    .unwrap_or_else(|| panic!("line {}: a refusal without its answer", b.line));
                i += 1;
                let want: Value = serde_json::from_str(&shown.text).unwrap_or_else(|e| {
                    panic!("line {}: the answer does not parse: {e}", shown.line)
                });
                assert_eq!(status, 422, "line {}: {body:#}", b.line);
                assert_eq!(
                    body, want,
                    "line {}: the document shows another answer than the agent gives:\n{}",
                    shown.line, body
                );
                refused += 1;
            }
            mark => {
                let stored = mark == Some("accepted");
                let result = j.writer.submit(
                    &submission(b.text.clone(), format_of(b), !stored),
                    &mut |_| {},
                );
                let (status, body) = answer(result).await;
                assert_eq!(
                    status, 200,
                    "line {}: the example is refused: {body:#}",
                    b.line
                );
                for v in &values {
                    let record = Record::from_value(v)
                        .unwrap_or_else(|p| panic!("line {}: {v}: {p:?}", b.line));
                    kinds_accepted.insert(record.kind());
                }
                if stored {
                    let shown = blocks
                        .get(i)
                        .filter(|a| a.lang == "json")
                        .unwrap_or_else(|| {
                            panic!("line {}: an accepted example without its answer", b.line)
                        });
                    i += 1;
                    let want: Value = serde_json::from_str(&shown.text).unwrap_or_else(|e| {
                        panic!("line {}: the answer does not parse: {e}", shown.line)
                    });
                    assert_eq!(body, want, "line {}: the agent answers {body}", shown.line);
                    answered += 1;
                }
                accepted += 1;
            }
        }
    }
    assert!(accepted >= 10, "only {accepted} accepted examples found");
    assert!(refused >= 3, "only {refused} refusal examples found");
    assert!(answered >= 1, "no accepted example with its answer");
    let documented: Vec<String> = values_table(&doc, "kinds")
        .iter()
        .map(|row| first_ticked(&row[0]))
        .collect();
    assert_eq!(
        documented,
        [
            "space_count",
            "milestone",
            "recommendation",
            "activity",
            "withdrawal"
        ]
    );
    let with_examples: Vec<String> = kinds_accepted.iter().map(|k| k.to_string()).collect();
    let mut all = documented.clone();
    all.sort();
    assert_eq!(
        with_examples, all,
        "every record kind has an accepted example"
    );
}

/// The `code` spans of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn first_ticked(cell: &str) -> String {
    ticked(cell)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no `value` in table cell {cell:?}"))
}

/// The body rows (cells trimmed) of the table following `marker`.
fn table_after(doc: &str, marker: &str) -> Vec<Vec<String>> {
    let at = doc
        .find(marker)
        .unwrap_or_else(|| panic!("the document has no {marker}"));
    doc[at + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn values_table(doc: &str, name: &str) -> Vec<Vec<String>> {
    table_after(doc, &format!("<!-- values: {name} -->"))
}

fn values_in(doc: &str, name: &str) -> Vec<String> {
    values_table(doc, name)
        .iter()
        .map(|row| first_ticked(&row[0]))
        .collect()
}

/// The values the strict reader lists when `field` of `record` is not one of them.
fn allowed(record: Value, field: &str) -> Vec<String> {
    let problems = Record::from_value(&record).expect_err("a value outside the set");
    problems
        .into_iter()
        .find_map(|p| match p.kind {
            ProblemKind::NotOneOf { allowed, .. } if p.field == field => Some(allowed),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no list of allowed values for {field}"))
        .split(", ")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_listed_values_are_the_codes() {
    let doc = doc();
    let kinds: Vec<&str> = SpaceKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(values_in(&doc, "space_kinds"), kinds);
    assert_eq!(
        values_in(&doc, "categories"),
        allowed(
            json!({"kind": "activity", "region": "440100", "date": "2018-11-20", "category": "?", "title": "t"}),
            "category"
        )
    );
    assert_eq!(
        values_in(&doc, "levels"),
        allowed(
            json!({"kind": "recommendation", "level": "?", "by": "440100",
                   "nominee": {"type": "region", "code": "440106"}}),
            "level"
        )
    );
    assert_eq!(
        values_in(&doc, "nominee_types"),
        allowed(
            json!({"kind": "recommendation", "level": "city", "by": "440100",
                   "nominee": {"type": "?", "code": "440106"}}),
            "nominee.type"
        )
    );

    // The 2018 deliverables, their due dates and the details each must carry.
    let campaign = Campaign::builtin_2018();
    let rows = values_table(&doc, "milestones");
    let defs: Vec<_> = campaign.deliverables().collect();
    assert_eq!(rows.len(), defs.len(), "one row per deliverable");
    for (row, def) in rows.iter().zip(defs) {
        assert_eq!(first_ticked(&row[0]), def.id);
        assert_eq!(row[2], def.due.to_string(), "due date of {}", def.id);
        let must: Vec<String> = def
            .requires
            .iter()
            .map(|r| match r {
                Requirement::Contacts => "details.contacts".to_string(),
                Requirement::Years => "details.years".to_string(),
            })
            .collect();
        assert_eq!(ticked(&row[3]), must, "what {} must carry", def.id);
    }
}

#[test]
fn the_csv_header_and_columns_are_the_readers() {
    let doc = doc();
    let first_csv = blocks(&doc)
        .into_iter()
        .find(|b| b.lang == "csv")
        .expect("a csv block");
    assert_eq!(
        first_csv.text.lines().next(),
        Some(CSV_COLUMNS.join(",").as_str()),
        "line {}: the CSV header",
        first_csv.line
    );
    // Each kind's column, as the CSV reader maps it.
    for row in values_table(&doc, "space_kinds") {
        let kind = SpaceKind::parse(&first_ticked(&row[0])).expect("a space kind");
        let column = first_ticked(&row[2]);
        let csv = format!("region,as_of,{column}\n440106,2018-11-20,7\n");
        let records =
            spacesync_shared::batch::parse(csv.as_bytes(), Format::Csv, 10, |_, _| Vec::new())
                .unwrap_or_else(|e| panic!("column {column}: {e}"));
        match &records[..] {
            [Record::SpaceCount(s)] => {
                assert_eq!(s.spaces.get(kind), Some(7), "column {column} is {kind}")
            }
            other => panic!("column {column}: {other:?}"),
        }
    }
}

/// The number a table cell starts with (`1,000,000,000 at most` → 1000000000).
fn leading_number(cell: &str) -> u64 {
    let digits: String = cell
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number at the start of {cell:?}"))
}

#[test]
fn the_limits_are_the_codes() {
    let intake = IntakeConfig::default();
    let buffer = BufferConfig::default();
    let expected: Vec<(&str, u64)> = vec![
        ("MAX_COUNT", MAX_COUNT),
        ("MAX_TEXT", MAX_TEXT as u64),
        ("[intake] max_records", intake.max_records as u64),
        ("[intake] max_body_bytes", intake.max_body_bytes as u64),
        ("MAX_KEY_BYTES", MAX_KEY_BYTES as u64),
        (
            "[intake] idempotency_retention_secs",
            intake.idempotency_retention_secs,
        ),
        ("[buffer] max_entries", buffer.max_entries),
        ("[buffer] max_bytes", buffer.max_bytes),
        (
            "MAX_CLOCK_SKEW",
            spacesync_hub::hub::MAX_CLOCK_SKEW.num_minutes() as u64,
        ),
        (
            "RECORDED_AT_SLACK",
            spacesync_hub::ingest::RECORDED_AT_SLACK.num_days() as u64,
        ),
    ];
    let rows = table_after(&doc(), "<!-- limits -->");
    let named: Vec<String> = rows.iter().map(|r| first_ticked(&r[2])).collect();
    let want: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(named, want, "the limits table names these, in this order");
    for (row, (name, value)) in rows.iter().zip(&expected) {
        assert_eq!(leading_number(&row[1]), *value, "{name}");
    }
    // The units the table states for the two durations.
    assert!(rows[8][1].contains("minutes") && rows[9][1].contains("days"));
}

#[test]
fn the_signed_entry_example_is_a_real_one() {
    let doc = doc();
    let blocks = blocks(&doc);
    let key = vectors_key().verifying_key();
    let object = |b: &Block| -> Option<serde_json::Map<String, Value>> {
        (b.lang == "json")
            .then(|| serde_json::from_str::<Value>(&b.text).ok())
            .flatten()
            .and_then(|v| v.as_object().cloned())
    };
    let envelopes: Vec<Envelope> = blocks
        .iter()
        .filter(|b| object(b).is_some_and(|o| o.contains_key("payloadType")))
        .map(|b| {
            serde_json::from_str(&b.text)
                .unwrap_or_else(|e| panic!("line {}: not an envelope: {e}", b.line))
        })
        .collect();
    assert_eq!(envelopes.len(), 1, "one envelope example");
    let env = &envelopes[0];
    assert_eq!(env.payload_type, ENTRY_PAYLOAD_TYPE);
    assert!(doc.contains(&format!("`{ENTRY_PAYLOAD_TYPE}`")));
    assert_eq!(env.signatures.len(), 1, "exactly one signature");
    assert_eq!(env.signatures[0].keyid, key_id(&key));
    let entry = Entry::open(env, &key).unwrap_or_else(|e| panic!("the envelope: {e}"));
    let hash = Digest::of(&env.payload);

    let payloads: Vec<&Block> = blocks
        .iter()
        .filter(|b| object(b).is_some_and(|o| o.contains_key("record") && o.contains_key("prev")))
        .collect();
    assert_eq!(payloads.len(), 1, "one entry payload example");
    assert_eq!(
        payloads[0].text.trim_end().as_bytes(),
        env.payload.as_slice(),
        "line {}: the payload block is the envelope's payload, byte for byte",
        payloads[0].line
    );
    let read = Entry::from_payload(payloads[0].text.trim_end().as_bytes())
        .unwrap_or_else(|e| panic!("the payload example: {e}"));
    assert_eq!(read, entry);
    assert!(
        doc.contains(&format!("({} bytes", env.payload.len())),
        "the payload's size in bytes"
    );
    assert!(
        doc.contains(&format!("`{hash}`")),
        "the document states the entry hash {hash}"
    );

    let receipts: Vec<Receipt> = blocks
        .iter()
        .filter(|b| object(b).is_some_and(|o| o.contains_key("entry_hash")))
        .map(|b| {
            serde_json::from_str(&b.text)
                .unwrap_or_else(|e| panic!("line {}: not a receipt: {e}", b.line))
        })
        .collect();
    assert_eq!(receipts.len(), 1, "one receipt example");
    let r = &receipts[0];
    assert_eq!(
        (&r.source, r.seq, r.entry_hash),
        (&entry.source, entry.seq, hash)
    );
}
