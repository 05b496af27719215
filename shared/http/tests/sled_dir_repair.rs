//! `sled_dir::remove_unfinished_snapshots`, attacked from the directory's side: a kill at
//! every stage of sled's snapshot write, names that only look like an unfinished snapshot,
//! symbolic links (as the snapshot file and as the data directory), a directory so named,
//! and a kill during the repair itself.

use std::fs;
use std::path::{Path, PathBuf};

use spacesync_http::sled_dir::remove_unfinished_snapshots;

/// Opens the store in `dir`, waiting (up to 10 s) while the handle dropped just before
/// still holds its lock: sled's flusher thread lets go of it a moment after the drop, later
/// on a loaded machine (this test once failed so while a release build ran beside it).
fn open(dir: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn snapshots(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with("snap."))
        .collect()
}

/// Every key written, with its value.
fn assert_all_writes(db: &sled::Db, n: u32, what: &str) {
    assert_eq!(db.len(), n as usize, "{what}");
    for i in 0..n {
        assert_eq!(
            db.get(i.to_be_bytes()).unwrap().as_deref(),
            Some(&i.to_le_bytes().repeat(8)[..]),
            "{what}: key {i}"
        );
    }
}

fn write(db: &sled::Db, range: std::ops::Range<u32>) {
    for i in range {
        db.insert(i.to_be_bytes(), i.to_le_bytes().repeat(8))
            .unwrap();
    }
    db.flush().unwrap();
}

/// A store as it is just before an open that writes a new snapshot (`before`), and the
/// snapshot file that open writes (its name and bytes).
fn store_before_a_snapshot_write(root: &Path) -> (PathBuf, String, Vec<u8>, u32) {
    let before = root.join("before");
    {
        let db = open(&before).unwrap();
        write(&db, 0..300);
    }
    {
        // This open writes a first snapshot; the writes after it are only in the log.
        let db = open(&before).unwrap();
        write(&db, 300..700);
    }
    let old = snapshots(&before);
    assert_eq!(old.len(), 1, "{old:?}");
    // What the next open writes.
    let after = root.join("after");
    copy_dir(&before, &after);
    drop(open(&after).unwrap());
    let new = snapshots(&after);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, old, "the open wrote a new snapshot");
    let bytes = fs::read(after.join(&new[0])).unwrap();
    (before, new[0].clone(), bytes, 700)
}

/// sled writes `snap.<lsn>.generating`, syncs, renames it, then removes the old snapshot.
/// A kill after any byte of the write (the file short, or complete but not renamed) is
/// repaired by the removal, and the store opens with every write; a kill after the rename
/// (two finished snapshots) needs no repair and none is made.
#[test]
fn a_kill_at_any_point_of_the_snapshot_write_leaves_a_store_that_opens_with_every_write() {
    let tmp = tempfile::tempdir().unwrap();
    let (before, new_name, bytes, n) = store_before_a_snapshot_write(tmp.path());
    let generating = format!("{new_name}.generating");
    let mut cuts: Vec<usize> = vec![
        0,
        1,
        11,
        12,
        13,
        bytes.len() / 2,
        bytes.len() - 4,
        bytes.len() - 1,
    ];
    cuts.push(bytes.len());
    for cut in cuts {
        let dir = tmp.path().join(format!("cut-{cut}"));
        copy_dir(&before, &dir);
        fs::write(dir.join(&generating), &bytes[..cut]).unwrap();
        let removed = remove_unfinished_snapshots(&dir).unwrap();
        assert_eq!(removed, vec![dir.join(&generating)], "cut at {cut}");
        let db = open(&dir).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_all_writes(&db, n, &format!("cut at {cut}"));
        drop(db);
        // And again: the open after the repair wrote its snapshot, and nothing is left to do.
        assert!(remove_unfinished_snapshots(&dir).unwrap().is_empty());
        assert_all_writes(&open(&dir).unwrap(), n, &format!("cut at {cut}, reopened"));
    }
    // Killed after the rename, before the old snapshot was removed.
    let dir = tmp.path().join("renamed");
    copy_dir(&before, &dir);
    fs::write(dir.join(&new_name), &bytes).unwrap();
    assert!(remove_unfinished_snapshots(&dir).unwrap().is_empty());
    assert_eq!(snapshots(&dir).len(), 2);
    assert_all_writes(&open(&dir).unwrap(), n, "after the rename");
}

