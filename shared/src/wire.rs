//! What travels between agent and hub: ingest batches and their answers, hub-signed
//! receipts, and the signed-request scheme agents use for pulls.
//!
//! These are plain serde types; only the hub's HTTP layer and the agent's pusher put
//! them on the wire.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::dsse::{Digest, DsseError, Envelope};
use crate::entry::SourceId;
use crate::region::RegionCode;

/// DSSE payload type of a hub receipt.
pub const RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.spacesync.receipt+json";

/// DSSE payload type of a hub batch receipt ([`BatchReceipt`]).
pub const BATCH_RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.spacesync.batch-receipt+json";

/// Ingest request header with which an agent asks for one signed [`BatchReceipt`] per batch
/// instead of one [`Receipt`] per entry. A hub that does not know it ignores it and answers
/// per-entry receipts; without it a hub answers per-entry receipts, so an agent that does not
/// ask never sees [`IngestResponse::batch_receipt`].
pub const HDR_RECEIPTS: &str = "x-spacesync-receipts";
/// The value of [`HDR_RECEIPTS`] that asks for a batch receipt.
pub const RECEIPTS_BATCH: &str = "batch";

/// Content type of an ingest batch (JSON, optionally gzip-encoded).
pub const INGEST_CONTENT_TYPE: &str = "application/json";

/// One source's envelopes, in seq order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBatch {
    /// The sending source; every entry must be its own.
    pub source: SourceId,
    /// Envelopes in ascending seq order.
    pub entries: Vec<Envelope>,
}

/// The hub's statement that it durably holds an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Source of the entry.
    pub source: SourceId,
    /// Seq of the entry.
    pub seq: u64,
    /// SHA-256 of the entry's payload.
    pub entry_hash: Digest,
    /// Position in the hub's global log (0-based leaf index).
    pub log_index: u64,
    /// When the hub received it.
    pub received_at: DateTime<Utc>,
}

impl Receipt {
    /// Signs the receipt with the hub key.
    pub fn sign(&self, hub: &SigningKey) -> Envelope {
        Envelope::sign(
            hub,
            RECEIPT_PAYLOAD_TYPE,
            serde_json::to_vec(self).unwrap_or_default(),
        )
    }

    /// Verifies a receipt envelope with the hub's public key and reads it.
    pub fn open(env: &Envelope, hub: &VerifyingKey) -> Result<Receipt, ReceiptError> {
        env.verify(RECEIPT_PAYLOAD_TYPE, hub)?;
        serde_json::from_slice(&env.payload).map_err(|e| ReceiptError::Malformed(e.to_string()))
    }
}

/// How the hub receipts the entries of an ingest batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiptForm {
    /// One signed [`Receipt`] per entry (what every hub answers unless asked otherwise).
    #[default]
    PerEntry,
    /// One signed [`BatchReceipt`] for the whole batch.
    Batch,
}

impl ReceiptForm {
    /// The form a request's [`HDR_RECEIPTS`] header asks for (absent or unknown: per entry).
    pub fn requested(header: Option<&str>) -> ReceiptForm {
        match header {
            Some(v) if v.trim().eq_ignore_ascii_case(RECEIPTS_BATCH) => ReceiptForm::Batch,
            _ => ReceiptForm::PerEntry,
        }
    }
}

/// One entry of a [`BatchReceipt`]: what a [`Receipt`] says, less the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptItem {
    /// Seq of the entry.
    pub seq: u64,
    /// SHA-256 of the entry's payload.
    pub entry_hash: Digest,
    /// Position in the hub's global log (0-based leaf index).
    pub log_index: u64,
    /// When the hub received it (for a resent entry: when it was first held).
    pub received_at: DateTime<Utc>,
}

/// The hub's statement that it durably holds every entry listed: one signature for a whole
/// ingest batch. Each entry's part reads as the [`Receipt`] the hub would have signed for
/// it alone ([`BatchReceipt::receipt`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchReceipt {
    /// Source of every entry.
    pub source: SourceId,
    /// The entries, in strictly ascending seq order.
    pub entries: Vec<ReceiptItem>,
}

impl BatchReceipt {
    /// Signs the batch receipt with the hub key.
    pub fn sign(&self, hub: &SigningKey) -> Envelope {
        Envelope::sign(hub, BATCH_RECEIPT_PAYLOAD_TYPE, self.payload())
    }

