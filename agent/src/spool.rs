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
//! A moved file's modification time is set to the moment of the move (agent clock), and
//! [`prune`] removes files from `done/` and `failed/` that many days after it
//! (`[retention] spool_done_days`, `spool_failed_days`), so the folders stay bounded.
//!
//! A file's batch carries the idempotency key `file/<sha256 of its bytes>`, so a crash
//! between storing the batch and moving the file does not store it twice: on the next scan
//! it is recognised and just moved. (The same bytes imported with `import` also count.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use spacesync_shared::batch::Format;
use spacesync_shared::clock::Clock;
use spacesync_shared::dsse::Digest;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{DataDir, RetentionConfig};
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
pub async fn scan_once(
    dirs: &DataDir,
    intake: &IntakeHandle,
    clock: &dyn Clock,
) -> Result<ScanReport, SpoolError> {
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
                stamp(&dest, clock.now());
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
                stamp(&errors, clock.now());
                stamp(&dest, clock.now());
                warn!(file = ?name, problems = lines.len(), errors = ?errors, "Spool file refused.");
                rep.failed.push(name);
            }
            Err(
                e @ (IntakeError::Full { .. } | IntakeError::Stopped | IntakeError::CatchingUp),
            ) => {
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

/// Sets `path`'s modification time to `at`, the moment it was moved (pruning counts
/// from it). A failure only makes the file's age count from its earlier time: logged.
fn stamp(path: &Path, at: DateTime<Utc>) {
    let set = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::from(at)));
    if let Err(e) = set {
        warn!(file = ?path, error = %e, "Cannot set a spool file's time; it is pruned by its older time.");
    }
}

/// What one [`prune`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// Files removed from `done/`.
    pub done: usize,
    /// Files removed from `failed/` (`.errors.txt` files included).
    pub failed: usize,
}

/// Removes files moved into `done/` more than `retention.spool_done_days` ago and into
/// `failed/` more than `retention.spool_failed_days` ago (by their modification times,
/// set at the move). Only plain files are touched; anything else in those folders stays.
pub fn prune(
    dirs: &DataDir,
    now: DateTime<Utc>,
    retention: &RetentionConfig,
) -> Result<Pruned, SpoolError> {
    let mut pruned = Pruned::default();
    for (dir, days, count) in [
        (
            dirs.spool_done(),
            retention.spool_done_days,
            &mut pruned.done,
        ),
        (
            dirs.spool_failed(),
            retention.spool_failed_days,
            &mut pruned.failed,
        ),
    ] {
        let cutoff = SystemTime::from(crate::push::prune::cutoff(days, now));
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&dir)(e)),
        };
        for e in rd {
            let e = e.map_err(io(&dir))?;
            let path = e.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io(&path)(err)),
            };
            if !meta.file_type().is_file() {
                continue;
            }
            if meta.modified().map_err(io(&path))? < cutoff {
                match std::fs::remove_file(&path) {
                    Ok(()) => *count += 1,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(io(&path)(err)),
                }
            }
        }
    }
    Ok(pruned)
}

/// How often [`watch`] prunes `done/` and `failed/`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Scans every `poll` until `stop` turns true; prunes `done/` and `failed/` at start and
/// then every hour.
pub async fn watch(
    dirs: DataDir,
    intake: IntakeHandle,
    poll: Duration,
    clock: Arc<dyn Clock>,
    retention: RetentionConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_prune: Option<std::time::Instant> = None;
    while !*stop.borrow() {
        if let Err(e) = scan_once(&dirs, &intake, clock.as_ref()).await {
            // The error can name a spool file, whose name the platform chose: escaped.
            warn!(error = ?e.to_string(), "Spool scan failed; will try again.");
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            let (d, now) = (dirs.clone(), clock.now());
            match tokio::task::spawn_blocking(move || prune(&d, now, &retention)).await {
                Ok(Ok(p)) if p.done + p.failed > 0 => {
                    info!(
                        done = p.done,
                        failed = p.failed,
                        "Pruned spool files past retention."
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(error = ?e.to_string(), "Spool pruning failed; will try again.")
                }
                Err(e) => warn!(error = %e, "Spool pruning stopped; will try again."),
            }
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
    use crate::intake::tests::{clock, writer};
    use crate::store::Store;
    use std::sync::Arc;

    /// A data directory with its spool folders, its store and an intake writing to it.
    fn spool() -> (tempfile::TempDir, DataDir, Store, IntakeHandle) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dirs = DataDir::new(dir.path());
        let store = Store::open(&dirs.db()).unwrap_or_else(|e| panic!("{e}"));
        let (intake, _task) = spawn_writer(writer(&store, Default::default()), Arc::default());
        create_dirs(&dirs).unwrap_or_else(|e| panic!("{e}"));
        (dir, dirs, store, intake)
    }

    #[tokio::test]
    async fn good_files_move_to_done_bad_ones_to_failed_with_reasons() {
        let (_dir, dirs, store, intake) = spool();
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
        let rep = scan_once(&dirs, &intake, clock().as_ref())
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
        let rep = scan_once(&dirs, &intake, clock().as_ref())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rep.imported, ["a-again.csv"]);
        assert_eq!(store.head().map(|h| h.0).ok(), Some(2));
    }

    #[tokio::test]
    async fn moved_files_are_stamped_and_pruned_after_their_retention() {
        let (_dir, dirs, store, intake) = spool();
        let write = |n: &str, t: &str| {
            std::fs::write(dirs.spool().join(n), t).unwrap_or_else(|e| panic!("{e}"))
        };
        write(
            "good.csv",
            "region,school,as_of,teacher,student\n440106,,2018-11-20,50,900\n",
        );
        write("bad.ndjson", "{\"kind\":\"nonsense\"}\n");
        let moved_at = clock().now();
        let rep = scan_once(&dirs, &intake, clock().as_ref())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((rep.imported.len(), rep.failed.len()), (1, 1));
        let mtime = |p: PathBuf| {
            std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        // Stamped with the agent clock's moment of the move (2018), not the file's own.
        let at = SystemTime::from(moved_at);
        assert_eq!(mtime(dirs.spool_done().join("good.csv")), at);
        assert_eq!(mtime(dirs.spool_failed().join("bad.ndjson")), at);
        assert_eq!(mtime(dirs.spool_failed().join("bad.ndjson.errors.txt")), at);
        // Something that is not a plain file is never touched.
        std::fs::create_dir(dirs.spool_done().join("kept-dir")).unwrap_or_else(|e| panic!("{e}"));

        let retention = RetentionConfig::default();
        let days = |d: i64| moved_at + chrono::Duration::days(d);
        let p = prune(&dirs, days(6), &retention).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p, Pruned::default(), "nothing is past 7 and 30 days yet");
        let p = prune(&dirs, days(8), &retention).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p, Pruned { done: 1, failed: 0 });
        assert!(!dirs.spool_done().join("good.csv").exists());
        assert!(dirs.spool_failed().join("bad.ndjson").exists());
        let p = prune(&dirs, days(31), &retention).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p, Pruned { done: 0, failed: 2 });
        assert!(!dirs.spool_failed().join("bad.ndjson.errors.txt").exists());
        assert!(dirs.spool_done().join("kept-dir").is_dir());
        // The entries themselves stay: pruning the folders never touches the store.
        assert_eq!(store.head().map(|h| h.0).ok(), Some(1));
    }
}
