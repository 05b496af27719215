//! Data flags (decreases, same-day conflicts, totals that differ from their parts) for
//! people: counted by division and kind, the largest drops listed, and every flag in a
//! CSV file. On the demo data there are over ten thousand flags; printing each one made
//! the overview 1.9 MB, which nobody reads.
//!
//! - [`view`] summarises the flags of a region (or the nation) into a [`FlagsView`];
//! - [`section`] draws it (a sentence when there is nothing to show);
//! - [`csv`] writes every flag, one row each, after a UTF-8 byte-order mark so that Excel
//!   reads the Chinese names; the dashboard serves it as `/flags.csv` and
//!   `/r/{code}/flags.csv`.

use std::collections::BTreeMap;

use maud::{Markup, html};
use spacesync_shared::RegionCode;
use spacesync_shared::record::SpaceKind;
use spacesync_shared::region::Level;

use super::layout::{cell, link, region_label};
use crate::views::Flag;
use crate::wording::dashboard::{self as wd, words};
use crate::wording::{Lang, count, date};

/// How many of the largest drops a page lists.
pub const LARGEST_DROPS: usize = 20;

/// The UTF-8 byte-order mark the CSV starts with.
pub const CSV_BOM: &str = "\u{feff}";

/// The flags of one division, by kind.
#[derive(Debug, Clone, Default)]
pub struct FlagCounts {
    /// The division's code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// Decreases.
    pub decrease: usize,
    /// Same-day reports from several sources.
    pub conflict: usize,
    /// Totals that differ from the sum of their parts.
    pub discrepancy: usize,
}

impl FlagCounts {
    fn total(&self) -> usize {
        self.decrease + self.conflict + self.discrepancy
    }
}

/// One decrease, as listed among the largest drops.
#[derive(Debug, Clone)]
pub struct DropRow {
    /// The region's code.
    pub code: String,
    /// The region's name.
    pub region: String,
    /// The school, if the figures are a school's.
    pub school: Option<String>,
    /// The space kind.
    pub kind: SpaceKind,
    /// The earlier date and count.
    pub before: (String, u64),
    /// The later date and count.
    pub after: (String, u64),
    /// The source of the later figures.
    pub source: String,
}

/// The flags of a region (or the nation), summarised for a page.
#[derive(Debug, Clone)]
pub struct FlagsView {
    /// How many flags there are.
    pub total: usize,
    /// What the counts are grouped by: provincial units, cities or counties.
    pub by: Level,
    /// Counts per division, in code order; divisions without flags are left out.
    pub groups: Vec<FlagCounts>,
    /// The largest drops, largest first (at most [`LARGEST_DROPS`]).
    pub drops: Vec<DropRow>,
    /// Where the CSV of every flag is.
    pub csv_href: String,
}

/// The region a flag is about.
pub fn flag_region(f: &Flag) -> RegionCode {
    match f {
        Flag::Decrease { region, .. }
        | Flag::Conflict { region, .. }
        | Flag::Discrepancy { region, .. } => *region,
    }
}

/// The flags about regions inside `within` (every flag when `None`).
pub fn within(flags: &[Flag], within: Option<RegionCode>) -> Vec<&Flag> {
    flags
        .iter()
        .filter(|f| within.is_none_or(|w| flag_region(f).is_within(w)))
        .collect()
}

/// The division directly below `within` that holds `r` (the provincial unit for the
/// nation; `within` itself when `r` is `within`).
fn group_of(r: RegionCode, within: Option<RegionCode>) -> RegionCode {
    let Some(w) = within else {
        return r.province();
    };
    let mut g = r;
    loop {
        match g.parent() {
            Some(p) if p == w => return g,
            Some(p) => g = p,
            None => return w,
        }
    }
}

fn drop_of(f: &Flag) -> u64 {
    match f {
        Flag::Decrease { before, after, .. } => before.1.saturating_sub(after.1),
        _ => 0,
    }
}

