//! Witness cosignatures on checkpoints: [c2sp.org/tlog-cosignature], the Ed25519
//! `cosignature/v1` type (signature type `0x04`).
//!
//! A cosignature is a signed-note signature line added to a checkpoint by a witness — here
//! a provincial agent — that has checked the checkpoint is consistent with every one it saw
//! before. Its line is `— <witness name> base64(key ID || u64 timestamp || signature)`, the
//! key ID `SHA-256(name || "\n" || 0x04 || public key)[:4]`, and the signature covers
//! `"cosignature/v1\ntime <timestamp>\n"` followed by the checkpoint's whole text. The name
//! is not signed, so one key must never serve two witness names; and the signed message
//! starts with other bytes than any checkpoint or entry, so an agent's key can cosign
//! without its cosignature being mistaken for anything else it signs.
//!
//! Readers are configured with the witnesses they trust ([`Cosigner`]); lines of other keys
//! are ignored, as the signed-note format asks, and a line under a trusted witness's name
//! and key ID that does not verify refuses the note (as Go's `sumdb/note` does for a known
//! key).
//!
//! [c2sp.org/tlog-cosignature]: https://c2sp.org/tlog-cosignature

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::merkle::{
    Checkpoint, NoteError, SIG_LINE_PREFIX, check_key_name, check_text, format_vkey, parse_vkey,
    split_note, typed_key_hash,
};

/// Signature type byte of an Ed25519 `cosignature/v1`.
pub const SIG_TYPE_COSIGNATURE_V1: u8 = 0x04;

/// Bytes after the key ID in a cosignature: the timestamp and the Ed25519 signature.
const TIMESTAMPED_SIGNATURE_LEN: usize = 8 + 64;

/// Why a cosignature could not be made or was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CosignError {
    /// The note, its checkpoint or a name is malformed.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// A line under a trusted witness's name and key ID is not a valid cosignature.
    #[error("the cosignature of witness {name} (key {key_id:08x}) does not verify: {why}")]
    BadCosignature {
        /// The witness's name.
        name: String,
        /// Its key ID.
        key_id: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// A timestamp at or above 2^63 (the format's bound).
    #[error("cosignature timestamp {0} exceeds 2^63 - 1")]
    TimestampOutOfRange(u64),
}

/// A witness a reader trusts: its name, key ID and public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosigner {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl Cosigner {
    /// The witness `name` with public key `key`; refuses a name that is empty or holds
    /// whitespace or `+`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Cosigner, NoteError> {
        check_key_name(name)?;
        Ok(Cosigner {
            name: name.to_owned(),
            key_id: typed_key_hash(name, SIG_TYPE_COSIGNATURE_V1, &key),
            key,
        })
    }

    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Its public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The verifier key text `<name>+<8 hex key ID>+<base64(0x04 || public key)>`, as
    /// witness tooling (e.g. Go's `sumdb/note` with a cosignature resolver) reads it.
    pub fn to_vkey(&self) -> String {
        format_vkey(&self.name, self.key_id, SIG_TYPE_COSIGNATURE_V1, &self.key)
    }

    /// Parses [`Cosigner::to_vkey`] text, refusing another signature type or a key ID that
    /// does not match the name and key.
    pub fn from_vkey(vkey: &str) -> Result<Cosigner, NoteError> {
        let (name, key) = parse_vkey(vkey, SIG_TYPE_COSIGNATURE_V1)?;
        Cosigner::new(&name, key)
    }
}

/// Prefix of every agent's witness name.
pub const WITNESS_NAME_PREFIX: &str = "spacesync-witness/";

/// The witness name under which `source`'s agent cosigns with its source key:
/// `spacesync-witness/<source>`. A source id is 2–63 characters of `a-z`, `0-9` and `-`, so
/// the name is a valid key name; it is the witness's own name, not the log's, so one agent
/// keeps one name across logs, and one key (the source's) serves one witness name.
pub fn witness_name(source: &crate::SourceId) -> String {
    format!("{WITNESS_NAME_PREFIX}{source}")
}

/// What a witness signs: the header line, the timestamp line, then the checkpoint's text.
pub fn message(text: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// The cosignature line (without its newline) of witness `name` with `key` over the
/// checkpoint `text` (the note's text: body lines with their final newline, no signature
/// lines) at `timestamp` (POSIX seconds).
pub fn cosign(
    text: &str,
    name: &str,
    key: &SigningKey,
    timestamp: u64,
) -> Result<String, CosignError> {
    check_key_name(name)?;
    check_text(text)?;
    Checkpoint::parse_body(text)?;
    if timestamp > i64::MAX as u64 {
        return Err(CosignError::TimestampOutOfRange(timestamp));
    }
    let key_id = typed_key_hash(name, SIG_TYPE_COSIGNATURE_V1, &key.verifying_key());
    let mut blob = Vec::with_capacity(4 + TIMESTAMPED_SIGNATURE_LEN);
    blob.extend_from_slice(&key_id.to_be_bytes());
    blob.extend_from_slice(&timestamp.to_be_bytes());
    blob.extend_from_slice(&key.sign(&message(text, timestamp)).to_bytes());
    Ok(format!("{SIG_LINE_PREFIX}{name} {}", BASE64.encode(blob)))
}

/// A cosignature that verified: which witness, and when it says it checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosigned {
    /// The witness's name.
    pub name: String,
    /// Its timestamp, POSIX seconds.
    pub timestamp: u64,
}

