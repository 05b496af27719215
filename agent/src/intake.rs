//! Intake: a batch of records becomes signed, chained entries, whole or not at all.
//!
//! [`Writer`] holds what judging a batch needs (next seq, chain head, quota ledger of the
//! recommendations held) and is the only code that appends to the store. What does not
//! depend on the order of records is spread over the cores: a large NDJSON body is read in
//! parts (`parse_split`; a record with a problem has the whole body read again, so the
//! refusal names every problem with its line), and the signatures, which need only the
//! payloads, come after the payloads are chained in order.
//!
//! Group commit. In `run` ([`spawn_writer`]) the writer lives on one blocking thread. It
//! takes every batch queued, judges them in arrival order (each as if the ones before it
//! were stored), signs their entries together and appends all that are accepted in one
//! sled transaction, not flushed ([`Writer::submit_group`]), then publishes the new head.
//! A committer task flushes whenever the head is past what its last flush covered, and
//! then publishes that head as durable; every request waits for a durable head at or past
//! its own last seq before it is answered. So one flush answers everything appended
//! before it started, and while the disk works the writer judges and signs the next
//! batches (their transaction waits for the flush: sled 0.34 holds a lock across a flush
//! that every transaction needs). One transaction per group matters as much as one flush:
//! sled writes its log buffer out and syncs the range at every transaction. A 2xx answer
//! still means: on disk, and so does a repeated idempotency key's. The command-line
//! `import` uses the same [`Writer`] directly and flushes after each file.
//!
//! Idempotency keys: a batch may carry a key (`Idempotency-Key`, or the spool's and
//! `import`'s `file/<sha256>`). The first batch stored under a key binds it to the SHA-256
//! of its format and bytes ([`fingerprint`]); within `[intake] idempotency_retention_secs`
//! (agent clock) the same key with the same bytes is answered as the first time and stored
//! once, and the same key with other bytes is refused ([`IntakeError::KeyReused`]) — a
//! client that reuses a key by mistake is told, instead of silently losing its new data.
//! Keys are 1–[`MAX_KEY_BYTES`] bytes of visible ASCII. Expired keys are pruned as batches
//! arrive, so the store holds at most the keys of one retention period. A dry run never
//! binds a key (it stores nothing), so `dry_run` is not part of the fingerprint: a dry run
//! with a bound key is answered from it, or refused if the bytes differ.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use spacesync_shared::batch::{self, Format};
use spacesync_shared::clock::Clock;
use spacesync_shared::dsse::{Digest, Envelope};
use spacesync_shared::entry::{ENTRY_PAYLOAD_TYPE, Entry, SourceId};
use spacesync_shared::quota::QuotaLedger;
use spacesync_shared::record::{Problem, ProblemKind, Recommendation, Record};
use spacesync_shared::region::RegionCode;
use spacesync_shared::validate::{self, Context};
use spacesync_shared::{Campaign, keys};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::config::BufferConfig;
use crate::store::{Append, IdemPut, Store, StoreError};

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 200;

/// Most expired keys forgotten per batch (bounds the work one batch does).
const PRUNE_PER_BATCH: usize = 1000;

/// Checks an idempotency key: 1–[`MAX_KEY_BYTES`] bytes, visible ASCII only. The answer
/// never repeats the key (it may be huge or hostile).
pub fn check_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("the Idempotency-Key is empty; send a non-empty key or none".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the Idempotency-Key is {} bytes long; the limit is {MAX_KEY_BYTES} — use a short unique id such as a UUID",
            key.len()
        ));
    }
    if !key.iter().all(u8::is_ascii_graphic) {
        return Err("the Idempotency-Key may hold only visible ASCII characters (no spaces, control or non-ASCII characters)".into());
    }
    Ok(())
}

/// SHA-256 (hex) of what a key is bound to: the format and the bytes of the batch.
pub fn fingerprint(sub: &Submission) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"spacesync-idempotency-v1\n");
    h.update(match sub.format {
        Format::Csv => &b"csv\n"[..],
        _ => &b"json\n"[..],
    });
    h.update(&sub.body);
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// What is remembered for a key (the store adds when it was first seen).
#[derive(Debug, Serialize, Deserialize)]
struct KeyRecord {
    /// [`fingerprint`] of the batch it is bound to; `None` for keys stored by an agent
    /// from before keys were bound (they answer any body until they expire).
    fingerprint: Option<String>,
    /// The answer given the first time.
    answer: Accepted,
}

fn ms(t: chrono::DateTime<chrono::Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

/// Who this agent is: what every entry is signed and judged as.
pub struct Identity {
    /// The source id.
    pub source: SourceId,
    /// The region it may report on.
    pub scope: RegionCode,
    /// The campaign entries belong to.
    pub campaign: Campaign,
    /// The source's signing key.
    pub key: SigningKey,
}

impl Identity {
    /// The public key line of this source.
    pub fn key_line(&self) -> String {
        keys::public_key_line(&self.key.verifying_key())
    }
}

/// One batch handed to the writer.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The raw bytes (JSON, JSON array, NDJSON or CSV).
    pub body: Vec<u8>,
    /// How to read them.
    pub format: Format,
    /// Judge only; store nothing.
    pub dry_run: bool,
    /// A key the sender chose; a batch with a key seen before is answered as before and not
    /// stored again (so a client or the spool can retry safely after a crash).
    pub idempotency_key: Option<String>,
}

/// The answer to an accepted batch (HTTP 200 body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Number of records accepted.
    pub accepted: usize,
    /// Seqs assigned, in batch order.
    pub seqs: Vec<u64>,
    /// Codes the bundled region directory does not list (accepted, but worth a look).
    pub warnings: Vec<String>,
    /// True when nothing was stored because the batch was only judged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// True when this is the stored answer to an idempotency key seen before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// Why a batch was not accepted. Nothing of it was stored in any case.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The batch has problems; every one is listed.
    #[error(
        "the batch was refused and nothing was stored; fix these and send the whole batch again:\n{0}"
    )]
    Refused(batch::Refusal),
    /// The buffer of unreceipted entries is full.
    #[error(
        "the agent's buffer is full ({reason}); nothing was stored; retry after {retry_after_secs} s"
    )]
    Full {
        /// Which limit and how full.
        reason: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The batch alone exceeds the buffer limits, so it can never be accepted.
    #[error(
        "the batch alone ({what}) exceeds the buffer limit ({limit}); split it into smaller batches"
    )]
    TooLarge {
        /// Its size.
        what: String,
        /// The limit.
        limit: String,
    },
    /// The idempotency key was bound to another batch within the retention period.
    #[error(
        "the Idempotency-Key {key:?} was already used for a different batch (other bytes or another format); nothing was stored. Send new data under a new key, and retry only with exactly the same bytes"
    )]
    KeyReused {
        /// The key (visible ASCII, at most [`MAX_KEY_BYTES`]).
        key: String,
    },
    /// The idempotency key is unusable.
    #[error("{0}; nothing was stored")]
    BadKey(String),
    /// The store failed; the batch was not (durably) stored.
    #[error("the agent could not store the batch: {0}")]
    Store(#[from] StoreError),
    /// The agent is shutting down.
    #[error("the agent is shutting down; retry shortly")]
    Stopped,
    /// Run from a backup copy, the agent first takes back from the hub what it holds of
    /// this chain; until then it appends nothing (its seqs would fork the chain).
    #[error(
        "the agent was restored from a backup and is taking back from the hub what the hub holds of this source's chain; nothing was stored; retry shortly (the agent's status says what it waits for)"
    )]
    CatchingUp,
}

/// Judges, signs and appends batches. Exactly one exists per store.
pub struct Writer {
    store: Store,
    ident: Arc<Identity>,
    clock: Arc<dyn Clock>,
    buffer: BufferConfig,
    max_records: usize,
    /// Seconds suggested in Retry-After when the buffer is full.
    retry_after_secs: u64,
    /// How long (ms, agent clock) an idempotency key is remembered.
    key_retention_ms: u64,
    next_seq: u64,
    head: Digest,
    ledger: QuotaLedger,
    /// Recommendations held and not withdrawn, by seq, so a withdrawal can uncount one.
    held: BTreeMap<u64, Recommendation>,
    /// Threads a large batch's signatures are spread over (the cores available).
    cores: usize,
    /// Stored size of the envelope of an empty payload: an entry's stored size is this plus
    /// its payload's base64 length, so the byte limits are judged before signing.
    envelope_overhead: u64,
}

