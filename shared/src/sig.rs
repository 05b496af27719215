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
//! the 2⁻¹²⁸ chance of the batch check), so both paths give the same verdict (up to about
//! 2⁻¹²⁷ in all with the torsion test below). When the batch fails, each item is checked
//! with [`verify`] to name the first bad one.
//!
//! Rule 2 costs a scalar multiplication per point (`[L]P`: 28.7 µs on the machine of
//! BENCHMARKS.md, against about 2 µs a point for the batch equation's multiscalar
//! multiplication); it is what makes the two paths agree. So the batch path checks each
//! distinct key once, judges canonical encodings from the bytes (no compression), reuses the decompressed points in its own batch equation, where a run of
//! one key contributes one point instead of one per signature, and checks the `R`s of a
//! large batch for torsion all at once ([`all_torsion_free`]): 128 random subset sums, one
//! `[L]X` each, where any small-order component left in some `R` survives each sum with
//! probability at most ½ — a 2⁻¹²⁸ chance in all, as small as the batch equation's.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha512};

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

/// Rule 1 on the bytes alone: `y < p` (p = 2²⁵⁵ − 19), and no sign bit on `x = 0` (which
/// only `y = ±1` have). Decompressing such bytes and compressing again gives them back;
/// for any other bytes it does not. Saves the field inversion a compression costs.
fn canonical_encoding(b: &[u8; 32]) -> bool {
    let sign = b[31] >> 7;
    let top = b[31] & 0x7f;
    // y ≥ p exactly when y's bytes are ed ff … ff 7f or above (little-endian).
    let y_at_least_p = top == 0x7f && b[1..31].iter().all(|&x| x == 0xff) && b[0] >= 0xed;
    if y_at_least_p {
        return false;
    }
    if sign == 1 {
        let y_is_one = b[0] == 1 && b[1..31].iter().all(|&x| x == 0) && top == 0;
        let y_is_minus_one = b[0] == 0xec && b[1..31].iter().all(|&x| x == 0xff) && top == 0x7f;
        if y_is_one || y_is_minus_one {
            return false;
        }
    }
    true
}

fn canonical_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    if !canonical_encoding(bytes) {
        return None;
    }
    CompressedEdwardsY(*bytes).decompress()
}

/// Rule 2: not the identity, and `[L]P` is the identity (no small-order component).
/// Variable time: every point checked here is public.
fn prime_order(p: &EdwardsPoint) -> bool {
    !p.is_identity() && torsion_free(p)
}

/// `[L]P` is the identity: `P` has no small-order component (the identity has none).
fn torsion_free(p: &EdwardsPoint) -> bool {
    // [L]P as [L − 1]P + P: a `Scalar` cannot hold L itself, and −1 is L − 1.
    let l_minus_one_p =
        EdwardsPoint::vartime_double_scalar_mul_basepoint(&-Scalar::ONE, p, &Scalar::ZERO);
    (l_minus_one_p + p).is_identity()
}

/// Rounds of the aggregate torsion test: each lets a set with a small-order component
/// through with probability at most ½, so all of them together at most 2⁻¹²⁸.
const TORSION_ROUNDS: u32 = 128;
/// About what one `[L]P` costs in point additions (measured: 28.7 µs against 0.165 µs on
/// the 2-core machine of BENCHMARKS.md); only picks between the two ways of checking.
const ADDS_PER_L: usize = 170;

/// Additions and `[L]X` of the aggregate test over `n` points with rounds grouped `g` to a
/// bucket pass (in additions), as [`all_torsion_free`] runs it.
fn aggregate_cost(n: usize, g: u32) -> usize {
    let groups = TORSION_ROUNDS.div_ceil(g) as usize;
    let last = TORSION_ROUNDS - g * (groups as u32 - 1);
    // A pass of width w sums its buckets' halves w times, folding them as it goes
    // (`round_sums`): 2^w additions.
    let sums = (groups - 1) * (1usize << g) + (1usize << last);
    groups * n + sums + TORSION_ROUNDS as usize * ADDS_PER_L
}

/// The cheapest bucket width for `n` points, or `None` when one `[L]P` a point is cheaper.
fn aggregate_width(n: usize) -> Option<u32> {
    let (g, cost) = (2..=12)
        .map(|g| (g, aggregate_cost(n, g)))
        .min_by_key(|&(_, c)| c)?;
    (cost < n.saturating_mul(ADDS_PER_L)).then_some(g)
}