    /// The receipt's JSON, byte for byte what `serde_json::to_vec` writes of it, written
    /// here so that the time the entries of a batch share is formatted once, not once an
    /// entry (serializing the entries field by field was ~0.8 % of an ingest's CPU).
    pub fn payload(&self) -> Vec<u8> {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(64 + self.entries.len() * 160);
        let mut time: Option<(DateTime<Utc>, Vec<u8>)> = None;
        // Writes into a Vec do not fail, nor does serializing a source id or a time; were
        // one to, the payload is serde_json's own.
        let written = (|| -> Result<(), serde_json::Error> {
            out.extend_from_slice(b"{\"source\":");
            serde_json::to_writer(&mut out, &self.source)?;
            out.extend_from_slice(b",\"entries\":[");
            for (i, e) in self.entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = write!(out, "{{\"seq\":{},\"entry_hash\":\"", e.seq);
                out.extend_from_slice(e.entry_hash.hex_in(&mut [0; 64]).as_bytes());
                let _ = write!(out, "\",\"log_index\":{},\"received_at\":", e.log_index);
                match &time {
                    Some((t, json)) if *t == e.received_at => out.extend_from_slice(json),
                    _ => {
                        let json = serde_json::to_vec(&e.received_at)?;
                        out.extend_from_slice(&json);
                        time = Some((e.received_at, json));
                    }
                }
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
            Ok(())
        })();
        match written {
            Ok(()) => out,
            Err(_) => serde_json::to_vec(self).unwrap_or_default(),
        }
    }

    /// Verifies a batch receipt envelope with the hub's public key and reads it; refuses
    /// one whose seqs are not strictly ascending (so each seq has one answer), or whose
    /// leaf indexes are not (no log holds a source's later seq at a lower leaf).
    pub fn open(env: &Envelope, hub: &VerifyingKey) -> Result<BatchReceipt, ReceiptError> {
        env.verify(BATCH_RECEIPT_PAYLOAD_TYPE, hub)?;
        let b: BatchReceipt = serde_json::from_slice(&env.payload)
            .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        if let Some(w) = b.entries.windows(2).find(|w| w[0].seq >= w[1].seq) {
            return Err(ReceiptError::Malformed(format!(
                "seq {} follows seq {}; a batch receipt lists seqs in ascending order",
                w[1].seq, w[0].seq
            )));
        }
        // A source's entries are logged in seq order into an append-only log: a later seq
        // is at a higher leaf. A receipt that says otherwise cannot be true of any log.
        if let Some(w) = b
            .entries
            .windows(2)
            .find(|w| w[0].log_index >= w[1].log_index)
        {
            return Err(ReceiptError::Malformed(format!(
                "seq {} is at leaf {} but seq {} before it at leaf {}; a log holds a source's later seq at a higher leaf",
                w[1].seq, w[1].log_index, w[0].seq, w[0].log_index
            )));
        }
        Ok(b)
    }

    /// The receipt for `seq`, when this batch receipt covers it.
    pub fn receipt(&self, seq: u64) -> Option<Receipt> {
        let i = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        let e = &self.entries[i];
        Some(Receipt {
            source: self.source.clone(),
            seq: e.seq,
            entry_hash: e.entry_hash,
            log_index: e.log_index,
            received_at: e.received_at,
        })
    }

    /// Every entry's receipt, in seq order.
    pub fn receipts(&self) -> impl Iterator<Item = Receipt> + '_ {
        self.entries.iter().map(|e| Receipt {
            source: self.source.clone(),
            seq: e.seq,
            entry_hash: e.entry_hash,
            log_index: e.log_index,
            received_at: e.received_at,
        })
    }
}

/// Verifies the receipt of entry `seq` in a stored receipt envelope: a per-entry
/// [`Receipt`] (it must be for `seq`) or a [`BatchReceipt`] that covers `seq`, told apart by
/// payload type. The caller compares source and entry hash with its own entry. Opening a
/// batch receipt verifies its one signature: to check many entries of one batch receipt,
/// [`BatchReceipt::open`] it once and look each seq up.
pub fn open_entry_receipt(
    env: &Envelope,
    hub: &VerifyingKey,
    seq: u64,
) -> Result<Receipt, ReceiptError> {
    let r = if env.payload_type == BATCH_RECEIPT_PAYLOAD_TYPE {
        BatchReceipt::open(env, hub)?
            .receipt(seq)
            .ok_or(ReceiptError::NotCovered(seq))?
    } else {
        Receipt::open(env, hub)?
    };
    if r.seq != seq {
        return Err(ReceiptError::NotCovered(seq));
    }
    Ok(r)
}

/// Why a receipt is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Signature or type wrong.
    #[error("receipt signature: {0}")]
    Signature(#[from] DsseError),
    /// Payload unreadable.
    #[error("receipt payload is malformed: {0}")]
    Malformed(String),
    /// A validly signed receipt that says nothing about this seq.
    #[error("the receipt does not cover seq {0}")]
    NotCovered(u64),
}

