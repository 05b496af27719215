//! The delivery state machine: from the first unreceipted seq, batch after batch, until the
//! hub has receipted everything the buffer holds.
//!
//! 1. know the hub's key ([`crate::hub_key`]: pinned, stored, or fetched from
//!    `GET /v1/pubkey` and trusted on first use);
//! 2. after start and after any doubt (a timeout, a connection cut after sending, a 5xx,
//!    fewer receipts than sent) ask the hub which seq it holds and resume from there — a
//!    hub holding more than this agent, or another entry at that seq, is a fork (alarm);
//! 3. push batches from the first unreceipted seq, asking for one receipt per batch (a hub
//!    that does not know the ask sends one per entry); each receipt is verified with the hub
//!    key (a batch receipt's one signature, then each entry in it) and stored; an entry
//!    counts as delivered only with a valid receipt. A `409`/`422`
//!    asks for a resend from an earlier seq (gap), or refuses for good (alarm) or for now
//!    (retry); a `413` halves the batch; the batch grows back after each success.
//!
//! The state between cycles is the [`Cursor`]; everything else is in the store.

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use spacesync_shared::chain::{ChainVerifier, KeySchedule};
use spacesync_shared::entry::Entry;
use spacesync_shared::keys;
use spacesync_shared::record::Record;
use spacesync_shared::wire::{
    BatchReceipt, EntriesPage, ErrorBody, IngestBatch, IngestResponse, MAX_ENTRIES_PAGE,
    MAX_ENTRIES_PAGE_BYTES, PATH_AGENT_ENTRIES, PATH_HUB_PUBKEY, Receipt, ReceiptError,
    RefusalCode, SourceHead,
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::classify::{Class, Link, PushError, alarm, code_name, transient};
use super::state::{SharedPushState, lock};
use super::transport::{Request, Transport};
use crate::config::Config;
use crate::hub_key::{self, HubKeyError};
use crate::intake::Identity;
use crate::store::{Adopt, Store, StoreError, Stored};

/// Where the next batch starts and how big it may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Set when the hub asked for entries below the first unreceipted one.
    pub resend_from: Option<u64>,
    /// Most entries in the next batch (halved on 413, grown back on success).
    pub max_entries: usize,
    /// Most bytes in the next batch (as `max_entries`).
    pub max_bytes: usize,
    /// Ask the hub for its head before the next push.
    pub doubt: bool,
}

/// Answers in a row to take back from one seq that brought nothing (an empty page, or one
/// refused as not what was asked for) before taking back stops with an alarm.
pub const TAKE_BACK_STALLS: u32 = 5;

/// What one batch came to, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    /// Every entry of it was receipted.
    Receipted,
    /// The hub asked for a resend from an earlier seq.
    Resend,
    /// The hub found it too large; the next one is half its size.
    Halved,
}

/// Delivers one source's buffered entries to the hub.
pub struct Delivery {
    cfg: Arc<Config>,
    ident: Arc<Identity>,
    store: Store,
    state: SharedPushState,
    /// The key receipts must verify with, once known.
    hub_key: Option<VerifyingKey>,
    cursor: Cursor,
    /// Set while the store may be behind the hub (run from a backup copy) and intake
    /// waits: told `true` once the store holds everything the hub holds of this chain and
    /// this agent's key signs the next seq. Only then may entries be taken back from the
    /// hub, as nothing else appends meanwhile.
    catch_up: Option<watch::Sender<bool>>,
    /// The seq taking back last asked from, and how many answers in a row from it brought
    /// nothing: a hub that keeps saying it holds more but sends nothing must not keep the
    /// agent waiting unseen ([`TAKE_BACK_STALLS`]).
    stalled: (u64, u32),
}

impl From<HubKeyError> for PushError {
    fn from(e: HubKeyError) -> PushError {
        match e {
            HubKeyError::Store(e) => PushError::Store(e),
            other => alarm("bad_hub_key", other.to_string()),
        }
    }
}

