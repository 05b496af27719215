//! What `/metrics` counts of ingest in this process, by Prometheus conventions: entries
//! appended, refusals by code, and a histogram of how long a batch took to answer. Each
//! replica counts its own requests (Prometheus adds replicas up with `sum`); what the
//! store holds (log size, per-source last seen, notices, webhook failures) is read from
//! the hub's state when scraped ([`crate::http`]'s `metrics_text`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use spacesync_shared::wire::RefusalCode;

/// Upper bounds (seconds) of the batch-duration buckets: from a small batch on a quiet hub
/// (a few ms) to a 1000-entry batch waiting on a busy database (seconds).
pub const BATCH_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Ingest counters of one process.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Entries newly appended to the log.
    entries: AtomicU64,
    /// Refused entries and refused batches, by refusal code.
    refusals: Mutex<BTreeMap<String, u64>>,
    /// Batches answered, by bucket (`BATCH_BUCKETS`, then +Inf), their sum in µs.
    buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// The wire name of a refusal code (`bad_signature`, …).
pub fn code_name(code: RefusalCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "other".into(),
    }
}

impl IngestMetrics {
    /// A batch was answered after `took`: `appended` entries new in the log, the entries
    /// refused (by code), or the whole batch refused with `batch_refusal`.
    pub fn batch(
        &self,
        took: Duration,
        appended: usize,
        refused: impl IntoIterator<Item = RefusalCode>,
        batch_refusal: Option<RefusalCode>,
    ) {
        self.entries.fetch_add(appended as u64, Ordering::Relaxed);
        {
            let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            for code in refused.into_iter().chain(batch_refusal) {
                *r.entry(code_name(code)).or_default() += 1;
            }
        }
        let secs = took.as_secs_f64();
        let i = BATCH_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = write!(
            out,
            "# HELP spacesync_hub_entries_ingested_total Entries appended to the log by ingest requests to this process.\n\
             # TYPE spacesync_hub_entries_ingested_total counter\n\
             spacesync_hub_entries_ingested_total {}\n",
            self.entries.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP spacesync_hub_ingest_refusals_total Entries and batches refused by ingest, by refusal code.\n\
             # TYPE spacesync_hub_ingest_refusals_total counter\n",
        );
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        for (code, n) in refusals.iter() {
            let _ = writeln!(
                out,
                "spacesync_hub_ingest_refusals_total{{code=\"{code}\"}} {n}"
            );
        }
        drop(refusals);
        out.push_str(
            "# HELP spacesync_hub_ingest_batch_duration_seconds Time from an ingest request's body to its answer.\n\
             # TYPE spacesync_hub_ingest_batch_duration_seconds histogram\n",
        );
        let mut cumulative = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            let le = BATCH_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "spacesync_hub_ingest_batch_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = write!(
            out,
            "spacesync_hub_ingest_batch_duration_seconds_sum {}\n\
             spacesync_hub_ingest_batch_duration_seconds_count {cumulative}\n",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_codes_named() {
        let m = IngestMetrics::default();
        m.batch(Duration::from_millis(3), 5, [], None);
        m.batch(
            Duration::from_millis(70),
            0,
            [RefusalCode::BadSignature, RefusalCode::BadSignature],
            None,
        );
        m.batch(
            Duration::from_secs(40),
            0,
            [],
            Some(RefusalCode::UnknownSource),
        );
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "spacesync_hub_entries_ingested_total 5\n",
            "spacesync_hub_ingest_refusals_total{code=\"bad_signature\"} 2\n",
            "spacesync_hub_ingest_refusals_total{code=\"unknown_source\"} 1\n",
            "spacesync_hub_ingest_batch_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "spacesync_hub_ingest_batch_duration_seconds_bucket{le=\"0.05\"} 1\n",
            "spacesync_hub_ingest_batch_duration_seconds_bucket{le=\"0.1\"} 2\n",
            "spacesync_hub_ingest_batch_duration_seconds_bucket{le=\"30\"} 2\n",
            "spacesync_hub_ingest_batch_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "spacesync_hub_ingest_batch_duration_seconds_sum 40.073\n",
            "spacesync_hub_ingest_batch_duration_seconds_count 3\n",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
    }
}
