//! Known-answer vectors (acceptance criterion 7): `testdata/vectors.json` holds a key made
//! from a fixed seed, one signed entry in full detail and a chain of three, so that any
//! change to how entries are serialized, encoded, hashed or signed is caught here, and so
//! that another implementation can check itself against the same bytes. The format is
//! described in `testdata/README.md` and in the file's `_comment`.
//!
//! The file was generated once with
//! `SPACESYNC_WRITE_VECTORS=1 cargo test -p spacesync-shared --test vectors`;
//! regenerate it only for a deliberate, documented change of the wire format.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Duration;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use spacesync_shared::chain::ChainVerifier;
use spacesync_shared::dsse::{self, Digest, Envelope};
use spacesync_shared::entry::{ENTRY_PAYLOAD_TYPE, Entry};
use spacesync_shared::keys;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json");

const COMMENT: &[&str] = &[
    "spacesync known-answer vectors, format spacesync-vectors-v1. Regenerate only for a deliberate wire-format change.",
    "key.seed_hex is the 32-byte Ed25519 seed (RFC 8032 secret key): the bytes 0x01, 0x02, ..., 0x20.",
    "key.public_key_hex is its public key; key.public_key_line the form `pubkey` prints and `agents add --key` takes: 'ed25519:' + standard base64 with padding of the 32 bytes.",
    "key.keyid is the lower-case hex SHA-256 of the 32 public-key bytes; it is the keyid of every signature.",
    "payload_type is the DSSE payloadType of entries.",
    "entry and each chain[i]: payload is the entry JSON exactly as signed, as a UTF-8 string (payload_base64: the same bytes in standard base64).",
    "pae_hex is DSSE v1 PAE: 'DSSEv1' SP len(payloadType) SP payloadType SP len(payload) SP payload, lengths in ASCII decimal counting bytes (not characters).",
    "signature_base64 is the 64-byte Ed25519 signature of the PAE bytes by the key (standard base64 with padding).",
    "entry_hash_hex is the lower-case hex SHA-256 of the payload bytes: the entry hash that the next entry's prev names and receipts carry.",
    "envelope is the DSSE envelope JSON as an agent sends it: {payloadType, payload (base64), signatures: [{keyid, sig (base64)}]}.",
    "chain: seqs 1, 2, 3 of source gd-rrt in campaign 2018; chain[i].prev_hex is chain[i-1].entry_hash_hex, and 64 zeros for seq 1. chain[0] is entry.",
];

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vectors {
    #[serde(rename = "_comment")]
    comment: Vec<String>,
    format: String,
    key: Key,
    payload_type: String,
    entry: Signed,
    chain: Vec<Signed>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    seed_hex: String,
    public_key_hex: String,
    public_key_line: String,
    keyid: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signed {
    seq: u64,
    prev_hex: String,
    payload: String,
    payload_base64: String,
    pae_hex: String,
    signature_base64: String,
    entry_hash_hex: String,
    envelope: String,
}

/// The three entries of the chain: the spec's space count, its recommendation (non-ASCII
/// text, so byte and character lengths differ) and a withdrawal of seq 1.
fn chain_records() -> [&'static str; 3] {
    [
        r#"{"kind":"space_count","region":"440106","school":"4144010601","as_of":"2018-11-20","spaces":{"teacher":1200,"student":30500,"parent":800,"master_teacher":15,"school":1,"class":640,"club":12,"region":0},"real_name":{"teacher":1150,"student":24000},"population":{"teachers":1300,"students":32000,"schools":1}}"#,
        r#"{"kind":"recommendation","level":"city","by":"440100","nominee":{"type":"school","code":"4144010601","name":"广州市天河区某某小学","region":"440106"}}"#,
        r#"{"kind":"withdrawal","target_seq":1,"reason":"duplicate submission"}"#,
    ]
}

/// Everything, computed from the seed with this crate.
fn compute() -> Vectors {
    let key = common::key();
    let public = key.verifying_key();
    let start = common::instant("2018-11-20T01:02:03.456Z");
    let mut prev = Digest::ZERO;
    let mut chain = Vec::new();
    for (i, json) in chain_records().into_iter().enumerate() {
        let seq = i as u64 + 1;
        let entry = common::entry(
            seq,
            prev,
            start + Duration::minutes(i as i64),
            common::record(json),
        );
        let env = entry.sign(&key);
        chain.push(Signed {
            seq,
            prev_hex: prev.to_hex(),
            payload: String::from_utf8(env.payload.clone()).expect("test setup: UTF-8 payload"),
            payload_base64: STANDARD.encode(&env.payload),
            pae_hex: hex::encode(dsse::pae(&env.payload_type, &env.payload)),
            signature_base64: STANDARD.encode(&env.signatures[0].sig),
            entry_hash_hex: env.payload_hash().to_hex(),
            envelope: serde_json::to_string(&env).expect("test setup: envelope JSON"),
        });
        prev = env.payload_hash();
    }
    let first = &chain[0];
    let entry = Signed {
        seq: first.seq,
        prev_hex: first.prev_hex.clone(),
        payload: first.payload.clone(),
        payload_base64: first.payload_base64.clone(),
        pae_hex: first.pae_hex.clone(),
        signature_base64: first.signature_base64.clone(),
        entry_hash_hex: first.entry_hash_hex.clone(),
        envelope: first.envelope.clone(),
    };
    Vectors {
        comment: COMMENT.iter().map(|s| s.to_string()).collect(),
        format: "spacesync-vectors-v1".into(),
        key: Key {
            seed_hex: hex::encode(common::SEED),
            public_key_hex: hex::encode(public.as_bytes()),
            public_key_line: keys::public_key_line(&public),
            keyid: dsse::key_id(&public),
        },
        payload_type: ENTRY_PAYLOAD_TYPE.into(),
        entry,
        chain,
    }
}

fn render(v: &Vectors) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("test setup: vectors JSON");
    s.push('\n');
    s
}

