//! Forwards stored notices to the optional local webhook (`notice_webhook`), in id order,
//! each POSTed as JSON and retried on the [`crate::retry`] schedule until the webhook
//! answers 2xx. The forwarded position is kept in the store, so a restart resumes where it
//! stopped and no notice is skipped. A webhook that refuses a notice permanently (4xx)
//! gets an ERROR log line and the next notice.

use std::sync::Arc;
use std::time::Duration;

use spacesync_shared::wire::Notice;
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::retry::{self, Failure, Schedule};
use crate::store::Store;
use spacesync_shared::err_chain;

/// How a webhook URL is shown in logs and status: scheme, host and port only, since its
/// path or query may carry a secret (an API key).
fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(unparsable URL)".to_string(),
    }
}

async fn post(http: &reqwest::Client, url: &str, n: &Notice) -> Result<(), Failure<String>> {
    let resp = http
        .post(url)
        .json(n)
        .send()
        .await
        .map_err(|e| Failure::Transient {
            error: format!(
                "cannot reach the notice webhook {}: {}",
                shown(url),
                err_chain(&e.without_url())
            ),
            retry_after: None,
        })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let error = format!("the notice webhook {} answered {status}", shown(url));
    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        Err(Failure::Permanent(error))
    } else {
        Err(Failure::Transient {
            error,
            retry_after: retry::parse_retry_after(
                resp.headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()),
            ),
        })
    }
}

/// Runs until `stop` turns true.
pub async fn forward(
    store: Store,
    url: String,
    schedule: Schedule,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "Cannot create the webhook client; notices are not forwarded.");
            return;
        }
    };
    while !*stop.borrow() {
        let pending = store.webhook_cursor().and_then(|c| store.notices_after(c));
        match pending {
            Err(e) => warn!(error = %e, "Cannot read notices to forward."),
            Ok(list) => {
                for n in list {
                    let sent = tokio::select! {
                        r = retry::retry(schedule, "notice webhook", || post(&http, &url, &n)) => r,
                        _ = stop.changed() => return,
                    };
                    match sent {
                        Ok(()) => info!(notice = n.id, "Notice forwarded to the webhook."),
                        Err(e) => {
                            error!(notice = n.id, error = %e, "The webhook refused the notice; skipping it.")
                        }
                    }
                    if let Err(e) = store.set_webhook_cursor(n.id) {
                        warn!(error = %e, "Cannot record the forwarded notice.");
                    }
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod shown_tests {
    #[test]
    fn webhook_urls_are_shown_without_path_or_query() {
        assert_eq!(
            super::shown("http://127.0.0.1:8080/hook?apikey=s3cret"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(
            super::shown("https://user:pw@platform.example/a/b"),
            "https://platform.example/…"
        );
    }
}
