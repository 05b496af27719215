//! The agent as a witness of the hub's log (issue 16): after an audit passed, it cosigns
//! the checkpoint it verified and sends the line to the hub (`POST /v1/cosignature`,
//! signed), which serves it on that checkpoint.
//!
//! - The cosignature is c2sp.org/tlog-cosignature `cosignature/v1` made with the source's
//!   own key (the one the hub registered) under the witness name
//!   [`cosign::witness_name`] (`spacesync-witness/<source>`): no second key to enrol or
//!   rotate, and the signed message (`cosignature/v1\ntime …\n` + checkpoint) starts with
//!   bytes no entry, receipt request or signed request starts with.
//! - Never without a passed audit: only the checkpoint the audit kept is cosigned, and
//!   never while the log alarm stands (an agent that saw a fork or a rollback vouches for
//!   nothing the hub shows afterwards).
//! - Earlier checkpoints the hub asks for ([`cosign_wanted`], those bulletins are pinned
//!   to) are cosigned only after a consistency proof from them to the kept checkpoint
//!   verified; a proof that fails is a fork, alarmed like the audit's.
//!
//! Sending fails softly: a hub that is down or refuses is logged and the next sync tries
//! again; nothing here stops delivery.

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use spacesync_shared::cosign;
use spacesync_shared::merkle::{self, NoteVerifier};
use spacesync_shared::wire::{CosignatureSubmission, ErrorBody, RefusalCode, WitnessWanted};
use tracing::{debug, info, warn};

use super::audit::{
    AuditError, AuditState, Evidence, Finding, ask, consistency, kept_text, parse_unverified, raise,
};
use super::classify::{Class, Link};
use super::state::SharedPushState;
use super::transport::{Request, Transport};
use crate::intake::Identity;
use crate::store::Store;

/// Earlier checkpoints remembered as cosigned (the hub asks for a few at a time).
const PINS_KEPT: usize = 16;

/// Most earlier checkpoints cosigned in one sync.
const MAX_WANTED: usize = 4;

/// The text (origin, size, root lines) of a checkpoint note.
fn text_of(note: &str) -> &str {
    note.find("\n\n").map_or(note, |i| &note[..=i])
}

/// What the hub said to a cosignature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Kept by the hub.
    Accepted,
    /// Refused: its code and message (logged; not sent again).
    Refused(Option<RefusalCode>, String),
}

/// Cosigns `text` at `now` and sends it.
async fn send<T: Transport>(
    link: &mut Link<T>,
    ident: &Identity,
    text: &str,
    now: DateTime<Utc>,
) -> Result<Sent, AuditError> {
    let ts = u64::try_from(now.timestamp()).unwrap_or(0);
    let line = cosign::cosign(text, &cosign::witness_name(&ident.source), &ident.key, ts)?;
    let req = Request::Cosign(CosignatureSubmission {
        checkpoint: text.to_string(),
        cosignature: line,
    });
    let reply = link.exchange(&req).await?;
    match reply.class {
        Class::Done => Ok(Sent::Accepted),
        Class::Refused | Class::Malformed => {
            let body: Option<ErrorBody> = serde_json::from_slice(&reply.body).ok();
            let (code, msg) = match body {
                Some(b) => (b.code, b.error),
                None => (
                    None,
                    String::from_utf8_lossy(&reply.body)
                        .chars()
                        .take(200)
                        .collect(),
                ),
            };
            Ok(Sent::Refused(code, msg))
        }
        _ => Err(reply.unexpected(&req.what()).into()),
    }
}

fn save(st: &AuditState) -> Vec<u8> {
    serde_json::to_vec(st).unwrap_or_default()
}

/// Cosigns the checkpoint the last audit kept, once per checkpoint, unless the log alarm
/// stands. Returns what the hub said, or `None` when there was nothing to send.
pub async fn cosign_kept<T: Transport>(
    link: &mut Link<T>,
    store: &Store,
    ident: &Identity,
    now: DateTime<Utc>,
) -> Result<Option<Sent>, AuditError> {
    let mut st = AuditState::load(store)?;
    if st.alarm.is_some() {
        debug!("The log alarm stands; this agent cosigns nothing.");
        return Ok(None);
    }
    let (Some(note), Some(size)) = (st.checkpoint.clone(), st.verified_size()) else {
        return Ok(None);
    };
    if st.cosigned_size == Some(size) {
        return Ok(None);
    }
    let sent = send(link, ident, text_of(&note), now).await?;
    match &sent {
        Sent::Accepted => debug!(size, "Cosigned the hub's checkpoint."),
        Sent::Refused(Some(RefusalCode::StaleCosignature), _) => {
            debug!(
                size,
                "The hub holds this agent's cosignature of that checkpoint."
            )
        }
        Sent::Refused(code, msg) => {
            // The error can quote the hub's answer: escaped.
            warn!(size, code = ?code, error = ?msg, "The hub refused this agent's cosignature of a checkpoint it verified.")
        }
    }
    // Sent once per checkpoint either way, but for a line the hub could not verify: right
    // after an offline `rotate-key` the hub holds the old key until the transition entry
    // is delivered (after this audit, in the same cycle), so the next sync sends it again.
    // Any other refusal is not retried (the next checkpoint is cosigned afresh).
    if !matches!(sent, Sent::Refused(Some(RefusalCode::BadCosignature), _)) {
        st.cosigned_size = Some(size);
        store.set_audit_state(&save(&st), None).await?;
    }
    Ok(Some(sent))
}