/// Only `snap.*.generating` regular files and links are removed: a link so named goes
/// (not what it points to), and every look-alike stays.
#[test]
fn only_unfinished_snapshot_names_are_removed_and_links_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    drop(open(&dir).unwrap());
    let outside = tmp.path().join("precious");
    fs::write(&outside, b"not sled's").unwrap();
    let keep = [
        "snap.0000000000000001.generating.bak",
        "snap.0000000000000001.generatingx",
        "snap.0000000000000001.Generating",
        "xsnap.0000000000000001.generating",
        "SNAP.0000000000000001.generating",
        "snap.0000000000000001",
        "0000000000000001.generating",
        "conf.generating",
    ];
    for k in keep {
        fs::write(dir.join(k), b"x").unwrap();
    }
    fs::write(dir.join("snap.00000000000000A0.generating"), [0u8; 3]).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("snap.00000000000000B0.generating")).unwrap();
    let before = names(&dir);
    let mut removed = remove_unfinished_snapshots(&dir).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            dir.join("snap.00000000000000A0.generating"),
            dir.join("snap.00000000000000B0.generating"),
        ]
    );
    let after = names(&dir);
    let gone: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
    assert_eq!(gone.len(), 2, "{gone:?}");
    for k in keep {
        assert_eq!(fs::read(dir.join(k)).unwrap(), b"x", "{k}");
    }
    assert_eq!(fs::read(&outside).unwrap(), b"not sled's");
}

/// A directory named like an unfinished snapshot is not descended into or removed: the
/// repair reports an error and leaves it (sled itself refuses such a store too).
#[test]
fn a_directory_named_like_an_unfinished_snapshot_is_left_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    drop(open(&dir).unwrap());
    let d = dir.join("snap.00000000000000C0.generating");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("inside"), b"kept").unwrap();
    assert!(remove_unfinished_snapshots(&dir).is_err());
    assert_eq!(fs::read(d.join("inside")).unwrap(), b"kept");
}

/// A data directory reached through a symbolic link is repaired where it really is, and
/// the store opens through the link with every write; nothing beside the link is touched.
#[test]
fn a_symlinked_data_directory_is_repaired_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let (before, new_name, bytes, n) = store_before_a_snapshot_write(tmp.path());
    let real = tmp.path().join("real");
    copy_dir(&before, &real);
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let generating = format!("{new_name}.generating");
    fs::write(real.join(&generating), &bytes[..bytes.len() / 3]).unwrap();
    // A look-alike beside the link, outside the store.
    fs::write(tmp.path().join(&generating), b"beside").unwrap();
    let removed = remove_unfinished_snapshots(&link).unwrap();
    assert_eq!(removed, vec![link.join(&generating)]);
    assert!(!real.join(&generating).exists());
    assert_eq!(fs::read(tmp.path().join(&generating)).unwrap(), b"beside");
    assert_all_writes(&open(&link).unwrap(), n, "through the link");
}

/// A kill during the repair (some unfinished files removed, others not): the next start
/// removes the rest and the store opens with every write.
#[test]
fn a_kill_during_the_repair_is_finished_by_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (before, new_name, bytes, n) = store_before_a_snapshot_write(tmp.path());
    let dir = tmp.path().join("dir");
    copy_dir(&before, &dir);
    let generating = format!("{new_name}.generating");
    fs::write(dir.join(&generating), &bytes[..7]).unwrap();
    fs::write(dir.join("snap.FFFFFFFFFFFFFFFF.generating"), [1u8; 2]).unwrap();
    // The first start removed only the greatest one, then was killed.
    fs::remove_file(dir.join("snap.FFFFFFFFFFFFFFFF.generating")).unwrap();
    assert!(
        open(&dir).is_err(),
        "the short file left still refuses sled alone"
    );
    assert_eq!(
        remove_unfinished_snapshots(&dir).unwrap(),
        vec![dir.join(&generating)]
    );
    assert_all_writes(&open(&dir).unwrap(), n, "after the second start");
}

/// While a store is open (its lock held), even an unfinished snapshot file is left: it may
/// be the one the opener is writing.
#[test]
fn nothing_is_removed_from_a_store_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let db = open(&dir).unwrap();
    write(&db, 0..10);
    let f = dir.join("snap.00000000000000D0.generating");
    fs::write(&f, [0u8; 40]).unwrap();
    for _ in 0..3 {
        assert!(remove_unfinished_snapshots(&dir).unwrap().is_empty());
        assert!(f.exists());
    }
    assert_all_writes(&db, 10, "in use");
}