/// Why the hub refused an entry or a batch. Stable snake_case codes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The source is not registered.
    UnknownSource,
    /// The source or its key was revoked.
    RevokedKey,
    /// A signature does not verify with the registered key.
    BadSignature,
    /// A record speaks about a region outside the source's scope.
    OutOfScope,
    /// A record or entry is malformed.
    Invalid,
    /// An entry of another source, or another campaign.
    WrongSource,
    /// Seqs skip: resend from `resend_from`.
    Gap,
    /// `prev` does not chain to the held head.
    BadPrev,
    /// A different entry for a seq already held: equivocation.
    Fork,
    /// Timestamp far in the future.
    FutureTimestamp,
    /// Too many requests; retry after the indicated delay.
    RateLimited,
    /// Body or batch too large.
    TooLarge,
    /// A cosignature on a checkpoint the hub never signed (a tree larger than its log, or
    /// under another origin).
    UnknownCheckpoint,
    /// A cosignature on a checkpoint whose root is not the hub's root at that size: the
    /// witness saw another tree (a fork, or a forged checkpoint).
    WrongRoot,
    /// A cosignature that does not verify with the source's witness key in force.
    BadCosignature,
    /// A cosignature replayed, or not newer than the one the hub holds from this witness
    /// for that checkpoint, or timestamped far from the hub's clock.
    StaleCosignature,
}

impl RefusalCode {
    /// Permanent refusals need a person (a key registered, a scope fixed); the agent stops
    /// pushing and raises an alarm. The others are retried.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            RefusalCode::UnknownSource
                | RefusalCode::RevokedKey
                | RefusalCode::BadSignature
                | RefusalCode::OutOfScope
                | RefusalCode::Invalid
                | RefusalCode::WrongSource
                | RefusalCode::BadPrev
                | RefusalCode::Fork
                | RefusalCode::FutureTimestamp
        )
    }
}

/// One refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// Seq refused, when the refusal is about one entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Machine-readable code.
    pub code: RefusalCode,
    /// One line a person can act on.
    pub reason: String,
}

/// The hub's answer to an ingest batch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestResponse {
    /// Highest seq of this source the hub durably holds (0 = none).
    pub held_through: u64,
    /// Receipts for the entries of the batch the hub holds (new or resent), in seq order;
    /// empty when the agent asked for a [`BatchReceipt`] ([`HDR_RECEIPTS`]).
    pub receipts: Vec<Envelope>,
    /// The one signed [`BatchReceipt`] for the entries of the batch the hub holds, when the
    /// agent asked for it and the hub holds any; absent otherwise (so an agent that did not
    /// ask, which refuses unknown fields, never sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_receipt: Option<Envelope>,
    /// What was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refusal>,
    /// On a gap: the seq the agent should resend from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_from: Option<u64>,
}

/// What the hub holds of a source (answer to the agent's "where are we?").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceHead {
    /// The source.
    pub source: SourceId,
    /// Highest seq held (0 = none).
    pub held_through: u64,
    /// Hash of that entry (zeros when none).
    pub head: Digest,
}

/// Most entries one [`PATH_AGENT_ENTRIES`] page holds, whatever the agent asks.
pub const MAX_ENTRIES_PAGE: usize = 1000;

/// Most payload bytes one [`PATH_AGENT_ENTRIES`] page holds (its first entry always goes):
/// a page stays far below what an agent reads of one answer.
pub const MAX_ENTRIES_PAGE_BYTES: usize = 8 << 20;

/// A page of the entries the hub holds of the signing source's own chain (answer to
/// [`PATH_AGENT_ENTRIES`]): what an agent restored from an older backup takes back. The
/// agent trusts nothing of it that it cannot check itself: each entry against its own keys
/// and chain, the receipt against the hub key it pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesPage {
    /// The source (the one that signed the request).
    pub source: SourceId,
    /// Highest seq the hub holds of it.
    pub held_through: u64,
    /// The envelopes exactly as received, from the seq asked for, contiguous, in seq
    /// order; empty when the hub holds nothing from there.
    pub entries: Vec<Envelope>,
    /// One batch receipt (as for an ingest batch) covering every entry of the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_receipt: Option<Envelope>,
}

/// Error body of every non-2xx answer from agent and hub HTTP APIs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line: what went wrong and what to do.
    pub error: String,
    /// Machine-readable code, where one applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<RefusalCode>,
    /// Further lines (e.g. every refused field of a batch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

// ---- endpoints -------------------------------------------------------------------------

