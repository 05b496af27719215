//! `spacesync-agent evidence --seq N --out FILE`: the dispute evidence file of one entry
//! ([`spacesync_shared::evidence`]): the entry as signed, the hub's receipt, and an
//! inclusion proof in the hub's checkpoint of the tree the log audit last verified, with
//! the witnesses' cosignatures collected on it.
//!
//! The checkpoint is the kept one (`meta/audit`): the entry's leaf must be inside it, so
//! an entry receipted after the last audit waits for the next sync. The hub is asked for
//! that checkpoint again (now carrying the cosignatures collected since) and for the
//! inclusion proof, and both are checked here — the hub's signature, the root against the
//! kept one, the proof against the agent's own entry — before anything is written; the
//! witnesses listed are those whose cosignature verifies with the key the hub lists for
//! them (`GET /v1/witnesses`). The file is then checked once more as a third party would
//! ([`spacesync_shared::evidence::verify`]).

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use spacesync_shared::cosign::{self, Cosigner};
use spacesync_shared::evidence::{self as ev, EvidenceFile, Proven};
use spacesync_shared::keys::public_key_line;
use spacesync_shared::merkle::{self, NoteVerifier};
use spacesync_shared::wire::{Witnesses, open_entry_receipt};

use crate::intake::Identity;
use crate::push::audit::AuditState;
use crate::push::transport::{Request, Transport};
use crate::store::{Store, StoreError, StoredReceipt, parse_envelope};

/// Why no evidence file was written.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such entry.
    #[error("seq {seq} is not an entry of this agent (its head is {head})")]
    NoEntry {
        /// Asked for.
        seq: u64,
        /// The head seq.
        head: u64,
    },
    /// Pruned after delivery.
    #[error(
        "seq {0} was pruned after delivery (retention.delivered_days); evidence needs the entry itself: use a backup of this data directory that still holds it"
    )]
    Pruned(u64),
    /// Not receipted yet.
    #[error("seq {0} has no receipt from the hub yet; let the agent deliver it and try again")]
    NoReceipt(u64),
    /// No hub key known.
    #[error(
        "no hub key is known (none pinned in agent.toml, none stored); run the agent once against the hub"
    )]
    NoHubKey,
    /// The stored receipt does not verify.
    #[error("seq {seq}: the stored receipt does not verify with the hub key: {why}")]
    Receipt {
        /// The seq.
        seq: u64,
        /// What is wrong.
        why: String,
    },
    /// The audit has not verified a tree that holds the leaf.
    #[error(
        "seq {seq} is at leaf {index}, but the last checkpoint this agent verified has {size} entries; let the agent sync (its log audit runs every sync) and try again"
    )]
    NotYetVerified {
        /// The seq.
        seq: u64,
        /// Its leaf.
        index: u64,
        /// The kept checkpoint's size (0: none yet).
        size: u64,
    },
    /// The checkpoint asked for is too small to hold the entry.
    #[error(
        "seq {seq} is at leaf {index}, outside the checkpoint of {size} entries asked for; give a checkpoint size above {index} (a later bulletin's)"
    )]
    NotInTree {
        /// The seq.
        seq: u64,
        /// Its leaf.
        index: u64,
        /// The size asked for.
        size: u64,
    },
    /// The hub did not answer, or answered something that does not check out.
    #[error("the hub at {hub}: {why}")]
    Hub {
        /// The hub URL.
        hub: String,
        /// What happened.
        why: String,
    },
    /// Writing the file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file written does not verify (a defect: nothing else should make this).
    #[error("the evidence file does not verify: {0}")]
    SelfCheck(#[from] ev::EvidenceError),
}

/// The key line of this source in force at `seq`.
fn key_at(store: &Store, ident: &Identity, seq: u64) -> Result<String, StoreError> {
    let history = store.key_history()?;
    Ok(history
        .iter()
        .rev()
        .find(|(from, _)| *from <= seq)
        .map(|(_, line)| line.clone())
        .unwrap_or_else(|| ident.key_line()))
}

/// The raw receipt envelope stored for `seq` (its own, or the batch receipt covering it).
fn receipt_envelope(
    store: &Store,
    seq: u64,
) -> Result<Option<spacesync_shared::Envelope>, StoreError> {
    let Some(row) = store.raw_receipts_from(seq).next() else {
        return Ok(None);
    };
    let (at, r) = row?;
    if at != seq {
        return Ok(None);
    }
    let bytes = match r {
        StoredReceipt::Own(b) => b,
        StoredReceipt::InBatch(id) => store.batch_receipt(id)?.ok_or_else(|| {
            StoreError::Corrupt(format!("seq {seq}: batch receipt {id} is missing"))
        })?,
    };
    parse_envelope(seq, &bytes).map(Some)
}

async fn ask<T: Transport>(
    hub: &mut T,
    url: &str,
    req: &Request,
) -> Result<Vec<u8>, EvidenceError> {
    let fail = |why: String| EvidenceError::Hub {
        hub: url.to_string(),
        why: format!("{}: {why}", req.what()),
    };
    let a = hub.send(req).await.map_err(|u| fail(u.error))?;
    if !(200..300).contains(&a.status) {
        let body: String = String::from_utf8_lossy(&a.body).chars().take(300).collect();
        return Err(fail(format!("answered {}: {body}", a.status)));
    }
    Ok(a.body)
}

/// Writes evidence `bytes` to `out`, a new file, flushed.
pub fn save(bytes: &[u8], out: &Path) -> Result<(), EvidenceError> {
    let io = |error| EvidenceError::Io {
        path: out.to_path_buf(),
        error,
    };
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)
}

