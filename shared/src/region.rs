//! Administrative divisions (GB/T 2260 codes), school codes, the 32 provincial units,
//! and the one scope check every other module uses.
//!
//! A region code is six digits: `PP0000` is a province, `PPCC00` a prefecture-level
//! city, `PPCCDD` a county or district. The level and the parents are derived from
//! the code alone, so nothing here needs a lookup table to answer "is X inside Y".
//! The bundled directory (`data/regions.csv`, NBS 2023 vintage) supplies names and
//! lets callers warn about codes it does not list.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a region or school code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// A region code must be exactly six ASCII digits.
    #[error("must be a 6-digit GB/T 2260 code, got {0:?}")]
    RegionFormat(String),
    /// The first two digits do not name one of the 32 provincial units.
    #[error(
        "{0:?} is not inside any of the 32 provincial units (its first two digits are unknown)"
    )]
    UnknownProvince(String),
    /// A county part without a city part (`PP00DD`) does not exist in GB/T 2260.
    #[error("{0:?} has a county part but no city part")]
    Hierarchy(String),
    /// A school code must be exactly ten ASCII digits.
    #[error("must be a 10-digit school identification code, got {0:?}")]
    SchoolFormat(String),
}

/// Administrative level of a region, derived from its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// `PP0000`: province, autonomous region, municipality, or the Corps.
    Province,
    /// `PPCC00`: prefecture-level city (or the city row of a municipality).
    City,
    /// `PPCCDD`: county or district.
    County,
}

impl Level {
    /// The word used in record fields (`county`, `city`, `province`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Province => "province",
            Level::City => "city",
            Level::County => "county",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "province" => Ok(Level::Province),
            "city" => Ok(Level::City),
            "county" => Ok(Level::County),
            _ => Err(()),
        }
    }
}

/// A validated six-digit region code. Stored as a number so it is `Copy` and orders
/// the way the codes read.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionCode(u32);

impl RegionCode {
    /// Parses and checks a code: six digits, a known provincial unit, no county without city.
    pub fn parse(s: &str) -> Result<Self, CodeError> {
        if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeError::RegionFormat(s.to_string()));
        }
        let n: u32 = s
            .parse()
            .map_err(|_| CodeError::RegionFormat(s.to_string()))?;
        RegionCode::from_u32(n)
    }

    /// The code `n` (e.g. `440106`), checked as [`RegionCode::parse`] checks its digits:
    /// what stored views decode, without writing the number out first.
    pub fn from_u32(n: u32) -> Result<Self, CodeError> {
        if n > 999_999 {
            return Err(CodeError::RegionFormat(n.to_string()));
        }
        let code = RegionCode(n);
        if unit(code.province()).is_none() {
            return Err(CodeError::UnknownProvince(code.to_string()));
        }
        if n % 10_000 / 100 == 0 && !n.is_multiple_of(100) {
            return Err(CodeError::Hierarchy(code.to_string()));
        }
        Ok(code)
    }

    /// The code as a number (e.g. `440106`).
    pub fn as_u32(self) -> u32 {
        self.0
    }

    /// Province, city or county, from the code's trailing zeros.
    pub fn level(self) -> Level {
        if self.0.is_multiple_of(10_000) {
            Level::Province
        } else if self.0.is_multiple_of(100) {
            Level::City
        } else {
            Level::County
        }
    }

    /// The provincial unit this region belongs to (itself for a province).
    pub fn province(self) -> RegionCode {
        RegionCode(self.0 / 10_000 * 10_000)
    }

    /// The city a county belongs to; `None` for cities and provinces.
    pub fn city(self) -> Option<RegionCode> {
        match self.level() {
            Level::County => Some(RegionCode(self.0 / 100 * 100)),
            _ => None,
        }
    }

    /// The region one level up; `None` for a province.
    pub fn parent(self) -> Option<RegionCode> {
        match self.level() {
            Level::Province => None,
            Level::City => Some(self.province()),
            Level::County => self.city(),
        }
    }

    /// True when `self` is `scope` or lies inside it. This is the one scope check:
    /// agents, hub and validation all call it.
    pub fn is_within(self, scope: RegionCode) -> bool {
        match scope.level() {
            Level::Province => self.province() == scope,
            Level::City => self.0 / 100 == scope.0 / 100,
            Level::County => self == scope,
        }
    }
}

