//! Dispute evidence (issue 16): one self-contained file that proves "the hub holds this
//! entry of ours", checkable by anyone offline with nothing but the file.
//!
//! The agent writes it (`spacesync-agent evidence --seq N --out FILE`); `spacesync-hub
//! evidence verify FILE` (no data directory) and [`verify`] check it; docs/evidence.md shows
//! how to check it with independent tooling (Go's `sumdb/note` and `sumdb/tlog`). It holds:
//!
//! - `entry`: the DSSE envelope the source signed, and `source_key`, the key line in force
//!   at that seq;
//! - `receipt`: the hub-signed receipt (per entry, or the batch receipt covering the seq),
//!   and `hub_key`;
//! - `log_index`, `checkpoint` (the hub's C2SP signed note of a tree holding the entry, with
//!   the witnesses' cosignature lines) and `inclusion_proof` (RFC 9162, base64 hashes);
//! - `witnesses`: the verifier keys (`name+id+base64`, type `0x04`) of the cosignatures the
//!   checkpoint carries, each of which must verify.
//!
//! Every check names what failed, so a changed byte anywhere is reported precisely.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cosign::{self, Cosigner};
use crate::dsse::{Envelope, pae};
use crate::entry::{Entry, SourceId};
use crate::keys::parse_public_key;
use crate::merkle::{self, Hash, NoteVerifier};
use crate::wire::open_entry_receipt;
use crate::witness_policy::{Policy, Tally};

/// The `format` member of an evidence file.
pub const FORMAT: &str = "spacesync-evidence/1";

/// Largest evidence file read (a real one is a few KiB).
pub const MAX_BYTES: usize = 1 << 20;

/// An evidence file, as written (JSON, members in this order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceFile {
    /// [`FORMAT`].
    pub format: String,
    /// The source whose entry this is.
    pub source: SourceId,
    /// The entry's seq.
    pub seq: u64,
    /// The source's key line (`ed25519:<base64>`) in force at that seq.
    pub source_key: String,
    /// The entry as the source signed it.
    pub entry: Envelope,
    /// The hub's key line.
    pub hub_key: String,
    /// The hub's signed receipt covering the entry.
    pub receipt: Envelope,
    /// The entry's leaf index in the hub's log.
    pub log_index: u64,
    /// The hub's checkpoint note of a tree that holds the leaf, with cosignature lines.
    pub checkpoint: String,
    /// The inclusion proof of the leaf in that tree, base64 SHA-256 hashes.
    pub inclusion_proof: Vec<String>,
    /// The witnesses whose cosignatures the checkpoint carries (verifier keys).
    pub witnesses: Vec<String>,
}

/// What a genuine evidence file proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// The source.
    pub source: SourceId,
    /// The seq.
    pub seq: u64,
    /// When the hub says it received the entry.
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// The leaf.
    pub log_index: u64,
    /// The log (checkpoint origin).
    pub origin: String,
    /// The size of the checkpointed tree.
    pub size: u64,
    /// The witnesses whose cosignatures verified, by name.
    pub witnesses: Vec<String>,
}

/// What is wrong with an evidence file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvidenceError {
    /// Not a readable evidence file at all.
    #[error("not an evidence file: {0}")]
    Unreadable(String),
    /// Another format.
    #[error("format is {0:?}; this verifier reads {FORMAT:?}")]
    Format(String),
    /// The source key does not parse.
    #[error("source_key: {0}")]
    SourceKey(String),
    /// The entry's signature or contents.
    #[error("entry: {0}")]
    Entry(String),
    /// The hub key does not parse.
    #[error("hub_key: {0}")]
    HubKey(String),
    /// The receipt's signature or contents.
    #[error("receipt: {0}")]
    Receipt(String),
    /// The checkpoint's signature or contents.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The inclusion proof.
    #[error("inclusion_proof: {0}")]
    Inclusion(String),
    /// A listed witness's cosignature.
    #[error("witnesses: {0}")]
    Witness(String),
}