/// Whether no point of `points` has a small-order component, up to a 2⁻¹²⁸ chance of
/// answering `true` wrongly; never `false` wrongly. Draws fresh system randomness; `Err`
/// when there is none.
///
/// Each point is `Pᵢ = Qᵢ + Tᵢ`, `Qᵢ` in the prime-order subgroup and `Tᵢ` in the cyclic
/// torsion group of order 8. A round takes a fresh random subset `S` and checks
/// `[L](Σ_{i∈S} Pᵢ) = [L](Σ_{i∈S} Tᵢ)` is the identity, i.e. `Σ_{i∈S} Tᵢ = 0` (L is odd).
/// When some `Tₖ ≠ 0`, whatever the other choices, at most one of `k ∈ S` and `k ∉ S`
/// makes the sum vanish: each round passes with probability at most ½, independently.
/// (One randomly weighted sum cannot do this: it misses a point of order 2 under every
/// even weight, two points of order 2 under every pair of odd weights, `T` and `−T`
/// under equal weights modulo 8 — one time in two, or one in eight, not 2⁻¹²⁸.) The 128
/// subset sums come from bucket passes, `g` rounds a pass: each point is added into the
/// bucket its `g` random bits name, and each round's sum adds the buckets whose bit for
/// that round is set.
fn all_torsion_free(points: &[EdwardsPoint], g: u32) -> Result<bool, getrandom::Error> {
    let labels = random_u128s(points.len())?;
    let mut round = 0;
    while round < TORSION_ROUNDS {
        let width = g.min(TORSION_ROUNDS - round);
        let mask = (1u128 << width) - 1;
        let mut buckets = vec![EdwardsPoint::identity(); 1 << width];
        for (p, label) in points.iter().zip(&labels) {
            let b = ((label >> round) & mask) as usize;
            if b != 0 {
                buckets[b] += p;
            }
        }
        if !round_sums(&mut buckets).iter().all(torsion_free) {
            return Ok(false);
        }
        round += width;
    }
    Ok(true)
}

/// For buckets indexed by `w`-bit labels, the `w` round sums: for each bit, the sum of the
/// buckets whose label has it set. Bit 0's sum adds the odd buckets; then each pair that
/// differs only in bit 0 is folded into one bucket indexed by the label's other bits, and
/// the same goes on for bit 1 over half as many buckets — 2^w additions in all, where
/// summing each round's half of the buckets apart took w·2^(w−1). Consumes the buckets.
fn round_sums(buckets: &mut Vec<EdwardsPoint>) -> Vec<EdwardsPoint> {
    let mut sums = Vec::new();
    while buckets.len() > 1 {
        let mut sum = EdwardsPoint::identity();
        for odd in buckets.iter().skip(1).step_by(2) {
            sum += odd;
        }
        sums.push(sum);
        let half = buckets.len() / 2;
        for i in 0..half {
            buckets[i] = buckets[2 * i] + buckets[2 * i + 1];
        }
        buckets.truncate(half);
    }
    sums
}

/// Whether no point of `rs` has a small-order component: a yes or no, not where (the
/// aggregate test when it is the cheaper, whose `false` is never wrong; else, or without
/// system randomness, one `[L]R` each).
fn torsion_free_all(rs: &[EdwardsPoint]) -> bool {
    match aggregate_width(rs.len()).map(|g| all_torsion_free(rs, g)) {
        Some(Ok(clean)) => clean,
        _ => rs.iter().all(torsion_free),
    }
}

/// The first of `rs` with a small-order component, if any: the aggregate test for a large
/// batch (and, when it fails, one `[L]R` each up to the first offender), else one `[L]R`
/// each. The identity was refused before.
fn first_torsion(rs: &[EdwardsPoint]) -> Option<usize> {
    // A small batch, or one without system randomness: one [L]R each.
    let clean = aggregate_width(rs.len()).is_some_and(|g| all_torsion_free(rs, g).unwrap_or(false));
    if clean {
        return None;
    }
    rs.iter().position(|r| !torsion_free(r))
}

/// Checks rule 1 and 2 for a public key: what a key must satisfy to be registered.
pub fn check_key(key: &VerifyingKey) -> Result<(), SigError> {
    let p = canonical_point(key.as_bytes()).ok_or(SigError::KeyEncoding)?;
    if !prime_order(&p) {
        return Err(SigError::KeyTorsion);
    }
    Ok(())
}

/// Rules 1–3 for the signature's own parts; `R` and `S` when they hold.
fn check_signature(sig: &Signature) -> Result<(EdwardsPoint, Scalar), SigError> {
    let (r, s) = read_signature(sig)?;
    if !torsion_free(&r) {
        return Err(SigError::RTorsion);
    }
    Ok((r, s))
}

/// Rules 1–3 for the signature's own parts except `R`'s torsion, which the batch path
/// checks for all `R`s at once: rule 1 for `R`, `R` not the identity, rule 3. When `S` is
/// refused, `R`'s torsion is checked first, so the error is the one [`check_signature`]
/// gives.
fn read_signature(sig: &Signature) -> Result<(EdwardsPoint, Scalar), SigError> {
    let r = canonical_point(sig.r_bytes()).ok_or(SigError::REncoding)?;
    if r.is_identity() {
        return Err(SigError::RTorsion);
    }
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes())) else {
        if !torsion_free(&r) {
            return Err(SigError::RTorsion);
        }
        return Err(SigError::SNotCanonical);
    };
    Ok((r, s))
}

