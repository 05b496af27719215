//! Witness cosignatures the hub collects (issue 16): each agent, after its log audit
//! passed, cosigns the checkpoint it verified (c2sp.org/tlog-cosignature, `cosignature/v1`,
//! with its source key under [`cosign::witness_name`]) and sends the line here.
//!
//! **Where cosignatures meet.** They are kept per tree size (`cos/<size><source>`), and a
//! checkpoint is served with the lines collected for exactly its size. The hub's
//! checkpoint of a size is one text (origin, size, root) and one signature (Ed25519 is
//! deterministic), so every agent that verified size `n` cosigned the same bytes, and
//! [`note`] can serve any size again later (`/v1/checkpoint?size=n`, re-signed from the
//! stored tree). The newest checkpoint (`/v1/checkpoint`) shows the cosignatures of the
//! newest size, which an agent that just synced has cosigned; a bulletin's checkpoint
//! collects the cosignatures agents send for its size when the hub asks for it
//! ([`wanted`]). See ARCHITECTURE.md ("Witnesses") for why not a re-signing interval.
//!
//! A cosignature is accepted only from a registered, unrevoked source, verified with its
//! key in force, on a checkpoint of the hub's origin whose size the log has reached and
//! whose root is the hub's root at that size, with a timestamp within the signed-request
//! window of the hub's clock and newer than the one kept from that witness for that size.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spacesync_shared::SourceId;
use spacesync_shared::campaign::Campaign;
use spacesync_shared::cosign::{self, Cosigner};
use spacesync_shared::merkle::{self, Checkpoint};
use spacesync_shared::wire::{
    CosignatureAccepted, CosignatureSubmission, LogAlarmReport, WitnessWanted,
};
use spacesync_shared::witness_policy;

use crate::assessment::WitnessStatus;

use crate::hub::Hub;
use crate::log;
use crate::registry::{SourceRecord, SourceStatus};
use crate::store::{Store, StoreError, WriteBatch, keys};

/// Why a cosignature was refused, or a cosigned checkpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The source is not registered.
    #[error("source {0} is not registered at this hub; only registered agents witness its log")]
    UnknownSource(SourceId),
    /// The source was revoked.
    #[error("source {0} has been revoked; its cosignatures are no longer accepted")]
    Revoked(SourceId),
    /// The submission's checkpoint text or line does not read.
    #[error("the cosigned checkpoint does not read: {0}")]
    Malformed(String),
    /// A checkpoint the hub never signed: another origin, or a tree larger than the log.
    #[error("the hub never signed this checkpoint: {0}")]
    UnknownCheckpoint(String),
    /// The root is not the hub's root at that size.
    #[error(
        "the cosigned checkpoint of {size} entries has root {got}, but the hub's tree of {size} entries has root {ours}: the witness saw another tree (fork or forgery)"
    )]
    WrongRoot {
        /// The size.
        size: u64,
        /// The root cosigned (base64).
        got: String,
        /// The hub's root at that size (base64).
        ours: String,
    },
    /// The line is not a valid cosignature by the source's witness key.
    #[error("the cosignature of source {witness} does not verify: {why}")]
    BadCosignature {
        /// The source.
        witness: SourceId,
        /// What is wrong.
        why: String,
    },
    /// Replayed, older than the kept one, or far from the hub's clock.
    #[error("the cosignature of source {witness} is refused as stale: {why}")]
    Stale {
        /// The source.
        witness: SourceId,
        /// What is wrong.
        why: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tree could not be read.
    #[error(transparent)]
    Log(#[from] log::LogError),
}

/// A cosignature as kept (`cos/<size><source>`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The cosignature line, without its newline.
    pub line: String,
    /// Its timestamp (POSIX seconds), as the witness signed it.
    pub timestamp: u64,
    /// The key line it verified with (the source's key in force when it arrived).
    pub key: String,
}

