//! The status report: what `status`, `GET /v1/status` and `GET /metrics` show.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spacesync_shared::clock::Clock;

use crate::config::Config;
use crate::push::{Alarm, PushState};
use crate::store::{Store, StoreError};

/// The oldest entry the hub has not receipted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OldestUnsent {
    /// Its seq.
    pub seq: u64,
    /// When it was accepted.
    pub recorded_at: DateTime<Utc>,
    /// Seconds since then (agent clock).
    pub age_secs: i64,
}

/// Everything `status --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Source id.
    pub source: String,
    /// Scope region.
    pub scope: String,
    /// Hub URL.
    pub hub: String,
    /// Whether this report comes from a running agent (false: read from a stopped store).
    pub running: bool,
    /// Highest seq in the local chain.
    pub head_seq: u64,
    /// Highest seq delivered (it and all below have valid hub receipts).
    pub acked_seq: u64,
    /// Entries waiting for a receipt.
    pub buffered: u64,
    /// Their stored size.
    pub buffered_bytes: u64,
    /// The oldest of them.
    pub oldest_unsent: Option<OldestUnsent>,
    /// Entries up to this seq were pruned after delivery.
    pub pruned_through: u64,
    /// Highest seq the hub last said it holds.
    pub hub_held_through: Option<u64>,
    /// Whether the hub answered the last request.
    pub hub_reachable: Option<bool>,
    /// Last request to the hub.
    pub last_push_at: Option<DateTime<Utc>>,
    /// Last fault-free sync cycle.
    pub last_success_at: Option<DateTime<Utc>>,
    /// `ok`, `retrying` or `alarm`.
    pub last_result: Option<String>,
    /// The last fault.
    pub last_error: Option<String>,
    /// True while this data directory, a backup copy, takes back from the hub what the hub
    /// holds of its chain; intake answers 503 until then.
    #[serde(default)]
    pub catching_up: bool,
    /// Set while a permanent refusal stops pushing.
    pub alarm: Option<Alarm>,
    /// Ingest requests sent.
    pub pushes: u64,
    /// Transient failures retried.
    pub retries: u64,
    /// Notices not yet shown by `spacesync-agent notices`.
    pub unread_notices: u64,
    /// Size of the last hub checkpoint the log audit verified; null before the first.
    pub verified_checkpoint_size: Option<u64>,
    /// What the log audit detected about the hub's log (fork, rollback, bad signature,
    /// receipted entry missing); null while nothing was.
    pub log_alarm: Option<String>,
}

/// Builds the report from the store and the push state.
pub fn report(
    store: &Store,
    cfg: &Config,
    push: &PushState,
    clock: &dyn Clock,
    running: bool,
) -> Result<StatusReport, StoreError> {
    let (head, _) = store.head()?;
    let acked = store.acked()?;
    let now = clock.now();
    let oldest = store.oldest_unsent()?.map(|(seq, at)| OldestUnsent {
        seq,
        recorded_at: at,
        age_secs: (now - at).num_seconds().max(0),
    });
    Ok(StatusReport {
        source: cfg.source.to_string(),
        scope: cfg.scope.to_string(),
        hub: cfg.hub.clone(),
        running,
        head_seq: head,
        acked_seq: acked,
        buffered: head.saturating_sub(acked),
        buffered_bytes: store.buffered_bytes()?,
        oldest_unsent: oldest,
        pruned_through: store.pruned()?.0,
        hub_held_through: push.hub_held_through,
        hub_reachable: push.hub_reachable,
        last_push_at: push.last_attempt_at,
        last_success_at: push.last_success_at,
        last_result: push.last_result.clone(),
        last_error: push.last_error.clone(),
        catching_up: store.catching_up()?,
        alarm: push.alarm.clone(),
        pushes: push.pushes,
        retries: push.retries,
        unread_notices: store.unread_notices()?,
        verified_checkpoint_size: push.verified_checkpoint_size,
        log_alarm: push.log_alarm.clone(),
    })
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "never".into())
}

