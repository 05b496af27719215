//! spacesync-shared: the record model, validation, signing, hashing and wire types that
//! the agent and the hub both use. Pure code: no network, no database, no clock reads
//! outside [`clock`], and no file access outside [`keys`].
//!
//! # Layout
//! - [`region`]: GB/T 2260 region codes, school codes, the 32 provincial units, scope checks.
//! - [`record`]: the five record kinds and the strict reader that names every bad field.
//! - [`batch`]: JSON / NDJSON / CSV batches, with the position of every problem.
//! - [`validate`]: checks that need context (scope, today, campaign, seq).
//! - [`campaign`]: the campaign TOML file (milestones, targets, quotas, units, schedules).
//! - [`quota`]: nomination quotas and the quota ledger, the one quota check.
//! - [`dsse`]: DSSE envelopes with Ed25519, and SHA-256 digests.
//! - [`sig`]: the one Ed25519 validity rule (single and batch paths agree).
//! - [`entry`]: signed, hash-chained entries and batch signature verification.
//! - [`chain`]: the one chain verifier (seq continuity, `prev`, gaps, forks, resends, the
//!   key in force at each seq, scope), used by hub ingest, both `verify` commands and tests.
//! - [`merkle`]: RFC 9162 Merkle tree hashing, proofs and signed checkpoints.
//! - [`cosign`]: witness cosignatures on checkpoints (C2SP tlog-cosignature).
//! - [`evidence`]: the dispute evidence file (entry, receipt, inclusion proof, cosigned
//!   checkpoint) and its offline verification.
//! - [`json`]: JSON parsing that refuses duplicate keys.
//! - [`keys`]: key files and the public-key line.
//! - [`bundle`]: the offline transfer bundle and the receipts file that answers it.
//! - [`wire`]: ingest batches, receipts, refusals, signed requests.
//! - [`admin`]: the hub's admin API on the wire (shared by the hub and its CLI client),
//!   enrolment codes and the enrolling agent's proof.
//! - [`retry`]: the one retry policy — capped exponential backoff with full jitter,
//!   `Retry-After` as a floor — as pure arithmetic both agent and hub wait by.
//! - [`clock`]: the clock trait and its implementations.
//!
//! And [`err_chain`], the one-line form of an error and its sources that both binaries
//! print last.

pub mod admin;
pub mod batch;
pub mod bundle;
pub mod campaign;
pub mod chain;
pub mod clock;
pub mod cosign;
pub mod dsse;
pub mod entry;
pub mod evidence;
pub mod json;
pub mod keys;
pub mod merkle;
pub mod out;
pub mod quota;
pub mod record;
pub mod region;
pub mod retry;
pub mod sig;
pub mod validate;
pub mod wire;
pub mod witness_policy;

pub use campaign::Campaign;
pub use dsse::{Digest, Envelope};
pub use entry::{Entry, SourceId};
pub use record::Record;
pub use region::RegionCode;

/// An error with its sources, on one line: each source is added only when its words are
/// not already in the message (most errors wrap their source transparently).
pub fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
