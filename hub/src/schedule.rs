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
use crate::store::{Store, StoreError, WriteBatch};
use serde::{Deserialize, Serialize};

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

/// One pass: raise due notices, then issue a bulletin if one is due. For a hub that is
/// the only scheduler of its store (tests, one process); `serve` runs [`tick_leased`].
pub fn tick(hub: &Hub, book: &NoticeBook) -> Result<(), String> {
    tick_fenced(hub, book, &|_| Ok(true))
}

/// [`tick`] by the holder of `lease`: every write it makes checks, at the head it is
/// committed at, that the lease is still this one (holder and fencing epoch), so a holder
/// that stalled past its lease and wakes up after another replica took over writes nothing.
pub fn tick_leased(hub: &Hub, book: &NoticeBook, lease: &Lease) -> Result<(), String> {
    tick_fenced(hub, book, &|store| holds(store, lease))
}

fn tick_fenced(
    hub: &Hub,
    book: &NoticeBook,
    fence: &dyn Fn(&dyn Store) -> Result<bool, StoreError>,
) -> Result<(), String> {
    let now = hub.clock.now();
    hub.sync().map_err(|e| e.to_string())?;
    let registry = registry::load_all(hub.store.as_ref()).map_err(|e| e.to_string())?;
    let cands = notices::candidates(&hub.campaign, &hub.snapshot().views, &registry, now);
    book.raise_fenced(hub.store.as_ref(), cands, now, fence)
        .map_err(|e| e.to_string())?;
    let numbers =
        bulletin::issue_due_fenced(hub, || book.log(), fence).map_err(|e| e.to_string())?;
    if !numbers.is_empty() {
        info!(?numbers, "Issued scheduled bulletins.");
    }
    Ok(())
}

/// `meta/lease` → the scheduler lease ([`Lease`], JSON).
pub const LEASE_KEY: &[u8] = b"meta/lease";

/// How long a lease holds on the hub clock without being renewed. The holder renews it
/// on every tick once half of it has passed; another replica takes over after it expired.
pub const LEASE_TTL: chrono::Duration = chrono::Duration::seconds(30);

/// The scheduler lease: which process runs the clockwork (notices, scheduled bulletins,
/// webhook deliveries) for every replica on the store, until when (hub clock), and its
/// fencing epoch (moved by one at every change of holder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holding process (`<pid>-<random>`, see [`holder_id`]).
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires_at: DateTime<Utc>,
    /// Moved by one at every change of holder.
    pub epoch: u64,
}

/// A name for this process as a lease holder: its pid and 64 random bits (a restarted
/// process, or one on another machine with the same pid, is another holder).
pub fn holder_id() -> String {
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    format!("{}-{:016x}", std::process::id(), u64::from_be_bytes(r))
}

/// The stored lease.
pub fn read_lease(store: &dyn Store) -> Result<Option<Lease>, StoreError> {
    store
        .get(LEASE_KEY)?
        .map(|v| {
            serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: "meta/lease".into(),
                message: e.to_string(),
            })
        })
        .transpose()
}

/// True when `lease` is still the stored one: same holder, same epoch. Its expiry is not
/// checked here: a lapsed lease nobody took over still fences correctly (every takeover
/// moves the epoch, in a serialized write), and on an accelerated clock (`serve --speed`)
/// a lease of 30 s of hub time lapses between two ticks, which must not stop the only
/// replica from working.
fn holds(store: &dyn Store, lease: &Lease) -> Result<bool, StoreError> {
    Ok(read_lease(store)?.is_some_and(|l| l.holder == lease.holder && l.epoch == lease.epoch))
}

/// Takes the lease for `holder` when nobody holds it or another holder's lapsed (the epoch
/// moves on), or renews it when `holder` has it (lapsed or not: the epoch stays) and half of
/// `ttl` has passed; a serialized write, so
/// of replicas racing for a lapsed lease exactly one gets it. `None` while another
/// replica holds it.
pub fn acquire(
    hub: &Hub,
    holder: &str,
    ttl: chrono::Duration,
) -> Result<Option<Lease>, StoreError> {
    hub.serialized(|hub, st| {
        let now = hub.clock.now();
        let epoch = match read_lease(hub.store.as_ref())? {
            // Its own lease, lapsed or not: nobody took it over, so the epoch stays.
            Some(l) if l.holder == holder => {
                if l.expires_at - now > ttl / 2 {
                    return Ok(Some(l));
                }
                l.epoch
            }
            Some(l) if l.expires_at > now => return Ok(None),
            Some(l) => l.epoch + 1,
            None => 1,
        };
        let lease = Lease {
            holder: holder.to_string(),
            expires_at: now + ttl,
            epoch,
        };
        let mut b = WriteBatch::new();
        b.put(
            LEASE_KEY.to_vec(),
            serde_json::to_vec(&lease).unwrap_or_default(),
        );
        st.head = hub.store.commit(st.head, b)?;
        Ok(Some(lease))
    })
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
    let holder = holder_id();
    let mut held = false;
    loop {
        let (h, b, me) = (hub.clone(), book.clone(), holder.clone());
        // Only the lease holder works; the others keep asking, and take over once the
        // holder stopped renewing (it died, or lost the database) and its lease lapsed.
        let pass = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let Some(lease) = acquire(&h, &me, LEASE_TTL).map_err(|e| e.to_string())? else {
                return Ok(false);
            };
            tick_leased(&h, &b, &lease)?;
            Ok(true)
        })
        .await;
        let holding = match pass {
            Ok(Ok(holding)) => holding,
            Ok(Err(e)) => {
                error!(error = %e, "The hub's scheduled work failed; will retry.");
                false
            }
            Err(e) => {
                error!(error = %e, "The scheduled task panicked.");
                false
            }
        };
        if holding != held {
            if holding {
                info!(holder = %holder, "This replica holds the scheduler lease: it raises notices, issues scheduled bulletins and delivers webhooks.");
            } else {
                info!(holder = %holder, "Another replica holds the scheduler lease (or it could not be renewed); this one serves only.");
            }
            held = holding;
        }
        if holding && !hooks.is_empty() {
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