/// Hub: `POST` an [`IngestBatch`] (JSON, optionally `Content-Encoding: gzip`); answers
/// [`IngestResponse`] (200), or [`ErrorBody`] with a [`RefusalCode`].
pub const PATH_INGEST: &str = "/v1/ingest";
/// Hub: `GET`; answers the hub's public key line (`ed25519:<base64>`), which agents pin.
pub const PATH_HUB_PUBKEY: &str = "/v1/pubkey";
/// Hub: `GET`, signed request; answers the [`SourceHead`] of the signing source.
pub const PATH_AGENT_HEAD: &str = "/v1/agent/head";
/// Hub: `GET ?from=N&limit=M`, signed request; answers an [`EntriesPage`] of the signing
/// source's own entries from seq `N` (at most `M`, [`MAX_ENTRIES_PAGE`] and
/// [`MAX_ENTRIES_PAGE_BYTES`]).
pub const PATH_AGENT_ENTRIES: &str = "/v1/agent/entries";
/// Hub: `GET ?after=N&limit=M`, signed request; answers a [`NoticesPage`] for the
/// signing source's scope.
pub const PATH_AGENT_NOTICES: &str = "/v1/agent/notices";
/// Hub: `POST` a [`NoticeAck`], signed request; answers 204.
pub const PATH_AGENT_NOTICES_ACK: &str = "/v1/agent/notices/ack";
/// Hub: `POST` a [`CosignatureSubmission`], signed request; answers
/// [`CosignatureAccepted`] (200), or [`ErrorBody`] with a [`RefusalCode`]
/// (`unknown_checkpoint`, `wrong_root`, `bad_cosignature`, `stale_cosignature`,
/// `unknown_source`, `revoked_key`).
pub const PATH_COSIGNATURE: &str = "/v1/cosignature";
/// Hub: `GET`; answers [`WitnessWanted`]: older checkpoints (those bulletins are pinned
/// to) still short of their witness quorum.
pub const PATH_COSIGNATURE_WANTED: &str = "/v1/cosignature/wanted";
/// Hub: `GET`; answers [`Witnesses`]: the verifier keys of the registered, unrevoked
/// sources as witnesses (public keys; for evidence files and cosigned-checkpoint readers).
pub const PATH_WITNESSES: &str = "/v1/witnesses";
/// Hub: `GET`, `?size=N` optional: the signed checkpoint note (of the tree of `N` leaves,
/// or the newest), with the cosignature lines collected for exactly that checkpoint.
pub const PATH_CHECKPOINT: &str = "/v1/checkpoint";

/// Hub: `POST` a [`LogAlarmReport`], signed request: the signing source's agent raised
/// (or its operator cleared) the log alarm of its audit of the hub's log. Answers 204, or
/// [`ErrorBody`]; a hub that predates it answers 404.
pub const PATH_AGENT_LOG_ALARM: &str = "/v1/agent/log-alarm";

/// Most characters of a [`LogAlarmReport`]'s code.
pub const MAX_LOG_ALARM_CODE: usize = 64;
/// Most characters of a [`LogAlarmReport`]'s text.
pub const MAX_LOG_ALARM_TEXT: usize = 2048;

/// What an agent's log audit says of the hub's log, as the agent reports it to the hub
/// (issue 16: the dashboard shows each province's alarm). The hub only shows it: the
/// evidence stays in the agent's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogAlarmReport {
    /// The alarm's code (`fork`, `rollback`, `missing_entry`, `bad_checkpoint_signature`,
    /// `audit_refused`, …): `[a-z_]`, 1 to [`MAX_LOG_ALARM_CODE`] characters. For a
    /// cleared alarm, the code of the alarm cleared.
    pub code: String,
    /// The agent's alarm text (what was detected, what to do), at most
    /// [`MAX_LOG_ALARM_TEXT`] characters. Shown as the agent wrote it: readers escape it.
    pub detected: String,
    /// When the agent made this report (its clock): the sync after the audit that raised
    /// the alarm, or after its operator cleared it.
    pub at: DateTime<Utc>,
    /// True when the agent's operator cleared the alarm (`clear-alarm`): the hub forgets it.
    pub cleared: bool,
}

