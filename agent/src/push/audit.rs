//! The log audit: at every sync the agent checks that the hub's log is one append-only log
//! that still holds what the hub receipted (issue 16, first layer).
//!
//! 1. fetch the hub's checkpoint (`GET /v1/checkpoint`, a C2SP signed note) and verify its
//!    signature with the hub key the receipts verify with (pinned or stored);
//! 2. against the checkpoint kept from the last audit: a smaller tree is a rollback; a tree
//!    of the same size with another root, or a consistency proof
//!    (`GET /v1/proof/consistency`, [`merkle::verify_consistency`]) that does not verify, is
//!    a fork;
//! 3. for the last entry of each batch receipted since the last audit (every receipted
//!    entry still held for `verify --against-hub`, [`audit_all`]), the inclusion proof
//!    (`GET /v1/proof/inclusion`, [`merkle::verify_inclusion`]) of the leaf the receipt
//!    names — the leaf is the hash of the entry's DSSE PAE bytes, as the hub's log makes
//!    it — must lead to the checkpoint's root;
//! 4. only when every check passed is the new checkpoint kept ([`AuditState`], flushed).
//!
//! What a check finds wrong is a [`Finding`]: the log alarm (`log_alarm` in the status) is
//! set, the evidence (both notes, the proof) is stored in the store's `audit_evidence`
//! tree, and the alarm stays — nothing the hub answers later clears it. A hub that refuses
//! or fails an audit request ([`AuditError::Hub`]) advances nothing: the next sync tries
//! again. The audit never stops delivery.
//!
//! # A hub that refuses audits
//!
//! A lying hub could keep the alarm silent by answering every audit request with an error
//! (or dropping its connections) while it works for everything else. So the pusher counts
//! ([`unfinished`]) every sync whose audit could not be finished — any failure of an audit
//! request: an answered error of any status (`429`/`503` with `Retry-After` included: a hub
//! "overloaded" for every audit but nothing else is refusing), an unreadable answer, or a
//! request left unanswered — **when the hub proved in that same sync, after the audit, that
//! it works** ([`Worked`]): it answered the sync's delivery `2xx` with receipts that verify,
//! or, with nothing to deliver, it answered a signed probe (`GET /v1/agent/head`, checked
//! against the hub's store of replay nonces) `2xx` with this source's head. A sync in which
//! neither happened (the hub down, its database down, a proxy answering for a stopped hub:
//! broken, not lying) neither counts nor ends the run; nor does one whose delivery failed,
//! or whose audit failed on the local store. The run starts at the first sync counted
//! ([`AuditState::unfinished_since`], agent clock, stored and flushed: a restart does not
//! reset it). When the run has lasted [`REFUSED_AFTER`] (an hour) **and** counts at least
//! [`REFUSED_AUDITS`] (3) audits, the [`Finding::Refused`] alarm (`audit_refused`) is
//! raised like any other finding; its text says what the hub did meanwhile (receipted
//! deliveries, answered signed requests), and quotes the hub's words only as `the hub
//! said: "…"` (escaped, truncated). A finished audit (verified, or a finding) ends the
//! run. While the log alarm stands nothing is counted.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use spacesync_shared::dsse::pae;
use spacesync_shared::merkle::{self, Checkpoint, Hash, NoteVerifier};
use tracing::{debug, error};

use super::classify::{Class, Link, PushError, hub_said, transient};
use super::state::{SharedPushState, lock};
use super::transport::{Request, Transport};
use crate::store::{Store, StoreError, StoredReceipt};

/// Most inclusion proofs one audit asks for; the rest wait for the next sync (an agent
/// upgraded with a long receipted history catches up over a few syncs, not in one burst).
pub const MAX_INCLUSIONS: usize = 32;