/// A batch judged and chained, not yet signed: what [`Writer::write`] appends.
struct Prepared {
    /// What the store gets, all but the envelopes.
    append: Append,
    /// The entries' payloads, in seq order.
    payloads: Vec<Vec<u8>>,
}

/// What the batches judged since the last write added on top of the store, and how to
/// take it back if that write fails. The writer's own state (next seq, head, ledger, held
/// recommendations) already includes them.
#[derive(Default)]
struct Group {
    /// The batches, in order.
    batches: Vec<Prepared>,
    /// Their stored bytes (counted against `buffer.max_bytes` with the store's).
    bytes: u64,
    /// Idempotency keys they bind, with what is stored for each: a repeat within the same
    /// group is answered from here.
    keys: HashMap<String, KeyRecord>,
    /// The state before the first of them: (next seq, head, ledger).
    before: Option<(u64, Digest, QuotaLedger)>,
    /// `held` changes in order: (seq, what it held before).
    held_undo: Vec<(u64, Option<Recommendation>)>,
}

impl Writer {
    /// Reads the chain head and the quota records from the store.
    pub fn open(
        store: Store,
        ident: Arc<Identity>,
        clock: Arc<dyn Clock>,
        buffer: BufferConfig,
        max_records: usize,
        retry_after_secs: u64,
        key_retention_secs: u64,
    ) -> Result<Writer, StoreError> {
        let (head_seq, head) = store.head()?;
        // The next seq comes from the stored head: if it disagrees with the entries held
        // (a damaged store), appending would overwrite entries. Refuse instead.
        let at_head = match head_seq {
            0 => None,
            s => store.entry(s)?.map(|e| e.payload_hash()),
        };
        if (head_seq > 0 && at_head != Some(head)) || store.entry(head_seq + 1)?.is_some() {
            return Err(StoreError::Corrupt(format!(
                "the stored chain head (seq {head_seq}) does not match the entries held; \
                 refusing to append over them"
            )));
        }
        let mut ledger = QuotaLedger::new();
        let mut held = BTreeMap::new();
        for (seq, rec) in store.quota_records()? {
            if let Record::Recommendation(r) = rec {
                // Held records were within quota when accepted; a tightened campaign file
                // must not make them vanish from the count.
                let _ = ledger.add(&ident.campaign.quotas, &r);
                held.insert(seq, r);
            }
        }
        adopt_old_keys(&store, ms(clock.now()))?;
        let envelope_overhead = seal(&ident.key, Vec::new()).len() as u64;
        Ok(Writer {
            store,
            ident,
            clock,
            buffer,
            max_records,
            retry_after_secs: retry_after_secs.max(1),
            key_retention_ms: key_retention_secs.max(1).saturating_mul(1000),
            next_seq: head_seq + 1,
            head,
            ledger,
            held,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            envelope_overhead,
        })
    }

