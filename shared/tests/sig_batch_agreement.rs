//! The batch path of the signature rule against the single path, attacked: the 914 C2SP
//! edge-case vectors, torsion chosen to cancel across items and key runs, every alternative
//! encoding of a point, keys that are negations of each other, one signature under two
//! keys, long batches, and random mixtures of all of these.
//!
//! What holds here: `verify_batch` accepts a batch exactly when `verify` accepts every item,
//! and names the same first item with the same reason whenever the faulty items are all of
//! one class (all malformed, or all failing only the equation). A batch mixing the two
//! classes is not covered: there the batch path names the first *malformed* item even when
//! an earlier item fails only the equation.

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use proptest::prelude::*;
use spacesync_shared::sig::{self, SigError};

/// The first item [`sig::verify`] refuses: what the batch path must answer.
fn one_by_one(
    msgs: &[&[u8]],
    sigs: &[Signature],
    keys: &[VerifyingKey],
) -> Result<(), (usize, SigError)> {
    for i in 0..msgs.len() {
        sig::verify(&keys[i], msgs[i], &sigs[i]).map_err(|e| (i, e))?;
    }
    Ok(())
}

/// Asserts both paths give the same answer, with the batch run `runs` times (its weights
/// are fresh each time).
fn check(msgs: &[&[u8]], sigs: &[Signature], keys: &[VerifyingKey], runs: usize, what: &str) {
    let want = one_by_one(msgs, sigs, keys);
    for _ in 0..runs {
        assert_eq!(sig::verify_batch(msgs, sigs, keys), want, "{what}");
    }
}

/// A signature by secret scalar `a` under the key bytes `a_bytes` (whatever point they
/// are), with nonce point bytes `r_bytes` for nonce scalar `r`: `S = r + k·a`.
fn sign_raw(a: Scalar, a_bytes: [u8; 32], r: Scalar, r_bytes: [u8; 32], msg: &[u8]) -> Signature {
    Signature::from_bytes(&sig::sign_over(&a, &a_bytes, &r, &r_bytes, msg))
}

fn vk(bytes: [u8; 32]) -> VerifyingKey {
    VerifyingKey::from_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", hex::encode(bytes)))
}

fn with_r(sig: &Signature, r: [u8; 32]) -> Signature {
    let mut b = sig.to_bytes();
    b[..32].copy_from_slice(&r);
    Signature::from_bytes(&b)
}

/// `y + p` for a small `y`, little-endian: the non-canonical twin of `y` (when `y < 19`).
fn y_plus_p(y: u8) -> [u8; 32] {
    let mut b = [0xffu8; 32];
    b[31] = 0x7f;
    // p = 2^255 - 19 ends in 0xed; adding y < 19 does not carry.
    b[0] = 0xed + y;
    b
}

/// Every encoding of a point that is not its canonical one, with the point it decodes to:
/// `y + p` for each `y < 19` on the curve (both signs), and the sign bit on `x = 0`.
fn alternative_encodings() -> Vec<([u8; 32], EdwardsPoint)> {
    let mut out = Vec::new();
    for y in 0u8..19 {
        for sign in [0u8, 0x80] {
            let mut b = y_plus_p(y);
            b[31] |= sign;
            if let Some(p) = CompressedEdwardsY(b).decompress() {
                out.push((b, p));
            }
        }
    }
    for canonical in [
        EdwardsPoint::default().compress().to_bytes(),
        EIGHT_TORSION[4].compress().to_bytes(),
    ] {
        let mut b = canonical;
        b[31] |= 0x80;
        let p = CompressedEdwardsY(b)
            .decompress()
            .unwrap_or_else(|| panic!("x = 0 with the sign bit decodes"));
        out.push((b, p));
    }
    out
}

// ---- published vectors -------------------------------------------------------------------

struct Vector {
    number: u64,
    key: [u8; 32],
    sig: [u8; 64],
    msg: Vec<u8>,
    flags: Vec<String>,
}