/// Reads `bytes` as an evidence file (strict JSON: duplicate members and unknown members
/// refused).
pub fn parse(bytes: &[u8]) -> Result<EvidenceFile, EvidenceError> {
    if bytes.len() > MAX_BYTES {
        return Err(EvidenceError::Unreadable(format!(
            "{} bytes, more than the {MAX_BYTES} an evidence file may have",
            bytes.len()
        )));
    }
    crate::json::from_slice(bytes)
        .and_then(serde_json::from_value)
        .map_err(|e| EvidenceError::Unreadable(e.to_string()))
}

/// Checks an evidence file: the entry is signed by the source key, the hub receipted it at
/// `log_index`, the hub-signed checkpoint's tree holds it there (inclusion proof), and every
/// listed witness cosigned that checkpoint.
pub fn verify(bytes: &[u8]) -> Result<Proven, EvidenceError> {
    check(&parse(bytes)?)
}

/// [`verify`] of a parsed file.
fn check(f: &EvidenceFile) -> Result<Proven, EvidenceError> {
    if f.format != FORMAT {
        return Err(EvidenceError::Format(f.format.clone()));
    }
    let source_key =
        parse_public_key(&f.source_key).map_err(|e| EvidenceError::SourceKey(e.to_string()))?;
    let entry = Entry::open(&f.entry, &source_key)
        .map_err(|e| EvidenceError::Entry(format!("does not verify with source_key: {e}")))?;
    if entry.source != f.source || entry.seq != f.seq {
        return Err(EvidenceError::Entry(format!(
            "it is seq {} of {}, the file says seq {} of {}",
            entry.seq, entry.source, f.seq, f.source
        )));
    }
    let hub = parse_public_key(&f.hub_key).map_err(|e| EvidenceError::HubKey(e.to_string()))?;
    let r = open_entry_receipt(&f.receipt, &hub, f.seq)
        .map_err(|e| EvidenceError::Receipt(format!("with hub_key: {e}")))?;
    if r.source != f.source {
        return Err(EvidenceError::Receipt(format!(
            "it is for source {}, not {}",
            r.source, f.source
        )));
    }
    if r.entry_hash != f.entry.payload_hash() {
        return Err(EvidenceError::Receipt(
            "the entry hash it names is not the hash of this entry".into(),
        ));
    }
    if r.log_index != f.log_index {
        return Err(EvidenceError::Receipt(format!(
            "it places the entry at leaf {}, the file says {}",
            r.log_index, f.log_index
        )));
    }
    let origin = f.checkpoint.split('\n').next().unwrap_or_default();
    let cp = NoteVerifier::new(origin, hub)
        .and_then(|v| merkle::open_checkpoint(&f.checkpoint, &v, origin))
        .map_err(|e| EvidenceError::Checkpoint(format!("with hub_key: {e}")))?;
    if f.log_index >= cp.size {
        return Err(EvidenceError::Checkpoint(format!(
            "its tree has {} leaves, fewer than leaf {} needs",
            cp.size, f.log_index
        )));
    }
    let proof: Vec<Hash> = f
        .inclusion_proof
        .iter()
        .enumerate()
        .map(|(i, h)| {
            BASE64
                .decode(h)
                .ok()
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .ok_or_else(|| {
                    EvidenceError::Inclusion(format!("hash {i} is not a base64 SHA-256 hash"))
                })
        })
        .collect::<Result<_, _>>()?;
    let leaf = merkle::leaf_hash(&pae(&f.entry.payload_type, &f.entry.payload));
    merkle::verify_inclusion(&leaf, f.log_index, cp.size, &proof, &cp.root).map_err(|e| {
        EvidenceError::Inclusion(format!(
            "the entry is not at leaf {} of the checkpoint's tree: {e}",
            f.log_index
        ))
    })?;
    let listed: Vec<Cosigner> = f
        .witnesses
        .iter()
        .map(|v| Cosigner::from_vkey(v).map_err(|e| EvidenceError::Witness(format!("{v:?}: {e}"))))
        .collect::<Result<_, _>>()?;
    let got = cosign::verify(&f.checkpoint, &listed)
        .map_err(|e| EvidenceError::Witness(e.to_string()))?;
    if let Some(missing) = listed
        .iter()
        .find(|c| !got.iter().any(|g| g.name == c.name()))
    {
        return Err(EvidenceError::Witness(format!(
            "{} is listed, but the checkpoint carries no cosignature of it",
            missing.to_vkey()
        )));
    }
    Ok(Proven {
        source: f.source.clone(),
        seq: f.seq,
        received_at: r.received_at,
        log_index: f.log_index,
        origin: cp.origin,
        size: cp.size,
        witnesses: got.into_iter().map(|c| c.name).collect(),
    })
}

