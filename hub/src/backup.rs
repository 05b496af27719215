//! `backup` and `restore` of a hub on the embedded store, while it serves or not.
//!
//! A backup is a data directory: `hub.toml`, `hub.key`, `webhook.key`, `campaign.toml` and
//! `db/`, a fresh sled store holding every key of the hub's store (0700 / 0600 as `init`
//! makes them). `spacesync-hub --data OUT serve` serves it and `--data OUT verify` checks
//! it as they would the original.
//!
//! sled lets one process open a store, so a running `serve` makes the copy itself: it
//! listens on a Unix socket in its data directory ([`CONTROL_SOCKET`], reachable only by
//! the hub's user, since the directory is 0700), and `backup` asks it there. The copy is
//! made under the writer lock ([`Hub::state`]) and while every other write to the store
//! waits ([`crate::store::Store::hold_writes`]: tokens, invites, notices, nonces, dashboard
//! sessions, alarms): ingest and every change wait for it (the API still answers readers),
//! after a flush, so the copy is the state of one instant and everything in it was durable
//! — a token revoked before the backup began is revoked in it.
//! A stopped hub is copied directly. On PostgreSQL the database's own tools do it
//! (`pg_dump` / `pg_restore`, see the operator's guide); `backup` says so.
//!
//! `restore BACKUP` puts a backup in place as a new data directory (which must not exist
//! or be empty), after checking that it opens.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spacesync_http::{control, private_copy};

use crate::config::{self, DataDir};
use crate::hub::Hub;
use crate::store::{SledStore, Store, StoreError, WriteBatch};

pub use spacesync_http::control::CONTROL_SOCKET;

/// Keys written to the copy in one batch.
const COPY_BATCH: usize = 4096;

/// Why a backup or restore failed; each names the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target exists and holds something.
    #[error("{0} exists and is not empty; give a new directory (nothing was written)")]
    Exists(PathBuf),
    /// The hub keeps its state in PostgreSQL.
    #[error(
        "this hub keeps its state in PostgreSQL ({0}); back it up with pg_dump (and this directory's keys and hub.toml) as the operator's guide describes"
    )]
    Postgres(String),
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory or its configuration is wrong.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The log of the copy cannot be read back.
    #[error("the copy's log cannot be read: {0}")]
    Log(String),
    /// The serving hub answered with an error.
    #[error("the running hub could not make the backup: {0}")]
    Remote(String),
    /// The serving hub's answer was not understood.
    #[error("{socket}: unreadable answer from the running hub ({why})")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// Copying a file or directory failed.
    #[error(transparent)]
    File(#[from] private_copy::FileError),
    /// `restore` was given something that is not a hub data directory.
    #[error("{0} is not a hub backup (no hub.key or db/); give the directory `backup` wrote")]
    NotABackup(PathBuf),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |error| BackupError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Where it is.
    pub out: PathBuf,
    /// Keys copied.
    pub keys: u64,
    /// Leaves in the copy's log.
    pub log_size: u64,
}

