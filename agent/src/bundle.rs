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

use spacesync_shared::bundle::{
    BUNDLE_FORMAT, Bundle, BundleReceipts, MAX_BUNDLE_BYTES, MAX_RECEIPTS_BYTES, RECEIPTS_FORMAT,
    ReadFileError, read_capped,
};
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
    /// Last seq in it: below `head` when the rest did not fit in one file (import this
    /// bundle's receipts, then export again).
    pub last: u64,
    /// The agent's chain head.
    pub head: u64,
}

/// Writes the bundle of the agent in `data` to `file` (a new file, 0600): the unsent
/// entries from the first, as many whole batches as fit in [`MAX_BUNDLE_BYTES`].
pub fn export(data: &DataDir, cfg: &Config, file: &Path) -> Result<Exported, BundleError> {
    export_within(data, cfg, file, MAX_BUNDLE_BYTES)
}

/// [`export`] with the file's size cap given (tests use a small one). The first batch is
/// always written (a batch is at most `push.max_bytes` of entries, far below any cap).
fn export_within(
    data: &DataDir,
    cfg: &Config,
    file: &Path,
    cap: u64,
) -> Result<Exported, BundleError> {
    let store = Store::open(&data.db())?;
    let (head, head_hash) = store.head()?;
    let acked = store.acked()?;
    let mut batches = Vec::new();
    let mut next = acked + 1;
    let mut entries = 0usize;
    // The bundle's fields besides its batches, generously.
    let mut size: u64 = 1024;
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
        let batch = IngestBatch {
            source: cfg.source.clone(),
            entries: chunk.into_iter().map(|s| s.envelope).collect(),
        };
        // The batch's JSON plus a separating comma.
        let bytes = serde_json::to_vec(&batch).map_or(0, |v| v.len() as u64) + 1;
        if !batches.is_empty() && size + bytes > cap {
            break;
        }
        size += bytes;
        entries += batch.entries.len();
        batches.push(batch);
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
        last: next - 1,
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
    let not = |why: String| BundleError::NotReceipts {
        path: file.to_path_buf(),
        why,
    };
    let text = match read_capped(file, MAX_RECEIPTS_BYTES) {
        Ok(text) => text,
        Err(ReadFileError::Io(error)) => {
            return Err(BundleError::Io {
                path: file.to_path_buf(),
                error,
            });
        }
        Err(too_large) => return Err(not(too_large.to_string())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::tests::{identity, json, writer};

    /// An agent directory whose store holds `n` unsent entries.
    fn agent_with(n: usize) -> (tempfile::TempDir, DataDir, Config) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = DataDir::new(dir.path().join("a"));
        data.create_private().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&data.db()).unwrap_or_else(|e| panic!("{e}"));
        let act = r#"{"kind":"activity","region":"440100","date":"2018-11-20","category":"training","title":"t"}"#;
        let mut w = writer(&store, Default::default());
        w.submit(&json(&vec![act; n].join("\n")), &mut |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        store.flush().unwrap_or_else(|e| panic!("{e}"));
        let id = identity();
        let mut cfg = Config::new(id.source.clone(), id.scope, "http://127.0.0.1:9".into());
        cfg.push.max_entries = 10;
        (dir, data, cfg)
    }

    fn read(path: &Path) -> Bundle {
        serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_bundle_holds_whole_batches_up_to_the_cap_and_says_what_is_left() {
        let (dir, data, cfg) = agent_with(95);
        let whole = dir.path().join("whole.json");
        let e = export(&data, &cfg, &whole).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.entries, e.first, e.last, e.head), (95, 1, 95, 95));
        let size = std::fs::metadata(&whole).map_or(0, |m| m.len());
        assert_eq!(read(&whole).batches.len(), 10);

        // A cap of about half the whole file: the first whole batches that fit, in order.
        let half = dir.path().join("half.json");
        let e = export_within(&data, &cfg, &half, size / 2).unwrap_or_else(|e| panic!("{e}"));
        let b = read(&half);
        assert!(std::fs::metadata(&half).map_or(0, |m| m.len()) <= size / 2);
        assert_eq!(e.first, 1);
        assert!(e.last < 95 && e.last >= 30, "last {}", e.last);
        assert_eq!(e.last % 10, 0, "only whole batches");
        assert_eq!(e.entries as u64, e.last);
        let seqs: Vec<u64> = b
            .batches
            .iter()
            .flat_map(|batch| batch.entries.iter())
            .map(|env| {
                spacesync_shared::Entry::open(env, &identity().key.verifying_key())
                    .unwrap_or_else(|e| panic!("{e}"))
                    .seq
            })
            .collect();
        assert_eq!(seqs, (1..=e.last).collect::<Vec<_>>());

        // However small the cap, the first batch is written: the bundle always moves on.
        let tiny = dir.path().join("tiny.json");
        let e = export_within(&data, &cfg, &tiny, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.entries, e.last), (10, 10));
    }
}