/// The cosignatures in `note` by the witnesses of `trusted`, each witness once, in the
/// order of `trusted`. Lines of other keys are ignored (their form is still checked); a
/// line under a trusted witness's name and key ID that does not verify refuses the note.
/// The log's own signature is not checked here: open the note with
/// [`crate::merkle::open_checkpoint`] as well.
pub fn verify(note: &str, trusted: &[Cosigner]) -> Result<Vec<Cosigned>, CosignError> {
    let (text, lines) = split_note(note)?;
    let mut out: Vec<Cosigned> = Vec::new();
    for c in trusted {
        for line in lines
            .iter()
            .filter(|l| l.name == c.name && l.key_hash == c.key_id)
        {
            let bad = |why| CosignError::BadCosignature {
                name: c.name.clone(),
                key_id: c.key_id,
                why,
            };
            let Some((ts, sig)) = line
                .sig
                .split_first_chunk::<8>()
                .filter(|_| line.sig.len() == TIMESTAMPED_SIGNATURE_LEN)
            else {
                return Err(bad("not a timestamp and a 64-byte signature"));
            };
            let timestamp = u64::from_be_bytes(*ts);
            if timestamp > i64::MAX as u64 {
                return Err(bad("its timestamp exceeds 2^63 - 1"));
            }
            let sig = Signature::from_slice(sig).map_err(|_| bad("not an Ed25519 signature"))?;
            crate::sig::verify(&c.key, &message(text, timestamp), &sig)
                .map_err(|_| bad("the signature does not match the checkpoint"))?;
            if !out.iter().any(|o| o.name == c.name) {
                out.push(Cosigned {
                    name: c.name.clone(),
                    timestamp,
                });
            }
        }
    }
    Ok(out)
}

