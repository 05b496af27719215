//! DSSE envelopes (Dead Simple Signing Envelope, secure-systems-lab/dsse v1) with Ed25519.
//!
//! The signature covers `PAE(payloadType, payload)`:
//! `"DSSEv1" SP len(type) SP type SP len(payload) SP payload`, lengths in ASCII decimal.
//! The signed bytes are exactly the bytes sent, so no JSON canonicalization is needed.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// All zeros: the `prev` of a source's first entry.
    pub const ZERO: Digest = Digest([0; 32]);

    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Digest> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Digest(out))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.hex_in(&mut [0; 64]).to_owned()
    }

    /// Lower-case hex written into `buf`, without an allocation (receipts and log records
    /// write one digest per entry).
    pub(crate) fn hex_in<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (pair, byte) in buf.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        // Only ASCII digits were written: this cannot fail.
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex_in(&mut [0; 64]))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex_in(&mut [0; 64]))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor: readers that borrow and readers that hand over owned strings (such as
        // `serde_json::Value`) are both taken, without a copy.
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 lower-case hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Digest, E> {
                Digest::from_hex(s).ok_or_else(|| E::custom("expected 64 lower-case hex digits"))
            }
        }
        d.deserialize_str(Hex)
    }
}

/// The key id used in envelopes: hex SHA-256 of the 32-byte public key.
pub fn key_id(key: &VerifyingKey) -> String {
    Digest::of(key.as_bytes()).to_hex()
}

/// DSSE's pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    pae_pieces(payload_type, payload, |piece| out.extend_from_slice(piece));
    out
}

/// [`pae`] handed to `each` piece by piece, in order, the payload among them as it lies:
/// for hashing the signed bytes without copying them into one buffer first.
pub fn pae_pieces(payload_type: &str, payload: &[u8], mut each: impl FnMut(&[u8])) {
    let mut digits = [0u8; 20];
    each(b"DSSEv1 ");
    each(decimal(payload_type.len(), &mut digits));
    each(b" ");
    each(payload_type.as_bytes());
    each(b" ");
    each(decimal(payload.len(), &mut digits));
    each(b" ");
    each(payload);
}

/// `n` in decimal ASCII, written at the end of `buf` (20 digits hold any `u64`).
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// Hex SHA-256 of the signer's public key.
    pub keyid: String,
    /// The 64-byte Ed25519 signature.
    #[serde(with = "b64")]
    pub sig: Vec<u8>,
}

/// A DSSE envelope. JSON field names follow the DSSE spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// What the payload is (e.g. `application/vnd.spacesync.entry+json`).
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The signed bytes.
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// Signatures over `PAE(payloadType, payload)`.
    pub signatures: Vec<EnvelopeSignature>,
}

/// Why an envelope does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsseError {
    /// The payload type is not the one expected.
    #[error("payloadType is {got:?}, expected {expected:?}")]
    PayloadType {
        /// Expected type.
        expected: String,
        /// Type found.
        got: String,
    },
    /// No signature carries the expected key id.
    #[error("no signature by key {keyid}")]
    UnknownKey {
        /// The expected key id.
        keyid: String,
    },
    /// A signature is not 64 bytes.
    #[error("signature is {0} bytes, expected 64")]
    SignatureLength(usize),
    /// The signature does not verify.
    #[error("bad signature by key {keyid}")]
    BadSignature {
        /// The key id.
        keyid: String,
    },
}

impl Envelope {
    /// Signs `payload` with `key`.
    pub fn sign(key: &SigningKey, payload_type: &str, payload: Vec<u8>) -> Envelope {
        let sig = key.sign(&pae(payload_type, &payload));
        Envelope {
            payload_type: payload_type.to_string(),
            payload,
            signatures: vec![EnvelopeSignature {
                keyid: key_id(&key.verifying_key()),
                sig: sig.to_bytes().to_vec(),
            }],
        }
    }

