//! The hub's ingest algorithm: verified, idempotent appends into the log, the hub's own
//! signed entries (extensions, notice rule changes), and registry changes. The state it changes is [`crate::hub`]'s.
//!
//! One writer at a time holds the state lock for the chain checks, the append and the
//! flush; signature verification runs before the lock with Ed25519 batch verification.
//! A batch is one atomic store write and one flush, whatever its size. The chain rules
//! are those of [`spacesync_shared::chain`], the one verifier: this module adds only the
//! hub's clock rules and words the refusals. After a durable change the writer's guard
//! publishes a new snapshot for readers (see [`crate::hub::StateGuard`]).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use spacesync_shared::chain::{
    Admitted, ChainError, ChainVerifier, History, KeySchedule, Opened, first_repeat,
};
use spacesync_shared::dsse::Digest;
use spacesync_shared::entry::Entry;
use spacesync_shared::keys::parse_public_key;
use spacesync_shared::sig::TorsionDebt;
use spacesync_shared::wire::{
    BatchReceipt, IngestBatch, IngestResponse, Receipt, ReceiptForm, ReceiptItem, Refusal,
    RefusalCode,
};
use spacesync_shared::{Campaign, Envelope, SourceId};
use tracing::{debug, error, info, warn};

use crate::hub::{Alarm, ConflictError, Head, Held, Hub, LoadError, MAX_CONFLICT_RETRIES, State};
use crate::log::{LogError, LogRecord, RecordRef};
use crate::registry::{self, RegistryError, SourceRecord, SourceStatus};
use crate::store::{StoreError, WriteBatch, keys};
use crate::views::{HUB_ENTRY_PAYLOAD_TYPE, HubEntry, Meta, NoticeRuleChanged};
use spacesync_shared::campaign::{NoticeRule, RuleError};

/// How long before its campaign's start an entry's `recorded_at` may be. Agents are set
/// up and tested in the weeks before a campaign opens; an entry stamped earlier than that
/// (a clock reset to 1970, a forged back-dated entry) is refused as `invalid`.
pub const RECORDED_AT_SLACK: Duration = Duration::days(30);

/// The earliest `recorded_at` ingest accepts: the campaign's first day, at midnight in the
/// campaign's time zone, less [`RECORDED_AT_SLACK`].
pub fn earliest_recorded_at(campaign: &Campaign) -> DateTime<Utc> {
    let local_midnight = campaign
        .starts_on
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    local_midnight
        - Duration::seconds(i64::from(campaign.utc_offset.local_minus_utc()))
        - RECORDED_AT_SLACK
}

/// A batch whose size, source and signatures [`Hub::check`] has checked, for
/// [`Hub::append`].
pub struct CheckedBatch {
    batch: IngestBatch,
    reg: SourceRecord,
    /// The source's keys along its chain, as registered when the batch was checked.
    keys: KeySchedule,
    /// Each envelope read, with its signature verified up to the first that fails.
    opened: Vec<Opened>,
}

impl CheckedBatch {
    /// The source the batch names.
    pub fn source(&self) -> &SourceId {
        &self.batch.source
    }

    /// True when every entry decodes and carries a valid signature by the key registered
    /// for its seq: the batch was made by the source's key holder (or replays what it
    /// made). Only such a batch may spend the source's request budget.
    pub fn authentic(&self) -> bool {
        self.opened.iter().all(Opened::authentic)
    }

    /// True when some entry's seq is above `held_through`: the batch is more than a resend
    /// of entries the hub holds (which anyone who saw the batch could replay).
    pub fn goes_beyond(&self, held_through: u64) -> bool {
        self.opened
            .iter()
            .any(|o| o.entry().is_ok_and(|e| e.seq > held_through))
    }
}

/// A batch [`Hub::check_deferring`] checked except for the torsion test of its
/// signatures' `R`s, which waits in [`UnsettledBatch::debt`] to be settled together with
/// other batches' ([`TorsionDebt::settle`]).
pub struct UnsettledBatch {
    /// The `R`s still to be tested; take it to settle it elsewhere.
    pub debt: TorsionDebt,
    checked: CheckedBatch,
}

impl UnsettledBatch {
    /// The checked batch, given the verdict `clean` that [`TorsionDebt::settle`] gave
    /// its debt. When some `R` carried torsion, the signatures are judged again on the
    /// exact path, which names the first entry refused (blocking: Ed25519).
    pub fn settle(self, clean: bool) -> CheckedBatch {
        let mut checked = self.checked;
        if !clean {
            let entries = &checked.batch.entries;
            checked.opened = entries.iter().map(Opened::read).collect();
            checked.keys.verify_batch(entries, &mut checked.opened);
        }
        checked
    }
}

impl ConflictError for IngestError {
    fn is_conflict(&self) -> bool {
        matches!(
            self,
            IngestError::Store(StoreError::Conflict { .. })
                | IngestError::Log(LogError::Store(StoreError::Conflict { .. }))
        )
    }
}

impl From<LoadError> for RegistryError {
    fn from(e: LoadError) -> RegistryError {
        match e {
            LoadError::Store(e) => RegistryError::Store(e),
            LoadError::Log(e) => RegistryError::Log(e),
        }
    }
}

impl ConflictError for RegistryError {
    fn is_conflict(&self) -> bool {
        matches!(
            self,
            RegistryError::Store(StoreError::Conflict { .. })
                | RegistryError::Log(LogError::Store(StoreError::Conflict { .. }))
        )
    }
}

/// Why a notice rule change is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RuleChangeError {
    /// The campaign file does not list the setting in `[lagging] adjustable`.
    #[error(
        "notice rule {rule} may not be changed on the running hub: the campaign file's [lagging] adjustable does not list it ({listed}); list it there and restart the hub, or leave it as the file sets it"
    )]
    NotAdjustable {
        /// The setting.
        rule: NoticeRule,
        /// What the file lists, in words.
        listed: String,
    },
    /// The value is refused.
    #[error(transparent)]
    Value(#[from] RuleError),
    /// Storage failed; nothing was changed.
    #[error("the hub could not record the notice rule change; retry later ({0})")]
    Store(#[from] StoreError),
    /// The tree state failed.
    #[error("the hub's log is damaged; an operator must run `spacesync-hub verify` ({0})")]
    Log(#[from] LogError),
}

impl From<LoadError> for RuleChangeError {
    fn from(e: LoadError) -> RuleChangeError {
        match e {
            LoadError::Store(e) => RuleChangeError::Store(e),
            LoadError::Log(e) => RuleChangeError::Log(e),
        }
    }
}

impl ConflictError for RuleChangeError {
    fn is_conflict(&self) -> bool {
        matches!(
            self,
            RuleChangeError::Store(StoreError::Conflict { .. })
                | RuleChangeError::Log(LogError::Store(StoreError::Conflict { .. }))
        )
    }
}

/// What one admission of a batch decided (see [`Hub::admit_locked`]).
struct Admission {
    /// Held entries, new and resent, with their index entries.
    receipts: Vec<(u64, Held)>,
    refused: Vec<Refusal>,
    resend_from: Option<u64>,
    status: u16,
    appended: usize,
}

/// Why an ingest request is refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The source is not registered.
    #[error(
        "source {0} is not registered at this hub; ask the ministry admin to run `spacesync-hub agents add --source {0} …` with this agent's `pubkey`"
    )]
    UnknownSource(SourceId),
    /// The source is revoked.
    #[error("source {0} has been revoked; nothing more is accepted from it")]
    Revoked(SourceId),
    /// An empty batch.
    #[error("the batch has no entries")]
    Empty,
    /// Too many entries.
    #[error("the batch has {got} entries; at most {max} are accepted per request")]
    TooMany {
        /// Entries sent.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// A seq appears twice in one batch (an agent never sends that; a batch repeating one
    /// captured entry a thousand times is an attack on the hub's work, refused before any
    /// signature is checked).
    #[error(
        "entry {index} of the batch repeats seq {seq}; a batch holds each seq of its source once"
    )]
    RepeatedSeq {
        /// 0-based position in the batch.
        index: usize,
        /// The repeated seq.
        seq: u64,
    },
    /// Storage failed; nothing was acknowledged.
    #[error("the hub could not store the batch; retry later ({0})")]
    Store(#[from] StoreError),
    /// The tree state failed.
    #[error("the hub's log is damaged; an operator must run `spacesync-hub verify` ({0})")]
    Log(#[from] LogError),
}

impl From<LoadError> for IngestError {
    fn from(e: LoadError) -> IngestError {
        match e {
            LoadError::Store(e) => IngestError::Store(e),
            LoadError::Log(e) => IngestError::Log(e),
        }
    }
}

/// The answer to a batch that was read: HTTP status and body.
#[derive(Debug)]
pub struct IngestOutcome {
    /// 200 (all held), 409 (gap or fork) or 422 (an entry refused).
    pub status: u16,
    /// The body.
    pub response: IngestResponse,
    /// Entries newly appended.
    pub appended: usize,
}

/// The keys `reg` registers along its chain, for the chain verifier (a key line that does
/// not parse keeps its place and verifies nothing).
pub fn key_schedule(reg: &SourceRecord) -> KeySchedule {
    reg.keys.iter().fold(KeySchedule::new(), |keys, k| {
        keys.with(k.from_seq, parse_public_key(&k.key).ok())
    })
}

/// The hub's source index as the chain verifier's [`History`]: the hash held for a seq,
/// keeping the index entry last read so a resend's receipt is issued without reading it
/// twice.
struct HeldIndex<'a> {
    hub: &'a Hub,
    source: &'a SourceId,
    last: Option<(u64, Held)>,
}

