//! The hub's clockwork, on the hub's (possibly accelerated) clock: raises notices from
//! the rules, delivers them to webhooks with retries, and issues scheduled bulletins.
//!
//! # Webhook signatures
//! Each delivery is a `POST` of the notice JSON with two headers:
//! - `X-Spacesync-Timestamp`: the hub clock at sending, in Unix seconds (decimal);
//! - `X-Spacesync-Signature`: base64 of the Ed25519 signature over
//!   [`webhook_message`] = `spacesync-webhook-v1` `\n` timestamp `\n` body.
//!
//! The key is the hub's webhook key (`<data>/webhook.key`), separate from the key that
//! signs receipts, checkpoints and bulletins, so a webhook signature can never pass for
//! one of those. Its public line is printed by `spacesync-hub webhook-key`; receivers
//! configure it and never take a key from the request. A receiver refuses a timestamp
//! more than a few minutes from its clock (the signature binds it, so an old delivery
//! replayed later is spotted) and de-duplicates on the notice `id`: a delivery whose
//! answer was lost is sent again, with a fresh timestamp. [`verify_webhook`] does all the
//! checks except de-duplication.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use tokio::sync::watch;
use tracing::{error, info};

use crate::bulletin;
use crate::hub::Hub;
use crate::notices::{self, NoticeBook, Webhook};
use crate::registry;

/// Header carrying the Ed25519 signature (base64) over [`webhook_message`].
pub const WEBHOOK_SIGNATURE_HEADER: &str = "x-spacesync-signature";
/// Header carrying the sending time, Unix seconds, bound by the signature.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "x-spacesync-timestamp";
/// The context string that starts every signed webhook message.
pub const WEBHOOK_CONTEXT: &str = "spacesync-webhook-v1";

/// The bytes a webhook signature covers: `spacesync-webhook-v1\n<timestamp>\n<body>`.
pub fn webhook_message(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{WEBHOOK_CONTEXT}\n{timestamp}\n").into_bytes();
    m.extend_from_slice(body);
    m
}

/// Why a receiver refuses a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookVerifyError {
    /// The timestamp header is missing or not decimal Unix seconds.
    #[error("the X-Spacesync-Timestamp header is missing or not Unix seconds")]
    BadTimestamp,
    /// The signature header is missing or not a base64 64-byte signature.
    #[error("the X-Spacesync-Signature header is missing or not a base64 Ed25519 signature")]
    BadSignatureHeader,
    /// The signature does not verify with the configured key.
    #[error("the signature does not verify with the configured webhook key")]
    BadSignature,
    /// The timestamp is too far from the receiver's clock (a replay, or a skewed clock).
    #[error(
        "the delivery is {age_s} s from this receiver's clock (more than {max_s} s): refused as a possible replay"
    )]
    Stale {
        /// Receiver's clock minus the timestamp, seconds (negative: from the future).
        age_s: i64,
        /// The allowance.
        max_s: i64,
    },
}

/// What a receiver checks: the signature over context, timestamp and body with the
/// configured key, then that the timestamp is within `max_age` of `now` (either way).
pub fn verify_webhook(
    key: &VerifyingKey,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
    max_age: chrono::Duration,
) -> Result<(), WebhookVerifyError> {
    let ts: i64 = timestamp
        .and_then(|t| t.trim().parse().ok())
        .ok_or(WebhookVerifyError::BadTimestamp)?;
    let sig = signature
        .and_then(|s| STANDARD.decode(s.trim()).ok())
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .ok_or(WebhookVerifyError::BadSignatureHeader)?;
    spacesync_shared::sig::verify(
        key,
        &webhook_message(ts, body),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| WebhookVerifyError::BadSignature)?;
    let age_s = now.timestamp().saturating_sub(ts);
    let max_s = max_age.num_seconds();
    if age_s.saturating_abs() > max_s {
        return Err(WebhookVerifyError::Stale { age_s, max_s });
    }
    Ok(())
}

/// One pass: raise due notices, then issue a bulletin if one is due.
pub fn tick(hub: &Hub, book: &NoticeBook) -> Result<(), String> {
    let now = hub.clock.now();
    let registry = registry::load_all(hub.store.as_ref()).map_err(|e| e.to_string())?;
    let cands = notices::candidates(&hub.campaign, &hub.snapshot().views, &registry, now);
    book.raise(hub.store.as_ref(), cands, now)
        .map_err(|e| e.to_string())?;
    let numbers = bulletin::issue_due(hub, || book.log()).map_err(|e| e.to_string())?;
    if !numbers.is_empty() {
        info!(?numbers, "Issued scheduled bulletins.");
    }
    Ok(())
}

