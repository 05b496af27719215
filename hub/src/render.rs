//! Bulletins for people: HTML (printable, an inline chart), Markdown and CSV, in Chinese by
//! default or English. Everything is drawn from the typed [`Bulletin`], so the same
//! figures appear in every format and language; every word comes from
//! [`crate::wording::bulletin`].
//!
//! - [`html`], [`markdown`], [`csv`] and [`flags_csv`] take the typed [`Bulletin`]; the
//!   caller reads the stored document once ([`Bulletin::from_document`]).
//! - [`Format`] is the one list of the ways to show a bulletin: its names
//!   (`bulletin show --format`), file extensions (`/v1/bulletins/{n}.{ext}`), content
//!   types, and [`Rendering::render`]; [`Rendering::unreadable`] is what each format
//!   shows for a document that does not read as a bulletin (a page or Markdown saying
//!   so, or [`CsvError::Unreadable`]); nothing panics on a document.
//!   [`crate::bulletin::show`] puts them together for the CLI, the API and the dashboard.
//! - HTML is written with maud's `html!`, which escapes every name and reason (unit
//!   names, milestone titles, extension reasons, notice texts) and double-quotes every
//!   attribute.
//! - Data flags are summarised (counts by provincial unit and kind, the
//!   [`LARGEST_DROPS`] largest drops); the complete list is the companion CSV
//!   ([`flags_csv`], `bulletin show N --format flags-csv`, `/v1/bulletins/N/flags.csv`)
//!   and the bulletin's JSON. The demo's bulletin 13 has 11,588 flags; printing each made
//!   its HTML 3.5 MB.
//! - Every section that has nothing to list says so in a sentence.
//! - The trajectory chart has one point per bulletin: the earlier ones from the
//!   bulletin's `history`, and this one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use spacesync_shared::RegionCode;
use spacesync_shared::record::SpaceKind;
use spacesync_shared::region::{Level, unit};

use crate::assessment::{Bulletin, HistoryPoint, NoticeEntry, PaceClass, UnitStatus};
use crate::views::{Flag, region_name};
use crate::wording::bulletin::{self as wb, words};
use crate::wording::t;
pub use crate::wording::{Lang, count, date, group};

/// How many of the largest drops a bulletin lists.
pub const LARGEST_DROPS: usize = 20;

/// The UTF-8 byte-order mark every CSV starts with: without it Excel reads the file in the
/// system code page and shows Chinese names as mojibake.
pub const CSV_BOM: &str = "\u{feff}";

/// The columns of [`flags_csv`]: the same as the dashboard's flags CSV, so one program
/// reads both.
pub const FLAGS_CSV_HEADER: [&str; 14] = crate::views::FLAG_CSV_HEADER;

/// Why a CSV could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The document is not a bulletin this hub can read (a stored bulletin damaged, or
    /// not a bulletin at all).
    #[error(
        "cannot read the bulletin document: {0}; see it with `bulletin show N --format json` and report this"
    )]
    Unreadable(#[source] serde_json::Error),
    /// The `csv` writer refused a row (rows of unequal length: a bug in this module).
    #[error("cannot write the bulletin CSV: {0}; this is a bug in the hub, please report it")]
    Write(#[from] csv::Error),
    /// The writer's buffer could not be taken back.
    #[error("cannot finish the bulletin CSV: {0}; this is a bug in the hub, please report it")]
    Finish(String),
}

/// A way to show an issued bulletin: `bulletin show N --format <name>`,
/// `GET /v1/bulletins/{n}.{extension}` (and `/v1/bulletins/{n}/flags.csv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The signed document as stored, pretty-printed: the form `bulletin verify` checks.
    /// Not rendered (the typed [`Bulletin`] does not hold the signature).
    Json,
    /// Rendered from the typed bulletin.
    Rendered(Rendering),
}

/// The formats rendered from the typed [`Bulletin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    /// A printable HTML page ([`html`]).
    Html,
    /// Markdown ([`markdown`]).
    Markdown,
    /// The province table as CSV ([`csv`]).
    Csv,
    /// Every data flag as CSV ([`flags_csv`]).
    FlagsCsv,
}

impl Format {
    /// Every format, in the order help texts list them.
    pub const ALL: [Format; 5] = [
        Format::Json,
        Format::Rendered(Rendering::Html),
        Format::Rendered(Rendering::Markdown),
        Format::Rendered(Rendering::Csv),
        Format::Rendered(Rendering::FlagsCsv),
    ];

    /// Its name for `bulletin show --format`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Rendered(Rendering::Html) => "html",
            Format::Rendered(Rendering::Markdown) => "md",
            Format::Rendered(Rendering::Csv) => "csv",
            Format::Rendered(Rendering::FlagsCsv) => "flags-csv",
        }
    }

    /// The format a `bulletin show --format` name asks for.
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The format of `/v1/bulletins/{n}.{extension}`: `json`, `html`, `md` or `csv`. The
    /// flags CSV has a path of its own (`/v1/bulletins/{n}/flags.csv`), not an extension.
    pub fn from_extension(extension: &str) -> Option<Format> {
        Format::from_name(extension).filter(|f| *f != Format::Rendered(Rendering::FlagsCsv))
    }

    /// The `Content-Type` it is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Rendered(Rendering::Html) => "text/html; charset=utf-8",
            Format::Rendered(Rendering::Markdown) => "text/markdown; charset=utf-8",
            Format::Rendered(Rendering::Csv | Rendering::FlagsCsv) => "text/csv; charset=utf-8",
        }
    }
}

impl Rendering {
    /// The bulletin in this format, in `lang`.
    pub fn render(self, b: &Bulletin, lang: Lang) -> Result<String, CsvError> {
        match self {
            Rendering::Html => Ok(html(b, lang)),
            Rendering::Markdown => Ok(markdown(b, lang)),
            Rendering::Csv => csv(b, lang),
            Rendering::FlagsCsv => flags_csv(b, lang),
        }
    }

