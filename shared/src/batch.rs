//! Batches of records as platforms send them: one JSON object, a JSON array, NDJSON, or
//! CSV (space counts only). Every problem carries the record's position (index and, where
//! the format has lines, line), so a person can find it.
//!
//! A batch is judged whole: [`parse`] returns every record or every problem, never a part.

use std::fmt;

use serde_json::{Map, Value};

use crate::record::{Problem, ProblemKind, Record, SpaceCount, SpaceKind};

/// How the bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON object, a JSON array of objects, or NDJSON (one object per line).
    Json,
    /// CSV with a header row; each row a `space_count`.
    Csv,
}

impl Format {
    /// Picks the format from a content type (`text/csv` → CSV, anything else JSON).
    pub fn from_content_type(ct: &str) -> Format {
        let ct = ct.split(';').next().unwrap_or("").trim();
        if ct.eq_ignore_ascii_case("text/csv") {
            Format::Csv
        } else {
            Format::Json
        }
    }

    /// Picks the format from a file name (`.csv` → CSV, anything else JSON).
    pub fn from_path(name: &str) -> Format {
        if name.to_ascii_lowercase().ends_with(".csv") {
            Format::Csv
        } else {
            Format::Json
        }
    }
}

/// A problem with the batch as a whole, before any record can be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Nothing but whitespace.
    #[error("the batch is empty: send at least one record")]
    Empty,
    /// The bytes are not UTF-8.
    #[error("line {line}: the batch is not valid UTF-8 (byte {byte}); save the file as UTF-8")]
    NotUtf8 {
        /// 1-based line of the first bad byte.
        line: usize,
        /// 0-based offset of the first bad byte.
        byte: usize,
    },
    /// JSON that does not parse.
    #[error("line {line}, column {column}: malformed JSON: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A CSV header or structure problem.
    #[error("line {line}: {message}")]
    Csv {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// More records than allowed in one batch.
    #[error("the batch has more than {max} records; split it")]
    TooMany {
        /// The limit.
        max: usize,
    },
}

/// A problem of one record in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// 0-based position in the batch.
    pub index: usize,
    /// 1-based line where the record starts, for NDJSON and CSV.
    pub line: Option<usize>,
    /// The problem.
    pub problem: Problem,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "record {} (line {l}): {}", self.index + 1, self.problem),
            None => write!(f, "record {}: {}", self.index + 1, self.problem),
        }
    }
}

/// Why a batch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The batch as a whole cannot be read.
    #[error("{0}")]
    Batch(#[from] BatchError),
    /// Records were read, and these are wrong.
    #[error("{}", join_lines(.0))]
    Records(Vec<RecordError>),
}

