//! What a hub answer means: the one classification every answer passes through.
//!
//! [`Link::exchange`] sends a request over the [`Transport`], notes the attempt in the push
//! state, and classifies the answer with [`classify`]: a hub not reached, a `429` or a `5xx`
//! become [`PushError::Transient`] (retried on the one retry policy, [`crate::retry`]), a
//! `401`/`403` becomes [`PushError::Alarm`] worded with what to do; every other class goes
//! back to the caller, which knows what a `409` or a `413` means for its request.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use spacesync_shared::clock::Clock;
use spacesync_shared::wire::{ErrorBody, RefusalCode};

use super::state::{SharedPushState, lock};
use super::transport::{Request, Transport};
use crate::intake::Identity;
use crate::store::StoreError;

/// A failed step of a sync cycle.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Worth retrying.
    #[error("{error}")]
    Transient {
        /// What happened.
        error: String,
        /// The hub's `Retry-After`.
        retry_after: Option<Duration>,
        /// True when the hub may have acted on a request whose answer was lost.
        doubt: bool,
    },
    /// A refusal that needs a person.
    #[error("{reason}")]
    Alarm {
        /// Cause code.
        code: String,
        /// What happened and what to do.
        reason: String,
    },
    /// The local store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A transient fault without `Retry-After`.
pub fn transient(error: String, doubt: bool) -> PushError {
    PushError::Transient {
        error,
        retry_after: None,
        doubt,
    }
}

/// A fault that needs a person.
pub fn alarm(code: impl Into<String>, reason: impl Into<String>) -> PushError {
    PushError::Alarm {
        code: code.into(),
        reason: reason.into(),
    }
}

/// A refusal code as the hub spells it (`out_of_scope`).
pub fn code_name(c: RefusalCode) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{c:?}"))
}

/// Most characters of the hub's own text quoted in an error ([`hub_said`]).
pub const MAX_HUB_SAID_CHARS: usize = 120;

/// The hub's own words (an error message, an answer it sent) as an error quotes them:
/// `the hub said: "…"`, escaped and at most [`MAX_HUB_SAID_CHARS`] characters, so nothing
/// the hub writes reads as this agent's words in a status, alarm or log line.
pub fn hub_said(text: &str) -> String {
    let shown: String = text.chars().take(MAX_HUB_SAID_CHARS).collect();
    let cut = if shown.len() < text.len() {
        format!(" (its first {MAX_HUB_SAID_CHARS} characters)")
    } else {
        String::new()
    };
    format!("the hub said: {shown:?}{cut}")
}

/// What a hub answer means, by its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: done; the body is the answer.
    Done,
    /// 409 / 422: the hub refused entries of a batch; its ingest answer says which and why
    /// (and still carries receipts for what it holds).
    Refused,
    /// 413: the batch is too large for the hub.
    TooLarge,
    /// 400: the hub cannot read the request — an agent bug.
    Malformed,
    /// 404: the hub has no such endpoint (an older hub).
    NotFound,
    /// 401 / 403: the hub does not accept this source's requests; needs a person.
    Denied,
    /// 429, 5xx and anything else: try again later (`doubt`: the hub may have acted on
    /// the request — a 5xx can come after the work was done).
    Retry {
        /// Ask the hub where it stands before pushing again.
        doubt: bool,
    },
}

/// The one classification of a hub answer's status.
pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Done,
        409 | 422 => Class::Refused,
        413 => Class::TooLarge,
        400 => Class::Malformed,
        404 => Class::NotFound,
        401 | 403 => Class::Denied,
        s => Class::Retry {
            doubt: (500..=599).contains(&s),
        },
    }
}

/// An answer the caller has to read.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its class (never `Denied` or `Retry`: those are errors already).
    pub class: Class,
    /// HTTP status.
    pub status: StatusCode,
    /// `Retry-After`, when given.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The transient error for an answer the request did not expect.
    pub fn unexpected(&self, what: &str) -> PushError {
        PushError::Transient {
            error: format!("{what}: the hub answered {}", self.status),
            retry_after: self.retry_after,
            doubt: false,
        }
    }
}

