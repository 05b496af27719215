//! The hub's core: verified ingest into the log, heads per source, alarms, and the state
//! every reader shares.
//!
//! One writer at a time holds the state lock for the chain checks, the append and the
//! flush; signature verification runs before the lock with Ed25519 batch verification.
//! A batch is one atomic store write and one flush, whatever its size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use spacesync_shared::clock::Clock;
use spacesync_shared::dsse::Digest;
use spacesync_shared::entry::{Entry, check_entry_scope, verify_signatures};
use spacesync_shared::wire::{
    IngestBatch, IngestResponse, Receipt, Refusal, RefusalCode, SourceHead,
};
use spacesync_shared::{Campaign, Envelope, SourceId};
use tracing::{debug, error, info, warn};

use crate::log::{Log, LogError, LogRecord};
use crate::registry::{self, RegistryError, SourceRecord, SourceStatus};
use crate::store::{Store, StoreError, WriteBatch, keys};
use crate::views::{HUB_ENTRY_PAYLOAD_TYPE, HubEntry, Meta, Views};

/// How far ahead of the hub's clock an entry's `recorded_at` may be.
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(10);

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
    decoded: Vec<Result<Entry, spacesync_shared::entry::EntryError>>,
    /// Index and reason of the first entry whose signature does not verify.
    first_bad: Option<(usize, String)>,
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
        self.first_bad.is_none() && self.decoded.iter().all(Result::is_ok)
    }

    /// True when some entry's seq is above `held_through`: the batch is more than a resend
    /// of entries the hub holds (which anyone who saw the batch could replay).
    pub fn goes_beyond(&self, held_through: u64) -> bool {
        self.decoded
            .iter()
            .any(|e| e.as_ref().is_ok_and(|e| e.seq > held_through))
    }
}

/// What the hub holds of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    /// Highest seq held (0 = none).
    pub seq: u64,
    /// Hash of that entry.
    pub hash: Digest,
}

/// A stored index entry for (source, seq).
#[derive(Debug, Clone, Copy)]
struct Held {
    log_index: u64,
    hash: Digest,
    received_at: DateTime<Utc>,
}

impl Held {
    fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&self.log_index.to_be_bytes());
        v.extend_from_slice(&self.hash.0);
        v.extend_from_slice(&self.received_at.timestamp_millis().to_be_bytes());
        v
    }

    fn from_bytes(b: &[u8]) -> Option<Held> {
        if b.len() != 48 {
            return None;
        }
        let log_index = u64::from_be_bytes(b[0..8].try_into().ok()?);
        let hash = Digest(b[8..40].try_into().ok()?);
        let ms = i64::from_be_bytes(b[40..48].try_into().ok()?);
        Some(Held {
            log_index,
            hash,
            received_at: DateTime::from_timestamp_millis(ms)?,
        })
    }
}

/// An equivocation or other fault admins must see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// When it was raised.
    pub at: DateTime<Utc>,
    /// The source.
    pub source: SourceId,
    /// The seq concerned.
    pub seq: u64,
    /// Refusal code.
    pub code: RefusalCode,
    /// What happened.
    pub detail: String,
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

/// Hub configuration that ingest needs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most entries per ingest request.
    pub max_batch_entries: usize,
    /// How far ahead of the hub clock an entry's `recorded_at` may be.
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_batch_entries: 1000,
            max_clock_skew: MAX_CLOCK_SKEW,
        }
    }
}

/// Index and reason of the first envelope whose signature does not verify with the key
/// registered for its seq. Runs of entries signed by the same key are checked with one
/// Ed25519 batch verification. Stops at an undecodable entry (refused before it matters).
fn first_bad_signature(
    reg: &SourceRecord,
    envs: &[Envelope],
    decoded: &[Result<Entry, spacesync_shared::entry::EntryError>],
) -> Option<(usize, String)> {
    let mut i = 0;
    while i < envs.len() {
        let Ok(first) = &decoded[i] else {
            return None;
        };
        let Some(line) = reg.key_line_for(first.seq) else {
            return Some((i, "no registered key signs this seq".into()));
        };
        let mut j = i + 1;
        while j < envs.len()
            && matches!(&decoded[j], Ok(e) if reg.key_line_for(e.seq) == Some(line))
        {
            j += 1;
        }
        let Some(key) = reg.key_for(first.seq) else {
            return Some((i, "the registered key does not parse".into()));
        };
        let refs: Vec<&Envelope> = envs[i..j].iter().collect();
        if let Err((k, e)) = verify_signatures(&refs, &key) {
            return Some((i + k, e.to_string()));
        }
        i = j;
    }
    None
}