/// What the hub knows of one source as a witness (`cosrc/<source>`, JSON): the largest
/// checkpoint it cosigned, and the last time it cosigned a tree the hub does not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceWitness {
    /// Size of the largest checkpoint whose cosignature by this source the hub kept.
    pub last_size: Option<u64>,
    /// That cosignature's timestamp (POSIX seconds, the witness's clock).
    pub last_timestamp: Option<u64>,
    /// The last cosignature it sent of a root that is not the hub's at that size: this
    /// province's agent saw another tree (its log alarm says more).
    pub wrong_root: Option<WrongRootSeen>,
    /// The log alarm this source's agent reported (`POST /v1/agent/log-alarm`): its audit
    /// found the hub's log forked, rolled back, missing an entry, … (`None`: none reported,
    /// or its operator cleared it). Records written before reports existed read as `None`.
    #[serde(default)]
    pub log_alarm: Option<ReportedAlarm>,
    /// When (hub clock) the agent last reported its operator cleared the alarm.
    #[serde(default)]
    pub log_alarm_cleared_at: Option<DateTime<Utc>>,
}

/// A log alarm as a source's agent reported it. The text is the agent's: shown escaped,
/// never trusted; the evidence stays in the agent's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedAlarm {
    /// The alarm's code (`fork`, `rollback`, `missing_entry`, …; `[a-z_]`).
    pub code: String,
    /// The agent's alarm text: what it detected and what to do.
    pub detected: String,
    /// When the agent made the report (agent clock).
    pub at: DateTime<Utc>,
    /// When the hub received it (hub clock).
    pub received_at: DateTime<Utc>,
}

/// A cosignature of another tree, as the hub refused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrongRootSeen {
    /// The size cosigned.
    pub size: u64,
    /// When the hub refused it (hub clock).
    pub at: DateTime<Utc>,
}

/// Held across each read-change-write of a `cosrc/<source>` record and of the lines kept
/// for a size, so two requests of one source at once (a cosignature and an alarm report)
/// cannot drop each other's change in this process. (Replicas on one database can still
/// interleave; both writes are valid states, and the next request of that source repairs
/// what one dropped.)
static RECORDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn records_lock() -> std::sync::MutexGuard<'static, ()> {
    RECORDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Key of a source's witness record.
fn source_key(source: &SourceId) -> Vec<u8> {
    [keys::COSIG_SOURCE, source.as_str().as_bytes()].concat()
}

/// Puts `source`'s witness record `w` into `b`.
fn put_source(b: &mut WriteBatch, source: &SourceId, w: &SourceWitness) {
    b.put(
        source_key(source),
        serde_json::to_vec(w).unwrap_or_default(),
    );
}

/// Writes `source`'s witness record `w` and flushes it (before any answer says so).
fn save_source(store: &dyn Store, source: &SourceId, w: &SourceWitness) -> Result<(), StoreError> {
    let mut b = WriteBatch::new();
    put_source(&mut b, source, w);
    store.apply(b)?;
    store.flush()
}

/// What the hub knows of `source` as a witness (the default before its first line).
pub fn of_source(store: &dyn Store, source: &SourceId) -> Result<SourceWitness, StoreError> {
    match store.get(&source_key(source))? {
        None => Ok(SourceWitness::default()),
        Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            key: format!("cosrc/{source}"),
            message: e.to_string(),
        }),
    }
}

/// Keeps (flushed before this returns) the log alarm `source`'s agent reports, or forgets
/// it when the report says its operator cleared it; `now` is the hub's clock. The report's
/// bounds are the caller's to check ([`LogAlarmReport::check`]). Returns the source's
/// record as it now stands.
pub fn report_alarm(
    hub: &Hub,
    source: &SourceId,
    report: &LogAlarmReport,
    now: DateTime<Utc>,
) -> Result<SourceWitness, WitnessError> {
    let snap = hub.snapshot();
    let rec = snap
        .registry
        .get(source)
        .ok_or_else(|| WitnessError::UnknownSource(source.clone()))?;
    if rec.status == SourceStatus::Revoked {
        return Err(WitnessError::Revoked(source.clone()));
    }
    let _records = records_lock();
    let mut w = of_source(hub.store.as_ref(), source)?;
    if report.cleared {
        w.log_alarm = None;
        w.log_alarm_cleared_at = Some(now);
    } else {
        w.log_alarm = Some(ReportedAlarm {
            code: report.code.clone(),
            detected: report.detected.clone(),
            at: report.at,
            received_at: now,
        });
    }
    save_source(hub.store.as_ref(), source, &w)?;
    Ok(w)
}