/// Checks rules 1–3 for one signature (everything except the equation).
pub fn check_structure(key: &VerifyingKey, sig: &Signature) -> Result<(), SigError> {
    check_key(key)?;
    check_signature(sig).map(|_| ())
}

/// The rule for one signature.
pub fn verify(key: &VerifyingKey, msg: &[u8], sig: &Signature) -> Result<(), SigError> {
    check_structure(key, sig)?;
    key.verify_strict(msg, sig).map_err(|_| SigError::Equation)
}

/// `k = H(R ‖ A ‖ M)` reduced mod L, as RFC 8032 defines it.
fn challenge(sig: &Signature, key: &VerifyingKey, msg: &[u8]) -> Scalar {
    let h = Sha512::new()
        .chain_update(sig.r_bytes())
        .chain_update(key.as_bytes())
        .chain_update(msg)
        .finalize();
    let mut wide = [0u8; 64];
    wide.copy_from_slice(&h);
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// `n` random 128-bit values: SHA-512 over fresh system randomness and a counter (four
/// values per hash). Fresh per call, so no one can choose signatures against them.
fn random_u128s(n: usize) -> Result<Vec<u128>, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    let mut out = Vec::with_capacity(n);
    let mut block = 0u64;
    while out.len() < n {
        let h = Sha512::new()
            .chain_update(seed)
            .chain_update(block.to_le_bytes())
            .finalize();
        for chunk in h.chunks_exact(16) {
            if out.len() == n {
                break;
            }
            let mut z = [0u8; 16];
            z.copy_from_slice(chunk);
            out.push(u128::from_le_bytes(z));
        }
        block += 1;
    }
    Ok(out)
}

/// For tests of the rule, here and in other crates: the signature by secret scalar `a`
/// (public key `[a]B`) on `msg` whose nonce point is `[r]B` plus the torsion point
/// `EIGHT_TORSION[t]` (`t` = 0: an honest signature) — how a key holder makes verifiers
/// that differ on rule 2 disagree. Nothing in the system signs this way.
#[doc(hidden)]
pub fn sign_with_torsion_in_r(a: &Scalar, r: &Scalar, t: usize, msg: &[u8]) -> [u8; 64] {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    let big_a = (ED25519_BASEPOINT_POINT * a).compress().to_bytes();
    let big_r = (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[t % 8])
        .compress()
        .to_bytes();
    sign_over(a, &big_a, r, &big_r, msg)
}

/// For tests of the rule: `S = r + k·a` with `k = H(R ‖ A ‖ M)` over the key bytes `a_bytes`
/// and the nonce point bytes `r_bytes` as given (any point, any encoding), the signature
/// `R ‖ S`. Nothing in the system signs this way.
#[doc(hidden)]
pub fn sign_over(
    a: &Scalar,
    a_bytes: &[u8; 32],
    r: &Scalar,
    r_bytes: &[u8; 32],
    msg: &[u8],
) -> [u8; 64] {
    let k = Scalar::from_hash(
        Sha512::new()
            .chain_update(r_bytes)
            .chain_update(a_bytes)
            .chain_update(msg),
    );
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(r_bytes);
    sig[32..].copy_from_slice((r + k * a).as_bytes());
    sig
}

/// For tests: the secret scalar of an ed25519-dalek signing key made from `seed` (SHA-512
/// of the seed, its lower half clamped), which [`sign_with_torsion_in_r`] signs with.
#[doc(hidden)]
pub fn secret_scalar(seed: &[u8; 32]) -> Scalar {
    let h = Sha512::digest(seed);
    let mut lower = [0u8; 32];
    lower.copy_from_slice(&h[..32]);
    lower[0] &= 248;
    lower[31] &= 127;
    lower[31] |= 64;
    Scalar::from_bytes_mod_order(lower)
}

/// Random 128-bit batch weights, one per item ([`random_u128s`]).
fn weights(n: usize) -> Result<Vec<Scalar>, getrandom::Error> {
    Ok(random_u128s(n)?.into_iter().map(Scalar::from).collect())
}

/// The rule for many signatures (each with its own key): `Ok` exactly when [`verify`]
/// accepts every item; otherwise the index of the first item it refuses, with why.
///
/// Rules 1–3 are checked per item, each distinct key once per run of equal keys (a batch
/// from one source has one key), the torsion of the `R`s all at once when the batch is
/// large enough for that to be cheaper ([`all_torsion_free`], from 166 items). The
/// equation is checked for all items at once:
/// `[−Σ zᵢSᵢ]B + Σ zᵢRᵢ + Σ_keys [Σ zᵢkᵢ]A = 0` with fresh random 128-bit `zᵢ`, one
/// multiscalar multiplication over the `R`s, one point per run of equal keys and `B`,
/// reusing the points decompressed for rules 1–2. With every point in the prime-order
/// subgroup this holds exactly when each cofactorless equation holds, up to a 2⁻¹²⁸ chance
/// (and that premise, for the `R`s of a large batch, up to another).
pub fn verify_batch(
    msgs: &[&[u8]],
    sigs: &[Signature],
    keys: &[VerifyingKey],
) -> Result<(), (usize, SigError)> {
    verify_batch_inner(msgs, sigs, keys, None)
}