impl HeldIndex<'_> {
    /// The index entry of `seq`, if it was the last one looked up.
    fn take(&mut self, seq: u64) -> Option<Held> {
        self.last.take().filter(|(s, _)| *s == seq).map(|(_, h)| h)
    }
}

impl History for HeldIndex<'_> {
    type Error = StoreError;
    fn hash_at(&mut self, seq: u64) -> Result<Option<Digest>, StoreError> {
        let held = self.hub.held(self.source, seq)?;
        self.last = held.map(|h| (seq, h));
        Ok(held.map(|h| h.hash))
    }
}

/// The signed receipts for the held entries of a batch (seq and index entry, in seq order),
/// in the form the sender asked for: one [`Receipt`] per entry, or one [`BatchReceipt`].
/// Signed once the writer lock is let go.
fn sign_receipts(
    key: &ed25519_dalek::SigningKey,
    source: &SourceId,
    held: Vec<(u64, Held)>,
    form: ReceiptForm,
) -> (Vec<Envelope>, Option<Envelope>) {
    match form {
        ReceiptForm::PerEntry => {
            let each = held
                .into_iter()
                .map(|(seq, h)| {
                    Receipt {
                        source: source.clone(),
                        seq,
                        entry_hash: h.hash,
                        log_index: h.log_index,
                        received_at: h.received_at,
                    }
                    .sign(key)
                })
                .collect();
            (each, None)
        }
        ReceiptForm::Batch if held.is_empty() => (Vec::new(), None),
        ReceiptForm::Batch => {
            let entries = held
                .into_iter()
                .map(|(seq, h)| ReceiptItem {
                    seq,
                    entry_hash: h.hash,
                    log_index: h.log_index,
                    received_at: h.received_at,
                })
                .collect();
            let batch = BatchReceipt {
                source: source.clone(),
                entries,
            };
            (Vec::new(), Some(batch.sign(key)))
        }
    }
}

impl Hub {
    /// Verifies and appends one source's batch, answering one receipt per entry. Blocking:
    /// run it off the async runtime.
    pub fn ingest(&self, batch: IngestBatch) -> Result<IngestOutcome, IngestError> {
        self.ingest_with(batch, ReceiptForm::PerEntry)
    }

    /// [`Hub::ingest`], answering receipts in `form`.
    pub fn ingest_with(
        &self,
        batch: IngestBatch,
        form: ReceiptForm,
    ) -> Result<IngestOutcome, IngestError> {
        self.append_with(self.check(batch)?, form)
    }

    /// The first half of [`Hub::ingest`], outside the writer lock: the batch's size, its
    /// source (registered, not revoked) and every signature. Blocking (Ed25519): run it off
    /// the async runtime. The HTTP layer decides between the two halves whose budget the
    /// request spends (see [`CheckedBatch::authentic`]).
    pub fn check(&self, batch: IngestBatch) -> Result<CheckedBatch, IngestError> {
        let unsettled = self.check_deferring(batch)?;
        let clean = TorsionDebt::settle(&[&unsettled.debt])[0];
        Ok(unsettled.settle(clean))
    }

    /// [`Hub::check`] but for the torsion test of the signatures' `R`s, left in the
    /// answer's debt so that many batches pay its fixed cost once (the HTTP layer settles
    /// the debts of the batches checked meanwhile together: `CheckPool::torsion_free`).
    pub fn check_deferring(&self, batch: IngestBatch) -> Result<UnsettledBatch, IngestError> {
        let source = batch.source.clone();
        if batch.entries.is_empty() {
            return Err(IngestError::Empty);
        }
        if batch.entries.len() > self.limits.max_batch_entries {
            return Err(IngestError::TooMany {
                got: batch.entries.len(),
                max: self.limits.max_batch_entries,
            });
        }
        let reg = self
            .snapshot()
            .registry
            .get(&source)
            .cloned()
            .ok_or_else(|| IngestError::UnknownSource(source.clone()))?;
        if reg.status == SourceStatus::Revoked {
            return Err(IngestError::Revoked(source));
        }
        // A repeated seq is refused before any signature is checked. Unreadable entries and
        // entries of another source are refused later, each with its own reason; gaps and
        // order are judged under the lock (409).
        let mut opened: Vec<Opened> = batch.entries.iter().map(Opened::read).collect();
        if let Some((index, seq)) = first_repeat(&source, &opened) {
            return Err(IngestError::RepeatedSeq { index, seq });
        }
        // Signatures first and outside the writer lock, so one batch's verification runs
        // while another batch is being written; processing stops at the first bad one.
        let keys = key_schedule(&reg);
        let mut debt = TorsionDebt::new();
        keys.verify_batch_deferring(&batch.entries, &mut opened, &mut debt);
        Ok(UnsettledBatch {
            debt,
            checked: CheckedBatch {
                batch,
                reg,
                keys,
                opened,
            },
        })
    }

    /// Cheap admission test for a client that has used up its allowance of failed
    /// requests: does the batch's first entry carry a valid signature by its registered
    /// source? One Ed25519 verification, whatever the batch's size.
    pub fn first_entry_verifies(&self, batch: &IngestBatch) -> bool {
        let Some(env) = batch.entries.first() else {
            return false;
        };
        let Ok(entry) = Entry::from_payload(&env.payload) else {
            return false;
        };
        match self.snapshot().registry.get(&batch.source) {
            Some(reg) if reg.status != SourceStatus::Revoked => {
                key_schedule(reg).verify(env, entry.seq).is_ok()
            }
            _ => false,
        }
    }

    /// The second half of [`Hub::ingest`], under the writer lock: the chain verifier's
    /// judgement of each entry in order (seq continuity, resends and forks against the
    /// source index, the `prev` chain, scope), the hub's clock rules, then the append, the
    /// flush and the receipts. The valid prefix is appended; the first fault is refused.
    /// Answers one receipt per entry. Blocking.
    pub fn append(&self, checked: CheckedBatch) -> Result<IngestOutcome, IngestError> {
        self.append_with(checked, ReceiptForm::PerEntry)
    }

