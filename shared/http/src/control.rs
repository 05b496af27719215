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
}

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
        Answer::Done(s) => Ok(s),
        Answer::Failed { error } => Err(AskError::Failed(error)),
    }
}