/// `note` with `lines` (from [`cosign`]) added after its signature lines, skipping a line
/// the note already holds. Checks the note's framing, not any signature.
pub fn add(note: &str, lines: &[String]) -> Result<String, CosignError> {
    split_note(note)?;
    let mut out = note.to_owned();
    for line in lines {
        if out.split('\n').any(|l| l == line) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    split_note(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{NoteVerifier, open_checkpoint, sign_checkpoint};

    const ORIGIN: &str = "spacesync.example/hub";

    fn log_key() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    fn witness(n: u8) -> (String, SigningKey) {
        (
            format!("witness.example/gd-{n}"),
            SigningKey::from_bytes(&[n; 32]),
        )
    }

    fn note() -> String {
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size: 20_852_163,
            root: [7; 32],
        };
        sign_checkpoint(&cp, ORIGIN, &log_key()).expect("sign")
    }

    fn text(note: &str) -> &str {
        &note[..=note.rfind("\n\n").expect("blank line")]
    }

    fn trusted(ns: &[u8]) -> Vec<Cosigner> {
        ns.iter()
            .map(|&n| {
                let (name, k) = witness(n);
                Cosigner::new(&name, k.verifying_key()).expect("cosigner")
            })
            .collect()
    }

    /// The signed message is the header line, the timestamp line in canonical decimal,
    /// then the checkpoint text, as tlog-cosignature's example shows.
    #[test]
    fn the_message_is_the_specs() {
        let body =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        assert_eq!(
            message(body, 1_679_315_147),
            b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n".to_vec()
        );
    }

    /// The key ID is SHA-256(name || "\n" || 0x04 || key)[:4]: computed here by hand and
    /// compared, and it differs from the same key's signed-note (0x01) hash.
    #[test]
    fn the_key_id_is_typed_0x04() {
        use sha2::{Digest as _, Sha256};
        let (name, k) = witness(3);
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update([b'\n', 0x04]);
        h.update(k.verifying_key().as_bytes());
        let d = h.finalize();
        let c = Cosigner::new(&name, k.verifying_key()).expect("cosigner");
        assert_eq!(c.key_id(), u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
        let n = NoteVerifier::new(&name, k.verifying_key()).expect("verifier");
        assert_ne!(c.key_id(), n.key_hash());
        assert_eq!(Cosigner::from_vkey(&c.to_vkey()).expect("vkey"), c);
        assert!(
            Cosigner::from_vkey(&n.to_vkey()).is_err(),
            "a 0x01 key is not a witness key"
        );
    }

    /// Two witnesses cosign; the note still opens as the log's checkpoint, and each
    /// cosignature verifies with its timestamp; an untrusted witness's line is ignored.
    #[test]
    fn cosignatures_add_up_and_the_checkpoint_still_opens() {
        let n = note();
        let lines: Vec<String> = [(1u8, 100u64), (2, 200), (9, 900)]
            .iter()
            .map(|&(w, t)| {
                let (name, k) = witness(w);
                cosign(text(&n), &name, &k, t).expect("cosign")
            })
            .collect();
        let cosigned = add(&n, &lines).expect("add");
        let log = NoteVerifier::new(ORIGIN, log_key().verifying_key()).expect("verifier");
        let cp = open_checkpoint(&cosigned, &log, ORIGIN).expect("opens");
        assert_eq!(cp.size, 20_852_163);
        let got = verify(&cosigned, &trusted(&[1, 2, 3])).expect("verify");
        assert_eq!(
            got,
            vec![
                Cosigned {
                    name: witness(1).0,
                    timestamp: 100
                },
                Cosigned {
                    name: witness(2).0,
                    timestamp: 200
                },
            ]
        );
        // Added twice: nothing changes.
        assert_eq!(add(&cosigned, &lines).expect("add"), cosigned);
    }

    /// A cosignature is bound to its checkpoint and its timestamp: moved onto another
    /// checkpoint, or with its timestamp changed, it is refused, naming the witness.
    #[test]
    fn a_cosignature_does_not_move() {
        let n = note();
        let (name, k) = witness(1);
        let line = cosign(text(&n), &name, &k, 100).expect("cosign");
        let other = sign_checkpoint(
            &Checkpoint {
                origin: ORIGIN.into(),
                size: 20_852_164,
                root: [8; 32],
            },
            ORIGIN,
            &log_key(),
        )
        .expect("sign");
        let moved = add(&other, std::slice::from_ref(&line)).expect("add");
        let e = verify(&moved, &trusted(&[1])).expect_err("moved");
        assert!(e.to_string().contains(&name), "{e}");
        // The timestamp changed (bytes 4..12 of the blob).
        let b64 = line.rsplit(' ').next().expect("b64");
        let mut blob = BASE64.decode(b64).expect("base64");
        blob[11] ^= 1;
        let forged = format!("{SIG_LINE_PREFIX}{name} {}", BASE64.encode(blob));
        let e = verify(&add(&n, &[forged]).expect("add"), &trusted(&[1])).expect_err("forged");
        assert!(matches!(e, CosignError::BadCosignature { .. }), "{e}");
    }

    /// Flipping any bit of any byte of a cosigned note is never accepted as the same
    /// witnessed checkpoint: it fails to parse, fails to verify, or loses the cosignature.
    #[test]
    fn every_bit_flip_is_caught() {
        let n = note();
        let (name, k) = witness(1);
        let cosigned = add(&n, &[cosign(text(&n), &name, &k, 100).expect("cosign")]).expect("add");
        let log = NoteVerifier::new(ORIGIN, log_key().verifying_key()).expect("verifier");
        let bytes = cosigned.as_bytes();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.to_vec();
                b[i] ^= 1 << bit;
                let Ok(s) = String::from_utf8(b) else {
                    continue;
                };
                let whole = open_checkpoint(&s, &log, ORIGIN).is_ok()
                    && verify(&s, &trusted(&[1])).is_ok_and(|c| c.len() == 1);
                assert!(
                    !whole,
                    "flip of bit {bit} of byte {i} kept the witnessed checkpoint"
                );
            }
        }
    }

    /// Timestamps at 2^63 and above are refused when cosigning and when verifying.
    #[test]
    fn timestamps_stay_below_two_to_the_63() {
        let n = note();
        let (name, k) = witness(1);
        assert_eq!(
            cosign(text(&n), &name, &k, 1 << 63),
            Err(CosignError::TimestampOutOfRange(1 << 63))
        );
        // Hand-made: a valid signature over a timestamp of 2^63.
        let ts = 1u64 << 63;
        let mut blob = typed_key_hash(&name, SIG_TYPE_COSIGNATURE_V1, &k.verifying_key())
            .to_be_bytes()
            .to_vec();
        blob.extend_from_slice(&ts.to_be_bytes());
        blob.extend_from_slice(&k.sign(&message(text(&n), ts)).to_bytes());
        let line = format!("{SIG_LINE_PREFIX}{name} {}", BASE64.encode(blob));
        let e = verify(&add(&n, &[line]).expect("add"), &trusted(&[1])).expect_err("refused");
        assert!(e.to_string().contains("2^63"), "{e}");
    }
}