    /// The seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Judges a batch and, unless it is a dry run, appends it (not yet flushed).
    /// `progress` is told how many records have been judged and signed (up to 2 × n).
    pub fn submit(
        &mut self,
        sub: &Submission,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Accepted, IntakeError> {
        let mut group = Group::default();
        self.forget_expired_keys(ms(self.clock.now()));
        let answer = self.prepare(sub, &mut group, progress);
        let judged = answer.as_ref().map_or(0, |a| a.accepted as u64);
        match self.write(group, &mut |signed| progress(judged + signed)) {
            Ok(()) => answer,
            Err(e) => match answer {
                Ok(a) if !a.dry_run && !a.replayed => Err(IntakeError::Store(e)),
                other => other,
            },
        }
    }

    /// Judges batches one after another and appends all that are accepted in one
    /// transaction (not yet flushed): one answer per batch, in order. Each batch is judged
    /// after the ones before it, as if they had been submitted one by one. If the write
    /// fails, nothing of the group is stored and every answer but a replay of an earlier
    /// group says so.
    pub fn submit_group(&mut self, subs: &[&Submission]) -> Vec<Result<Accepted, IntakeError>> {
        let mut group = Group::default();
        self.forget_expired_keys(ms(self.clock.now()));
        let mut answers: Vec<_> = subs
            .iter()
            .map(|sub| self.prepare(sub, &mut group, &mut |_| {}))
            .collect();
        let keys: Vec<String> = group.keys.keys().cloned().collect();
        if let Err(e) = self.write(group, &mut |_| {}) {
            let why = e.to_string();
            for (sub, a) in subs.iter().zip(&mut answers) {
                // A replay of an earlier group stands; anything judged against this
                // group's batches does not.
                let earlier_replay = matches!(a, Ok(a) if a.replayed)
                    && !sub
                        .idempotency_key
                        .as_ref()
                        .is_some_and(|k| keys.contains(k));
                if !earlier_replay {
                    *a = Err(IntakeError::Store(StoreError::Failed(format!(
                        "nothing of the batch was stored: {why}"
                    ))));
                }
            }
        }
        answers
    }

    /// Judges and chains one batch against the writer's state, advancing it (the group
    /// remembers how to undo that). Nothing is signed or stored yet.
    fn prepare(
        &mut self,
        sub: &Submission,
        group: &mut Group,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Accepted, IntakeError> {
        let now_ms = ms(self.clock.now());
        let key = match &sub.idempotency_key {
            None => None,
            Some(k) => {
                check_key(k.as_bytes()).map_err(IntakeError::BadKey)?;
                let fp = fingerprint(sub);
                if let Some(a) = self.replay(k, &fp, now_ms, group)? {
                    return Ok(a);
                }
                Some((k.clone(), fp))
            }
        };

        let campaign = &self.ident.campaign;
        let today = campaign.local_date(self.clock.now());
        // A large NDJSON body is read on every core; its records are then judged in order
        // here. If reading it in parts fails, or a record has a problem, `batch::parse`
        // reads it whole again, so a refusal lists every problem with its line as before.
        let mut judged = Judging::new(self.ledger.clone());
        let mut records = parse_split(&sub.body, sub.format, self.max_records, self.cores);
        if let Some(recs) = &records
            && !recs
                .iter()
                .enumerate()
                .all(|(i, r)| self.judge(&mut judged, today, i, r, progress).is_empty())
        {
            records = None;
        }
        let records = match records {
            Some(records) => records,
            None => {
                judged = Judging::new(self.ledger.clone());
                batch::parse(&sub.body, sub.format, self.max_records, |i, r| {
                    self.judge(&mut judged, today, i, r, progress)
                })
                .map_err(IntakeError::Refused)?
            }
        };
        let Judging {
            ledger,
            batch_recs,
            quota_add,
            quota_remove,
            warnings,
            ..
        } = judged;

        let n = records.len() as u64;
        let seqs: Vec<u64> = (self.next_seq..self.next_seq + n).collect();
        if sub.dry_run {
            return Ok(Accepted {
                accepted: records.len(),
                seqs,
                warnings,
                dry_run: true,
                replayed: false,
            });
        }
        if n > self.buffer.max_entries {
            return Err(IntakeError::TooLarge {
                what: format!("{n} records"),
                limit: format!("buffer.max_entries = {}", self.buffer.max_entries),
            });
        }
        let acked = self.store.acked()?;
        let buffered = self.next_seq - 1 - acked;
        if buffered + n > self.buffer.max_entries {
            return Err(self.full(format!(
                "{buffered} entries wait for the hub, limit buffer.max_entries = {}",
                self.buffer.max_entries
            )));
        }

        // The chain, in order: each payload names the hash of the one before. Signing,
        // which needs only the payload, comes once the group is judged.
        let now = self.clock.now();
        let mut prev = self.head;
        let mut payloads = Vec::with_capacity(records.len());
        for (i, record) in records.into_iter().enumerate() {
            let entry = Entry {
                source: self.ident.source.clone(),
                seq: self.next_seq + i as u64,
                prev,
                recorded_at: now,
                campaign: campaign.id.clone(),
                record,
            };
            let payload = entry.to_payload();
            prev = Digest::of(&payload);
            payloads.push(payload);
        }
        let bytes: u64 = payloads
            .iter()
            .map(|p| self.envelope_overhead + p.len().div_ceil(3) as u64 * 4)
            .sum();
        if bytes > self.buffer.max_bytes {
            return Err(IntakeError::TooLarge {
                what: format!("{bytes} bytes signed"),
                limit: format!("buffer.max_bytes = {}", self.buffer.max_bytes),
            });
        }
        let buffered_bytes = self.store.buffered_bytes()? + group.bytes;
        if buffered_bytes + bytes > self.buffer.max_bytes {
            return Err(self.full(format!(
                "{buffered_bytes} bytes wait for the hub, limit buffer.max_bytes = {}",
                self.buffer.max_bytes
            )));
        }

        let answer = Accepted {
            accepted: payloads.len(),
            seqs,
            warnings,
            dry_run: false,
            replayed: false,
        };
        let idem = key.map(|(k, fp)| {
            let rec = KeyRecord {
                fingerprint: Some(fp),
                answer: answer.clone(),
            };
            let put = IdemPut {
                key: k.clone().into_bytes(),
                value: serde_json::to_vec(&rec).unwrap_or_default(),
                at_ms: now_ms,
            };
            group.keys.insert(k, rec);
            put
        });
        group
            .before
            .get_or_insert_with(|| (self.next_seq, self.head, self.ledger.clone()));
        for (seq, rec) in batch_recs {
            let old = self.held.insert(seq, rec);
            group.held_undo.push((seq, old));
        }
        for seq in &quota_remove {
            let old = self.held.remove(seq);
            group.held_undo.push((*seq, old));
        }
        group.bytes += bytes;
        group.batches.push(Prepared {
            append: Append {
                first: self.next_seq,
                envelopes: Vec::new(),
                head_hash: prev,
                quota_add,
                quota_remove,
                idem,
            },
            payloads,
        });
        self.ledger = ledger;
        self.next_seq += n;
        self.head = prev;
        Ok(answer)
    }

    /// The checks that need the writer's state, for record `i` of a batch: the shared
    /// checks at the seq it would get, quotas, withdrawals; gathers what the batch adds.
    fn judge(
        &self,
        j: &mut Judging,
        today: chrono::NaiveDate,
        i: usize,
        r: &Record,
        progress: &mut dyn FnMut(u64),
    ) -> Vec<Problem> {
        let campaign = &self.ident.campaign;
        let seq = self.next_seq + i as u64;
        let ctx = Context {
            campaign,
            scope: self.ident.scope,
            today,
            next_seq: seq,
        };
        let mut problems = validate::check(r, &ctx);
        match r {
            Record::Recommendation(rec) => match j.ledger.add(&campaign.quotas, rec) {
                Ok(()) => {
                    j.batch_recs.insert(seq, rec.clone());
                    j.quota_add
                        .push((seq, serde_json::to_vec(&r.to_value()).unwrap_or_default()));
                }
                Err(v) => problems.push(Problem::new("nominee", ProblemKind::Quota(Box::new(v)))),
            },
            Record::Withdrawal(w) if problems.is_empty() => {
                let target = j
                    .batch_recs
                    .remove(&w.target_seq)
                    .or_else(|| self.held.get(&w.target_seq).cloned());
                if let Some(t) = target
                    && !j.quota_remove.contains(&w.target_seq)
                {
                    j.ledger.remove(&t);
                    j.quota_remove.push(w.target_seq);
                }
            }
            _ => {}
        }
        for (field, code) in validate::unknown_codes(r) {
            j.warnings.push(format!(
                "record {}: {field}: {code} is not in the bundled region directory (2023 vintage); accepted, but check the code",
                i + 1
            ));
        }
        j.done += 1;
        progress(j.done);
        problems
    }

    /// Signs the group's entries (on every core) and appends all its batches in one
    /// transaction; if that fails, takes the group back out of the writer's state.
    /// `progress` is told how many entries are signed so far.
    fn write(&mut self, mut group: Group, progress: &mut dyn FnMut(u64)) -> Result<(), StoreError> {
        if group.batches.is_empty() {
            return Ok(());
        }
        let sizes: Vec<usize> = group.batches.iter().map(|b| b.payloads.len()).collect();
        let payloads: Vec<Vec<u8>> = group
            .batches
            .iter_mut()
            .flat_map(|b| std::mem::take(&mut b.payloads))
            .collect();
        let mut envelopes = seal_all(&self.ident.key, payloads, self.cores, progress).into_iter();
        let appends: Vec<Append> = group
            .batches
            .into_iter()
            .zip(sizes)
            .map(|(b, n)| Append {
                envelopes: envelopes.by_ref().take(n).collect(),
                ..b.append
            })
            .collect();
        debug_assert_eq!(
            appends
                .iter()
                .flat_map(|a| &a.envelopes)
                .map(|e| e.len() as u64)
                .sum::<u64>(),
            group.bytes,
            "stored sizes were judged right"
        );
        let written = self.store.append_all(&appends);
        if written.is_err() {
            if let Some((next_seq, head, ledger)) = group.before {
                (self.next_seq, self.head, self.ledger) = (next_seq, head, ledger);
            }
            for (seq, old) in group.held_undo.into_iter().rev() {
                match old {
                    Some(r) => self.held.insert(seq, r),
                    None => self.held.remove(&seq),
                };
            }
        }
        written
    }

    /// The first answer to `key` if it is remembered (by the store, or by a batch of this
    /// group) and bound to `fp`; `KeyReused` if it is bound to something else; `None` if
    /// unknown or expired.
    fn replay(
        &self,
        key: &str,
        fp: &str,
        now_ms: u64,
        group: &Group,
    ) -> Result<Option<Accepted>, IntakeError> {
        let rec = match group.keys.get(key) {
            Some(rec) => KeyRecord {
                fingerprint: rec.fingerprint.clone(),
                answer: rec.answer.clone(),
            },
            None => {
                let Some(stored) = self.store.idem_get(key.as_bytes())? else {
                    return Ok(None);
                };
                if stored
                    .at_ms
                    .is_some_and(|at| at.saturating_add(self.key_retention_ms) <= now_ms)
                {
                    return Ok(None);
                }
                serde_json::from_slice(&stored.value).map_err(|e| {
                    StoreError::Corrupt(format!("what is remembered for an idempotency key: {e}"))
                })?
            }
        };
        if rec.fingerprint.as_deref().is_some_and(|f| f != fp) {
            return Err(IntakeError::KeyReused { key: key.into() });
        }
        let mut a = rec.answer;
        a.replayed = true;
        Ok(Some(a))
    }

    /// Forgets keys older than the retention; a failure only delays it (and is logged).
    fn forget_expired_keys(&self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.key_retention_ms);
        if let Err(e) = self.store.prune_idem(cutoff, PRUNE_PER_BATCH) {
            warn!(error = %e, "Cannot forget expired idempotency keys; will try again with the next batch.");
        }
    }

    fn full(&self, reason: String) -> IntakeError {
        IntakeError::Full {
            reason,
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// What judging one batch's records gathers, record by record.
struct Judging {
    /// The quota ledger with the batch's recommendations counted.
    ledger: QuotaLedger,
    /// Recommendations of this batch, by seq (a withdrawal later in the batch removes one).
    batch_recs: HashMap<u64, Recommendation>,
    /// Recommendations to store as held: (seq, record JSON).
    quota_add: Vec<(u64, Vec<u8>)>,
    /// Held recommendations withdrawn.
    quota_remove: Vec<u64>,
    /// Codes the directory does not list.
    warnings: Vec<String>,
    /// Records judged so far.
    done: u64,
}

impl Judging {
    fn new(ledger: QuotaLedger) -> Judging {
        Judging {
            ledger,
            batch_recs: HashMap::new(),
            quota_add: Vec::new(),
            quota_remove: Vec::new(),
            warnings: Vec::new(),
            done: 0,
        }
    }
}

/// Smallest body read in parts by [`parse_split`] (about 200 records): below it, starting
/// threads costs more than it saves.
const PARSE_SPLIT_BYTES: usize = 64 << 10;

/// The records of a large NDJSON body read in `cores` parts at once, each part cut just
/// after a newline and read by `batch::parse` alone; `None` unless every part reads
/// without a problem and together they hold at most `max` records (the caller then reads
/// the body whole, for the exact refusal). The parts' records are the body's, in order:
/// NDJSON is a stream of values separated by whitespace and JSON strings hold no raw
/// newline, so a cut inside a value leaves the part before it ending in an unfinished
/// value, which does not read; cuts between values split the stream exactly. Only the
/// records' positions (lines) differ, and they matter only in a refusal.
fn parse_split(body: &[u8], format: Format, max: usize, cores: usize) -> Option<Vec<Record>> {
    parse_split_from(body, format, max, cores, PARSE_SPLIT_BYTES)
}

/// [`parse_split`] with the smallest body as a parameter (tests split small bodies).
fn parse_split_from(
    body: &[u8],
    format: Format,
    max: usize,
    cores: usize,
    min_bytes: usize,
) -> Option<Vec<Record>> {
    // A JSON array, or an object on its own, is one value: not split.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if format != Format::Json || first != Some(&b'{') || body.len() < min_bytes {
        return None;
    }
    let parts = cores.min(body.len() / (min_bytes / 2).max(1));
    if parts < 2 {
        return None;
    }
    let mut cuts = vec![0];
    for k in 1..parts {
        let from = (body.len() * k / parts).max(cuts[cuts.len() - 1]);
        let cut = from + body.get(from..)?.iter().position(|&b| b == b'\n')? + 1;
        if cut >= body.len() {
            return None;
        }
        cuts.push(cut);
    }
    cuts.push(body.len());
    let read = |part: &[u8]| batch::parse(part, Format::Json, max, |_, _| Vec::new()).ok();
    let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &body[w[0]..w[1]]).collect();
    let read_all: Vec<Option<Vec<Record>>> = std::thread::scope(|s| {
        let helpers: Vec<_> = pieces[1..]
            .iter()
            .map(|&part| {
                let started = std::thread::Builder::new()
                    .name("intake-parse".into())
                    .spawn_scoped(s, move || read(part));
                (started, part)
            })
            .collect();
        let mut out = vec![read(pieces[0])];
        for (started, part) in helpers {
            out.push(match started {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err(_) => read(part),
            });
        }
        out
    });
    let mut records = Vec::new();
    for part in read_all {
        records.extend(part?);
    }
    (records.len() <= max).then_some(records)
}

/// Fewest entries worth a thread of their own when signing a batch: below this, starting
/// the thread costs more than the signatures it would take over.
const SEAL_PER_THREAD: usize = 32;

/// One entry payload signed as a DSSE envelope ([`Entry::sign`]'s envelope), as the JSON
/// the store keeps.
fn seal(key: &SigningKey, payload: Vec<u8>) -> Vec<u8> {
    let env = Envelope::sign(key, ENTRY_PAYLOAD_TYPE, payload);
    // Base64 makes the payload a third longer; the rest (type, key id, signature) is
    // about 250 bytes: one allocation instead of a growing buffer.
    let mut out = Vec::with_capacity(env.payload.len() / 3 * 4 + 320);
    // Serialising these owned strings and byte vectors cannot fail.
    let _ = serde_json::to_writer(&mut out, &env);
    out
}

/// Signs payloads into stored envelopes, in order, on up to `cores` threads (each taking
/// at least [`SEAL_PER_THREAD`] entries; a thread that cannot be started leaves its share to
/// this one). Still one Ed25519 signature per entry: a signature needs only its payload,
/// so the chain (each payload's `prev`) was settled before. `progress` is told about how
/// many are signed so far.
fn seal_all(
    key: &SigningKey,
    payloads: Vec<Vec<u8>>,
    cores: usize,
    progress: &mut dyn FnMut(u64),
) -> Vec<Vec<u8>> {
    let n = payloads.len();
    let threads = cores.min(n / SEAL_PER_THREAD).max(1);
    let signed = AtomicU64::new(0);
    let sign_part = |part: Vec<Vec<u8>>, report: &mut dyn FnMut(u64)| -> Vec<Vec<u8>> {
        part.into_iter()
            .map(|p| {
                let env = seal(key, p);
                report(signed.fetch_add(1, Ordering::Relaxed) + 1);
                env
            })
            .collect()
    };
    if threads == 1 {
        return sign_part(payloads, progress);
    }
    // Contiguous shares, the first one for this thread. A share waits in its slot until
    // its thread takes it; a thread that cannot be started leaves it there for this one.
    let share = n.div_ceil(threads);
    let mut rest = payloads;
    let mut slots = Vec::with_capacity(threads - 1);
    let mine = {
        let mut tail = rest.split_off(share);
        while tail.len() > share {
            let next = tail.split_off(share);
            slots.push(Mutex::new(std::mem::replace(&mut tail, next)));
        }
        slots.push(Mutex::new(tail));
        rest
    };
    let take = |slot: &Mutex<Vec<Vec<u8>>>| {
        std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()))
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = slots
            .iter()
            .map(|slot| {
                let started = std::thread::Builder::new()
                    .name("intake-sign".into())
                    .spawn_scoped(s, || sign_part(take(slot), &mut |_| {}));
                (started, slot)
            })
            .collect();
        let mut out = sign_part(mine, progress);
        for (started, slot) in helpers {
            match started {
                Ok(h) => match h.join() {
                    Ok(envs) => out.extend(envs),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                Err(_) => out.extend(sign_part(take(slot), progress)),
            }
        }
        out
    })
}