    /// What this format shows for a document that does not read as a bulletin (`error`
    /// says why): a page or Markdown saying so; for a CSV, [`CsvError::Unreadable`].
    pub fn unreadable(self, lang: Lang, error: serde_json::Error) -> Result<String, CsvError> {
        let text = match self {
            Rendering::Csv | Rendering::FlagsCsv => return Err(CsvError::Unreadable(error)),
            Rendering::Html => unreadable_page(lang, &error.to_string()).into_string(),
            Rendering::Markdown => format!(
                "# {}\n\n{}\n",
                words(lang).unreadable,
                wb::unreadable(lang, &error.to_string())
            ),
        };
        tracing::warn!(error = %error, "A bulletin document does not read as a bulletin; showing why instead.");
        Ok(text)
    }
}

// ---------------------------------------------------------------------------------------
// Names and numbers.

fn title(b: &Bulletin, lang: Lang) -> &str {
    match lang {
        Lang::Zh => &b.title,
        Lang::En => &b.title_en,
    }
}

/// A unit's name in `lang` (the other language's, then the code, when missing).
fn unit_name(lang: Lang, code: RegionCode, zh: &Option<String>, en: &Option<String>) -> String {
    let (first, second) = match lang {
        Lang::Zh => (zh, en),
        Lang::En => (en, zh),
    };
    first
        .as_deref()
        .or(second.as_deref())
        .map_or_else(|| code.to_string(), str::to_string)
}

fn name_of(lang: Lang, u: &UnitStatus) -> String {
    unit_name(lang, u.code, &u.name, &u.name_en)
}

/// A region's name: a provincial unit as the bulletin names it, any other region from
/// the division directory (a generic name such as 市辖区 with its province's before it),
/// else its code.
fn region_label(b: &Bulletin, code: RegionCode, lang: Lang) -> String {
    if let Some(u) = b.assessment.unit(code) {
        return name_of(lang, u);
    }
    if code.level() == Level::Province
        && let Some(u) = unit(code).filter(|u| u.code == code.as_u32())
    {
        return t(lang, u.name_zh, u.name_en).to_string();
    }
    match region_name(code) {
        Some(n) if n == "市辖区" || n == "县" => {
            let p = code.province();
            let province = b
                .assessment
                .unit(p)
                .map(|u| name_of(Lang::Zh, u))
                .or_else(|| region_name(p))
                .unwrap_or_default();
            format!("{province}{n}")
        }
        Some(n) => n,
        None => code.to_string(),
    }
}

/// A milestone's title in `lang`, from the bulletin's own deliverables and windows.
fn milestone_title(b: &Bulletin, lang: Lang, id: &str) -> String {
    b.assessment
        .milestone_title(id)
        .map_or(id, |(zh, en)| match lang {
            Lang::Zh => zh,
            Lang::En => en,
        })
        .to_string()
}

/// The deliverables the milestone matrix has columns for, in the bulletin's order.
fn milestone_ids(b: &Bulletin) -> Vec<&str> {
    b.assessment
        .nation
        .milestones
        .keys()
        .map(String::as_str)
        .collect()
}

fn pace_class(c: PaceClass) -> &'static str {
    match c {
        PaceClass::OnTrack => "on_track",
        PaceClass::Behind => "behind",
        PaceClass::FarBehind => "far_behind",
        PaceClass::Unknown => "unknown",
    }
}

fn ratio(a: i64, b: Option<u64>) -> Option<f64> {
    b.filter(|b| *b > 0).map(|b| a as f64 / b as f64)
}

fn count_u(lang: Lang, n: u64) -> String {
    count(lang, i64::try_from(n).unwrap_or(i64::MAX))
}

fn opt_count(lang: Lang, n: Option<u64>) -> String {
    n.map_or_else(|| words(lang).unknown.to_string(), |n| count_u(lang, n))
}

/// Every bulletin's national point, oldest first: the history, then this bulletin.
fn points(b: &Bulletin) -> Vec<HistoryPoint> {
    let mut p: Vec<HistoryPoint> = b
        .history
        .iter()
        .filter(|h| h.number < b.number)
        .copied()
        .collect();
    p.sort_by_key(|h| h.number);
    p.push(HistoryPoint::of(b));
    p
}

/// What the bulletin shows of one entry of its notice log.
#[derive(Debug, Default)]
struct NoticeLine<'a> {
    id: u64,
    rule: &'a str,
    addressee: Option<RegionCode>,
    state: &'a str,
    text: &'a str,
    created: Option<DateTime<Utc>>,
}

impl NoticeLine<'_> {
    /// The notice, or a line saying it cannot be read.
    fn of(entry: &NoticeEntry, lang: Lang) -> NoticeLine<'_> {
        match entry {
            NoticeEntry::Notice(n) => NoticeLine {
                id: n.id,
                rule: &n.rule,
                addressee: n.addressee,
                state: &n.state,
                text: match lang {
                    Lang::Zh => &n.text,
                    Lang::En => &n.text_en,
                },
                created: n.created,
            },
            NoticeEntry::Unreadable => NoticeLine {
                text: words(lang).unreadable_notice,
                ..NoticeLine::default()
            },
        }
    }

    fn addressee(&self, b: &Bulletin, lang: Lang) -> String {
        self.addressee
            .map(|c| region_label(b, c, lang))
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Data flags.

/// Flags of one provincial unit, by kind.
#[derive(Debug, Clone, Copy, Default)]
struct FlagCounts {
    decrease: usize,
    conflict: usize,
    discrepancy: usize,
}

impl FlagCounts {
    fn total(self) -> usize {
        self.decrease + self.conflict + self.discrepancy
    }
}

/// A bulletin's flags summarised for people.
struct FlagSummary<'a> {
    /// How many flags there are.
    total: usize,
    /// Counts per provincial unit, in code order; units without flags left out.
    by_unit: BTreeMap<RegionCode, FlagCounts>,
    /// The largest decreases, largest first (ties in the bulletin's order).
    drops: Vec<&'a Flag>,
}

fn flag_region(f: &Flag) -> RegionCode {
    match f {
        Flag::Decrease { region, .. }
        | Flag::Conflict { region, .. }
        | Flag::Discrepancy { region, .. } => *region,
    }
}

fn drop_of(f: &Flag) -> u64 {
    match f {
        Flag::Decrease { before, after, .. } => before.1.saturating_sub(after.1),
        _ => 0,
    }
}

