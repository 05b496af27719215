//! `backup OUT` and `restore BACKUP`: a copy of the agent's data directory while it runs
//! or not.
//!
//! A backup is a data directory (`agent.toml`, `agent.key`, `intake.token`, `spool/` and a
//! fresh `db/` holding every tree of the store; 0700 / 0600) that `--data OUT verify`
//! checks and `--data OUT run` runs. sled lets one process open the store, so a running
//! agent makes the copy itself when asked on `<data>/control.sock` (a Unix socket in the
//! 0700 data directory: only the agent's user reaches it): [`Store::backup`] holds every
//! change still (intake, receipts, pruning, notices wait; readers do not) while it copies
//! the flushed trees, so the copy is one instant. A stopped agent is copied directly.
//!
//! A backup is older than the hub's view as soon as the agent delivers more, so the copy's
//! store carries `catch_up` ([`Store::catching_up`]): an agent run from it takes back what
//! the hub holds of its chain, checked as its own, before intake opens
//! (`push::delivery`; the operator's guide, "Backup and restore").

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spacesync_http::{control, private_copy};

use crate::config::DataDir;
use crate::store::{Copied, Store, StoreError};

pub use spacesync_http::control::CONTROL_SOCKET;

/// Why a backup or restore failed; each names the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target exists and holds something.
    #[error("{0} exists and is not empty; give a new directory (nothing was written)")]
    Exists(PathBuf),
    /// Copying a file or directory failed.
    #[error(transparent)]
    File(#[from] private_copy::FileError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The spool folders could not be made.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// The running agent answered with an error.
    #[error("the running agent could not make the backup: {0}")]
    Remote(String),
    /// The running agent's answer was not understood, or it could not be asked.
    #[error("{socket}: {why}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// `restore` was given something that is not an agent data directory.
    #[error("{0} is not an agent backup (no agent.key or db/); give the directory `backup` wrote")]
    NotABackup(PathBuf),
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Where it is.
    pub out: PathBuf,
    /// What the store copy holds.
    pub copied: Copied,
}

/// Writes the backup of the agent in `data` (its open `store`) to `out`.
pub fn write(data: &DataDir, store: &Store, out: &Path) -> Result<Summary, BackupError> {
    if private_copy::non_empty(out)? {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    private_copy::private_dir(out)?;
    let target = DataDir::new(out);
    let made = (|| {
        for (from, to) in [
            (data.config(), target.config()),
            (data.key(), target.key()),
            (data.token(), target.token()),
        ] {
            private_copy::copy_file(&from, &to)?;
        }
        // A key rotation's files, when there are: the retired key still signs requests
        // until the hub receipts the transition (the pusher may remove it meanwhile), and
        // a new key the store may already name.
        for (from, to) in [
            (data.key_retired(), target.key_retired()),
            (data.key_next(), target.key_next()),
        ] {
            if from.exists() {
                match private_copy::copy_file(&from, &to) {
                    Err(_) if !from.exists() => {}
                    other => other?,
                }
            }
        }
        crate::spool::create_dirs(&target)?;
        Ok::<_, BackupError>(store.backup(&target.db())?)
    })();
    match made {
        Ok(copied) => Ok(Summary {
            out: out.to_path_buf(),
            copied,
        }),
        Err(e) => {
            // Nothing half-written that could pass for a backup.
            let _ = std::fs::remove_dir_all(out);
            Err(e)
        }
    }
}

/// A failed [`control::ask`] as this module's error.
fn asked(e: control::AskError, socket: &Path) -> BackupError {
    match e {
        control::AskError::Failed(why) => BackupError::Remote(why),
        e @ control::AskError::Unseen(_) => BackupError::Remote(e.to_string()),
        control::AskError::Protocol(why) => BackupError::Protocol {
            socket: socket.to_path_buf(),
            why,
        },
    }
}

/// `backup OUT`: asks the agent running on `data` over its control socket, or copies a
/// stopped agent's store directly.
pub fn backup(data: &DataDir, out: &Path) -> Result<Summary, BackupError> {
    let out = std::path::absolute(out).map_err(|error| private_copy::FileError {
        path: out.to_path_buf(),
        error,
    })?;
    let socket = data.root.join(CONTROL_SOCKET);
    #[cfg(unix)]
    if let Ok(conn) = std::os::unix::net::UnixStream::connect(&socket) {
        return control::ask(conn, &out).map_err(|e| asked(e, &socket));
    }
    let store = Store::open(&data.db())?;
    write(data, &store, &out)
}

/// Answers backup requests on `<data>/control.sock` until the task is dropped (see
/// [`spacesync_http::control`]).
#[cfg(unix)]
pub async fn serve_control(store: Store, data: DataDir) -> Result<(), BackupError> {
    let path = data.root.join(CONTROL_SOCKET);
    control::serve(path, move |out| match write(&data, &store, &out) {
        Ok(s) => {
            tracing::info!(out = %s.out.display(), keys = s.copied.keys, head = s.copied.head, "Backup written.");
            Ok(s)
        }
        Err(e) => {
            tracing::warn!(error = %e, "Backup failed.");
            Err(e.to_string())
        }
    })
    .await?;
    Ok(())
}

/// `restore BACKUP`: makes `data` (absent or empty) a copy of the backup, after checking
/// that the backup's store opens. Returns its chain head.
pub fn restore(backup: &Path, data: &DataDir) -> Result<u64, BackupError> {
    let src = DataDir::new(backup);
    if !src.key().exists() || !src.db().is_dir() {
        return Err(BackupError::NotABackup(backup.to_path_buf()));
    }
    let head = Store::open(&src.db())?.head()?.0;
    if private_copy::non_empty(&data.root)? {
        return Err(BackupError::Exists(data.root.clone()));
    }
    if let Err(e) = private_copy::copy_tree(backup, &data.root) {
        let _ = std::fs::remove_dir_all(&data.root);
        return Err(e.into());
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use crate::rotate::tests::{agent, first_entry, line, now};

    /// A backup made between `rotate-key` and the hub's receipt of the transition keeps
    /// the retired key: the restored agent still signs its requests with the key the hub
    /// names until the transition arrives.
    #[test]
    fn a_backup_keeps_a_rotations_retired_key() {
        let (dir, data, cfg, store) = agent();
        first_entry(&data, &cfg, &store);
        crate::rotate::rotate(&data, &cfg, &store, "2018", now()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(data.config(), cfg.to_toml()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(data.token(), "token").unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("backup");
        super::write(&data, &store, &out).unwrap_or_else(|e| panic!("{e}"));
        let copy = crate::config::DataDir::new(&out);
        assert_eq!(line(&copy.key_retired()), line(&data.key_retired()));
        assert_eq!(line(&copy.key()), line(&data.key()));
        assert!(!copy.key_next().exists());
    }
}