/// Keys stored by an agent from before keys expired hold the bare answer and no time:
/// they are given `now` (so they expire one retention period from this start) and no
/// fingerprint (so they keep answering as before until then). Unreadable ones are dropped.
fn adopt_old_keys(store: &Store, now_ms: u64) -> Result<(), StoreError> {
    let mut old = Vec::new();
    for kv in store.idem_all() {
        let (key, stored) = kv?;
        if stored.at_ms.is_none() {
            old.push((key, stored.value));
        }
    }
    if old.is_empty() {
        return Ok(());
    }
    let n = old.len();
    for (key, value) in old {
        let answer: Option<Accepted> = serde_json::from_slice(&value).ok();
        let rec = answer.map(|answer| KeyRecord {
            fingerprint: None,
            answer,
        });
        match rec {
            Some(rec) => store.idem_put(&IdemPut {
                key,
                value: serde_json::to_vec(&rec).unwrap_or_default(),
                at_ms: now_ms,
            })?,
            None => store.idem_remove(&key)?,
        }
    }
    store.flush()?;
    info!(
        keys = n,
        "Idempotency keys stored by an older agent now expire after intake.idempotency_retention_secs."
    );
    Ok(())
}

struct Job {
    sub: Submission,
    reply: oneshot::Sender<Written>,
}

/// The writer's answer to a job, before durability.
struct Written {
    result: Result<Accepted, IntakeError>,
    /// The answer may go out only once the store is durable up to this seq: the head
    /// after the job for a batch stored or answered from an idempotency key (the stored
    /// answer it repeats may still be on its way to disk); `None` when the answer claims
    /// nothing stored (refusals, dry runs).
    durable_at: Option<u64>,
}

/// How far the store is on disk, as the committer publishes it.
#[derive(Debug, Clone, Default)]
struct Durable {
    /// Every entry up to this seq is on disk (a flush that started after it was appended
    /// has completed).
    through: u64,
    /// The latest flush that failed: the head it was to make durable, and why. Answers
    /// up to that head that are not durable by a later flush get a 500.
    failed: Option<(u64, Arc<str>)>,
}

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct IntakeHandle {
    tx: mpsc::Sender<Job>,
    durable: watch::Receiver<Durable>,
    /// Intake opens when this turns true (see [`spawn_writer_after`]); `None`: open.
    ready: Option<watch::Receiver<bool>>,
}

impl IntakeHandle {
    /// Submits a batch and waits for its durable answer.
    pub async fn submit(&self, sub: Submission) -> Result<Accepted, IntakeError> {
        if let Some(ready) = &self.ready
            && !*ready.borrow()
        {
            return Err(IntakeError::CatchingUp);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { sub, reply })
            .await
            .map_err(|_| IntakeError::Stopped)?;
        let written = rx.await.map_err(|_| IntakeError::Stopped)?;
        let answer = written.result?;
        if let Some(seq) = written.durable_at {
            self.durable(seq).await?;
        }
        if !answer.dry_run
            && !answer.replayed
            && let (Some(first), Some(last)) = (answer.seqs.first(), answer.seqs.last())
        {
            info!(first, last, accepted = answer.accepted, "Batch accepted.");
        }
        Ok(answer)
    }