fn summarise(flags: &[Flag]) -> FlagSummary<'_> {
    let mut by_unit: BTreeMap<RegionCode, FlagCounts> = BTreeMap::new();
    for f in flags {
        let c = by_unit.entry(flag_region(f).province()).or_default();
        match f {
            Flag::Decrease { .. } => c.decrease += 1,
            Flag::Conflict { .. } => c.conflict += 1,
            Flag::Discrepancy { .. } => c.discrepancy += 1,
        }
    }
    let mut drops: Vec<&Flag> = flags
        .iter()
        .filter(|f| matches!(f, Flag::Decrease { .. }))
        .collect();
    drops.sort_by_key(|f| std::cmp::Reverse(drop_of(f)));
    drops.truncate(LARGEST_DROPS);
    FlagSummary {
        total: flags.len(),
        by_unit,
        drops,
    }
}

/// One drop's cells: region, school, kind, before, after, drop, source.
struct DropCells {
    code: RegionCode,
    region: String,
    school: Option<String>,
    kind: SpaceKind,
    before: (NaiveDate, u64),
    after: (NaiveDate, u64),
    source: String,
}

fn drop_cells(b: &Bulletin, lang: Lang, f: &Flag) -> Option<DropCells> {
    match f {
        Flag::Decrease {
            region,
            school,
            kind,
            before,
            after,
            source,
        } => Some(DropCells {
            code: *region,
            region: region_label(b, *region, lang),
            school: school.map(|s| s.to_string()),
            kind: *kind,
            before: *before,
            after: *after,
            source: source.to_string(),
        }),
        _ => None,
    }
}

/// Every flag of the bulletin as CSV, one row each after the header
/// ([`FLAGS_CSV_HEADER`], the dashboard's flag columns), region names in `lang`; starts
/// with a UTF-8 byte-order mark. The bulletin's HTML and Markdown show a summary and
/// point here for the complete list.
pub fn flags_csv(b: &Bulletin, lang: Lang) -> Result<String, CsvError> {
    let mut w = csv::Writer::from_writer(CSV_BOM.as_bytes().to_vec());
    w.write_record(FLAGS_CSV_HEADER)?;
    for f in &b.assessment.flags {
        let region = flag_region(f);
        let row = crate::views::flag_csv_row(f, region, region_label(b, region, lang));
        w.write_record(&row)?;
    }
    finish(w)
}