/// [`verify_batch`] leaving the torsion test of the `R`s to be done later, together with
/// other batches' ([`TorsionDebt::settle`]): the test's fixed cost (128 `[L]X`, 2.7 ms
/// on the machine of BENCHMARKS.md) is then paid once for all of them. An `Err` is
/// final, exactly as [`verify_batch`] answers it. `Ok` holds only when the `R`s this call
/// added to `debt` turn out torsion-free; when they do not, the batch must be judged
/// again with [`verify_batch`], which names the first item refused. (With a torsion `R`
/// in the batch, the batch equation may pass or fail whatever the other items: only the
/// exact path's verdict counts then.) Whenever an item is malformed or the equation
/// fails, the answer comes from the exact path and nothing is added to `debt`.
pub fn verify_batch_deferring(
    msgs: &[&[u8]],
    sigs: &[Signature],
    keys: &[VerifyingKey],
    debt: &mut TorsionDebt,
) -> Result<(), (usize, SigError)> {
    verify_batch_inner(msgs, sigs, keys, Some(debt))
}

/// `R` points whose torsion is still to be checked ([`verify_batch_deferring`]).
#[derive(Debug, Default)]
pub struct TorsionDebt {
    rs: Vec<EdwardsPoint>,
}

impl TorsionDebt {
    /// No points.
    pub fn new() -> TorsionDebt {
        TorsionDebt::default()
    }

    /// How many points wait for the test.
    pub fn len(&self) -> usize {
        self.rs.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.rs.is_empty()
    }

    /// Whether each debt's points are all torsion-free (and `true` for an empty one), up
    /// to a 2⁻¹²⁸ chance for each of answering `true` wrongly; never `false` wrongly.
    /// One aggregate test over all the points first; only when it fails, each debt on its
    /// own (so a batch carrying a torsion `R` costs the others it was settled with one
    /// more test each, not a wrong verdict).
    pub fn settle(debts: &[&TorsionDebt]) -> Vec<bool> {
        let total: usize = debts.iter().map(|d| d.len()).sum();
        let all_clean = match aggregate_width(total) {
            Some(g) => {
                let all: Vec<EdwardsPoint> =
                    debts.iter().flat_map(|d| d.rs.iter().copied()).collect();
                all_torsion_free(&all, g).unwrap_or(false)
            }
            None => false,
        };
        if all_clean {
            return vec![true; debts.len()];
        }
        debts.iter().map(|d| torsion_free_all(&d.rs)).collect()
    }
}

fn verify_batch_inner(
    msgs: &[&[u8]],
    sigs: &[Signature],
    keys: &[VerifyingKey],
    debt: Option<&mut TorsionDebt>,
) -> Result<(), (usize, SigError)> {
    debug_assert!(msgs.len() == sigs.len() && sigs.len() == keys.len());
    let n = msgs.len().min(sigs.len()).min(keys.len());
    if n == 0 {
        return Ok(());
    }
    let mut rs = Vec::with_capacity(n);
    let mut ss = Vec::with_capacity(n);
    // Runs of equal keys: (first index, the key's point).
    let mut runs: Vec<(usize, EdwardsPoint)> = Vec::new();
    // The first item breaking rules 1–3, if any. The items before it must still pass
    // their equations before it is named: `verify` judges item by item, so an earlier
    // item failing only its equation is the first refused, and callers take every item
    // before the one named as verified.
    let mut malformed = None;
    for i in 0..n {
        let new_run = runs
            .last()
            .is_none_or(|&(j, _)| keys[j].as_bytes() != keys[i].as_bytes());
        if new_run {
            if let Err(e) = check_key(&keys[i]) {
                malformed = Some((i, e));
                break;
            }
            runs.push((i, keys[i].to_edwards()));
        }
        match read_signature(&sigs[i]) {
            Ok((r, s)) => {
                rs.push(r);
                ss.push(s);
            }
            Err(e) => {
                malformed = Some((i, e));
                break;
            }
        }
    }
    let mut checked = malformed.map_or(n, |(i, _)| i);
    if malformed.is_none()
        && let Some(debt) = debt
    {
        equations_hold(msgs, sigs, keys, n, &rs, &ss, &runs)?;
        debt.rs.append(&mut rs);
        return Ok(());
    }
    // Rule 2 for the `R`s read so far; one with a small-order component comes before the
    // item that stopped the reading.
    if let Some(i) = first_torsion(&rs[..checked]) {
        malformed = Some((i, SigError::RTorsion));
        checked = i;
    }
    equations_hold(msgs, sigs, keys, checked, &rs, &ss, &runs)?;
    match malformed {
        Some(fault) => Err(fault),
        None => Ok(()),
    }
}

