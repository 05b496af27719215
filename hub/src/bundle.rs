//! `import-bundle FILE --receipts OUT`: an agent's offline bundle ingested on a stopped
//! hub (see [`spacesync_shared::bundle`]).
//!
//! Each batch goes through [`Hub::ingest_with`], the function `POST /v1/ingest` calls
//! after its rate limits: the same size limit, registry and signature checks, the same
//! chain verifier (gaps, forks, resends), clock rules, flushed append and signed receipts.
//! A batch the hub already holds is a resend: it changes nothing and is answered with the
//! receipts it was first given. The answers, receipts included, are written to OUT for
//! `spacesync-agent import-receipts`. With `--hub URL` the CLI sends each batch to a
//! running hub's admin API (`POST /v1/admin/bundle/batch`), which calls the same
//! [`Hub::ingest_with`]; [`outcome`] reads both answers alike.

use std::path::{Path, PathBuf};

use spacesync_shared::Entry;
use spacesync_shared::bundle::{
    BUNDLE_FORMAT, Bundle, BundleReceipts, MAX_BUNDLE_BYTES, RECEIPTS_FORMAT, ReadFileError,
    read_capped,
};
use spacesync_shared::wire::{IngestBatch, IngestResponse, ReceiptForm};

use crate::hub::Hub;
use crate::ingest::IngestError;

/// Why a bundle could not be imported; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file is not a bundle.
    #[error(
        "{path}: not a spacesync bundle ({why}); give the file `spacesync-agent export-bundle` wrote"
    )]
    NotABundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The running hub refused a batch as a whole (`--hub`).
    #[error("batch {index} of the bundle: the hub at {hub} refused it: {why}")]
    RemoteBatch {
        /// 1-based batch number.
        index: usize,
        /// The hub's URL.
        hub: String,
        /// The hub's words.
        why: String,
    },
    /// The receipts file exists already.
    #[error("{0} exists; give a new file for the receipts (nothing was imported)")]
    ReceiptsExist(PathBuf),
    /// The hub refused a batch as a whole (unknown or revoked source, too many entries, a
    /// repeated seq) or could not store it.
    #[error("batch {index} of the bundle: {error}")]
    Batch {
        /// 1-based batch number.
        index: usize,
        /// The refusal.
        error: IngestError,
    },
}

/// What importing one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Entries in the batch.
    pub entries: usize,
    /// Entries newly appended to the log.
    pub appended: usize,
    /// Entries of the batch the hub holds after it (appended now or before).
    pub held: usize,
    /// The hub's HTTP-equivalent status: 200 held, 409 gap or fork, 422 refused.
    pub status: u16,
    /// The answer (receipts, refusals).
    pub response: IngestResponse,
}

/// What the hub's answer to `batch` (here, or over the admin API) did.
pub fn outcome(
    batch: &IngestBatch,
    status: u16,
    appended: usize,
    response: IngestResponse,
) -> BatchOutcome {
    BatchOutcome {
        entries: batch.entries.len(),
        held: batch
            .entries
            .iter()
            .filter_map(|e| Entry::from_payload(&e.payload).ok())
            .filter(|e| e.seq <= response.held_through)
            .count(),
        appended,
        status,
        response,
    }
}

/// Ingests every batch of `bundle` through the hub's ingest path, in order. Stops at the
/// first batch the hub refuses as a whole (returned beside the answers to the batches
/// before it, whose receipts still count); refusals of single entries are in the answers.
pub fn import(hub: &Hub, bundle: &Bundle) -> (Vec<BatchOutcome>, Option<BundleError>) {
    let mut out = Vec::with_capacity(bundle.batches.len());
    for (i, batch) in bundle.batches.iter().enumerate() {
        match hub.ingest_with(batch.clone(), ReceiptForm::Batch) {
            Ok(o) => out.push(outcome(batch, o.status, o.appended, o.response)),
            Err(error) => {
                return (
                    out,
                    Some(BundleError::Batch {
                        index: i + 1,
                        error,
                    }),
                );
            }
        }
    }
    (out, None)
}

/// Reads and checks a bundle file.
pub fn read(path: &Path) -> Result<Bundle, BundleError> {
    let not = |why: String| BundleError::NotABundle {
        path: path.to_path_buf(),
        why,
    };
    let text = match read_capped(path, MAX_BUNDLE_BYTES) {
        Ok(text) => text,
        Err(ReadFileError::Io(error)) => {
            return Err(BundleError::Io {
                path: path.to_path_buf(),
                error,
            });
        }
        Err(too_large) => return Err(not(too_large.to_string())),
    };
    let bundle: Bundle = serde_json::from_str(&text)
        .map_err(|e| not(format!("{e} (line {}, column {})", e.line(), e.column())))?;
    if bundle.format != BUNDLE_FORMAT {
        return Err(not(format!(
            "format {:?}, this hub reads {BUNDLE_FORMAT:?}",
            bundle.format
        )));
    }
    if let Some(b) = bundle.batches.iter().find(|b| b.source != bundle.source) {
        return Err(not(format!(
            "a batch of source {} in a bundle of source {}",
            b.source, bundle.source
        )));
    }
    Ok(bundle)
}

/// Writes the receipts file (new, 0600) for `outcomes`.
pub fn write_receipts(
    path: &Path,
    bundle: &Bundle,
    outcomes: &[BatchOutcome],
) -> Result<(), BundleError> {
    use std::io::Write as _;
    let doc = BundleReceipts {
        format: RECEIPTS_FORMAT.into(),
        source: bundle.source.clone(),
        answers: outcomes.iter().map(|o| o.response.clone()).collect(),
    };
    let io = |error| BundleError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// One line per batch for the operator: what was appended, what was already held, and
/// every refusal with its reason.
pub fn describe(outcomes: &[BatchOutcome]) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        let mut line = format!(
            "batch {}: {} entries, {} appended, {} already held; source held through seq {}",
            i + 1,
            o.entries,
            o.appended,
            o.held.saturating_sub(o.appended),
            o.response.held_through
        );
        if o.appended == 0 && o.response.refused.is_empty() {
            line.push_str(
                " — nothing changed: the hub held every entry already (a replayed bundle)",
            );
        }
        lines.push(line);
        for r in &o.response.refused {
            let seq = r.seq.map(|s| format!(" seq {s}")).unwrap_or_default();
            lines.push(format!("  refused{seq}: {} ({:?})", r.reason, r.code));
        }
        if let Some(from) = o.response.resend_from {
            lines.push(format!(
                "  the hub holds this source only through seq {}: seqs from {from} are missing before these (an earlier batch was refused, or an earlier bundle not imported)",
                from.saturating_sub(1)
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file larger than any bundle is refused before it is read (a sparse file: its
    /// size costs no disk), naming the cap and what to give instead.
    #[test]
    fn an_oversized_bundle_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("big.json");
        let f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        f.set_len(MAX_BUNDLE_BYTES + 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let err = read(&path).map(|_| ()).err().map(|e| e.to_string());
        let err = err.unwrap_or_else(|| panic!("an oversized bundle was read"));
        assert!(err.contains("larger than 268435456 bytes"), "{err}");
        assert!(err.contains("export-bundle"), "{err}");
    }
}