/// How many sources' agents report a log alarm now (of those in `registry`).
pub fn alarmed_sources<'a>(
    store: &dyn Store,
    registry: impl IntoIterator<Item = &'a SourceRecord>,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for r in registry {
        if of_source(store, &r.id)?.log_alarm.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

/// Key of `source`'s cosignature of the checkpoint of `size` leaves.
fn key(size: u64, source: &SourceId) -> Vec<u8> {
    [prefix(size).as_slice(), source.as_str().as_bytes()].concat()
}

/// Prefix of the cosignatures of the checkpoint of `size` leaves.
fn prefix(size: u64) -> Vec<u8> {
    [keys::COSIG, &size.to_be_bytes()].concat()
}

/// Is `size` a bulletin's checkpoint size (its cosignatures are kept)?
fn pinned(store: &dyn Store, size: u64) -> Result<bool, StoreError> {
    Ok(store.get(&crate::bulletin::pin_key(size))?.is_some())
}

/// How many cosignature keys [`prune`] deletes per write.
const PRUNE_BATCH: usize = 4096;

/// Keeps only the cosignatures something still asks for: each source's line for the
/// newest size it cosigned (served on the newest checkpoint) and every line for a size a
/// bulletin pinned (served on `/v1/checkpoint?size=N`, counted for its quorum). Without
/// this the store grew by one key per agent per sync, for ever (outside review #9).
///
/// [`accept`] deletes a source's previous line as each new one arrives; this pass pins the
/// sizes of bulletins issued before pins existed and clears what stores of that time kept
/// (`serve` runs it at start, in the background). Both are idempotent. A line deleted in
/// the instant a bulletin pinned its size is asked for again by [`wanted`], as any line a
/// bulletin lacks. Returns how many lines were deleted.
pub fn prune(store: &dyn Store) -> Result<u64, WitnessError> {
    let mut pins = WriteBatch::new();
    let mut sizes = std::collections::BTreeSet::new();
    for b in crate::bulletin::list(store).map_err(|e| WitnessError::Malformed(e.to_string()))? {
        sizes.insert(b.checkpoint.size);
        if !pinned(store, b.checkpoint.size)? {
            pins.put(
                crate::bulletin::pin_key(b.checkpoint.size),
                b.number.to_be_bytes(),
            );
        }
    }
    if !pins.is_empty() {
        store.apply(pins)?;
        store.flush()?;
    }
    let mut newest: BTreeMap<Vec<u8>, Option<u64>> = BTreeMap::new();
    let mut deleted = 0u64;
    let mut b = WriteBatch::new();
    let mut pending = 0usize;
    for row in store.scan(keys::COSIG) {
        let (k, _) = row?;
        let rest = &k[keys::COSIG.len()..];
        let Some((size, src)) = rest.split_first_chunk::<8>() else {
            continue;
        };
        let size = u64::from_be_bytes(*size);
        if sizes.contains(&size) {
            continue;
        }
        let last = match newest.get(src) {
            Some(n) => *n,
            None => {
                let n = match std::str::from_utf8(src)
                    .ok()
                    .and_then(|s| SourceId::parse(s).ok())
                {
                    Some(id) => of_source(store, &id)?.last_size,
                    None => None,
                };
                newest.insert(src.to_vec(), n);
                n
            }
        };
        if last.is_some_and(|n| n > size) {
            b.delete(k.to_vec());
            pending += 1;
            deleted += 1;
            if pending == PRUNE_BATCH {
                store.apply(std::mem::take(&mut b))?;
                pending = 0;
            }
        }
    }
    if pending > 0 {
        store.apply(b)?;
    }
    if deleted > 0 {
        store.flush()?;
    }
    Ok(deleted)
}

/// The cosignatures kept for the checkpoint of `size` leaves, by source, in source order.
pub fn collected(store: &dyn Store, size: u64) -> Result<BTreeMap<SourceId, Kept>, StoreError> {
    let p = prefix(size);
    let mut out = BTreeMap::new();
    for row in store.scan(&p) {
        let (k, v) = row?;
        let corrupt = |message: String| StoreError::Corrupt {
            key: format!("cos/{size}/{}", String::from_utf8_lossy(&k[p.len()..])),
            message,
        };
        let source = std::str::from_utf8(&k[p.len()..])
            .ok()
            .and_then(|s| SourceId::parse(s).ok())
            .ok_or_else(|| corrupt("not a source id".into()))?;
        let kept: Kept = serde_json::from_slice(&v).map_err(|e| corrupt(e.to_string()))?;
        out.insert(source, kept);
    }
    Ok(out)
}