impl fmt::Display for RegionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

impl fmt::Debug for RegionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegionCode({:06})", self.0)
    }
}

impl FromStr for RegionCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, CodeError> {
        RegionCode::parse(s)
    }
}

impl Serialize for RegionCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RegionCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CodeVisitor(RegionCode::parse))
    }
}

/// Reads a code from a string as the input holds it (no copy of it is made: a record's
/// codes are read for every entry the hub checks).
struct CodeVisitor<T>(fn(&str) -> Result<T, CodeError>);

impl<T> serde::de::Visitor<'_> for CodeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
        (self.0)(s).map_err(E::custom)
    }
}

/// A 10-digit school identification code (学校标识码).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchoolCode(u64);

impl SchoolCode {
    /// Parses a school code: exactly ten ASCII digits.
    pub fn parse(s: &str) -> Result<Self, CodeError> {
        if s.len() != 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeError::SchoolFormat(s.to_string()));
        }
        s.parse()
            .map(SchoolCode)
            .map_err(|_| CodeError::SchoolFormat(s.to_string()))
    }

    /// The code `n` (e.g. `4144010601`, leading zeros implied): any number of at most ten
    /// digits, as [`SchoolCode::parse`] takes them.
    pub fn from_u64(n: u64) -> Result<Self, CodeError> {
        if n > 9_999_999_999 {
            return Err(CodeError::SchoolFormat(n.to_string()));
        }
        Ok(SchoolCode(n))
    }

    /// The code as a number (e.g. `4144010601`).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SchoolCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:010}", self.0)
    }
}

impl fmt::Debug for SchoolCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SchoolCode({:010})", self.0)
    }
}

impl FromStr for SchoolCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, CodeError> {
        SchoolCode::parse(s)
    }
}

impl Serialize for SchoolCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SchoolCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CodeVisitor(SchoolCode::parse))
    }
}

/// One of the 32 provincial units the campaign addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvincialUnit {
    /// `PP0000`.
    pub code: u32,
    /// Official Chinese name.
    pub name_zh: &'static str,
    /// Conventional English name.
    pub name_en: &'static str,
}

/// The 31 provinces, autonomous regions and municipalities, plus the Xinjiang
/// Production and Construction Corps under the campaign's assumed code `660000`.
pub const PROVINCIAL_UNITS: [ProvincialUnit; 32] = [
    pu(110000, "北京市", "Beijing"),
    pu(120000, "天津市", "Tianjin"),
    pu(130000, "河北省", "Hebei"),
    pu(140000, "山西省", "Shanxi"),
    pu(150000, "内蒙古自治区", "Inner Mongolia"),
    pu(210000, "辽宁省", "Liaoning"),
    pu(220000, "吉林省", "Jilin"),
    pu(230000, "黑龙江省", "Heilongjiang"),
    pu(310000, "上海市", "Shanghai"),
    pu(320000, "江苏省", "Jiangsu"),
    pu(330000, "浙江省", "Zhejiang"),
    pu(340000, "安徽省", "Anhui"),
    pu(350000, "福建省", "Fujian"),
    pu(360000, "江西省", "Jiangxi"),
    pu(370000, "山东省", "Shandong"),
    pu(410000, "河南省", "Henan"),
    pu(420000, "湖北省", "Hubei"),
    pu(430000, "湖南省", "Hunan"),
    pu(440000, "广东省", "Guangdong"),
    pu(450000, "广西壮族自治区", "Guangxi"),
    pu(460000, "海南省", "Hainan"),
    pu(500000, "重庆市", "Chongqing"),
    pu(510000, "四川省", "Sichuan"),
    pu(520000, "贵州省", "Guizhou"),
    pu(530000, "云南省", "Yunnan"),
    pu(540000, "西藏自治区", "Tibet"),
    pu(610000, "陕西省", "Shaanxi"),
    pu(620000, "甘肃省", "Gansu"),
    pu(630000, "青海省", "Qinghai"),
    pu(640000, "宁夏回族自治区", "Ningxia"),
    pu(650000, "新疆维吾尔自治区", "Xinjiang"),
    pu(
        660000,
        "新疆生产建设兵团",
        "Xinjiang Production and Construction Corps",
    ),
];