/// Most evidence records kept: the first findings are the ones that matter, and a hostile
/// hub that fails each sync a new way must not fill the agent's disk.
pub const MAX_EVIDENCE: usize = 100;
/// Most bytes of one hub answer kept as evidence (a valid checkpoint note or proof answer
/// is far smaller; one larger is evidence by its first bytes).
pub const MAX_EVIDENCE_BYTES: usize = 64 << 10;

/// How long audits must have stayed unfinished, while the hub proved it works
/// ([`Worked`]), before the [`Finding::Refused`] alarm (agent clock).
pub const REFUSED_AFTER: TimeDelta = TimeDelta::hours(1);
/// And how many audits in a row at least (one slow restart of the hub is not a refusal).
pub const REFUSED_AUDITS: u32 = 3;
/// Most characters of the last refusal quoted in the [`Finding::Refused`] alarm (it can
/// quote the hub's error text).
const MAX_WHY_CHARS: usize = 300;

/// How the hub proved, in a sync whose audit it did not let finish, that it works for this
/// agent: what makes that sync count towards `audit_refused` ([`unfinished`]). A sync
/// without either proof is not counted: the hub is down or broken, not lying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worked {
    /// After the audit, it answered this sync's delivery `2xx` with receipts that verify.
    Receipted,
    /// Nothing was to be delivered; after the audit it answered the signed head probe
    /// ([`probe`]) `2xx` with this source's head.
    Answered,
}

/// The first [`MAX_EVIDENCE_BYTES`] of a hub answer, as text.
pub(super) fn kept_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(MAX_EVIDENCE_BYTES)]).into_owned()
}

/// What the audit keeps in the store between syncs (`meta/audit`, JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditState {
    /// The last checkpoint note every check passed for.
    pub checkpoint: Option<String>,
    /// Batches receipted up to this seq had their inclusion checked (or were pruned).
    pub audited_through: u64,
    /// What was detected, once detected (the first finding); never cleared by the hub.
    pub alarm: Option<String>,
    /// Size of the last kept checkpoint this agent cosigned ([`super::witness`]).
    #[serde(default)]
    pub cosigned_size: Option<u64>,
    /// Earlier checkpoints (bulletins') this agent cosigned when the hub asked, the last
    /// few, so each is sent once.
    #[serde(default)]
    pub cosigned_pins: Vec<u64>,
    /// When (agent clock) the current run of audits the hub answered but did not let
    /// finish began ([`unfinished`]); `None` after a finished audit. Stored so that making
    /// the agent restart does not reset it.
    #[serde(default)]
    pub unfinished_since: Option<DateTime<Utc>>,
    /// Of the run's audits ([`AuditState::unfinished_audits`]), those in syncs whose
    /// delivery the hub receipted ([`Worked::Receipted`]; in the others it answered the
    /// signed probe). `None` when no run is under way — or when the run was counted by an
    /// older agent, which counted syncs without proof that the hub worked: that run starts
    /// again at the next sync counted.
    #[serde(default)]
    pub unfinished_receipted: Option<u32>,
    /// Audits in that run (the alarm needs [`REFUSED_AUDITS`] of them, not only time).
    #[serde(default)]
    pub unfinished_audits: u32,
    /// The alarm the hub last accepted a report of ([`super::report`]): while it differs
    /// from [`AuditState::alarm`] the next sync reports the alarm, or its clearing.
    #[serde(default)]
    pub reported_alarm: Option<String>,
}

impl AuditState {
    /// Reads the stored state (the default before the first audit).
    pub fn load(store: &Store) -> Result<AuditState, StoreError> {
        match store.audit_state()? {
            None => Ok(AuditState::default()),
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Corrupt(format!("the log audit's state: {e}"))),
        }
    }

    /// Size of the kept checkpoint, if one is kept.
    pub fn verified_size(&self) -> Option<u64> {
        self.checkpoint
            .as_deref()
            .and_then(|n| parse_unverified(n).ok())
            .map(|c| c.size)
    }
}