    /// [`Hub::append`], answering receipts in `form`: one per entry, or one signed
    /// [`BatchReceipt`] for every entry held (resent ones with the index and time they were
    /// first held with, as their own receipts say).
    pub fn append_with(
        &self,
        checked: CheckedBatch,
        form: ReceiptForm,
    ) -> Result<IngestOutcome, IngestError> {
        let CheckedBatch {
            batch,
            reg,
            keys,
            opened,
        } = checked;
        let source = batch.source.clone();
        // Millisecond precision, as the source index stores it: a receipt re-issued for a
        // resent entry must be byte-identical to the first one.
        let now = self.clock.now().trunc_subsecs(3);
        let earliest = earliest_recorded_at(&self.campaign);

        // The checked entries go whole to the first admission. Where other processes
        // commit too, the head is often found moved and a copy is kept for the next try;
        // elsewhere a next try is rare and reads and checks the batch again (a copy for
        // every batch was ~1 % of an ingest's CPU).
        let mut spare = Some(opened);
        let mut st = self.writer()?;
        let mut tries = 0;
        let admitted = loop {
            // Cheap (persistent maps): what to go back to if the commit does not land.
            let saved = State::clone(&st);
            let opened = match spare.take() {
                Some(o) if self.store.shared_by_processes() => {
                    spare = Some(o.clone());
                    o
                }
                Some(o) => o,
                None => keys.open_batch(&batch.entries),
            };
            match self.admit_locked(&mut st, &batch, &reg, &keys, opened, now, earliest) {
                Ok(a) => break a,
                Err(IngestError::Store(StoreError::Conflict { expected, found }))
                    if tries < MAX_CONFLICT_RETRIES =>
                {
                    // Another replica committed first: bring the state up to the store
                    // and judge the batch again (what it appended is now held, and a
                    // resend of it is answered as a resend, with the same receipts).
                    tries += 1;
                    debug!(source = %source, expected, found, tries, "The head moved; catching up before admitting the batch again.");
                    *st = saved;
                    self.catch_up(&mut st)?;
                }
                Err(IngestError::Store(e))
                    if tries < MAX_CONFLICT_RETRIES && self.stale_attempt(&saved) =>
                {
                    // Made on state another replica's commit had moved past (see
                    // `Hub::stale_attempt`): it would have conflicted.
                    tries += 1;
                    debug!(source = %source, error = %e, tries, "An attempt on state the store has moved past failed; catching up before admitting the batch again.");
                    *st = saved;
                    self.catch_up(&mut st)?;
                }
                Err(e) => {
                    if let IngestError::Store(se) = &e {
                        error!(source = %source, error = %se, "Storing a batch failed; nothing was acknowledged.");
                    }
                    // The state as of its head: the next writer catches up from there,
                    // finding this write in the store if it landed after all.
                    *st = saved;
                    return Err(e);
                }
            }
        };
        let Admission {
            receipts,
            refused,
            resend_from,
            status,
            appended,
        } = admitted;
        if appended == 0 && !receipts.is_empty() {
            // Only entries held before: their write may be one whose flush failed (its
            // batch is applied, and the state caught up after the failure holds it). A
            // receipt waits for a flush that covers them; when everything is already
            // on disk, sled's flush has nothing to write.
            if let Err(e) = self.store.flush() {
                error!(source = %source, error = %e, "Flushing before receipting resent entries failed; nothing was acknowledged.");
                return Err(e.into());
            }
        }
        for r in &refused {
            // The reason quotes what the batch said (field names, ids): Debug-escaped, so a
            // newline in it cannot start a forged log line. Anyone can send refusals, so
            // they are logged at most once per REFUSAL_LOG_EVERY (with the count since the
            // last line); every one is at debug level.
            debug!(source = %source, seq = r.seq, code = ?r.code, reason = ?r.reason, "Refused an entry.");
            if let Some(n) = self.refusal_log.admit() {
                warn!(source = %source, seq = r.seq, code = ?r.code, reason = ?r.reason, refused = n, "Refused an entry (one line per 10 s; `refused` counts all since the last line).");
            }
        }
        let held_through = st.heads.get(&source).map_or(0, |h| h.seq);
        // Everything is durable and published; the signatures (one per receipt unless the
        // sender asked for one per batch) need not hold up the next writer.
        drop(st);
        let (receipts, batch_receipt) = sign_receipts(&self.key, &source, receipts, form);
        Ok(IngestOutcome {
            status,
            response: IngestResponse {
                held_through,
                receipts,
                refused,
                resend_from,
                batch_receipt,
            },
            appended,
        })
    }