/// Summarises `flags` (already limited to `within`) for a page.
pub fn view(
    lang: Lang,
    flags: &[&Flag],
    within: Option<RegionCode>,
    csv_href: String,
) -> FlagsView {
    let by = match within.map(RegionCode::level) {
        None => Level::Province,
        Some(Level::Province) => Level::City,
        Some(_) => Level::County,
    };
    let mut groups: BTreeMap<RegionCode, FlagCounts> = BTreeMap::new();
    for f in flags {
        let g = group_of(flag_region(f), within);
        let c = groups.entry(g).or_insert_with(|| FlagCounts {
            code: g.to_string(),
            name: region_label(g, lang),
            ..FlagCounts::default()
        });
        match f {
            Flag::Decrease { .. } => c.decrease += 1,
            Flag::Conflict { .. } => c.conflict += 1,
            Flag::Discrepancy { .. } => c.discrepancy += 1,
        }
    }
    let mut decreases: Vec<&Flag> = flags
        .iter()
        .copied()
        .filter(|f| matches!(f, Flag::Decrease { .. }))
        .collect();
    // Largest first; ties keep the roll-up's order, so the page is stable.
    decreases.sort_by_key(|f| std::cmp::Reverse(drop_of(f)));
    let drops = decreases
        .into_iter()
        .take(LARGEST_DROPS)
        .filter_map(|f| match f {
            Flag::Decrease {
                region,
                school,
                kind,
                before,
                after,
                source,
            } => Some(DropRow {
                code: region.to_string(),
                region: region_label(*region, lang),
                school: school.map(|s| s.to_string()),
                kind: *kind,
                before: (before.0.to_string(), before.1),
                after: (after.0.to_string(), after.1),
                source: source.to_string(),
            }),
            _ => None,
        })
        .collect();
    FlagsView {
        total: flags.len(),
        by,
        groups: groups.into_values().collect(),
        drops,
        csv_href,
    }
}

/// The flags section of a page: the counts, the largest drops, the link to the CSV; or a
/// sentence saying there are none.
pub fn section(lang: Lang, v: &FlagsView) -> Markup {
    let w = words(lang);
    let n = |x: usize| count(lang, x as i64);
    html! {
        h2 { (w.flags) }
        @if v.total == 0 {
            p #no-flags { (w.no_flags) }
        } @else {
            p #flags-summary {
                (wd::flags_summary(lang, &n(v.total), v.by)) " "
                a #flags-csv href=(link(&v.csv_href, lang)) { (w.flags_csv) }
            }
            table #flag-counts {
                tr {
                    th { (w.code) } th { (wd::level(lang, v.by)) }
                    th { (w.flag_decrease) } th { (w.flag_conflict) } th { (w.flag_discrepancy) }
                    th { (w.total) }
                }
                @for g in &v.groups {
                    tr data-row={ "flags:" (g.code) } {
                        td { (g.code) }
                        td { (g.name) }
                        (cell("decrease", &n(g.decrease)))
                        (cell("conflict", &n(g.conflict)))
                        (cell("discrepancy", &n(g.discrepancy)))
                        (cell("total", &n(g.total())))
                    }
                }
            }
            h3 { (wd::largest_drops(lang, v.drops.len())) }
            @if v.drops.is_empty() {
                p #no-drops { (w.no_drops) }
            } @else {
                table #largest-drops {
                    tr {
                        th { (w.region) } th { (w.school) } th { (w.kind) }
                        th { (w.before) } th { (w.after) } th { (w.drop) } th { (w.source) }
                    }
                    @for (i, d) in v.drops.iter().enumerate() {
                        tr data-row={ "drop:" (i + 1) } {
                            td { (d.region) " " span.meta { (d.code) } }
                            td { (d.school.as_deref().unwrap_or("—")) }
                            td { (wd::kind(lang, d.kind)) }
                            td.num { (count(lang, d.before.1 as i64)) " " span.meta { (date(lang, &d.before.0)) } }
                            td.num { (count(lang, d.after.1 as i64)) " " span.meta { (date(lang, &d.after.0)) } }
                            (cell("drop", &count(lang, d.before.1.saturating_sub(d.after.1) as i64)))
                            td { (d.source) }
                        }
                    }
                }
            }
        }
    }
}