/// What the audit detected: the hub's log is not what it signed or receipted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The checkpoint does not verify with the hub key (or is not a signed checkpoint).
    BadSignature(String),
    /// The tree is smaller than the one kept.
    Rollback {
        /// Size kept.
        kept: u64,
        /// Size now.
        now: u64,
    },
    /// The tree does not extend the kept one.
    Fork(String),
    /// An entry the hub receipted is not in its tree.
    Missing(String),
    /// The hub proved it works ([`Worked`]) but let no audit finish for [`REFUSED_AFTER`]
    /// and [`REFUSED_AUDITS`] audits ([`unfinished`]).
    Refused {
        /// The first unfinished audit of the run (agent clock).
        since: DateTime<Utc>,
        /// Audits in the run.
        audits: u32,
        /// Of those, the syncs whose deliveries the hub receipted (in the others it
        /// answered the signed probe).
        receipted: u32,
        /// The last audit's failure, as the agent saw it (at most [`MAX_WHY_CHARS`]).
        why: String,
    },
}

impl Finding {
    /// Short machine-readable name.
    pub fn code(&self) -> &'static str {
        match self {
            Finding::BadSignature(_) => "bad_checkpoint_signature",
            Finding::Rollback { .. } => "rollback",
            Finding::Fork(_) => "fork",
            Finding::Missing(_) => "missing_entry",
            Finding::Refused { .. } => "audit_refused",
        }
    }

    /// The alarm text: what was detected, and what to do.
    pub fn describe(&self) -> String {
        let what = match self {
            Finding::BadSignature(why) => {
                format!("the hub's checkpoint does not verify with the hub key: {why}")
            }
            Finding::Rollback { kept, now } => format!(
                "the hub's log was rolled back: its checkpoint has {now} entries, but this agent verified one of {kept} before"
            ),
            Finding::Fork(why) => {
                format!("the hub's log does not extend the one it showed before (fork): {why}")
            }
            Finding::Missing(why) => {
                format!("an entry the hub receipted is not in its log: {why}")
            }
            Finding::Refused {
                since,
                audits,
                receipted,
                why,
            } => {
                // Only what the hub did: deliveries are named only when there were some.
                let worked = match (*receipted, audits.saturating_sub(*receipted)) {
                    (_, 0) => "while it receipted this agent's deliveries in each of those syncs".to_string(),
                    (0, _) => "while it answered this agent's signed requests in each of those syncs (there was nothing to deliver)".to_string(),
                    (r, a) => format!(
                        "while it receipted this agent's deliveries ({r} of those syncs) or, with nothing to deliver, answered this agent's signed requests ({a} of them)"
                    ),
                };
                format!(
                    "the hub has let no audit of its log finish since {} by this agent's clock ({audits} audits in a row), {worked}; the last audit failed: {why}; \
                     answers of 429 or 503 (overloaded) to every audit but not to this agent's other requests, dropped audit connections, and a hub too old to serve its log count as refusing",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            }
        };
        format!(
            "{} ({what}); the evidence is kept in this agent's store — tell the hub operator and the campaign, and keep this data directory",
            self.code()
        )
    }
}

/// What an audit came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check passed; the checkpoint of this size is kept.
    Verified(u64),
    /// A check failed: the alarm is raised and the evidence stored.
    Alarm(Finding),
}