/// The batch equation over the first `n` items, whose points and scalars rules 1–3 gave
/// (`rs`, `ss`, and `runs` of equal keys starting at or before `n`); when it fails, the
/// first item whose own equation fails.
fn equations_hold(
    msgs: &[&[u8]],
    sigs: &[Signature],
    keys: &[VerifyingKey],
    n: usize,
    rs: &[EdwardsPoint],
    ss: &[Scalar],
    runs: &[(usize, EdwardsPoint)],
) -> Result<(), (usize, SigError)> {
    if n == 0 {
        return Ok(());
    }
    let runs: Vec<(usize, EdwardsPoint)> = runs.iter().copied().filter(|&(j, _)| j < n).collect();
    let Ok(zs) = weights(n) else {
        // No system randomness: fall back to one equation at a time.
        return one_by_one(msgs, sigs, keys, n);
    };
    let mut b_coefficient = Scalar::ZERO;
    let mut a_coefficients = Vec::with_capacity(runs.len());
    for (r, &(start, _)) in runs.iter().enumerate() {
        let end = runs.get(r + 1).map_or(n, |&(j, _)| j);
        let mut a = Scalar::ZERO;
        for i in start..end {
            a += zs[i] * challenge(&sigs[i], &keys[i], msgs[i]);
            b_coefficient += zs[i] * ss[i];
        }
        a_coefficients.push(a);
    }
    let sum = EdwardsPoint::vartime_multiscalar_mul(
        std::iter::once(-b_coefficient)
            .chain(zs.iter().copied())
            .chain(a_coefficients),
        std::iter::once(curve25519_dalek::constants::ED25519_BASEPOINT_POINT)
            .chain(rs[..n].iter().copied())
            .chain(runs.iter().map(|&(_, a)| a)),
    );
    if sum.is_identity() {
        return Ok(());
    }
    one_by_one(msgs, sigs, keys, n)
}

