//! The spool folder `<data>/spool/`: platforms that cannot call HTTP drop files here.
//!
//! Contract for platforms: write the file as `name.tmp` (or `.name`) in the spool folder
//! and rename it to its final name when complete — a rename within one file system is
//! atomic, so the agent never reads half a file. Files ending in `.tmp` and dotfiles are
//! ignored. `.csv` files are space-count CSV; anything else is JSON, a JSON array or NDJSON.
//!
//! Each file is one batch, accepted whole or refused whole:
//! - accepted → moved to `spool/done/`;
//! - refused → moved to `spool/failed/` beside `<name>.errors.txt`, one problem a line;
//! - buffer full or agent stopping → left in place and tried again on the next scan.
//!
//! A file's batch carries the idempotency key `file/<sha256 of its bytes>`, so a crash
//! between storing the batch and moving the file does not store it twice: on the next scan
//! it is recognised and just moved. (The same bytes imported with `import` also count.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use spacesync_shared::batch::Format;
use spacesync_shared::dsse::Digest;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::DataDir;
use crate::intake::{IntakeError, IntakeHandle, Submission};

/// A spool folder problem.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file or folder operation failed.
    #[error("{path}: {error}; check the spool folder's permissions")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |error| SpoolError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The idempotency key of a file's bytes.
pub fn file_key(bytes: &[u8]) -> String {
    format!("file/{}", Digest::of(bytes))
}

/// Whether a spool entry is skipped (incomplete or hidden).
pub fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".errors.txt")
}

/// Creates `spool/`, `spool/done/` and `spool/failed/` (0700 when new).
pub fn create_dirs(dirs: &DataDir) -> Result<(), SpoolError> {
    for d in [dirs.spool(), dirs.spool_done(), dirs.spool_failed()] {
        crate::config::private_dir(&d).map_err(io(&d))?;
    }
    Ok(())
}

/// A destination in `dir` for `name` that does not overwrite an earlier file.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|i| dir.join(format!("{name}.{i}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// What one scan did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Files imported (moved to done/).
    pub imported: Vec<String>,
    /// Files refused (moved to failed/).
    pub failed: Vec<String>,
    /// Files left for the next scan.
    pub deferred: Vec<String>,
}