/// Why an audit could not be finished (no alarm; nothing advanced; retried next sync).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The hub refused, failed, was not reached, or answered something unreadable.
    #[error("{0}")]
    Hub(#[from] PushError),
    /// The local store failed.
    #[error("the log audit cannot use the local store: {0}")]
    Store(#[from] StoreError),
    /// The kept checkpoint could not be cosigned.
    #[error("cannot cosign the verified checkpoint: {0}")]
    Cosign(#[from] spacesync_shared::cosign::CosignError),
}

/// What a failed audit saw, stored as evidence (`audit_evidence` tree, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// When it was detected (agent clock).
    pub at: DateTime<Utc>,
    /// The finding's code.
    pub code: String,
    /// The alarm text.
    pub detected: String,
    /// The checkpoint note kept before (verified by an earlier audit).
    pub kept: Option<String>,
    /// The checkpoint note the hub served now (empty when it served none: `audit_refused`,
    /// and the operator's `cleared` record).
    pub fetched: String,
    /// The proof request and its answer as received, when a proof failed.
    pub proof: Option<ProofEvidence>,
}

/// A proof the hub served that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofEvidence {
    /// What was asked (`consistency old→new`, `inclusion of leaf i in size n`).
    pub asked: String,
    /// The hub's answer body, as received.
    pub answer: String,
    /// For an inclusion proof: the seq whose receipt named the leaf, and the leaf hash the
    /// agent computed from its own entry (base64).
    pub seq: Option<u64>,
    /// See `seq`.
    pub leaf_hash: Option<String>,
}

/// The checkpoint of a note, read without verifying (its first line is the origin).
pub(super) fn parse_unverified(note: &str) -> Result<Checkpoint, merkle::NoteError> {
    let text = note.find("\n\n").map_or(note, |i| &note[..=i]).to_string();
    Checkpoint::parse_body(&text)
}

/// A proof answer's hashes.
#[derive(Deserialize)]
struct ProofAnswer {
    proof: Vec<String>,
}

pub(crate) fn decode_proof(body: &[u8], what: &str) -> Result<Vec<Hash>, AuditError> {
    let unreadable = |why: String| {
        AuditError::Hub(transient(
            format!("{what}: the hub's answer is unreadable: {why}"),
            false,
        ))
    };
    // Not serde's message: it can quote the hub's strings unmarked.
    let a: ProofAnswer = serde_json::from_slice(body).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Eof => "cut off",
            serde_json::error::Category::Data | serde_json::error::Category::Io => {
                "not a proof answer"
            }
        };
        unreadable(format!(
            "{kind} at line {} column {}; {}",
            e.line(),
            e.column(),
            hub_said(&String::from_utf8_lossy(&body[..body.len().min(1024)]))
        ))
    })?;
    if a.proof.len() > 128 {
        return Err(unreadable(format!("{} hashes", a.proof.len())));
    }
    a.proof
        .iter()
        .map(|h| {
            STANDARD
                .decode(h)
                .ok()
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .ok_or_else(|| {
                    unreadable(format!(
                        "a proof hash is not a base64 SHA-256 hash; {}",
                        hub_said(h)
                    ))
                })
        })
        .collect()
}

/// Sends an audit request; anything but a 2xx is an error (never success, never an alarm).
pub(super) async fn ask<T: Transport>(
    link: &mut Link<T>,
    req: &Request,
) -> Result<Vec<u8>, AuditError> {
    let reply = link.exchange(req).await?;
    if reply.class != Class::Done {
        return Err(reply.unexpected(&req.what()).into());
    }
    Ok(reply.body)
}

/// The hub's consistency proof from the tree of `old` leaves to that of `new` (none
/// asked when they are equal or `old` is empty), its answer kept in `evidence`.
pub(super) async fn consistency<T: Transport>(
    link: &mut Link<T>,
    old: u64,
    new: u64,
    evidence: &mut Evidence,
) -> Result<Vec<Hash>, AuditError> {
    if old == new || old == 0 {
        return Ok(Vec::new());
    }
    let req = Request::Consistency { old, new };
    let body = ask(link, &req).await?;
    let proof = decode_proof(&body, &req.what())?;
    evidence.proof = Some(ProofEvidence {
        asked: req.what(),
        answer: kept_text(&body),
        seq: None,
        leaf_hash: None,
    });
    Ok(proof)
}

/// Which receipted entries an audit proves in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The last entry of each batch receipted since the last audit (at most
    /// [`MAX_INCLUSIONS`] batches): every sync.
    NewBatches,
    /// Every receipted entry the store still holds: `verify --against-hub`.
    AllHeld,
}