/// Everything guarded by the writer lock.
pub struct State {
    /// The tree.
    pub log: Log,
    /// Heads per source.
    pub heads: HashMap<SourceId, Head>,
    /// Registered sources.
    pub registry: HashMap<SourceId, SourceRecord>,
    /// Merged views.
    pub views: Views,
    /// Latest signed checkpoint note.
    pub checkpoint: String,
    /// Alarms raised.
    pub alarms: Vec<Alarm>,
    /// Bumped on every change; readers cache derived figures by it.
    pub version: u64,
}

/// The hub.
pub struct Hub {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The hub's signing key (receipts, checkpoints, bulletins).
    pub key: SigningKey,
    /// Checkpoint origin line.
    pub origin: String,
    /// The campaign.
    pub campaign: Campaign,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Limits.
    pub limits: Limits,
    /// Notices raised to lagging regions, with delivery state.
    pub notices: crate::notices::NoticeBook,
    /// Paces the log lines about refused entries.
    refusal_log: LogThrottle,
    state: Mutex<State>,
}

/// Least time between two warnings about refused entries.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Counts events and lets one log line through per [`REFUSAL_LOG_EVERY`]. Monotonic real
/// time: it protects the log, not the campaign calendar.
#[derive(Default)]
struct LogThrottle(Mutex<(u64, Option<std::time::Instant>)>);

impl LogThrottle {
    /// Counts one event; the count to report now, or `None` within the quiet period.
    fn admit(&self) -> Option<u64> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let now = std::time::Instant::now();
        if g.1
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            return None;
        }
        let n = g.0;
        *g = (0, Some(now));
        Some(n)
    }
}

fn load_state(store: &dyn Store, origin: &str, key: &SigningKey) -> Result<State, IngestError> {
    let log = Log::load(store)?;
    let mut registry = HashMap::new();
    let mut heads = HashMap::new();
    for rec in registry::load_all(store)? {
        if let Some((k, v)) = store.last(&keys::src_prefix(&rec.id))? {
            let seq = keys::tail_u64(&k).unwrap_or(0);
            let held = Held::from_bytes(&v).ok_or_else(|| StoreError::Corrupt {
                key: format!("src/{}/{seq}", rec.id),
                message: "index entry is not 48 bytes".into(),
            })?;
            heads.insert(
                rec.id.clone(),
                Head {
                    seq,
                    hash: held.hash,
                },
            );
        }
        registry.insert(rec.id.clone(), rec);
    }
    let views = Views::load(store)?;
    let checkpoint = match store.get(keys::CHECKPOINT)? {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => log.checkpoint(origin, key)?,
    };
    let mut alarms = Vec::new();
    for r in store.scan(keys::ALARM) {
        let (_, v) = r?;
        if let Ok(a) = serde_json::from_slice(&v) {
            alarms.push(a);
        }
    }
    Ok(State {
        log,
        heads,
        registry,
        views,
        checkpoint,
        alarms,
        version: 0,
    })
}