    /// One admission of a checked batch under the writer lock, against `st`: the chain
    /// verifier's judgement of each entry, the hub's clock rules, then the commit at
    /// `st.head`. On an error `st` may hold what the attempt left in memory; the caller
    /// puts back the state it kept.
    #[allow(clippy::too_many_arguments)]
    fn admit_locked(
        &self,
        st: &mut State,
        batch: &IngestBatch,
        reg: &SourceRecord,
        keys: &KeySchedule,
        opened: Vec<Opened>,
        now: DateTime<Utc>,
        earliest: DateTime<Utc>,
    ) -> Result<Admission, IngestError> {
        let source = batch.source.clone();
        // `check` read the registry outside the lock: a revocation or a key rotation may
        // have committed since (here, or at another replica and caught up). The batch is
        // judged by the record in force now — signatures checked again under it when its
        // keys changed — or an old key's entry could land at a seq its successor signs,
        // which `verify` would then refuse forever.
        let current = st
            .registry
            .get(&source)
            .cloned()
            .ok_or_else(|| IngestError::UnknownSource(source.clone()))?;
        if current.status == SourceStatus::Revoked {
            return Err(IngestError::Revoked(source));
        }
        let (reg, keys, opened) = if current == *reg {
            (current, keys.clone(), opened)
        } else {
            let keys = key_schedule(&current);
            let mut opened: Vec<Opened> = batch.entries.iter().map(Opened::read).collect();
            keys.verify_batch(&batch.entries, &mut opened);
            (current, keys, opened)
        };
        let reg = &reg;
        let head = st.heads.get(&source).copied().unwrap_or_default();
        let mut chain = ChainVerifier::with_keys(
            source.clone(),
            keys,
            reg.scope,
            Some(self.campaign.id.clone()),
        )
        .resume(head.seq, head.hash);
        let mut index = HeldIndex {
            hub: self,
            source: &source,
            last: None,
        };
        let mut receipts = Vec::new();
        let mut refused = Vec::new();
        let mut resend_from = None;
        let mut status = 200;
        // Entries new to the hub, in order, with their envelopes and payload hashes.
        let mut fresh: Vec<(Entry, &Envelope, Digest)> = Vec::new();
        // The source's record as its key transitions in this batch leave it.
        let mut rotated = reg.clone();
        for (env, opened) in batch.entries.iter().zip(opened) {
            let held_through = chain.next_seq() - 1;
            let unreadable = opened.entry().err().map(ToString::to_string);
            let fault = match chain.admit(env, opened, &mut index)? {
                Ok(Admitted::Next(entry)) => match self
                    .clock_fault(&entry, now, earliest)
                    .or_else(|| transition_fault(&st.registry, &mut rotated, &entry, now))
                {
                    None => {
                        // The chain's head is now this entry's payload hash, as read
                        // with it (hashing the payload again cost 0.6 % of an ingest).
                        fresh.push((entry, env, chain.head()));
                        continue;
                    }
                    Some(refusal) => {
                        refused.push(refusal);
                        status = 422;
                        break;
                    }
                },
                Ok(Admitted::Resent(entry)) => match index.take(entry.seq) {
                    Some(h) => {
                        receipts.push((entry.seq, h));
                        continue;
                    }
                    // Only an entry of this batch can be resent without being held, and a
                    // batch repeating a seq was refused whole by `check`.
                    None => ChainError::Duplicate { seq: entry.seq },
                },
                Err(fault) => fault,
            };
            if let ChainError::Fork { seq } = fault {
                // The signature was checked first: this is a validly signed second entry,
                // which proves equivocation.
                let detail = format!(
                    "seq {seq}: a different entry is already held for this seq (equivocation); the hub keeps the first"
                );
                self.raise_alarm(st, &source, seq, RefusalCode::Fork, &detail, now);
            }
            refused.push(refusal(
                &fault,
                unreadable,
                held_through,
                &source,
                &self.campaign.id,
            ));
            resend_from = fault.resend_from();
            status = if fault.is_conflict() { 409 } else { 422 };
            break;
        }

        let appended = fresh.len();
        if appended > 0 {
            let mut wb = WriteBatch::new();
            let mut new_heads = head;
            let mut new_receipts: Vec<(u64, Held)> = Vec::with_capacity(appended);
            let mut hashes = Vec::with_capacity(appended);
            // The leaves first, then the batch's one source-index run (consecutive seqs at
            // consecutive leaves), then the views, which may look an entry of this very
            // batch up in the index (a withdrawal of it).
            for (entry, env, hash) in &fresh {
                let rec = RecordRef {
                    received_at: now,
                    source: Some(&source),
                    seq: entry.seq,
                    envelope: env,
                };
                let index = st.log.append(&mut wb, rec)?;
                let held = Held {
                    log_index: index,
                    hash: *hash,
                    received_at: now,
                };
                if let Some((seq0, h0)) = new_receipts.first()
                    && (entry.seq - seq0 != index - h0.log_index)
                {
                    return Err(LogError::Tree(format!(
                        "seq {} of {source} was not appended next to the batch's other entries",
                        entry.seq
                    ))
                    .into());
                }
                hashes.push(held.hash);
                new_heads = Head {
                    seq: entry.seq,
                    hash: held.hash,
                };
                new_receipts.push((entry.seq, held));
            }
            if let Some((seq0, h0)) = new_receipts.first() {
                crate::log::index::put_run(&mut wb, &source, *seq0, h0.log_index, now, &hashes);
            }
            for ((entry, _, _), (_, held)) in fresh.iter().zip(&new_receipts) {
                st.views.apply(
                    self.store.as_ref(),
                    Meta {
                        log_index: held.log_index,
                        received_at: now,
                        source: source.clone(),
                        seq: entry.seq,
                        recorded_at: entry.recorded_at,
                        withdrawn_by: None,
                    },
                    &entry.record,
                    &mut wb,
                )?;
            }
            // A key transition changes the source's `reg/` record in the same write as the
            // entry that proves it (the registry stays derived from the log).
            let transitioned = rotated != *reg;
            if transitioned {
                registry::put(&mut wb, &rotated);
            }
            st.views.seal(self.store.as_ref(), &mut wb)?;
            st.log.put_frontier(&mut wb);
            let note = st.log.checkpoint(&self.origin, &self.key)?;
            wb.put(keys::CHECKPOINT.to_vec(), note.clone().into_bytes());
            // The serialization point: written only if no other writer committed since
            // this state was read (else nothing is written and the caller catches up).
            st.head = self.store.commit(st.head, wb)?;
            if transitioned {
                let mut all = (*st.registry).clone();
                for k in rotated.keys.iter().filter(|k| !reg.keys.contains(k)) {
                    info!(source = %source, key = %k.key, from_seq = k.from_seq, "Key transition: the source's new key signs from this seq.");
                }
                all.insert(source.clone(), rotated);
                st.registry = Arc::new(all);
            }
            st.checkpoint = note;
            st.heads.insert(source.clone(), new_heads);
            st.version += 1;
            receipts.extend(new_receipts);
            info!(source = %source, appended, held_through = new_heads.seq, log_size = st.log.size(), "Appended entries.");
        }
        Ok(Admission {
            receipts,
            refused,
            resend_from,
            status,
            appended,
        })
    }

    /// Signs and appends one of the hub's own entries (e.g. an extension). Durable on return.
    /// `make` may be called again (with the next free seq) when another replica committed
    /// first.
    pub fn append_hub_entry(
        &self,
        make: impl Fn(u64, DateTime<Utc>) -> HubEntry,
    ) -> Result<(u64, HubEntry), IngestError> {
        let now = self.clock.now();
        self.serialized(|hub, st| {
            let seq = hub.last_hub_seq()? + 1;
            let entry = make(seq, now);
            let mut wb = WriteBatch::new();
            let index = hub.push_hub_entry(st, &mut wb, &entry, now)?;
            wb.put(keys::HUB_SEQ.to_vec(), seq.to_be_bytes().to_vec());
            hub.commit_hub_entries(st, wb)?;
            Ok((index, entry))
        })
    }