/// Imports every complete file in the spool folder once.
pub async fn scan_once(dirs: &DataDir, intake: &IntakeHandle) -> Result<ScanReport, SpoolError> {
    create_dirs(dirs)?;
    let spool = dirs.spool();
    let mut names = Vec::new();
    let mut rd = tokio::fs::read_dir(&spool).await.map_err(io(&spool))?;
    while let Some(e) = rd.next_entry().await.map_err(io(&spool))? {
        let ft = e.file_type().await.map_err(io(&e.path()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if ft.is_file() && !ignored(&name) {
            names.push(name);
        }
    }
    names.sort();
    let mut rep = ScanReport::default();
    for name in names {
        let path = spool.join(&name);
        let body = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        let sub = Submission {
            idempotency_key: Some(file_key(&body)),
            format: Format::from_path(&name),
            body,
            dry_run: false,
        };
        match intake.submit(sub).await {
            Ok(a) => {
                let dest = free_name(&dirs.spool_done(), &name);
                tokio::fs::rename(&path, &dest).await.map_err(io(&path))?;
                info!(file = ?name, accepted = a.accepted, first = a.seqs.first().copied().unwrap_or(0), last = a.seqs.last().copied().unwrap_or(0), replayed = a.replayed, "Spool file imported.");
                rep.imported.push(name);
            }
            Err(
                e @ (IntakeError::Refused(_)
                | IntakeError::TooLarge { .. }
                | IntakeError::KeyReused { .. }
                | IntakeError::BadKey(_)),
            ) => {
                let lines = match &e {
                    IntakeError::Refused(r) => r.lines(),
                    other => vec![other.to_string()],
                };
                let dest = free_name(&dirs.spool_failed(), &name);
                let dest_name = dest
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| name.clone());
                let errors = dirs.spool_failed().join(format!("{dest_name}.errors.txt"));
                // The name is the platform's choice and may hold a newline: quoted, escaped.
                let text = format!(
                    "{name:?} was refused; nothing of it was stored. Fix every line below and drop the whole file again.\n{}\n",
                    lines.join("\n")
                );
                tokio::fs::write(&errors, text).await.map_err(io(&errors))?;
                tokio::fs::rename(&path, &dest).await.map_err(io(&path))?;
                warn!(file = ?name, problems = lines.len(), errors = ?errors, "Spool file refused.");
                rep.failed.push(name);
            }
            Err(e @ (IntakeError::Full { .. } | IntakeError::Stopped)) => {
                info!(file = ?name, reason = %e, "Spool file left for later.");
                rep.deferred.push(name);
                break;
            }
            Err(e @ IntakeError::Store(_)) => {
                error!(file = ?name, error = %e, "Spool file could not be stored; will try again.");
                rep.deferred.push(name);
                break;
            }
        }
    }
    Ok(rep)
}

/// Scans every `poll` until `stop` turns true.
pub async fn watch(
    dirs: DataDir,
    intake: IntakeHandle,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        if let Err(e) = scan_once(&dirs, &intake).await {
            // The error can name a spool file, whose name the platform chose: escaped.
            warn!(error = ?e.to_string(), "Spool scan failed; will try again.");
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::spawn_writer;
    use crate::intake::tests::writer;
    use crate::store::Store;
    use std::sync::Arc;

    #[tokio::test]
    async fn good_files_move_to_done_bad_ones_to_failed_with_reasons() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dirs = DataDir::new(dir.path());
        let store = Store::open(&dirs.db()).unwrap_or_else(|e| panic!("{e}"));
        let (intake, _task) = spawn_writer(writer(&store, Default::default()), Arc::default());
        create_dirs(&dirs).unwrap_or_else(|e| panic!("{e}"));
        let write = |n: &str, t: &str| {
            std::fs::write(dirs.spool().join(n), t).unwrap_or_else(|e| panic!("{e}"))
        };
        write(
            "a.csv",
            "region,school,as_of,teacher,student\n440106,4401060001,2018-11-20,10,200\n440106,,2018-11-20,50,900\n",
        );
        write(
            "b.ndjson",
            "{\"kind\":\"activity\",\"region\":\"440100\",\"date\":\"2018-11-20\",\"category\":\"training\",\"title\":\"ok\"}\n{\"kind\":\"activity\",\"region\":\"450100\",\"date\":\"2018-11-20\",\"category\":\"training\",\"title\":\"x\"}\n{\"kind\":\"activity\",\"region\":\"440100\",\"date\":\"2018-11-20\",\"category\":\"party\",\"title\":\"x\"}\n",
        );
        write("c.csv.tmp", "half a file");
        write(".hidden", "ignored");
        let rep = scan_once(&dirs, &intake)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rep.imported, ["a.csv"]);
        assert_eq!(rep.failed, ["b.ndjson"]);
        assert!(dirs.spool_done().join("a.csv").exists());
        assert!(dirs.spool_failed().join("b.ndjson").exists());
        assert!(dirs.spool().join("c.csv.tmp").exists());
        let errors = std::fs::read_to_string(dirs.spool_failed().join("b.ndjson.errors.txt"))
            .unwrap_or_default();
        assert!(
            errors.contains(
                "record 2 (line 2): region: 450100 is outside this source's scope 440000"
            ),
            "{errors}"
        );
        assert!(
            errors.contains("record 3 (line 3): category: must be one of"),
            "{errors}"
        );
        // Only the CSV's two rows were stored; the refused file left nothing.
        assert_eq!(store.head().map(|h| h.0).ok(), Some(2));

        // The same bytes again (a crash before the move, or a platform resending): moved, not stored twice.
        write(
            "a-again.csv",
            "region,school,as_of,teacher,student\n440106,4401060001,2018-11-20,10,200\n440106,,2018-11-20,50,900\n",
        );
        let rep = scan_once(&dirs, &intake)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rep.imported, ["a-again.csv"]);
        assert_eq!(store.head().map(|h| h.0).ok(), Some(2));
    }
}