/// Cosigns the earlier checkpoints the hub asks for (`/v1/cosignature/wanted`), each
/// after a consistency proof from it to the kept checkpoint; a proof that fails raises the
/// log alarm (a fork). `key` is the hub key. Returns the sizes cosigned.
pub async fn cosign_wanted<T: Transport>(
    link: &mut Link<T>,
    store: &Store,
    ident: &Identity,
    key: &VerifyingKey,
    state: &SharedPushState,
    now: DateTime<Utc>,
) -> Result<Vec<u64>, AuditError> {
    let mut st = AuditState::load(store)?;
    if st.alarm.is_some() {
        return Ok(Vec::new());
    }
    let Some(kept_note) = st.checkpoint.clone() else {
        return Ok(Vec::new());
    };
    let kept = parse_unverified(&kept_note).map_err(|e| {
        crate::store::StoreError::Corrupt(format!("the kept checkpoint does not read: {e}"))
    })?;
    let reply = link.exchange(&Request::WitnessWanted).await?;
    match reply.class {
        Class::Done => {}
        // A hub without the endpoint asks for nothing.
        Class::NotFound => return Ok(Vec::new()),
        _ => return Err(reply.unexpected(&Request::WitnessWanted.what()).into()),
    }
    let wanted: WitnessWanted = serde_json::from_slice(&reply.body).map_err(|e| {
        AuditError::Hub(super::classify::transient(
            format!("{}: unreadable answer: {e}", Request::WitnessWanted.what()),
            false,
        ))
    })?;
    let mut done = Vec::new();
    let todo: Vec<u64> = wanted
        .sizes
        .into_iter()
        // The kept checkpoint was cosigned already (cosign_kept, the same sync).
        .filter(|&n| {
            n > 0 && n <= kept.size && !st.cosigned_pins.contains(&n) && st.cosigned_size != Some(n)
        })
        .take(MAX_WANTED)
        .collect();
    for size in todo {
        let req = Request::CheckpointAt { size };
        let body = ask(link, &req).await?;
        let fetched = String::from_utf8_lossy(&body).into_owned();
        let mut evidence = Evidence {
            at: now,
            code: String::new(),
            detected: String::new(),
            kept: Some(kept_note.clone()),
            fetched: kept_text(&body),
            proof: None,
        };
        let opened = NoteVerifier::new(&kept.origin, *key)
            .and_then(|v| merkle::open_checkpoint(&fetched, &v, &kept.origin));
        let cp = match opened {
            Ok(cp) if cp.size == size => cp,
            Ok(cp) => {
                let f = Finding::BadSignature(format!(
                    "asked for the checkpoint of {size} entries, the hub sent one of {}",
                    cp.size
                ));
                raise(store, state, &mut st, evidence, f).await?;
                return Ok(done);
            }
            Err(e) => {
                let f = Finding::BadSignature(format!("the checkpoint of {size} entries: {e}"));
                raise(store, state, &mut st, evidence, f).await?;
                return Ok(done);
            }
        };
        let proof = consistency(link, size, kept.size, &mut evidence).await?;
        if let Err(e) = merkle::verify_consistency(size, kept.size, &cp.root, &kept.root, &proof) {
            let f = Finding::Fork(format!(
                "the hub's checkpoint of {size} entries is not a prefix of the verified tree of {} ({e})",
                kept.size
            ));
            raise(store, state, &mut st, evidence, f).await?;
            return Ok(done);
        }
        let sent = send(link, ident, text_of(&fetched), now).await?;
        match &sent {
            Sent::Accepted => info!(size, "Cosigned an earlier checkpoint the hub asked for."),
            // The hub holds this witness's line for it already.
            Sent::Refused(Some(RefusalCode::StaleCosignature), _) => {
                debug!(
                    size,
                    "The hub holds this agent's cosignature of that checkpoint."
                )
            }
            Sent::Refused(code, msg) => {
                warn!(size, code = ?code, error = ?msg, "The hub refused this agent's cosignature of an earlier checkpoint.")
            }
        }
        // As for the kept checkpoint: a line the hub could not verify (its registry still
        // holds the key before an offline `rotate-key`) is sent again next sync, or this
        // province would never witness the bulletin.
        if matches!(sent, Sent::Refused(Some(RefusalCode::BadCosignature), _)) {
            continue;
        }
        st.cosigned_pins.push(size);
        if st.cosigned_pins.len() > PINS_KEPT {
            st.cosigned_pins.remove(0);
        }
        store.set_audit_state(&save(&st), None).await?;
        done.push(size);
    }
    Ok(done)
}
