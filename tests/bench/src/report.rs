//! The closing line of every command: `cmd: key=value key=value …`, one line, the last
//! thing the command prints on stdout. Other checks parse it, so keys are stable and
//! values are plain numbers (or `NA` where a peer is not available).

use std::fmt::Write as _;

/// The `key=value` pairs of one command, in the order they were added.
#[derive(Debug, Clone)]
pub struct Report {
    cmd: &'static str,
    pairs: Vec<(String, String)>,
}

impl Report {
    /// An empty report for `cmd` (`ingest`, `agent`, `scale`).
    pub fn new(cmd: &'static str) -> Report {
        Report {
            cmd,
            pairs: Vec::new(),
        }
    }

    /// Adds a pair whose value is already formatted.
    pub fn raw(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.pairs.push((key.to_string(), value.into()));
        self
    }

    /// A rate or count: rounded to a whole number.
    pub fn int(&mut self, key: &str, v: f64) -> &mut Self {
        self.raw(key, format!("{v:.0}"))
    }

    /// A ratio, seconds or milliseconds: three significant decimals.
    pub fn dec(&mut self, key: &str, v: f64) -> &mut Self {
        self.raw(key, decimal(v))
    }

    /// A rate that may be missing (`NA`).
    pub fn opt_int(&mut self, key: &str, v: Option<f64>) -> &mut Self {
        match v {
            Some(v) => self.int(key, v),
            None => self.raw(key, "NA"),
        }
    }

    /// A ratio that may be missing (`NA`).
    pub fn opt_dec(&mut self, key: &str, v: Option<f64>) -> &mut Self {
        match v {
            Some(v) => self.dec(key, v),
            None => self.raw(key, "NA"),
        }
    }

    /// The line itself, without a newline.
    pub fn line(&self) -> String {
        let mut out = format!("{}:", self.cmd);
        for (k, v) in &self.pairs {
            let _ = write!(out, " {k}={v}");
        }
        out
    }
}

/// At least three significant digits, without exponent notation (`0.000137`, `1.25`,
/// `412.7`), so that any float parser reads it.
pub fn decimal(v: f64) -> String {
    if !v.is_finite() {
        return "NA".into();
    }
    let a = v.abs();
    let decimals = if a >= 100.0 || a == 0.0 {
        1
    } else {
        // Digits after the point needed for three significant ones.
        (2 - a.log10().floor() as i32).clamp(1, 12) as usize
    };
    format!("{v:.decimals$}")
}

/// Parses a closing line back into `(cmd, pairs)`; `None` unless every word after the
/// `cmd:` is `key=value`.
pub fn parse_line(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let (cmd, rest) = line.split_once(": ")?;
    let pairs = rest
        .split_whitespace()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((cmd.to_string(), pairs))
}

/// The median and the 99th percentile of `xs` (nearest rank), or zeros when empty.
pub fn p50_p99(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.50), rank(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_three_significant_digits() {
        for (v, s) in [
            (0.000_137_2, "0.000137"),
            (1.254, "1.25"),
            (412.74, "412.7"),
            (0.0, "0.0"),
            (25.0, "25.0"),
        ] {
            assert_eq!(decimal(v), s, "{v}");
        }
    }

    #[test]
    fn the_line_parses_back() {
        let mut r = Report::new("ingest");
        r.int("entries_per_s", 1234.4)
            .dec("ratio", 0.1234)
            .opt_int("pg_insert_per_s", None);
        let line = r.line();
        assert_eq!(
            line,
            "ingest: entries_per_s=1234 ratio=0.123 pg_insert_per_s=NA"
        );
        let (cmd, pairs) = parse_line(&line).expect("parses");
        assert_eq!(cmd, "ingest");
        assert_eq!(pairs.len(), 3);
        assert!(parse_line("ingest: a=1 b").is_none());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p50_p99(&xs), (50.0, 99.0));
        assert_eq!(p50_p99(&[7.0]), (7.0, 7.0));
    }
}