impl Hub {
    /// Opens the hub over a store.
    pub fn open(
        store: Arc<dyn Store>,
        key: SigningKey,
        origin: String,
        campaign: Campaign,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Result<Hub, IngestError> {
        let state = load_state(store.as_ref(), &origin, &key)?;
        let notices = crate::notices::NoticeBook::load(store.as_ref())?;
        Ok(Hub {
            notices,
            refusal_log: LogThrottle::default(),
            store,
            key,
            origin,
            campaign,
            clock,
            limits,
            state: Mutex::new(state),
        })
    }

    /// The shared state (read it briefly; writers wait).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reloads the state from the store (after a failed write left memory ahead of disk).
    fn reload(&self, st: &mut State) {
        match load_state(self.store.as_ref(), &self.origin, &self.key) {
            Ok(fresh) => *st = fresh,
            Err(e) => error!(error = %e, "Reloading hub state after a storage failure failed."),
        }
    }

    /// What the hub holds of `source`.
    pub fn head(&self, source: &SourceId) -> SourceHead {
        let st = self.state();
        let h = st.heads.get(source).copied().unwrap_or_default();
        SourceHead {
            source: source.clone(),
            held_through: h.seq,
            head: h.hash,
        }
    }

    /// Re-reads the registry after a change made through the store.
    pub fn refresh_registry(&self) -> Result<(), StoreError> {
        let all = registry::load_all(self.store.as_ref())?;
        let mut st = self.state();
        st.registry = all.into_iter().map(|r| (r.id.clone(), r)).collect();
        st.version += 1;
        Ok(())
    }

    fn receipt(&self, source: &SourceId, seq: u64, held: Held) -> Envelope {
        Receipt {
            source: source.clone(),
            seq,
            entry_hash: held.hash,
            log_index: held.log_index,
            received_at: held.received_at,
        }
        .sign(&self.key)
    }

    fn held(&self, source: &SourceId, seq: u64) -> Result<Option<Held>, StoreError> {
        Ok(self
            .store
            .get(&keys::src(source, seq))?
            .and_then(|b| Held::from_bytes(&b)))
    }

    /// Verifies and appends one source's batch. Blocking: run it off the async runtime.
    pub fn ingest(&self, batch: IngestBatch) -> Result<IngestOutcome, IngestError> {
        self.append(self.check(batch)?)
    }

    /// The first half of [`Hub::ingest`], outside the writer lock: the batch's size, its
    /// source (registered, not revoked) and every signature. Blocking (Ed25519): run it off
    /// the async runtime. The HTTP layer decides between the two halves whose budget the
    /// request spends (see [`CheckedBatch::authentic`]).
    pub fn check(&self, batch: IngestBatch) -> Result<CheckedBatch, IngestError> {
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
            .state()
            .registry
            .get(&source)
            .cloned()
            .ok_or_else(|| IngestError::UnknownSource(source.clone()))?;
        if reg.status == SourceStatus::Revoked {
            return Err(IngestError::Revoked(source));
        }
        let decoded: Vec<_> = batch
            .entries
            .iter()
            .map(|e| Entry::from_payload(&e.payload))
            .collect();
        let mut seen = std::collections::HashSet::with_capacity(decoded.len());
        for (index, e) in decoded.iter().enumerate() {
            // Unreadable entries and entries of another source are refused later, each
            // with its own reason; gaps and order are judged under the lock (409).
            let Ok(e) = e else { continue };
            if e.source == source && !seen.insert(e.seq) {
                return Err(IngestError::RepeatedSeq { index, seq: e.seq });
            }
        }
        // Signatures first and outside the writer lock, so one batch's verification runs
        // while another batch is being written; processing stops at the first bad one.
        let first_bad = first_bad_signature(&reg, &batch.entries, &decoded);
        Ok(CheckedBatch {
            batch,
            reg,
            decoded,
            first_bad,
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
        let key = match self.state().registry.get(&batch.source) {
            Some(reg) if reg.status != SourceStatus::Revoked => reg.key_for(entry.seq),
            _ => None,
        };
        key.is_some_and(|k| verify_signatures(&[env], &k).is_ok())
    }

    /// The second half of [`Hub::ingest`], under the writer lock: seq continuity, the
    /// `prev` chain, scope and clock, the append, the flush and the receipts. Blocking.
    pub fn append(&self, checked: CheckedBatch) -> Result<IngestOutcome, IngestError> {
        let CheckedBatch {
            batch,
            reg,
            decoded,
            first_bad,
        } = checked;
        let source = batch.source.clone();
        // Millisecond precision, as the source index stores it: a receipt re-issued for a
        // resent entry must be byte-identical to the first one.
        let now = self.clock.now().trunc_subsecs(3);
        let earliest = earliest_recorded_at(&self.campaign);

        let mut st = self.state();
        let head = st.heads.get(&source).copied().unwrap_or_default();
        let mut receipts = Vec::new();
        let mut refused = Vec::new();
        let mut resend_from = None;
        let mut status = 200;
        // Entries new to the hub, in order, with their envelopes.
        let mut fresh: Vec<(Entry, &Envelope)> = Vec::new();
        let mut expected = head.seq + 1;
        for (i, (env, entry)) in batch.entries.iter().zip(decoded).enumerate() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    refused.push(Refusal {
                        seq: None,
                        code: RefusalCode::Invalid,
                        reason: format!("entry after seq {}: {e}", expected - 1),
                    });
                    status = 422;
                    break;
                }
            };
            if entry.source != source {
                refused.push(Refusal {
                    seq: Some(entry.seq),
                    code: RefusalCode::WrongSource,
                    reason: format!(
                        "seq {}: entry is from source {}, but the batch is from {source}; send one source per batch",
                        entry.seq, entry.source
                    ),
                });
                status = 422;
                break;
            }
            if entry.campaign != self.campaign.id {
                refused.push(Refusal {
                    seq: Some(entry.seq),
                    code: RefusalCode::WrongSource,
                    reason: format!(
                        "seq {}: entry is for campaign {:?}, this hub runs campaign {:?}; check the agent's campaign file",
                        entry.seq, entry.campaign, self.campaign.id
                    ),
                });
                status = 422;
                break;
            }
            if let Some((_, why)) = first_bad.as_ref().filter(|(b, _)| *b == i) {
                refused.push(Refusal {
                    seq: Some(entry.seq),
                    code: RefusalCode::BadSignature,
                    reason: format!(
                        "seq {}: {why}; the entry was not signed by the key registered for {source}",
                        entry.seq
                    ),
                });
                status = 422;
                break;
            }
            if entry.seq <= head.seq {
                let hash = env.payload_hash();
                match self.held(&source, entry.seq)? {
                    Some(h) if h.hash == hash => {
                        receipts.push(self.receipt(&source, entry.seq, h));
                        continue;
                    }
                    _ => {
                        // The signature was checked before the lock: this is a validly
                        // signed second entry, which proves equivocation.
                        let detail = format!(
                            "seq {}: a different entry is already held for this seq (equivocation); the hub keeps the first",
                            entry.seq
                        );
                        self.raise_alarm(
                            &mut st,
                            &source,
                            entry.seq,
                            RefusalCode::Fork,
                            &detail,
                            now,
                        );
                        refused.push(Refusal {
                            seq: Some(entry.seq),
                            code: RefusalCode::Fork,
                            reason: detail,
                        });
                        status = 409;
                        break;
                    }
                }
            }
            if entry.seq != expected {
                refused.push(Refusal {
                    seq: Some(entry.seq),
                    code: RefusalCode::Gap,
                    reason: format!(
                        "gap: the hub holds up to seq {}, the next entry sent is seq {}; resend from seq {}",
                        expected - 1,
                        entry.seq,
                        expected
                    ),
                });
                resend_from = Some(expected);
                status = 409;
                break;
            }
            expected += 1;
            fresh.push((entry, env));
        }

        // Chain, scope and clock checks, in order; the valid prefix is appended.
        let mut prev = head.hash;
        let mut ok = 0;
        for (entry, env) in &fresh {
            let fault = if entry.prev != prev {
                Some((
                    RefusalCode::BadPrev,
                    format!(
                        "seq {}: prev {} does not match the hash of seq {} held by the hub ({prev})",
                        entry.seq,
                        entry.prev,
                        entry.seq - 1
                    ),
                ))
            } else if let Err(e) = check_entry_scope(entry, reg.scope) {
                Some((
                    match e {
                        spacesync_shared::entry::ChainError::OutOfScope { .. } => {
                            RefusalCode::OutOfScope
                        }
                        _ => RefusalCode::Invalid,
                    },
                    e.to_string(),
                ))
            } else if entry.recorded_at > now + self.limits.max_clock_skew {
                Some((
                    RefusalCode::FutureTimestamp,
                    format!(
                        "seq {}: recorded_at {} is ahead of the hub's clock ({now}); fix the agent's clock",
                        entry.seq, entry.recorded_at
                    ),
                ))
            } else if entry.recorded_at < earliest {
                Some((
                    RefusalCode::Invalid,
                    format!(
                        "seq {}: recorded_at {} is before the campaign started ({} less {} days of slack: {earliest}); the agent's clock was wrong when it signed — fix it, then re-enter the record",
                        entry.seq,
                        entry.recorded_at,
                        self.campaign.starts_on,
                        RECORDED_AT_SLACK.num_days()
                    ),
                ))
            } else {
                None
            };
            if let Some((code, reason)) = fault {
                refused.push(Refusal {
                    seq: Some(entry.seq),
                    code,
                    reason,
                });
                break;
            }
            prev = env.payload_hash();
            ok += 1;
        }
        fresh.truncate(ok);
        if status == 200 && !refused.is_empty() {
            status = 422;
        }

        let appended = fresh.len();
        if appended > 0 {
            let mut wb = WriteBatch::new();
            let mut new_heads = head;
            let mut new_receipts = Vec::with_capacity(appended);
            for (entry, env) in &fresh {
                let rec = LogRecord {
                    received_at: now,
                    source: Some(source.clone()),
                    seq: entry.seq,
                    envelope: (*env).clone(),
                };
                let index = match st.log.append(&mut wb, &rec) {
                    Ok(i) => i,
                    Err(e) => {
                        self.reload(&mut st);
                        return Err(e.into());
                    }
                };
                let held = Held {
                    log_index: index,
                    hash: env.payload_hash(),
                    received_at: now,
                };
                wb.put(keys::src(&source, entry.seq), held.to_bytes());
                st.views.apply(
                    Meta {
                        log_index: index,
                        received_at: now,
                        source: source.clone(),
                        seq: entry.seq,
                        recorded_at: entry.recorded_at,
                        withdrawn_by: None,
                    },
                    &entry.record,
                    &mut wb,
                );
                new_heads = Head {
                    seq: entry.seq,
                    hash: held.hash,
                };
                new_receipts.push(self.receipt(&source, entry.seq, held));
            }
            let note = match st.log.checkpoint(&self.origin, &self.key) {
                Ok(n) => n,
                Err(e) => {
                    self.reload(&mut st);
                    return Err(e.into());
                }
            };
            wb.put(keys::CHECKPOINT.to_vec(), note.clone().into_bytes());
            if let Err(e) = self.store.apply(wb).and_then(|()| self.store.flush()) {
                error!(source = %source, error = %e, "Storing a batch failed; nothing was acknowledged.");
                self.reload(&mut st);
                return Err(e.into());
            }
            st.checkpoint = note;
            st.heads.insert(source.clone(), new_heads);
            st.version += 1;
            receipts.extend(new_receipts);
            info!(source = %source, appended, held_through = new_heads.seq, log_size = st.log.size(), "Appended entries.");
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
        Ok(IngestOutcome {
            status,
            response: IngestResponse {
                held_through,
                receipts,
                refused,
                resend_from,
            },
            appended,
        })
    }

    /// Signs and appends one of the hub's own entries (e.g. an extension). Durable on return.
    pub fn append_hub_entry(
        &self,
        make: impl FnOnce(u64, DateTime<Utc>) -> HubEntry,
    ) -> Result<(u64, HubEntry), IngestError> {
        let now = self.clock.now();
        let mut st = self.state();
        let seq = self.last_hub_seq()? + 1;
        let entry = make(seq, now);
        let mut wb = WriteBatch::new();
        let index = match self.push_hub_entry(&mut st, &mut wb, &entry, now) {
            Ok(i) => i,
            Err(e) => {
                self.reload(&mut st);
                return Err(e.into());
            }
        };
        wb.put(keys::HUB_SEQ.to_vec(), seq.to_be_bytes().to_vec());
        self.commit_hub_entries(&mut st, wb)?;
        Ok((index, entry))
    }

    /// The hub's own seq of its last log entry (0 = none).
    fn last_hub_seq(&self) -> Result<u64, StoreError> {
        Ok(match self.store.get(keys::HUB_SEQ)? {
            Some(b) => b.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        })
    }

    /// Signs `entry`, adds it to `wb` as the next log leaf and applies it to the views.
    /// On error the caller reloads the state (the frontier may have moved).
    fn push_hub_entry(
        &self,
        st: &mut State,
        wb: &mut WriteBatch,
        entry: &HubEntry,
        now: DateTime<Utc>,
    ) -> Result<u64, LogError> {
        let seq = match entry {
            HubEntry::Extension(x) => x.seq,
            HubEntry::SourceAdded(x) => x.seq,
            HubEntry::KeyRotated(x) => x.seq,
            HubEntry::SourceRevoked(x) => x.seq,
            HubEntry::RegistryBaseline(x) => x.seq,
        };
        let payload = serde_json::to_vec(entry).map_err(|e| LogError::Tree(e.to_string()))?;
        let envelope = Envelope::sign(&self.key, HUB_ENTRY_PAYLOAD_TYPE, payload);
        let rec = LogRecord {
            received_at: now,
            source: None,
            seq,
            envelope,
        };
        let index = st.log.append(wb, &rec)?;
        st.views.apply_hub(index, entry, wb);
        Ok(index)
    }

    /// Adds the new checkpoint to `wb`, writes it in one atomic step and flushes. On
    /// failure nothing is changed and the state is reloaded from the store.
    fn commit_hub_entries(&self, st: &mut State, mut wb: WriteBatch) -> Result<(), IngestError> {
        let note = match st.log.checkpoint(&self.origin, &self.key) {
            Ok(n) => n,
            Err(e) => {
                self.reload(st);
                return Err(e.into());
            }
        };
        wb.put(keys::CHECKPOINT.to_vec(), note.clone().into_bytes());
        if let Err(e) = self.store.apply(wb).and_then(|()| self.store.flush()) {
            self.reload(st);
            return Err(e.into());
        }
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
            registry::plan_add(reg, id, scope, key_line, seq, now).map(Some)
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
        plan: impl FnOnce(
            &HashMap<SourceId, SourceRecord>,
            &HashMap<SourceId, Head>,
            u64,
            DateTime<Utc>,
        ) -> Result<Option<HubEntry>, RegistryError>,
    ) -> Result<Option<SourceRecord>, RegistryError> {
        // Millisecond precision, as the log's other times.
        let now = self.clock.now().trunc_subsecs(3);
        let mut st = self.state();
        let mut seq = self.last_hub_seq()?;
        let baseline = if registry::logged(self.store.as_ref())? || st.registry.is_empty() {
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
        let mut new_registry = st.registry.clone();
        let mut changed = None;
        for e in baseline.iter().chain([&entry]) {
            if let Err(e) = self.push_hub_entry(&mut st, &mut wb, e, now) {
                self.reload(&mut st);
                return Err(e.into());
            }
            changed = registry::apply(&mut new_registry, e);
        }
        let Some(rec) = changed.and_then(|id| new_registry.get(&id).cloned()) else {
            self.reload(&mut st);
            return Err(RegistryError::Log(LogError::Tree(
                "a planned registry change names no source".into(),
            )));
        };
        registry::put(&mut wb, &rec);
        wb.put(registry::LOGGED_KEY.to_vec(), b"1".to_vec());
        wb.put(keys::HUB_SEQ.to_vec(), seq.to_be_bytes().to_vec());
        self.commit_hub_entries(&mut st, wb).map_err(|e| match e {
            IngestError::Store(e) => RegistryError::Store(e),
            IngestError::Log(e) => RegistryError::Log(e),
            other => RegistryError::Log(LogError::Tree(other.to_string())),
        })?;
        st.registry = new_registry;
        info!(source = %rec.id, log_size = st.log.size(), "Registry changed.");
        Ok(Some(rec))
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
        // failed to load).
        let n = match self.store.last(keys::ALARM) {
            Ok(Some((k, _))) => keys::tail_u64(&k).map_or(0, |n| n + 1),
            _ => st.alarms.len() as u64,
        };
        let mut wb = WriteBatch::new();
        wb.put(
            keys::alarm(n),
            serde_json::to_vec(&alarm).unwrap_or_default(),
        );
        if let Err(e) = self.store.apply(wb).and_then(|()| self.store.flush()) {
            error!(error = %e, "Storing an alarm failed; it is kept in memory only.");
        }
        st.alarms.push(alarm);
        st.version += 1;
    }
}
