//! One Ed25519 rule everywhere: the published edge-case vectors and random torsion-carrying
//! signatures get the same verdict from the single path, the batch path (alone and mixed
//! into honest batches), DSSE envelopes and the entry chain verifier.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use proptest::prelude::*;
use spacesync_shared::sig::{self, SigError};

struct Case {
    msg: Vec<u8>,
    key: [u8; 32],
    sig: [u8; 64],
}

fn hex_bytes(v: &serde_json::Value, field: &str) -> Vec<u8> {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {v}"));
    hex::decode(s).unwrap_or_else(|e| panic!("{field}: {e}"))
}

fn cases() -> Vec<Case> {
    let text = include_str!("../testdata/ed25519-speccheck.json");
    let doc: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
    let list = doc["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("no cases"));
    list.iter()
        .map(|c| Case {
            msg: hex_bytes(c, "message"),
            key: hex_bytes(c, "pub_key")
                .try_into()
                .unwrap_or_else(|_| panic!("key length")),
            sig: hex_bytes(c, "signature")
                .try_into()
                .unwrap_or_else(|_| panic!("sig length")),
        })
        .collect()
}

/// Properties of a 32-byte point encoding, computed independently of `sig`.
#[derive(Debug, PartialEq)]
enum Point {
    NotOnCurve,
    NonCanonical,
    SmallOrder,
    Mixed,
    PrimeOrder,
}

fn classify(bytes: &[u8; 32]) -> Point {
    let Some(p) = CompressedEdwardsY(*bytes).decompress() else {
        return Point::NotOnCurve;
    };
    if p.compress().as_bytes() != bytes {
        Point::NonCanonical
    } else if p.is_small_order() {
        Point::SmallOrder
    } else if !p.is_torsion_free() {
        Point::Mixed
    } else {
        Point::PrimeOrder
    }
}

/// The verdict of the rule for each case, with the properties measured by [`classify`]:
/// every one of the 15 carries a small-order component, a non-canonical encoding or S ≥ L,
/// so all are refused. The reason pins *why*, so a change in the order of checks shows.
const EXPECTED: [Result<(), SigError>; 15] = [
    Err(SigError::KeyTorsion),    // 0: small A, small R, S = 0
    Err(SigError::KeyTorsion),    // 1: small A, small R
    Err(SigError::KeyTorsion),    // 2: small A, mixed R
    Err(SigError::KeyTorsion),    // 3: small A, mixed R
    Err(SigError::KeyTorsion),    // 4: mixed A, small R
    Err(SigError::KeyTorsion),    // 5: mixed A, small R
    Err(SigError::KeyTorsion),    // 6: mixed A, mixed R (cofactorless passes)
    Err(SigError::KeyTorsion),    // 7: mixed A, mixed R (cofactored only)
    Err(SigError::KeyTorsion),    // 8: mixed A, prime-order R
    Err(SigError::SNotCanonical), // 9: prime-order A and R, S ≥ L
    Err(SigError::SNotCanonical), // 10: prime-order A and R, S ≥ L
    Err(SigError::KeyTorsion),    // 11: mixed A, non-canonical R
    Err(SigError::KeyTorsion),    // 12: mixed A, non-canonical R
    Err(SigError::KeyEncoding),   // 13: non-canonical A, mixed R
    Err(SigError::KeyEncoding),   // 14: non-canonical A, mixed R
];

#[test]
fn published_edge_cases_get_one_verdict_on_every_path() {
    let honest = SigningKey::from_bytes(&[42; 32]);
    let mut table = String::new();
    let mut verdicts = Vec::new();
    for (i, c) in cases().iter().enumerate() {
        let sig = Signature::from_bytes(&c.sig);
        let r: [u8; 32] = c.sig[..32].try_into().unwrap_or_else(|_| panic!());
        let s_ok = bool::from(
            Scalar::from_canonical_bytes(c.sig[32..].try_into().unwrap_or_else(|_| panic!()))
                .is_some(),
        );
        table.push_str(&format!(
            "{i}: A={:?} R={:?} S<L={s_ok}\n",
            classify(&c.key),
            classify(&r)
        ));
        // Every case is refused: a torsion component, a bad encoding, or S ≥ L.
        let structurally_bad =
            classify(&c.key) != Point::PrimeOrder || classify(&r) != Point::PrimeOrder || !s_ok;
        assert!(structurally_bad, "case {i} has no edge property:\n{table}");
        let Ok(vk) = VerifyingKey::from_bytes(&c.key) else {
            // Not a point at all: no path can even build the key.
            assert!(matches!(classify(&c.key), Point::NotOnCurve));
            continue;
        };
        let single = sig::verify(&vk, &c.msg, &sig);
        table.push_str(&format!("   verdict {single:?}\n"));
        verdicts.push(single);
        // Batch alone.
        assert_eq!(
            sig::verify_batch(&[&c.msg], &[sig], &[vk]).map_err(|(_, e)| e),
            single,
            "case {i} alone in a batch"
        );
        // Batch mixed into honest signatures, at a known position.
        let m0 = b"honest 0".to_vec();
        let m2 = b"honest 2".to_vec();
        let msgs: Vec<&[u8]> = vec![&m0, &c.msg, &m2];
        let sigs = vec![honest.sign(&m0), sig, honest.sign(&m2)];
        let keys = vec![honest.verifying_key(), vk, honest.verifying_key()];
        assert_eq!(
            sig::verify_batch(&msgs, &sigs, &keys),
            Err((1, single.err().unwrap_or(SigError::Equation))),
            "case {i} in an honest batch"
        );
        // A key line carrying a key with any torsion or a non-canonical encoding is
        // refused at registration; a prime-order key is accepted.
        let line = spacesync_shared::keys::public_key_line(&vk);
        assert_eq!(
            spacesync_shared::keys::parse_public_key(&line).is_ok(),
            classify(&c.key) == Point::PrimeOrder,
            "case {i}: key {line}"
        );
    }
    eprintln!("{table}");
    assert_eq!(verdicts, EXPECTED.to_vec(), "{table}");
}

/// A signature by secret scalar `a` whose nonce point carries torsion `T[t]`: what a key
/// holder builds to make verifiers disagree.
fn torsion_signature(a: Scalar, r: Scalar, t: usize, msg: &[u8]) -> (VerifyingKey, Signature) {
    let big_a = (ED25519_BASEPOINT_POINT * a).compress().to_bytes();
    let vk = VerifyingKey::from_bytes(&big_a).unwrap_or_else(|e| panic!("{e}"));
    let bytes = spacesync_shared::sig::sign_with_torsion_in_r(&a, &r, t, msg);
    (vk, Signature::from_bytes(&bytes))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random torsion-carrying signatures: both paths refuse each one, every time, while
    /// the bare batch verifier of the library accepts some (the gap, shown to exist).
    #[test]
    fn torsion_signatures_are_refused_by_both_paths(a in 1u64.., r in 1u64.., t in 0usize..8, msg in proptest::collection::vec(any::<u8>(), 0..64)) {
        let (vk, s) = torsion_signature(Scalar::from(a), Scalar::from(r), t, &msg);
        let single = sig::verify(&vk, &msg, &s);
        let batch = sig::verify_batch(&[&msg], &[s], &[vk]).map_err(|(_, e)| e);
        prop_assert_eq!(single, batch);
        if t == 0 {
            prop_assert_eq!(single, Ok(()));
        } else {
            prop_assert_eq!(single, Err(SigError::RTorsion));
        }
    }
}

#[test]
fn the_bare_batch_verifier_accepts_torsion_signatures_sometimes() {
    // Why the rule exists: without it, batch verification lets some of these through.
    let mut accepted = 0;
    for i in 0..64u64 {
        let msg = i.to_le_bytes();
        let (vk, s) = torsion_signature(Scalar::from(1000 + i), Scalar::from(7 + i), 4, &msg);
        if ed25519_dalek::verify_batch(&[&msg], &[s], &[vk]).is_ok() {
            accepted += 1;
        }
        assert!(vk.verify_strict(&msg, &s).is_err());
    }
    // T[4] has order 2: the random batch coefficient is even half of the time.
    assert!(accepted > 0, "the library's batch check refused all 64");
}