/// [`verify`], then the checkpoint read under a witness policy published outside the hub
/// ([`crate::witness_policy`]): the hub key must be the one the policy names (when it
/// names one), and the cosignatures of the policy's witnesses must witness at least its
/// quorum of provincial units. The file's own `witnesses` list is not trusted for the
/// count (the writer chose it); only the policy's keys count.
pub fn verify_under(bytes: &[u8], policy: &Policy) -> Result<(Proven, Tally), EvidenceError> {
    let f = parse(bytes)?;
    let proven = check(&f)?;
    let hub = parse_public_key(&f.hub_key).map_err(|e| EvidenceError::HubKey(e.to_string()))?;
    policy
        .check_log(&proven.origin, &hub)
        .map_err(|e| EvidenceError::HubKey(e.to_string()))?;
    let tally = policy
        .tally_lines(&f.checkpoint, proven.size)
        .map_err(|e| EvidenceError::Witness(e.to_string()))?;
    if !tally.met() {
        return Err(EvidenceError::Witness(format!(
            "{}; the policy's quorum is not met — write the evidence again from a checkpoint more provinces have cosigned (`spacesync-agent evidence --seq {} --at-size SIZE` with a bulletin's checkpoint size)",
            tally.describe(),
            proven.seq
        )));
    }
    Ok((proven, tally))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::public_key_line;
    use crate::merkle::{Checkpoint, MemoryTree};
    use crate::wire::Receipt;
    use ed25519_dalek::SigningKey;

    const ORIGIN: &str = "spacesync-hub/campaign/2018";

    /// A genuine file: entry 3 of a source at leaf 5 of a tree of 9, cosigned by two.
    fn genuine() -> Vec<u8> {
        let src = SigningKey::from_bytes(&[1; 32]);
        let hub = SigningKey::from_bytes(&[2; 32]);
        let source = SourceId::parse("gd-agent").unwrap_or_else(|e| panic!("{e}"));
        let entry = Entry {
            source: source.clone(),
            seq: 3,
            prev: crate::Digest::ZERO,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            campaign: "2018".into(),
            record: crate::record::Record::from_value(&serde_json::json!({
                "kind": "activity", "region": "440100", "date": "2018-11-20",
                "category": "training", "title": "t"
            }))
            .unwrap_or_else(|e| panic!("{e:?}")),
        }
        .sign(&src);
        let mut t = MemoryTree::new();
        for i in 0..9u8 {
            let leaf = if i == 5 {
                merkle::leaf_hash(&pae(&entry.payload_type, &entry.payload))
            } else {
                merkle::leaf_hash(&[i])
            };
            t.push(leaf).unwrap_or_else(|e| panic!("{e}"));
        }
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size: 9,
            root: t.root(),
        };
        let note = merkle::sign_checkpoint(&cp, ORIGIN, &hub).unwrap_or_else(|e| panic!("{e}"));
        let wits: Vec<(String, SigningKey)> = (0..2)
            .map(|i| {
                (
                    format!("spacesync-witness/w{i}"),
                    SigningKey::from_bytes(&[10 + i; 32]),
                )
            })
            .collect();
        let lines: Vec<String> = wits
            .iter()
            .map(|(n, k)| {
                cosign::cosign(&cp.body(), n, k, 1_543_111_200).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let note = cosign::add(&note, &lines).unwrap_or_else(|e| panic!("{e}"));
        let receipt = Receipt {
            source: source.clone(),
            seq: 3,
            entry_hash: entry.payload_hash(),
            log_index: 5,
            received_at: chrono::DateTime::UNIX_EPOCH,
        }
        .sign(&hub);
        let proof = merkle::inclusion_proof(&t, 5, 9).unwrap_or_else(|e| panic!("{e}"));
        let f = EvidenceFile {
            format: FORMAT.into(),
            source,
            seq: 3,
            source_key: public_key_line(&src.verifying_key()),
            entry,
            hub_key: public_key_line(&hub.verifying_key()),
            receipt,
            log_index: 5,
            checkpoint: note,
            inclusion_proof: proof.iter().map(|h| BASE64.encode(h)).collect(),
            witnesses: wits
                .iter()
                .map(|(n, k)| {
                    Cosigner::new(n, k.verifying_key())
                        .unwrap_or_else(|e| panic!("{e}"))
                        .to_vkey()
                })
                .collect(),
        };
        let mut b = serde_json::to_vec_pretty(&f).unwrap_or_default();
        b.push(b'\n');
        b
    }

    #[test]
    fn a_genuine_file_verifies() {
        let p = verify(&genuine()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.seq, p.log_index, p.size), (3, 5, 9));
        assert_eq!(p.witnesses.len(), 2);
    }

    /// Every byte changed (two ways) is refused, each with a message naming a member or
    /// the file's form.
    #[test]
    fn every_changed_byte_is_refused() {
        let good = genuine();
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80] {
                let mut b = good.clone();
                b[i] ^= flip;
                let e = verify(&b).expect_err(&format!("byte {i} ^ {flip:#x} accepted"));
                assert!(!e.to_string().is_empty());
            }
        }
    }

    fn policy(quorum: usize, hub: u8, units: &[&str]) -> Policy {
        let mut t = format!(
            "format {}\nlog {ORIGIN} {}\nquorum {quorum}\n",
            crate::witness_policy::FORMAT,
            public_key_line(&SigningKey::from_bytes(&[hub; 32]).verifying_key())
        );
        for (i, unit) in units.iter().enumerate() {
            let k = SigningKey::from_bytes(&[10 + i as u8; 32]);
            let c = Cosigner::new(&format!("spacesync-witness/w{i}"), k.verifying_key())
                .unwrap_or_else(|e| panic!("{e}"));
            t.push_str(&format!("witness {unit} {}\n", c.to_vkey()));
        }
        Policy::parse(&t).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Under a policy only its keys count, its hub key must be the file's, and its quorum
    /// must be met.
    #[test]
    fn a_policy_decides_what_witnessed_means() {
        let good = genuine();
        // w0 and w1 in two units, quorum 2: met.
        let (_, t) = verify_under(&good, &policy(2, 2, &["440000", "110000"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.units, vec!["110000", "440000"]);
        // Both in one unit: one unit witnessed, quorum 2 over three listed units not met.
        let e = verify_under(&good, &policy(2, 2, &["440000", "440000", "310000"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("witnesses: checkpoint of 9 entries witnessed by 1 of the policy's 2 unit(s), quorum 2 (quorum NOT met)"), "{e}");
        // Another hub key in the policy.
        let e = verify_under(&good, &policy(1, 3, &["440000"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("hub_key: the hub key"), "{e}");
        // Keys the file lists but the policy does not (the writer's choice) count for nothing.
        let mut strangers = policy(1, 2, &["440000"]);
        strangers.witnesses.clear();
        let k = SigningKey::from_bytes(&[99; 32]);
        let c = Cosigner::new("spacesync-witness/w0", k.verifying_key())
            .unwrap_or_else(|e| panic!("{e}"));
        strangers.witnesses.insert(
            c.name().to_string(),
            crate::witness_policy::Witness {
                unit: crate::region::RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}")),
                keys: vec![crate::witness_policy::WitnessKey {
                    cosigner: c,
                    until: None,
                }],
            },
        );
        let e = verify_under(&good, &strangers)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("witnessed by 0 of the policy's 1 unit(s)"),
            "{e}"
        );
    }
}
