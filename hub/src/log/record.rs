//! One leaf's record ([`LogRecord`]) and its stored form (`log/<index>`): a versioned
//! binary layout.
//!
//! Version 1, every integer big-endian:
//!
//! | field | bytes |
//! |---|---|
//! | version | `0x01` |
//! | `received_at` | seconds since the epoch (i64), then nanoseconds (u32) |
//! | `seq` | u64 |
//! | source | `0x00` (the hub's own entry), or `0x01`, length (u8), the id's bytes |
//! | payload type | length (u16), UTF-8 |
//! | payload | length (u32), the signed bytes |
//! | signatures | count (u16), then each: key id, length (u16) and the signature's bytes |
//! | key id | `0x00` and 32 bytes (a lower-case hex id, as every envelope carries), or `0x01`, length (u8), UTF-8 |
//!
//! Nothing may follow the last signature. Records written before this layout are JSON
//! objects, which start with `{` (never a version byte): [`decode`] reads both, so a store
//! written by an older hub opens without migration.
//!
//! The reader takes hostile bytes: every length is checked against what remains and against
//! a ceiling before anything is allocated, and every fault is a [`RecordError`], never a
//! panic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spacesync_shared::SourceId;
use spacesync_shared::dsse::{Envelope, EnvelopeSignature, pae_pieces};
use spacesync_shared::merkle::{self, Hash};

/// One leaf of the log, as read back (stored in the layout above).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When the hub received it.
    pub received_at: DateTime<Utc>,
    /// The source that signed it, or `None` for the hub's own entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceId>,
    /// The source's seq (or the hub's own seq).
    pub seq: u64,
    /// The signed envelope, exactly as received.
    pub envelope: Envelope,
}

impl LogRecord {
    /// The leaf hash of this record.
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.envelope)
    }

    /// A record with nothing in it, for [`decode_into`] to fill.
    pub fn empty() -> LogRecord {
        LogRecord {
            received_at: DateTime::<Utc>::UNIX_EPOCH,
            source: None,
            seq: 0,
            envelope: Envelope {
                payload_type: String::new(),
                payload: Vec::new(),
                signatures: Vec::new(),
            },
        }
    }

    /// The record's parts, borrowed, for [`encode_into`].
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            received_at: self.received_at,
            source: self.source.as_ref(),
            seq: self.seq,
            envelope: &self.envelope,
        }
    }

    /// Reads stored bytes (the binary layout, or the JSON of older hubs).
    pub fn decode(bytes: &[u8]) -> Result<LogRecord, RecordError> {
        decode(bytes)
    }

    /// The binary layout of this record.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::new();
        encode_into(self.as_ref(), &mut out)?;
        Ok(out)
    }
}

/// The leaf hash of an envelope: of `PAE(payloadType, payload)`, exactly the signed bytes
/// ([`merkle::leaf_hash`] of them), hashed where they lie rather than copied together
/// first.
pub fn leaf_hash(envelope: &Envelope) -> Hash {
    merkle::leaf_hash_of(|feed| pae_pieces(&envelope.payload_type, &envelope.payload, feed))
}

/// The version byte of the layout in the module doc. `2` and `4` are taken: a stored value
/// starting with them is a pack of records ([`super::pack::PACK`]) or a compressed one
/// ([`super::pack::PACK_LZ4`]); a later record layout takes 3.
pub const VERSION_1: u8 = 1;

/// The longest payload a record holds: the hub's largest request body.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// The longest payload type.
pub const MAX_PAYLOAD_TYPE: usize = 1024;
/// The most signatures in one envelope.
pub const MAX_SIGNATURES: usize = 64;
/// The longest signature.
pub const MAX_SIGNATURE: usize = 1024;

/// A record's parts, borrowed: what [`encode_into`] writes, so an envelope is encoded where
/// it lies instead of being copied into a [`LogRecord`] first.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// When the hub received it.
    pub received_at: DateTime<Utc>,
    /// The source that signed it, or `None` for the hub's own entries.
    pub source: Option<&'a SourceId>,
    /// The source's seq (or the hub's own seq).
    pub seq: u64,
    /// The signed envelope.
    pub envelope: &'a Envelope,
}