/// Each item with [`verify`], to name the first one refused.
fn one_by_one(
    msgs: &[&[u8]],
    sigs: &[Signature],
    keys: &[VerifyingKey],
    n: usize,
) -> Result<(), (usize, SigError)> {
    for i in 0..n {
        verify(&keys[i], msgs[i], &sigs[i]).map_err(|e| (i, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::Sha512;

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

    #[test]
    fn runs_of_one_key_are_checked_as_one_and_a_bad_item_is_named() {
        let (k1, k2) = (key(21), key(22));
        let owners = [&k1, &k1, &k1, &k2, &k2, &k1, &k1];
        let msgs: Vec<Vec<u8>> = (0..owners.len()).map(|i| vec![i as u8; 20]).collect();
        let sigs: Vec<Signature> = owners.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
        let vks: Vec<VerifyingKey> = owners.iter().map(|k| k.verifying_key()).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        assert_eq!(verify_batch(&refs, &sigs, &vks), Ok(()));
        for bad in 0..owners.len() {
            // Signed by the other key: every part well-formed, only the equation fails.
            let mut swapped = sigs.clone();
            let other = if std::ptr::eq(owners[bad], &k1) {
                &k2
            } else {
                &k1
            };
            swapped[bad] = other.sign(&msgs[bad]);
            assert_eq!(
                verify_batch(&refs, &swapped, &vks),
                Err((bad, SigError::Equation))
            );
            // The same message under another item's signature.
            let mut moved = sigs.clone();
            moved[bad] = sigs[(bad + 1) % sigs.len()];
            assert!(verify_batch(&refs, &moved, &vks).is_err());
        }
        assert_eq!(verify_batch(&[], &[], &[]), Ok(()));
    }

    /// A batch large enough for the aggregate torsion test: `n` honest signatures by one
    /// prime-order key (nonces `[r]B`), with their messages.
    fn large_batch(n: usize) -> (Scalar, Vec<Vec<u8>>, Vec<Signature>, Vec<VerifyingKey>) {
        let a = Scalar::from(4242u64);
        let mut msgs = Vec::new();
        let mut sigs = Vec::new();
        let mut vks = Vec::new();
        for i in 0..n {
            let msg = format!("entry {i}").into_bytes();
            let (vk, sig) = forged(a, 0, Scalar::from(1000 + i as u64), 0, &msg);
            msgs.push(msg);
            sigs.push(sig);
            vks.push(vk);
        }
        (a, msgs, sigs, vks)
    }

    #[test]
    fn large_batches_take_the_aggregate_torsion_test_and_small_ones_do_not() {
        assert_eq!(aggregate_width(1), None);
        assert_eq!(aggregate_width(64), None);
        assert!(aggregate_width(256).is_some(), "verify's batches of 256");
        assert!(aggregate_width(500).is_some());
        assert!(
            aggregate_width(1000).is_some(),
            "the agents' batches of 1,000"
        );
        // Cheaper than one [L]P a point wherever it is chosen.
        for n in [200, 256, 500, 4096] {
            if let Some(g) = aggregate_width(n) {
                assert!(aggregate_cost(n, g) < n * ADDS_PER_L);
            }
        }
    }

    #[test]
    fn round_sums_add_the_buckets_whose_label_has_each_bit() {
        for width in 1..=5u32 {
            let buckets: Vec<EdwardsPoint> = (0..1u64 << width)
                .map(|b| ED25519_BASEPOINT_POINT * Scalar::from(b * b + 3))
                .collect();
            let naive: Vec<EdwardsPoint> = (0..width)
                .map(|bit| {
                    buckets
                        .iter()
                        .enumerate()
                        .filter(|(b, _)| (b >> bit) & 1 == 1)
                        .fold(EdwardsPoint::identity(), |acc, (_, p)| acc + p)
                })
                .collect();
            assert_eq!(round_sums(&mut buckets.clone()), naive, "width {width}");
        }
    }

    /// `n` honest items by one key with a torsion `R` (torsion point `t`) at `at`, if any.
    fn batch_with(n: usize, torsion: Option<(usize, usize)>, seed: u64) -> Batch {
        let a = Scalar::from(4242u64 + seed);
        let mut msgs = Vec::new();
        let mut sigs = Vec::new();
        let mut vks = Vec::new();
        for i in 0..n {
            let msg = format!("batch {seed} entry {i}").into_bytes();
            let t = torsion.filter(|&(at, _)| at == i).map_or(0, |(_, t)| t);
            let (vk, sig) = forged(a, 0, Scalar::from(1000 + seed * 7919 + i as u64), t, &msg);
            msgs.push(msg);
            sigs.push(sig);
            vks.push(vk);
        }
        Batch { msgs, sigs, vks }
    }

    struct Batch {
        msgs: Vec<Vec<u8>>,
        sigs: Vec<Signature>,
        vks: Vec<VerifyingKey>,
    }

    impl Batch {
        fn deferring(&self, debt: &mut TorsionDebt) -> Result<(), (usize, SigError)> {
            let refs: Vec<&[u8]> = self.msgs.iter().map(Vec::as_slice).collect();
            verify_batch_deferring(&refs, &self.sigs, &self.vks, debt)
        }

        fn exact(&self) -> Result<(), (usize, SigError)> {
            let refs: Vec<&[u8]> = self.msgs.iter().map(Vec::as_slice).collect();
            verify_batch(&refs, &self.sigs, &self.vks)
        }
    }

    #[test]
    fn honest_batches_deferred_settle_clean_together_and_alone() {
        let mut debts = Vec::new();
        for (seed, n) in [(1, 300), (2, 20), (3, 1)] {
            let mut debt = TorsionDebt::new();
            assert_eq!(batch_with(n, None, seed).deferring(&mut debt), Ok(()));
            assert_eq!(debt.len(), n);
            debts.push(debt);
        }
        let refs: Vec<&TorsionDebt> = debts.iter().collect();
        assert_eq!(TorsionDebt::settle(&refs), vec![true, true, true]);
        assert_eq!(TorsionDebt::settle(&refs[1..2]), vec![true]);
        assert_eq!(TorsionDebt::settle(&[]), Vec::<bool>::new());
        assert_eq!(TorsionDebt::settle(&[&TorsionDebt::new()]), vec![true]);
    }

    /// A torsion `R` passes the batch equation whenever its weight kills the torsion (a
    /// point of order 2 under an even weight: one time in two). Then only the settled debt
    /// refuses it — only that batch's, whatever it was settled with — and the exact path
    /// names the item, as it does when the equation fails at once.
    #[test]
    fn a_torsion_r_fails_only_its_own_debt_every_time_and_the_exact_path_names_it() {
        let (mut deferred, mut at_once) = (0, 0);
        for round in 0..40u64 {
            let at = (round as usize * 37) % 300;
            let bad = batch_with(300, Some((at, 4)), 100 + round);
            let mut debt = TorsionDebt::new();
            match bad.deferring(&mut debt) {
                Ok(()) => {
                    deferred += 1;
                    let mut honest = Vec::new();
                    for seed in [200 + round, 300 + round] {
                        let mut d = TorsionDebt::new();
                        assert_eq!(batch_with(150, None, seed).deferring(&mut d), Ok(()));
                        honest.push(d);
                    }
                    assert_eq!(
                        TorsionDebt::settle(&[&honest[0], &debt, &honest[1]]),
                        vec![true, false, true],
                        "round {round}"
                    );
                    assert_eq!(TorsionDebt::settle(&[&debt]), vec![false]);
                }
                Err(e) => {
                    at_once += 1;
                    assert_eq!(e, (at, SigError::RTorsion), "round {round}");
                    assert!(debt.is_empty(), "a refusal leaves no debt");
                }
            }
            assert_eq!(bad.exact(), Err((at, SigError::RTorsion)), "round {round}");
        }
        // Both ways were taken (each has a chance of 2⁻⁴⁰ of never happening).
        assert!(
            deferred > 0 && at_once > 0,
            "{deferred} deferred, {at_once} at once"
        );
    }

    /// `T` in one batch and `−T` in another cancel in a plain sum of both debts; the
    /// subset sums of the aggregate test still find each, every time.
    #[test]
    fn torsion_that_cancels_across_debts_is_still_found_in_each() {
        // Points of order 2 and 4: both equations pass about one time in 4 to 16.
        let (mut found, mut round) = (0, 0u64);
        while found < 4 && round < 1000 {
            round += 1;
            let t = [4, 2, 6][(round % 3) as usize];
            let x = batch_with(200, Some((5, t)), 1000 + round);
            let y = batch_with(200, Some((150, 8 - t)), 2000 + round);
            let (mut dx, mut dy) = (TorsionDebt::new(), TorsionDebt::new());
            if x.deferring(&mut dx).is_err() || y.deferring(&mut dy).is_err() {
                continue;
            }
            found += 1;
            assert_eq!(
                TorsionDebt::settle(&[&dx, &dy]),
                vec![false, false],
                "T[{t}]"
            );
        }
        assert_eq!(
            found, 4,
            "too few rounds had both batches pass their equations"
        );
    }

    /// A malformed item or a failed equation answers at once, exactly, and adds nothing.
    #[test]
    fn a_refusal_on_the_deferring_path_is_the_exact_one() {
        let b = batch_with(300, None, 7);
        let refs: Vec<&[u8]> = b.msgs.iter().map(Vec::as_slice).collect();
        let mut moved = b.sigs.clone();
        moved.swap(10, 11);
        let mut debt = TorsionDebt::new();
        assert_eq!(
            verify_batch_deferring(&refs, &moved, &b.vks, &mut debt),
            verify_batch(&refs, &moved, &b.vks)
        );
        assert!(debt.is_empty());
        let mut high_s = b.sigs.clone();
        let mut bytes = high_s[40].to_bytes();
        bytes[63] |= 0xf0;
        high_s[40] = Signature::from_bytes(&bytes);
        assert_eq!(
            verify_batch_deferring(&refs, &high_s, &b.vks, &mut debt),
            Err((40, SigError::SNotCanonical))
        );
        assert!(debt.is_empty());
    }

    #[test]
    fn torsion_in_any_r_of_a_large_batch_is_named_every_time() {
        let n = 260;
        assert!(aggregate_width(n).is_some());
        let (a, msgs, sigs, vks) = large_batch(n);
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        assert_eq!(verify_batch(&refs, &sigs, &vks), Ok(()));
        for (t, at) in [
            (4, 0),
            (4, 259),
            (1, 130),
            (2, 7),
            (6, 200),
            (7, 258),
            (3, 1),
        ] {
            let mut bad = sigs.clone();
            let (_, sig) = forged(a, 0, Scalar::from(77u64 + at as u64), t, &msgs[at]);
            bad[at] = sig;
            assert_eq!(
                verify_batch(&refs, &bad, &vks),
                Err((at, SigError::RTorsion)),
                "torsion point {t} at item {at}"
            );
        }
    }

    #[test]
    fn torsion_that_cancels_under_any_odd_weight_is_still_named() {
        // T and −T, and two points of order 2: each pair sums to no torsion at all, so a
        // weighted sum misses them whenever the weights agree modulo the order (two points
        // of order 2: under any odd weights).
        let n = 300;
        let (a, msgs, sigs, vks) = large_batch(n);
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        for (t1, t2) in [(4, 4), (1, 7), (2, 6), (3, 5)] {
            for (i, j) in [(10, 11), (40, 290), (0, 299)] {
                let mut bad = sigs.clone();
                bad[i] = forged(a, 0, Scalar::from(5u64 + i as u64), t1, &msgs[i]).1;
                bad[j] = forged(a, 0, Scalar::from(9u64 + j as u64), t2, &msgs[j]).1;
                assert_eq!(
                    verify_batch(&refs, &bad, &vks),
                    Err((i, SigError::RTorsion)),
                    "torsion {t1} at {i} and {t2} at {j}"
                );
            }
        }
    }

    #[test]
    fn a_large_batch_names_the_first_refusal_whatever_its_kind() {
        let n = 280;
        let (a, msgs, sigs, vks) = large_batch(n);
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        // An equation that fails (another message's signature) before a torsion R: the
        // equation is named, as single verification, item by item, would.
        let mut bad = sigs.clone();
        bad[20] = sigs[21];
        bad[100] = forged(a, 0, Scalar::from(3u64), 4, &msgs[100]).1;
        assert_eq!(
            verify_batch(&refs, &bad, &vks),
            Err((20, SigError::Equation))
        );
        // A torsion R before an S ≥ L: the R is named.
        let mut bad = sigs.clone();
        bad[30] = forged(a, 0, Scalar::from(3u64), 2, &msgs[30]).1;
        let mut bytes = sigs[31].to_bytes();
        bytes[63] |= 0xf0;
        bad[31] = Signature::from_bytes(&bytes);
        assert_eq!(
            verify_batch(&refs, &bad, &vks),
            Err((30, SigError::RTorsion))
        );
        // One item with both a torsion R and S ≥ L: its R is named, as `verify` names it.
        let mut both = forged(a, 0, Scalar::from(3u64), 1, &msgs[50]).1.to_bytes();
        both[63] |= 0xf0;
        let mut bad = sigs.clone();
        bad[50] = Signature::from_bytes(&both);
        assert_eq!(
            verify(&vks[50], &msgs[50], &bad[50]),
            Err(SigError::RTorsion)
        );
        assert_eq!(
            verify_batch(&refs, &bad, &vks),
            Err((50, SigError::RTorsion))
        );
        // The identity as R: no torsion, but rule 2 refuses it.
        let mut id = sigs[60].to_bytes();
        id[..32].copy_from_slice(&EdwardsPoint::identity().compress().to_bytes());
        let mut bad = sigs.clone();
        bad[60] = Signature::from_bytes(&id);
        assert_eq!(
            verify_batch(&refs, &bad, &vks),
            Err((60, SigError::RTorsion))
        );
    }

    /// Rule 1 as it was first written: decompress, compress again, compare.
    fn canonical_by_round_trip(b: &[u8; 32]) -> bool {
        CompressedEdwardsY(*b)
            .decompress()
            .is_some_and(|p| p.compress().as_bytes() == b)
    }

    /// Byte strings at the edges of rule 1: y = 0, ±1, p − 1, p, p + 1 … 2²⁵⁵ − 1, with and
    /// without the sign bit, and the eight small-order points' encodings.
    fn edge_encodings() -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        let p_minus = |low: u8| {
            let mut b = [0xffu8; 32];
            b[0] = low;
            b[31] = 0x7f;
            b
        };
        let mut ys = vec![[0u8; 32], {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        }];
        for low in 0xe0..=0xff {
            ys.push(p_minus(low));
        }
        for y in ys {
            out.push(y);
            let mut signed = y;
            signed[31] |= 0x80;
            out.push(signed);
        }
        for t in EIGHT_TORSION {
            out.push(t.compress().to_bytes());
        }
        out
    }

    #[test]
    fn the_byte_rule_for_canonical_encodings_agrees_with_the_round_trip_at_the_edges() {
        for b in edge_encodings() {
            assert_eq!(
                canonical_point(&b).is_some(),
                canonical_by_round_trip(&b),
                "{}",
                hex::encode(b)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_byte_rule_for_canonical_encodings_agrees_with_the_round_trip(
            b in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            top in 0u8..4,
        ) {
            let mut b = b;
            // Push a quarter of the cases next to p, where the rule has its edge.
            if top == 0 {
                b[1..31].fill(0xff);
                b[31] |= 0x7f;
            }
            proptest::prop_assert_eq!(canonical_point(&b).is_some(), canonical_by_round_trip(&b));
        }

        #[test]
        fn the_aggregate_torsion_test_agrees_with_one_check_a_point(
            n in 150usize..400,
            seed in proptest::prelude::any::<u64>(),
            torsion in proptest::collection::vec((0usize..400, 1usize..8), 0..3),
        ) {
            let mut points: Vec<EdwardsPoint> = (0..n)
                .map(|i| ED25519_BASEPOINT_POINT * Scalar::from(seed.wrapping_add(i as u64)))
                .collect();
            for &(at, t) in &torsion {
                points[at % n] += EIGHT_TORSION[t];
            }
            let clean = points.iter().all(torsion_free);
            for g in [2, 5, 8] {
                proptest::prop_assert_eq!(all_torsion_free(&points, g).ok(), Some(clean));
            }
            proptest::prop_assert_eq!(first_torsion(&points), points.iter().position(|p| !torsion_free(p)));
        }

        #[test]
        fn prime_order_agrees_with_the_library_checks(
            a in proptest::prelude::any::<u64>(),
            t in 0usize..8,
        ) {
            let p = ED25519_BASEPOINT_POINT * Scalar::from(a) + EIGHT_TORSION[t];
            proptest::prop_assert_eq!(
                prime_order(&p),
                !p.is_small_order() && p.is_torsion_free()
            );
        }
    }
}