fn cctv_vectors() -> Vec<Vector> {
    let text = include_str!("../testdata/cctv-ed25519vectors.json");
    let doc: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
    let hex_of = |v: &serde_json::Value, f: &str| {
        hex::decode(v[f].as_str().unwrap_or_else(|| panic!("{f}")))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    doc.as_array()
        .unwrap_or_else(|| panic!("not an array"))
        .iter()
        .map(|v| Vector {
            number: v["number"].as_u64().unwrap_or_else(|| panic!("number")),
            key: hex_of(v, "key")
                .try_into()
                .unwrap_or_else(|_| panic!("key")),
            sig: hex_of(v, "sig")
                .try_into()
                .unwrap_or_else(|_| panic!("sig")),
            msg: v["msg"]
                .as_str()
                .unwrap_or_else(|| panic!("msg"))
                .as_bytes()
                .to_vec(),
            flags: v["flags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// C2SP/CCTV's 914 Ed25519 edge cases (every low-order point and each of its alternative
/// encodings as A and as R, with and without a prime-order component, residues that cancel
/// and residues that do not, re-encoded k): the rule accepts the one vector with no edge
/// property and refuses every other, and the batch path agrees item by item, alone, between
/// honest signatures, and with all vectors in one batch.
#[test]
fn cctv_edge_vectors_get_one_verdict_on_both_paths() {
    let vectors = cctv_vectors();
    assert_eq!(vectors.len(), 914);
    let honest = SigningKey::from_bytes(&[42; 32]);
    let (h0, h2) = (b"honest 0".as_slice(), b"honest 2".as_slice());
    let mut all = (Vec::new(), Vec::new(), Vec::new());
    let mut accepted = Vec::new();
    for v in &vectors {
        let Ok(key) = VerifyingKey::from_bytes(&v.key) else {
            panic!("vector {}: every CCTV key is a curve point", v.number);
        };
        let sig = Signature::from_bytes(&v.sig);
        let single = sig::verify(&key, &v.msg, &sig);
        assert_eq!(
            single.is_ok(),
            v.flags.is_empty(),
            "vector {} {:?}: {single:?}",
            v.number,
            v.flags
        );
        if single.is_ok() {
            accepted.push(v.number);
        }
        let what = format!("vector {} {:?}", v.number, v.flags);
        check(&[&v.msg], &[sig], &[key], 4, &what);
        check(
            &[h0, &v.msg, h2],
            &[honest.sign(h0), sig, honest.sign(h2)],
            &[honest.verifying_key(), key, honest.verifying_key()],
            2,
            &what,
        );
        all.0.push(v.msg.as_slice());
        all.1.push(sig);
        all.2.push(key);
    }
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    check(&all.0, &all.1, &all.2, 2, "all vectors in one batch");
    // Each accepted vector repeated: one key, a run of equal keys.
    let a = vectors
        .iter()
        .find(|v| v.flags.is_empty())
        .map(|v| (v.msg.as_slice(), Signature::from_bytes(&v.sig), vk(v.key)));
    let (m, s, k) = a.unwrap_or_else(|| panic!("no flagless vector"));
    check(
        &[m; 50],
        &[s; 50],
        &[k; 50],
        2,
        "the accepted vector 50 times",
    );
}

// ---- hand-built attacks ------------------------------------------------------------------

/// Items whose torsion components cancel in any weighted sum with even weights, or in the
/// unweighted sum: R₁ = r₁B + T, R₂ = r₂B − T; R₁, R₂ both carrying the order-2 point;
/// and a mixed-order key over a run of items whose k·T terms cancel pairwise. Every such
/// item is refused for its torsion, at its own index, every time.
#[test]
fn torsion_chosen_to_cancel_across_items_is_refused_every_time() {
    let a = Scalar::from(0x5eed_u64);
    let a_bytes = (ED25519_BASEPOINT_POINT * a).compress().to_bytes();
    let key = vk(a_bytes);
    let honest = SigningKey::from_bytes(&[3; 32]);
    for (t, torsion) in EIGHT_TORSION.iter().enumerate().skip(1) {
        let neg = (8 - t) % 8;
        for trial in 0..8u64 {
            let msgs: Vec<Vec<u8>> = (0..4).map(|i| vec![t as u8, trial as u8, i]).collect();
            let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
            let r = |i: u64, tt: usize| {
                let r = Scalar::from(1000 + 10 * trial + i);
                (
                    r,
                    (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[tt])
                        .compress()
                        .to_bytes(),
                )
            };
            let (r1, r1b) = r(1, t);
            let (r2, r2b) = r(2, neg);
            let sigs = vec![
                honest.sign(refs[0]),
                sign_raw(a, a_bytes, r1, r1b, refs[1]),
                sign_raw(a, a_bytes, r2, r2b, refs[2]),
                honest.sign(refs[3]),
            ];
            let keys = vec![honest.verifying_key(), key, key, honest.verifying_key()];
            check(&refs, &sigs, &keys, 3, &format!("T[{t}] and T[{neg}] in R"));
            assert_eq!(
                sig::verify_batch(&refs, &sigs, &keys),
                Err((1, SigError::RTorsion))
            );
            // Both nonces carry the same torsion (T[4] has order 2: even weights cancel it).
            let (r2, r2b) = r(2, t);
            let sigs = vec![
                sign_raw(a, a_bytes, r1, r1b, refs[0]),
                sign_raw(a, a_bytes, r2, r2b, refs[1]),
            ];
            check(
                &refs[..2],
                &sigs,
                &[key, key],
                3,
                &format!("T[{t}] twice in R"),
            );
        }
        // A mixed-order key over a run: A = aB + T, each item signed with the secret a.
        let mixed = (ED25519_BASEPOINT_POINT * a + torsion)
            .compress()
            .to_bytes();
        let mk = vk(mixed);
        let msgs: Vec<Vec<u8>> = (0..6).map(|i| vec![0xa0, t as u8, i]).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let sigs: Vec<Signature> = refs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let r = Scalar::from(77 + i as u64);
                sign_raw(
                    a,
                    mixed,
                    r,
                    (ED25519_BASEPOINT_POINT * r).compress().to_bytes(),
                    m,
                )
            })
            .collect();
        let mut keys = vec![mk; 6];
        keys[0] = honest.verifying_key();
        let mut sigs0 = sigs.clone();
        sigs0[0] = honest.sign(refs[0]);
        check(
            &refs,
            &sigs0,
            &keys,
            3,
            &format!("mixed key T[{t}] in a run"),
        );
        assert_eq!(
            sig::verify_batch(&refs, &sigs0, &keys),
            Err((1, SigError::KeyTorsion))
        );
    }
}

/// Every alternative encoding of a point, as the key and as R, alone and alternating with
/// the canonical encoding of the same point in one batch (runs are told apart by bytes;
/// the decoded points are equal): refused for the encoding, at its own index.
#[test]
fn alternative_encodings_of_one_point_are_refused_wherever_they_sit() {
    let honest = SigningKey::from_bytes(&[5; 32]);
    let hk = honest.verifying_key();
    let encodings = alternative_encodings();
    // y = 0, ±1 and the other small y on the curve, with and without the sign bit.
    assert!(encodings.len() >= 4, "{}", encodings.len());
    for (bytes, point) in &encodings {
        let canonical = point.compress().to_bytes();
        assert_ne!(&canonical, bytes);
        let alt = vk(*bytes);
        let canon = vk(canonical);
        let m: &[u8] = b"m";
        let s = honest.sign(m);
        assert_eq!(sig::check_key(&alt), Err(SigError::KeyEncoding));
        // As the key: alone, then canonical / alternative / canonical / alternative.
        check(&[m], &[s], &[alt], 2, "alternative key alone");
        check(
            &[m; 4],
            &[s; 4],
            &[canon, alt, canon, alt],
            2,
            "alternating key encodings",
        );
        check(
            &[m; 3],
            &[s; 3],
            &[hk, alt, hk],
            2,
            "alternative key between honest ones",
        );
        assert_eq!(
            sig::verify_batch(&[m; 3], &[s; 3], &[hk, alt, hk]),
            Err((1, SigError::KeyEncoding))
        );
        // As R.
        let bad_r = with_r(&s, *bytes);
        let canon_r = with_r(&s, canonical);
        check(&[m; 3], &[s, bad_r, s], &[hk; 3], 2, "alternative R");
        assert_eq!(
            sig::verify_batch(&[m; 3], &[s, bad_r, s], &[hk; 3]),
            Err((1, SigError::REncoding))
        );
        check(
            &[m; 2],
            &[canon_r, bad_r],
            &[hk; 2],
            2,
            "canonical then alternative R",
        );
    }
}

/// R or A the identity (canonical, with the sign bit, as y + p) or the point of order 2:
/// refused for torsion or encoding by both paths; S = L, S = L − 1 and S = 2²⁵⁶ − 1 beside
/// honest items.
#[test]
fn identity_order_two_and_s_edges() {
    let honest = SigningKey::from_bytes(&[6; 32]);
    let hk = honest.verifying_key();
    let m: &[u8] = b"edges";
    let s = honest.sign(m);
    let identity = EdwardsPoint::default().compress().to_bytes();
    let order2 = EIGHT_TORSION[4].compress().to_bytes();
    for (r, why) in [
        (identity, SigError::RTorsion),
        (order2, SigError::RTorsion),
        (y_plus_p(1), SigError::REncoding),
    ] {
        let bad = with_r(&s, r);
        check(&[m; 2], &[s, bad], &[hk; 2], 2, "small R");
        assert_eq!(
            sig::verify_batch(&[m; 2], &[s, bad], &[hk; 2]),
            Err((1, why))
        );
    }
    for a in [identity, order2] {
        check(&[m; 2], &[s; 2], &[hk, vk(a)], 2, "small A");
        assert_eq!(
            sig::verify_batch(&[m; 2], &[s; 2], &[hk, vk(a)]),
            Err((1, SigError::KeyTorsion))
        );
    }
    // S = L, S = L − 1 (canonical: only the equation fails), S = 2^256 − 1.
    let l = Scalar::ZERO - Scalar::ONE;
    let mut l_bytes = l.to_bytes();
    l_bytes[0] += 1;
    for (s_bytes, why) in [
        (l_bytes, SigError::SNotCanonical),
        (l.to_bytes(), SigError::Equation),
        ([0xff; 32], SigError::SNotCanonical),
    ] {
        let mut b = s.to_bytes();
        b[32..].copy_from_slice(&s_bytes);
        let bad = Signature::from_bytes(&b);
        check(&[m; 3], &[s, bad, s], &[hk; 3], 2, "S edge");
        assert_eq!(
            sig::verify_batch(&[m; 3], &[s, bad, s], &[hk; 3]),
            Err((1, why))
        );
    }
}

/// A signature under the key's negation (the same bytes but the sign bit), one signature
/// under two keys, and a signature moved to another message: only the equation fails, and
/// both paths name the same item.
#[test]
fn negated_keys_and_reused_signatures_fail_the_equation_on_both_paths() {
    let k = SigningKey::from_bytes(&[9; 32]);
    let other = SigningKey::from_bytes(&[10; 32]);
    let mut neg_bytes = k.verifying_key().to_bytes();
    neg_bytes[31] ^= 0x80;
    let neg = vk(neg_bytes);
    assert_eq!(sig::check_key(&neg), Ok(()));
    let msgs: Vec<Vec<u8>> = (0..5).map(|i| vec![i; 9]).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let sigs: Vec<Signature> = refs.iter().map(|m| k.sign(m)).collect();
    let keys = vec![k.verifying_key(); 5];
    check(&refs, &sigs, &keys, 3, "honest");
    for bad in 0..5 {
        let mut ks = keys.clone();
        ks[bad] = neg;
        check(&refs, &sigs, &ks, 3, "under -A");
        assert_eq!(
            sig::verify_batch(&refs, &sigs, &ks),
            Err((bad, SigError::Equation))
        );
        let mut ks = keys.clone();
        ks[bad] = other.verifying_key();
        check(&refs, &sigs, &ks, 3, "same signature, other key");
        let mut ss = sigs.clone();
        ss[bad] = sigs[(bad + 1) % 5];
        check(&refs, &ss, &keys, 3, "moved signature");
    }
    // The same message and signature under the key and its negation, side by side.
    check(
        &[refs[0]; 2],
        &[sigs[0]; 2],
        &[keys[0], neg],
        3,
        "A then -A",
    );
    check(
        &[refs[0]; 2],
        &[sigs[0]; 2],
        &[neg, keys[0]],
        3,
        "-A then A",
    );
    check(&[], &[], &[], 1, "empty");
}

/// 3,000 items over three keys in runs of 1‥40: accepted; one bad item anywhere (only
/// its equation fails) is named.
#[test]
fn a_long_batch_in_key_runs_names_its_one_bad_item() {
    let signers: Vec<SigningKey> = (11..14).map(|s| SigningKey::from_bytes(&[s; 32])).collect();
    let mut owners = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    while owners.len() < 3000 {
        let who = next(3) as usize;
        for _ in 0..=next(40) {
            owners.push(who);
        }
    }
    owners.truncate(3000);
    let msgs: Vec<Vec<u8>> = (0..owners.len())
        .map(|i| (i as u32).to_le_bytes().to_vec())
        .collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let sigs: Vec<Signature> = owners
        .iter()
        .zip(&refs)
        .map(|(&o, m)| signers[o].sign(m))
        .collect();
    let keys: Vec<VerifyingKey> = owners.iter().map(|&o| signers[o].verifying_key()).collect();
    assert_eq!(sig::verify_batch(&refs, &sigs, &keys), Ok(()));
    for _ in 0..4 {
        let bad = next(3000) as usize;
        let mut ss = sigs.clone();
        ss[bad] = signers[(owners[bad] + 1) % 3].sign(refs[bad]);
        assert_eq!(
            sig::verify_batch(&refs, &ss, &keys),
            Err((bad, SigError::Equation))
        );
    }
}

// ---- random mixtures ---------------------------------------------------------------------

/// How an item is built.
#[derive(Debug, Clone, Copy)]
enum Make {
    Honest,
    /// Well-formed, signed by another key: only the equation fails.
    OtherKey,
    /// Honest, then S replaced by S + L.
    SPlusL,
    /// R = rB + T[t] for t in 1..8, S computed for it.
    TorsionR(usize),
    /// R replaced by an alternative encoding.
    AltR(usize),
    /// Signed for another message.
    OtherMessage,
}

fn make() -> impl Strategy<Value = Make> {
    prop_oneof![
        6 => Just(Make::Honest),
        1 => Just(Make::OtherKey),
        1 => Just(Make::SPlusL),
        1 => (1usize..8).prop_map(Make::TorsionR),
        1 => (0usize..8).prop_map(Make::AltR),
        1 => Just(Make::OtherMessage),
    ]
}

/// Key pool: three honest keys, a mixed-order key, a small-order key, an alternative
/// encoding of the identity, and the negation of honest key 0.
fn key_pool() -> Vec<([u8; 32], Scalar)> {
    let mut out: Vec<([u8; 32], Scalar)> = (1u64..=3)
        .map(|i| {
            let a = Scalar::from(0x1000 + i);
            ((ED25519_BASEPOINT_POINT * a).compress().to_bytes(), a)
        })
        .collect();
    let a = Scalar::from(0x2000u64);
    out.push((
        (ED25519_BASEPOINT_POINT * a + EIGHT_TORSION[2])
            .compress()
            .to_bytes(),
        a,
    ));
    out.push((EIGHT_TORSION[1].compress().to_bytes(), Scalar::ZERO));
    out.push((y_plus_p(1), Scalar::ZERO));
    let mut neg = out[0].0;
    neg[31] ^= 0x80;
    out.push((neg, out[0].1));
    out
}

/// Builds item `i` by key `key` as `how` says.
fn build(i: usize, key: ([u8; 32], Scalar), how: Make) -> (Vec<u8>, Signature) {
    let msg = format!("item {i}").into_bytes();
    let (a_bytes, a) = key;
    let r = Scalar::from(31 + 7 * i as u64);
    let clean_r = (ED25519_BASEPOINT_POINT * r).compress().to_bytes();
    let honest = sign_raw(a, a_bytes, r, clean_r, &msg);
    let alts = alternative_encodings();
    let sig = match how {
        Make::Honest => honest,
        Make::OtherKey => sign_raw(a + Scalar::ONE, a_bytes, r, clean_r, &msg),
        Make::SPlusL => {
            let mut b = honest.to_bytes();
            // S < L < 2^253, so S + L < 2^254 fits; add L byte-wise.
            let l = (Scalar::ZERO - Scalar::ONE).to_bytes();
            let mut carry = 1u16; // L = (L − 1) + 1
            for j in 0..32 {
                let v = b[32 + j] as u16 + l[j] as u16 + carry;
                b[32 + j] = v as u8;
                carry = v >> 8;
            }
            Signature::from_bytes(&b)
        }
        Make::TorsionR(t) => {
            let rb = (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[t])
                .compress()
                .to_bytes();
            sign_raw(a, a_bytes, r, rb, &msg)
        }
        Make::AltR(j) => with_r(&honest, alts[j % alts.len()].0),
        Make::OtherMessage => sign_raw(a, a_bytes, r, clean_r, b"another message"),
    };
    (msg, sig)
}

/// Which class an item's fault is in, by the single path.
fn class(r: &Result<(), SigError>) -> Option<bool> {
    match r {
        Ok(()) => None,
        Err(SigError::Equation) => Some(false),
        Err(_) => Some(true),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random batches of up to 40 items over the key pool, in runs and alternating, each
    /// item honest or faulty in one of six ways: the batch accepts exactly when every item
    /// verifies, and names the first refused item with its reason whenever the faults are
    /// all of one class.
    #[test]
    fn random_mixtures_get_the_verdict_of_single_verification(
        items in proptest::collection::vec((0usize..7, make(), 1usize..4), 0..40),
        honest_keys_only in any::<bool>(),
    ) {
        let pool = key_pool();
        let mut msgs = Vec::new();
        let mut sigs = Vec::new();
        let mut keys = Vec::new();
        for (k, how, run) in items {
            let k = if honest_keys_only { k % 3 } else { k };
            for _ in 0..run {
                let (m, s) = build(msgs.len(), pool[k], how);
                msgs.push(m);
                sigs.push(s);
                keys.push(vk(pool[k].0));
            }
        }
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let singles: Vec<Result<(), SigError>> = (0..refs.len())
            .map(|i| sig::verify(&keys[i], refs[i], &sigs[i]))
            .collect();
        let batch = sig::verify_batch(&refs, &sigs, &keys);
        prop_assert_eq!(batch.is_ok(), singles.iter().all(Result::is_ok));
        let classes: std::collections::BTreeSet<bool> = singles.iter().filter_map(class).collect();
        if classes.len() <= 1 {
            prop_assert_eq!(batch, one_by_one(&refs, &sigs, &keys));
        }
    }
}
