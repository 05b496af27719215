//! The hub's clockwork, on the hub's (possibly accelerated) clock: raises notices from
//! the rules, delivers them to webhooks with retries, and issues scheduled bulletins.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Signer;
use spacesync_shared::keys::public_key_line;
use tokio::sync::watch;
use tracing::{error, info};

use crate::bulletin;
use crate::ingest::Hub;
use crate::notices::{self, Webhook};
use crate::registry;

/// Header carrying the hub's Ed25519 signature (base64) over a webhook body.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "x-spacesync-signature";
/// Header carrying the hub's public key line.
pub const WEBHOOK_KEY_HEADER: &str = "x-spacesync-key";

/// One pass: raise due notices, then issue a bulletin if one is due.
pub fn tick(hub: &Hub) -> Result<(), String> {
    let now = hub.clock.now();
    let registry = registry::load_all(hub.store.as_ref()).map_err(|e| e.to_string())?;
    let cands = {
        let st = hub.state();
        notices::candidates(&hub.campaign, &st.views, &registry, now)
    };
    hub.notices
        .raise(hub.store.as_ref(), cands, now)
        .map_err(|e| e.to_string())?;
    let numbers = bulletin::issue_due(hub, || hub.notices.log_json()).map_err(|e| e.to_string())?;
    if !numbers.is_empty() {
        info!(?numbers, "Issued scheduled bulletins.");
    }
    Ok(())
}

/// Delivers due webhook notices once each; failures are rescheduled by the book.
pub async fn deliver_webhooks(hub: &Arc<Hub>, client: &reqwest::Client, hooks: &[Webhook]) {
    for (notice, url) in hub.notices.due_webhooks(hooks) {
        let body = serde_json::to_vec(&notice).unwrap_or_default();
        let sig = STANDARD.encode(hub.key.sign(&body).to_bytes());
        let result = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(WEBHOOK_SIGNATURE_HEADER, sig)
            .header(
                WEBHOOK_KEY_HEADER,
                public_key_line(&hub.key.verifying_key()),
            )
            .body(body)
            .send()
            .await;
        let outcome = match result {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = hub.notices.record_webhook(
            hub.store.as_ref(),
            notice.id,
            &url,
            outcome,
            hub.clock.now(),
        ) {
            error!(error = %e, "Recording a webhook delivery failed.");
        }
    }
}

/// Runs until `stop` turns true, every `tick_every` of real time.
pub async fn run(
    hub: Arc<Hub>,
    hooks: Vec<Webhook>,
    tick_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    loop {
        let h = hub.clone();
        match tokio::task::spawn_blocking(move || tick(&h)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "The hub's scheduled work failed; will retry."),
            Err(e) => error!(error = %e, "The scheduled task panicked."),
        }
        if !hooks.is_empty() {
            deliver_webhooks(&hub, &client, &hooks).await;
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
