//! The merge rule for teacher spaces as a model the attack suites hold the views to
//! (`attack_chains`, `attack_pending23`): per school, among its live snapshots, the value
//! of the one last in `(as_of, log order)`; withdrawals take a source's snapshot out.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde_json::Value;
use spacesync_shared::record::{Record, SpaceKind};

/// The 10-digit code of school `n` of county 440106.
pub fn school(n: u64) -> String {
    format!("41440106{n:02}")
}

/// The merge rule for teacher spaces: per school, among its live snapshots, the value of
/// the one last in `(as_of, log order)`.
#[derive(Default, Clone)]
pub struct Model {
    /// (school, as_of, value, order, live)
    pub snaps: Vec<(String, NaiveDate, u64, u64, bool)>,
    /// (source, seq) -> position in `snaps` of a snapshot
    pub by_seq: BTreeMap<(String, u64), usize>,
    pub order: u64,
}

impl Model {
    pub fn entry(&mut self, source: &str, seq: u64, record: &Value) {
        self.order += 1;
        match super::record_of(record) {
            Record::SpaceCount(c) => {
                self.snaps.push((
                    // A region's own total under "" (not among the schools served).
                    c.school.map(|s| s.to_string()).unwrap_or_default(),
                    c.as_of,
                    c.spaces.get(SpaceKind::Teacher).expect("teachers"),
                    self.order,
                    true,
                ));
                self.by_seq
                    .insert((source.to_string(), seq), self.snaps.len() - 1);
            }
            Record::Withdrawal(w) => {
                if let Some(at) = self.by_seq.get(&(source.to_string(), w.target_seq)) {
                    self.snaps[*at].4 = false;
                }
            }
            _ => {}
        }
    }

    pub fn teachers(&self) -> BTreeMap<String, u64> {
        let mut best: BTreeMap<String, (NaiveDate, u64, u64)> = BTreeMap::new();
        for (school, as_of, value, order, live) in &self.snaps {
            if !live {
                continue;
            }
            let e = best
                .entry(school.clone())
                .or_insert((*as_of, *order, *value));
            if (*as_of, *order) >= (e.0, e.1) {
                *e = (*as_of, *order, *value);
            }
        }
        best.into_iter()
            .filter(|(s, _)| !s.is_empty())
            .map(|(s, (_, _, v))| (s, v))
            .collect()
    }
}
