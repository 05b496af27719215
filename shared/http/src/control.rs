//! The control socket a running hub or agent answers `backup OUT` on: `<data>/control.sock`,
//! a Unix socket 0600 inside the 0700 data directory (so only the service's user can ask).
//! One JSON line each way: `{"backup": OUT}`, then the summary the process's backup
//! returned or `{"error": …}`. The process makes the copy itself because sled lets one
//! process open a store; both binaries speak it through this module.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::private_copy::{self, FileError};

/// The socket's name inside the data directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    backup: PathBuf,
}

/// The answer (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Answer<S> {
    Done(S),
    Failed { error: String },
}

/// Why asking the running process failed.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The process answered that the backup failed.
    #[error("{0}")]
    Failed(String),
    /// The exchange itself failed (what was wrong).
    #[error("{0}")]
    Protocol(String),
    /// The process says it wrote the backup, but this command cannot see it there.
    #[error(
        "the running process reports the backup written to {0}, but this command does not see it there: the service has its own view of the file system (systemd PrivateTmp= or a private mount); back up into a directory the service's unit lets it write and that you can read (the packages' units: /var/backups/spacesync-hub or /var/backups/spacesync-agent), or stop the service and back up its stopped store"
    )]
    Unseen(PathBuf),
}

/// What to do when the process could not write where it was asked (systemd's
/// `ProtectSystem=strict` leaves only the unit's own directories writable).
const READ_ONLY_HINT: &str = "; the service may only write the directories its unit allows (ProtectSystem=strict): back up into /var/backups/spacesync-hub or /var/backups/spacesync-agent (the packages' units allow them), or add the directory to ReadWritePaths= in a drop-in (systemctl edit)";

/// Answers backup requests on `path` until the task is dropped: `make(OUT)` runs on a
/// blocking thread and its summary (or error text) is the answer. A stale socket (from a
/// killed process) is replaced; the socket is made 0600.
pub async fn serve<S, F>(path: PathBuf, make: F) -> Result<(), FileError>
where
    S: Serialize + Send + 'static,
    F: Fn(PathBuf) -> Result<S, String> + Clone + Send + Sync + 'static,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(|error| FileError {
        path: path.clone(),
        error,
    })?;
    private_copy::set_mode(&path, 0o600)?;
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let make = make.clone();
        tokio::spawn(async move {
            let (read, mut write) = conn.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match serde_json::from_str::<Request>(&line) {
                Err(e) => Answer::Failed {
                    error: format!("unreadable request: {e}"),
                },
                Ok(req) => match tokio::task::spawn_blocking(move || make(req.backup)).await {
                    Ok(Ok(s)) => Answer::Done(s),
                    Ok(Err(error)) => Answer::Failed { error },
                    Err(e) => Answer::Failed {
                        error: format!("the backup task failed: {e}"),
                    },
                },
            };
            let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
            bytes.push(b'\n');
            let _ = write.write_all(&bytes).await;
        });
    }
}

/// Asks the process listening on `conn` for a backup to `out`; its summary.
pub fn ask<S: DeserializeOwned>(
    mut conn: std::os::unix::net::UnixStream,
    out: &Path,
) -> Result<S, AskError> {
    let mut line = serde_json::to_vec(&Request {
        backup: out.to_path_buf(),
    })
    .map_err(|e| AskError::Protocol(e.to_string()))?;
    line.push(b'\n');
    conn.write_all(&line)
        .map_err(|e| AskError::Protocol(format!("cannot ask the running process: {e}")))?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .map_err(|e| AskError::Protocol(format!("no answer from the running process: {e}")))?;
    match serde_json::from_str::<Answer<S>>(&answer).map_err(|e| {
        AskError::Protocol(format!("unreadable answer from the running process: {e}"))
    })? {
        Answer::Done(s) => {
            // The process wrote the copy in its own mount namespace: under PrivateTmp= a
            // "/tmp/…" backup would vanish with the service.
            let seen = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
            if seen {
                Ok(s)
            } else {
                Err(AskError::Unseen(out.to_path_buf()))
            }
        }
        // std's text for EROFS.
        Answer::Failed { error } if error.contains("(os error 30)") => {
            Err(AskError::Failed(format!("{error}{READ_ONLY_HINT}")))
        }
        Answer::Failed { error } => Err(AskError::Failed(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that answers every backup with `answer`, writing `files` into OUT first.
    async fn ask_one(
        answer: Result<u64, String>,
        files: bool,
    ) -> (tempfile::TempDir, Result<u64, AskError>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let socket = dir.path().join(CONTROL_SOCKET);
        let server = tokio::spawn(serve(socket.clone(), move |out: PathBuf| {
            if files {
                std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
                std::fs::write(out.join("db"), b"x").map_err(|e| e.to_string())?;
            }
            answer.clone()
        }));
        let out = dir.path().join("out");
        let got = tokio::task::spawn_blocking(move || {
            for _ in 0..200 {
                if let Ok(conn) = std::os::unix::net::UnixStream::connect(&socket) {
                    return ask::<u64>(conn, &out);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(AskError::Protocol("the socket never opened".into()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        server.abort();
        (dir, got)
    }

    #[tokio::test]
    async fn a_backup_is_done_only_if_this_side_sees_it() {
        let (_d, got) = ask_one(Ok(7), true).await;
        assert_eq!(got.ok(), Some(7));
        // Reported written, but not where this command looks (the service's private /tmp).
        let (_d, got) = ask_one(Ok(7), false).await;
        let err = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("does not see it there"), "{err}");
        assert!(err.contains("/var/backups/spacesync-hub"), "{err}");
    }

    #[tokio::test]
    async fn a_read_only_target_says_where_the_service_may_write() {
        let (_d, got) = ask_one(
            Err("/backup/x: Read-only file system (os error 30)".into()),
            false,
        )
        .await;
        let err = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("/backup/x: Read-only file system"), "{err}");
        assert!(err.contains("ReadWritePaths="), "{err}");
        let (_d, got) = ask_one(Err("exists and is not empty".into()), false).await;
        let err = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "exists and is not empty");
    }
}