/// Why stored record bytes do not read (or a record cannot be written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No bytes at all.
    #[error("the record is empty")]
    Empty,
    /// A first byte that is neither a known version nor the `{` of a JSON record.
    #[error("the record has version {0}; this hub reads version 1 and JSON records")]
    Version(u8),
    /// The bytes end inside a field.
    #[error("the record ends inside its {field} ({needed} more bytes were needed)")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A length beyond its ceiling.
    #[error("the record's {field} is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The length found (or given, when writing).
        len: u64,
        /// The ceiling.
        max: usize,
    },
    /// Bytes after the last field.
    #[error("{0} bytes follow the end of the record")]
    Trailing(usize),
    /// A marker byte other than the ones the layout allows.
    #[error("the record's {field} marker is {value}, which the layout does not define")]
    Marker {
        /// The field.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// Text that is not UTF-8.
    #[error("the record's {0} is not valid UTF-8")]
    Utf8(&'static str),
    /// A source id that does not parse.
    #[error("the record's source: {0}")]
    Source(String),
    /// A time chrono cannot represent.
    #[error("the record's received_at ({secs} s, {nanos} ns) is not a valid time")]
    Time {
        /// Seconds since the epoch.
        secs: i64,
        /// Nanoseconds.
        nanos: u32,
    },
    /// A JSON record (the layout of older hubs) that does not read.
    #[error("the JSON record does not read: {0}")]
    Json(String),
}

/// Appends the version-1 encoding of `r` to `out` (callers clear a reused buffer first).
/// Refuses, leaving `out` as it was, what the reader would refuse (an oversized field).
pub fn encode_into(r: RecordRef<'_>, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let start = out.len();
    let written = write(r, out);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

fn write(r: RecordRef<'_>, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let env = r.envelope;
    let len = |field, len: usize, max: usize| {
        if len > max {
            Err(RecordError::TooLong {
                field,
                len: len as u64,
                max,
            })
        } else {
            Ok(len)
        }
    };
    let ptype = len("payload type", env.payload_type.len(), MAX_PAYLOAD_TYPE)?;
    let payload = len("payload", env.payload.len(), MAX_PAYLOAD)?;
    let sigs = len("signature count", env.signatures.len(), MAX_SIGNATURES)?;
    out.reserve(64 + ptype + payload + sigs * 100);
    out.push(VERSION_1);
    out.extend_from_slice(&r.received_at.timestamp().to_be_bytes());
    out.extend_from_slice(&r.received_at.timestamp_subsec_nanos().to_be_bytes());
    out.extend_from_slice(&r.seq.to_be_bytes());
    match r.source {
        None => out.push(0),
        Some(s) => {
            // A SourceId is at most 63 bytes (checked when it was made).
            let id = s.as_str().as_bytes();
            out.push(1);
            out.push(len("source", id.len(), u8::MAX as usize)? as u8);
            out.extend_from_slice(id);
        }
    }
    out.extend_from_slice(&(ptype as u16).to_be_bytes());
    out.extend_from_slice(env.payload_type.as_bytes());
    out.extend_from_slice(&(payload as u32).to_be_bytes());
    out.extend_from_slice(&env.payload);
    out.extend_from_slice(&(sigs as u16).to_be_bytes());
    for s in &env.signatures {
        match hex_id(&s.keyid) {
            Some(raw) => {
                out.push(0);
                out.extend_from_slice(&raw);
            }
            None => {
                out.push(1);
                out.push(len("key id", s.keyid.len(), u8::MAX as usize)? as u8);
                out.extend_from_slice(s.keyid.as_bytes());
            }
        }
        let n = len("signature", s.sig.len(), MAX_SIGNATURE)?;
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&s.sig);
    }
    Ok(())
}

/// The 32 bytes of a key id written as 64 lower-case hex digits (the form [`key_id`] makes),
/// so it reads back as the same text.
///
/// [`key_id`]: spacesync_shared::dsse::key_id
fn hex_id(id: &str) -> Option<[u8; 32]> {
    let b = id.as_bytes();
    if b.len() != 64 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut raw = [0u8; 32];
    hex::decode_to_slice(b, &mut raw).ok()?;
    Some(raw)
}

/// Reads stored record bytes: version 1, or the JSON of older hubs.
pub fn decode(bytes: &[u8]) -> Result<LogRecord, RecordError> {
    let mut out = LogRecord::empty();
    decode_into(bytes, &mut out)?;
    Ok(out)
}

/// [`decode`] into `out`, reusing what it holds: the room of its text and byte fields, and
/// its source when the record names the same one. A walk over many leaves that decodes each
/// into a record it decoded an earlier one into allocates nothing once the room is there
/// (`decode` allocated five to six times a leaf: 12 % of `verify`'s walking thread, with the
/// frees). After an error `out` holds parts of the record: overwrite it, do not read it.
pub fn decode_into(bytes: &[u8], out: &mut LogRecord) -> Result<(), RecordError> {
    match bytes.first() {
        None => Err(RecordError::Empty),
        Some(b'{') => {
            *out = serde_json::from_slice(bytes).map_err(|e| RecordError::Json(e.to_string()))?;
            Ok(())
        }
        Some(&VERSION_1) => decode_v1(&bytes[1..], out),
        Some(&v) => Err(RecordError::Version(v)),
    }
}

/// A cursor over hostile bytes: every read checks what remains.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], RecordError> {
        if self.rest.len() < n {
            return Err(RecordError::Truncated {
                field,
                needed: n - self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, RecordError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<usize, RecordError> {
        Ok(u16::from_be_bytes(self.array(field)?) as usize)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// `len` bytes, refused above `max` before they are looked for.
    fn bytes(
        &mut self,
        len: usize,
        max: usize,
        field: &'static str,
    ) -> Result<&'a [u8], RecordError> {
        if len > max {
            return Err(RecordError::TooLong {
                field,
                len: len as u64,
                max,
            });
        }
        self.take(len, field)
    }

    fn text(
        &mut self,
        len: usize,
        max: usize,
        field: &'static str,
    ) -> Result<&'a str, RecordError> {
        std::str::from_utf8(self.bytes(len, max, field)?).map_err(|_| RecordError::Utf8(field))
    }
}

fn decode_v1(bytes: &[u8], out: &mut LogRecord) -> Result<(), RecordError> {
    let mut r = Reader { rest: bytes };
    let secs = i64::from_be_bytes(r.array("received_at")?);
    let nanos = r.u32("received_at")?;
    out.received_at =
        DateTime::<Utc>::from_timestamp(secs, nanos).ok_or(RecordError::Time { secs, nanos })?;
    out.seq = r.u64("seq")?;
    match r.u8("source marker")? {
        0 => out.source = None,
        1 => {
            let n = r.u8("source")? as usize;
            let id = r.text(n, u8::MAX as usize, "source")?;
            if out.source.as_ref().map(SourceId::as_str) != Some(id) {
                out.source =
                    Some(SourceId::parse(id).map_err(|e| RecordError::Source(e.to_string()))?);
            }
        }
        value => {
            return Err(RecordError::Marker {
                field: "source",
                value,
            });
        }
    }
    let env = &mut out.envelope;
    let n = r.u16("payload type")?;
    let payload_type = r.text(n, MAX_PAYLOAD_TYPE, "payload type")?;
    env.payload_type.clear();
    env.payload_type.push_str(payload_type);
    let n = r.u32("payload")? as usize;
    let payload = r.bytes(n, MAX_PAYLOAD, "payload")?;
    env.payload.clear();
    env.payload.extend_from_slice(payload);
    let count = r.u16("signature count")?;
    if count > MAX_SIGNATURES {
        return Err(RecordError::TooLong {
            field: "signature count",
            len: count as u64,
            max: MAX_SIGNATURES,
        });
    }
    env.signatures.truncate(count);
    for i in 0..count {
        if i == env.signatures.len() {
            env.signatures.push(EnvelopeSignature {
                keyid: String::new(),
                sig: Vec::new(),
            });
        }
        let slot = &mut env.signatures[i];
        slot.keyid.clear();
        match r.u8("key id marker")? {
            0 => {
                let mut text = [0u8; 64];
                // 32 bytes always fit 64 hex digits, which are always UTF-8.
                if hex::encode_to_slice(r.array::<32>("key id")?, &mut text).is_ok() {
                    slot.keyid
                        .push_str(std::str::from_utf8(&text).unwrap_or_default());
                }
            }
            1 => {
                let n = r.u8("key id")? as usize;
                slot.keyid.push_str(r.text(n, u8::MAX as usize, "key id")?);
            }
            value => {
                return Err(RecordError::Marker {
                    field: "key id",
                    value,
                });
            }
        }
        let n = r.u16("signature")?;
        let sig = r.bytes(n, MAX_SIGNATURE, "signature")?;
        slot.sig.clear();
        slot.sig.extend_from_slice(sig);
    }
    if !r.rest.is_empty() {
        return Err(RecordError::Trailing(r.rest.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn record(
        secs: i64,
        nanos: u32,
        source: Option<&str>,
        seq: u64,
        payload: Vec<u8>,
        sigs: Vec<EnvelopeSignature>,
    ) -> Option<LogRecord> {
        Some(LogRecord {
            received_at: DateTime::<Utc>::from_timestamp(secs, nanos)?,
            source: match source {
                Some(s) => Some(SourceId::parse(s).ok()?),
                None => None,
            },
            seq,
            envelope: Envelope {
                payload_type: "application/vnd.spacesync.entry+json".into(),
                payload,
                signatures: sigs,
            },
        })
    }

    fn encode(r: &LogRecord) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(r.as_ref(), &mut out).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    fn signed() -> LogRecord {
        let key = SigningKey::from_bytes(&[3; 32]);
        let env = Envelope::sign(
            &key,
            "application/vnd.spacesync.entry+json",
            b"{\"a\":1}".to_vec(),
        );
        LogRecord {
            received_at: DateTime::<Utc>::from_timestamp(1_546_394_400, 123_000_000)
                .unwrap_or_default(),
            source: SourceId::parse("gd-rrt").ok(),
            seq: 42,
            envelope: env,
        }
    }

    #[test]
    fn a_signed_entry_round_trips_and_is_smaller_than_its_json() {
        let rec = signed();
        let bin = encode(&rec);
        assert_eq!(bin[0], VERSION_1);
        assert_eq!(decode(&bin), Ok(rec.clone()));
        let json = serde_json::to_vec(&rec).unwrap_or_default();
        assert!(bin.len() < json.len(), "{} vs {}", bin.len(), json.len());
        // The JSON of older hubs still reads, to the same record.
        assert_eq!(decode(&json), Ok(rec));
    }

    #[test]
    fn key_ids_that_are_not_lower_case_hex_are_kept_as_text() {
        for id in [
            "ABCDEF".repeat(10) + "abcd",
            "k1".into(),
            String::new(),
            "é".into(),
        ] {
            let mut rec = signed();
            rec.envelope.signatures[0].keyid = id.clone();
            assert_eq!(decode(&encode(&rec)), Ok(rec), "{id:?}");
        }
    }

    #[test]
    fn the_hubs_own_entries_and_times_with_nanoseconds_round_trip() {
        let mut rec = signed();
        rec.source = None;
        rec.received_at = DateTime::<Utc>::from_timestamp(-5, 999_999_999).unwrap_or_default();
        assert_eq!(decode(&encode(&rec)), Ok(rec));
    }

    /// One `check(bytes, expected)` per way stored bytes can be wrong.
    fn check(bytes: &[u8], expected: RecordError) {
        assert_eq!(decode(bytes), Err(expected), "{bytes:?}");
    }

    #[test]
    fn damaged_bytes_are_refused_with_what_is_wrong() {
        let good = encode(&signed());
        check(&[], RecordError::Empty);
        check(&[7, 0, 0], RecordError::Version(7));
        check(
            &good[..5],
            RecordError::Truncated {
                field: "received_at",
                needed: 4,
            },
        );
        let sig_end = good.len();
        check(
            &good[..sig_end - 1],
            RecordError::Truncated {
                field: "signature",
                needed: 1,
            },
        );
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"xy");
        check(&trailing, RecordError::Trailing(2));
        // The source marker sits after version (1), time (12) and seq (8).
        let mut marker = good.clone();
        marker[21] = 9;
        check(
            &marker,
            RecordError::Marker {
                field: "source",
                value: 9,
            },
        );
        let mut upper = good.clone();
        upper[23] = b'G';
        assert!(matches!(decode(&upper), Err(RecordError::Source(_))));
        // A payload length far beyond the ceiling: refused before anything is read.
        let ptype_at = 21 + 2 + "gd-rrt".len();
        let payload_len_at = ptype_at + 2 + "application/vnd.spacesync.entry+json".len();
        let mut huge = good.clone();
        huge[payload_len_at..payload_len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        check(
            &huge,
            RecordError::TooLong {
                field: "payload",
                len: u32::MAX as u64,
                max: MAX_PAYLOAD,
            },
        );
        let mut time = good.clone();
        time[1..9].copy_from_slice(&i64::MAX.to_be_bytes());
        assert!(matches!(decode(&time), Err(RecordError::Time { .. })));
        assert!(matches!(
            decode(b"{\"received_at\":"),
            Err(RecordError::Json(_))
        ));
    }

    #[test]
    fn an_oversized_field_is_refused_when_writing_and_leaves_the_buffer_alone() {
        let mut rec = signed();
        rec.envelope.payload_type = "x".repeat(MAX_PAYLOAD_TYPE + 1);
        let mut out = b"kept".to_vec();
        assert!(matches!(
            encode_into(rec.as_ref(), &mut out),
            Err(RecordError::TooLong {
                field: "payload type",
                ..
            })
        ));
        assert_eq!(out, b"kept");
    }

    fn any_record() -> impl Strategy<Value = Option<LogRecord>> {
        (
            -62_000_000_000i64..250_000_000_000,
            0u32..1_000_000_000,
            proptest::option::of("[a-z0-9][a-z0-9-]{1,62}"),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..600),
            proptest::collection::vec(
                (
                    prop_oneof!["[0-9a-f]{64}", ".{0,40}"],
                    proptest::collection::vec(any::<u8>(), 0..100),
                ),
                0..4,
            ),
        )
            .prop_map(|(secs, nanos, source, seq, payload, sigs)| {
                let sigs = sigs
                    .into_iter()
                    .map(|(keyid, sig)| EnvelopeSignature { keyid, sig })
                    .collect();
                record(secs, nanos, source.as_deref(), seq, payload, sigs)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The leaf hash is RFC 9162's of the signed bytes, whatever the payload and its
        /// type (lengths across digit boundaries included).
        #[test]
        fn leaf_hash_is_of_the_signed_bytes(
            payload_type in ".{0,120}",
            payload in proptest::collection::vec(any::<u8>(), 0..1200),
        ) {
            let env = Envelope { payload_type, payload, signatures: Vec::new() };
            prop_assert_eq!(
                leaf_hash(&env),
                merkle::leaf_hash(&spacesync_shared::dsse::pae(&env.payload_type, &env.payload))
            );
        }

        /// encode then decode gives the record back, whatever its fields.
        #[test]
        fn records_round_trip(rec in any_record()) {
            if let Some(rec) = rec {
                prop_assert_eq!(decode(&encode(&rec)), Ok(rec));
            }
        }

        /// Records decoded one after another into the same record (as a walk over the log
        /// reuses its slots), with damaged bytes between them, read as each alone does:
        /// nothing of an earlier record (its source, a longer payload, more signatures)
        /// stays behind.
        #[test]
        fn records_decoded_into_a_used_record_read_as_alone(
            recs in proptest::collection::vec(any_record(), 1..6),
            damage in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut slot = LogRecord::empty();
            for rec in recs.into_iter().flatten() {
                let bytes = encode(&rec);
                prop_assert_eq!(decode_into(&bytes, &mut slot), Ok(()));
                prop_assert_eq!(&slot, &rec);
                // A record that does not read leaves parts in the slot; the next one
                // overwrites them.
                let mut cut = bytes.clone();
                cut.truncate(bytes.len().saturating_sub(1 + damage.len() % 8));
                cut.extend_from_slice(&damage);
                let _ = decode_into(&cut, &mut slot);
            }
        }

        /// Random bytes never panic the reader, with or without a version byte in front.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), v1 in any::<bool>()) {
            let mut input = bytes;
            if v1 {
                input.insert(0, VERSION_1);
            }
            let _ = decode(&input);
        }

        /// A good record cut anywhere or with any byte changed reads as an error or as some
        /// record, never a panic; cut short it is always an error.
        #[test]
        fn damaged_records_never_panic(rec in any_record(), at in any::<proptest::sample::Index>(), byte in any::<u8>()) {
            if let Some(rec) = rec {
                let good = encode(&rec);
                let i = at.index(good.len());
                prop_assert!(decode(&good[..i]).is_err());
                let mut changed = good.clone();
                changed[i] = byte;
                let _ = decode(&changed);
            }
        }
    }
}
