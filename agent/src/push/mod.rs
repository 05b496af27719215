//! The pusher: sends buffered entries to the hub in seq order until each has a receipt.
//!
//! One sync cycle audits the hub's log ([`audit`]), delivers the buffer ([`delivery`]),
//! fetches notices when due
//! ([`notices`]) and prunes delivered entries past retention ([`prune`]). Every request
//! goes through one [`Transport`] and every answer through one classification
//! ([`classify`]). Transient faults (hub not reached, timeouts, 5xx, 429) are retried
//! forever on the one retry policy ([`crate::retry`], `Retry-After` as a floor). Permanent
//! refusals raise an alarm: pushing stops, the status says why, and the same batch is
//! re-probed every `reprobe_secs` until the cause is fixed.
//!
//! # Layout
//! - [`audit`]: the hub's log checked at every sync — checkpoint signature, consistency with
//!   the kept one, inclusion of receipted entries; the log alarm that nothing clears. A
//!   sync whose audit the hub did not let finish is counted after the delivery when the
//!   hub proved in it that it works — it receipted the delivery, or with nothing to
//!   deliver answered a signed head probe ([`audit::unfinished`], [`audit::Worked`]): an
//!   hour of them raises `audit_refused`.
//! - [`witness`]: after a passed audit, the kept checkpoint (and earlier ones the hub asks
//!   for) cosigned and sent to the hub.
//! - [`report`]: after the audit, the log alarm (or its clearing) reported to the hub once
//!   each time it changes, for the hub's source list and dashboard.
//! - [`state`]: what the pusher last saw, shared with the local API and persisted.
//! - [`transport`]: requests and answers; the HTTP client, and the seam tests script.
//! - [`classify`]: what an answer means; the errors of a step.
//! - [`delivery`]: the state machine — hub key, head probing, batches, receipts.
//! - [`notices`]: fetching, storing and acknowledging the hub's notices.
//! - [`prune`]: retention of delivered entries.

pub mod audit;
pub mod classify;
pub mod delivery;
pub mod notices;
pub mod prune;
pub mod report;
pub mod state;
pub mod transport;
pub mod witness;

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use spacesync_shared::clock::Clock;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub use classify::PushError;
pub use state::{Alarm, PushState, SharedPushState, lock};
pub use transport::{HubClient, Transport};

use classify::Link;
use delivery::Delivery;

use crate::config::{Config, secs};
use crate::intake::Identity;
use crate::retry::{Backoff, Schedule};
use crate::store::Store;

/// Prune at least this often, even without new receipts.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A log audit the hub did not let finish ([`Pusher::audit`]), and the push counters as
/// it ended: when both have grown after the delivery, this sync's delivery was receipted.
struct Unfinished {
    /// Why, as the audit's error says it.
    why: String,
    /// [`PushState::pushes`] then.
    pushes: u64,
    /// [`PushState::receipts`] then.
    receipts: u64,
}

/// The pusher task's state.
pub struct Pusher<T = HubClient> {
    cfg: Arc<Config>,
    store: Store,
    clock: Arc<dyn Clock>,
    state: SharedPushState,
    /// Notified when intake appended entries.
    wake: Arc<Notify>,
    /// Notified when new notices were stored (wakes the webhook forwarder).
    notices_stored: Arc<Notify>,
    link: Link<T>,
    /// Signs cosignatures (the source key, as a witness).
    ident: Arc<Identity>,
    delivery: Delivery,
    /// The push state as last written to the store (written again only when it changes).
    persisted: Vec<u8>,
    /// What the local API asks ([`Pusher::asks`]).
    asks_rx: Option<mpsc::Receiver<Ask>>,
    /// Wakes any wait of the pusher when the local API asks something.
    asked: Arc<Notify>,
    /// Reports the log alarm to the hub when it changes ([`report`]).
    reporter: report::Reporter,
}

/// `verify --against-hub` with the agent stopped: the audit of [`audit::audit_all`] over a
/// connection of its own, with the hub key this agent knows (pinned or stored).
pub async fn audit_all_stopped(
    cfg: Arc<Config>,
    ident: Arc<Identity>,
    store: Store,
    clock: Arc<dyn Clock>,
) -> Result<audit::FullAudit, String> {
    let key = crate::hub_key::known(&cfg, &store)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            "the hub's key is not known yet: pin hub_key in agent.toml or run the agent once"
                .to_string()
        })?;
    let client =
        HubClient::new(cfg.clone(), ident.clone(), clock.clone()).map_err(|e| e.to_string())?;
    let state = SharedPushState::default();
    let mut link = Link::new(client, state.clone(), clock.clone(), ident);
    audit::audit_all(&mut link, &store, &key, &state, clock.now())
        .await
        .map_err(|e| e.to_string())
}