    /// The signature by `key` (found by key id), parsed; does not verify it.
    pub fn signature_by(
        &self,
        payload_type: &str,
        key: &VerifyingKey,
    ) -> Result<Signature, DsseError> {
        if self.payload_type != payload_type {
            return Err(DsseError::PayloadType {
                expected: payload_type.to_string(),
                got: self.payload_type.clone(),
            });
        }
        let keyid = key_id(key);
        let s = self
            .signatures
            .iter()
            .find(|s| s.keyid == keyid)
            .ok_or(DsseError::UnknownKey { keyid })?;
        let bytes: [u8; 64] = s
            .sig
            .as_slice()
            .try_into()
            .map_err(|_| DsseError::SignatureLength(s.sig.len()))?;
        Ok(Signature::from_bytes(&bytes))
    }

    /// Verifies the signature by `key` under the one rule of [`crate::sig`].
    pub fn verify(&self, payload_type: &str, key: &VerifyingKey) -> Result<(), DsseError> {
        let sig = self.signature_by(payload_type, key)?;
        crate::sig::verify(key, &pae(&self.payload_type, &self.payload), &sig)
            .map_err(|_| DsseError::BadSignature { keyid: key_id(key) })
    }

    /// SHA-256 of the payload: the entry hash that `prev` links and receipts name.
    pub fn payload_hash(&self) -> Digest {
        Digest::of(&self.payload)
    }
}

/// Base64 for DSSE fields: standard alphabet with padding on output; standard or URL-safe
/// on input, as the DSSE spec allows.
mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        // A visitor, not `Cow<str>` (which serde always reads owned): the text is decoded
        // where the reader holds it, without a copy per payload.
        struct Base64;
        impl serde::de::Visitor<'_> for Base64 {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Vec<u8>, E> {
                STANDARD
                    .decode(s.as_bytes())
                    .or_else(|_| URL_SAFE.decode(s.as_bytes()))
                    .map_err(|e| E::custom(format!("invalid base64: {e}")))
            }
        }
        d.deserialize_str(Base64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_written_as_lower_case_hex_in_every_form() {
        // FIPS 180-2's SHA-256("abc").
        let abc = Digest::of(b"abc");
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(abc.to_hex(), want);
        assert_eq!(abc.to_string(), want);
        assert_eq!(serde_json::to_string(&abc).unwrap(), format!("\"{want}\""));
        // Every byte value, at both nibble positions.
        for b in 0..=255u8 {
            let d = Digest([b; 32]);
            let hex = hex::encode(d.0);
            assert_eq!(d.to_hex(), hex);
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{hex}\""));
            assert_eq!(Digest::from_hex(&hex), Some(d));
        }
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn pae_writes_every_length_in_decimal() {
        for n in [0usize, 1, 9, 10, 99, 100, 12_345, 1 << 32, usize::MAX] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
        // Payloads across a digit boundary, one piece at a time and whole.
        for len in [0usize, 9, 10, 11, 999, 1000] {
            let payload = vec![b'x'; len];
            let mut pieces = Vec::new();
            pae_pieces("t", &payload, |p| pieces.extend_from_slice(p));
            let want = [format!("DSSEv1 1 t {len} ").into_bytes(), payload.clone()].concat();
            assert_eq!(pieces, want);
            assert_eq!(pae("t", &payload), want);
        }
    }

    #[test]
    fn envelope_round_trips_through_json() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let env = Envelope::sign(&key, "text/plain", b"hi".to_vec());
        let json = serde_json::to_string(&env).unwrap_or_default();
        let back: Envelope = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, env);
        assert!(back.verify("text/plain", &key.verifying_key()).is_ok());
        assert!(matches!(
            back.verify("text/other", &key.verifying_key()),
            Err(DsseError::PayloadType { .. })
        ));
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(matches!(
            back.verify("text/plain", &other),
            Err(DsseError::UnknownKey { .. })
        ));
    }
}
