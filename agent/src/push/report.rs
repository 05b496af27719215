//! Telling the hub about this agent's log alarm (issue 16: the dashboard and `/v1/sources`
//! show each province's alarm). The alarm is this agent's finding about the hub's log;
//! reporting it lets the ministry's operator see that a province's agent says the log
//! forked, rolled back, lost an entry, … The evidence stays in this agent's store, and the
//! hub cannot clear the alarm: only the agent's operator can (`clear-alarm`), which the
//! next sync reports too.
//!
//! After each sync's audit, when the stored alarm ([`AuditState::alarm`]) differs from
//! the one the hub last accepted ([`AuditState::reported_alarm`]), the agent sends it
//! (`POST /v1/agent/log-alarm`, signed), or its clearing; what was reported is stored only
//! after a 2xx, so a hub down, failing or refusing gets it again next sync. A hub without
//! the endpoint (404: older than this agent) is not asked again until the agent restarts.
//! Nothing here stops delivery.

use chrono::{DateTime, Utc};
use spacesync_shared::wire::{LogAlarmReport, MAX_LOG_ALARM_CODE};
use tracing::{debug, info};

use super::audit::{AuditError, AuditState};
use super::classify::{Class, Link};
use super::transport::{Request, Transport};
use crate::store::Store;

/// What a report came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// The hub accepted this report.
    Sent(LogAlarmReport),
    /// The hub has no such endpoint: not asked again while this agent runs.
    Unsupported,
}

/// Reports the log alarm to the hub when it changed; remembers, for the pusher's lifetime,
/// a hub that does not take reports.
#[derive(Debug, Default)]
pub struct Reporter {
    /// The hub answered 404: an older hub. Asked again after a restart (it may have been
    /// upgraded), not every sync.
    unsupported: bool,
}

/// The code an alarm text starts with (every [`super::audit::Finding::describe`] does);
/// `log_alarm` for a text that does not.
pub fn code_of(alarm: &str) -> String {
    let first = alarm.split([' ', '(']).next().unwrap_or_default();
    let valid = !first.is_empty()
        && first.len() <= MAX_LOG_ALARM_CODE
        && first.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    if valid {
        first.to_string()
    } else {
        "log_alarm".to_string()
    }
}

impl Reporter {
    /// Sends the report the stored alarm calls for, if any (`now`: the agent's clock, the
    /// report's time). `Ok(None)`: nothing to send, or the hub is known not to take
    /// reports. An error is the caller's to log; the next sync tries again.
    pub async fn report<T: Transport>(
        &mut self,
        link: &mut Link<T>,
        store: &Store,
        now: DateTime<Utc>,
    ) -> Result<Option<Reported>, AuditError> {
        if self.unsupported {
            return Ok(None);
        }
        let mut st = AuditState::load(store)?;
        let (text, cleared) = match (&st.alarm, &st.reported_alarm) {
            (Some(alarm), reported) if reported.as_ref() != Some(alarm) => (alarm, false),
            (None, Some(reported)) => (reported, true),
            _ => return Ok(None),
        };
        let report = LogAlarmReport {
            code: code_of(text),
            detected: spacesync_shared::wire::log_alarm_text(text),
            at: now,
            cleared,
        };
        let req = Request::LogAlarm(report.clone());
        let reply = link.exchange(&req).await?;
        match reply.class {
            Class::Done => {
                st.reported_alarm = st.alarm.clone();
                let json = serde_json::to_vec(&st).unwrap_or_default();
                store.set_audit_state(&json, None).await?;
                debug!(code = %report.code, cleared, "The hub took this agent's log alarm report.");
                Ok(Some(Reported::Sent(report)))
            }
            Class::NotFound => {
                self.unsupported = true;
                info!(
                    "The hub does not take log alarm reports (a hub older than this agent); its dashboard will not show this agent's log alarm. Not asked again until the agent restarts."
                );
                Ok(Some(Reported::Unsupported))
            }
            _ => Err(reply.unexpected(&req.what()).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_the_alarm_texts_first_word() {
        for (text, code) in [
            (
                "fork (the hub's log does not extend …); the evidence …",
                "fork",
            ),
            (
                "audit_refused (the hub has let no audit …)",
                "audit_refused",
            ),
            ("rollback", "rollback"),
            ("Fork (…)", "log_alarm"),
            ("", "log_alarm"),
            (" fork", "log_alarm"),
        ] {
            assert_eq!(code_of(text), code, "{text:?}");
        }
        let long = "a".repeat(MAX_LOG_ALARM_CODE + 1);
        assert_eq!(code_of(&long), "log_alarm");
    }
}
