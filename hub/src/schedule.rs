//! The hub's clockwork: issues scheduled bulletins when their time comes on the hub's
//! (possibly accelerated) clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use crate::bulletin;
use crate::ingest::Hub;

/// Runs until `stop` turns true, checking every `tick` of real time.
pub async fn run(hub: Arc<Hub>, tick: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let h = hub.clone();
        let res = tokio::task::spawn_blocking(move || {
            bulletin::issue_due(&h, || serde_json::Value::Array(Vec::new()))
        })
        .await;
        match res {
            Ok(Ok(numbers)) if !numbers.is_empty() => {
                info!(?numbers, "Issued scheduled bulletins.")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => error!(error = %e, "Issuing a scheduled bulletin failed; will retry."),
            Err(e) => error!(error = %e, "The bulletin task panicked."),
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}