impl LogAlarmReport {
    /// Checks the bounds of [`LogAlarmReport::code`] and [`LogAlarmReport::detected`];
    /// the error says which field is wrong and how.
    pub fn check(&self) -> Result<(), String> {
        let n = self.code.chars().count();
        if n == 0 || n > MAX_LOG_ALARM_CODE {
            return Err(format!(
                "code must have 1 to {MAX_LOG_ALARM_CODE} characters, it has {n}"
            ));
        }
        if !self
            .code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_')
        {
            return Err("code may hold only the letters a-z and '_'".into());
        }
        let n = self.detected.chars().count();
        if n > MAX_LOG_ALARM_TEXT {
            return Err(format!(
                "detected must have at most {MAX_LOG_ALARM_TEXT} characters, it has {n}"
            ));
        }
        if let Some(c) = self.detected.chars().find(|c| unreadable_char(*c)) {
            return Err(format!(
                "detected holds the control or bidirectional-formatting character U+{:04X}, which could make the text read otherwise than it says; send it with such characters replaced (log_alarm_text does)",
                c as u32
            ));
        }
        Ok(())
    }
}

/// True for characters an alarm text shown to people must not hold: control characters
/// (newlines included) and the Unicode bidirectional-formatting ones, which could make a
/// text from a hostile sender read otherwise on the hub's dashboard.
fn unreadable_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// `text` as an alarm report may carry it: at most [`MAX_LOG_ALARM_TEXT`] characters, each
/// control or bidirectional-formatting character replaced by U+FFFD.
pub fn log_alarm_text(text: &str) -> String {
    text.chars()
        .take(MAX_LOG_ALARM_TEXT)
        .map(|c| if unreadable_char(c) { '\u{FFFD}' } else { c })
        .collect()
}

/// An agent's cosignature of a checkpoint it audited (c2sp.org/tlog-cosignature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignatureSubmission {
    /// The checkpoint's text as cosigned: origin, size and root lines, each ending in a
    /// newline; no signature lines.
    pub checkpoint: String,
    /// The cosignature line (`— <witness name> <base64>`, no newline), made with
    /// [`crate::cosign::cosign`] under [`crate::cosign::witness_name`] of the source.
    pub cosignature: String,
}

/// The hub kept a cosignature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignatureAccepted {
    /// Size of the checkpoint cosigned.
    pub size: u64,
    /// How many witnesses' cosignatures the hub now holds for it.
    pub witnesses: usize,
}

/// The witnesses the hub knows: one verifier key per registered, unrevoked source
/// (`spacesync-witness/<source>+<key ID>+<base64(0x04 ‖ key)>`, its key in force).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witnesses {
    /// Verifier keys, in source order.
    pub witnesses: Vec<String>,
}

/// Checkpoints the hub asks witnesses to cosign besides its newest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessWanted {
    /// Tree sizes, ascending (at most a few: the bulletins' checkpoints short of quorum).
    pub sizes: Vec<u64>,
}

/// A notice the hub sends to a lagging region's agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Hub-wide, increasing: the agent's cursor.
    pub id: u64,
    /// The rule that raised it (e.g. `milestone_due_7d`, `overdue`, `behind_pace`).
    pub rule: String,
    /// The region the notice is about.
    pub subject: RegionCode,
    /// The region it is addressed to (the subject, or the level above on escalation).
    pub addressee: RegionCode,
    /// When the hub raised it.
    pub created_at: DateTime<Utc>,
    /// Deadline the notice refers to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<chrono::NaiveDate>,
    /// Chinese text: the rule, the facts, the deadline and what to do.
    pub text: String,
    /// English text of the same.
    pub text_en: String,
    /// The facts the text states, as fields a program can act on without reading the
    /// prose. Flattened: `"milestone"`, `"due"`, `"days_left"`, … sit beside `"rule"`.
    #[serde(flatten)]
    pub facts: NoticeFacts,
}

/// The structured facts of a [`Notice`]. Every field is optional and left out of the JSON
/// when absent, so agents built before a field existed still read the notices (they
/// ignore members they do not know), and a notice stored before facts existed reads back
/// with none.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NoticeFacts {
    /// The campaign milestone the notice is about (its id in the campaign file, e.g.
    /// `implementation_plan`): reminders, overdue, escalation and plan notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milestone: Option<String>,
    /// The date the notice is about (local campaign date): the deadline in force for a
    /// milestone (extensions included), the target date for a pace notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<chrono::NaiveDate>,
    /// Whole days from the hub's date to `due`, when it has not passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
    /// Whole days `due` has passed by (at least 1), for overdue and escalated notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_late: Option<i64>,
    /// Pace: the unit's target of new spaces by `due`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// Pace: new spaces expected by now on the straight line from baseline to `due`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// Pace: new spaces reached so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<i64>,
    /// Quota: the region (school or administrative code) that made the nomination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nominated_by: Option<String>,
    /// Quota: the nominee over quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nominee: Option<String>,
    /// Quota: the most nominations allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Quota: nominations already counted against the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Plan: each way the latest implementation plan breaks the campaign's plan rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<PlanProblem>,
    /// Silence: the source that has sent nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceId>,
    /// Silence: when the hub last received from it (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
    /// Silence: whole days since then (or since the source was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_silent: Option<i64>,
}