fn committed() -> String {
    std::fs::read_to_string(PATH).unwrap_or_else(|e| {
        panic!("{PATH}: {e}; generate it with SPACESYNC_WRITE_VECTORS=1 cargo test -p spacesync-shared --test vectors")
    })
}

/// The generator: writes `testdata/vectors.json` when `SPACESYNC_WRITE_VECTORS=1`, and
/// otherwise does nothing.
#[test]
fn write_vectors_when_asked() {
    if std::env::var("SPACESYNC_WRITE_VECTORS").as_deref() != Ok("1") {
        return;
    }
    std::fs::write(PATH, render(&compute())).unwrap_or_else(|e| panic!("{PATH}: {e}"));
}

#[test]
fn the_committed_vectors_are_what_this_code_computes_byte_for_byte() {
    let file = committed();
    let computed = render(&compute());
    // Field by field first, for a readable failure …
    let parsed: Vectors = serde_json::from_str(&file).unwrap_or_else(|e| panic!("{PATH}: {e}"));
    assert_eq!(parsed.key, compute().key, "key");
    for (i, (got, want)) in parsed.chain.iter().zip(compute().chain.iter()).enumerate() {
        assert_eq!(got, want, "chain[{i}]");
    }
    assert_eq!(parsed, compute());
    // … then every byte of the file.
    assert_eq!(file, computed);
}

/// What another implementation would do with the file: recompute each value with nothing
/// but Ed25519, SHA-256, base64, hex and the PAE definition, and check the chain.
#[test]
fn the_committed_vectors_verify_independently() {
    let v: Vectors = serde_json::from_str(&committed()).unwrap_or_else(|e| panic!("{PATH}: {e}"));
    assert_eq!(v.format, "spacesync-vectors-v1");

    // The key.
    let seed: [u8; 32] = hex::decode(&v.key.seed_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .unwrap_or_else(|| panic!("seed_hex is not 32 bytes"));
    assert_eq!(seed, std::array::from_fn::<u8, 32, _>(|i| i as u8 + 1));
    let public = SigningKey::from_bytes(&seed).verifying_key();
    assert_eq!(v.key.public_key_hex, hex::encode(public.as_bytes()));
    assert_eq!(
        v.key.public_key_line,
        format!("ed25519:{}", STANDARD.encode(public.as_bytes()))
    );
    assert_eq!(keys::parse_public_key(&v.key.public_key_line), Ok(public));
    assert_eq!(
        v.key.keyid,
        hex::encode(sha2::Sha256::digest(public.as_bytes()))
    );

    // Each signed entry.
    assert_eq!(v.chain.len(), 3);
    assert_eq!(v.entry, v.chain[0]);
    let mut prev = "0".repeat(64);
    let mut verifier =
        ChainVerifier::new(common::source(), public, common::region("440000"), "2018");
    for (i, s) in v.chain.iter().enumerate() {
        let what = format!("chain[{i}]");
        assert_eq!(s.seq, i as u64 + 1, "{what}");
        assert_eq!(s.prev_hex, prev, "{what}");
        let payload = s.payload.as_bytes();
        assert_eq!(
            STANDARD.decode(&s.payload_base64).ok().as_deref(),
            Some(payload),
            "{what}"
        );
        let mut pae = format!(
            "DSSEv1 {} {} {} ",
            v.payload_type.len(),
            v.payload_type,
            payload.len()
        )
        .into_bytes();
        pae.extend_from_slice(payload);
        assert_eq!(s.pae_hex, hex::encode(&pae), "{what}");
        let sig: [u8; 64] = STANDARD
            .decode(&s.signature_base64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .unwrap_or_else(|| panic!("{what}: signature is not 64 bytes"));
        if let Err(e) = VerifyingKey::verify_strict(&public, &pae, &Signature::from_bytes(&sig)) {
            panic!("{what}: the signature does not verify: {e}");
        }
        assert_eq!(
            s.entry_hash_hex,
            hex::encode(sha2::Sha256::digest(payload)),
            "{what}"
        );
        // The payload names its seq and prev.
        let json: serde_json::Value =
            serde_json::from_str(&s.payload).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(json["seq"], s.seq, "{what}");
        assert_eq!(json["prev"], s.prev_hex.as_str(), "{what}");
        // The envelope carries exactly these bytes and this signature, and the chain holds.
        let env: Envelope =
            serde_json::from_str(&s.envelope).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(env.payload, payload, "{what}");
        assert_eq!(env.payload_type, v.payload_type, "{what}");
        assert_eq!(env.signatures.len(), 1, "{what}");
        assert_eq!(env.signatures[0].keyid, v.key.keyid, "{what}");
        assert_eq!(env.signatures[0].sig, sig, "{what}");
        match verifier.push(&env) {
            Ok(entry) => assert_eq!(Entry::from_payload(payload), Ok(entry), "{what}"),
            Err(e) => panic!("{what}: {e}"),
        }
        prev = s.entry_hash_hex.clone();
    }
}
