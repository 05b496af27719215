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

use std::io::Read as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dsse::Digest;
use crate::entry::SourceId;
use crate::wire::{IngestBatch, IngestResponse};

/// The `format` of a bundle file.
pub const BUNDLE_FORMAT: &str = "spacesync-bundle-1";
/// The `format` of a receipts file.
pub const RECEIPTS_FORMAT: &str = "spacesync-bundle-receipts-1";

/// The largest bundle file written or read: 256 MiB. `export-bundle` stops adding
/// batches before it (the rest goes into the next bundle, after the receipts of this one
/// are imported); `import-bundle` refuses a larger file before reading it, so a file of
/// any size cannot exhaust the hub's memory.
pub const MAX_BUNDLE_BYTES: u64 = 256 << 20;
/// The largest receipts file read: 64 MiB (one signed receipt per batch of a bundle of at
/// most [`MAX_BUNDLE_BYTES`] needs far less).
pub const MAX_RECEIPTS_BYTES: u64 = 64 << 20;

/// Why a bundle or receipts file could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    /// The OS refused (missing, unreadable, not UTF-8).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is larger than allowed; nothing of it was used.
    #[error(
        "larger than {limit} bytes, the most a file of this kind may hold (an agent's export-bundle never writes a larger one); nothing was read"
    )]
    TooLarge {
        /// The cap in bytes.
        limit: u64,
    },
}

/// Reads a bundle or receipts file as UTF-8 text, refusing one larger than `limit` bytes
/// before holding more than `limit + 1` bytes of it in memory.
pub fn read_capped(path: &Path, limit: u64) -> Result<String, ReadFileError> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > limit {
        return Err(ReadFileError::TooLarge { limit });
    }
    let mut text = String::new();
    // The file may grow after the length was read: read at most one byte past the cap.
    file.take(limit.saturating_add(1))
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(ReadFileError::TooLarge { limit });
    }
    Ok(text)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capped_reads_up_to_the_cap_and_refuses_beyond_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("f.json");
        std::fs::write(&path, "0123456789").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_capped(&path, 10).ok().as_deref(), Some("0123456789"));
        assert!(matches!(
            read_capped(&path, 9),
            Err(ReadFileError::TooLarge { limit: 9 })
        ));
        // A sparse file far beyond the cap is refused without being read.
        let big = dir.path().join("big.json");
        let f = std::fs::File::create(&big).unwrap_or_else(|e| panic!("{e}"));
        f.set_len(MAX_BUNDLE_BYTES + 1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            read_capped(&big, MAX_BUNDLE_BYTES),
            Err(ReadFileError::TooLarge { .. })
        ));
        assert!(matches!(
            read_capped(&dir.path().join("missing"), 10),
            Err(ReadFileError::Io(_))
        ));
    }
}
