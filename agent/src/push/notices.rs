//! Notices from the hub: fetched with signed requests, stored durably, acknowledged, and
//! handed to the webhook forwarder ([`crate::notices`]). Fetching never stops delivery: a
//! failure is logged and tried again next cycle.

use spacesync_shared::wire::{NoticeAck, NoticesPage};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::classify::{Class, Link, PushError, transient};
use super::transport::{Request, Transport};
use crate::store::Store;

/// Notices asked for per request.
const LIMIT: usize = 100;
/// Most pages per cycle.
const PAGES: usize = 10;

/// Fetches the notices after the stored cursor, stores them (flushed), wakes the forwarder
/// through `stored`, and acknowledges them to the hub.
pub async fn fetch<T: Transport>(
    link: &mut Link<T>,
    store: &Store,
    stored: &Notify,
) -> Result<(), PushError> {
    for _ in 0..PAGES {
        let after = store.notice_cursor()?;
        let req = Request::Notices {
            after,
            limit: LIMIT,
        };
        let reply = link.exchange(&req).await?;
        match reply.class {
            Class::Done => {}
            Class::NotFound => {
                debug!("The hub has no notices endpoint.");
                return Ok(());
            }
            _ => return Err(reply.unexpected(&req.what())),
        }
        let page: NoticesPage = serde_json::from_slice(&reply.body)
            .map_err(|e| transient(format!("the hub's notices are unreadable: {e}"), false))?;
        if page.notices.is_empty() {
            return Ok(());
        }
        let through = store.put_notices(&page.notices)?;
        store.flush_async().await?;
        for n in &page.notices {
            warn!(notice = n.id, rule = ?n.rule, subject = %n.subject, deadline = %n.deadline.map(|d| d.to_string()).unwrap_or_default(), text = ?n.text_en, "Notice from the hub.");
        }
        stored.notify_one();
        let ack = link
            .exchange(&Request::AckNotices(NoticeAck { through }))
            .await?;
        if ack.class != Class::Done {
            warn!(status = %ack.status, through, "The hub did not take the notice acknowledgement; it will be sent again.");
        }
        if page.notices.len() < LIMIT {
            return Ok(());
        }
    }
    Ok(())
}