    /// Changes a notice rule the campaign file lets change (`notice-rules set`): `value`
    /// as an admin typed it, read and checked against the rules in force at the head the
    /// change is committed at (so two admins changing `behind` and `far_behind` at once
    /// cannot leave `far_behind` above `behind`), and recorded as a hub-signed
    /// [`HubEntry::NoticeRuleChanged`] naming the old and new value, `token` (the admin
    /// token's id) and the hub clock's time; durable on return. A value already in force
    /// records nothing (`None`), so a retried request changes nothing twice.
    pub fn change_notice_rule(
        &self,
        rule: NoticeRule,
        value: &str,
        token: Option<&str>,
    ) -> Result<(NoticeRuleChanged, Option<u64>), RuleChangeError> {
        if !self.campaign.is_adjustable(rule) {
            let listed = &self.campaign.lagging.adjustable;
            return Err(RuleChangeError::NotAdjustable {
                rule,
                listed: if listed.is_empty() {
                    "it lists none".into()
                } else {
                    format!(
                        "it lists {}",
                        listed
                            .iter()
                            .map(|r| r.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            });
        }
        // Millisecond precision, as the log's other times.
        let now = self.clock.now().trunc_subsecs(3);
        self.serialized(|hub, st| {
            let seq = hub.last_hub_seq()? + 1;
            let change = {
                let rules = st.views.rules(&hub.campaign);
                NoticeRuleChanged {
                    seq,
                    setting: rule,
                    new: rules.parse_rule(rule, value)?,
                    old: rules.rule(rule),
                    token: token.map(str::to_string),
                    at: now,
                }
            };
            if change.new == change.old {
                return Ok((change, None));
            }
            let entry = HubEntry::NoticeRuleChanged(change.clone());
            let mut wb = WriteBatch::new();
            let index = hub.push_hub_entry(st, &mut wb, &entry, now)?;
            wb.put(keys::HUB_SEQ.to_vec(), seq.to_be_bytes().to_vec());
            hub.commit_hub_entries(st, wb)?;
            info!(setting = %rule, old = %change.old, new = %change.new, log_index = index, "Notice rule changed.");
            Ok((change, Some(index)))
        })
    }

    /// The hub's own seq of its last log entry (0 = none).
    fn last_hub_seq(&self) -> Result<u64, StoreError> {
        Ok(match self.store.get(keys::HUB_SEQ)? {
            Some(b) => b.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        })
    }

    /// Signs `entry`, adds it to `wb` as the next log leaf and applies it to the views.
    /// On error the caller puts the state back (the frontier may have moved).
    fn push_hub_entry(
        &self,
        st: &mut State,
        wb: &mut WriteBatch,
        entry: &HubEntry,
        now: DateTime<Utc>,
    ) -> Result<u64, LogError> {
        let seq = entry.seq();
        let payload = serde_json::to_vec(entry).map_err(|e| LogError::Tree(e.to_string()))?;
        let envelope = Envelope::sign(&self.key, HUB_ENTRY_PAYLOAD_TYPE, payload);
        let rec = LogRecord {
            received_at: now,
            source: None,
            seq,
            envelope,
        };
        let index = st.log.append(wb, rec.as_ref())?;
        st.views.apply_hub(index, entry, wb);
        Ok(index)
    }

    /// Adds the new checkpoint to `wb` and commits it at `st.head` (one atomic, durable
    /// write). On failure nothing is written; the caller ([`Hub::serialized`]) puts the
    /// state back.
    fn commit_hub_entries(&self, st: &mut State, mut wb: WriteBatch) -> Result<(), LogError> {
        st.views.seal(self.store.as_ref(), &mut wb)?;
        st.log.put_frontier(&mut wb);
        let note = st.log.checkpoint(&self.origin, &self.key)?;
        wb.put(keys::CHECKPOINT.to_vec(), note.clone().into_bytes());
        st.head = self.store.commit(st.head, wb)?;
        st.checkpoint = note;
        st.version += 1;
        Ok(())
    }

    /// Registers a source (`agents add`): a hub-signed [`HubEntry::SourceAdded`] in the
    /// log and the `reg/` record, in one atomic write, flushed before this returns.
    pub fn add_source(
        &self,
        id: SourceId,
        scope: spacesync_shared::RegionCode,
        key_line: &str,
    ) -> Result<SourceRecord, RegistryError> {
        let name = id.to_string();
        self.change_registry(|reg, _, seq, now| {
            registry::plan_add(reg, id.clone(), scope, key_line, seq, now).map(Some)
        })?
        .ok_or(RegistryError::Unknown(name))
    }

    /// Rotates a source's key (`agents rotate`): the new key signs from `from_seq`
    /// (default: the seq after the highest held) on. Logged like [`Hub::add_source`].
    pub fn rotate_source(
        &self,
        id: &str,
        key_line: &str,
        from_seq: Option<u64>,
    ) -> Result<SourceRecord, RegistryError> {
        self.change_registry(|reg, heads, seq, now| {
            let held = SourceId::parse(id)
                .ok()
                .and_then(|s| heads.get(&s))
                .map_or(0, |h| h.seq);
            registry::plan_rotate(reg, id, key_line, from_seq, held, seq, now).map(Some)
        })?
        .ok_or_else(|| RegistryError::Unknown(id.to_string()))
    }

    /// Revokes a source (`agents revoke`): nothing more is accepted from it. Logged like
    /// [`Hub::add_source`]; revoking a revoked source changes and logs nothing.
    pub fn revoke_source(&self, id: &str) -> Result<SourceRecord, RegistryError> {
        self.change_registry(|reg, _, seq, now| registry::plan_revoke(reg, id, seq, now))?
            .map_or_else(
                || {
                    let sid =
                        SourceId::parse(id).map_err(|_| RegistryError::Unknown(id.to_string()))?;
                    self.state()
                        .registry
                        .get(&sid)
                        .cloned()
                        .ok_or_else(|| RegistryError::Unknown(id.to_string()))
                },
                Ok,
            )
    }

    /// One registry change under the writer lock: `plan` checks it against the registry
    /// and heads in memory and returns the entry to log (or `None`: nothing to change).
    /// On a store whose sources were registered before registry changes were logged, the
    /// entry is preceded by a [`HubEntry::RegistryBaseline`] (see [`crate::registry`]).
    /// Entries, `reg/` record and checkpoint are one atomic write, flushed on return.
    fn change_registry(
        &self,
        plan: impl Fn(
            &HashMap<SourceId, SourceRecord>,
            &imbl::HashMap<SourceId, Head>,
            u64,
            DateTime<Utc>,
        ) -> Result<Option<HubEntry>, RegistryError>,
    ) -> Result<Option<SourceRecord>, RegistryError> {
        // Millisecond precision, as the log's other times.
        let now = self.clock.now().trunc_subsecs(3);
        self.serialized(|hub, st| {
            let mut seq = hub.last_hub_seq()?;
            let baseline = if registry::logged(hub.store.as_ref())? || st.registry.is_empty() {
                None
            } else {
                seq += 1;
                let mut sources: Vec<SourceRecord> = st.registry.values().cloned().collect();
                sources.sort_by(|a, b| a.id.cmp(&b.id));
                Some(HubEntry::RegistryBaseline(registry::RegistryBaseline {
                    seq,
                    sources,
                    at: now,
                }))
            };
            let Some(entry) = plan(&st.registry, &st.heads, seq + 1, now)? else {
                return Ok(None);
            };
            seq += 1;
            let mut wb = WriteBatch::new();
            let mut new_registry: HashMap<SourceId, SourceRecord> = (*st.registry).clone();
            let mut changed = None;
            for e in baseline.iter().chain([&entry]) {
                hub.push_hub_entry(st, &mut wb, e, now)?;
                changed = registry::apply(&mut new_registry, e);
            }
            let Some(rec) = changed.and_then(|id| new_registry.get(&id).cloned()) else {
                return Err(RegistryError::Log(LogError::Tree(
                    "a planned registry change names no source".into(),
                )));
            };
            registry::put(&mut wb, &rec);
            wb.put(registry::LOGGED_KEY.to_vec(), b"1".to_vec());
            wb.put(keys::HUB_SEQ.to_vec(), seq.to_be_bytes().to_vec());
            hub.commit_hub_entries(st, wb)?;
            st.registry = Arc::new(new_registry);
            info!(source = %rec.id, log_size = st.log.size(), "Registry changed.");
            Ok(Some(rec))
        })
    }

    /// The hub's own rules for an entry the chain admits: `recorded_at` neither ahead of
    /// the hub's clock nor before the campaign (less its slack).
    fn clock_fault(
        &self,
        entry: &Entry,
        now: DateTime<Utc>,
        earliest: DateTime<Utc>,
    ) -> Option<Refusal> {
        let (code, reason) = if entry.recorded_at > now + self.limits.max_clock_skew {
            (
                RefusalCode::FutureTimestamp,
                format!(
                    "seq {}: recorded_at {} is ahead of the hub's clock ({now}); fix the agent's clock",
                    entry.seq, entry.recorded_at
                ),
            )
        } else if entry.recorded_at < earliest {
            (
                RefusalCode::Invalid,
                format!(
                    "seq {}: recorded_at {} is before the campaign started ({} less {} days of slack: {earliest}); the agent's clock was wrong when it signed — fix it, then re-enter the record",
                    entry.seq,
                    entry.recorded_at,
                    self.campaign.starts_on,
                    RECORDED_AT_SLACK.num_days()
                ),
            )
        } else {
            return None;
        };
        Some(Refusal {
            seq: Some(entry.seq),
            code,
            reason,
        })
    }

    fn raise_alarm(
        &self,
        st: &mut State,
        source: &SourceId,
        seq: u64,
        code: RefusalCode,
        detail: &str,
        now: DateTime<Utc>,
    ) {
        // Repeats of the same fault are one alarm.
        if st
            .alarms
            .iter()
            .any(|a| a.source == *source && a.seq == seq && a.code == code)
        {
            return;
        }
        let alarm = Alarm {
            at: now,
            source: source.clone(),
            seq,
            code,
            detail: detail.to_string(),
        };
        error!(source = %source, seq, code = ?code, "Equivocation: a source sent two different entries for one seq.");
        // Numbered after the last stored alarm, so none is ever overwritten (even one that
        // failed to load), and claimed with an insert-if-absent: a replica raising one at
        // the same moment takes the next number instead of overwriting it.
        let mut n = match self.store.last(keys::ALARM) {
            Ok(Some((k, _))) => keys::tail_u64(&k).map_or(0, |n| n + 1),
            _ => st.next_alarm,
        };
        let bytes = serde_json::to_vec(&alarm).unwrap_or_default();
        loop {
            match self.store.insert_if_absent(&keys::alarm(n), &bytes) {
                Ok(true) => break,
                Ok(false) => n += 1,
                Err(e) => {
                    error!(error = %e, "Storing an alarm failed; it is kept in memory only.");
                    break;
                }
            }
        }
        st.alarms.push_back(alarm);
        st.version += 1;
    }
}

/// The hub's own rule on a key-transition entry the chain verifier admitted (it proved its
/// key and the source's key in force signed it): the new key must be no key any source has
/// or had. When it passes, `rotated` (the source's record) gains the key from the next seq.
fn transition_fault(
    registry: &HashMap<SourceId, SourceRecord>,
    rotated: &mut SourceRecord,
    entry: &Entry,
    now: DateTime<Utc>,
) -> Option<Refusal> {
    let spacesync_shared::Record::KeyTransition(t) = &entry.record else {
        return None;
    };
    let owner = registry::key_known(registry, &t.new_key).or_else(|| {
        rotated
            .keys
            .iter()
            .any(|k| k.key == t.new_key)
            .then(|| rotated.id.clone())
    });
    if let Some(owner) = owner {
        return Some(Refusal {
            seq: Some(entry.seq),
            code: RefusalCode::Invalid,
            reason: format!(
                "seq {}: key transition refused: its new key is or was registered for source {owner}; every source needs its own key and a retired key is not used again (run `spacesync-agent rotate-key` again: it makes a fresh key)",
                entry.seq
            ),
        });
    }
    registry::apply_transition(rotated, entry.seq, &t.new_key, now);
    None
}

/// The refusal the hub answers a chain fault with: the verifier's code, in words an
/// agent's operator can act on. `unreadable` is why the entry did not read, if it did not
/// (such an entry is `invalid` whatever its signature: the hub cannot tell its seq);
/// `held_through` is the seq the chain stood at.
fn refusal(
    fault: &ChainError,
    unreadable: Option<String>,
    held_through: u64,
    source: &SourceId,
    campaign: &str,
) -> Refusal {
    if let Some(why) = unreadable {
        return Refusal {
            seq: None,
            code: RefusalCode::Invalid,
            reason: format!("entry after seq {held_through}: {why}"),
        };
    }
    let seq = fault.seq();
    let not_signed = |why: &str| {
        format!("seq {seq}: {why}; the entry was not signed by the key registered for {source}")
    };
    let reason = match fault {
        ChainError::WrongSource { got, .. } => format!(
            "seq {seq}: entry is from source {got}, but the batch is from {source}; send one source per batch"
        ),
        ChainError::WrongCampaign { got, .. } => format!(
            "seq {seq}: entry is for campaign {got:?}, this hub runs campaign {campaign:?}; check the agent's campaign file"
        ),
        ChainError::BadSignature { error, .. } => not_signed(&error.to_string()),
        ChainError::NoKey { .. } => not_signed("no registered key signs this seq"),
        ChainError::UnreadableKey { .. } => not_signed("the registered key does not parse"),
        ChainError::RetiredKey { since, .. } => format!(
            "seq {seq}: signed by a retired key of {source}; the key registered from seq {since} (a key-transition entry or `agents rotate`) signs it, so the agent must sign with its current key"
        ),
        ChainError::Fork { .. } => format!(
            "seq {seq}: a different entry is already held for this seq (equivocation); the hub keeps the first"
        ),
        ChainError::Gap { expected, got } => format!(
            "gap: the hub holds up to seq {}, the next entry sent is seq {got}; resend from seq {expected}",
            expected - 1
        ),
        ChainError::BadPrev { expected, got, .. } => format!(
            "seq {seq}: prev {got} does not match the hash of seq {} held by the hub ({expected})",
            seq - 1
        ),
        ChainError::Duplicate { .. } => format!("seq {seq}: the batch sends this seq twice"),
        ChainError::Malformed { .. }
        | ChainError::OutOfScope { .. }
        | ChainError::BadWithdrawal { .. }
        | ChainError::BadTransition { .. }
        | ChainError::TransitionConflict { .. } => fault.to_string(),
    };
    Refusal {
        seq: Some(match fault {
            ChainError::Gap { got, .. } => *got,
            _ => seq,
        }),
        code: fault.code().unwrap_or(RefusalCode::Invalid),
        reason,
    }
}

impl Hub {
    /// The entries held of `source`'s own chain from seq `from`, at most `limit` and about
    /// `max_bytes` of payload (the first always), as received, with one signed batch
    /// receipt for them: what [`spacesync_shared::wire::PATH_AGENT_ENTRIES`] answers an
    /// agent restored from an older backup. Reads the source index and the log as of the
    /// snapshot's head for `source`; blocking.
    pub fn held_entries(
        &self,
        source: &SourceId,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<spacesync_shared::wire::EntriesPage, StoreError> {
        let held_through = self.head(source).held_through;
        let from = from.max(1);
        let mut entries = Vec::new();
        let mut held = Vec::new();
        let mut bytes = 0usize;
        let mut seq = from;
        while seq <= held_through && entries.len() < limit {
            let Some(h) = self.held(source, seq)? else {
                return Err(StoreError::Corrupt {
                    key: format!("src/{source}/{seq}"),
                    message: format!(
                        "the source index lacks seq {seq} below its head {held_through}"
                    ),
                });
            };
            let rec = crate::log::read(self.store.as_ref(), h.log_index)?.ok_or_else(|| {
                StoreError::Corrupt {
                    key: format!("log/{}", h.log_index),
                    message: format!(
                        "the leaf the source index names for {source} seq {seq} is missing"
                    ),
                }
            })?;
            if rec.source.as_ref() != Some(source) || rec.seq != seq {
                return Err(StoreError::Corrupt {
                    key: format!("log/{}", h.log_index),
                    message: format!(
                        "the leaf the source index names for {source} seq {seq} holds another entry"
                    ),
                });
            }
            bytes += rec.envelope.payload.len();
            if !entries.is_empty() && bytes > max_bytes {
                break;
            }
            entries.push(rec.envelope);
            held.push((seq, h));
            seq += 1;
        }
        let (_, batch_receipt) = sign_receipts(&self.key, source, held, ReceiptForm::Batch);
        Ok(spacesync_shared::wire::EntriesPage {
            source: source.clone(),
            held_through,
            entries,
            batch_receipt,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc};
    use std::time::Duration as StdDuration;

    use spacesync_shared::clock::FixedClock;
    use spacesync_shared::keys::public_key_line;
    use spacesync_shared::{Record, RegionCode};

    use super::*;
    use ed25519_dalek::SigningKey;

    use crate::hub::{Limits, Snapshot};
    use crate::store::{Kv, KvIter, SledStore, Store};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_542_679_200, 0).unwrap_or_default() // 2018-11-20 02:00 UTC
    }

    fn record(json: &str) -> Record {
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("test setup: {e}"));
        Record::from_value(&v).unwrap_or_else(|p| panic!("test setup: {json}: {p:?}"))
    }

    fn teachers(n: u64) -> Record {
        record(&format!(
            r#"{{"kind":"space_count","region":"440106","school":"4144010601","as_of":"2018-11-20","spaces":{{"teacher":{n}}}}}"#
        ))
    }

    /// A source that signs the next entries of its chain.
    struct Agent {
        id: SourceId,
        key: SigningKey,
        next: u64,
        prev: Digest,
    }

    impl Agent {
        fn new() -> Agent {
            Agent {
                id: SourceId::parse("gd-a").unwrap_or_else(|e| panic!("{e}")),
                key: SigningKey::from_bytes(&[7; 32]),
                next: 1,
                prev: Digest::ZERO,
            }
        }

        fn batch(&mut self, records: Vec<Record>) -> IngestBatch {
            let entries = records
                .into_iter()
                .map(|record| {
                    let env = Entry {
                        source: self.id.clone(),
                        seq: self.next,
                        prev: self.prev,
                        recorded_at: t0() - Duration::hours(1),
                        campaign: "2018".into(),
                        record,
                    }
                    .sign(&self.key);
                    self.next += 1;
                    self.prev = env.payload_hash();
                    env
                })
                .collect();
            IngestBatch {
                source: self.id.clone(),
                entries,
            }
        }
    }

    /// A hub over `store`, as it finds it.
    fn open(store: Arc<dyn Store>) -> Hub {
        Hub::open(
            store,
            SigningKey::from_bytes(&[0x42; 32]),
            "spacesync-hub/test".into(),
            Campaign::builtin_2018(),
            Arc::new(FixedClock::new(t0())),
            Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A hub over `store` with one registered source.
    fn hub(store: Arc<dyn Store>, agent: &Agent) -> Hub {
        let hub = open(store);
        let region = RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}"));
        hub.add_source(
            agent.id.clone(),
            region,
            &public_key_line(&agent.key.verifying_key()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        hub
    }

    fn sled(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(SledStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}")))
    }

    fn ingest_ok(hub: &Hub, batch: IngestBatch) {
        let out = hub.ingest(batch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status, 200, "{:?}", out.response.refused);
    }

    /// What a reader sees in a snapshot, compared whole.
    type Seen = (u64, [u8; 32], String, u64, Option<Head>, Vec<Meta>, i64);

    fn seen(s: &Snapshot, source: &SourceId, store: &dyn Store) -> Seen {
        (
            s.log_size,
            s.log_root,
            s.checkpoint.clone(),
            s.version,
            s.heads.get(source).copied(),
            s.views
                .items(store)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|i| i.meta)
                .collect(),
            s.views
                .rollup(&Campaign::builtin_2018())
                .nation
                .spaces
                .get(spacesync_shared::record::SpaceKind::Teacher)
                .map_or(-1, |n| n as i64),
        )
    }

    /// A store on which, once armed, another writer commits (an empty change that moves
    /// the head) just before the next commit, which then finds the head moved.
    struct RacedStore {
        inner: crate::store::MemStore,
        armed: std::sync::atomic::AtomicBool,
    }

    impl Store for RacedStore {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
            self.inner.scan(prefix)
        }
        fn last(&self, prefix: &[u8]) -> Result<Option<Kv>, StoreError> {
            self.inner.last(prefix)
        }
        fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
            self.inner.apply(batch)
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.inner.flush()
        }
        fn commit(&self, expected: u64, batch: WriteBatch) -> Result<u64, StoreError> {
            if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.inner.commit(expected, WriteBatch::new())?;
            }
            self.inner.commit(expected, batch)
        }
    }

    #[test]
    fn a_batch_whose_commit_finds_the_head_moved_is_read_and_checked_again_and_lands() {
        // A store no other process writes keeps no copy of a batch's checked entries for
        // a second admission: after a conflict they are read and checked again.
        let store = Arc::new(RacedStore {
            inner: crate::store::MemStore::new(),
            armed: std::sync::atomic::AtomicBool::new(false),
        });
        assert!(!store.shared_by_processes());
        let mut a = Agent::new();
        let hub = hub(store.clone(), &a);
        ingest_ok(&hub, a.batch(vec![teachers(100)]));
        let size_before = hub.snapshot().log_size;
        let sent = a.batch(vec![teachers(105), teachers(110)]);
        let hashes: Vec<Digest> = sent.entries.iter().map(Envelope::payload_hash).collect();
        store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let out = hub.ingest(sent).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !store.armed.load(std::sync::atomic::Ordering::SeqCst),
            "the race did not happen"
        );
        assert_eq!(out.status, 200, "{:?}", out.response.refused);
        assert_eq!(out.appended, 2);
        let receipts: Vec<Receipt> = out
            .response
            .receipts
            .iter()
            .map(|r| Receipt::open(r, &hub.key.verifying_key()).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(
            receipts.iter().map(|r| r.entry_hash).collect::<Vec<_>>(),
            hashes
        );
        assert_eq!(
            receipts.iter().map(|r| r.log_index).collect::<Vec<_>>(),
            vec![size_before, size_before + 1]
        );
        let heads = &hub.snapshot().heads;
        assert_eq!(
            heads.get(&a.id).map(|h| (h.seq, h.hash)),
            Some((3, hashes[1]))
        );
        // What another hub opening the store finds.
        let again = open(store);
        let snap = again.snapshot();
        assert_eq!(snap.log_size, size_before + 2);
        assert_eq!(snap.heads.get(&a.id).map(|h| h.seq), Some(3));
    }

    #[test]
    fn a_snapshot_taken_before_an_append_is_unchanged_after_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut a = Agent::new();
        let hub = hub(sled(&dir), &a);
        ingest_ok(&hub, a.batch(vec![teachers(100), teachers(120)]));
        let before = hub.snapshot();
        let was = seen(&before, &a.id, hub.store.as_ref());
        assert_eq!(was.4.map(|h| h.seq), Some(2));
        assert_eq!(was.6, 120);

        // Another count, and a withdrawal of seq 2: an item the snapshot shares changes.
        let withdraw = record(r#"{"kind":"withdrawal","target_seq":2,"reason":"typo"}"#);
        ingest_ok(&hub, a.batch(vec![teachers(130), withdraw]));

        assert_eq!(
            seen(&before, &a.id, hub.store.as_ref()),
            was,
            "the old snapshot changed"
        );
        let items = |s: &Snapshot| s.views.items(hub.store.as_ref()).unwrap_or_default();
        assert!(items(&before).iter().all(|i| i.meta.withdrawn_by.is_none()));
        let after = hub.snapshot();
        let now = seen(&after, &a.id, hub.store.as_ref());
        assert_eq!(now.0, was.0 + 2);
        assert_ne!(now.1, was.1);
        assert_ne!(now.2, was.2);
        assert!(now.3 > was.3);
        assert_eq!(now.4.map(|h| h.seq), Some(4));
        assert_eq!(now.6, 130);
        assert_eq!(
            items(&after)
                .iter()
                .filter(|i| i.meta.withdrawn_by.is_some())
                .count(),
            1
        );
        // The writer's own view and the published one agree.
        assert_eq!(
            seen(&Snapshot::of(&hub.state()), &a.id, hub.store.as_ref()),
            now
        );
    }

    #[test]
    fn a_reader_holding_a_snapshot_does_not_block_an_append() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut a = Agent::new();
        let hub = Arc::new(hub(sled(&dir), &a));
        ingest_ok(&hub, a.batch(vec![teachers(100)]));
        let size = hub.snapshot().log_size;
        let batch = a.batch(vec![teachers(110), teachers(120)]);

        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let reader = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let snap = hub.snapshot();
                let _ = held_tx.send(());
                // Holds the snapshot until told to let go.
                let _ = release_rx.recv_timeout(StdDuration::from_secs(30));
                snap.log_size
            })
        };
        held_rx
            .recv_timeout(StdDuration::from_secs(10))
            .unwrap_or_else(|e| panic!("the reader never took its snapshot: {e}"));
        let (done_tx, done_rx) = mpsc::channel();
        let writer = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let out = hub.ingest(batch).map(|o| o.status);
                let _ = done_tx.send(());
                out
            })
        };
        // The append finishes while the reader still holds its snapshot.
        let finished = done_rx.recv_timeout(StdDuration::from_secs(20));
        let _ = release_tx.send(());
        assert!(finished.is_ok(), "the append waited for a reader");
        assert!(matches!(writer.join(), Ok(Ok(200))));
        assert_eq!(
            reader.join().ok(),
            Some(size),
            "the reader's snapshot moved"
        );
        assert_eq!(hub.snapshot().log_size, size + 2);
    }

    /// A store whose flush waits until the test lets it go, to hold an append in progress.
    struct GatedStore {
        inner: SledStore,
        /// Told when a flush starts; the flush then waits for `open`.
        started: Mutex<mpsc::Sender<()>>,
        open: Mutex<mpsc::Receiver<()>>,
        gated: std::sync::atomic::AtomicBool,
    }

    impl Store for GatedStore {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
            self.inner.scan(prefix)
        }
        fn last(&self, prefix: &[u8]) -> Result<Option<Kv>, StoreError> {
            self.inner.last(prefix)
        }
        fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
            self.inner.apply(batch)
        }
        fn flush(&self) -> Result<(), StoreError> {
            if self.gated.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = self.started.lock().map(|tx| tx.send(()));
                let _ = self
                    .open
                    .lock()
                    .map(|rx| rx.recv_timeout(StdDuration::from_secs(30)));
            }
            self.inner.flush()
        }
    }

    #[test]
    fn a_snapshot_does_not_wait_for_an_append_in_progress() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (started_tx, started_rx) = mpsc::channel();
        let (open_tx, open_rx) = mpsc::channel();
        let store = Arc::new(GatedStore {
            inner: SledStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}")),
            started: Mutex::new(started_tx),
            open: Mutex::new(open_rx),
            gated: std::sync::atomic::AtomicBool::new(false),
        });
        let mut a = Agent::new();
        let hub = Arc::new(hub(store.clone(), &a));
        ingest_ok(&hub, a.batch(vec![teachers(100)]));
        let size = hub.snapshot().log_size;

        store.gated.store(true, std::sync::atomic::Ordering::SeqCst);
        let batch = a.batch(vec![teachers(110)]);
        let writer = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.ingest(batch).map(|o| o.status))
        };
        // The writer holds the lock, its batch applied and its flush not done.
        started_rx
            .recv_timeout(StdDuration::from_secs(20))
            .unwrap_or_else(|e| panic!("the append never reached its flush: {e}"));
        let (seen_tx, seen_rx) = mpsc::channel();
        let reader = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let _ = seen_tx.send(hub.snapshot().log_size);
            })
        };
        let during = seen_rx.recv_timeout(StdDuration::from_secs(10));
        let _ = open_tx.send(());
        assert_eq!(
            during.ok(),
            Some(size),
            "the snapshot waited for the append, or showed it before its flush"
        );
        assert!(reader.join().is_ok());
        assert!(matches!(writer.join(), Ok(Ok(200))));
        assert_eq!(hub.snapshot().log_size, size + 1);
    }

    // ---- the hub answers as the shared verifier judges ----------------------------------

    /// What a sender puts in the next batch, relative to what the hub holds.
    #[derive(Debug, Clone)]
    enum Send {
        /// The next 1‥3 entries of the honest chain.
        Next(u64),
        /// Held entries from `from` on (an index into what is held), then 0‥2 new ones.
        Resend(proptest::sample::Index, u64),
        /// An entry 1‥3 seqs past the next.
        Gap(u64),
        /// The entry after the next, then the next.
        Reorder,
        /// Other, validly signed content for a held seq.
        Fork(proptest::sample::Index),
        /// The next seq with a `prev` that does not chain.
        BadPrev,
        /// The next entry signed by a key the source was never given.
        WrongKey,
    }

    fn any_send() -> impl proptest::strategy::Strategy<Value = Send> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1..=3u64).prop_map(Send::Next),
            2 => (any::<proptest::sample::Index>(), 0..=2u64).prop_map(|(i, n)| Send::Resend(i, n)),
            1 => (1..=3u64).prop_map(Send::Gap),
            1 => Just(Send::Reorder),
            1 => any::<proptest::sample::Index>().prop_map(Send::Fork),
            1 => Just(Send::BadPrev),
            1 => Just(Send::WrongKey),
        ]
    }

    const HONEST: u64 = 90;

    /// The honest chain of [`Agent::new`]'s source: seq i at index i - 1.
    fn honest() -> &'static Vec<Envelope> {
        static H: std::sync::OnceLock<Vec<Envelope>> = std::sync::OnceLock::new();
        H.get_or_init(|| {
            let mut a = Agent::new();
            a.batch((1..=HONEST).map(teachers).collect()).entries
        })
    }

    /// The envelopes of a batch when `held` entries are held (none past the honest chain).
    fn batch_for(send: &Send, held: u64) -> Vec<Envelope> {
        let chain = honest();
        let at = |seq: u64| chain[seq as usize - 1].clone();
        let next = held + 1;
        let fits = |last: u64| last <= HONEST;
        let remade = |seq: u64, change: &dyn Fn(&mut Entry), key: &SigningKey| {
            let mut e = Entry::from_payload(&at(seq).payload).unwrap_or_else(|e| panic!("{e}"));
            change(&mut e);
            e.sign(key)
        };
        let key = Agent::new().key;
        match send {
            Send::Next(n) if fits(next + n - 1) => (next..next + n).map(at).collect(),
            Send::Resend(i, n) if held > 0 && fits(held + n) => {
                let from = i.index(held as usize) as u64 + 1;
                (from..=held + n).map(at).collect()
            }
            Send::Gap(k) if fits(next + k) => vec![at(next + k)],
            Send::Reorder if fits(next + 1) => vec![at(next + 1), at(next)],
            Send::Fork(i) if held > 0 => {
                let seq = i.index(held as usize) as u64 + 1;
                vec![remade(seq, &|e| e.record = teachers(seq + 1_000), &key)]
            }
            Send::BadPrev if fits(next) => {
                vec![remade(next, &|e| e.prev = Digest::of(b"elsewhere"), &key)]
            }
            Send::WrongKey if fits(next) => {
                vec![remade(next, &|_| {}, &SigningKey::from_bytes(&[9; 32]))]
            }
            _ => Vec::new(),
        }
    }

    /// The answer the shared verifier implies, judging the batch with `push` as the fake hub
    /// of the agent's tests does: (status, refusal codes, resend_from, receipts).
    fn implied(
        chain: &mut ChainVerifier,
        envs: &[Envelope],
    ) -> (u16, Vec<RefusalCode>, Option<u64>, usize) {
        let mut receipts = 0;
        for env in envs {
            match chain.push(env) {
                Ok(_) | Err(ChainError::Duplicate { .. }) => receipts += 1,
                Err(e) => {
                    let status = if e.is_conflict() { 409 } else { 422 };
                    let code = e.code().unwrap_or(RefusalCode::Invalid);
                    return (status, vec![code], e.resend_from(), receipts);
                }
            }
        }
        (200, Vec::new(), None, receipts)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Random batches of new entries, resends, gaps, reorderings, forks, bad links and
        /// wrong keys get from the hub the status, refusal code, resend_from and receipts the
        /// shared verifier implies, and the hub holds what the verifier accepted.
        #[test]
        fn ingest_answers_as_the_shared_verifier_judges(
            sends in proptest::collection::vec(any_send(), 1..20)
        ) {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let a = Agent::new();
            let hub = hub(sled(&dir), &a);
            let region = RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}"));
            let mut chain = ChainVerifier::new(a.id.clone(), a.key.verifying_key(), region, "2018");
            for send in &sends {
                let held = chain.next_seq() - 1;
                let envs = batch_for(send, held);
                if envs.is_empty() {
                    continue;
                }
                let want = implied(&mut chain, &envs);
                let out = hub
                    .ingest(IngestBatch { source: a.id.clone(), entries: envs })
                    .unwrap_or_else(|e| panic!("{send:?}: {e}"));
                let got = (
                    out.status,
                    out.response.refused.iter().map(|r| r.code).collect::<Vec<_>>(),
                    out.response.resend_from,
                    out.response.receipts.len(),
                );
                proptest::prop_assert_eq!(got, want, "{:?} with {} held", send, held);
                proptest::prop_assert_eq!(out.response.held_through, chain.next_seq() - 1);
                proptest::prop_assert_eq!(hub.head(&a.id).head, chain.head());
            }
        }
    }
}
