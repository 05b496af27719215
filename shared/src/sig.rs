//! The one Ed25519 validity rule, used by every verifier in the system.
//!
//! Ed25519 implementations disagree on edge cases (Chalkias, Garillot, Nikolaenko, "Taming
//! the many EdDSAs", 2020): points with a small-order (torsion) component, non-canonical
//! point encodings, `S ≥ L`, and the cofactored versus cofactorless equation. Batch
//! verification is randomised and cofactor-sensitive, so on its own it accepts some
//! signatures that `verify_strict` refuses, and only some of the time. A log that ingest
//! accepts and `verify` later calls damaged is the result.
//!
//! The rule here, for a public key `A`, a signature `(R, S)` and a message:
//!
//! 1. `A` and `R` are canonical encodings of curve points (decompressing and compressing
//!    again gives the same 32 bytes);
//! 2. `A` and `R` are torsion-free and not the identity: no small-order component at all
//!    (this refuses small-order and mixed-order points alike);
//! 3. `S` is canonical (`S < L`);
//! 4. the cofactorless equation `[S]B = R + [k]A` holds (`verify_strict`).
//!
//! [`verify`] applies it to one signature. [`verify_batch`] checks 1–3 for every item and
//! then runs batch verification as a fast path: with every point in the prime-order
//! subgroup, the random linear combination accepts exactly when each equation holds (up to
//! the 2⁻¹²⁸ chance of the batch check), so both paths give the same verdict. When the
//! batch fails, each item is checked with [`verify`] to name the first bad one.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, VerifyingKey};

/// Why a point or signature breaks the rule (before or at the equation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// The public key is not a canonical encoding of a curve point.
    #[error("the public key is not a canonical point encoding")]
    KeyEncoding,
    /// The public key has a small-order component (or is the identity).
    #[error("the public key has a small-order component")]
    KeyTorsion,
    /// R is not a canonical encoding of a curve point.
    #[error("the signature's R is not a canonical point encoding")]
    REncoding,
    /// R has a small-order component (or is the identity).
    #[error("the signature's R has a small-order component")]
    RTorsion,
    /// S is not below the group order.
    #[error("the signature's S is not canonical (S ≥ L)")]
    SNotCanonical,
    /// The equation does not hold.
    #[error("the signature does not verify")]
    Equation,
}

fn canonical_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    let p = CompressedEdwardsY(*bytes).decompress()?;
    (p.compress().as_bytes() == bytes).then_some(p)
}

fn prime_order(p: &EdwardsPoint) -> bool {
    !p.is_small_order() && p.is_torsion_free()
}

/// Checks rule 1 and 2 for a public key: what a key must satisfy to be registered.
pub fn check_key(key: &VerifyingKey) -> Result<(), SigError> {
    let p = canonical_point(key.as_bytes()).ok_or(SigError::KeyEncoding)?;
    if !prime_order(&p) {
        return Err(SigError::KeyTorsion);
    }
    Ok(())
}

/// Checks rules 1–3 for one signature (everything except the equation).
pub fn check_structure(key: &VerifyingKey, sig: &Signature) -> Result<(), SigError> {
    check_key(key)?;
    let r = canonical_point(sig.r_bytes()).ok_or(SigError::REncoding)?;
    if !prime_order(&r) {
        return Err(SigError::RTorsion);
    }
    if Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes())).is_none() {
        return Err(SigError::SNotCanonical);
    }
    Ok(())
}

/// The rule for one signature.
pub fn verify(key: &VerifyingKey, msg: &[u8], sig: &Signature) -> Result<(), SigError> {
    check_structure(key, sig)?;
    key.verify_strict(msg, sig).map_err(|_| SigError::Equation)
}