fn join_lines(errs: &[RecordError]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Refusal {
    /// Each problem as one line a person can act on.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Refusal::Batch(e) => vec![e.to_string()],
            Refusal::Records(errs) => errs.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A record's raw value and where it stood.
#[derive(Debug, Clone)]
pub struct Item {
    /// 0-based position.
    pub index: usize,
    /// 1-based line, where the format has lines.
    pub line: Option<usize>,
    /// The JSON value (CSV rows are turned into `space_count` objects).
    pub value: Value,
    /// For CSV: the column header a field came from, to name it in errors.
    csv: bool,
    /// A problem found while splitting (a CSV row with the wrong number of cells).
    shape: Option<Problem>,
}

impl Item {
    /// Renames a record field to what the sender wrote (the CSV column for CSV rows).
    fn sender_field(&self, field: &str) -> String {
        if !self.csv {
            return field.to_string();
        }
        let column = if let Some(k) = field.strip_prefix("spaces.") {
            match k {
                "school" => "school_spaces".to_string(),
                "region" => "region_spaces".to_string(),
                k => k.to_string(),
            }
        } else if let Some(k) = field.strip_prefix("real_name.") {
            format!("real_name_{k}")
        } else if let Some(k) = field.strip_prefix("population.") {
            k.to_string()
        } else if field == "spaces" {
            // The record-level "no space kind given": name the columns that give them.
            return "columns teacher … region_spaces".to_string();
        } else {
            field.to_string()
        };
        format!("column {column}")
    }
}

/// 1-based line numbers of increasing byte offsets in one text, counted incrementally so
/// that numbering every item of a body costs one pass over it (not one pass per item).
struct LineCounter<'a> {
    text: &'a [u8],
    at: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> LineCounter<'a> {
        LineCounter {
            text: text.as_bytes(),
            at: 0,
            line: 1,
        }
    }

    /// The line of `byte`; offsets must not decrease between calls.
    fn line_at(&mut self, byte: usize) -> usize {
        let end = byte.min(self.text.len());
        if end > self.at {
            self.line += self.text[self.at..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            self.at = end;
        }
        self.line
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, BatchError> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(text).map_err(|e| {
        // Counted in the bytes as sent, byte-order mark included.
        let byte = e.valid_up_to() + (bytes.len() - text.len());
        let line = bytes[..byte].iter().filter(|&&b| b == b'\n').count() + 1;
        BatchError::NotUtf8 { line, byte }
    })
}

/// Splits a JSON body (object, array or NDJSON) into items.
pub fn split_json(bytes: &[u8], max: usize) -> Result<Vec<Item>, BatchError> {
    let text = utf8(bytes)?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(BatchError::Empty);
    }
    let json_err = |e: serde_json::Error| BatchError::Json {
        line: e.line(),
        column: e.column(),
        message: e
            .to_string()
            .split(" at line")
            .next()
            .unwrap_or("")
            .to_string(),
    };
    if trimmed.starts_with('[') {
        let v: Value = crate::json::from_str(text).map_err(json_err)?;
        let Value::Array(items) = v else {
            return Err(BatchError::Empty);
        };
        if items.is_empty() {
            return Err(BatchError::Empty);
        }
        if items.len() > max {
            return Err(BatchError::TooMany { max });
        }
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(index, value)| Item {
                index,
                line: None,
                value,
                csv: false,
                shape: None,
            })
            .collect());
    }
    let mut out = Vec::new();
    let mut lines = LineCounter::new(text);
    let mut stream =
        serde_json::Deserializer::from_str(text).into_iter::<crate::json::StrictJson>();
    loop {
        // The stream's offset is at the end of the previous value; skip whitespace to find
        // where this one starts.
        let start = stream.byte_offset();
        let rest = &text[start..];
        let skipped = rest.len() - rest.trim_start().len();
        match stream.next() {
            None => break,
            Some(Err(e)) => return Err(json_err(e)),
            Some(Ok(crate::json::StrictJson(value))) => {
                if out.len() == max {
                    return Err(BatchError::TooMany { max });
                }
                out.push(Item {
                    index: out.len(),
                    line: Some(lines.line_at(start + skipped)),
                    value,
                    csv: false,
                    shape: None,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(out)
}

/// CSV columns, as the record spec names them.
pub const CSV_COLUMNS: [&str; 14] = [
    "region",
    "school",
    "as_of",
    "teacher",
    "student",
    "parent",
    "master_teacher",
    "school_spaces",
    "class",
    "club",
    "region_spaces",
    "teachers",
    "students",
    "schools",
];

#[derive(Clone, Copy)]
enum Column {
    Region,
    School,
    AsOf,
    Space(SpaceKind),
    RealName(SpaceKind),
    Population(&'static str),
}

fn column(name: &str) -> Option<Column> {
    Some(match name {
        "region" => Column::Region,
        "school" => Column::School,
        "as_of" => Column::AsOf,
        "school_spaces" => Column::Space(SpaceKind::School),
        "region_spaces" => Column::Space(SpaceKind::Region),
        "teachers" => Column::Population("teachers"),
        "students" => Column::Population("students"),
        "schools" => Column::Population("schools"),
        other => {
            if let Some(k) = other.strip_prefix("real_name_") {
                Column::RealName(SpaceKind::parse(k)?)
            } else {
                let k = SpaceKind::parse(other)?;
                if matches!(k, SpaceKind::School | SpaceKind::Region) {
                    return None;
                }
                Column::Space(k)
            }
        }
    })
}

fn cell_value(cell: &str) -> Value {
    let c = cell.trim();
    if let Ok(n) = c.parse::<u64>() {
        Value::from(n)
    } else if let Ok(n) = c.parse::<i64>() {
        Value::from(n)
    } else if let Some(n) = c.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
        Value::Number(n)
    } else {
        Value::String(c.to_string())
    }
}

/// Splits a CSV body (header row required) into `space_count` items.
pub fn split_csv(bytes: &[u8], max: usize) -> Result<Vec<Item>, BatchError> {
    let text = utf8(bytes)?;
    if text.trim().is_empty() {
        return Err(BatchError::Empty);
    }
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| BatchError::Csv {
            line: 1,
            message: format!("cannot read the header row: {e}"),
        })?
        .clone();
    let mut columns = Vec::with_capacity(headers.len());
    for h in headers.iter() {
        let h = h.trim();
        let c = column(h).ok_or_else(|| BatchError::Csv {
            line: 1,
            message: format!(
                "unknown column {h:?}; the columns are {} (and real_name_<kind>)",
                CSV_COLUMNS.join(",")
            ),
        })?;
        if columns.iter().any(|(x, _): &(String, Column)| x == h) {
            return Err(BatchError::Csv {
                line: 1,
                message: format!("column {h:?} appears twice in the header"),
            });
        }
        columns.push((h.to_string(), c));
    }
    for required in ["region", "as_of"] {
        if !columns.iter().any(|(h, _)| h == required) {
            return Err(BatchError::Csv {
                line: 1,
                message: format!("the header has no {required:?} column"),
            });
        }
    }
    let mut out = Vec::new();
    for row in rdr.records() {
        let row = row.map_err(|e| BatchError::Csv {
            line: e.position().map(|p| p.line() as usize).unwrap_or(0),
            message: e.to_string(),
        })?;
        let line = row.position().map(|p| p.line() as usize);
        if row.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        if out.len() == max {
            return Err(BatchError::TooMany { max });
        }
        let mut obj = Map::new();
        obj.insert("kind".into(), "space_count".into());
        let mut spaces = Map::new();
        let mut real = Map::new();
        let mut population = Map::new();
        let shape = (row.len() != columns.len()).then(|| {
            Problem::new(
                "",
                ProblemKind::CellCount {
                    got: row.len(),
                    header: columns.len(),
                },
            )
        });
        for ((_, col), cell) in columns.iter().zip(row.iter()) {
            if cell.trim().is_empty() {
                continue;
            }
            match col {
                Column::Region => {
                    obj.insert("region".into(), cell.trim().into());
                }
                Column::School => {
                    obj.insert("school".into(), cell.trim().into());
                }
                Column::AsOf => {
                    obj.insert("as_of".into(), cell.trim().into());
                }
                Column::Space(k) => {
                    spaces.insert(k.as_str().into(), cell_value(cell));
                }
                Column::RealName(k) => {
                    real.insert(k.as_str().into(), cell_value(cell));
                }
                Column::Population(p) => {
                    population.insert((*p).into(), cell_value(cell));
                }
            }
        }
        obj.insert("spaces".into(), Value::Object(spaces));
        if !real.is_empty() {
            obj.insert("real_name".into(), Value::Object(real));
        }
        if !population.is_empty() {
            obj.insert("population".into(), Value::Object(population));
        }
        out.push(Item {
            index: out.len(),
            line,
            value: Value::Object(obj),
            csv: true,
            shape,
        });
    }
    if out.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(out)
}

/// Reads a whole batch. `check` adds contextual problems for each record that parsed
/// (scope, dates, quotas …); it is called in batch order, so it may carry state such as a
/// quota ledger across the batch.
pub fn parse(
    bytes: &[u8],
    format: Format,
    max: usize,
    mut check: impl FnMut(usize, &Record) -> Vec<Problem>,
) -> Result<Vec<Record>, Refusal> {
    let items = match format {
        Format::Json => split_json(bytes, max)?,
        Format::Csv => split_csv(bytes, max)?,
    };
    let mut records = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for item in &items {
        let problems = match Record::from_value(&item.value) {
            // Only the agent makes these (`rotate-key`), signed by the key in force.
            Ok(Record::KeyTransition(_)) => {
                vec![Problem::new("kind", ProblemKind::AgentOnly)]
            }
            Ok(r) => {
                let p = check(item.index, &r);
                records.push(r);
                p
            }
            Err(p) => p,
        };
        for mut problem in item.shape.iter().cloned().chain(problems) {
            if !problem.field.is_empty() {
                problem.field = item.sender_field(&problem.field);
            }
            errors.push(RecordError {
                index: item.index,
                line: item.line,
                problem,
            });
        }
    }
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(Refusal::Records(errors))
    }
}

/// Writes space counts as CSV in the spec's column order (plus `real_name_<kind>` columns
/// when any row has real-name figures).
pub fn space_counts_to_csv(rows: &[SpaceCount]) -> String {
    let real_kinds: Vec<SpaceKind> = SpaceKind::ALL
        .into_iter()
        .filter(|k| {
            rows.iter()
                .any(|r| r.real_name.is_some_and(|rn| rn.get(*k).is_some()))
        })
        .collect();
    let mut header: Vec<String> = CSV_COLUMNS.iter().map(|s| s.to_string()).collect();
    header.extend(real_kinds.iter().map(|k| format!("real_name_{k}")));
    let mut out = header.join(",");
    out.push('\n');
    let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    for r in rows {
        let pop = r.population.unwrap_or_default();
        let mut cells = vec![
            r.region.to_string(),
            r.school.map(|s| s.to_string()).unwrap_or_default(),
            r.as_of.to_string(),
        ];
        for k in [
            SpaceKind::Teacher,
            SpaceKind::Student,
            SpaceKind::Parent,
            SpaceKind::MasterTeacher,
            SpaceKind::School,
            SpaceKind::Class,
            SpaceKind::Club,
            SpaceKind::Region,
        ] {
            cells.push(opt(r.spaces.get(k)));
        }
        cells.push(opt(pop.teachers));
        cells.push(opt(pop.students));
        cells.push(opt(pop.schools));
        for k in &real_kinds {
            cells.push(opt(r.real_name.and_then(|rn| rn.get(*k))));
        }
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// NDJSON items carry the line they start on, counted once over the body: the
        /// same numbers a naive count from the start of the text gives, for any mix of
        /// blank lines, spaces and values spread over several lines.
        #[test]
        fn ndjson_lines_match_a_naive_count(gaps in proptest::collection::vec((0usize..3, 0usize..3, any::<bool>()), 1..40)) {
            let mut text = String::new();
            let mut expected = Vec::new();
            for (i, (blank, spaces, split)) in gaps.iter().enumerate() {
                text.push_str(&"\n".repeat(*blank));
                text.push_str(&" ".repeat(*spaces));
                expected.push(text.matches('\n').count() + 1);
                if *split {
                    text.push_str(&format!("{{\"n\":\n{i}}}\n"));
                } else {
                    text.push_str(&format!("{{\"n\":{i}}}\n"));
                }
            }
            let items = split_json(text.as_bytes(), 1000).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got: Vec<usize> = items.iter().map(|i| i.line.unwrap_or(0)).collect();
            prop_assert_eq!(got, expected);
        }
    }

    fn refusal(text: &str, format: Format) -> Vec<String> {
        match parse(text.as_bytes(), format, 100, |_, _| Vec::new()) {
            Ok(r) => panic!("accepted {r:?}"),
            Err(e) => e.lines(),
        }
    }

    #[test]
    fn a_platform_cannot_send_a_key_transition() {
        use base64::Engine as _;
        let key = crate::keys::public_key_line(
            &ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key(),
        );
        let proof = base64::engine::general_purpose::STANDARD.encode([1u8; 64]);
        let t = format!(r#"{{"kind":"key_transition","new_key":"{key}","proof":"{proof}"}}"#);
        // The record model reads it (entries carry it) ...
        let v: Value = serde_json::from_str(&t).unwrap_or_default();
        assert!(matches!(
            Record::from_value(&v),
            Ok(Record::KeyTransition(_))
        ));
        // ... but a platform's batch never does.
        let lines = refusal(&t, Format::Json);
        assert!(lines[0].contains("made by the agent itself"), "{lines:?}");
        // Other spellings of the key or the proof are not read at all.
        let unpadded = proof.trim_end_matches('=');
        let odd = t.replace(&proof, unpadded);
        assert!(Record::from_value(&serde_json::from_str(&odd).unwrap_or_default()).is_err());
        let spaced = t.replace(&key, &format!(" {key}"));
        assert!(Record::from_value(&serde_json::from_str(&spaced).unwrap_or_default()).is_err());
    }

    #[test]
    fn duplicate_keys_and_columns_are_refused_by_name() {
        let dup = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"a","title":"b"}"#;
        let lines = refusal(dup, Format::Json);
        assert!(lines[0].contains("duplicate key \"title\""), "{lines:?}");
        let ndjson = format!("{dup}\n{dup}\n");
        assert!(refusal(&ndjson, Format::Json)[0].contains("duplicate key"));
        let csv = "region,as_of,teacher,teacher\n440106,2018-11-20,1,2\n";
        assert_eq!(
            refusal(csv, Format::Csv),
            ["line 1: column \"teacher\" appears twice in the header"]
        );
        let no_counts = "region,as_of,teacher\n440106,2018-11-20,\n";
        assert_eq!(
            refusal(no_counts, Format::Csv),
            [
                "record 1 (line 2): columns teacher … region_spaces: must give at least one space kind"
            ]
        );
        let selfnom = r#"{"kind":"recommendation","level":"city","by":"440100","nominee":{"type":"region","code":"440100"}}"#;
        assert_eq!(
            refusal(selfnom, Format::Json),
            [
                "record 1 (line 1): nominee.code: 440100 cannot nominate itself; a region is nominated by the level above"
            ]
        );
    }
}