fn finish(w: csv::Writer<Vec<u8>>) -> Result<String, CsvError> {
    let bytes = w
        .into_inner()
        .map_err(|e| CsvError::Finish(e.error().to_string()))?;
    // Every field is a Rust string, so the bytes are UTF-8.
    String::from_utf8(bytes).map_err(|e| CsvError::Finish(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// CSV.

/// The province table as CSV (one row per provincial unit), written by the `csv` crate
/// (quoting as RFC 4180 says) after a UTF-8 byte-order mark ([`CSV_BOM`]).
pub fn csv(b: &Bulletin, lang: Lang) -> Result<String, CsvError> {
    let ids = milestone_ids(b);
    let mut w = csv::Writer::from_writer(CSV_BOM.as_bytes().to_vec());
    let mut header: Vec<String> = ["rank", "code", "name"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    header.extend(SpaceKind::ALL.iter().map(|k| k.as_str().to_string()));
    header.extend(
        [
            "new_spaces",
            "pace_ratio",
            "pace_class",
            "coverage_teachers",
            "coverage_students",
            "coverage_schools",
        ]
        .iter()
        .map(|x| x.to_string()),
    );
    header.extend(ids.iter().map(|id| format!("{id}_status")));
    header.extend(ids.iter().map(|id| format!("{id}_days_late")));
    w.write_record(&header)?;
    let four = |r: Option<f64>| r.map(|r| format!("{r:.4}")).unwrap_or_default();
    for p in &b.assessment.provinces {
        let f = &p.figures;
        let mut row = vec![p.rank.to_string(), p.code.to_string(), name_of(lang, p)];
        row.extend(
            SpaceKind::ALL
                .iter()
                .map(|k| f.spaces.get(*k).map(|v| v.to_string()).unwrap_or_default()),
        );
        row.push(f.new_spaces.to_string());
        row.push(four(p.pace.ratio));
        row.push(pace_class(p.pace.class).to_string());
        row.push(four(f.coverage.teachers));
        row.push(four(f.coverage.students));
        row.push(four(f.coverage.schools));
        row.extend(ids.iter().map(|id| {
            p.milestones
                .get(*id)
                .map(|c| c.status.as_str().to_string())
                .unwrap_or_default()
        }));
        row.extend(ids.iter().map(|id| {
            p.milestones
                .get(*id)
                .and_then(|c| c.days_late)
                .map(|d| d.to_string())
                .unwrap_or_default()
        }));
        w.write_record(&row)?;
    }
    finish(w)
}

// ---------------------------------------------------------------------------------------
// HTML.

const CSS: &str = r#"
body{font-family:"Noto Sans CJK SC","Source Han Sans SC","Microsoft YaHei",sans-serif;margin:2em;color:#222}
h1{font-size:1.5em;border-bottom:3px solid #b22;padding-bottom:.3em} h2{font-size:1.15em;margin-top:1.6em} h3{font-size:1em}
table{border-collapse:collapse;width:100%;font-size:.85em} th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
table.narrow{width:auto}
.bar{background:#eee;height:.8em;width:10em;position:relative} .bar span{display:block;height:100%;background:#2a7}
.bar span.behind{background:#e90} .bar span.far_behind{background:#c33}
.on_time{color:#272} .late{color:#c60} .missing{color:#c00;font-weight:bold} .due_soon{color:#a60}
.meta{color:#666;font-size:.8em;word-break:break-all} p.none{color:#555}
svg text{font-size:11px;fill:#333}
@media print{body{margin:0} h2{page-break-after:avoid} tr{page-break-inside:avoid}}
"#;

/// The page for a document that does not read as a bulletin.
fn unreadable_page(lang: Lang, error: &str) -> Markup {
    let w = words(lang);
    html! {
        (DOCTYPE)
        html lang=(w.html_lang) {
            head { meta charset="utf-8"; title { (w.unreadable) } style { (PreEscaped(CSS)) } }
            body {
                h1 { (w.unreadable) }
                p #unreadable { (wb::unreadable(lang, error)) }
            }
        }
    }
}

/// The bulletin as a printable HTML page with an inline chart.
pub fn html(b: &Bulletin, lang: Lang) -> String {
    let w = words(lang);
    let a = &b.assessment;
    html! {
        (DOCTYPE)
        html lang=(w.html_lang) {
            head {
                meta charset="utf-8";
                title { (title(b, lang)) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { (title(b, lang)) }
                p.meta {
                    (wb::meta(lang, &a.as_of_date.to_string(), b.checkpoint.size, &b.checkpoint.root))
                }
                @if let Some(w) = &b.witnessed {
                    p.meta.witness { (wb::witnessed(lang, w)) }
                }
                (national(b, lang))
                (provinces(b, lang))
                (lagging(b, lang))
                (quota_violations(b, lang))
                (plan_problems(b, lang))
                (silent_sources(b, lang))
                (extensions(b, lang))
                (flags_section(b, lang))
                (notice_log(b, lang))
                p.meta { (w.signed) }
                pre.meta { (b.checkpoint.note) }
            }
        }
    }
    .into_string()
}

/// A section: its heading, then its content, or the sentence saying it has none.
fn section(id: &str, heading: &str, empty: Option<&str>, body: Markup) -> Markup {
    html! {
        section id=(id) {
            h2 { (heading) }
            @match empty {
                Some(sentence) => p.none { (sentence) },
                None => (body),
            }
        }
    }
}

fn national(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let n = &b.assessment.nation;
    let pct = |r: Option<f64>| wb::percent(r);
    let body = html! {
        table {
            tr {
                th { (w.new_spaces) } td.num #nation-new { (count(lang, n.figures.new_spaces)) }
                th { (w.target) } td.num { (count_u(lang, n.target.new_spaces)) }
                th { (w.expected_by_now) } td.num { (opt_count(lang, n.pace.expected)) }
            }
            tr {
                th { (w.teacher_coverage) } td.num { (pct(n.figures.coverage.teachers)) }
                th { (w.student_coverage) } td.num { (pct(n.figures.coverage.students)) }
                th { (w.real_name_share) } td.num { (pct(n.real_name_share)) }
            }
        }
        (trajectory(b, lang))
        h3 { (w.history) }
        table.narrow #history {
            tr {
                th { (w.number) } th { (w.as_of) } th { (w.new_spaces) }
                th { (w.expected_by_now) } th { (w.of_expected) }
            }
            @for p in points(b) {
                tr data-number=(p.number) {
                    td.num {
                        (p.number)
                        @if p.number == b.number { (w.this_bulletin) }
                    }
                    td { (date(lang, &p.as_of_date.to_string())) }
                    td.num { (count(lang, p.new_spaces)) }
                    td.num { (opt_count(lang, p.expected)) }
                    td.num { (pct(ratio(p.new_spaces, p.expected))) }
                }
            }
        }
    };
    section("nation", w.national_summary, None, body)
}

/// A number for an SVG attribute: one decimal.
fn at(x: f64) -> String {
    format!("{x:.1}")
}

/// The national trajectory: every bulletin's new spaces (the earlier ones from the
/// history) against the straight planned line from the baseline to the target date (flat
/// at the target after it). With no history it draws the start and now.
fn trajectory(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let tr = &b.assessment.nation.trajectory;
    let pts = points(b);
    let (width, height) = (640.0, 240.0);
    let (left, right, top, bottom) = (64.0, 24.0, 20.0, 34.0);
    let start = tr.baseline;
    let end = pts
        .iter()
        .map(|p| p.as_of_date)
        .chain([tr.target_date, tr.today])
        .max()
        .unwrap_or(tr.target_date);
    let span = (end - start).num_days().max(1) as f64;
    let x = |d: NaiveDate| {
        left + ((d - start).num_days() as f64 / span).clamp(0.0, 1.0) * (width - left - right)
    };
    let target = tr.target as f64;
    let high = pts
        .iter()
        .map(|p| p.new_spaces as f64)
        .chain([target, tr.actual_today as f64, 1.0])
        .fold(0.0, f64::max)
        * 1.1;
    let y = |v: f64| height - bottom - (v.max(0.0) / high).min(1.0) * (height - top - bottom);
    let base_y = y(0.0);
    let planned = [
        (x(start), base_y),
        (x(tr.target_date), y(target)),
        (x(end), y(target)),
    ];
    let actual: Vec<(f64, f64)> = std::iter::once((x(start), base_y))
        .chain(
            pts.iter()
                .map(|p| (x(p.as_of_date), y(p.new_spaces as f64))),
        )
        .collect();
    let line = |ps: &[(f64, f64)]| {
        ps.iter()
            .map(|(a, b)| format!("{},{}", at(*a), at(*b)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let now = pts.last().copied().unwrap_or_else(|| HistoryPoint::of(b));
    let (now_x, now_y) = (x(now.as_of_date), y(now.new_spaces as f64));
    // The label of the latest point sits left of it when the point is near the right edge.
    let anchor = if now_x > width - right - 120.0 {
        "end"
    } else {
        "start"
    };
    let expected_now = now.expected.unwrap_or(tr.expected_today) as f64;
    html! {
        svg #trajectory width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) }
            role="img" aria-label=(w.chart_label) {
            title { (w.chart_label) }
            line x1=(at(left)) y1=(at(base_y)) x2=(at(width - right)) y2=(at(base_y)) stroke="#999" {}
            line x1=(at(left)) y1=(at(top)) x2=(at(left)) y2=(at(base_y)) stroke="#999" {}
            line x1=(at(left)) y1=(at(y(target))) x2=(at(width - right)) y2=(at(y(target)))
                stroke="#ccc" stroke-dasharray="2 3" {}
            text x=(at(left - 4.0)) y=(at(y(target) + 4.0)) text-anchor="end" { (count_u(lang, tr.target)) }
            text x=(at(left - 4.0)) y=(at(base_y + 4.0)) text-anchor="end" { "0" }
            polyline.planned points=(line(&planned)) fill="none" stroke="#2a7"
                stroke-width="1.5" stroke-dasharray="5 3" {}
            polyline.actual points=(line(&actual)) fill="none" stroke="#b22" stroke-width="2" {}
            circle.expected cx=(at(now_x)) cy=(at(y(expected_now))) r="3" fill="#2a7" {
                title { (w.expected_by_now) " " (count(lang, expected_now as i64)) }
            }
            @for p in &pts {
                circle.point cx=(at(x(p.as_of_date))) cy=(at(y(p.new_spaces as f64))) r="3.5" fill="#b22"
                    data-number=(p.number) data-date=(p.as_of_date) data-new=(p.new_spaces) {
                    title { (wb::chart_point(lang, p.number, &p.as_of_date.to_string(), p.new_spaces)) }
                }
            }
            text x=(at(now_x + if anchor == "end" { -8.0 } else { 8.0 })) y=(at(now_y - 8.0))
                text-anchor=(anchor) {
                (w.chart_actual) " " (count(lang, now.new_spaces))
            }
            text x=(at(left)) y=(at(height - 12.0)) { (date(lang, &start.to_string())) }
            text x=(at(x(tr.target_date))) y=(at(height - 12.0)) text-anchor="middle" {
                (date(lang, &tr.target_date.to_string()))
            }
            line x1=(at(left + 10.0)) y1=(at(top - 6.0)) x2=(at(left + 34.0)) y2=(at(top - 6.0))
                stroke="#b22" stroke-width="2" {}
            text x=(at(left + 38.0)) y=(at(top - 2.0)) { (w.chart_actual) }
            line x1=(at(left + 90.0)) y1=(at(top - 6.0)) x2=(at(left + 114.0)) y2=(at(top - 6.0))
                stroke="#2a7" stroke-width="1.5" stroke-dasharray="5 3" {}
            text x=(at(left + 118.0)) y=(at(top - 2.0)) { (w.chart_planned) " · " (w.target) " " (count_u(lang, tr.target)) }
        }
    }
}

fn provinces(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let ids = milestone_ids(b);
    let list = &b.assessment.provinces;
    let body = html! {
        table {
            tr {
                th { (w.rank) } th { (w.unit) } th { (w.new_spaces) } th { (w.pace) } th { (w.coverage_ts) }
                @for id in &ids { th { (milestone_title(b, lang, id)) } }
            }
            @for p in list {
                @let pct = wb::percent(p.pace.ratio);
                @let width = p.pace.ratio.map_or(0.0, |r| (r * 100.0).clamp(0.0, 100.0));
                tr data-code=(p.code) data-new=(p.figures.new_spaces)
                    data-pace=(p.pace.ratio.map_or(String::new(), |r| format!("{r:.6}"))) {
                    td.num { (p.rank) }
                    td { (name_of(lang, p)) }
                    td.num { (count(lang, p.figures.new_spaces)) }
                    td {
                        div.bar title=(pct) {
                            span class=(pace_class(p.pace.class)) style={ "width:" (at(width)) "%" } {}
                        }
                        (pct)
                    }
                    td {
                        (wb::percent(p.figures.coverage.teachers)) " / "
                        (wb::percent(p.figures.coverage.students))
                    }
                    @for id in &ids {
                        @match p.milestones.get(*id) {
                            Some(c) => td class=(c.status.as_str()) { (wb::cell(lang, c)) },
                            None => td { (w.unknown) },
                        }
                    }
                }
            }
        }
    };
    section(
        "provinces",
        w.ranked,
        list.is_empty().then_some(w.no_units),
        body,
    )
}

fn lagging(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let list = &b.assessment.lagging;
    let title = |id: &str| milestone_title(b, lang, id);
    let body = html! {
        ul {
            @for l in list {
                li data-code=(l.code) {
                    b { (unit_name(lang, l.code, &l.name, &l.name_en)) }
                    (wb::colon(lang))
                    (wb::reasons(lang, &l.reasons, &title))
                }
            }
        }
    };
    section(
        "lagging",
        w.lagging,
        list.is_empty().then_some(w.no_lagging),
        body,
    )
}

fn quota_violations(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let list = &b.assessment.quota_violations;
    let body = html! {
        ul {
            @for q in list {
                li data-code=(q.by) { (quota_text(b, lang, q)) }
            }
        }
    };
    section(
        "quota-violations",
        w.quota_violations,
        list.is_empty().then_some(w.no_quota_violations),
        body,
    )
}

fn quota_text(b: &Bulletin, lang: Lang, q: &crate::assessment::QuotaViolationItem) -> String {
    let by = region_label(b, q.by, lang);
    wb::quota_violation(
        lang,
        wb::QuotaFacts {
            by: &by,
            level: q.level,
            nominee_type: q.nominee_type,
            limit: q.limit,
            counted: &q.counted,
            nominee: &q.nominee,
        },
    )
}

fn plan_name(b: &Bulletin, lang: Lang, p: &crate::assessment::PlanItem) -> String {
    match (b.assessment.unit(p.code), &p.name) {
        (Some(u), _) => name_of(lang, u),
        (None, Some(n)) => n.clone(),
        (None, None) => region_label(b, p.code, lang),
    }
}

fn plan_problems(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let list = &b.assessment.plan_problems;
    let body = html! {
        ul {
            @for p in list {
                li data-code=(p.code) { (wb::plan_item(lang, &plan_name(b, lang, p), &p.problems)) }
            }
        }
    };
    section(
        "plan-problems",
        w.plan_problems,
        list.is_empty().then_some(w.no_plan_problems),
        body,
    )
}

fn silent_sources(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let list = &b.assessment.silent_sources;
    let body = html! {
        ul {
            @for s in list {
                li data-source=(s.source) {
                    (wb::silent_source(lang, s.source.as_str(), &region_label(b, s.scope, lang), s.days_silent))
                }
            }
        }
    };
    section(
        "silent-sources",
        w.silent_sources,
        list.is_empty().then_some(w.no_silent_sources),
        body,
    )
}

fn extension_text(b: &Bulletin, lang: Lang, e: &crate::views::Extension) -> String {
    wb::extension(
        lang,
        &region_label(b, e.region, lang),
        &milestone_title(b, lang, &e.milestone),
        &date(lang, &e.until.to_string()),
        &e.reason,
    )
}

fn extensions(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let list = &b.assessment.extensions;
    let body = html! {
        ul {
            @for e in list {
                li data-code=(e.region) { (extension_text(b, lang, e)) }
            }
        }
    };
    section(
        "extensions",
        w.extensions,
        list.is_empty().then_some(w.no_extensions),
        body,
    )
}

fn flags_section(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let s = summarise(&b.assessment.flags);
    // Exact counts (not 万): these are records to look up, not a figure to grasp.
    let n = |x: usize| group(x as i64);
    let body = html! {
        p #flags-summary { (wb::flags_summary(lang, s.total)) }
        table.narrow #flag-counts {
            tr {
                th { (w.code) } th { (w.unit) }
                th { (w.flag_decrease) } th { (w.flag_conflict) } th { (w.flag_discrepancy) }
                th { (w.total) }
            }
            @for (code, c) in &s.by_unit {
                tr data-flags=(code) {
                    td { (code) }
                    td { (region_label(b, *code, lang)) }
                    td.num { (n(c.decrease)) }
                    td.num { (n(c.conflict)) }
                    td.num { (n(c.discrepancy)) }
                    td.num { (n(c.total())) }
                }
            }
            @let all = s.by_unit.values().fold(FlagCounts::default(), |a, c| FlagCounts {
                decrease: a.decrease + c.decrease,
                conflict: a.conflict + c.conflict,
                discrepancy: a.discrepancy + c.discrepancy,
            });
            tr.total {
                th colspan="2" { (w.total) }
                td.num { (n(all.decrease)) }
                td.num { (n(all.conflict)) }
                td.num { (n(all.discrepancy)) }
                td.num { (n(all.total())) }
            }
        }
        h3 { (wb::largest_drops(lang, s.drops.len())) }
        @if s.drops.is_empty() {
            p.none #no-drops { (w.no_drops) }
        } @else {
            table #largest-drops {
                tr {
                    th { (w.region) } th { (w.school) } th { (w.kind) }
                    th { (w.before) } th { (w.after) } th { (w.drop) } th { (w.source) }
                }
                @for (i, d) in s.drops.iter().filter_map(|f| drop_cells(b, lang, f)).enumerate() {
                    tr data-drop=(i + 1) {
                        td { (d.region) " " span.meta { (d.code) } }
                        td { (d.school.as_deref().unwrap_or(w.unknown)) }
                        td { (wb::space_kind(lang, d.kind)) }
                        td.num { (wb::figure_on(lang, d.before.1, &d.before.0.to_string())) }
                        td.num { (wb::figure_on(lang, d.after.1, &d.after.0.to_string())) }
                        td.num { (count_u(lang, d.before.1.saturating_sub(d.after.1))) }
                        td { (d.source) }
                    }
                }
            }
        }
        p #flags-elsewhere { (wb::flags_elsewhere(lang, b.number, s.total)) }
    };
    section("flags", w.flags, (s.total == 0).then_some(w.no_flags), body)
}

fn notice_log(b: &Bulletin, lang: Lang) -> Markup {
    let w = words(lang);
    let body = html! {
        table #notice-log {
            tr {
                th { (w.notice_id) } th { (w.rule) } th { (w.addressee) } th { (w.state) } th { (w.text) }
            }
            @for entry in &b.notices {
                @let n = NoticeLine::of(entry, lang);
                tr data-notice=(n.id) {
                    td.num { (n.id) }
                    td { (wb::notice_rule(lang, n.rule)) }
                    td { (n.addressee(b, lang)) }
                    td { (wb::notice_state(lang, n.state)) }
                    td {
                        (n.text)
                        @if let Some(c) = n.created {
                            " " span.meta { (date(lang, &c.to_rfc3339())) }
                        }
                    }
                }
            }
        }
    };
    section(
        "notices",
        w.notices,
        b.notices.is_empty().then_some(w.no_notices),
        body,
    )
}

// ---------------------------------------------------------------------------------------
// Markdown.

/// Text for a Markdown table cell or list item: a `|` or a line break would end it.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// The bulletin as Markdown: the same sections as the HTML, without the chart.
pub fn markdown(b: &Bulletin, lang: Lang) -> String {
    let w = words(lang);
    let a = &b.assessment;
    let n = &a.nation;
    let mut s = String::new();
    let _ = writeln!(s, "# {}\n", md(title(b, lang)));
    let _ = writeln!(
        s,
        "{}\n",
        md(&wb::meta(
            lang,
            &a.as_of_date.to_string(),
            b.checkpoint.size,
            &b.checkpoint.root
        ))
    );
    if let Some(w) = &b.witnessed {
        let _ = writeln!(s, "{}\n", md(&wb::witnessed(lang, w)));
    }
    let _ = writeln!(s, "## {}\n", w.national_summary);
    let c = wb::colon(lang);
    let _ = writeln!(
        s,
        "- {}{c}{} / {}",
        w.new_spaces,
        count(lang, n.figures.new_spaces),
        wb::parenthesised(
            lang,
            &count_u(lang, n.target.new_spaces),
            &wb::percent(ratio(n.figures.new_spaces, Some(n.target.new_spaces)))
        )
    );
    let _ = writeln!(
        s,
        "- {}{c}{}",
        w.expected_by_now,
        opt_count(lang, n.pace.expected)
    );
    let _ = writeln!(
        s,
        "- {}{c}{} · {}{c}{} · {}{c}{}",
        w.teacher_coverage,
        wb::percent(n.figures.coverage.teachers),
        w.student_coverage,
        wb::percent(n.figures.coverage.students),
        w.school_coverage,
        wb::percent(n.figures.coverage.schools)
    );
    let _ = writeln!(
        s,
        "- {}{c}{}\n",
        w.real_name_share,
        wb::percent(n.real_name_share)
    );
    let _ = writeln!(s, "### {}\n", w.history);
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} |\n|---|---|---|---|---|",
        w.number, w.as_of, w.new_spaces, w.expected_by_now, w.of_expected
    );
    for p in points(b) {
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} |",
            p.number,
            if p.number == b.number {
                w.this_bulletin
            } else {
                ""
            },
            date(lang, &p.as_of_date.to_string()),
            count(lang, p.new_spaces),
            opt_count(lang, p.expected),
            wb::percent(ratio(p.new_spaces, p.expected))
        );
    }

    let ids = milestone_ids(b);
    let _ = writeln!(s, "\n## {}\n", w.ranked);
    if a.provinces.is_empty() {
        let _ = writeln!(s, "{}", w.no_units);
    } else {
        let mut header = vec![
            w.rank.to_string(),
            w.unit.to_string(),
            w.spaces.to_string(),
            w.new_spaces.to_string(),
            w.pace.to_string(),
        ];
        header.extend(ids.iter().map(|id| md(&milestone_title(b, lang, id))));
        let _ = writeln!(s, "| {} |", header.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
        for p in &a.provinces {
            let mut row = vec![
                p.rank.to_string(),
                md(&name_of(lang, p)),
                count_u(lang, p.figures.spaces.total()),
                count(lang, p.figures.new_spaces),
                wb::percent(p.pace.ratio),
            ];
            row.extend(ids.iter().map(|id| {
                p.milestones
                    .get(*id)
                    .map_or_else(|| w.unknown.to_string(), |c| wb::cell(lang, c))
            }));
            let _ = writeln!(s, "| {} |", row.join(" | "));
        }
    }

    let list = |s: &mut String, heading: &str, empty: &str, items: Vec<String>| {
        let _ = writeln!(s, "\n## {heading}\n");
        if items.is_empty() {
            let _ = writeln!(s, "{empty}");
        }
        for i in items {
            let _ = writeln!(s, "- {}", md(&i));
        }
    };
    let title_of = |id: &str| milestone_title(b, lang, id);
    list(
        &mut s,
        w.lagging,
        w.no_lagging,
        a.lagging
            .iter()
            .map(|l| {
                format!(
                    "**{}**{c}{}",
                    wb::parenthesised(
                        lang,
                        &unit_name(lang, l.code, &l.name, &l.name_en),
                        &l.code.to_string()
                    ),
                    wb::reasons(lang, &l.reasons, &title_of)
                )
            })
            .collect(),
    );
    list(
        &mut s,
        w.quota_violations,
        w.no_quota_violations,
        a.quota_violations
            .iter()
            .map(|q| quota_text(b, lang, q))
            .collect(),
    );
    list(
        &mut s,
        w.plan_problems,
        w.no_plan_problems,
        a.plan_problems
            .iter()
            .map(|p| wb::plan_item(lang, &plan_name(b, lang, p), &p.problems))
            .collect(),
    );
    list(
        &mut s,
        w.silent_sources,
        w.no_silent_sources,
        a.silent_sources
            .iter()
            .map(|v| {
                wb::silent_source(
                    lang,
                    v.source.as_str(),
                    &region_label(b, v.scope, lang),
                    v.days_silent,
                )
            })
            .collect(),
    );
    list(
        &mut s,
        w.extensions,
        w.no_extensions,
        a.extensions
            .iter()
            .map(|e| extension_text(b, lang, e))
            .collect(),
    );

    let f = summarise(&a.flags);
    let _ = writeln!(s, "\n## {}\n", w.flags);
    if f.total == 0 {
        let _ = writeln!(s, "{}", w.no_flags);
    } else {
        let _ = writeln!(s, "{}\n", wb::flags_summary(lang, f.total));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |\n|---|---|---|---|---|---|",
            w.code, w.unit, w.flag_decrease, w.flag_conflict, w.flag_discrepancy, w.total
        );
        let k = |x: usize| group(x as i64);
        for (code, c) in &f.by_unit {
            let _ = writeln!(
                s,
                "| {code} | {} | {} | {} | {} | {} |",
                md(&region_label(b, *code, lang)),
                k(c.decrease),
                k(c.conflict),
                k(c.discrepancy),
                k(c.total())
            );
        }
        let _ = writeln!(s, "\n### {}\n", wb::largest_drops(lang, f.drops.len()));
        if f.drops.is_empty() {
            let _ = writeln!(s, "{}", w.no_drops);
        } else {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |\n|---|---|---|---|---|---|---|",
                w.region, w.school, w.kind, w.before, w.after, w.drop, w.source
            );
            for d in f.drops.iter().filter_map(|x| drop_cells(b, lang, x)) {
                let _ = writeln!(
                    s,
                    "| {} {} | {} | {} | {} | {} | {} | {} |",
                    md(&d.region),
                    d.code,
                    d.school.as_deref().unwrap_or(w.unknown),
                    wb::space_kind(lang, d.kind),
                    wb::figure_on(lang, d.before.1, &d.before.0.to_string()),
                    wb::figure_on(lang, d.after.1, &d.after.0.to_string()),
                    count_u(lang, d.before.1.saturating_sub(d.after.1)),
                    d.source
                );
            }
        }
        let _ = writeln!(s, "\n{}", wb::flags_elsewhere(lang, b.number, f.total));
    }

    list(
        &mut s,
        w.notices,
        w.no_notices,
        b.notices
            .iter()
            .map(|entry| {
                let n = NoticeLine::of(entry, lang);
                format!(
                    "#{} {} → {} [{}] {}",
                    n.id,
                    wb::notice_rule(lang, n.rule),
                    n.addressee(b, lang),
                    wb::notice_state(lang, n.state),
                    n.text
                )
            })
            .collect(),
    );
    let _ = writeln!(s, "\n{}", w.signed);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second() -> Bulletin {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/bulletin-2018-2.json")).expect("json");
        Bulletin::from_document(&doc).expect("bulletin")
    }

    #[test]
    fn numbers_and_dates_read_as_each_language_expects() {
        assert_eq!(group(12_345_678), "12,345,678");
        assert_eq!(group(-1_000), "-1,000");
        assert_eq!(count(Lang::Zh, 12_345_678), "1234.57万");
        assert_eq!(count(Lang::Zh, 9_999), "9,999");
        assert_eq!(count(Lang::En, 12_345_678), "12,345,678");
        assert_eq!(date(Lang::Zh, "2018-11-06"), "2018年11月6日");
        assert_eq!(date(Lang::En, "2018-11-06T01:00:00Z"), "2018-11-06");
    }

    #[test]
    fn csv_opens_with_a_bom_and_hostile_names_round_trip() {
        let hostile = "广东, \"南\"\n部";
        let mut b = second();
        let gd = b
            .assessment
            .provinces
            .iter_mut()
            .find(|p| p.code.to_string() == "440000")
            .expect("Guangdong");
        gd.name = Some(hostile.into());
        gd.name_en = Some("Guang\"dong,\r\nX".into());
        for (lang, want) in [(Lang::Zh, hostile), (Lang::En, "Guang\"dong,\r\nX")] {
            let out = csv(&b, lang).expect("csv");
            assert!(out.as_bytes().starts_with(&[0xEF, 0xBB, 0xBF]), "{out:?}");
            let body = out.strip_prefix(CSV_BOM).expect("BOM");
            let mut r = ::csv::Reader::from_reader(body.as_bytes());
            let header = r.headers().expect("header").clone();
            assert_eq!(&header[2], "name");
            let rows: Vec<::csv::StringRecord> = r.records().map(|x| x.expect("row")).collect();
            assert_eq!(rows.len(), 32);
            let row = rows
                .iter()
                .find(|r| &r[1] == "440000")
                .expect("Guangdong row");
            assert_eq!(row.len(), header.len());
            assert_eq!(&row[2], want);
            let at = |h: &str| header.iter().position(|x| x == h).expect(h);
            assert_eq!(&row[at("implementation_plan_status")], "on_time");
        }
    }

    #[test]
    fn a_document_that_is_not_a_bulletin_is_said_to_be_so() {
        let doc = serde_json::json!({ "number": "seven", "provinces": 3 });
        let error = || Bulletin::from_document(&doc).expect_err("not a bulletin");
        for lang in [Lang::Zh, Lang::En] {
            let page = Rendering::Html.unreadable(lang, error()).expect("a page");
            assert!(page.contains(words(lang).unreadable), "{page}");
            assert!(page.contains("id=\"unreadable\""), "{page}");
            let text = Rendering::Markdown
                .unreadable(lang, error())
                .expect("Markdown");
            assert!(text.starts_with(&format!("# {}", words(lang).unreadable)));
            for csv in [Rendering::Csv, Rendering::FlagsCsv] {
                assert!(matches!(
                    csv.unreadable(lang, error()),
                    Err(CsvError::Unreadable(_))
                ));
            }
        }
    }

    /// The names and extensions the CLI and the API accept, and what each is served as.
    #[test]
    fn formats_have_one_name_extension_and_content_type_each() {
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.name()), Some(f));
        }
        let ext = |e: &str| Format::from_extension(e).map(Format::content_type);
        assert_eq!(ext("json"), Some("application/json"));
        assert_eq!(ext("html"), Some("text/html; charset=utf-8"));
        assert_eq!(ext("md"), Some("text/markdown; charset=utf-8"));
        assert_eq!(ext("csv"), Some("text/csv; charset=utf-8"));
        // The flags CSV has a path of its own, not an extension.
        assert_eq!(
            Format::from_name("flags-csv").map(Format::content_type),
            Some("text/csv; charset=utf-8")
        );
        for unknown in ["flags-csv", "xml", "markdown", "HTML", ""] {
            assert_eq!(Format::from_extension(unknown), None, "{unknown}");
        }
        assert_eq!(Format::from_name("pdf"), None);
    }

    /// A notice of the log this hub cannot read is shown as such; the rest still reads.
    #[test]
    fn an_unreadable_notice_is_shown_as_such() {
        let mut doc: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/bulletin-2018-2.json")).expect("json");
        doc["notices"] = serde_json::json!([
            { "id": 1, "rule": "behind_pace", "addressee": "440000", "state": "pending",
              "text": "广东落后", "text_en": "Guangdong is behind" },
            { "id": "two", "text": "x" },
            "not a notice",
        ]);
        let b = Bulletin::from_document(&doc).expect("the bulletin still reads");
        assert!(matches!(b.notices[0], NoticeEntry::Notice(_)));
        assert_eq!(
            b.notices[1..],
            [NoticeEntry::Unreadable, NoticeEntry::Unreadable]
        );
        for lang in [Lang::Zh, Lang::En] {
            let unreadable = words(lang).unreadable_notice;
            let page = html(&b, lang);
            assert_eq!(page.matches(unreadable).count(), 2, "{page}");
            assert!(page.contains(t(lang, "广东落后", "Guangdong is behind")));
            let text = markdown(&b, lang);
            assert_eq!(text.matches(unreadable).count(), 2, "{text}");
        }
    }

    #[test]
    fn flags_are_counted_by_unit_and_the_largest_drops_listed() {
        let d = NaiveDate::from_ymd_opt(2018, 11, 1).expect("date");
        let decrease = |region: &str, before: u64, after: u64| Flag::Decrease {
            region: region.parse().expect("code"),
            school: None,
            kind: SpaceKind::Teacher,
            before: (d, before),
            after: (d, after),
            source: spacesync_shared::SourceId::parse("gd-a").expect("id"),
        };
        let mut flags: Vec<Flag> = (0..30).map(|i| decrease("440106", 100, 100 - i)).collect();
        flags.push(decrease("110105", 500, 1));
        flags.push(Flag::Discrepancy {
            region: "440000".parse().expect("code"),
            kind: SpaceKind::Student,
            reported: 10,
            sum_of_parts: 20,
        });
        let s = summarise(&flags);
        assert_eq!(s.total, 32);
        let counts: Vec<(String, usize, usize)> = s
            .by_unit
            .iter()
            .map(|(c, n)| (c.to_string(), n.decrease, n.discrepancy))
            .collect();
        assert_eq!(counts, [("110000".into(), 1, 0), ("440000".into(), 30, 1)]);
        assert_eq!(s.drops.len(), LARGEST_DROPS);
        assert_eq!(drop_of(s.drops[0]), 499);
        assert_eq!(drop_of(s.drops[1]), 29);
        assert_eq!(drop_of(s.drops[LARGEST_DROPS - 1]), 11);
    }

    #[test]
    fn every_empty_section_says_so_and_flags_point_to_their_csv() {
        let mut b = second();
        b.assessment.lagging.clear();
        b.assessment.quota_violations.clear();
        b.assessment.plan_problems.clear();
        b.assessment.silent_sources.clear();
        b.assessment.extensions.clear();
        b.assessment.flags.clear();
        b.notices.clear();
        b.history.clear();
        for lang in [Lang::Zh, Lang::En] {
            let w = words(lang);
            let page = html(&b, lang);
            let text = markdown(&b, lang);
            for sentence in [
                w.no_lagging,
                w.no_quota_violations,
                w.no_plan_problems,
                w.no_silent_sources,
                w.no_extensions,
                w.no_flags,
                w.no_notices,
            ] {
                assert!(page.contains(sentence), "{lang:?} html: {sentence}");
                assert!(text.contains(sentence), "{lang:?} md: {sentence}");
            }
            // No history: the chart still has the start and now.
            assert_eq!(page.matches("<circle class=\"point\"").count(), 1);
            assert!(page.contains("<polyline class=\"actual\""));
        }
    }
}