impl Delivery {
    /// A delivery that starts by asking the hub where it stands.
    pub fn new(
        cfg: Arc<Config>,
        ident: Arc<Identity>,
        store: Store,
        state: SharedPushState,
    ) -> Delivery {
        let cursor = Cursor {
            resend_from: None,
            max_entries: cfg.push.max_entries,
            max_bytes: cfg.push.max_bytes,
            doubt: true,
        };
        Delivery {
            cfg,
            ident,
            store,
            state,
            hub_key: None,
            cursor,
            catch_up: None,
            stalled: (0, 0),
        }
    }

    /// Takes back what the hub holds of this chain before intake opens, then tells
    /// `caught_up` (see the `catch_up` field).
    pub fn catching_up(&mut self, caught_up: watch::Sender<bool>) {
        self.catch_up = Some(caught_up);
    }

    /// The key receipts (and the hub's checkpoints) verify with, once known.
    pub fn hub_key(&self) -> Option<VerifyingKey> {
        self.hub_key
    }

    /// The cursor (tests and logs).
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Verifies and stores the receipts of an answer that did not come over a link (the
    /// offline bundle's receipts file) exactly as those of a pushed batch: against the
    /// entries not yet receipted, with `key`. Returns the delivered seq after it.
    pub fn accept_offline(
        &mut self,
        key: VerifyingKey,
        answer: &IngestResponse,
    ) -> Result<u64, PushError> {
        self.hub_key = Some(key);
        let (head, _) = self.store.head()?;
        let acked = self.store.acked()?;
        let pending = self
            .store
            .entries_from(acked + 1, head, usize::MAX, usize::MAX)?;
        self.accept_receipts(&pending, answer)?;
        Ok(self.store.acked()?)
    }

    /// The hub may have acted on a request whose answer was lost, or refused for good: ask
    /// it where it stands before pushing again.
    pub fn doubt(&mut self) {
        self.cursor.doubt = true;
    }

    /// Delivers everything buffered; `Ok` when the hub has receipted the whole buffer.
    pub async fn deliver<T: Transport>(&mut self, link: &mut Link<T>) -> Result<(), PushError> {
        self.ensure_hub_key(link).await?;
        if self.cursor.doubt {
            self.query_head(link).await?;
            self.cursor.doubt = false;
        }
        loop {
            let acked = self.store.acked()?;
            // Only what is on disk leaves the agent: an entry appended but not yet flushed
            // could be lost to a power cut and its seq reused after it reached the hub.
            let head = self.store.durable_head();
            let from = self
                .cursor
                .resend_from
                .map_or(acked + 1, |r| r.min(acked + 1));
            if from > head {
                return Ok(());
            }
            let batch = self.store.entries_from(
                from,
                head,
                self.cursor.max_entries,
                self.cursor.max_bytes,
            )?;
            if batch.first().map(|s| s.seq) != Some(from) {
                let (pruned, _) = self.store.pruned()?;
                if from <= pruned {
                    return Err(alarm(
                        "pruned",
                        format!(
                            "the hub asks for seq {from}, which this agent delivered and pruned (retention); the hub lost entries it had receipted — tell the hub operator"
                        ),
                    ));
                }
                return Err(StoreError::Corrupt(format!("entry {from} is missing")).into());
            }
            // The batch grows back only after one was receipted: growing after a 413
            // would undo the halving and send the same refused batch again.
            if self.push_batch(link, &batch).await? == Pushed::Receipted {
                let p = self.cfg.push;
                self.cursor.max_entries = (self.cursor.max_entries * 2).min(p.max_entries);
                self.cursor.max_bytes = (self.cursor.max_bytes * 2).min(p.max_bytes);
            }
        }
    }

    /// Knows the hub key ([`crate::hub_key`]): pinned, stored, or fetched once.
    pub async fn ensure_hub_key<T: Transport>(
        &mut self,
        link: &mut Link<T>,
    ) -> Result<(), PushError> {
        if self.hub_key.is_some() {
            return Ok(());
        }
        if let Some(key) = hub_key::known(&self.cfg, &self.store)? {
            self.hub_key = Some(key);
            return Ok(());
        }
        let req = Request::HubKey;
        let reply = link.exchange(&req).await?;
        if reply.class != Class::Done {
            return Err(reply.unexpected(&req.what()));
        }
        let url = self.cfg.hub_url(PATH_HUB_PUBKEY);
        let (key, line) = hub_key::trust_first_use(&self.store, &url, &reply.body).await?;
        warn!(hub_key = ?line, hub = %self.cfg.hub, "Trusting the hub key on first use; compare it with the hub operator's and pin it as hub_key in agent.toml.");
        self.hub_key = Some(key);
        Ok(())
    }

    async fn query_head<T: Transport>(&mut self, link: &mut Link<T>) -> Result<(), PushError> {
        let req = Request::Head;
        let reply = link.exchange(&req).await?;
        if reply.class != Class::Done {
            return Err(PushError::Transient {
                error: format!("{}: the hub answered {}", req.what(), reply.status),
                retry_after: reply.retry_after,
                doubt: true,
            });
        }
        let sh: SourceHead = serde_json::from_slice(&reply.body)
            .map_err(|e| transient(format!("the hub's head answer is unreadable: {e}"), true))?;
        lock(&self.state).hub_held_through = Some(sh.held_through);
        let (mut head, _) = self.store.head()?;
        let held = sh.held_through;
        if held > head {
            if self.catch_up.is_none() {
                // Intake is open: entries taken back now could land under seqs it is
                // about to use. The next start takes them back before intake opens.
                self.store.mark_catch_up()?;
                return Err(alarm(
                    "fork",
                    format!(
                        "the hub holds seq {held} of source {} but this agent's chain ends at seq {head}: this data directory is older than what the hub has (copied back without `spacesync-agent restore`?); stop the agent now and start it again — at start it takes seqs {}–{held} back from the hub, checked against its own key and chain, before it accepts records",
                        self.ident.source,
                        head + 1
                    ),
                ));
            }
            self.take_back(link, held).await?;
            head = self.store.head()?.0;
        }
        if held > 0 {
            let (pruned, pruned_hash) = self.store.pruned()?;
            let local = match self.store.entry(held)? {
                Some(env) => Some(env.payload_hash()),
                None if held == pruned => Some(pruned_hash),
                None => None,
            };
            if let Some(h) = local
                && h != sh.head
            {
                return Err(alarm(
                    "fork",
                    format!(
                        "the hub's entry at seq {held} has hash {} but this agent's has {h}: the chains differ (fork); ask the hub operator",
                        sh.head
                    ),
                ));
            }
        }
        if self.catch_up.is_some() {
            self.open_intake()?;
        }
        let acked = self.store.acked()?;
        if held < acked {
            error!(
                held,
                acked,
                "The hub holds fewer entries than this agent has receipts for; resending them."
            );
            self.cursor.resend_from = Some(held + 1);
        } else {
            self.cursor.resend_from = None;
        }
        debug!(held, head, acked, "Hub head.");
        Ok(())
    }

    /// The keys along this chain as the store records them (its own key alone while it
    /// was never rotated): the schedule entries taken back from the hub must verify under.
    fn key_schedule(&self) -> Result<KeySchedule, PushError> {
        let history = self.store.key_history()?;
        Ok(if history.is_empty() {
            KeySchedule::single(self.ident.key.verifying_key())
        } else {
            history.iter().fold(KeySchedule::new(), |k, (from, line)| {
                k.with(*from, keys::parse_public_key(line).ok())
            })
        })
    }

    /// After catching up: the store holds what the hub holds. Intake opens only when
    /// this agent's key is the one in force for the next seq (a key rotated after the
    /// backup was made signs there, and this directory does not hold it).
    fn open_intake(&mut self) -> Result<(), PushError> {
        let (head, _) = self.store.head()?;
        let mine = self.ident.key.verifying_key();
        let schedule = self.key_schedule()?;
        if schedule.key_for(head + 1).ok() != Some(&mine) {
            return Err(alarm(
                "key_not_held",
                format!(
                    "the hub holds this source's chain through seq {head}, signed from a key rotation after the backup this data directory was restored from by a key this agent does not hold (agent.key is {}); it cannot sign seq {}, and accepts no records. Restore the agent.key of that rotation, or run `spacesync-agent rotate-key --lost` and have the hub operator run the `spacesync-hub agents rotate` line it prints",
                    keys::public_key_line(&mine),
                    head + 1
                ),
            ));
        }
        self.store.caught_up()?;
        if let Some(tx) = self.catch_up.take() {
            tx.send_replace(true);
        }
        info!(
            head,
            "The store holds what the hub holds of this chain; intake is open."
        );
        Ok(())
    }

    /// Takes back from the hub, page by page, the entries it holds of this chain from the
    /// first unreceipted seq through `held`: each above the head must be signed by this
    /// source's key in force at its seq and chain from the head (the rules of
    /// [`ChainVerifier`]); each at or below it must be this agent's own entry; the page's
    /// batch receipt must verify with the hub key and cover every entry. A page is stored
    /// whole, flushed, before the next is asked for (a kill between pages resumes from the
    /// new head). Anything that fails a check is a fork: nothing of that page is kept.
    async fn take_back<T: Transport>(
        &mut self,
        link: &mut Link<T>,
        held: u64,
    ) -> Result<(), PushError> {
        let Some(key) = self.hub_key else {
            return Err(transient(
                "no hub key to verify receipts with".into(),
                false,
            ));
        };
        let (head, head_hash) = self.store.head()?;
        info!(
            head,
            held,
            "This store is behind the hub (restored from a backup); taking back what the hub holds."
        );
        let mut v = ChainVerifier::with_keys(
            self.ident.source.clone(),
            self.key_schedule()?,
            self.ident.scope,
            Some(self.ident.campaign.id.clone()),
        )
        .resume(head, head_hash);
        let mut history = self.store.key_history()?;
        let source = self.ident.source.clone();
        let fork = |seq: u64, why: String| {
            alarm(
                "fork",
                format!(
                    "the hub's entry at seq {seq} of source {source} is not this agent's chain ({why}); nothing of it was taken back — ask the hub operator"
                ),
            )
        };
        loop {
            let (head, _) = self.store.head()?;
            if head >= held {
                return Ok(());
            }
            let from = self.store.acked()? + 1;
            let limit = self.cfg.push.max_entries.clamp(1, MAX_ENTRIES_PAGE);
            let req = Request::Entries { from, limit };
            let reply = link.exchange(&req).await?;
            match reply.class {
                Class::Done => {}
                Class::NotFound => {
                    return Err(alarm(
                        "fork",
                        format!(
                            "the hub holds seq {held} of source {} but this agent's chain ends at seq {head}, and the hub does not serve {PATH_AGENT_ENTRIES} (an older hub) to take them back; upgrade the hub, or restore the latest data directory",
                            self.ident.source
                        ),
                    ));
                }
                _ => return Err(reply.unexpected(&req.what())),
            }
            let page: EntriesPage = match serde_json::from_slice(&reply.body) {
                Ok(p) => p,
                Err(e) => {
                    return Err(self.stalled(
                        from,
                        held,
                        format!("{}: the answer is unreadable: {e}", req.what()),
                    ));
                }
            };
            if page.source != self.ident.source {
                return Err(fork(from, format!("the page is of source {}", page.source)));
            }
            if let Some(why) = page_fault(&page, from, limit) {
                return Err(self.stalled(from, held, format!("{}: {why}", req.what())));
            }
            // Every entry of the page: ours below the head, chained and signed above it.
            let mut adopt = Adopt {
                first: head + 1,
                ..Adopt::default()
            };
            let mut hashes = Vec::with_capacity(page.entries.len());
            for (seq, env) in (from..).zip(&page.entries) {
                let hash = env.payload_hash();
                hashes.push((seq, hash));
                if seq <= head {
                    // Above the delivered seq, so never pruned: held, or the store is damaged.
                    let mine = self
                        .store
                        .entry(seq)?
                        .map(|e| e.payload_hash())
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("entry {seq} is missing below the head"))
                        })?;
                    if mine != hash {
                        return Err(fork(
                            seq,
                            "another entry than this agent's at that seq".into(),
                        ));
                    }
                    continue;
                }
                let entry = v.push(env).map_err(|e| fork(seq, e.to_string()))?;
                match &entry.record {
                    Record::Recommendation(_) => adopt.quota_add.push((
                        seq,
                        serde_json::to_vec(&entry.record.to_value()).unwrap_or_default(),
                    )),
                    Record::Withdrawal(w) => adopt.quota_remove.push(w.target_seq),
                    _ => {}
                }
                if let Ok(Some(new)) = entry.transition() {
                    if history.is_empty() {
                        history.push((1, self.ident.key_line()));
                    }
                    history.push((seq + 1, keys::public_key_line(&new)));
                    adopt.key_history = Some(history.clone());
                }
                adopt
                    .envelopes
                    .push(serde_json::to_vec(env).unwrap_or_default());
                adopt.head_hash = hash;
            }
            // The receipt: the hub key's, for exactly these entries.
            let Some(renv) = &page.batch_receipt else {
                return Err(transient(
                    format!("{}: the hub sent entries without a receipt", req.what()),
                    false,
                ));
            };
            let receipt = BatchReceipt::open(renv, &key).map_err(|e| {
                alarm(
                    "bad_receipt",
                    format!(
                        "the receipt of the entries the hub holds does not verify with the hub key {} ({e}); nothing was taken back — confirm the hub's key with the hub operator",
                        keys::public_key_line(&key)
                    ),
                )
            })?;
            let mut leaves = Vec::with_capacity(hashes.len());
            for (seq, hash) in &hashes {
                let r = receipt
                    .receipt(*seq)
                    .filter(|r| r.source == self.ident.source);
                match r {
                    Some(r) if r.entry_hash == *hash => leaves.push((*seq, r.log_index)),
                    _ => {
                        return Err(alarm(
                            "bad_receipt",
                            format!(
                                "the hub's receipt of the entries it holds does not cover seq {seq} of this source as sent; nothing was taken back — ask the hub operator"
                            ),
                        ));
                    }
                }
            }
            self.check_leaves(leaves)?;
            adopt.receipt = serde_json::to_vec(renv).unwrap_or_default();
            adopt.receipted = hashes.iter().map(|(s, _)| *s).collect();
            let taken = adopt.envelopes.len();
            let acked = self.store.adopt(&adopt)?;
            self.stalled = (0, 0);
            lock(&self.state).receipts += adopt.receipted.len() as u64;
            info!(
                from,
                through = from + hashes.len() as u64 - 1,
                taken,
                acked,
                "Took back entries the hub holds."
            );
        }
    }

    /// The error for an answer to take back from `from` that brought nothing (`why`): a
    /// fault of the hub, retried; after [`TAKE_BACK_STALLS`] in a row from the same seq an
    /// alarm that names both heads and what to do, until a page is taken back.
    fn stalled(&mut self, from: u64, held: u64, why: String) -> PushError {
        let (at, n) = self.stalled;
        let n = if at == from { n.saturating_add(1) } else { 1 };
        self.stalled = (from, n);
        if n < TAKE_BACK_STALLS {
            return transient(format!("{why}; nothing of it was taken back"), false);
        }
        let head = self.store.head().map(|h| h.0).unwrap_or(from - 1);
        alarm(
            "take_back_stalled",
            format!(
                "the hub says it holds source {}'s chain through seq {held}, but this agent's ends at seq {head} and {n} answers in a row to take back seq {from} on brought nothing (the last: {why}); intake stays closed until it holds them. Ask the hub operator to check the hub (`spacesync-hub verify`), or restore a newer backup of this data directory, one that holds seq {held}",
                self.ident.source
            ),
        )
    }

    async fn push_batch<T: Transport>(
        &mut self,
        link: &mut Link<T>,
        batch: &[Stored],
    ) -> Result<Pushed, PushError> {
        let (first, last) = match (batch.first(), batch.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => return Ok(Pushed::Receipted),
        };
        let req = Request::Ingest {
            first,
            last,
            batch: IngestBatch {
                source: self.ident.source.clone(),
                entries: batch.iter().map(|s| s.envelope.clone()).collect(),
            },
        };
        let what = req.what();
        lock(&self.state).pushes += 1;
        let reply = link.exchange(&req).await?;
        let status = reply.status;
        let ingest = || -> Result<IngestResponse, PushError> {
            serde_json::from_slice(&reply.body).map_err(|e| {
                transient(
                    format!("{what}: the hub answered {status} with an unreadable body: {e}"),
                    true,
                )
            })
        };
        match reply.class {
            Class::Done => {
                let r = ingest()?;
                lock(&self.state).hub_held_through = Some(r.held_through);
                let got = self.accept_receipts(batch, &r)?;
                self.after_receipts(got);
                if got < last {
                    return Err(transient(
                        format!(
                            "{what}: the hub answered {status} but sent receipts only through seq {got} (holds through {})",
                            r.held_through
                        ),
                        true,
                    ));
                }
                debug!(first, last, "Batch receipted.");
                Ok(Pushed::Receipted)
            }
            Class::Refused => {
                let r = ingest()?;
                lock(&self.state).hub_held_through = Some(r.held_through);
                let got = self.accept_receipts(batch, &r)?;
                self.after_receipts(got);
                let Some(refusal) = r.refused.first() else {
                    return Err(transient(
                        format!("{what}: the hub answered {status} without saying why"),
                        true,
                    ));
                };
                let seq = refusal.seq.map(|s| format!(" seq {s}")).unwrap_or_default();
                if refusal.code == RefusalCode::Gap {
                    let from = r.resend_from.unwrap_or(r.held_through + 1);
                    if from >= first {
                        // Resending could not help: the batch already started there. Ask
                        // the hub where it stands, after a backoff, instead of looping.
                        return Err(transient(
                            format!(
                                "{what}: the hub reports a gap and asks for seq {from}, but the batch started at {first}"
                            ),
                            true,
                        ));
                    }
                    warn!(resend_from = from, "The hub reports a gap; resending.");
                    self.cursor.resend_from = Some(from);
                    return Ok(Pushed::Resend);
                }
                let reason = format!(
                    "{what}: the hub refused{seq} ({}): {}",
                    code_name(refusal.code),
                    refusal.reason
                );
                if refusal.code.is_permanent() {
                    Err(alarm(code_name(refusal.code), reason))
                } else {
                    Err(PushError::Transient {
                        error: reason,
                        retry_after: reply.retry_after,
                        doubt: false,
                    })
                }
            }
            Class::TooLarge => {
                if batch.len() == 1 {
                    return Err(alarm(
                        "too_large",
                        format!(
                            "{what}: the hub refuses entry {first} as too large even alone; ask the hub operator to raise its limit"
                        ),
                    ));
                }
                self.cursor.max_entries = (batch.len() / 2).max(1);
                self.cursor.max_bytes = (batch.iter().map(|s| s.size).sum::<usize>() / 2).max(1);
                warn!(
                    max_entries = self.cursor.max_entries,
                    "The hub says the batch is too large; halving it."
                );
                Ok(Pushed::Halved)
            }
            Class::Malformed => {
                let parsed: Option<ErrorBody> = serde_json::from_slice(&reply.body).ok();
                Err(alarm(
                    "malformed",
                    format!(
                        "{what}: the hub says the batch is malformed ({}); this is an agent bug — please report it with the agent's log",
                        parsed.map(|b| b.error).unwrap_or_default()
                    ),
                ))
            }
            Class::NotFound | Class::Denied | Class::Retry { .. } => Err(reply.unexpected(&what)),
        }
    }

    fn after_receipts(&mut self, got: u64) {
        if let Some(r) = self.cursor.resend_from
            && got >= r
        {
            let acked = self.store.acked().unwrap_or(0);
            self.cursor.resend_from = (got < acked).then_some(got + 1);
        }
    }

    /// Verifies and stores the receipts — one per entry, or one batch receipt stored once
    /// for the entries it covers; returns the highest seq of the batch that has one
    /// (counting from the batch's first seq, contiguously), or `first - 1`.
    fn accept_receipts(&self, batch: &[Stored], answer: &IngestResponse) -> Result<u64, PushError> {
        let Some(first) = batch.first().map(|s| s.seq) else {
            return Ok(0);
        };
        let receipts = &answer.receipts;
        if receipts.is_empty() && answer.batch_receipt.is_none() {
            return Ok(first - 1);
        }
        let Some(key) = self.hub_key else {
            return Err(transient(
                "no hub key to verify receipts with".into(),
                false,
            ));
        };
        let unverified = |e: ReceiptError| {
            if let ReceiptError::Malformed(why) = &e {
                return alarm(
                    "bad_receipt",
                    format!(
                        "a receipt from the hub verifies but cannot be true or read ({why}); nothing of this answer counts as delivered — ask the hub operator"
                    ),
                );
            }
            alarm(
                "bad_receipt",
                format!(
                    "a receipt from the hub does not verify with the hub key {} ({e}); if the hub's key changed, confirm the new key with the hub operator and set hub_key in agent.toml",
                    keys::public_key_line(&key)
                ),
            )
        };
        let mut rows = Vec::with_capacity(receipts.len());
        // Each stored receipt's seq and leaf index, checked together before any is stored.
        let mut leaves = Vec::new();
        for env in receipts {
            let r = Receipt::open(env, &key).map_err(unverified)?;
            if self.matches(batch, &r)? {
                leaves.push((r.seq, r.log_index));
                rows.push((r.seq, serde_json::to_vec(env).unwrap_or_default()));
            }
        }
        let mut covered = Vec::new();
        if let Some(env) = &answer.batch_receipt {
            // One signature for the batch; each entry is then checked as its own receipt.
            for r in BatchReceipt::open(env, &key)
                .map_err(unverified)?
                .receipts()
            {
                if self.matches(batch, &r)? {
                    leaves.push((r.seq, r.log_index));
                    covered.push(r.seq);
                }
            }
        }
        self.check_leaves(leaves)?;
        if !rows.is_empty() {
            self.store.record_receipts(&rows)?;
        }
        if let Some(env) = answer
            .batch_receipt
            .as_ref()
            .filter(|_| !covered.is_empty())
        {
            self.store
                .record_batch_receipt(&serde_json::to_vec(env).unwrap_or_default(), &covered)?;
        }
        lock(&self.state).receipts += (rows.len() + covered.len()) as u64;
        let receipted: std::collections::HashSet<u64> =
            rows.iter().map(|(s, _)| *s).chain(covered).collect();
        let mut got = first - 1;
        while batch
            .get(usize::try_from(got + 1 - first).unwrap_or(usize::MAX))
            .is_some()
            && receipted.contains(&(got + 1))
        {
            got += 1;
        }
        Ok(got)
    }

    /// Refuses, before anything is stored, an answer whose receipts (`(seq, leaf index)`
    /// of each verified receipt for an entry of the batch, both forms together) cannot all
    /// be true of one append-only log: the hub logs a source's entries in seq order, so a
    /// later seq is at a higher leaf — within the answer (one seq at two leaves, two seqs
    /// at one leaf, a later seq lower) and above the leaf of the receipt already stored
    /// for the seq before the answer's first.
    fn check_leaves(&self, mut leaves: Vec<(u64, u64)>) -> Result<(), PushError> {
        let contradiction = |what: String| {
            alarm(
                "bad_receipt",
                format!(
                    "the hub's receipts cannot be true: {what}, but a log holds a source's later seq at a higher leaf; nothing of this answer counts as delivered — ask the hub operator"
                ),
            )
        };
        leaves.sort_unstable();
        leaves.dedup();
        let Some(&(first, _)) = leaves.first() else {
            return Ok(());
        };
        // A stored receipt that no longer reads is `verify`'s to name; it does not stop
        // delivery (the check within the answer still holds).
        let mut last = match first.checked_sub(1).filter(|s| *s > 0) {
            Some(prev) => match self.store.receipt(prev) {
                Ok(r) => r.map(|r| (prev, r.log_index)),
                Err(e) => {
                    warn!(seq = prev, error = %e, "The stored receipt before this answer does not read; run `spacesync-agent verify`.");
                    None
                }
            },
            None => None,
        };
        for &(seq, leaf) in &leaves {
            match last {
                Some((pseq, pleaf)) if pseq == seq => {
                    return Err(contradiction(format!(
                        "seq {seq} at leaf {pleaf} and at leaf {leaf}"
                    )));
                }
                Some((pseq, pleaf)) if pleaf >= leaf => {
                    return Err(contradiction(format!(
                        "seq {seq} at leaf {leaf}, seq {pseq} before it at leaf {pleaf}"
                    )));
                }
                _ => {}
            }
            last = Some((seq, leaf));
        }
        Ok(())
    }

    /// Whether a verified receipt is for an entry of `batch` (one outside it is ignored);
    /// an alarm when it names another source, or another entry at that seq (a fork).
    fn matches(&self, batch: &[Stored], r: &Receipt) -> Result<bool, PushError> {
        if r.source != self.ident.source {
            return Err(alarm(
                "bad_receipt",
                format!(
                    "the hub sent a receipt for source {} to source {}; ask the hub operator",
                    r.source, self.ident.source
                ),
            ));
        }
        let first = batch.first().map_or(0, |s| s.seq);
        let Some(stored) = r
            .seq
            .checked_sub(first)
            .and_then(|i| batch.get(usize::try_from(i).ok()?))
        else {
            debug!(seq = r.seq, "Receipt outside the batch ignored.");
            return Ok(false);
        };
        let mine = stored.envelope.payload_hash();
        if r.entry_hash != mine {
            return Err(alarm(
                "fork",
                format!(
                    "the hub's receipt for seq {} names entry hash {} but this agent's entry has {mine}: the chains differ (fork); ask the hub operator",
                    r.seq, r.entry_hash
                ),
            ));
        }
        Ok(true)
    }
}