/// The report for people.
pub fn render_human(r: &StatusReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "source {} (scope {}) → {}{}",
        r.source,
        r.scope,
        r.hub,
        if r.running {
            ""
        } else {
            "   [agent not running]"
        }
    );
    if let Some(a) = &r.alarm {
        let _ = writeln!(s, "ALARM ({}) since {}: {}", a.code, a.since, a.reason);
    }
    if r.catching_up {
        let _ = writeln!(
            s,
            "catching up: restored from a backup, taking back what the hub holds of this chain; intake opens after"
        );
    }
    if let Some(a) = &r.log_alarm {
        let _ = writeln!(s, "LOG ALARM: {a}");
    }
    let _ = writeln!(s, "head seq:        {}", r.head_seq);
    let _ = writeln!(s, "delivered seq:   {}", r.acked_seq);
    let _ = writeln!(
        s,
        "waiting:         {} entries, {} bytes",
        r.buffered, r.buffered_bytes
    );
    match &r.oldest_unsent {
        Some(o) => {
            let _ = writeln!(
                s,
                "oldest waiting:  seq {} from {} ({} s ago)",
                o.seq, o.recorded_at, o.age_secs
            );
        }
        None => {
            let _ = writeln!(s, "oldest waiting:  none");
        }
    }
    let _ = writeln!(
        s,
        "hub holds:       {}",
        r.hub_held_through
            .map(|h| format!("through seq {h}"))
            .unwrap_or_else(|| "unknown".into())
    );
    let _ = writeln!(
        s,
        "hub reachable:   {}",
        r.hub_reachable
            .map(|b| if b { "yes" } else { "no" }.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    let _ = writeln!(
        s,
        "last push:       {} ({})",
        opt(&r.last_push_at),
        r.last_result.as_deref().unwrap_or("none")
    );
    let _ = writeln!(s, "last success:    {}", opt(&r.last_success_at));
    if let Some(e) = &r.last_error {
        let _ = writeln!(s, "last error:      {e}");
    }
    let _ = writeln!(
        s,
        "hub log audited: {}",
        r.verified_checkpoint_size
            .map(|n| format!("checkpoint of {n} entries verified"))
            .unwrap_or_else(|| "never".into())
    );
    let _ = writeln!(s, "unread notices:  {}", r.unread_notices);
    s
}

/// The report in Prometheus text format.
pub fn render_metrics(r: &StatusReport) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(s, "# HELP spacesync_agent_{name} {help}");
        let _ = writeln!(s, "# TYPE spacesync_agent_{name} {kind}");
        let _ = writeln!(s, "spacesync_agent_{name} {v}");
    };
    metric(
        "head_seq",
        "gauge",
        "Highest seq in the local chain.",
        r.head_seq as f64,
    );
    metric(
        "acked_seq",
        "gauge",
        "Highest seq with hub receipts for it and all below.",
        r.acked_seq as f64,
    );
    metric(
        "buffered_entries",
        "gauge",
        "Entries waiting for a hub receipt.",
        r.buffered as f64,
    );
    metric(
        "buffered_bytes",
        "gauge",
        "Stored bytes of the entries waiting.",
        r.buffered_bytes as f64,
    );
    metric(
        "oldest_unsent_age_seconds",
        "gauge",
        "Age of the oldest entry waiting (0 when none).",
        r.oldest_unsent.as_ref().map_or(0.0, |o| o.age_secs as f64),
    );
    metric(
        "pushes_total",
        "counter",
        "Ingest requests sent.",
        r.pushes as f64,
    );
    metric(
        "retries_total",
        "counter",
        "Transient push failures retried.",
        r.retries as f64,
    );
    metric(
        "last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last fault-free sync cycle (0 = never).",
        r.last_success_at.map_or(0.0, |t| t.timestamp() as f64),
    );
    metric(
        "hub_lag_entries",
        "gauge",
        "Entries the hub does not hold yet, by its last answer.",
        r.head_seq
            .saturating_sub(r.hub_held_through.unwrap_or(r.acked_seq)) as f64,
    );
    metric(
        "hub_reachable",
        "gauge",
        "1 when the hub answered the last request.",
        if r.hub_reachable == Some(true) {
            1.0
        } else {
            0.0
        },
    );
    metric(
        "alarm",
        "gauge",
        "1 while a permanent refusal stops pushing.",
        if r.alarm.is_some() { 1.0 } else { 0.0 },
    );
    metric(
        "verified_checkpoint_size",
        "gauge",
        "Size of the last hub checkpoint the log audit verified (0 before the first).",
        r.verified_checkpoint_size.unwrap_or(0) as f64,
    );
    metric(
        "log_alarm",
        "gauge",
        "1 once the log audit detected a fork, a rollback, a bad signature or a receipted entry missing from the hub's log.",
        if r.log_alarm.is_some() { 1.0 } else { 0.0 },
    );
    metric(
        "catching_up",
        "gauge",
        "1 while this data directory, restored from a backup, takes back what the hub holds of its chain (intake answers 503 meanwhile).",
        if r.catching_up { 1.0 } else { 0.0 },
    );
    metric(
        "unread_notices",
        "gauge",
        "Notices not yet read.",
        r.unread_notices as f64,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::tests::{clock, json, writer};

    #[test]
    fn status_json_has_the_promised_fields_and_counts() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let mut w = writer(&store, Default::default());
        let act = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;
        w.submit(&json(&[act, act, act].join("\n")), &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let cfg = Config::new(
            "gd-rrt".parse().unwrap_or_else(|e| panic!("{e}")),
            "440000".parse().unwrap_or_else(|e| panic!("{e}")),
            "http://127.0.0.1:9".into(),
        );
        let push = PushState {
            last_error: Some("cannot reach the hub".into()),
            ..PushState::default()
        };
        let r = report(&store, &cfg, &push, &*clock(), false).unwrap_or_else(|e| panic!("{e}"));
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["head_seq"], 3);
        assert_eq!(v["acked_seq"], 0);
        assert_eq!(v["buffered"], 3);
        assert_eq!(v["last_error"], "cannot reach the hub");
        assert_eq!(v["oldest_unsent"]["seq"], 1);
        // Issue 16's fixed interface: present, and null before the first audit.
        assert!(v["verified_checkpoint_size"].is_null(), "{v}");
        assert!(v["log_alarm"].is_null(), "{v}");
        assert!(v.as_object().is_some_and(
            |o| o.contains_key("log_alarm") && o.contains_key("verified_checkpoint_size")
        ));
        let back: StatusReport = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, r);
        let m = render_metrics(&r);
        assert!(m.contains("spacesync_agent_buffered_entries 3\n"), "{m}");
        assert!(render_human(&r).contains("waiting:         3 entries"));
        assert!(render_human(&r).contains("hub log audited: never"));

        // After audits: the size, and the alarm in every form.
        let push = PushState {
            verified_checkpoint_size: Some(42),
            log_alarm: Some("rollback (the hub's log was rolled back)".into()),
            ..PushState::default()
        };
        let r = report(&store, &cfg, &push, &*clock(), true).unwrap_or_else(|e| panic!("{e}"));
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["verified_checkpoint_size"], 42);
        assert_eq!(v["log_alarm"], "rollback (the hub's log was rolled back)");
        let m = render_metrics(&r);
        assert!(m.contains("spacesync_agent_log_alarm 1\n"), "{m}");
        assert!(
            m.contains("spacesync_agent_verified_checkpoint_size 42\n"),
            "{m}"
        );
        let h = render_human(&r);
        assert!(h.contains("LOG ALARM: rollback"), "{h}");
        assert!(h.contains("checkpoint of 42 entries verified"), "{h}");
        assert!(m.contains("spacesync_agent_catching_up 0\n"), "{m}");
        assert!(!h.contains("catching up"), "{h}");

        // A backup copy, until it took back what the hub holds: in every form.
        store.mark_catch_up().unwrap_or_else(|e| panic!("{e}"));
        let r = report(&store, &cfg, &push, &*clock(), true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            serde_json::to_value(&r).unwrap_or_default()["catching_up"],
            true
        );
        assert!(render_metrics(&r).contains("spacesync_agent_catching_up 1\n"));
        assert!(render_human(&r).contains("catching up: restored from a backup"));
    }
}