/// What the local API asks of the running pusher. It runs in the pusher's own task,
/// between two syncs, so it never races the sync's audit over the kept checkpoint and the
/// alarm. (Clearing the alarm is not asked here: the intake token, which the platform and
/// scrapers hold, must not clear it; `clear-alarm` needs the agent stopped.)
pub enum Ask {
    /// `verify --against-hub` ([`audit::audit_all`]).
    FullAudit(oneshot::Sender<Result<audit::FullAudit, String>>),
}

/// How the local API asks the running pusher ([`Ask`]).
#[derive(Clone)]
pub struct Asks {
    tx: mpsc::Sender<Ask>,
    wake: Arc<Notify>,
}

impl Asks {
    /// Sends one ask and waits for its answer, at most `limit`.
    async fn ask<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<R, String>>) -> Ask,
        limit: Duration,
    ) -> Result<R, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        self.wake.notify_one();
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the agent is stopping".into()),
            Err(_) => Err(format!(
                "no answer within {} s: the pusher is busy with the hub (see `spacesync-agent status`); try again later",
                limit.as_secs()
            )),
        }
    }

    /// `verify --against-hub`, waiting at most `limit`.
    pub async fn full_audit(&self, limit: Duration) -> Result<audit::FullAudit, String> {
        self.ask(Ask::FullAudit, limit).await
    }
}

impl Pusher<HubClient> {
    /// A pusher for `store` talking HTTP to the configured hub; call [`Pusher::run`].
    /// `retired`: a key transition's retired key, while the hub may still name it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        ident: Arc<Identity>,
        store: Store,
        clock: Arc<dyn Clock>,
        state: SharedPushState,
        wake: Arc<Notify>,
        notices_stored: Arc<Notify>,
        retired: Option<transport::RetiredSigner>,
    ) -> Result<Pusher<HubClient>, crate::tls::TlsError> {
        let client =
            HubClient::new(cfg.clone(), ident.clone(), clock.clone())?.with_retired(retired);
        Ok(Pusher::with_transport(
            client,
            cfg,
            ident,
            store,
            clock,
            state,
            wake,
            notices_stored,
        ))
    }
}

impl<T: Transport> Pusher<T> {
    /// A pusher over any transport (tests script the hub's answers).
    #[allow(clippy::too_many_arguments)]
    pub fn with_transport(
        transport: T,
        cfg: Arc<Config>,
        ident: Arc<Identity>,
        store: Store,
        clock: Arc<dyn Clock>,
        state: SharedPushState,
        wake: Arc<Notify>,
        notices_stored: Arc<Notify>,
    ) -> Pusher<T> {
        let link = Link::new(transport, state.clone(), clock.clone(), ident.clone());
        let delivery = Delivery::new(cfg.clone(), ident.clone(), store.clone(), state.clone());
        // What earlier audits kept: the alarm stands across restarts.
        match audit::AuditState::load(&store) {
            Ok(a) => {
                let mut s = lock(&state);
                s.verified_checkpoint_size = a.verified_size();
                s.log_alarm = a.alarm;
            }
            Err(e) => warn!(error = %e, "Cannot read the log audit's state."),
        }
        Pusher {
            cfg,
            store,
            clock,
            state,
            wake,
            notices_stored,
            link,
            ident,
            delivery,
            persisted: Vec::new(),
            asks_rx: None,
            asked: Arc::new(Notify::new()),
            reporter: report::Reporter::default(),
        }
    }

    /// The handle the local API asks the pusher with ([`Ask`]).
    pub fn asks(&mut self) -> Asks {
        let (tx, rx) = mpsc::channel(4);
        self.asks_rx = Some(rx);
        Asks {
            tx,
            wake: self.asked.clone(),
        }
    }

    /// Answers what the local API asked since the last cycle. A full audit runs when the
    /// hub key is known and the hub was reached (`failed` is `None`), else is answered
    /// with why not.
    async fn answer_asks(&mut self, failed: Option<&str>) {
        let Some(mut rx) = self.asks_rx.take() else {
            return;
        };
        while let Ok(ask) = rx.try_recv() {
            let now = self.clock.now();
            match ask {
                Ask::FullAudit(reply) => {
                    let r = match (failed, self.delivery.hub_key()) {
                        (Some(why), _) => Err(format!("the hub could not be reached: {why}")),
                        (None, None) => Err("the hub's key is not known yet".to_string()),
                        (None, Some(key)) => {
                            audit::audit_all(&mut self.link, &self.store, &key, &self.state, now)
                                .await
                                .map_err(|e| e.to_string())
                        }
                    };
                    let _ = reply.send(r);
                }
            }
        }
        self.asks_rx = Some(rx);
    }

