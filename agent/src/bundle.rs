//! The offline bundle, agent side (see [`spacesync_shared::bundle`]): `export-bundle FILE`
//! writes the entries the hub has not receipted, already signed, in batches of
//! `push.max_entries` / `push.max_bytes`; `import-receipts FILE` verifies the hub's
//! answers with the hub key (pinned in agent.toml, or stored at first contact) and stores
//! them through the delivery state machine's own receipt check
//! ([`Delivery::accept_offline`]): an entry counts as delivered only with a receipt that
//! verifies and names exactly that entry. Both work on a stopped agent (the store is
//! opened directly).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use spacesync_shared::bundle::{BUNDLE_FORMAT, Bundle, BundleReceipts, RECEIPTS_FORMAT};
use spacesync_shared::clock::Clock;
use spacesync_shared::keys;
use spacesync_shared::wire::IngestBatch;

use crate::config::{Config, DataDir};
use crate::hub_key::{self, HubKeyError};
use crate::push::PushError;
use crate::push::delivery::Delivery;
use crate::server::{Agent, AgentError};
use crate::store::{Store, StoreError};

/// Why a bundle could not be written or its receipts read; each names what to do.
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
    /// The store failed (or the agent is running: stop it first).
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The agent could not be opened.
    #[error("{0}")]
    Agent(#[from] AgentError),
    /// The file is not a receipts file of this source.
    #[error(
        "{path}: not a receipts file for this agent ({why}); give the file `spacesync-hub import-bundle --receipts` wrote for this agent's bundle"
    )]
    NotReceipts {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// No hub key to verify receipts with.
    #[error(
        "no hub key is known to verify the receipts with: set hub_key in agent.toml to the hub's public key line (`spacesync-hub pubkey`)"
    )]
    NoHubKey,
    /// The hub key is wrong.
    #[error("{0}")]
    HubKey(#[from] HubKeyError),
    /// A receipt does not verify, or contradicts this agent's entries; nothing of it counts.
    #[error("answer {index} of the receipts file: {error}")]
    Refused {
        /// 1-based answer number.
        index: usize,
        /// Why.
        error: PushError,
    },
}

/// What `export-bundle` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Entries in the bundle.
    pub entries: usize,
    /// First seq in it (0 when none).
    pub first: u64,
    /// The agent's chain head.
    pub head: u64,
}

/// Writes the bundle of the agent in `data` to `file` (a new file, 0600).
pub fn export(data: &DataDir, cfg: &Config, file: &Path) -> Result<Exported, BundleError> {
    let store = Store::open(&data.db())?;
    let (head, head_hash) = store.head()?;
    let acked = store.acked()?;
    let mut batches = Vec::new();
    let mut next = acked + 1;
    let mut entries = 0usize;
    while next <= head {
        let chunk = store.entries_from(
            next,
            head,
            cfg.push.max_entries.max(1),
            cfg.push.max_bytes.max(1),
        )?;
        let Some(last) = chunk.last().map(|s| s.seq) else {
            break;
        };
        entries += chunk.len();
        batches.push(IngestBatch {
            source: cfg.source.clone(),
            entries: chunk.into_iter().map(|s| s.envelope).collect(),
        });
        next = last + 1;
    }
    let bundle = Bundle {
        format: BUNDLE_FORMAT.into(),
        source: cfg.source.clone(),
        head_seq: head,
        head_hash,
        acked_seq: acked,
        batches,
    };
    write_new(file, &serde_json::to_vec(&bundle).unwrap_or_default())?;
    Ok(Exported {
        entries,
        first: if entries > 0 { acked + 1 } else { 0 },
        head,
    })
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    use std::io::Write as _;
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
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// What `import-receipts` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Delivered seq before.
    pub before: u64,
    /// Delivered seq after.
    pub after: u64,
}

/// Verifies and stores the receipts in `file` for the agent in `data`.
pub fn import_receipts(
    data: &DataDir,
    cfg: Config,
    clock: Arc<dyn Clock>,
    file: &Path,
) -> Result<Imported, BundleError> {
    let text = std::fs::read_to_string(file).map_err(|error| BundleError::Io {
        path: file.to_path_buf(),
        error,
    })?;
    let not = |why: String| BundleError::NotReceipts {
        path: file.to_path_buf(),
        why,
    };
    let doc: BundleReceipts = serde_json::from_str(&text)
        .map_err(|e| not(format!("{e} (line {}, column {})", e.line(), e.column())))?;
    if doc.format != RECEIPTS_FORMAT {
        return Err(not(format!(
            "format {:?}, this agent reads {RECEIPTS_FORMAT:?}",
            doc.format
        )));
    }
    if doc.source != cfg.source {
        return Err(not(format!(
            "it answers source {}, this agent is {}",
            doc.source, cfg.source
        )));
    }
    let agent = Agent::open(data.clone(), cfg, clock)?;
    let key = hub_key::known(&agent.cfg, &agent.store)?.ok_or(BundleError::NoHubKey)?;
    tracing::debug!(hub_key = %keys::public_key_line(&key), "Verifying bundle receipts.");
    let before = agent.store.acked()?;
    let mut delivery = Delivery::new(
        agent.cfg.clone(),
        agent.ident.clone(),
        agent.store.clone(),
        Arc::default(),
    );
    for (i, answer) in doc.answers.iter().enumerate() {
        delivery
            .accept_offline(key, answer)
            .map_err(|error| BundleError::Refused {
                index: i + 1,
                error,
            })?;
    }
    agent.store.flush()?;
    Ok(Imported {
        before,
        after: agent.store.acked()?,
    })
}