    /// Waits until a flush that started after `seq` was appended has completed.
    async fn durable(&self, seq: u64) -> Result<(), IntakeError> {
        let mut rx = self.durable.clone();
        loop {
            {
                let d = rx.borrow_and_update();
                if d.through >= seq {
                    return Ok(());
                }
                if let Some((head, why)) = &d.failed
                    && *head >= seq
                {
                    return Err(IntakeError::Store(StoreError::Failed(format!(
                        "the batch may not be on disk: {why}"
                    ))));
                }
            }
            if rx.changed().await.is_err() {
                // The committer is gone; it flushes everything appended before it ends.
                return match rx.borrow().through >= seq {
                    true => Ok(()),
                    false => Err(IntakeError::Stopped),
                };
            }
        }
    }
}

/// Batches waiting for the writer; senders wait beyond this (back-pressure).
const QUEUE: usize = 256;

/// Starts the writer and its committer (group commit, see the module documentation).
/// The task ends when every [`IntakeHandle`] is dropped and all that was appended is
/// flushed. `appended` is notified after each flush that made new entries durable (it
/// wakes the pusher).
pub fn spawn_writer(
    writer: Writer,
    appended: Arc<Notify>,
) -> (IntakeHandle, tokio::task::JoinHandle<()>) {
    let store = writer.store.clone();
    spawn_writer_with(writer, appended, move || {
        let store = store.clone();
        async move { store.flush_async().await }
    })
}

/// [`spawn_writer`] with the flush as a seam: tests count flushes and hold them back.
pub(crate) fn spawn_writer_with<F, Fut>(
    writer: Writer,
    appended: Arc<Notify>,
    flush: F,
) -> (IntakeHandle, tokio::task::JoinHandle<()>)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), StoreError>> + Send,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let head = writer.next_seq - 1;
    let (head_tx, head_rx) = watch::channel(head);
    let (durable_tx, durable_rx) = watch::channel(Durable {
        through: head,
        failed: None,
    });
    let task = tokio::spawn(async move {
        let writing = tokio::task::spawn_blocking(move || write_loop(writer, rx, head_tx));
        commit_loop(head_rx, durable_tx, appended, flush).await;
        if let Err(e) = writing.await {
            // A panic while judging: the writer's state is unknown, so it took no more
            // batches; every waiting sender got "shutting down" and nothing is lost.
            error!(error = %e, "Intake writer failed; intake is stopped. Restart the agent.");
        }
    });
    (
        IntakeHandle {
            tx,
            durable: durable_rx,
            ready: None,
        },
        task,
    )
}

/// [`spawn_writer`] for a store that may be behind the hub (run from a backup copy): the
/// writer is opened with `open` only once `caught_up` turns true (the pusher took back
/// what the hub holds of this chain); until then every submission is
/// [`IntakeError::CatchingUp`]. If `caught_up`'s sender goes first (the agent stops),
/// intake never opens and the task ends.
pub fn spawn_writer_after(
    caught_up: watch::Receiver<bool>,
    open: impl FnOnce() -> Result<Writer, StoreError> + Send + 'static,
    appended: Arc<Notify>,
) -> (IntakeHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (head_tx, head_rx) = watch::channel(0);
    let (durable_tx, durable_rx) = watch::channel(Durable {
        through: 0,
        failed: None,
    });
    let mut ready = caught_up.clone();
    let task = tokio::spawn(async move {
        if ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        let writer = match tokio::task::spawn_blocking(open).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                error!(error = %e, "Cannot open intake after catching up with the hub; intake is stopped. Run `spacesync-agent verify`, then restart the agent.");
                return;
            }
            Err(e) => {
                error!(error = %e, "Opening intake failed; intake is stopped. Restart the agent.");
                return;
            }
        };
        let head = writer.next_seq - 1;
        head_tx.send_replace(head);
        durable_tx.send_modify(|d| d.through = head);
        let store = writer.store.clone();
        let writing = tokio::task::spawn_blocking(move || write_loop(writer, rx, head_tx));
        commit_loop(head_rx, durable_tx, appended, move || {
            let store = store.clone();
            async move { store.flush_async().await }
        })
        .await;
        if let Err(e) = writing.await {
            error!(error = %e, "Intake writer failed; intake is stopped. Restart the agent.");
        }
    });
    (
        IntakeHandle {
            tx,
            durable: durable_rx,
            ready: Some(caught_up),
        },
        task,
    )
}

/// Most batches judged and appended together.
const GROUP_MAX: usize = 64;

/// Most request bytes judged and appended together: batches queued beyond wait for the
/// next group.
const GROUP_BYTES: usize = 16 << 20;