/// Delivers due webhook notices once each, signed with `key` (the webhook key, not the
/// log key); failures are rescheduled by the book.
pub async fn deliver_webhooks(
    hub: &Arc<Hub>,
    book: &NoticeBook,
    client: &reqwest::Client,
    hooks: &[Webhook],
    key: &SigningKey,
) {
    for (notice, hook) in book.due_webhooks(hooks) {
        let body = serde_json::to_vec(&notice).unwrap_or_default();
        let timestamp = hub.clock.now().timestamp();
        let sig = STANDARD.encode(key.sign(&webhook_message(timestamp, &body)).to_bytes());
        let result = client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string())
            .header(WEBHOOK_SIGNATURE_HEADER, sig)
            .body(body)
            .send()
            .await;
        let outcome = match result {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            // reqwest names the URL in its errors; the URL is a secret.
            Err(e) => Err(e.without_url().to_string()),
        };
        if let Err(e) = book.record_webhook(
            hub.store.as_ref(),
            notice.id,
            &hook,
            outcome,
            hub.clock.now(),
        ) {
            error!(error = %e, "Recording a webhook delivery failed.");
        }
    }
}

/// Runs until `stop` turns true, every `tick_every` of real time. Webhook deliveries are
/// signed with `webhook_key`.
pub async fn run(
    hub: Arc<Hub>,
    book: Arc<NoticeBook>,
    hooks: Vec<Webhook>,
    webhook_key: SigningKey,
    tick_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // No redirects: a webhook answering 3xx must not steer signed notices elsewhere.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    loop {
        let (h, b) = (hub.clone(), book.clone());
        match tokio::task::spawn_blocking(move || tick(&h, &b)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "The hub's scheduled work failed; will retry."),
            Err(e) => error!(error = %e, "The scheduled task panicked."),
        }
        if !hooks.is_empty() {
            deliver_webhooks(&hub, &book, &client, &hooks, &webhook_key).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(tick_every) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signatures_bind_context_timestamp_and_body() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let body = br#"{"id":1}"#;
        let ts = 1_542_679_200;
        let now = DateTime::from_timestamp(ts + 30, 0).unwrap();
        let max = chrono::Duration::minutes(5);
        let sig = STANDARD.encode(key.sign(&webhook_message(ts, body)).to_bytes());
        let ts_s = ts.to_string();
        let check = |ts: &str, sig: &str, body: &[u8], now| {
            verify_webhook(&public, Some(ts), Some(sig), body, now, max)
        };
        assert_eq!(
            webhook_message(ts, body),
            b"spacesync-webhook-v1\n1542679200\n{\"id\":1}"
        );
        assert_eq!(check(&ts_s, &sig, body, now), Ok(()));
        // The same delivery replayed an hour later: refused by its (signed) timestamp.
        let later = now + chrono::Duration::hours(1);
        assert!(matches!(
            check(&ts_s, &sig, body, later),
            Err(WebhookVerifyError::Stale { .. })
        ));
        // Refreshing the timestamp breaks the signature; so does another body.
        let fresh = later.timestamp().to_string();
        assert_eq!(
            check(&fresh, &sig, body, later),
            Err(WebhookVerifyError::BadSignature)
        );
        assert_eq!(
            check(&ts_s, &sig, br#"{"id":2}"#, now),
            Err(WebhookVerifyError::BadSignature)
        );
        // A signature over the bare body (the old scheme, or another use of the key) fails.
        let bare = STANDARD.encode(key.sign(body).to_bytes());
        assert_eq!(
            check(&ts_s, &bare, body, now),
            Err(WebhookVerifyError::BadSignature)
        );
        assert_eq!(
            verify_webhook(&public, None, Some(&sig), body, now, max),
            Err(WebhookVerifyError::BadTimestamp)
        );
        assert_eq!(
            verify_webhook(&public, Some(&ts_s), Some("nope"), body, now, max),
            Err(WebhookVerifyError::BadSignatureHeader)
        );
    }
}