/// The pusher's line to the hub: a transport, and what every exchange updates.
pub struct Link<T> {
    /// How requests travel.
    pub transport: T,
    /// Notes attempts and reachability.
    state: SharedPushState,
    /// Stamps attempts.
    clock: Arc<dyn Clock>,
    /// Names the source and its key in alarms.
    ident: Arc<Identity>,
}

impl<T: Transport> Link<T> {
    /// A link over `transport`.
    pub fn new(
        transport: T,
        state: SharedPushState,
        clock: Arc<dyn Clock>,
        ident: Arc<Identity>,
    ) -> Link<T> {
        Link {
            transport,
            state,
            clock,
            ident,
        }
    }

    /// Sends `req` and classifies the answer: transient faults and refusals that need a
    /// person are errors; every other answer is the caller's to read.
    pub async fn exchange(&mut self, req: &Request) -> Result<Reply, PushError> {
        let what = req.what();
        lock(&self.state).last_attempt_at = Some(self.clock.now());
        let answer = match self.transport.send(req).await {
            Ok(a) => a,
            Err(u) => {
                lock(&self.state).hub_reachable = Some(false);
                return Err(transient(format!("{what}: {}", u.error), u.doubt));
            }
        };
        lock(&self.state).hub_reachable = Some(true);
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        match classify(answer.status) {
            Class::Denied => Err(self.denied(status, &answer.body, &what)),
            Class::Retry { doubt } => Err(PushError::Transient {
                error: if answer.status == 429 {
                    format!("{what}: the hub is rate limiting this source")
                } else {
                    format!("{what}: the hub answered {status}")
                },
                retry_after: answer.retry_after,
                doubt,
            }),
            class => Ok(Reply {
                class,
                status,
                retry_after: answer.retry_after,
                body: answer.body,
            }),
        }
    }

    /// The alarm for a 401/403: the hub's code and message, and what to do about it.
    fn denied(&self, status: StatusCode, body: &[u8], what: &str) -> PushError {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let code = parsed
            .as_ref()
            .and_then(|b| b.code)
            .map(code_name)
            .unwrap_or_else(|| match status.as_u16() {
                401 => "unauthorized".into(),
                403 => "forbidden".into(),
                _ => format!("http_{}", status.as_u16()),
            });
        let msg = parsed
            .map(|b| b.error)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        let todo = match code.as_str() {
            "unknown_source" => format!(
                "register this source at the hub (source {}, key {})",
                self.ident.source,
                self.ident.key_line()
            ),
            "revoked_key" => "ask the hub operator why the key was revoked; enrol a new key".into(),
            "unauthorized" | "bad_signature" => format!(
                "check the agent's clock (requests are signed with a timestamp) and that the hub has this source's key {}",
                self.ident.key_line()
            ),
            _ => "check with the hub operator".into(),
        };
        alarm(
            code.clone(),
            format!(
                "{what}: the hub refused ({status}, {code}), {}; {todo}",
                hub_said(&msg)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_one_class() {
        let cases: &[(u16, Class)] = &[
            (200, Class::Done),
            (201, Class::Done),
            (400, Class::Malformed),
            (401, Class::Denied),
            (403, Class::Denied),
            (404, Class::NotFound),
            (408, Class::Retry { doubt: false }),
            (409, Class::Refused),
            (413, Class::TooLarge),
            (422, Class::Refused),
            (429, Class::Retry { doubt: false }),
            (500, Class::Retry { doubt: true }),
            (503, Class::Retry { doubt: true }),
            (302, Class::Retry { doubt: false }),
        ];
        for (status, want) in cases {
            assert_eq!(classify(*status), *want, "{status}");
        }
    }
}