const fn pu(code: u32, name_zh: &'static str, name_en: &'static str) -> ProvincialUnit {
    ProvincialUnit {
        code,
        name_zh,
        name_en,
    }
}

impl ProvincialUnit {
    /// The unit's code as a [`RegionCode`].
    pub fn region(&self) -> RegionCode {
        RegionCode(self.code)
    }
}

/// The provincial unit with this province code, if it is one of the 32.
pub fn unit(province: RegionCode) -> Option<&'static ProvincialUnit> {
    PROVINCIAL_UNITS.iter().find(|u| u.code == province.0)
}

/// One row of the bundled division directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The division's code.
    pub code: RegionCode,
    /// Its Chinese name (municipalities' city rows are named 市辖区).
    pub name: String,
    /// Its level as the directory states it (a few cities also appear as their own county).
    pub level: Level,
}

/// Division names from the National Bureau of Statistics' 2023 codes (3,352 rows).
/// The 2018 campaign predates this vintage, so a missing code is a warning, not an error.
pub struct Directory {
    by_code: HashMap<RegionCode, DirectoryEntry>,
    children: HashMap<RegionCode, Vec<RegionCode>>,
}

const REGIONS_CSV: &str = include_str!("../data/regions.csv");

impl Directory {
    /// The bundled directory, parsed once.
    pub fn bundled() -> &'static Directory {
        static DIR: OnceLock<Directory> = OnceLock::new();
        DIR.get_or_init(|| Directory::from_csv(REGIONS_CSV))
    }

    /// Builds a directory from `code,name,level,parent` rows; rows that do not parse are skipped
    /// (the bundled file is checked by a test to have none).
    pub fn from_csv(text: &str) -> Directory {
        let mut by_code = HashMap::new();
        let mut children: HashMap<RegionCode, Vec<RegionCode>> = HashMap::new();
        for line in text.lines().skip(1) {
            let mut cols = line.split(',');
            let (Some(code), Some(name), Some(level)) = (cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            let (Ok(code), Ok(level)) = (RegionCode::parse(code), level.parse::<Level>()) else {
                continue;
            };
            // A city that is also listed as its own county keeps its city row.
            if by_code.contains_key(&code) {
                continue;
            }
            if let Some(parent) = code.parent() {
                children.entry(parent).or_default().push(code);
            }
            by_code.insert(
                code,
                DirectoryEntry {
                    code,
                    name: name.to_string(),
                    level,
                },
            );
        }
        for list in children.values_mut() {
            list.sort();
        }
        Directory { by_code, children }
    }

    /// The entry for a code, if the directory lists it.
    pub fn get(&self, code: RegionCode) -> Option<&DirectoryEntry> {
        self.by_code.get(&code)
    }

    /// The Chinese name of a code, if listed.
    pub fn name(&self, code: RegionCode) -> Option<&str> {
        self.by_code.get(&code).map(|e| e.name.as_str())
    }

    /// Listed divisions one level below `code`, in code order.
    pub fn children(&self, code: RegionCode) -> &[RegionCode] {
        self.children.get(&code).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of listed divisions.
    pub fn len(&self) -> usize {
        self.by_code.len()
    }

    /// True when nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.by_code.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> RegionCode {
        RegionCode::parse(s).unwrap()
    }

    #[test]
    fn levels_and_parents_come_from_the_code() {
        let tianhe = code("440106");
        assert_eq!(tianhe.level(), Level::County);
        assert_eq!(tianhe.city(), Some(code("440100")));
        assert_eq!(tianhe.parent(), Some(code("440100")));
        assert_eq!(tianhe.province(), code("440000"));
        assert_eq!(code("440100").level(), Level::City);
        assert_eq!(code("440100").parent(), Some(code("440000")));
        assert_eq!(code("440000").parent(), None);
        assert_eq!(code("660000").level(), Level::Province);
    }

    #[test]
    fn scope_is_one_function() {
        let cases = [
            ("440106", "440000", true),
            ("440106", "440100", true),
            ("440106", "440106", true),
            ("440100", "440106", false),
            ("440000", "440100", false),
            ("440306", "440100", false),
            ("110105", "440000", false),
            ("660000", "650000", false),
            ("440000", "440000", true),
        ];
        for (x, scope, want) in cases {
            assert_eq!(code(x).is_within(code(scope)), want, "{x} within {scope}");
        }
    }

    #[test]
    fn malformed_codes_are_refused() {
        for bad in [
            "", "44010", "4401066", "44a106", "990000", "710000", "440006", " 44010",
        ] {
            assert!(RegionCode::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(SchoolCode::parse("4144010601").is_ok());
        for bad in ["414401060", "41440106011", "414401060x"] {
            assert!(SchoolCode::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_are_judged_as_their_digits_are() {
        // Every six-digit number, and the first past them: the same code or the same error.
        for n in 0..=1_000_000u32 {
            let digits = format!("{n:06}");
            assert_eq!(RegionCode::from_u32(n), RegionCode::parse(&digits), "{n}");
        }
        for n in [
            0u64,
            1,
            4_144_010_601,
            9_999_999_999,
            10_000_000_000,
            u64::MAX,
        ] {
            assert_eq!(
                SchoolCode::from_u64(n),
                SchoolCode::parse(&format!("{n:010}")),
                "{n}"
            );
        }
    }

    #[test]
    fn codes_read_from_json_strings_as_written_or_escaped() {
        let plain: RegionCode = serde_json::from_str(r#""440106""#).unwrap();
        let escaped: RegionCode =
            serde_json::from_str(r#""\u0034\u0034\u0030\u0031\u0030\u0036""#).unwrap();
        assert_eq!((plain, escaped), (code("440106"), code("440106")));
        // From a JSON tree (owned strings) too.
        let school: SchoolCode = serde_json::from_value(serde_json::json!("4144010601")).unwrap();
        assert_eq!(school.to_string(), "4144010601");
        for bad in ["440106", r#""44010""#, r#""990000""#, "null"] {
            assert!(serde_json::from_str::<RegionCode>(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<SchoolCode>("4144010601").is_err());
    }

    #[test]
    fn there_are_32_units_and_each_is_a_province_code() {
        assert_eq!(PROVINCIAL_UNITS.len(), 32);
        for u in PROVINCIAL_UNITS {
            let c = RegionCode::parse(&format!("{:06}", u.code)).unwrap();
            assert_eq!(c.level(), Level::Province);
            assert_eq!(unit(c).map(|u| u.name_zh), Some(u.name_zh));
        }
    }

    #[test]
    fn bundled_directory_parses_every_row() {
        let dir = Directory::bundled();
        // 3,352 rows, three of which (东莞市, 中山市, 儋州市) repeat their city row as a county.
        let rows = REGIONS_CSV.lines().skip(1).count();
        assert_eq!(rows, 3352);
        assert_eq!(dir.len(), 3349);
        assert_eq!(dir.name(code("440106")), Some("天河区"));
        assert_eq!(dir.name(code("660000")), Some("新疆生产建设兵团"));
        for u in PROVINCIAL_UNITS {
            assert_eq!(dir.name(u.region()), Some(u.name_zh), "{}", u.code);
        }
        assert!(dir.children(code("440100")).contains(&code("440106")));
    }

    #[test]
    fn display_round_trips() {
        for s in ["110105", "440000", "650100"] {
            assert_eq!(code(s).to_string(), s);
        }
        assert_eq!(
            SchoolCode::parse("0144010601").unwrap().to_string(),
            "0144010601"
        );
    }
}