/// A way an implementation plan breaks the campaign's plan rules, as notices and bulletins
/// carry it (`{"problem": "years", ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum PlanProblem {
    /// The plan covers too few or too many years.
    Years {
        /// Years covered.
        covered: u32,
        /// Fewest allowed.
        min: u32,
        /// Most allowed.
        max: u32,
    },
    /// Too few regions enter the rollout in a year.
    Regions {
        /// The year.
        year: u16,
        /// Regions inside the unit entering that year.
        regions: u32,
        /// Fewest required.
        min: u32,
    },
}

/// One page of notices for an agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NoticesPage {
    /// Notices with `id > after`, ascending.
    pub notices: Vec<Notice>,
}

/// An agent's acknowledgement of every notice up to `through`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeAck {
    /// Highest notice id the agent has stored.
    pub through: u64,
}

// ---- signed requests -------------------------------------------------------------------

/// Header naming the source of a signed request.
pub const HDR_SOURCE: &str = "x-spacesync-source";
/// Header with the request time (RFC 3339).
pub const HDR_TIMESTAMP: &str = "x-spacesync-timestamp";
/// Header with a fresh random nonce (hex, 16 bytes).
pub const HDR_NONCE: &str = "x-spacesync-nonce";
/// Header with the base64 Ed25519 signature over [`request_message`].
pub const HDR_SIGNATURE: &str = "x-spacesync-signature";

/// The bytes an agent signs for a pull: method, path with query, timestamp, nonce and the
/// body hash, one per line, under a fixed context string so the signature cannot be
/// mistaken for an entry signature.
pub fn request_message(
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    format!(
        "spacesync-request-v1\n{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{}\n",
        Digest::of(body)
    )
    .into_bytes()
}

/// Headers for a signed request, as (name, value) pairs.
pub fn sign_request(
    key: &SigningKey,
    source: &SourceId,
    method: &str,
    path_and_query: &str,
    now: DateTime<Utc>,
    nonce: [u8; 16],
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let ts = now.to_rfc3339_opts(SecondsFormat::Millis, true);
    let nonce = hex::encode(nonce);
    let sig = key.sign(&request_message(method, path_and_query, &ts, &nonce, body));
    vec![
        (HDR_SOURCE, source.to_string()),
        (HDR_TIMESTAMP, ts),
        (HDR_NONCE, nonce),
        (HDR_SIGNATURE, STANDARD.encode(sig.to_bytes())),
    ]
}

/// Why a signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    /// A signing header is missing or malformed.
    #[error("signed request header {0} is missing or malformed")]
    Header(&'static str),
    /// The timestamp is outside the accepted window.
    #[error("request timestamp {0} is too far from the hub's clock; check the agent's clock")]
    Stale(String),
    /// The signature does not verify.
    #[error("request signature does not verify with the source's registered key")]
    BadSignature,
}