/// Creates `out` as an empty private directory (or takes an existing empty one).
fn fresh_dir(out: &Path) -> Result<(), BackupError> {
    if private_copy::non_empty(out)? {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    Ok(private_copy::private_dir(out)?)
}

/// The files besides the store, copied as they are.
fn copy_files(dir: &DataDir, out: &DataDir) -> Result<(), BackupError> {
    for (from, to) in [
        (dir.config(), out.config()),
        (dir.key(), out.key()),
        (dir.campaign(), out.campaign()),
        (dir.webhook_key(), out.webhook_key()),
    ] {
        if from == dir.webhook_key() && !from.exists() {
            continue;
        }
        private_copy::copy_file(&from, &to)?;
    }
    Ok(())
}

/// Copies every key of `store` into a new sled store at `out_db`, flushed; returns the
/// number of keys and the copy, still open (sled lets go of a directory from background
/// threads a moment after its last handle drops, so opening it again at once can find it
/// "in use"). The caller makes sure nothing writes meanwhile (the writer lock, or a
/// stopped hub).
fn copy_store(store: &dyn Store, out_db: &Path) -> Result<(u64, SledStore), BackupError> {
    private_copy::private_dir(out_db)?;
    let dst = SledStore::open(out_db)?;
    let mut batch = WriteBatch::new();
    let mut in_batch = 0usize;
    let mut keys = 0u64;
    for kv in store.scan(b"") {
        let (k, v) = kv?;
        batch.put(k, v);
        in_batch += 1;
        keys += 1;
        if in_batch == COPY_BATCH {
            dst.apply(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        dst.apply(batch)?;
    }
    dst.flush()?;
    Ok((keys, dst))
}

/// Writes the backup of the hub in `dir` (store `store`) to `out`. The caller holds the
/// writer lock or the hub is stopped.
pub fn write(dir: &DataDir, store: &dyn Store, out: &Path) -> Result<Summary, BackupError> {
    let cfg = config::load_config(dir)?;
    if let Some(url) = &cfg.store {
        return Err(BackupError::Postgres(
            crate::store::pg::Redacted(url).to_string(),
        ));
    }
    fresh_dir(out)?;
    let target = DataDir(out.to_path_buf());
    // Writes made outside the writer lock (tokens, invites, notices, nonces, sessions,
    // alarms) wait too: a revocation answered before the copy began is in it, one that
    // comes during it is answered after it.
    let _held = store.hold_writes();
    store.flush()?;
    let written = copy_files(dir, &target).and_then(|()| copy_store(store, &target.db()));
    let (keys, copy) = match written {
        Ok(k) => k,
        Err(e) => {
            // Leave nothing half-written that could pass for a backup.
            let _ = fs::remove_dir_all(out);
            return Err(e);
        }
    };
    let log_size = crate::log::Log::load(&copy)
        .map_err(|e| BackupError::Log(e.to_string()))?
        .size();
    Ok(Summary {
        out: out.to_path_buf(),
        keys,
        log_size,
    })
}

/// The backup of a serving hub, made under its writer lock.
pub fn write_serving(hub: &Hub, dir: &DataDir, out: &Path) -> Result<Summary, BackupError> {
    let _writers_wait = hub.state();
    write(dir, hub.store.as_ref(), out)
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

/// `backup OUT`: asks the hub serving `dir` over its control socket, or copies a stopped
/// hub's store directly.
pub fn backup(dir: &DataDir, out: &Path) -> Result<Summary, BackupError> {
    let out = std::path::absolute(out).map_err(io(out))?;
    let cfg = config::load_config(dir)?;
    if let Some(url) = &cfg.store {
        return Err(BackupError::Postgres(
            crate::store::pg::Redacted(url).to_string(),
        ));
    }
    let socket = dir.0.join(CONTROL_SOCKET);
    #[cfg(unix)]
    if let Ok(conn) = std::os::unix::net::UnixStream::connect(&socket) {
        return control::ask(conn, &out).map_err(|e| asked(e, &socket));
    }
    let store = config::open_store(dir)?;
    write(dir, store.as_ref(), &out)
}

/// Answers backup requests on `<data>/control.sock` until the task is dropped (see
/// [`spacesync_http::control`]), each made under the writer lock.
#[cfg(unix)]
pub async fn serve_control(hub: std::sync::Arc<Hub>, dir: DataDir) -> Result<(), BackupError> {
    let path = dir.0.join(CONTROL_SOCKET);
    control::serve(path, move |out| match write_serving(&hub, &dir, &out) {
        Ok(s) => {
            tracing::info!(out = %s.out.display(), keys = s.keys, log_size = s.log_size, "Backup written.");
            Ok(s)
        }
        Err(e) => {
            tracing::warn!(out = %out.display(), error = %e, "Backup failed.");
            Err(e.to_string())
        }
    })
    .await?;
    Ok(())
}

/// `restore BACKUP`: makes `dir` (absent or empty) a copy of the backup, after checking
/// that the backup's store opens and its log reads. Returns the log's size.
pub fn restore(backup: &Path, dir: &DataDir) -> Result<u64, BackupError> {
    let src = DataDir(backup.to_path_buf());
    if !src.key().exists() || !src.db().is_dir() {
        return Err(BackupError::NotABackup(backup.to_path_buf()));
    }
    let log_size = {
        let store = SledStore::open(&src.db())?;
        crate::log::Log::load(&store)
            .map_err(|e| BackupError::Log(e.to_string()))?
            .size()
    };
    fresh_dir(&dir.0)?;
    if let Err(e) = private_copy::copy_tree(backup, &dir.0) {
        let e = BackupError::from(e);
        let _ = fs::remove_dir_all(&dir.0);
        return Err(e);
    }
    let _ = fs::remove_file(dir.0.join(CONTROL_SOCKET));
    Ok(log_size)
}