/// The checkpoint of `size` leaves (the newest when `None`) as the hub signs it, with the
/// cosignature lines collected for it: a C2SP signed note whose first signature is the
/// hub's, then one line per witness, in source order. `None` when the log is smaller.
pub fn note(hub: &Hub, size: Option<u64>) -> Result<Option<String>, WitnessError> {
    let snap = hub.snapshot();
    let (size, signed) = match size {
        None => (snap.log_size, snap.checkpoint.clone()),
        Some(n) if n > snap.log_size => return Ok(None),
        Some(n) if n == snap.log_size => (n, snap.checkpoint.clone()),
        Some(n) => {
            let cp = Checkpoint {
                origin: hub.origin.clone(),
                size: n,
                root: log::root_at(hub.store.as_ref(), n)?,
            };
            let note = merkle::sign_checkpoint(&cp, &hub.origin, &hub.key)
                .map_err(|e| log::LogError::Tree(e.to_string()))?;
            (n, note)
        }
    };
    let lines = served_lines(&snap.registry, collected(hub.store.as_ref(), size)?);
    // The lines were checked when they arrived; `add` checks the framing again.
    let note = cosign::add(&signed, &lines).map_err(|e| WitnessError::Malformed(e.to_string()))?;
    Ok(Some(note))
}

/// Most cosignature lines one note carries: a signed note holds at most
/// [`merkle::MAX_SIGNATURES`] signature lines (as Go's `sumdb/note` reads them), one of
/// which is the hub's.
pub const MAX_LINES: usize = merkle::MAX_SIGNATURES - 1;

/// The lines a served checkpoint carries: all of them when they fit, else the first line
/// of each provincial unit's sources first (in source order), then the others, up to
/// [`MAX_LINES`] — a registry of more sources than that (one per prefecture, say) must not
/// make the checkpoint unreadable (outside review, session 9). Quorums are counted from the
/// stored lines ([`tally`]), never from a served note.
fn served_lines<S: std::hash::BuildHasher>(
    registry: &std::collections::HashMap<SourceId, SourceRecord, S>,
    kept: BTreeMap<SourceId, Kept>,
) -> Vec<String> {
    if kept.len() <= MAX_LINES {
        return kept.into_values().map(|k| k.line).collect();
    }
    let mut seen_units = std::collections::BTreeSet::new();
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for (id, k) in kept {
        let unit = registry.get(&id).map(|r| r.scope.province());
        match unit {
            Some(u) if seen_units.insert(u) => first.push(k.line),
            _ => rest.push(k.line),
        }
    }
    first.extend(rest);
    first.truncate(MAX_LINES);
    first
}

/// The witness a registry record stands for, with its key in force.
pub fn cosigner(rec: &SourceRecord) -> Option<Cosigner> {
    let key = spacesync_shared::keys::parse_public_key(rec.current_key()?).ok()?;
    Cosigner::new(&cosign::witness_name(&rec.id), key).ok()
}