/// What the checks of one audit passed with.
struct Passed {
    /// The checkpoint verified.
    cp: Checkpoint,
    /// Its note as served.
    fetched: String,
    /// Receipted seqs up to here are audited ([`Scope::NewBatches`]).
    through: u64,
    /// Inclusion proofs verified.
    proven: u64,
    /// Receipted entries pruned before they could be proven ([`Scope::AllHeld`]).
    pruned: u64,
}

/// One audit. `key` is the hub key receipts verify with; `now` stamps evidence.
pub async fn audit<T: Transport>(
    link: &mut Link<T>,
    store: &Store,
    key: &VerifyingKey,
    state: &SharedPushState,
    now: DateTime<Utc>,
) -> Result<Outcome, AuditError> {
    let mut st = AuditState::load(store)?;
    let checked = check(link, store, key, &st, now, Scope::NewBatches).await?;
    // The audit finished: a run of unfinished ones ([`unfinished`]) ends here.
    st.unfinished_since = None;
    st.unfinished_audits = 0;
    st.unfinished_receipted = None;
    let p = match checked {
        Ok(p) => p,
        Err((evidence, f)) => return raise(store, state, &mut st, *evidence, f).await,
    };
    // 4. Every check passed: keep the checkpoint.
    st.checkpoint = Some(p.fetched);
    st.audited_through = p.through;
    let json = serde_json::to_vec(&st).unwrap_or_default();
    store.set_audit_state(&json, None).await?;
    lock(state).verified_checkpoint_size = Some(p.cp.size);
    debug!(
        size = p.cp.size,
        audited_through = p.through,
        "Hub log audited."
    );
    Ok(Outcome::Verified(p.cp.size))
}

pub use crate::verify::FullAudit;

/// `verify --against-hub`: the audit of every sync, proving **every** receipted entry the
/// store still holds instead of each new batch's last. It raises the log alarm as the
/// sync's audit does, but keeps no new checkpoint (the pusher's audit does that), so it can
/// run beside it only in the pusher's task or with the agent stopped.
pub async fn audit_all<T: Transport>(
    link: &mut Link<T>,
    store: &Store,
    key: &VerifyingKey,
    state: &SharedPushState,
    now: DateTime<Utc>,
) -> Result<FullAudit, AuditError> {
    let mut st = AuditState::load(store)?;
    match check(link, store, key, &st, now, Scope::AllHeld).await? {
        Ok(p) => Ok(FullAudit {
            checkpoint_size: Some(p.cp.size),
            proven: p.proven,
            pruned: p.pruned,
            alarm: st.alarm,
        }),
        Err((evidence, f)) => {
            raise(store, state, &mut st, *evidence, f).await?;
            Ok(FullAudit {
                checkpoint_size: None,
                proven: 0,
                pruned: 0,
                alarm: st.alarm,
            })
        }
    }
}