/// What is wrong with a take-back page asked from `from` with `limit`, before any of its
/// entries is checked against this chain: `None` when it holds at most `limit` entries,
/// within [`MAX_ENTRIES_PAGE_BYTES`] of payload (its first entry always goes), numbered
/// from `from` on without a gap. A page that fails this is the hub's fault, not a fork:
/// nothing of it is kept and it is asked for again. (An entry that does not read is left
/// to the chain checks, which name it.)
pub(super) fn page_fault(page: &EntriesPage, from: u64, limit: usize) -> Option<String> {
    let n = page.entries.len();
    if n == 0 {
        return Some(format!(
            "the hub sent no entry from seq {from} on but says it holds through seq {}",
            page.held_through
        ));
    }
    if n > limit {
        return Some(format!(
            "the hub sent {n} entries, more than the {limit} asked for"
        ));
    }
    let bytes: usize = page.entries.iter().map(|e| e.payload.len()).sum();
    if n > 1 && bytes > MAX_ENTRIES_PAGE_BYTES {
        return Some(format!(
            "the hub sent {n} entries of {bytes} bytes, more than a page holds ({MAX_ENTRIES_PAGE_BYTES})"
        ));
    }
    (from..).zip(&page.entries).find_map(|(want, env)| {
        let got = Entry::from_payload(&env.payload).ok()?.seq;
        (got != want).then(|| {
            format!(
                "the page asked from seq {from} holds seq {got} where seq {want} belongs (not the hub's entries from seq {from} in order)"
            )
        })
    })
}
