//! `spacesync-agent verify`: an fsck of the local store, offline.
//!
//! Checks every entry's signature and the hash chain with
//! [`spacesync_shared::chain::ChainVerifier`], the verifier hub ingest uses (resuming after
//! the pruned prefix from the kept hash), seq continuity, the stored head, every receipt
//! (hub signature, source, seq, entry hash; a batch receipt's signature once for all the
//! seqs it covers), that the delivered seq is covered by receipts, and the buffered byte
//! count. After a fault it re-synchronises at the faulty
//! entry, so one damaged entry is reported once and the rest are still checked.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use spacesync_shared::chain::{ChainVerifier, KeySchedule};
use spacesync_shared::dsse::Digest;
use spacesync_shared::keys;
use spacesync_shared::wire::{BatchReceipt, Receipt};

use crate::intake::Identity;
use crate::store::{Store, StoreError, StoredReceipt, parse_envelope};

/// What `verify --against-hub` found (`push::audit::audit_all`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullAudit {
    /// Size of the hub's checkpoint every receipted entry was proven in (its signature and
    /// its consistency with the kept checkpoint verified first).
    pub checkpoint_size: Option<u64>,
    /// Receipted entries proven in that tree by their inclusion proofs.
    pub proven: u64,
    /// Receipted entries pruned from this store after delivery: nothing left to hash.
    pub pruned: u64,
    /// The log alarm this check raised or found standing (`None`: the log is sound).
    pub alarm: Option<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// Receipts checked.
    pub receipts: u64,
    /// Entries pruned before the first held one.
    pub pruned_through: u64,
    /// The stored head seq.
    pub head_seq: u64,
    /// Every fault found, one line each; empty means the store is sound.
    pub problems: Vec<String>,
    /// `--against-hub`: every receipted entry held, proven in the hub's tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against_hub: Option<FullAudit>,
}

impl VerifyReport {
    /// True when nothing is wrong (and, against the hub, no log alarm stands).
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.against_hub.as_ref().is_none_or(|a| a.alarm.is_none())
    }
}

/// Checks the store of `ident`; `hub_key` checks the receipts.
pub fn verify(
    store: &Store,
    ident: &Identity,
    hub_key: Option<&VerifyingKey>,
) -> Result<VerifyReport, StoreError> {
    let mut rep = VerifyReport::default();
    let (pruned, pruned_hash) = store.pruned()?;
    let (head, head_hash) = store.head()?;
    let acked = store.acked()?;
    rep.pruned_through = pruned;
    rep.head_seq = head;
    // The keys along the chain: the rotations recorded, or the one key for every seq.
    let history = store.key_history()?;
    let keys = if history.is_empty() {
        KeySchedule::single(ident.key.verifying_key())
    } else {
        history.iter().fold(KeySchedule::new(), |k, (from, line)| {
            k.with(*from, keys::parse_public_key(line).ok())
        })
    };
    let mut v = ChainVerifier::with_keys(
        ident.source.clone(),
        keys,
        ident.scope,
        Some(ident.campaign.id.clone()),
    )
    .resume(pruned, pruned_hash);
    let mut last: Option<(u64, Digest)> = None;
    let mut hashes = std::collections::HashMap::new();
    let mut unreceipted_bytes = 0u64;
    for row in store.raw_entries() {
        // sled checks what it reads; a damaged page ends the scan, named by position. A
        // damaged pack (read, but its layout wrong) is named and the scan goes on past it.
        let (seq, bytes) = match row {
            Ok(r) => r,
            Err(e) => {
                let after = last.map_or(pruned, |(s, _)| s);
                rep.problems
                    .push(format!("the entry after seq {after} cannot be read: {e}"));
                if matches!(e, StoreError::Corrupt(_)) {
                    continue;
                }
                break;
            }
        };
        rep.entries += 1;
        if seq > acked {
            unreceipted_bytes += bytes.len() as u64;
        }
        let env = match parse_envelope(seq, &bytes) {
            Ok(e) => e,
            Err(e) => {
                rep.problems.push(e.to_string());
                continue;
            }
        };
        let hash = env.payload_hash();
        hashes.insert(seq, hash);
        if let Err(e) = v.push(&env) {
            rep.problems.push(format!("entry stored at seq {seq}: {e}"));
            v.resync(seq, hash);
        }
        last = Some((seq, hash));
    }
    match last {
        Some((seq, hash)) if seq != head || hash != head_hash => rep.problems.push(format!(
            "the stored head is seq {head} ({head_hash}) but the last entry is seq {seq} ({hash})"
        )),
        None if head > 0 => rep.problems.push(format!(
            "the stored head is seq {head} but no entry is held"
        )),
        _ => {}
    }
    if acked > head {
        rep.problems.push(format!(
            "the delivered seq {acked} is beyond the head {head}"
        ));
    }
    let mut receipted_upto_acked = 0u64;
    let mut warned_no_key = false;
    let mut last_receipt = 0;
    // The batch receipt last opened (by id), so the seqs it covers cost one signature.
    let mut batch: Option<(u64, Option<BatchReceipt>)> = None;
    for row in store.raw_receipts() {
        let (seq, stored) = match row {
            Ok(r) => r,
            Err(e) => {
                rep.problems.push(format!(
                    "the receipt after seq {last_receipt} cannot be read: {e}"
                ));
                break;
            }
        };
        last_receipt = seq;
        rep.receipts += 1;
        if seq <= acked {
            receipted_upto_acked += 1;
        }
        // An own receipt is read before anything else, so damage shows without a hub key.
        let stored = match stored {
            StoredReceipt::Own(bytes) => match parse_envelope(seq, &bytes) {
                Ok(env) => Ok(env),
                Err(e) => {
                    rep.problems.push(format!("receipt {e}"));
                    continue;
                }
            },
            StoredReceipt::InBatch(id) => Err(id),
        };
        let Some(key) = hub_key else {
            if !warned_no_key {
                rep.problems.push(
                    "receipts cannot be checked: no hub key is pinned in agent.toml or stored"
                        .into(),
                );
                warned_no_key = true;
            }
            continue;
        };
        let r = match stored {
            Ok(env) => match Receipt::open(&env, key) {
                Ok(r) => r,
                Err(e) => {
                    rep.problems.push(format!("receipt for seq {seq}: {e}"));
                    continue;
                }
            },
            Err(id) => {
                if batch.as_ref().is_none_or(|(held, _)| *held != id) {
                    // A batch receipt that does not open is named once, with its id.
                    let opened = open_batch(store, id, key);
                    if let Err(e) = &opened {
                        rep.problems
                            .push(format!("batch receipt {id} (first for seq {seq}): {e}"));
                    }
                    batch = Some((id, opened.ok()));
                }
                let Some((_, Some(b))) = &batch else {
                    continue;
                };
                match b.receipt(seq) {
                    Some(r) => r,
                    None => {
                        rep.problems.push(format!(
                            "receipt for seq {seq}: the batch receipt {id} it points at does not cover it"
                        ));
                        continue;
                    }
                }
            }
        };
        if r.seq != seq || r.source != ident.source {
            rep.problems.push(format!(
                "receipt stored for seq {seq} is for {} seq {}",
                r.source, r.seq
            ));
        }
        if let Some(h) = hashes.get(&seq)
            && *h != r.entry_hash
        {
            rep.problems.push(format!(
                "receipt for seq {seq} names entry hash {} but the entry's is {h}",
                r.entry_hash
            ));
        }
    }
    if receipted_upto_acked != acked {
        rep.problems.push(format!(
            "seqs 1–{acked} count as delivered but only {receipted_upto_acked} of them have receipts"
        ));
    }
    let stored_bytes = store.buffered_bytes()?;
    if stored_bytes != unreceipted_bytes {
        rep.problems.push(format!(
            "the buffered byte count is {stored_bytes} but the waiting entries hold {unreceipted_bytes}"
        ));
    }
    Ok(rep)
}

