//! Intake: a batch of records becomes signed, chained entries, whole or not at all.
//!
//! [`Writer`] holds what judging a batch needs (next seq, chain head, quota ledger of the
//! recommendations held) and is the only code that appends to the store. A batch's
//! payloads are chained in order; their signatures, which need only the payload, are
//! spread over the cores. In `run` it lives
//! in one task ([`spawn_writer`]) that takes batches from a channel: every batch queued
//! while the previous group was being written joins the next group, and the whole group
//! shares one `flush_async` (group commit). Answers go out only after that flush.
//! The command-line `import` uses the same [`Writer`] directly.
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
use tokio::sync::{Notify, mpsc, oneshot};
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
        let now_ms = ms(self.clock.now());
        self.forget_expired_keys(now_ms);
        let key = match &sub.idempotency_key {
            None => None,
            Some(k) => {
                check_key(k.as_bytes()).map_err(IntakeError::BadKey)?;
                let fp = fingerprint(sub);
                if let Some(a) = self.replay(k, &fp, now_ms)? {
                    return Ok(a);
                }
                Some((k.clone(), fp))
            }
        };

        let campaign = &self.ident.campaign;
        let today = campaign.local_date(self.clock.now());
        let mut ledger = self.ledger.clone();
        let mut batch_recs: HashMap<u64, Recommendation> = HashMap::new();
        let mut quota_add: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut quota_remove: Vec<u64> = Vec::new();
        let mut warnings = Vec::new();
        let mut done = 0u64;
        let records = batch::parse(&sub.body, sub.format, self.max_records, |i, r| {
            let seq = self.next_seq + i as u64;
            let ctx = Context {
                campaign,
                scope: self.ident.scope,
                today,
                next_seq: seq,
            };
            let mut problems = validate::check(r, &ctx);
            match r {
                Record::Recommendation(rec) => match ledger.add(&campaign.quotas, rec) {
                    Ok(()) => {
                        batch_recs.insert(seq, rec.clone());
                        quota_add.push((seq, serde_json::to_vec(&r.to_value()).unwrap_or_default()));
                    }
                    Err(v) => problems.push(Problem::new("nominee", ProblemKind::Quota(Box::new(v)))),
                },
                Record::Withdrawal(w) if problems.is_empty() => {
                    let target = batch_recs
                        .remove(&w.target_seq)
                        .or_else(|| self.held.get(&w.target_seq).cloned());
                    if let Some(t) = target
                        && !quota_remove.contains(&w.target_seq)
                    {
                        ledger.remove(&t);
                        quota_remove.push(w.target_seq);
                    }
                }
                _ => {}
            }
            for (field, code) in validate::unknown_codes(r) {
                warnings.push(format!(
                    "record {}: {field}: {code} is not in the bundled region directory (2023 vintage); accepted, but check the code",
                    i + 1
                ));
            }
            done += 1;
            progress(done);
            problems
        })
        .map_err(IntakeError::Refused)?;

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
        // which needs only the payload, comes after, spread over the cores.
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
        let envelopes = seal_all(&self.ident.key, payloads, self.cores, &mut |signed| {
            progress(done + signed)
        });
        done += envelopes.len() as u64;
        progress(done);
        let bytes: u64 = envelopes.iter().map(|e| e.len() as u64).sum();
        if bytes > self.buffer.max_bytes {
            return Err(IntakeError::TooLarge {
                what: format!("{bytes} bytes signed"),
                limit: format!("buffer.max_bytes = {}", self.buffer.max_bytes),
            });
        }
        let buffered_bytes = self.store.buffered_bytes()?;
        if buffered_bytes + bytes > self.buffer.max_bytes {
            return Err(self.full(format!(
                "{buffered_bytes} bytes wait for the hub, limit buffer.max_bytes = {}",
                self.buffer.max_bytes
            )));
        }

        let answer = Accepted {
            accepted: envelopes.len(),
            seqs,
            warnings,
            dry_run: false,
            replayed: false,
        };
        let append = Append {
            first: self.next_seq,
            envelopes,
            head_hash: prev,
            quota_add,
            quota_remove,
            idem: key.map(|(k, fp)| IdemPut {
                key: k.into_bytes(),
                value: serde_json::to_vec(&KeyRecord {
                    fingerprint: Some(fp),
                    answer: answer.clone(),
                })
                .unwrap_or_default(),
                at_ms: now_ms,
            }),
        };
        self.store.append(&append)?;
        for (seq, rec) in batch_recs {
            self.held.insert(seq, rec);
        }
        for seq in &append.quota_remove {
            self.held.remove(seq);
        }
        self.ledger = ledger;
        self.next_seq += n;
        self.head = prev;
        Ok(answer)
    }

    /// The first answer to `key` if it is remembered and bound to `fp`; `KeyReused` if it is
    /// bound to something else; `None` if unknown or expired.
    fn replay(&self, key: &str, fp: &str, now_ms: u64) -> Result<Option<Accepted>, IntakeError> {
        let Some(stored) = self.store.idem_get(key.as_bytes())? else {
            return Ok(None);
        };
        if stored
            .at_ms
            .is_some_and(|at| at.saturating_add(self.key_retention_ms) <= now_ms)
        {
            return Ok(None);
        }
        let rec: KeyRecord = serde_json::from_slice(&stored.value).map_err(|e| {
            StoreError::Corrupt(format!("what is remembered for an idempotency key: {e}"))
        })?;
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
    reply: oneshot::Sender<Result<Accepted, IntakeError>>,
}

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct IntakeHandle {
    tx: mpsc::Sender<Job>,
}

