//! Every sentence people read, in Chinese and English: the language choice, number and
//! date formatting, and (in submodules) the words of bulletins, notices and the
//! dashboard. Renderers and rules ask this module for text; they hold none of their own.

pub mod bulletin;
pub mod dashboard;
pub mod notices;

/// Output language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// 中文 (default).
    Zh,
    /// English.
    En,
}

impl Lang {
    /// Parses `zh` or `en`.
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "zh" | "zh-CN" | "cn" => Some(Lang::Zh),
            "en" => Some(Lang::En),
            _ => None,
        }
    }
}

/// The sentence in `lang`: Chinese or English.
pub fn t(lang: Lang, zh: &'static str, en: &'static str) -> &'static str {
    match lang {
        Lang::Zh => zh,
        Lang::En => en,
    }
}

/// Thousands separators: 12,345,678.
pub fn group(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A count as a reader expects it: Chinese uses 万 (10⁴) for large figures.
pub fn count(lang: Lang, n: i64) -> String {
    match lang {
        Lang::Zh if n.abs() >= 10_000 => format!("{:.2}万", n as f64 / 10_000.0),
        _ => group(n),
    }
}

/// A date: 2018年11月16日 or 2018-11-16.
pub fn date(lang: Lang, iso: &str) -> String {
    let d = iso.get(..10).unwrap_or(iso);
    match (lang, d.split('-').collect::<Vec<_>>().as_slice()) {
        (Lang::Zh, [y, m, dd]) => format!(
            "{y}年{}月{}日",
            m.trim_start_matches('0'),
            dd.trim_start_matches('0')
        ),
        _ => d.to_string(),
    }
}