/// Clears the log alarm, for the agent's operator once the finding is settled (the hub's
/// log restored with the campaign's agreement, say): the alarm goes, the kept checkpoint
/// too — the next audit starts again from the hub's checkpoint, as the first audit did —
/// and an evidence record says who cleared what, and why; the evidence before it stays.
/// Nothing the hub answers does this. Returns the alarm cleared (`None`: none stood).
pub async fn clear_alarm(
    store: &Store,
    state: &SharedPushState,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, AuditError> {
    let mut st = AuditState::load(store)?;
    let Some(old) = st.alarm.take() else {
        return Ok(None);
    };
    // Counting starts again too, as at the first audit.
    st.unfinished_since = None;
    st.unfinished_audits = 0;
    st.unfinished_receipted = None;
    let reason: String = reason.chars().take(500).collect();
    let record = Evidence {
        at: now,
        code: CLEARED.into(),
        detected: format!("log alarm cleared by this agent's operator: {reason}; it was: {old}"),
        kept: st.checkpoint.take(),
        fetched: String::new(),
        proof: None,
    };
    let json = serde_json::to_vec(&st).unwrap_or_default();
    let ev = serde_json::to_vec(&record).unwrap_or_default();
    // Past the cap the clearing still happens; the log line below records it.
    let full = store.audit_evidence_count() >= MAX_EVIDENCE;
    store
        .set_audit_state(&json, (!full).then_some(ev.as_slice()))
        .await?;
    {
        let mut s = lock(state);
        s.log_alarm = None;
        s.verified_checkpoint_size = None;
    }
    tracing::warn!(reason = ?reason, alarm = ?old, "Log alarm cleared by the operator; the next audit starts from the hub's checkpoint.");
    Ok(Some(old))
}

/// The evidence code of an alarm cleared by the operator ([`clear_alarm`]).
pub const CLEARED: &str = "cleared";

/// A failed check: what it saw, and what it found.
type Failed = (Box<Evidence>, Finding);

/// Steps 1–3 of an audit against the kept state `st`: `Ok(Err(_))` is a finding, to be
/// raised; `Err(_)` an audit that could not be finished.
async fn check<T: Transport>(
    link: &mut Link<T>,
    store: &Store,
    key: &VerifyingKey,
    st: &AuditState,
    now: DateTime<Utc>,
    scope: Scope,
) -> Result<Result<Passed, Failed>, AuditError> {
    let body = ask(link, &Request::Checkpoint).await?;
    let fetched = String::from_utf8_lossy(&body).into_owned();
    let kept =
        match st.checkpoint.as_deref() {
            Some(n) => Some(parse_unverified(n).map_err(|e| {
                StoreError::Corrupt(format!("the kept checkpoint does not read: {e}"))
            })?),
            None => None,
        };
    let mut evidence = Box::new(Evidence {
        at: now,
        code: String::new(),
        detected: String::new(),
        kept: st.checkpoint.clone(),
        fetched: kept_text(&body),
        proof: None,
    });

    // 1. The signature, with the hub key, under the log's name (kept from the first audit).
    let origin = match &kept {
        Some(k) => k.origin.clone(),
        None => fetched.split('\n').next().unwrap_or_default().to_string(),
    };
    let opened = NoteVerifier::new(&origin, *key)
        .and_then(|v| merkle::open_checkpoint(&fetched, &v, &origin));
    let cp = match opened {
        Ok(cp) => cp,
        Err(e) => {
            let shown: String = origin.chars().take(100).collect();
            let f = Finding::BadSignature(format!("log {shown:?}: {e}"));
            return Ok(Err((evidence, f)));
        }
    };

    // 2. The new tree extends the kept one.
    if let Some(k) = &kept {
        if cp.size < k.size {
            let f = Finding::Rollback {
                kept: k.size,
                now: cp.size,
            };
            return Ok(Err((evidence, f)));
        }
        let proof = consistency(link, k.size, cp.size, &mut evidence).await?;
        if let Err(e) = merkle::verify_consistency(k.size, cp.size, &k.root, &cp.root, &proof) {
            let f = Finding::Fork(format!(
                "the tree of {} entries does not extend the verified tree of {} ({e})",
                cp.size, k.size
            ));
            return Ok(Err((evidence, f)));
        }
    }

    // 3. Receipted entries are in the tree: each new batch's last, or every one held.
    let acked = store.acked()?;
    let seqs = match scope {
        Scope::NewBatches => batch_ends(store, st.audited_through, acked)?,
        Scope::AllHeld => receipted(store, acked)?,
    };
    let mut passed = Passed {
        cp,
        fetched,
        through: st.audited_through,
        proven: 0,
        pruned: 0,
    };
    let cp = &passed.cp;
    for seq in seqs {
        let Some(r) = store.receipt(seq)? else {
            continue;
        };
        let Some(env) = store.entry(seq)? else {
            // Pruned already: nothing to hash.
            debug!(seq, "Entry pruned before its inclusion was checked.");
            passed.through = passed.through.max(seq);
            passed.pruned += 1;
            continue;
        };
        let leaf = merkle::leaf_hash(&pae(&env.payload_type, &env.payload));
        let mut ev = ProofEvidence {
            asked: String::new(),
            answer: String::new(),
            seq: Some(seq),
            leaf_hash: Some(STANDARD.encode(leaf)),
        };
        if r.log_index >= cp.size {
            ev.asked = "none: the receipt's leaf is outside the checkpoint's tree".into();
            evidence.proof = Some(ev);
            let f = Finding::Missing(format!(
                "seq {seq} was receipted at leaf {} but the signed tree has {} entries",
                r.log_index, cp.size
            ));
            return Ok(Err((evidence, f)));
        }
        let req = Request::Inclusion {
            index: r.log_index,
            size: cp.size,
        };
        let body = ask(link, &req).await?;
        let proof = decode_proof(&body, &req.what())?;
        ev.asked = req.what();
        ev.answer = kept_text(&body);
        if let Err(e) = merkle::verify_inclusion(&leaf, r.log_index, cp.size, &proof, &cp.root) {
            evidence.proof = Some(ev);
            let f = Finding::Missing(format!(
                "seq {seq} was receipted at leaf {}, but the tree of {} entries does not hold this agent's entry there ({e})",
                r.log_index, cp.size
            ));
            return Ok(Err((evidence, f)));
        }
        passed.through = passed.through.max(seq);
        passed.proven += 1;
    }
    Ok(Ok(passed))
}

/// The signed probe of a sync with nothing to deliver whose audit was not finished: the
/// hub must answer a signed `GET /v1/agent/head` (it checks the request's nonce against its
/// store) `2xx` with the head of `source`. `Ok` is [`Worked::Answered`]; any error (the
/// hub not reached, any other status, another answer) means the hub did not prove it works.
pub async fn probe<T: Transport>(
    link: &mut Link<T>,
    source: &spacesync_shared::entry::SourceId,
) -> Result<(), PushError> {
    let req = Request::Head;
    let reply = link.exchange(&req).await?;
    if reply.class != Class::Done {
        return Err(reply.unexpected(&req.what()));
    }
    let unreadable = |why: String| transient(format!("{}: {why}", req.what()), false);
    let head: spacesync_shared::wire::SourceHead =
        serde_json::from_slice(&reply.body).map_err(|e| {
            unreadable(format!(
                "the answer is not a head at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
    if head.source != *source {
        return Err(unreadable(format!(
            "the answer is the head of another source ({})",
            hub_said(head.source.as_str())
        )));
    }
    Ok(())
}

/// Counts one sync whose audit could not be finished (`why`) although the hub proved in
/// that sync, after the audit, that it works (`worked`), and whose delivery succeeded — the
/// caller's to know (see the module doc) — and raises [`Finding::Refused`] once the run
/// has lasted [`REFUSED_AFTER`] with at least [`REFUSED_AUDITS`] audits. Nothing is
/// counted while the log alarm stands. The state is stored and flushed. Returns the
/// finding when it was raised now.
pub async fn unfinished(
    store: &Store,
    state: &SharedPushState,
    why: &str,
    worked: Worked,
    now: DateTime<Utc>,
) -> Result<Option<Finding>, AuditError> {
    let mut st = AuditState::load(store)?;
    if st.alarm.is_some() {
        return Ok(None);
    }
    if st.unfinished_receipted.is_none() {
        // No run under way, or one an older agent counted without proof: start afresh.
        st.unfinished_since = None;
        st.unfinished_audits = 0;
    }
    let since = *st.unfinished_since.get_or_insert(now);
    st.unfinished_audits = st.unfinished_audits.saturating_add(1);
    let receipted = st.unfinished_receipted.get_or_insert(0);
    if worked == Worked::Receipted {
        *receipted = receipted.saturating_add(1);
    }
    let receipted = *receipted;
    if st.unfinished_audits >= REFUSED_AUDITS && now - since >= REFUSED_AFTER {
        let mut shown: String = why.chars().take(MAX_WHY_CHARS).collect();
        if shown.len() < why.len() {
            shown.push_str(" […]");
        }
        let f = Finding::Refused {
            since,
            audits: st.unfinished_audits,
            receipted,
            why: shown,
        };
        let evidence = Evidence {
            at: now,
            code: String::new(),
            detected: String::new(),
            kept: st.checkpoint.clone(),
            fetched: String::new(),
            proof: None,
        };
        raise(store, state, &mut st, evidence, f.clone()).await?;
        return Ok(Some(f));
    }
    let json = serde_json::to_vec(&st).unwrap_or_default();
    store.set_audit_state(&json, None).await?;
    debug!(
        since = %since,
        audits = st.unfinished_audits,
        receipted,
        ?worked,
        "Audit unfinished while the hub worked; counted."
    );
    Ok(None)
}

/// Every receipted seq up to `acked`, ascending.
fn receipted(store: &Store, acked: u64) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for row in store.raw_receipts_from(1) {
        let (seq, _) = row?;
        if seq > acked {
            break;
        }
        seqs.push(seq);
    }
    Ok(seqs)
}

/// The last seq of each batch receipted in `(after, acked]`, at most [`MAX_INCLUSIONS`]:
/// a run of seqs pointing at one stored batch receipt is one batch; a run of per-entry
/// receipts (older hubs) counts as one batch too.
fn batch_ends(store: &Store, after: u64, acked: u64) -> Result<Vec<u64>, StoreError> {
    let mut ends = Vec::new();
    let mut prev: Option<(u64, Option<u64>)> = None;
    for row in store.raw_receipts_from(after.saturating_add(1)) {
        let (seq, r) = row?;
        if seq > acked {
            break;
        }
        let id = match r {
            StoredReceipt::InBatch(id) => Some(id),
            StoredReceipt::Own(_) => None,
        };
        if let Some((pseq, pid)) = prev
            && (pid != id || pseq + 1 != seq)
        {
            ends.push(pseq);
            if ends.len() == MAX_INCLUSIONS {
                return Ok(ends);
            }
        }
        prev = Some((seq, id));
    }
    if let Some((pseq, _)) = prev {
        ends.push(pseq);
    }
    Ok(ends)
}

/// Raises the log alarm for `f`: evidence and state stored (flushed), the status set, a
/// log line. The kept checkpoint does not move.
pub(super) async fn raise(
    store: &Store,
    state: &SharedPushState,
    st: &mut AuditState,
    mut evidence: Evidence,
    f: Finding,
) -> Result<Outcome, AuditError> {
    let text = f.describe();
    evidence.code = f.code().into();
    evidence.detected = text.clone();
    if st.alarm.is_none() {
        st.alarm = Some(text.clone());
    }
    // A hub that stays forked or rolled back fails every sync the same way: the evidence
    // and the log line once, not once a sync (the store would grow without end).
    let last: Option<Evidence> = store
        .last_audit_evidence()?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let repeated = last.is_some_and(|l| {
        l.code == evidence.code && l.kept == evidence.kept && l.fetched == evidence.fetched
    });
    let json = serde_json::to_vec(&*st).unwrap_or_default();
    let ev = serde_json::to_vec(&evidence).unwrap_or_default();
    let full = store.audit_evidence_count() >= MAX_EVIDENCE;
    store
        .set_audit_state(&json, (!repeated && !full).then_some(ev.as_slice()))
        .await?;
    lock(state).log_alarm = st.alarm.clone();
    if repeated {
        debug!(code = f.code(), "The hub's log fails the audit as before.");
    } else {
        // The text can quote the hub's answer: escaped.
        error!(code = f.code(), error = ?text, "The hub's log failed the audit; log alarm raised. Delivery continues.");
    }
    Ok(Outcome::Alarm(f))
}