impl IntakeHandle {
    /// Submits a batch and waits for its durable answer.
    pub async fn submit(&self, sub: Submission) -> Result<Accepted, IntakeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { sub, reply })
            .await
            .map_err(|_| IntakeError::Stopped)?;
        rx.await.unwrap_or(Err(IntakeError::Stopped))
    }
}

/// Most batches that share one flush.
const GROUP_MAX: usize = 64;

/// Starts the writer task. It ends when every [`IntakeHandle`] is dropped. `appended` is
/// notified after each durable append (it wakes the pusher).
pub fn spawn_writer(
    writer: Writer,
    appended: Arc<Notify>,
) -> (IntakeHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(GROUP_MAX * 4);
    let task = tokio::spawn(writer_loop(writer, rx, appended));
    (IntakeHandle { tx }, task)
}

async fn writer_loop(mut writer: Writer, mut rx: mpsc::Receiver<Job>, appended: Arc<Notify>) {
    let store = writer.store.clone();
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let subs: Vec<Submission> = jobs.iter().map(|j| j.sub.clone()).collect();
        let joined = tokio::task::spawn_blocking(move || {
            let results: Vec<_> = subs.iter().map(|s| writer.submit(s, &mut |_| {})).collect();
            (writer, results)
        })
        .await;
        let (w, mut results) = match joined {
            Ok(x) => x,
            Err(e) => {
                // A panic while judging: the writer's state is unknown, so stop taking
                // batches; every waiting sender gets "shutting down" and nothing is lost.
                error!(error = %e, "Intake writer failed; intake is stopped. Restart the agent.");
                return;
            }
        };
        writer = w;
        let wrote = results
            .iter()
            .any(|r| matches!(r, Ok(a) if !a.dry_run && !a.replayed));
        if wrote {
            if let Err(e) = store.flush_async().await {
                error!(error = %e, "Flushing accepted batches failed; answering 500.");
                for r in &mut results {
                    if matches!(r, Ok(a) if !a.dry_run) {
                        *r = Err(IntakeError::Store(StoreError::Corrupt(format!(
                            "the batch may not be on disk: {e}"
                        ))));
                    }
                }
            } else {
                appended.notify_one();
            }
        }
        for (job, r) in jobs.into_iter().zip(results) {
            if let Ok(a) = &r
                && !a.dry_run
                && !a.replayed
                && let (Some(first), Some(last)) = (a.seqs.first(), a.seqs.last())
            {
                info!(first, last, accepted = a.accepted, "Batch accepted.");
            }
            let _ = job.reply.send(r);
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

    fn open_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        (dir, store)
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
}