    /// The store may be behind the hub (run from a backup copy): the first delivery takes
    /// back what the hub holds of this chain, then tells `caught_up` (intake waits on it).
    pub fn catching_up(mut self, caught_up: watch::Sender<bool>) -> Pusher<T> {
        self.delivery.catching_up(caught_up);
        self
    }

    fn persist(&mut self) {
        let json = serde_json::to_vec(&*lock(&self.state)).unwrap_or_default();
        if json == self.persisted {
            return;
        }
        match self.store.set_push_state(&json) {
            Ok(()) => self.persisted = json,
            Err(e) => warn!(error = %e, "Cannot save the push state."),
        }
    }

    /// Runs sync cycles until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let p = self.cfg.push;
        let mut backoff = Backoff::new(Schedule::from_secs(p.retry_base_secs, p.retry_cap_secs));
        let mut last_notices: Option<Instant> = None;
        let mut last_prune: Option<Instant> = None;
        let mut pruned_at_receipts = u64::MAX;
        while !*stop.borrow() {
            let notices_due = last_notices.is_none_or(|t| t.elapsed() >= secs(p.notices_secs));
            let result = self.cycle(notices_due).await;
            let wait = match result {
                Ok(()) => {
                    backoff.reset();
                    if notices_due {
                        last_notices = Some(Instant::now());
                    }
                    // Prune when new receipts arrived, and at least once a minute.
                    let receipts = lock(&self.state).receipts;
                    if receipts != pruned_at_receipts
                        || last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY)
                    {
                        let days = self.cfg.retention.delivered_days;
                        prune::prune(&self.store, prune::cutoff(days, self.clock.now()));
                        last_prune = Some(Instant::now());
                        pruned_at_receipts = receipts;
                    }
                    Some(secs(p.interval_secs))
                }
                Err(e) => {
                    let delay = self.failed(e, &mut backoff);
                    self.wait(delay, false, &mut stop).await;
                    None
                }
            };
            self.persist();
            if let Some(d) = wait {
                self.wait(d, true, &mut stop).await;
            }
        }
        self.persist();
    }

    /// One sync cycle: audit the hub's log, deliver, then notices when due (failures of
    /// the audit and of notices never stop delivery).
    async fn cycle(&mut self, notices_due: bool) -> Result<(), PushError> {
        // The audit comes before delivery: after a rollback, the hub's tree is seen as the
        // hub keeps it, before this agent's resent entries grow it back.
        if let Err(e) = self.delivery.ensure_hub_key(&mut self.link).await {
            self.answer_asks(Some(&e.to_string())).await;
            return Err(e);
        }
        self.answer_asks(None).await;
        let unfinished = self.audit().await;
        self.report_alarm().await;
        self.delivery.deliver(&mut self.link).await?;
        // Said at once, not after the notices: whoever sees the buffer delivered in the
        // status also sees the result that delivered it.
        self.succeeded();
        if let Some(u) = unfinished {
            self.unfinished(u).await;
        }
        if notices_due
            && let Err(e) = notices::fetch(&mut self.link, &self.store, &self.notices_stored).await
        {
            // The error can quote the hub's answer: escaped.
            warn!(error = ?e.to_string(), "Fetching notices failed; will try again next cycle.");
        }
        Ok(())
    }

    /// One log audit; its failures are logged and retried next sync, never a push error.
    /// Returns what it left unfinished on the hub's side (a refusal, an unreadable answer,
    /// or the hub not reached — [`Pusher::unfinished`] sorts them out once delivery is
    /// done); a failure to cosign or of the local store is not that.
    async fn audit(&mut self) -> Option<Unfinished> {
        let key = self.delivery.hub_key()?;
        let now = self.clock.now();
        let audited = audit::audit(&mut self.link, &self.store, &key, &self.state, now).await;
        let unfinished = match &audited {
            Err(audit::AuditError::Hub(
                e @ (PushError::Transient { .. } | PushError::Alarm { .. }),
            )) => Some(e.to_string()),
            _ => None,
        };
        // Cosign only what this audit verified (and never under the log alarm).
        let audited = match audited {
            Ok(audit::Outcome::Verified(_)) => {
                match witness::cosign_kept(&mut self.link, &self.store, &self.ident, now).await {
                    Ok(_) => witness::cosign_wanted(
                        &mut self.link,
                        &self.store,
                        &self.ident,
                        &key,
                        &self.state,
                        now,
                    )
                    .await
                    .map(|_| ()),
                    Err(e) => Err(e),
                }
            }
            Ok(audit::Outcome::Alarm(_)) => Ok(()),
            Err(e) => Err(e),
        };
        // Where delivery stands as the audit ends: what this sync's delivery adds is its own.
        let unfinished = unfinished.map(|why| {
            let s = lock(&self.state);
            Unfinished {
                why,
                pushes: s.pushes,
                receipts: s.receipts,
            }
        });
        match audited {
            Ok(()) => {}
            // The hub not reached is delivery's to report (once per cycle, not twice).
            Err(e) if lock(&self.state).hub_reachable == Some(false) => {
                debug!(error = ?e.to_string(), "The hub's log could not be audited; hub not reached.")
            }
            // The error can quote the hub's answer: escaped.
            Err(e) => {
                warn!(source = %self.cfg.source, error = ?e.to_string(), "The hub's log could not be audited; will try again next sync.")
            }
        }
        unfinished
    }

    /// Tells the hub when the log alarm changed ([`report`]); a failure is retried next sync.
    async fn report_alarm(&mut self) {
        let now = self.clock.now();
        if let Err(e) = self.reporter.report(&mut self.link, &self.store, now).await {
            // The error can quote the hub's answer: escaped.
            debug!(error = ?e.to_string(), "The log alarm could not be reported to the hub; will try again next sync.");
        }
    }

    /// After a successful delivery, counts an audit of this sync that could not be
    /// finished when the hub proved in this sync, after the audit, that it works
    /// ([`audit::Worked`]): this sync's delivery pushed entries and got receipts that verify,
    /// or else (nothing was to be delivered) the hub answers the signed head probe
    /// ([`audit::probe`]) `2xx` — and raises `audit_refused` when the run is long enough
    /// ([`audit::unfinished`]). A hub that proved nothing is down or broken, not lying: not
    /// counted.
    async fn unfinished(&mut self, u: Unfinished) {
        let worked = {
            let s = lock(&self.state);
            if s.log_alarm.is_some() {
                // Nothing is counted under the log alarm: no probe either.
                return;
            }
            (s.pushes > u.pushes && s.receipts > u.receipts).then_some(audit::Worked::Receipted)
        };
        let worked = match worked {
            Some(w) => w,
            None => match audit::probe(&mut self.link, &self.ident.source).await {
                Ok(()) => audit::Worked::Answered,
                Err(e) => {
                    // The error can quote the hub's answer: escaped.
                    debug!(error = ?e.to_string(), "The audit was not finished and the hub did not answer the signed probe; not counted.");
                    return;
                }
            },
        };
        let now = self.clock.now();
        if let Err(e) = audit::unfinished(&self.store, &self.state, &u.why, worked, now).await {
            warn!(source = %self.cfg.source, error = %e, "Cannot count the unfinished log audit; will count the next.");
        }
    }

    fn succeeded(&mut self) {
        let mut s = lock(&self.state);
        if let Some(a) = s.alarm.take() {
            info!(source = %self.cfg.source, code = %a.code, "Hub accepts again; alarm cleared.");
        }
        s.last_result = Some("ok".into());
        s.last_error = None;
        s.last_success_at = Some(self.clock.now());
    }

    /// Records a failed cycle and says how long to wait before the next.
    fn failed(&mut self, e: PushError, backoff: &mut Backoff) -> Duration {
        let source = self.cfg.source.clone();
        let p = self.cfg.push;
        match e {
            PushError::Transient {
                error,
                retry_after,
                doubt,
            } => {
                if doubt {
                    self.delivery.doubt();
                }
                let delay = backoff.next_delay(retry_after);
                {
                    let mut s = lock(&self.state);
                    s.retries += 1;
                    s.last_result = Some("retrying".into());
                    s.last_error = Some(error.clone());
                }
                warn!(source = %source, error = ?error, delay_ms = delay.as_millis() as u64, "Push failed; will retry.");
                delay
            }
            PushError::Alarm { code, reason } => {
                self.delivery.doubt();
                let now = self.clock.now();
                {
                    let mut s = lock(&self.state);
                    s.last_result = Some("alarm".into());
                    s.last_error = Some(reason.clone());
                    let since = s
                        .alarm
                        .as_ref()
                        .filter(|a| a.code == code)
                        .map(|a| a.since)
                        .unwrap_or(now);
                    s.alarm = Some(Alarm {
                        code: code.clone(),
                        reason: reason.clone(),
                        since,
                    });
                }
                error!(source = %source, code = %code, error = ?reason, reprobe_secs = p.reprobe_secs, "Hub refused permanently; pushing stopped until the cause is fixed.");
                self.persist();
                secs(p.reprobe_secs)
            }
            PushError::Store(e) => {
                lock(&self.state).last_error = Some(e.to_string());
                error!(source = %source, error = %e, "Local store failed while pushing; will retry.");
                backoff.next_delay(None)
            }
        }
    }

    async fn wait(&self, d: Duration, wakeable: bool, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified(), if wakeable => {}
            _ = self.asked.notified() => {}
            _ = stop.changed() => {}
        }
    }
}