/// The CSV header: machine-readable column names, as in the bulletin CSV.
pub const CSV_HEADER: [&str; 14] = crate::views::FLAG_CSV_HEADER;

/// Every flag as CSV, one row each after the header, region names in `lang`; starts with
/// a UTF-8 byte-order mark.
pub fn csv(lang: Lang, flags: &[&Flag]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(CSV_BOM.as_bytes().to_vec());
    w.write_record(CSV_HEADER)?;
    for f in flags {
        let region = flag_region(f);
        let row = crate::views::flag_csv_row(f, region, region_label(region, lang));
        w.write_record(&row)?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use spacesync_shared::SourceId;

    fn code(s: &str) -> RegionCode {
        RegionCode::parse(s).unwrap()
    }

    fn decrease(region: &str, before: u64, after: u64) -> Flag {
        let d = NaiveDate::from_ymd_opt(2018, 11, 1).unwrap();
        Flag::Decrease {
            region: code(region),
            school: None,
            kind: SpaceKind::Teacher,
            before: (d, before),
            after: (d.succ_opt().unwrap(), after),
            source: SourceId::parse("gd-a").unwrap(),
        }
    }

    #[test]
    fn flags_are_grouped_by_the_division_below() {
        let flags = vec![
            decrease("440106", 100, 90),
            decrease("440305", 100, 10),
            decrease("440000", 5, 4),
            decrease("110105", 100, 99),
        ];
        let all = within(&flags, None);
        let v = view(Lang::Zh, &all, None, "/flags.csv".into());
        assert_eq!(v.by, Level::Province);
        let g: Vec<(&str, usize)> = v
            .groups
            .iter()
            .map(|g| (g.code.as_str(), g.decrease))
            .collect();
        assert_eq!(g, [("110000", 1), ("440000", 3)]);
        assert_eq!(v.drops[0].code, "440305");
        assert_eq!(v.drops.len(), 4);

        let gd = within(&flags, Some(code("440000")));
        let v = view(Lang::Zh, &gd, Some(code("440000")), String::new());
        assert_eq!(v.by, Level::City);
        let g: Vec<&str> = v.groups.iter().map(|g| g.code.as_str()).collect();
        assert_eq!(g, ["440000", "440100", "440300"]);
    }

    #[test]
    fn only_the_largest_drops_are_listed() {
        let flags: Vec<Flag> = (0..100)
            .map(|i| decrease("440106", 1000, 1000 - i))
            .collect();
        let all = within(&flags, None);
        let v = view(Lang::En, &all, None, String::new());
        assert_eq!(v.total, 100);
        assert_eq!(v.drops.len(), LARGEST_DROPS);
        assert_eq!(v.drops[0].after.1, 901);
        let html = section(Lang::En, &v).into_string();
        assert_eq!(html.matches("data-row=\"drop:").count(), LARGEST_DROPS);
    }

    #[test]
    fn no_flags_is_said_in_words() {
        let v = view(Lang::Zh, &[], None, String::new());
        let html = section(Lang::Zh, &v).into_string();
        assert!(html.contains("无数据标记"), "{html}");
        assert!(!html.contains("<table"), "{html}");
    }

    #[test]
    fn csv_has_a_bom_a_header_and_a_row_per_flag() {
        let flags = vec![decrease("440106", 100, 90), decrease("110105", 7, 3)];
        let all = within(&flags, None);
        let bytes = csv(Lang::Zh, &all).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let body = text.strip_prefix(CSV_BOM).expect("BOM");
        let mut r = csv::Reader::from_reader(body.as_bytes());
        assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>(), CSV_HEADER);
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[1][1], "110105");
        assert_eq!(&rows[1][9], "4");
    }
}