/// Checks `source`'s cosignature and keeps it (flushed before this returns). `now` is the
/// hub's clock, `window` the signed-request window: a timestamp further from `now` is
/// refused as stale.
pub fn accept(
    hub: &Hub,
    source: &SourceId,
    sub: &CosignatureSubmission,
    now: DateTime<Utc>,
    window: chrono::Duration,
) -> Result<CosignatureAccepted, WitnessError> {
    let _records = records_lock();
    let snap = hub.snapshot();
    let rec = snap
        .registry
        .get(source)
        .ok_or_else(|| WitnessError::UnknownSource(source.clone()))?;
    if rec.status == SourceStatus::Revoked {
        return Err(WitnessError::Revoked(source.clone()));
    }
    let witness = cosigner(rec).ok_or_else(|| {
        WitnessError::Store(StoreError::Corrupt {
            key: format!("reg/{source}"),
            message: "the registered key does not parse".into(),
        })
    })?;
    let text = &sub.checkpoint;
    let cp = Checkpoint::parse_body(text).map_err(|e| WitnessError::Malformed(e.to_string()))?;
    if cp.body() != *text {
        return Err(WitnessError::Malformed(
            "the checkpoint text is not exactly origin, size and root lines".into(),
        ));
    }
    if cp.origin != hub.origin {
        return Err(WitnessError::UnknownCheckpoint(format!(
            "its origin is {:?}, this hub's log is {:?}",
            cp.origin.chars().take(100).collect::<String>(),
            hub.origin
        )));
    }
    if cp.size > snap.log_size {
        return Err(WitnessError::UnknownCheckpoint(format!(
            "it has {} entries, the hub's log {}",
            cp.size, snap.log_size
        )));
    }
    let ours = log::root_at(hub.store.as_ref(), cp.size)?;
    if ours != cp.root {
        // Recorded for the source list and the dashboard. Only a request the source signed
        // gets here, and its budget limits how often.
        let mut w = of_source(hub.store.as_ref(), source)?;
        w.wrong_root = Some(WrongRootSeen {
            size: cp.size,
            at: now,
        });
        save_source(hub.store.as_ref(), source, &w)?;
        let b64 = |h: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, h);
        return Err(WitnessError::WrongRoot {
            size: cp.size,
            got: b64(&cp.root),
            ours: b64(&ours),
        });
    }
    // The hub's own note of that checkpoint with the line added: the witness's line must
    // verify over exactly that text.
    let signed = merkle::sign_checkpoint(&cp, &hub.origin, &hub.key)
        .map_err(|e| WitnessError::Malformed(e.to_string()))?;
    let bad = |why: String| WitnessError::BadCosignature {
        witness: source.clone(),
        why,
    };
    if sub.cosignature.contains('\n') {
        return Err(bad("the cosignature is more than one line".into()));
    }
    let with = cosign::add(&signed, std::slice::from_ref(&sub.cosignature))
        .map_err(|e| bad(e.to_string()))?;
    let got =
        cosign::verify(&with, std::slice::from_ref(&witness)).map_err(|e| bad(e.to_string()))?;
    let Some(c) = got.first() else {
        return Err(bad(format!(
            "it is not a line of witness {} with its key in force ({})",
            witness.name(),
            witness.to_vkey()
        )));
    };
    let ts = c.timestamp;
    let stale = |why: String| WitnessError::Stale {
        witness: source.clone(),
        why,
    };
    let at = i64::try_from(ts)
        .ok()
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        .ok_or_else(|| stale(format!("timestamp {ts} is not a time")))?;
    if (at - now).abs() > window {
        return Err(stale(format!(
            "it was made at {at}, more than {} minutes from the hub's clock ({now}); check the agent's clock",
            window.num_minutes()
        )));
    }
    let mut w = of_source(hub.store.as_ref(), source)?;
    if let Some(newest) = w.last_size.filter(|&n| n > cp.size)
        && !pinned(hub.store.as_ref(), cp.size)?
    {
        return Err(stale(format!(
            "this witness cosigned the checkpoint of {newest} entries already; the hub keeps older lines only for bulletins' checkpoints (GET /v1/cosignature/wanted lists those it asks for), and {} is not one",
            cp.size
        )));
    }
    let k = key(cp.size, source);
    if let Some(old) = hub.store.get(&k)? {
        let old: Kept = serde_json::from_slice(&old).map_err(|e| StoreError::Corrupt {
            key: format!("cos/{}/{source}", cp.size),
            message: e.to_string(),
        })?;
        if old.timestamp >= ts {
            return Err(stale(format!(
                "the hub holds this witness's cosignature of the checkpoint of {} entries made at {}, and this one is not newer ({ts}): a replay or an old cosignature",
                cp.size, old.timestamp
            )));
        }
    }
    let kept = Kept {
        line: sub.cosignature.clone(),
        timestamp: ts,
        key: rec.current_key().unwrap_or_default().to_string(),
    };
    let mut b = WriteBatch::new();
    b.put(k, serde_json::to_vec(&kept).unwrap_or_default());
    if w.last_size.is_none_or(|n| n <= cp.size) {
        // The source's line for its previous newest size is no longer served on the newest
        // checkpoint; unless a bulletin pinned that size, nothing asks for it again.
        if let Some(old) = w.last_size.filter(|&n| n < cp.size)
            && !pinned(hub.store.as_ref(), old)?
        {
            b.delete(key(old, source));
        }
        w.last_size = Some(cp.size);
        w.last_timestamp = Some(ts);
        put_source(&mut b, source, &w);
    }
    hub.store.apply(b)?;
    hub.store.flush()?;
    let witnesses = collected(hub.store.as_ref(), cp.size)?.len();
    Ok(CosignatureAccepted {
        size: cp.size,
        witnesses,
    })
}

