//! One signature rule from ingest to `verify`: a key holder who signs entries with a
//! torsion-carrying R, a non-canonical S, or a damaged signature gets the same verdict from
//! the hub's ingest (batch fast path), the shared chain verifier the agent uses, the single
//! path, and `verify` over the resulting log — which never reports damage for anything
//! ingest accepted.

mod common;

use common::*;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::Signature;
use proptest::prelude::*;
use spacesync_hub::maintenance;
use spacesync_shared::Envelope;
use spacesync_shared::chain::ChainVerifier;
use spacesync_shared::dsse::pae;
use spacesync_shared::wire::IngestBatch;

/// How the next entry's signature is made.
#[derive(Debug, Clone, Copy)]
enum Sig {
    /// An honest signature.
    Honest,
    /// R = [r]B + T[t]: a small-order component the bare batch check may miss.
    Torsion(usize),
    /// S + L: the same residue, a non-canonical encoding.
    SPlusL,
    /// One bit of the signature flipped.
    Flip(usize),
}

fn sig_strategy() -> impl Strategy<Value = Sig> {
    prop_oneof![
        3 => Just(Sig::Honest),
        3 => (1usize..8).prop_map(Sig::Torsion),
        1 => Just(Sig::SPlusL),
        1 => (0usize..512).prop_map(Sig::Flip),
    ]
}

use spacesync_shared::sig::secret_scalar;

fn signed(env: &Envelope, seed: &[u8; 32], how: Sig, nonce: u64) -> Envelope {
    let mut out = env.clone();
    let msg = pae(&env.payload_type, &env.payload);
    let bytes: [u8; 64] = match how {
        Sig::Honest => return out,
        Sig::Torsion(t) => {
            let r = Scalar::from(nonce.wrapping_mul(0x9E37_79B9) | 1);
            spacesync_shared::sig::sign_with_torsion_in_r(&secret_scalar(seed), &r, t, &msg)
        }
        Sig::SPlusL => {
            let mut b: [u8; 64] = env.signatures[0]
                .sig
                .as_slice()
                .try_into()
                .unwrap_or_else(|_| panic!("64-byte signature"));
            let l = hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
                .unwrap_or_else(|e| panic!("{e}"));
            let mut carry = 0u16;
            for i in 0..32 {
                let v = b[32 + i] as u16 + l[i] as u16 + carry;
                b[32 + i] = v as u8;
                carry = v >> 8;
            }
            b
        }
        Sig::Flip(bit) => {
            let mut b: [u8; 64] = env.signatures[0]
                .sig
                .as_slice()
                .try_into()
                .unwrap_or_else(|_| panic!("64-byte signature"));
            b[bit / 8] ^= 1 << (bit % 8);
            b
        }
    };
    out.signatures[0].sig = bytes.to_vec();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn ingest_agent_chain_single_path_and_verify_agree(plan in proptest::collection::vec(sig_strategy(), 1..24)) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let hub = TestHub::open(dir.path());
        let seed = [23u8; 32];
        let mut agent = Agent::new("gd-rrt", 23, "440000");
        hub.register(&agent);
        let vk = agent.key.verifying_key();
        let mut chain = ChainVerifier::new(agent.id.clone(), vk, agent.scope, "2018");
        let mut accepted = 0u64;
        for (i, how) in plan.iter().enumerate() {
            let rec = teachers("440106", &format!("44010600{:02}", i % 90), "2018-11-20", i as u64 + 1);
            let honest = agent.entry(&rec).sign(&agent.key);
            let env = signed(&honest, &seed, *how, i as u64);
            let single = spacesync_shared::sig::verify(
                &vk,
                &pae(&env.payload_type, &env.payload),
                &Signature::from_slice(&env.signatures[0].sig).unwrap_or_else(|e| panic!("{e}")),
            )
            .is_ok();
            let mut trial = chain.clone();
            let agent_side = trial.push(&env).is_ok();
            let out = hub
                .hub
                .ingest(IngestBatch { source: agent.id.clone(), entries: vec![env.clone()] })
                .unwrap_or_else(|e| panic!("{e}"));
            let hub_side = out.status == 200 && out.appended == 1;
            prop_assert_eq!(single, agent_side, "entry {} ({:?}): single vs agent chain", i, how);
            prop_assert_eq!(single, hub_side, "entry {} ({:?}): single vs ingest: {:?}", i, how, out.response);
            prop_assert_eq!(single, matches!(how, Sig::Honest), "entry {} ({:?})", i, how);
            if hub_side {
                chain = trial;
                agent.advance(&env);
                accepted += 1;
            } else {
                prop_assert_eq!(hub.source_leaves(), accepted, "a refused entry changed the log");
            }
        }
        let report = maintenance::verify(hub.hub.store.as_ref(), &hub_key().verifying_key(), ORIGIN, |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        prop_assert!(report.ok(), "verify found damage in what ingest accepted: {:?}", report.problems);
        prop_assert_eq!(hub.source_leaves(), accepted);
    }
}

/// A batch that mixes honest entries with one torsion-carrying entry is refused at that
/// entry, every time (the bare batch check would accept it about half the time for T[4]):
/// the entries before it are held, it and those after are not.
#[test]
fn a_torsion_entry_inside_an_honest_batch_is_refused_every_time() {
    for round in 0..16u64 {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let hub = TestHub::open(dir.path());
        let seed = [23u8; 32];
        let mut agent = Agent::new("gd-rrt", 23, "440000");
        hub.register(&agent);
        let mut entries = Vec::new();
        for i in 0..5u64 {
            let rec = teachers("440106", &format!("440106000{i}"), "2018-11-20", i + 1);
            let env = agent.entry(&rec).sign(&agent.key);
            let env = if i == 3 {
                signed(&env, &seed, Sig::Torsion(4), round)
            } else {
                env
            };
            agent.advance(&env);
            entries.push(env);
        }
        let out = hub
            .hub
            .ingest(IngestBatch {
                source: agent.id.clone(),
                entries,
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status, 422, "round {round}: {:?}", out.response);
        // The entries before it are held; the torsion entry and those after it are not.
        assert_eq!(hub.source_leaves(), 3, "round {round}");
        assert_eq!(
            out.response.refused.first().and_then(|r| r.seq),
            Some(4),
            "round {round}: {:?}",
            out.response
        );
        let report = maintenance::verify(
            hub.hub.store.as_ref(),
            &hub_key().verifying_key(),
            ORIGIN,
            |_| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(report.ok(), "{:?}", report.problems);
    }
}
