//! The one repair both binaries make to a sled 0.34 directory before opening it.
//!
//! sled 0.34 writes a snapshot of its page table only while opening a store: it writes
//! `snap.<lsn>.generating`, syncs it, renames it to `snap.<lsn>` and then removes older
//! snapshots (before that it may have zeroed a torn log tail, which the next open does
//! again). But when it reads the store back it takes the
//! lexically greatest `snap.` file, `.generating` ones included, and refuses to open if
//! that file is short or fails its CRC ("empty/corrupt snapshot file found" then
//! `Corruption { at: None }`; sled issue #1527). So a process killed during the few
//! milliseconds of that write leaves a store that no later start can open, although
//! nothing in it is lost: before the rename nothing but that torn tail has changed, and
//! the previous `snap.<lsn>` plus the log still describe every flushed write.
//!
//! [`remove_unfinished_snapshots`] deletes those `.generating` files, which returns the
//! directory to the state it had just before the interrupted open; sled then rebuilds the
//! snapshot from the older one and the log, as it does after any kill. It does so while
//! holding sled's own lock on `<dir>/db`, so a store another process is opening (and
//! may be writing a snapshot for at this moment) is left untouched.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Removes the `snap.*.generating` files an interrupted sled open left in `dir`, and
/// returns their paths (empty when there were none, when `dir` holds no store yet, or
/// when another process holds the store's lock, in which case sled's open reports it).
/// Before that it syncs the store's log file (`db`), so that what the open recovers from
/// it — written by a process that was killed before its flush — is on disk.
pub fn remove_unfinished_snapshots(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let lock = match File::options().read(true).write(true).open(dir.join("db")) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // sled (through fs2) takes a non-blocking exclusive flock on this file.
    match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    }
    // What a killed process had written but not yet synced is still in the page cache,
    // and sled is about to recover it as the store's content: the agent then takes it
    // as durable (its pusher may send it) and the hub answers resent entries from it
    // without writing (so without a flush). Synced here, a power cut after this start
    // can no longer take back what it recovers.
    lock.sync_all()?;
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("snap.") && name.ends_with(".generating") {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    if !removed.is_empty() {
        // The removal must not come back after a power cut while sled's new snapshot
        // (written under the same name) is still being synced.
        File::open(dir)?.sync_all()?;
    }
    drop(lock);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens sled at `dir`, waiting (up to 10 s) while the file lock of a store this
    /// process dropped is still held: sled 0.34 lets go of it only when its background
    /// threads have (its own tests block on the lock for that reason), so an open right
    /// after a drop can fail with "could not acquire lock" instead of what it tests.
    fn sled_at(dir: &Path) -> sled::Result<sled::Db> {
        let mut tries = 0;
        loop {
            match sled::Config::new().path(dir).open() {
                Err(sled::Error::Io(e))
                    if tries < 400 && e.to_string().contains("could not acquire lock") =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    /// What a kill during sled's snapshot write leaves: a short `.generating` file with a
    /// greater lsn than the finished snapshot.
    fn interrupted_open(dir: &Path) {
        fs::write(dir.join("snap.7FFFFFFFFFFFFFFF.generating"), [0u8; 5]).unwrap();
    }

    #[test]
    fn a_store_left_by_a_kill_during_snapshot_opens_again_with_every_write() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        {
            let db = sled_at(&dir).unwrap();
            for i in 0u32..500 {
                db.insert(i.to_be_bytes(), &[7u8; 100][..]).unwrap();
            }
            db.flush().unwrap();
        }
        interrupted_open(&dir);
        // The bug this works around: sled alone refuses the directory.
        let refused = sled_at(&dir).map(drop);
        assert!(
            matches!(refused, Err(sled::Error::Corruption { .. })),
            "sled 0.34 is expected to refuse a store with a short .generating snapshot; \
             if it no longer does, this repair may be unnecessary: {refused:?}"
        );
        let removed = remove_unfinished_snapshots(&dir).unwrap();
        assert_eq!(removed.len(), 1, "{removed:?}");
        let db = sled_at(&dir).unwrap();
        assert_eq!(db.len(), 500);
        for i in 0u32..500 {
            assert_eq!(db.get(i.to_be_bytes()).unwrap().unwrap().len(), 100);
        }
        // Finished snapshots are kept.
        assert!(fs::read_dir(&dir).unwrap().any(|e| {
            let n = e.unwrap().file_name();
            let n = n.to_string_lossy();
            n.starts_with("snap.") && !n.ends_with(".generating")
        }));
    }

    #[test]
    fn a_store_in_use_by_another_opener_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        let db = sled_at(&dir).unwrap();
        interrupted_open(&dir);
        // sled holds the lock on `db` (flock locks conflict across open files, also
        // within one process), so nothing is touched.
        assert!(remove_unfinished_snapshots(&dir).unwrap().is_empty());
        assert!(dir.join("snap.7FFFFFFFFFFFFFFF.generating").exists());
        drop(db);
        assert_eq!(remove_unfinished_snapshots(&dir).unwrap().len(), 1);
    }

    #[test]
    fn no_store_yet_is_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            remove_unfinished_snapshots(&tmp.path().join("absent"))
                .unwrap()
                .is_empty()
        );
        assert!(remove_unfinished_snapshots(tmp.path()).unwrap().is_empty());
    }
}