/// Verifies a signed request's signature and returns its timestamp; the caller checks the
/// source's key, the time window and nonce reuse.
pub fn verify_request(
    key: &VerifyingKey,
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    signature_b64: &str,
    body: &[u8],
) -> Result<DateTime<Utc>, RequestAuthError> {
    let ts = DateTime::parse_from_rfc3339(timestamp)
        .map_err(|_| RequestAuthError::Header(HDR_TIMESTAMP))?
        .with_timezone(&Utc);
    if nonce.len() != 32 || hex::decode(nonce).is_err() {
        return Err(RequestAuthError::Header(HDR_NONCE));
    }
    let sig_bytes = STANDARD
        .decode(signature_b64)
        .map_err(|_| RequestAuthError::Header(HDR_SIGNATURE))?;
    let sig_arr: [u8; 64] = sig_bytes
        .as_slice()
        .try_into()
        .map_err(|_| RequestAuthError::Header(HDR_SIGNATURE))?;
    crate::sig::verify(
        key,
        &request_message(method, path_and_query, timestamp, nonce, body),
        &Signature::from_bytes(&sig_arr),
    )
    .map_err(|_| RequestAuthError::BadSignature)?;
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The batch receipt's payload is serde_json's JSON of it, byte for byte, whatever
        /// its entries and however many share a time (what agents and `open` read).
        #[test]
        fn batch_receipt_payload_is_serde_json_of_it(
            source in "[a-z0-9][a-z0-9-]{0,30}",
            items in proptest::collection::vec(
                (proptest::num::u64::ANY, proptest::array::uniform32(proptest::num::u8::ANY),
                 proptest::num::u64::ANY, 0usize..3, 0u32..1_000_000_000),
                0..40,
            ),
            times in proptest::array::uniform3(-62_000_000_000i64..250_000_000_000),
        ) {
            let Ok(source) = SourceId::parse(&source) else { return Ok(()) };
            let entries = items
                .into_iter()
                .filter_map(|(seq, hash, log_index, t, nanos)| {
                    Some(ReceiptItem {
                        seq,
                        entry_hash: Digest(hash),
                        log_index,
                        // Whole milliseconds (as the hub receipts) or any nanosecond.
                        received_at: DateTime::from_timestamp(
                            times[t],
                            if t == 2 { nanos } else { nanos / 1_000_000 * 1_000_000 },
                        )?,
                    })
                })
                .collect();
            let b = BatchReceipt { source, entries };
            proptest::prop_assert_eq!(b.payload(), serde_json::to_vec(&b).unwrap());
        }
    }

    #[test]
    fn notice_facts_sit_beside_the_prose_and_old_notices_still_read() {
        let old = r#"{"id":3,"rule":"milestone_overdue","subject":"440000","addressee":"440000",
            "created_at":"2018-11-16T01:00:00Z","deadline":"2018-11-15","text":"t","text_en":"t"}"#;
        let n: Notice = serde_json::from_str(old).unwrap();
        assert_eq!(n.facts, NoticeFacts::default());
        assert!(!serde_json::to_string(&n).unwrap().contains("milestone\""));

        let mut n = n;
        n.facts.milestone = Some("implementation_plan".into());
        n.facts.due = chrono::NaiveDate::from_ymd_opt(2018, 11, 15);
        n.facts.days_late = Some(1);
        n.facts.problems = vec![PlanProblem::Years {
            covered: 1,
            min: 2,
            max: 3,
        }];
        let v: serde_json::Value = serde_json::to_value(&n).unwrap();
        assert_eq!(v["milestone"], "implementation_plan");
        assert_eq!(v["due"], "2018-11-15");
        assert_eq!(v["days_late"], 1);
        assert_eq!(v["problems"][0]["problem"], "years");
        assert!(v.get("days_left").is_none() && v.get("facts").is_none());
        assert_eq!(serde_json::from_value::<Notice>(v).unwrap(), n);
    }

    #[test]
    fn signed_requests_verify_and_bind_every_part() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let src = SourceId::parse("gd-rrt").unwrap();
        let now = DateTime::parse_from_rfc3339("2018-11-20T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let h = sign_request(&key, &src, "GET", "/v1/notices?after=3", now, [9; 16], b"");
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let vk = key.verifying_key();
        let ok = verify_request(
            &vk,
            "GET",
            "/v1/notices?after=3",
            &get(HDR_TIMESTAMP),
            &get(HDR_NONCE),
            &get(HDR_SIGNATURE),
            b"",
        );
        assert_eq!(ok, Ok(now));
        for (m, p, body) in [
            ("POST", "/v1/notices?after=3", &b""[..]),
            ("GET", "/v1/notices?after=4", b""),
            ("GET", "/v1/notices?after=3", b"x"),
        ] {
            assert_eq!(
                verify_request(
                    &vk,
                    m,
                    p,
                    &get(HDR_TIMESTAMP),
                    &get(HDR_NONCE),
                    &get(HDR_SIGNATURE),
                    body
                ),
                Err(RequestAuthError::BadSignature)
            );
        }
    }

    #[test]
    fn receipts_are_signed_by_the_hub() {
        let hub = SigningKey::from_bytes(&[5; 32]);
        let r = Receipt {
            source: SourceId::parse("gd-rrt").unwrap(),
            seq: 7,
            entry_hash: Digest::of(b"x"),
            log_index: 41,
            received_at: DateTime::parse_from_rfc3339("2018-11-20T01:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let env = r.sign(&hub);
        assert_eq!(Receipt::open(&env, &hub.verifying_key()), Ok(r.clone()));
        assert_eq!(open_entry_receipt(&env, &hub.verifying_key(), 7), Ok(r));
        assert_eq!(
            open_entry_receipt(&env, &hub.verifying_key(), 8),
            Err(ReceiptError::NotCovered(8))
        );
        let other = SigningKey::from_bytes(&[6; 32]).verifying_key();
        assert!(Receipt::open(&env, &other).is_err());
    }

    fn item(seq: u64) -> ReceiptItem {
        ReceiptItem {
            seq,
            entry_hash: Digest::of(&seq.to_be_bytes()),
            log_index: 100 + seq,
            received_at: DateTime::parse_from_rfc3339("2018-11-20T01:00:00.250Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn a_batch_receipt_verifies_each_entry_as_its_own_receipt_would() {
        let hub = SigningKey::from_bytes(&[5; 32]);
        let vk = hub.verifying_key();
        let b = BatchReceipt {
            source: SourceId::parse("gd-rrt").unwrap(),
            entries: vec![item(3), item(4), item(9)],
        };
        let env = b.sign(&hub);
        assert_eq!(env.payload_type, BATCH_RECEIPT_PAYLOAD_TYPE);
        let opened = BatchReceipt::open(&env, &vk).unwrap();
        assert_eq!(opened, b);
        for seq in [3, 4, 9] {
            let want = Receipt {
                source: b.source.clone(),
                seq,
                entry_hash: Digest::of(&seq.to_be_bytes()),
                log_index: 100 + seq,
                received_at: item(seq).received_at,
            };
            assert_eq!(opened.receipt(seq), Some(want.clone()));
            assert_eq!(open_entry_receipt(&env, &vk, seq), Ok(want));
        }
        assert_eq!(opened.receipts().count(), 3);
        for seq in [0, 5, 10] {
            assert_eq!(opened.receipt(seq), None);
            assert_eq!(
                open_entry_receipt(&env, &vk, seq),
                Err(ReceiptError::NotCovered(seq))
            );
        }
        // Another key, a per-entry receipt's type, or seqs out of order: refused.
        let other = SigningKey::from_bytes(&[6; 32]);
        assert!(matches!(
            BatchReceipt::open(&b.sign(&other), &vk),
            Err(ReceiptError::Signature(_))
        ));
        assert!(matches!(
            Receipt::open(&env, &vk),
            Err(ReceiptError::Signature(DsseError::PayloadType { .. }))
        ));
        let unordered = BatchReceipt {
            entries: vec![item(4), item(3)],
            ..b.clone()
        };
        assert!(matches!(
            BatchReceipt::open(&unordered.sign(&hub), &vk),
            Err(ReceiptError::Malformed(_))
        ));
        let repeated = BatchReceipt {
            entries: vec![item(4), item(4)],
            ..b
        };
        assert!(matches!(
            BatchReceipt::open(&repeated.sign(&hub), &vk),
            Err(ReceiptError::Malformed(_))
        ));
    }

    #[test]
    fn only_the_batch_value_asks_for_a_batch_receipt() {
        for (h, want) in [
            (None, ReceiptForm::PerEntry),
            (Some("batch"), ReceiptForm::Batch),
            (Some(" Batch "), ReceiptForm::Batch),
            (Some("entry"), ReceiptForm::PerEntry),
            (Some(""), ReceiptForm::PerEntry),
        ] {
            assert_eq!(ReceiptForm::requested(h), want, "{h:?}");
        }
    }

    #[test]
    fn a_log_alarm_report_is_bounded() {
        let at = DateTime::parse_from_rfc3339("2018-11-20T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = |code: &str, detected: String| LogAlarmReport {
            code: code.into(),
            detected,
            at,
            cleared: false,
        };
        assert_eq!(r("fork", "x".repeat(MAX_LOG_ALARM_TEXT)).check(), Ok(()));
        assert_eq!(
            r(&"a".repeat(MAX_LOG_ALARM_CODE), String::new()).check(),
            Ok(())
        );
        for (code, detected) in [
            ("", String::new()),
            ("Fork", String::new()),
            ("fork-1", String::new()),
            ("<b>", String::new()),
            (&"a".repeat(MAX_LOG_ALARM_CODE + 1), String::new()),
            ("fork", "é".repeat(MAX_LOG_ALARM_TEXT + 1)),
            ("fork", "rollback\nlog alarm cleared".into()),
            ("fork", "fork \u{202E}deyalper".into()),
            ("fork", "\u{1b}[2J".into()),
        ] {
            assert!(
                r(code, detected.clone()).check().is_err(),
                "{code:?} {detected:?}"
            );
        }
        // What the agent sends is the text with those characters replaced: always accepted.
        let hostile = format!("a\nb\u{202E}c{}", "é".repeat(MAX_LOG_ALARM_TEXT));
        let sent = log_alarm_text(&hostile);
        assert!(sent.starts_with("a\u{FFFD}b\u{FFFD}c"), "{sent}");
        assert_eq!(r("fork", sent).check(), Ok(()));
        let extra =
            r#"{"code":"fork","detected":"","at":"2018-11-20T01:00:00Z","cleared":false,"x":1}"#;
        assert!(serde_json::from_str::<LogAlarmReport>(extra).is_err());
    }
}