/// Every key `rec` ever had, as witnesses under its one witness name (a line made with a
/// key rotated away since still counts for the checkpoint it cosigned).
fn cosigners_of(rec: &SourceRecord) -> Vec<Cosigner> {
    rec.keys
        .iter()
        .filter_map(|k| spacesync_shared::keys::parse_public_key(&k.key).ok())
        .filter_map(|key| Cosigner::new(&cosign::witness_name(&rec.id), key).ok())
        .collect()
}

/// How far the checkpoint `note` (the hub-signed note of `size` leaves, as a bulletin
/// holds it) is witnessed by `members`, the sources that could witness it.
///
/// The kept lines for that size are put on the note and verified with every key each
/// member has had in `keys` (the registry derived from the whole log: a key rotated in
/// after the checkpoint signs later cosignatures of it, and a key is never removed from a
/// record, so the count cannot depend on which registry the reader holds). A line under a
/// trusted witness's name and key that does not verify is an error, not a lower count.
///
/// The quorum counts **provincial units**, not sources (issue 16: "at least 16 of the 32
/// units"): a unit of the campaign is witnessed when it has at least one member and every
/// member whose scope lies in it cosigned. A hub operator who registers extra sources in
/// a unit cannot witness it without the province's own agent, and one who registers
/// many sources adds at most one unit each where no province has enrolled.
fn tally(
    store: &dyn Store,
    size: u64,
    note: &str,
    members: &[&SourceRecord],
    keys: &[&SourceRecord],
    campaign: &Campaign,
) -> Result<WitnessStatus, WitnessError> {
    let trusted: Vec<Cosigner> = members
        .iter()
        .map(|r| keys.iter().find(|k| k.id == r.id).copied().unwrap_or(r))
        .flat_map(cosigners_of)
        .collect();
    let lines: Vec<String> = collected(store, size)?
        .into_values()
        .map(|k| k.line)
        .collect();
    // A note holds at most MAX_LINES lines besides the hub's: verified a note's worth at
    // a time.
    let mut witnesses: Vec<String> = Vec::new();
    for chunk in lines.chunks(MAX_LINES) {
        let with = cosign::add(note, chunk).map_err(|e| WitnessError::Malformed(e.to_string()))?;
        let got =
            cosign::verify(&with, &trusted).map_err(|e| WitnessError::Malformed(e.to_string()))?;
        witnesses.extend(
            got.iter()
                .filter_map(|c| c.name.strip_prefix(cosign::WITNESS_NAME_PREFIX))
                .map(str::to_string),
        );
    }
    witnesses.sort();
    witnesses.dedup();
    let units = units_witnessed(campaign, members, &witnesses);
    Ok(WitnessStatus {
        size,
        witnesses,
        units,
        of: campaign.units.len(),
        quorum: campaign.witness_quorum,
    })
}

/// The campaign's provincial units witnessed by `witnesses` (source ids, sorted): those
/// with at least one of `members` in them, every one of which is among `witnesses`.
fn units_witnessed(
    campaign: &Campaign,
    members: &[&SourceRecord],
    witnesses: &[String],
) -> Vec<String> {
    campaign
        .units
        .iter()
        .filter(|unit| {
            let mut in_unit = members
                .iter()
                .filter(|r| r.scope.province() == **unit)
                .peekable();
            in_unit.peek().is_some()
                && in_unit.all(|r| witnesses.binary_search(&r.id.to_string()).is_ok())
        })
        .map(|unit| unit.to_string())
        .collect()
}