/// Reads and verifies the batch receipt stored under `id`.
fn open_batch(store: &Store, id: u64, key: &VerifyingKey) -> Result<BatchReceipt, String> {
    let bytes = store
        .batch_receipt(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "it is missing from the store".to_string())?;
    let env: spacesync_shared::Envelope = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the stored envelope is unreadable: {e}"))?;
    BatchReceipt::open(&env, key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::tests::{identity, json, writer};

    /// A store in `dir` holding three intake batches of two activities each (seqs 1–6).
    fn three_batches_of_two(dir: &tempfile::TempDir) -> Store {
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let mut w = writer(&store, Default::default());
        let act = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;
        for _ in 0..3 {
            w.submit(&json(&[act, act].join("\n")), &mut |_| {})
                .unwrap_or_else(|e| panic!("{e}"));
        }
        store
    }

    #[test]
    fn a_sound_store_verifies_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = three_batches_of_two(&dir);
        let ident = identity();
        let rep = verify(&store, &ident, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(rep.ok(), "{:?}", rep.problems);
        assert_eq!(rep.entries, 6);

        // Overwrite entry 4 with entry 3's envelope: a replayed seq breaks continuity.
        let three = store
            .entry(3)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("seq 3"));
        store
            .damage_entry(4, Some(&serde_json::to_vec(&three).unwrap_or_default()))
            .unwrap_or_else(|e| panic!("{e}"));
        let rep = verify(&store, &ident, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            rep.problems
                .iter()
                .any(|p| p.contains("seq 4") || p.contains("seq 3")),
            "{:?}",
            rep.problems
        );
    }

    #[test]
    fn a_damaged_pack_is_named_and_the_entries_after_it_are_still_checked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Three batches of two: packs 1–2, 3–4, 5–6.
        let store = three_batches_of_two(&dir);
        assert_eq!(store.entry_values(), 3);
        // The pack under seq 4 says it holds nine entries from seq 3.
        let mut bad = vec![1u8];
        bad.extend_from_slice(&3u64.to_be_bytes());
        bad.extend_from_slice(&9u32.to_be_bytes());
        store
            .debug_put_raw_entry(4, &bad)
            .unwrap_or_else(|e| panic!("{e}"));
        let rep = verify(&store, &identity(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rep.entries, 4, "1, 2, 5 and 6 read: {:?}", rep.problems);
        assert!(
            rep.problems[0].starts_with("the entry after seq 2 cannot be read")
                && rep.problems[0].contains("up to seq 4"),
            "{:?}",
            rep.problems
        );
        assert!(
            rep.problems.iter().any(|p| p.contains("seq 5")),
            "the gap is named: {:?}",
            rep.problems
        );
    }
}