/// The rule for many signatures (each with its own key): `Ok` exactly when [`verify`]
/// accepts every item; otherwise the index of the first item it refuses, with why.
pub fn verify_batch(
    msgs: &[&[u8]],
    sigs: &[Signature],
    keys: &[VerifyingKey],
) -> Result<(), (usize, SigError)> {
    debug_assert!(msgs.len() == sigs.len() && sigs.len() == keys.len());
    let n = msgs.len().min(sigs.len()).min(keys.len());
    for i in 0..n {
        check_structure(&keys[i], &sigs[i]).map_err(|e| (i, e))?;
    }
    if n == 0 || ed25519_dalek::verify_batch(&msgs[..n], &sigs[..n], &keys[..n]).is_ok() {
        return Ok(());
    }
    for i in 0..n {
        verify(&keys[i], msgs[i], &sigs[i]).map_err(|e| (i, e))?;
    }
    // The batch check failed yet every item holds on its own: only possible with the
    // batch's negligible false-negative chance; refuse rather than guess.
    Err((0, SigError::Equation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::{Digest as _, Sha512};

    fn hex_arr(h: &str) -> [u8; 32] {
        hex::decode(h)
            .ok()
            .and_then(|v| v.try_into().ok())
            .unwrap_or_else(|| panic!("bad hex {h}"))
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn honest_signatures_pass_both_paths() {
        let keys: Vec<SigningKey> = (1..=5).map(key).collect();
        let msgs: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; 40]).collect();
        let sigs: Vec<Signature> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
        let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        assert_eq!(verify_batch(&refs, &sigs, &vks), Ok(()));
        for i in 0..5 {
            assert_eq!(verify(&vks[i], &msgs[i], &sigs[i]), Ok(()));
        }
        let mut bad = sigs.clone();
        bad[3] = keys[3].sign(b"other");
        assert_eq!(
            verify_batch(&refs, &bad, &vks),
            Err((3, SigError::Equation))
        );
    }

    /// Signs `msg` with secret scalar `a` (public key `A = [a]B + T_A`) and nonce point
    /// `R = [r]B + T_R`: the attacker's construction of a torsion-carrying signature.
    fn forged(
        a: Scalar,
        t_a: usize,
        r: Scalar,
        t_r: usize,
        msg: &[u8],
    ) -> (VerifyingKey, Signature) {
        let big_a = ED25519_BASEPOINT_POINT * a + EIGHT_TORSION[t_a];
        let big_r = ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[t_r];
        let a_bytes = big_a.compress().to_bytes();
        let r_bytes = big_r.compress().to_bytes();
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(r_bytes)
                .chain_update(a_bytes)
                .chain_update(msg),
        );
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        sig[32..].copy_from_slice(s.as_bytes());
        let vk = VerifyingKey::from_bytes(&a_bytes).unwrap_or_else(|e| panic!("{e}"));
        (vk, Signature::from_bytes(&sig))
    }

    #[test]
    fn torsion_in_r_is_refused_every_time_by_both_paths() {
        let a = Scalar::from(12345u64);
        for t in 1..8 {
            for trial in 0..16u8 {
                let msg = [trial, t as u8];
                let (vk, sig) = forged(a, 0, Scalar::from(777u64 + trial as u64), t, &msg);
                assert_eq!(verify(&vk, &msg, &sig), Err(SigError::RTorsion));
                assert_eq!(
                    verify_batch(&[&msg], &[sig], &[vk]),
                    Err((0, SigError::RTorsion))
                );
                // The bare batch verifier accepts some of these: the gap this module closes.
            }
        }
    }

    #[test]
    fn torsion_in_the_key_is_refused() {
        let (vk, sig) = forged(Scalar::from(99u64), 3, Scalar::from(5u64), 0, b"m");
        assert_eq!(check_key(&vk), Err(SigError::KeyTorsion));
        assert_eq!(verify(&vk, b"m", &sig), Err(SigError::KeyTorsion));
        assert_eq!(
            verify_batch(&[b"m"], &[sig], &[vk]),
            Err((0, SigError::KeyTorsion))
        );
    }

    #[test]
    fn s_at_or_above_l_is_refused() {
        let k = key(9);
        let sig = k.sign(b"m");
        let mut bytes = sig.to_bytes();
        // S + L: the same residue, a non-canonical encoding.
        // L, little-endian (RFC 8032 section 5.1).
        let l: [u8; 32] =
            hex_arr("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
        let mut carry = 0u16;
        for i in 0..32 {
            let v = bytes[32 + i] as u16 + l[i] as u16 + carry;
            bytes[32 + i] = v as u8;
            carry = v >> 8;
        }
        let sig2 = Signature::from_bytes(&bytes);
        let vk = k.verifying_key();
        assert!(verify(&vk, b"m", &sig2).is_err());
        assert!(verify_batch(&[b"m"], &[sig2], &[vk]).is_err());
    }
}