/// How far a bulletin's checkpoint is witnessed, for showing it: the members are the
/// sources of `registry` (today's) that were registered and not revoked at `issued_at`
/// (the bulletin's time, when its checkpoint was taken). `bulletin verify` uses
/// [`status_as_of`], the registry replayed to the checkpoint; both count the same lines.
pub fn status_now<'a>(
    store: &dyn Store,
    registry: impl IntoIterator<Item = &'a SourceRecord>,
    campaign: &Campaign,
    size: u64,
    note: &str,
    issued_at: DateTime<Utc>,
) -> Result<WitnessStatus, WitnessError> {
    let all: Vec<&SourceRecord> = registry.into_iter().collect();
    let members: Vec<&SourceRecord> = all
        .iter()
        .copied()
        .filter(|r| r.active_at(issued_at))
        .collect();
    tally(store, size, note, &members, &all, campaign)
}

/// How far the checkpoint `note` of `size` leaves is witnessed by the sources registered,
/// and not revoked, in the registry as it stood at that size (replayed from the log, as
/// `bulletin verify` recomputes figures with it): a later revocation does not change what
/// counted. Their keys come from `registry`, derived from the whole log, as in
/// [`status_now`].
pub fn status_as_of<'a>(
    store: &dyn Store,
    registry: impl IntoIterator<Item = &'a SourceRecord>,
    campaign: &Campaign,
    size: u64,
    note: &str,
) -> Result<WitnessStatus, WitnessError> {
    let all: Vec<&SourceRecord> = registry.into_iter().collect();
    let then = crate::registry::as_of(store, size)?;
    let members: Vec<&SourceRecord> = then
        .iter()
        .filter(|r| r.status == SourceStatus::Active)
        .collect();
    tally(store, size, note, &members, &all, campaign)
}

/// A draft witness policy from `registry`: the hub's log line, `quorum`, and the witness
/// key in force of every active source, by its provincial unit. The header says what it
/// is: keys the hub lists, which each province must confirm before the campaign publishes
/// it (a policy taken from the hub unchecked trusts the hub to name its witnesses).
pub fn draft_policy<'a>(
    registry: impl IntoIterator<Item = &'a SourceRecord>,
    origin: &str,
    hub_key: ed25519_dalek::VerifyingKey,
    quorum: usize,
) -> String {
    let mut witnesses = BTreeMap::new();
    for rec in registry {
        if rec.status != SourceStatus::Active {
            continue;
        }
        let Some(c) = cosigner(rec) else { continue };
        witnesses.insert(
            c.name().to_string(),
            witness_policy::Witness {
                unit: rec.scope.province(),
                keys: vec![witness_policy::WitnessKey {
                    cosigner: c,
                    until: None,
                }],
            },
        );
    }
    let policy = witness_policy::Policy {
        log: witness_policy::LogKey {
            origin: origin.to_string(),
            key: hub_key,
        },
        quorum,
        witnesses,
    };
    let units = policy.units().len();
    let mut out = format!(
        "# Witness policy DRAFT from the hub's registry ({units} provincial unit(s) with active sources).\n\
         # Before publishing it with the campaign, have every province confirm its line:\n\
         #   spacesync-agent --data DIR pubkey --witness\n\
         # prints it; a line the province does not confirm must not be published.\n"
    );
    if quorum > units {
        out.push_str(&format!(
            "# The quorum ({quorum}) is more than the units listed: no checkpoint can be witnessed until more provinces enrol.\n"
        ));
    }
    out.push_str(&policy.render());
    out
}

