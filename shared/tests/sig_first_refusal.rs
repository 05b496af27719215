//! `verify_batch` names the first item `verify` refuses, whatever the fault: an item whose
//! only fault is its equation comes before a later malformed item (S ≥ L), because callers
//! take every item before the one named as verified (found by an outside attack: the batch
//! path once checked rules 1–3 for every item before any equation).

use ed25519_dalek::{Signer, SigningKey};
use spacesync_shared::sig::{self, SigError};

#[test]
fn the_batch_names_the_first_item_single_verification_refuses() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[8; 32]);
    let vk = key.verifying_key();
    let (m0, m1): (&[u8], &[u8]) = (b"entry 0", b"entry 1");
    // Item 0: well-formed (prime-order R, S < L) but signed by another key.
    let s0 = other.sign(m0);
    // Item 1: S >= L.
    let mut b1 = key.sign(m1).to_bytes();
    b1[32..].fill(0xff);
    let s1 = ed25519_dalek::Signature::from_bytes(&b1);

    let single: Vec<_> = [(m0, s0), (m1, s1)]
        .iter()
        .map(|(m, s)| sig::verify(&vk, m, s))
        .collect();
    assert_eq!(
        single,
        vec![Err(SigError::Equation), Err(SigError::SNotCanonical)]
    );
    assert_eq!(
        sig::verify_batch(&[m0, m1], &[s0, s1], &[vk, vk]),
        Err((0, SigError::Equation)),
        "the batch must name item 0, the first one `verify` refuses"
    );
}
