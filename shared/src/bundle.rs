//! The offline transfer bundle, for agents on networks that cannot reach the hub.
//!
//! `spacesync-agent export-bundle FILE` writes a [`Bundle`]: the source's unsent entries,
//! already signed, in batches the hub accepts, and what the agent believes (its chain
//! head, the seq it holds receipts through). Carried to the hub by hand, `spacesync-hub
//! import-bundle FILE --receipts OUT` ingests each batch through the hub's one ingest path
//! (the same checks, idempotency and receipts as `POST /v1/ingest`) and writes
//! [`BundleReceipts`]: the hub's answer to each batch, signed receipts included. Carried
//! back, `spacesync-agent import-receipts OUT` verifies them with the hub key and marks the
//! entries delivered, as the pusher does with an answer it received.
//!
//! Nothing in a bundle is trusted for being in a bundle: every entry carries the source's
//! signature and every receipt the hub's, so a bundle altered on the way is refused entry
//! by entry, and one imported twice only yields the same receipts again.

use serde::{Deserialize, Serialize};

use crate::dsse::Digest;
use crate::entry::SourceId;
use crate::wire::{IngestBatch, IngestResponse};

/// The `format` of a bundle file.
pub const BUNDLE_FORMAT: &str = "spacesync-bundle-1";
/// The `format` of a receipts file.
pub const RECEIPTS_FORMAT: &str = "spacesync-bundle-receipts-1";

/// What an agent exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The source every batch is from.
    pub source: SourceId,
    /// The agent's chain head when it exported (last seq, and its payload hash).
    pub head_seq: u64,
    /// SHA-256 of the head entry's payload (zeros when none).
    pub head_hash: Digest,
    /// The seq the agent held hub receipts through when it exported.
    pub acked_seq: u64,
    /// The unsent entries, in seq order, in batches of at most the hub's batch size.
    pub batches: Vec<IngestBatch>,
}

/// What the hub writes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleReceipts {
    /// [`RECEIPTS_FORMAT`].
    pub format: String,
    /// The source.
    pub source: SourceId,
    /// The hub's answer to each batch, in the bundle's order (receipts as one signed batch
    /// receipt per answer).
    pub answers: Vec<IngestResponse>,
}