/// The writer: takes every batch queued (up to [`GROUP_MAX`] or [`GROUP_BYTES`]), judges
/// them in arrival order, appends the accepted ones in one transaction (not flushed) and
/// publishes the new head to the committer before the jobs hear back. Runs on a blocking
/// thread until every sender is gone. Batches arriving while a flush is under way are
/// judged and signed meanwhile; their transaction waits for the flush (sled serialises
/// the two), and the next flush covers them all.
fn write_loop(mut writer: Writer, mut rx: mpsc::Receiver<Job>, head: watch::Sender<u64>) {
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.sub.body.len();
        let mut jobs = vec![first];
        while jobs.len() < GROUP_MAX && bytes < GROUP_BYTES {
            match rx.try_recv() {
                Ok(j) => {
                    bytes += j.sub.body.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let subs: Vec<&Submission> = jobs.iter().map(|j| &j.sub).collect();
        let results = writer.submit_group(&subs);
        let now = writer.next_seq - 1;
        head.send_if_modified(|h| std::mem::replace(h, now) != now);
        for (job, result) in jobs.into_iter().zip(results) {
            let durable_at = match &result {
                Ok(a) if !a.dry_run => Some(now),
                _ => None,
            };
            let _ = job.reply.send(Written { result, durable_at });
        }
    }
}

/// The committer: whenever the writer's head is past what the last flush covered, reads
/// the head, flushes, and publishes that head as durable: one flush answers every batch
/// appended before it started, while the writer goes on appending the next ones. A failed
/// flush fails the answers up to its head and is not retried until more is appended (a
/// later flush covers the earlier entries too). Ends when the writer is gone and its last
/// appends are flushed.
async fn commit_loop<F, Fut>(
    mut head: watch::Receiver<u64>,
    durable: watch::Sender<Durable>,
    woke: Arc<Notify>,
    mut flush: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut attempted = durable.borrow().through;
    loop {
        let target = *head.borrow_and_update();
        if target > attempted {
            attempted = target;
            match flush().await {
                Ok(()) => {
                    durable.send_modify(|d| d.through = d.through.max(target));
                    woke.notify_one();
                }
                Err(e) => {
                    error!(error = %e, head = target, "Flushing accepted batches failed; answering 500.");
                    durable.send_modify(|d| d.failed = Some((target, e.to_string().into())));
                }
            }
            continue;
        }
        if head.changed().await.is_err() {
            // The writer is gone; its last head may not be flushed yet.
            if *head.borrow() == attempted {
                return;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use spacesync_shared::clock::FixedClock;

    pub(crate) fn identity() -> Arc<Identity> {
        Arc::new(Identity {
            source: SourceId::parse("gd-rrt").unwrap_or_else(|e| panic!("{e}")),
            scope: RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}")),
            campaign: Campaign::builtin_2018(),
            key: SigningKey::from_bytes(&[4; 32]),
        })
    }

    pub(crate) fn clock() -> Arc<dyn Clock> {
        let t = chrono::DateTime::parse_from_rfc3339("2018-11-25T10:00:00+08:00")
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&chrono::Utc);
        Arc::new(FixedClock::new(t))
    }

    pub(crate) fn writer(store: &Store, buffer: BufferConfig) -> Writer {
        Writer::open(
            store.clone(),
            identity(),
            clock(),
            buffer,
            1000,
            1,
            crate::config::DEFAULT_IDEMPOTENCY_RETENTION_SECS,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn json(body: &str) -> Submission {
        Submission {
            body: body.as_bytes().to_vec(),
            format: Format::Json,
            dry_run: false,
            idempotency_key: None,
        }
    }

    fn rec(by: &str, school: &str) -> String {
        format!(
            r#"{{"kind":"recommendation","level":"county","by":"{by}","nominee":{{"type":"school","code":"{school}","region":"{by}"}}}}"#
        )
    }

    /// One behaviour, one helper: submit `lines` (NDJSON) and compare the outcome.
    fn check(w: &mut Writer, lines: &[String], expected: Result<&[u64], &str>) {
        let got = w.submit(&json(&lines.join("\n")), &mut |_| {});
        match (got, expected) {
            (Ok(a), Ok(seqs)) => assert_eq!(a.seqs, seqs),
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e}"),
            (got, want) => panic!("got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn quota_is_counted_across_the_batch_and_withdrawals_free_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let mut w = writer(&store, BufferConfig::default());
        let five: Vec<String> = (1..=5)
            .map(|i| rec("440106", &format!("44010600{i:02}")))
            .collect();
        // A sixth in the same batch breaks the county quota of 5: the whole batch is refused.
        let mut six = five.clone();
        six.push(rec("440106", "4401060006"));
        check(
            &mut w,
            &six,
            Err(
                "record 6 (line 6): nominee: quota exceeded: a county recommends at most 5 schools; 440106 has already nominated 5",
            ),
        );
        assert_eq!(store.head().map(|h| h.0).ok(), Some(0));
        check(&mut w, &five, Ok(&[1, 2, 3, 4, 5]));
        // Renominating a counted school uses no quota.
        check(&mut w, &[rec("440106", "4401060001")], Ok(&[6]));
        check(
            &mut w,
            &[rec("440106", "4401060006")],
            Err("quota exceeded"),
        );
        // Withdraw seq 2, then the sixth school fits — in the same batch.
        let w2 = r#"{"kind":"withdrawal","target_seq":2,"reason":"duplicate"}"#.to_string();
        check(&mut w, &[w2, rec("440106", "4401060006")], Ok(&[7, 8]));
        // The ledger survives a restart: rebuilt from the quota tree.
        let mut w = writer(&store, BufferConfig::default());
        check(
            &mut w,
            &[rec("440106", "4401060007")],
            Err("quota exceeded"),
        );
    }

    #[test]
    fn a_full_buffer_refuses_with_the_reason_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let limits = BufferConfig {
            max_entries: 3,
            max_bytes: 1 << 20,
        };
        let mut w = writer(&store, limits);
        let act = |t: &str| {
            format!(
                r#"{{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"{t}"}}"#
            )
        };
        check(&mut w, &[act("a"), act("b")], Ok(&[1, 2]));
        check(
            &mut w,
            &[act("c"), act("d")],
            Err("buffer is full (2 entries wait"),
        );
        check(
            &mut w,
            &[act("a"), act("b"), act("c"), act("d")],
            Err("split it"),
        );
        check(&mut w, &[act("c")], Ok(&[3]));
        assert_eq!(store.head().map(|h| h.0).ok(), Some(3));
    }

    #[test]
    fn idempotency_keys_answer_the_same_and_store_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let mut w = writer(&store, BufferConfig::default());
        let mut sub = json(
            r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"x"}"#,
        );
        sub.idempotency_key = Some("file-1".into());
        let a = w
            .submit(&sub, &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let b = w
            .submit(&sub, &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.seqs, b.seqs);
        assert!(b.replayed);
        assert_eq!(store.entry_count(), 1);
    }

    #[test]
    fn keys_of_an_older_agent_keep_answering_and_then_expire() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let mut w = writer(&store, BufferConfig::default());
        let mut sub = json(
            r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"x"}"#,
        );
        sub.idempotency_key = Some("file/old".into());
        let first = w
            .submit(&sub, &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        // Rewind it to what an older agent stored: the bare answer, no time, no body hash.
        let bare = serde_json::to_vec(&first).unwrap_or_default();
        store
            .debug_put_raw_idem(b"file/old", &bare)
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .debug_put_raw_idem(b"file/garbage", b"not json")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut w = writer(&store, BufferConfig::default());
        assert_eq!(store.idem_count(), 1, "the unreadable one is dropped");
        let again = w
            .submit(&sub, &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(again.replayed);
        assert_eq!(again.seqs, first.seqs);
        assert_eq!(
            store
                .idem_get(b"file/old")
                .ok()
                .flatten()
                .and_then(|v| v.at_ms),
            Some(ms(clock().now())),
            "it now expires one retention period from this start"
        );
    }

    #[test]
    fn keys_are_checked_here_too() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let mut w = writer(&store, BufferConfig::default());
        let mut sub = json(
            r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"x"}"#,
        );
        sub.idempotency_key = Some("a\nforged log line".into());
        let err = w
            .submit(&sub, &mut |_| {})
            .map(|_| ())
            .expect_err("refused");
        assert!(matches!(err, IntakeError::BadKey(_)), "{err}");
        assert_eq!(store.head().map(|h| h.0).ok(), Some(0));
    }

    fn act(title: &str) -> Submission {
        json(&format!(
            r#"{{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"{title}"}}"#
        ))
    }

    /// The flush seam for group-commit tests: counts flushes, logs the head each one made
    /// durable (read before it starts, so everything up to it was appended before), and can
    /// hold a flush back until a condition holds.
    #[derive(Clone, Default)]
    struct Flushes {
        /// Heads made durable, in completion order.
        done: Arc<Mutex<Vec<u64>>>,
        /// Flushes started.
        started: Arc<AtomicU64>,
    }

    impl Flushes {
        fn done(&self) -> Vec<u64> {
            self.done.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        /// Whether a completed flush covers `seq`.
        fn covers(&self, seq: u64) -> bool {
            self.done().iter().any(|&h| h >= seq)
        }

        /// A flush function for [`spawn_writer_with`]: before flushing, the n-th flush
        /// (from 0) waits for `hold(n)` to complete; it fails when `fail(n)`.
        fn seam<H, HF>(
            &self,
            store: &Store,
            hold: H,
            fail: fn(u64) -> bool,
        ) -> impl FnMut() -> BoxedFlush + Send + 'static
        where
            H: Fn(u64, Store) -> HF + Send + Sync + 'static,
            HF: Future<Output = ()> + Send + 'static,
        {
            let (me, store, hold) = (self.clone(), store.clone(), Arc::new(hold));
            move || {
                let (me, store, hold) = (me.clone(), store.clone(), hold.clone());
                Box::pin(async move {
                    let n = me.started.fetch_add(1, Ordering::SeqCst);
                    let head = store.head()?.0;
                    hold(n, store.clone()).await;
                    if fail(n) {
                        return Err(StoreError::Corrupt("disk on fire (test)".into()));
                    }
                    store.flush_async().await?;
                    me.done.lock().unwrap_or_else(|p| p.into_inner()).push(head);
                    Ok(())
                })
            }
        }
    }

    /// Boxed flush futures, so the seam's closure has one nameable type.
    type BoxedFlush = std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

    fn open_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        (dir, store)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Records submitted while the store is closed and reopened over and over (the
    /// settling at rest, `Store::reopen`) are all acknowledged with consecutive seqs, each
    /// on disk when answered, and all there when the store is opened again afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_submitted_during_reopens_are_all_acknowledged_and_kept() {
        const N: u64 = 120;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let (intake, task) = spawn_writer(writer(&store, BufferConfig::default()), Arc::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reopener = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reopened = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    if store.reopen().unwrap_or_else(|e| panic!("{e}")) {
                        reopened += 1;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                reopened
            })
        };
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..4u64 {
            let (intake, store) = (intake.clone(), store.clone());
            clients.spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..N / 4 {
                    let a = intake
                        .submit(act(&format!("c{c} t{i}")))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert!(
                        a.seqs.iter().all(|&q| q <= store.durable_head()),
                        "seqs {:?} answered above the durable head",
                        a.seqs
                    );
                    seqs.extend(a.seqs);
                }
                seqs
            });
        }
        let mut seqs: Vec<u64> = clients.join_all().await.into_iter().flatten().collect();
        stop.store(true, Ordering::SeqCst);
        let reopened = reopener
            .join()
            .unwrap_or_else(|_| panic!("the reopener panicked"));
        assert!(reopened > 0, "the store was never reopened");
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
        drop(intake);
        task.await.unwrap_or_else(|e| panic!("{e}"));
        drop(store);
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.head().unwrap_or_else(|e| panic!("{e}")).0, N);
        for q in 1..=N {
            assert!(
                store.entry(q).unwrap_or_else(|e| panic!("{e}")).is_some(),
                "seq {q} acknowledged but not kept"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submits_get_consecutive_seqs_each_answered_after_a_flush_that_covers_it() {
        const N: u64 = 40;
        let (_dir, store) = open_store();
        let flushes = Flushes::default();
        // The first flush is held until every batch is appended: the rest must share one.
        let seam = flushes.seam(
            &store,
            |n, store: Store| async move {
                if n == 0 {
                    until("every batch appended", || {
                        store.head().map(|h| h.0).unwrap_or(0) == N
                    })
                    .await;
                }
            },
            |_| false,
        );
        let (intake, task) = spawn_writer_with(
            writer(&store, BufferConfig::default()),
            Arc::default(),
            seam,
        );
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..N {
            let (intake, flushes) = (intake.clone(), flushes.clone());
            clients.spawn(async move {
                let a = intake
                    .submit(act(&format!("t{i}")))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(a.seqs.len(), 1);
                assert!(
                    flushes.covers(a.seqs[0]),
                    "seq {} answered before a flush covered it (flushed: {:?})",
                    a.seqs[0],
                    flushes.done()
                );
                a.seqs[0]
            });
        }
        let mut seqs: Vec<u64> = clients.join_all().await;
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
        let started = flushes.started.load(Ordering::SeqCst);
        assert!(
            started <= 2,
            "{N} batches took {started} flushes; all but the first batch should share one"
        );
        drop(intake);
        task.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(flushes.done().last(), Some(&N));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_is_answered_only_once_what_it_repeats_is_on_disk() {
        let (_dir, store) = open_store();
        let flushes = Flushes::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let held = gate.clone();
        let seam = flushes.seam(
            &store,
            move |_, _| {
                let held = held.clone();
                async move {
                    if let Ok(p) = held.acquire().await {
                        p.forget();
                    }
                }
            },
            |_| false,
        );
        let (intake, _task) = spawn_writer_with(
            writer(&store, BufferConfig::default()),
            Arc::default(),
            seam,
        );
        let mut sub = act("keyed");
        sub.idempotency_key = Some("k-1".into());
        let first = tokio::spawn({
            let (intake, sub) = (intake.clone(), sub.clone());
            async move { intake.submit(sub).await }
        });
        until("the batch appended", || {
            store.head().map(|h| h.0).unwrap_or(0) == 1
        })
        .await;
        let again = tokio::spawn({
            let intake = intake.clone();
            async move { intake.submit(sub).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !first.is_finished() && !again.is_finished(),
            "answered before the flush"
        );
        gate.add_permits(100);
        let first = first.await.unwrap_or_else(|e| panic!("{e}"));
        let again = again.await.unwrap_or_else(|e| panic!("{e}"));
        let (first, again) = (
            first.unwrap_or_else(|e| panic!("{e}")),
            again.unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!((first.seqs.clone(), first.replayed), (vec![1], false));
        assert_eq!((again.seqs, again.replayed), (vec![1], true));
        assert_eq!(store.entry_count(), 1);
        assert!(flushes.covers(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_fails_the_answers_it_was_to_cover_and_intake_goes_on() {
        let (_dir, store) = open_store();
        let flushes = Flushes::default();
        let seam = flushes.seam(&store, |_, _| async {}, |n| n == 0);
        let (intake, _task) = spawn_writer_with(
            writer(&store, BufferConfig::default()),
            Arc::default(),
            seam,
        );
        let err = intake
            .submit(act("a"))
            .await
            .map(|a| a.seqs)
            .expect_err("the flush failed");
        assert!(
            matches!(&err, IntakeError::Store(e) if e.to_string().contains("may not be on disk")),
            "{err}"
        );
        // Not retried until more is appended; the next flush covers both.
        let b = intake
            .submit(act("b"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.seqs, vec![2]);
        assert_eq!(flushes.started.load(Ordering::SeqCst), 2);
        assert_eq!(flushes.done(), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_and_dry_runs_wait_for_no_flush() {
        let (_dir, store) = open_store();
        let flushes = Flushes::default();
        // Every flush hangs: only answers that claim nothing stored can come back.
        let seam = flushes.seam(&store, |_, _| std::future::pending(), |_| false);
        let (intake, _task) = spawn_writer_with(
            writer(&store, BufferConfig::default()),
            Arc::default(),
            seam,
        );
        let mut dry = act("dry");
        dry.dry_run = true;
        let a = intake.submit(dry).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(a.dry_run);
        let refused = intake.submit(json("{}")).await;
        assert!(matches!(refused, Err(IntakeError::Refused(_))));
        assert_eq!(flushes.started.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn signatures_spread_over_threads_are_the_same_envelopes_in_order() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let payloads: Vec<Vec<u8>> = (0..101)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect();
        let one = seal_all(&key, payloads.clone(), 1, &mut |_| {});
        for cores in [2, 3, 8] {
            let mut seen = Vec::new();
            let spread = seal_all(&key, payloads.clone(), cores, &mut |n| seen.push(n));
            assert_eq!(spread, one, "{cores} threads");
            assert!(
                seen.windows(2).all(|w| w[0] <= w[1]),
                "progress goes forward"
            );
        }
        for (env, payload) in one.iter().zip(&payloads) {
            let env: Envelope = serde_json::from_slice(env).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&env.payload, payload);
            assert_eq!(env.signatures.len(), 1);
            assert_eq!(
                env,
                Envelope::sign(&key, ENTRY_PAYLOAD_TYPE, payload.clone())
            );
            env.verify(ENTRY_PAYLOAD_TYPE, &key.verifying_key())
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn a_batch_signed_on_several_threads_is_the_chain_entry_sign_makes() {
        let (_dir, store) = open_store();
        let mut w = writer(&store, BufferConfig::default());
        w.cores = 4;
        let body: Vec<String> = (0..150)
            .map(|i| {
                format!(
                    r#"{{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t{i}"}}"#
                )
            })
            .collect();
        let a = w
            .submit(&json(&body.join("\n")), &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.seqs, (1..=150).collect::<Vec<_>>());
        let ident = identity();
        let mut prev = Digest::ZERO;
        for (seq, bytes) in store
            .raw_entries()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        {
            let env: Envelope = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
            let entry = Entry::open(&env, &ident.key.verifying_key())
                .unwrap_or_else(|e| panic!("seq {seq}: {e}"));
            assert_eq!((entry.seq, entry.prev), (seq, prev));
            // Byte for byte what Entry::sign stores.
            assert_eq!(
                bytes,
                serde_json::to_vec(&entry.sign(&ident.key)).unwrap_or_default()
            );
            prev = env.payload_hash();
        }
        assert_eq!(store.head().ok(), Some((150, prev)));
    }

    /// One behaviour, one helper: submit `batches` (NDJSON lines each) as one group and
    /// compare each answer.
    fn check_group(w: &mut Writer, batches: &[Submission], expected: &[Result<&[u64], &str>]) {
        let subs: Vec<&Submission> = batches.iter().collect();
        let got = w.submit_group(&subs);
        assert_eq!(got.len(), expected.len());
        for (i, (got, want)) in got.into_iter().zip(expected).enumerate() {
            match (got, want) {
                (Ok(a), Ok(seqs)) => assert_eq!(&a.seqs, seqs, "batch {i}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "batch {i}: {e}"),
                (got, want) => panic!("batch {i}: got {got:?}, expected {want:?}"),
            }
        }
    }

    fn lines(recs: &[String]) -> Submission {
        json(&recs.join("\n"))
    }

    #[test]
    fn a_group_is_judged_as_if_its_batches_came_one_by_one() {
        let (_dir, store) = open_store();
        let mut w = writer(&store, BufferConfig::default());
        let recs: Vec<String> = (1..=6)
            .map(|i| rec("440106", &format!("44010600{i:02}")))
            .collect();
        let withdraw = r#"{"kind":"withdrawal","target_seq":2,"reason":"duplicate"}"#.to_string();
        check_group(
            &mut w,
            &[
                lines(&recs[..5]),
                // The county's quota of 5 is used up by the batch before, in this group.
                lines(&recs[5..]),
                lines(std::slice::from_ref(&withdraw)),
                // Freed by the withdrawal just before.
                lines(&recs[5..]),
            ],
            &[
                Ok(&[1, 2, 3, 4, 5]),
                Err("quota exceeded"),
                Ok(&[6]),
                Ok(&[7]),
            ],
        );
        assert_eq!(store.head().map(|h| h.0).ok(), Some(7));
        // What was stored is what a restart reads back.
        let mut w = writer(&store, BufferConfig::default());
        check_group(
            &mut w,
            &[lines(&[rec("440106", "4401060009")])],
            &[Err("quota exceeded")],
        );
    }

    #[test]
    fn a_key_bound_in_a_group_answers_its_repeats_in_the_same_group() {
        let (_dir, store) = open_store();
        let mut w = writer(&store, BufferConfig::default());
        let keyed = |title: &str| {
            let mut s = act(title);
            s.idempotency_key = Some("k".into());
            s
        };
        let subs = [keyed("a"), act("b"), keyed("a"), keyed("other bytes")];
        let refs: Vec<&Submission> = subs.iter().collect();
        let got = w.submit_group(&refs);
        let seqs = |i: usize| got[i].as_ref().map(|a| (a.seqs.clone(), a.replayed)).ok();
        assert_eq!(seqs(0), Some((vec![1], false)));
        assert_eq!(seqs(1), Some((vec![2], false)));
        assert_eq!(seqs(2), Some((vec![1], true)), "answered as the first time");
        assert!(
            matches!(got[3], Err(IntakeError::KeyReused { .. })),
            "{:?}",
            got[3]
        );
        assert_eq!(store.entry_count(), 2);
        assert_eq!(store.idem_count(), 1);
    }

    #[test]
    fn the_byte_limit_counts_the_batches_before_in_the_group() {
        let (_dir, store) = open_store();
        let one = {
            let mut w = writer(&open_store().1, BufferConfig::default());
            w.submit(&act("a"), &mut |_| {})
                .unwrap_or_else(|e| panic!("{e}"));
            w.store.buffered_bytes().unwrap_or_else(|e| panic!("{e}"))
        };
        // Room for one entry and a half.
        let limits = BufferConfig {
            max_entries: 100,
            max_bytes: one * 3 / 2,
        };
        let mut w = writer(&store, limits);
        check_group(
            &mut w,
            &[act("a"), act("b")],
            &[Ok(&[1]), Err("bytes wait for the hub")],
        );
        assert_eq!(store.buffered_bytes().ok(), Some(one), "judged exactly");
    }

    #[test]
    fn a_group_whose_write_fails_leaves_the_writer_as_before_it() {
        let (_dir, store) = open_store();
        let mut w = writer(&store, BufferConfig::default());
        // Someone else appends seq 1 behind the writer's back: its next write must fail.
        store
            .append(&Append {
                first: 1,
                envelopes: vec![b"{}".to_vec()],
                head_hash: Digest([1; 32]),
                ..Append::default()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let five: Vec<String> = (1..=5)
            .map(|i| rec("440106", &format!("44010600{i:02}")))
            .collect();
        let mut dry = lines(&five);
        dry.dry_run = true;
        check_group(
            &mut w,
            &[lines(&five), dry],
            &[
                Err("nothing of the batch was stored"),
                Err("nothing of the batch was stored"),
            ],
        );
        assert_eq!(w.next_seq(), 1);
        assert_eq!(w.head, Digest::ZERO);
        assert!(w.held.is_empty());
        // The quota the failed batch took is free again (judged, not stored: a dry run).
        let mut dry = lines(&five);
        dry.dry_run = true;
        let a = w
            .submit(&dry, &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.seqs, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn stored_sizes_are_known_before_signing() {
        let (_dir, store) = open_store();
        let w = writer(&store, BufferConfig::default());
        for len in (0..40).chain([999, 1000, 1001, 70_000]) {
            let env = seal(&w.ident.key, vec![b'x'; len]);
            assert_eq!(
                env.len() as u64,
                w.envelope_overhead + len.div_ceil(3) as u64 * 4,
                "payload of {len} bytes"
            );
        }
    }

    #[test]
    fn a_body_read_in_parts_holds_the_records_read_whole_or_is_read_whole() {
        let act = |t: &str| {
            format!(
                r#"{{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"{t}"}}"#
            )
        };
        let pretty = |t: &str| act(t).replace(",", ",\n  ").replace("{", "{\n ");
        let many = |n: usize, f: &dyn Fn(&str) -> String, sep: &str| {
            (0..n)
                .map(|i| f(&format!("t{i}")))
                .collect::<Vec<_>>()
                .join(sep)
        };
        let bodies: Vec<(&str, String)> = vec![
            ("ndjson", many(40, &act, "\n")),
            ("ndjson, CRLF and blank lines", many(40, &act, "\r\n\n")),
            ("trailing newlines", many(40, &act, "\n") + "\n\n\n"),
            ("leading blanks", format!("\n  \n{}", many(40, &act, "\n"))),
            ("objects over several lines", many(40, &pretty, "\n")),
            ("two objects a line", many(40, &act, " ")),
            ("an array", format!("[{}]", many(40, &act, ",\n"))),
            ("a bad line late", many(30, &act, "\n") + "\n{\"kind\":\n"),
            (
                "a bad line early",
                format!("{{\"kind\":1,,}}\n{}", many(30, &act, "\n")),
            ),
            (
                "not a record",
                many(30, &act, "\n") + "\n[1]\n" + &many(5, &act, "\n"),
            ),
            (
                "a duplicate key",
                many(30, &act, "\n") + "\n{\"kind\":\"activity\",\"kind\":\"x\"}",
            ),
            (
                "a string with an escaped newline",
                many(30, &act, "\n").replace("t7", "t\\n7"),
            ),
            (
                "not UTF-8",
                many(30, &act, "\n").replace("t20", "t\u{00e9}20"),
            ),
        ];
        for (what, body) in &bodies {
            let mut body = body.clone().into_bytes();
            if *what == "not UTF-8"
                && let Some(i) = body.iter().position(|&b| b == 0xc3)
            {
                body[i] = 0xff;
            }
            let whole = batch::parse(&body, Format::Json, 1000, |_, _| Vec::new());
            for cores in [2, 3, 7] {
                for max in [1000, 35] {
                    let split = parse_split_from(&body, Format::Json, max, cores, 1);
                    let whole_max = batch::parse(&body, Format::Json, max, |_, _| Vec::new());
                    match (&split, &whole_max) {
                        (Some(parts), Ok(whole)) => {
                            assert_eq!(parts, whole, "{what}: {cores} parts, max {max}")
                        }
                        (Some(_), Err(e)) => {
                            panic!(
                                "{what}: {cores} parts, max {max}: read in parts, refused whole: {e}"
                            )
                        }
                        (None, _) => {}
                    }
                }
            }
            // Well-formed NDJSON is read in parts (else nothing is gained).
            if what.starts_with("ndjson") || *what == "trailing newlines" {
                assert!(whole.is_ok(), "{what}");
                assert!(
                    parse_split_from(&body, Format::Json, 1000, 2, 1).is_some(),
                    "{what}: not read in parts"
                );
            }
        }
        // CSV and small bodies are left to batch::parse.
        let ndjson = many(40, &act, "\n").into_bytes();
        assert!(parse_split_from(&ndjson, Format::Csv, 1000, 2, 1).is_none());
        assert!(parse_split(&ndjson, Format::Json, 1000, 2).is_none());
    }

    #[test]
    fn a_large_batch_with_a_bad_record_is_refused_with_its_line_as_before() {
        let (_dir, store) = open_store();
        let mut w = writer(&store, BufferConfig::default());
        let mut lines: Vec<String> = (0..700)
            .map(|i| {
                format!(
                    r#"{{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t{i}"}}"#
                )
            })
            .collect();
        // Read in parts fine, refused by the checks (out of scope) at record 650.
        lines[649] = lines[649].replace("440100", "450100");
        let body = lines.join("\n");
        assert!(body.len() > PARSE_SPLIT_BYTES);
        assert!(parse_split(body.as_bytes(), Format::Json, 1000, 2).is_some());
        let err = w
            .submit(&json(&body), &mut |_| {})
            .map(|a| a.seqs)
            .expect_err("refused");
        assert!(err.to_string().contains("record 650 (line 650)"), "{err}");
        assert_eq!(store.head().map(|h| h.0).ok(), Some(0));
        lines[649] = lines[649].replace("450100", "440100");
        let a = w
            .submit(&json(&lines.join("\n")), &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.seqs, (1..=700).collect::<Vec<_>>());
    }
}