/// Adds to `policy` every key its witnesses handed over to in their own chains, in chain
/// order: a key-transition entry of source `s` in the log, signed by the key in force for
/// `spacesync-witness/<s>` (a listed key before its first hand-over, then only the key
/// handed over to last), whose new key's proof verifies. The key that signed it counts
/// from then on only for checkpoints no larger than the transition's leaf (a retired key,
/// say from an old backup, cannot cosign later trees, nor hand over again). Keys the hub
/// registered otherwise (an admin's `rotate --lost`, a re-enrolment) are not added, nor
/// does a key the policy bounds with `until` hand over (see
/// [`witness_policy::Policy::hand_over`]). Returns how many keys were added.
pub fn extend_by_transitions(
    store: &dyn Store,
    policy: &mut witness_policy::Policy,
    campaign: &str,
) -> Result<usize, WitnessError> {
    let mut added = 0;
    // The key in force per witness once it has handed over in the log.
    let mut in_force: BTreeMap<String, ed25519_dalek::VerifyingKey> = BTreeMap::new();
    for row in log::iter(store) {
        let (leaf, rec) = row?;
        let Some(source) = &rec.source else { continue };
        if crate::registry::transition_in(&rec.envelope.payload).is_none() {
            continue;
        }
        let name = cosign::witness_name(source);
        let Some(w) = policy.witnesses.get(&name) else {
            continue;
        };
        let signers: Vec<ed25519_dalek::VerifyingKey> = match in_force.get(&name) {
            Some(k) => vec![*k],
            None => w.keys.iter().map(|k| *k.cosigner.key()).collect(),
        };
        let Some((from, entry)) = signers.iter().find_map(|k| {
            spacesync_shared::entry::Entry::open(&rec.envelope, k)
                .ok()
                .map(|e| (*k, e))
        }) else {
            continue;
        };
        // The statement names its source and campaign: one signed for another source or
        // campaign (replayed into this log) hands over nothing here.
        if entry.source != *source || entry.campaign != campaign {
            continue;
        }
        let Ok(Some(new)) = entry.transition() else {
            continue;
        };
        let known = w.keys.iter().any(|k| k.cosigner.key() == &new);
        if policy.hand_over(&name, &from, new, leaf) {
            in_force.insert(name, new);
            if !known {
                added += 1;
            }
        }
    }
    Ok(added)
}

/// How far the checkpoint `note` of `size` leaves is witnessed under `policy`: the kept
/// lines for that size put on the note a note's worth at a time, counted by the policy's
/// keys only. The hub's signature on `note` is the caller's to check.
pub fn status_under(
    store: &dyn Store,
    policy: &witness_policy::Policy,
    size: u64,
    note: &str,
) -> Result<witness_policy::Tally, WitnessError> {
    let lines: Vec<String> = collected(store, size)?
        .into_values()
        .map(|k| k.line)
        .collect();
    let mut names = std::collections::BTreeSet::new();
    let mut bad = Vec::new();
    let notes: Vec<String> = if lines.is_empty() {
        vec![note.to_string()]
    } else {
        lines
            .chunks(MAX_LINES)
            .map(|chunk| cosign::add(note, chunk))
            .collect::<Result<_, _>>()
            .map_err(|e| WitnessError::Malformed(e.to_string()))?
    };
    for with in notes {
        let c = policy
            .cosigned_by(&with, size)
            .map_err(|e| WitnessError::Malformed(e.to_string()))?;
        names.extend(c.names);
        bad.extend(c.bad);
    }
    bad.sort();
    bad.dedup();
    Ok(policy.tally_names(size, &names, bad))
}

/// Most bulletin checkpoints the hub asks witnesses for at once.
pub const MAX_WANTED: usize = 4;

/// The checkpoints of the newest few bulletins (at most [`MAX_WANTED`]) whose kept
/// cosignatures witness fewer provincial units than the quorum (and that the log has
/// reached), ascending: what `GET /v1/cosignature/wanted` asks agents to cosign. The kept
/// lines were verified when they arrived, so they are counted here without verifying
/// them again (agents ask often); members are the sources active when the bulletin was
/// issued, as [`status_now`] counts them.
pub fn wanted(hub: &Hub) -> Result<WitnessWanted, WitnessError> {
    let snap = hub.snapshot();
    let size = snap.log_size;
    let quorum = hub.campaign.witness_quorum as usize;
    let list = crate::bulletin::list(hub.store.as_ref())
        .map_err(|e| WitnessError::Malformed(e.to_string()))?;
    let mut sizes = Vec::new();
    // The newest bulletins short of the quorum first; older ones once those have it.
    for b in list.iter().rev() {
        if sizes.len() == MAX_WANTED {
            break;
        }
        let n = b.checkpoint.size;
        if n == 0 || n > size || sizes.contains(&n) {
            continue;
        }
        let members: Vec<&SourceRecord> = snap
            .registry
            .values()
            .filter(|r| r.active_at(b.issued_at))
            .collect();
        let cosigned: Vec<String> = collected(hub.store.as_ref(), n)?
            .into_keys()
            .map(|s| s.to_string())
            .collect();
        if units_witnessed(&hub.campaign, &members, &cosigned).len() < quorum {
            sizes.push(n);
        }
    }
    sizes.sort_unstable();
    Ok(WitnessWanted { sizes })
}