/// Builds the evidence file of `seq` and checks it as a third party would: its bytes.
/// Reads the store only, so the running agent's API serves it too (`GET /v1/evidence`).
///
/// `at_size` names an earlier checkpoint to prove the entry in instead of the kept one,
/// typically a bulletin's, which the hub has the provinces cosign until their quorum is
/// met (the kept checkpoint is the newest this agent saw, which few others cosign at
/// exactly that size). It must hold the leaf and be no larger than the kept one; the hub
/// proves it consistent with the kept one, so it is the log this agent audited.
pub async fn build<T: Transport>(
    hub: &mut T,
    hub_url: &str,
    store: &Store,
    ident: &Identity,
    hub_key: &VerifyingKey,
    seq: u64,
    at_size: Option<u64>,
) -> Result<(Vec<u8>, Proven), EvidenceError> {
    let Some(entry) = store.entry(seq)? else {
        let (pruned, _) = store.pruned()?;
        if seq >= 1 && seq <= pruned {
            return Err(EvidenceError::Pruned(seq));
        }
        return Err(EvidenceError::NoEntry {
            seq,
            head: store.head()?.0,
        });
    };
    let receipt = receipt_envelope(store, seq)?.ok_or(EvidenceError::NoReceipt(seq))?;
    let r = open_entry_receipt(&receipt, hub_key, seq).map_err(|e| EvidenceError::Receipt {
        seq,
        why: e.to_string(),
    })?;
    let st = AuditState::load(store)?;
    let kept = st
        .checkpoint
        .as_deref()
        .map(|n| n.find("\n\n").map_or(n, |i| &n[..=i]))
        .map(merkle::Checkpoint::parse_body)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("the kept checkpoint does not read: {e}")))?;
    let Some(kept) = kept.filter(|k| r.log_index < k.size) else {
        return Err(EvidenceError::NotYetVerified {
            seq,
            index: r.log_index,
            size: st.verified_size().unwrap_or(0),
        });
    };
    let bad = |why: String| EvidenceError::Hub {
        hub: hub_url.to_string(),
        why,
    };
    let size = match at_size {
        None => kept.size,
        Some(n) if n > kept.size => {
            return Err(EvidenceError::NotYetVerified {
                seq,
                index: r.log_index,
                size: kept.size,
            });
        }
        Some(n) if n <= r.log_index => {
            return Err(EvidenceError::NotInTree {
                seq,
                index: r.log_index,
                size: n,
            });
        }
        Some(n) => n,
    };
    // The checkpoint again, with the cosignatures collected on it since.
    let note = String::from_utf8_lossy(&ask(hub, hub_url, &Request::CheckpointAt { size }).await?)
        .into_owned();
    let cp = NoteVerifier::new(&kept.origin, *hub_key)
        .and_then(|v| merkle::open_checkpoint(&note, &v, &kept.origin))
        .map_err(|e| bad(format!("its checkpoint of {size} entries: {e}")))?;
    if cp.size != size {
        return Err(bad(format!(
            "asked for its checkpoint of {size} entries, it served one of {}",
            cp.size
        )));
    }
    if size == kept.size && cp.root != kept.root {
        return Err(bad(format!(
            "its checkpoint of {size} entries is not the one this agent verified (another tree: see the log alarm)"
        )));
    }
    if size < kept.size {
        // The earlier tree must be a prefix of the one this agent verified.
        let req = Request::Consistency {
            old: size,
            new: kept.size,
        };
        let body = ask(hub, hub_url, &req).await?;
        let proof =
            crate::push::audit::decode_proof(&body, &req.what()).map_err(|e| bad(e.to_string()))?;
        merkle::verify_consistency(size, kept.size, &cp.root, &kept.root, &proof).map_err(|e| {
            bad(format!(
                "its checkpoint of {size} entries is not a prefix of the tree of {} entries this agent verified ({e}); another tree: see the log alarm",
                kept.size
            ))
        })?;
    }
    let body = ask(
        hub,
        hub_url,
        &Request::Inclusion {
            index: r.log_index,
            size,
        },
    )
    .await?;
    let proof: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::from_value(v["proof"].clone()).ok())
        .ok_or_else(|| bad("its inclusion proof is unreadable".into()))?;
    // The witnesses whose lines verify with the keys the hub lists (a hub without the
    // endpoint lists none: the lines stay on the note, unlisted).
    let listed: Vec<Cosigner> = match hub.send(&Request::Witnesses).await {
        Ok(a) if (200..300).contains(&a.status) => serde_json::from_slice::<Witnesses>(&a.body)
            .map(|w| {
                w.witnesses
                    .iter()
                    .filter_map(|v| Cosigner::from_vkey(v).ok())
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut witnesses = Vec::new();
    for c in listed {
        if cosign::verify(&note, std::slice::from_ref(&c)).is_ok_and(|g| g.len() == 1) {
            witnesses.push(c.to_vkey());
        }
    }
    let file = EvidenceFile {
        format: ev::FORMAT.into(),
        source: ident.source.clone(),
        seq,
        source_key: key_at(store, ident, seq)?,
        entry,
        hub_key: public_key_line(hub_key),
        receipt,
        log_index: r.log_index,
        checkpoint: note,
        inclusion_proof: proof,
        witnesses,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    bytes.push(b'\n');
    // Checked as a third party checks it, before anyone gets it.
    let proven = ev::verify(&bytes)?;
    Ok((bytes, proven))
}
