//! `spacesync-hub --data DIR migrate --to postgres://…`: moves a stopped hub from the
//! embedded store (`DIR/db`) into an empty PostgreSQL database, then points hub.toml at it.
//!
//! 1. **The source is checked first**, as `verify` checks it: every leaf's signature under
//!    the key the registry held for it at that point of the log (rotations and revocations
//!    included), every chain with ingest's verifier, every index entry, the Merkle root
//!    against the signed checkpoint, and the views against a recomputation. A damaged log
//!    is not moved.
//! 2. **Its keys are copied** in key order, in batches of [`CHUNK`] keys, each batch one
//!    transaction that also records how far the copy got (`meta/migrating`: the hub's key
//!    line, the source's head, the last key copied). A `migrate` killed mid-way and run
//!    again finds that record and goes on after the last key copied; a database holding
//!    anything else is refused.
//! 3. **The head is adopted**: one transaction removes the record, claims the database for
//!    this hub's key (`meta/hub`, as `init --store` does) and sets the serialization
//!    point's head to the source's ([`PgStore::adopt_head`]).
//! 4. **The target is checked** as the source was, its root compared with the source's and
//!    every bulletin verified against the moved log (the figures recomputed from the log
//!    prefix it names, [`bulletin::verify`]).
//! 5. **hub.toml** gets `store = "postgres://…"` (written to a temporary file and renamed
//!    over it). The old `DIR/db` is left as it was: the hub no longer reads it, and it is the
//!    way back (remove the `store` line).
//!
//! Run again after it finished, `migrate` finds the database holding this hub at the same
//! head and root and only finishes steps 4 and 5.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spacesync_shared::keys;

use crate::bulletin;
use crate::config::{self, ConfigError, DataDir};
use crate::log::{Log, LogError};
use crate::maintenance::{self, VerifyError};
use crate::store::pg::{self, PgStore, Redacted};
use crate::store::{SledStore, Store, StoreError, WriteBatch, keys as store_keys};

/// Keys copied per transaction.
pub const CHUNK: usize = 2000;

/// Most bytes of values copied per transaction (a chunk ends early past this).
pub const CHUNK_BYTES: usize = 8 << 20;

/// Where an unfinished copy records how far it got.
pub const PROGRESS_KEY: &[u8] = crate::store::keys::MIGRATING;

/// Why `migrate` stopped; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The data directory, its key or hub.toml.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key file.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Either store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log's tree state could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Checking a store could not finish.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// hub.toml already names a database.
    #[error(
        "{path} already keeps this hub's state in the PostgreSQL database {shown}; migrate moves a hub from the embedded store (DIR/db) only"
    )]
    AlreadyOnDatabase {
        /// hub.toml.
        path: PathBuf,
        /// The database, password redacted.
        shown: String,
    },
    /// `--to` is not a database URL.
    #[error(
        "--to {shown:?} is not a PostgreSQL URL; write postgres://USER@HOST:PORT/DB[?sslmode=…]"
    )]
    NotUrl {
        /// The value, password redacted.
        shown: String,
    },
    /// The embedded store has no `db/` to move.
    #[error("{0} holds no embedded store; nothing to migrate")]
    NoStore(PathBuf),
    /// `verify` found damage in a store (`which`: the source or the target).
    #[error(
        "the {which} store does not verify ({count} problem(s), the first: {first}); hub.toml was not changed. {todo}"
    )]
    Damaged {
        /// "embedded (source)" or "PostgreSQL (target)".
        which: &'static str,
        /// What to do.
        todo: &'static str,
        /// How many problems.
        count: usize,
        /// The first one.
        first: String,
    },
    /// The database holds something other than an unfinished migration of this hub.
    #[error(
        "the PostgreSQL database {shown} already holds {what}; migrate needs an empty database (CREATE DATABASE …) or one an interrupted `migrate` of this same hub left"
    )]
    TargetInUse {
        /// The database, password redacted.
        shown: String,
        /// What it holds.
        what: String,
    },
    /// The target ended different from the source.
    #[error(
        "after copying, the PostgreSQL database {shown} differs from the embedded store: {what}; hub.toml was not changed. Drop and recreate the database, then run migrate again"
    )]
    Differs {
        /// The database, password redacted.
        shown: String,
        /// What differs.
        what: String,
    },
    /// A stored bulletin does not match the moved log.
    #[error(
        "bulletin {n} does not match the log in the PostgreSQL database {shown}: {error}; hub.toml was not changed"
    )]
    Bulletin {
        /// Its number.
        n: u64,
        /// The database, password redacted.
        shown: String,
        /// How it differs.
        error: bulletin::BulletinError,
    },
    /// hub.toml could not be rewritten.
    #[error("{path}: {error} (the database holds the hub now; add `store = \"…\"` by hand)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

/// The record of an unfinished copy (JSON under [`PROGRESS_KEY`]).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Progress {
    /// The public key line of the hub being moved.
    hub: String,
    /// The source's head: a source changed since (served, administered) is not resumed.
    head: u64,
    /// The source's log size, for the same reason.
    size: u64,
    /// The last key copied, hex.
    last: String,
}

/// What `migrate` did.
#[derive(Debug)]
pub struct Migrated {
    /// The database, password redacted.
    pub shown: String,
    /// Keys copied by this run.
    pub copied: u64,
    /// Whether this run went on with a copy an earlier run left unfinished.
    pub resumed: bool,
    /// Whether the database already held the whole hub (an earlier run got past the copy).
    pub already_moved: bool,
    /// Log leaves (the same on both sides).
    pub leaves: u64,
    /// Sources seen by `verify`.
    pub sources: usize,
    /// The Merkle root, hex (the same on both sides).
    pub root: String,
    /// The serialization point's head adopted.
    pub head: u64,
    /// Bulletins verified on the target.
    pub bulletins: usize,
    /// hub.toml, now naming the database.
    pub config: PathBuf,
}

/// Moves the stopped hub in `dir` into the database at `url` (see the module doc),
/// `chunk` keys per transaction ([`CHUNK`]; tests take fewer to stop it mid-way).
/// `progress` is told the phase and how far it got (leaves for the checks, keys for the
/// copy).
pub fn migrate(
    dir: &DataDir,
    url: &str,
    chunk: usize,
    mut progress: impl FnMut(&str, u64),
) -> Result<Migrated, MigrateError> {
    let shown = Redacted(url).to_string();
    if !pg::is_url(url) {
        return Err(MigrateError::NotUrl { shown });
    }
    let cfg = config::load_config(dir)?;
    if let Some(current) = &cfg.store {
        return Err(MigrateError::AlreadyOnDatabase {
            path: dir.config(),
            shown: Redacted(current).to_string(),
        });
    }
    if !dir.db().exists() {
        return Err(MigrateError::NoStore(dir.db()));
    }
    let key = keys::read_secret(&dir.key())?;
    let key_line = keys::public_key_line(&key.verifying_key());
    // Held until the end: nobody serves the embedded store meanwhile.
    let source = SledStore::open(&dir.db())?;
    let source_log = Log::load(&source)?;
    let source_head = source.head()?;

    let target = PgStore::open(url)?;
    let state = target_state(&target, &key_line)?;
    let (resumed, already_moved, from) = match state {
        Target::Empty => (false, false, None),
        Target::Unfinished(p) => {
            if p.head != source_head || p.size != source_log.size() {
                return Err(MigrateError::TargetInUse {
                    shown,
                    what: format!(
                        "an interrupted migrate of this hub at head {} and log size {}, but the embedded store is now at head {source_head} and log size {} (it changed since)",
                        p.head,
                        p.size,
                        source_log.size()
                    ),
                });
            }
            let last = hex::decode(&p.last).map_err(|e| StoreError::Corrupt {
                key: "meta/migrating".into(),
                message: format!("last key is not hex: {e}"),
            })?;
            (true, false, Some(last))
        }
        Target::Moved { head } => {
            if head != source_head {
                return Err(MigrateError::TargetInUse {
                    shown,
                    what: format!(
                        "this hub already, at head {head} (the embedded store is at {source_head}): it has been served from the database since"
                    ),
                });
            }
            (false, true, None)
        }
    };

    // 1. The source, as `verify` checks it (not again when only the last steps are left).
    if !already_moved {
        let report = maintenance::verify(&source, &key.verifying_key(), &cfg.origin, |n| {
            progress("verify the embedded store", n)
        })?;
        if !report.ok() {
            return Err(MigrateError::Damaged {
                which: "embedded (source)",
                todo: "Run `spacesync-hub --data DIR verify` on it and repair it first (nothing was copied)",
                count: report.problems.len(),
                first: report.problems[0].clone(),
            });
        }
    }

    // 2. The copy, resumable.
    let mut copied = 0u64;
    if !already_moved {
        // Writes that are no commit (a token revoked, an invitation, a nonce) change
        // neither head nor log size: what the interrupted run copied is made equal to the
        // source again before the copy goes on, so such a change is not lost.
        if let Some(last) = &from {
            let fixed = sync_prefix(&source, &target, last)?;
            if fixed > 0 {
                progress("re-copy keys changed since the interrupted run", fixed);
            }
        }
        let mut start = match from {
            // The smallest key after the last one copied.
            Some(mut last) => {
                last.push(0);
                last
            }
            None => Vec::new(),
        };
        loop {
            let mut batch = WriteBatch::new();
            let (mut n, mut bytes) = (0usize, 0usize);
            let mut last: Option<Vec<u8>> = None;
            for r in source.scan_from(b"", &start) {
                let (k, v) = r?;
                // The head lives in its own row there; the record is the target's own.
                if k.as_slice() != store_keys::HEAD && k.as_slice() != PROGRESS_KEY {
                    let v = for_target(&k, v)?;
                    bytes += k.len() + v.len();
                    batch.put(k.clone(), v);
                    n += 1;
                }
                last = Some(k);
                if n >= chunk.max(1) || bytes >= CHUNK_BYTES {
                    break;
                }
            }
            let Some(last) = last else { break };
            let record = Progress {
                hub: key_line.clone(),
                head: source_head,
                size: source_log.size(),
                last: hex::encode(&last),
            };
            batch.put(PROGRESS_KEY, json_bytes(&record));
            target.apply(batch)?;
            copied += n as u64;
            progress("copy keys", copied);
            start = last;
            start.push(0);
        }
        // 3. The head, with the claim, in one transaction.
        let mut finish = WriteBatch::new();
        finish.delete(PROGRESS_KEY);
        finish.put(store_keys::HUB, key_line.as_bytes());
        target.adopt_head(source_head, finish)?;
    }

    // 4. The target, checked as the source was, and compared.
    let report = maintenance::verify(&target, &key.verifying_key(), &cfg.origin, |n| {
        progress("verify the database", n)
    })?;
    if !report.ok() {
        return Err(MigrateError::Damaged {
            which: "PostgreSQL (target)",
            todo: "The copy differs from the verified source: drop and recreate the database, run migrate again, and report this if it repeats",
            count: report.problems.len(),
            first: report.problems[0].clone(),
        });
    }
    let target_log = Log::load(&target)?;
    let differs = |what: String| MigrateError::Differs {
        shown: target.shown().to_string(),
        what,
    };
    if target_log.size() != source_log.size() || target_log.root() != source_log.root() {
        return Err(differs(format!(
            "log size {} root {} there, {} {} here",
            target_log.size(),
            hex::encode(target_log.root()),
            source_log.size(),
            hex::encode(source_log.root())
        )));
    }
    if target.get(store_keys::CHECKPOINT)? != source.get(store_keys::CHECKPOINT)? {
        return Err(differs("the signed checkpoint".into()));
    }
    let target_head = target.head()?;
    if target_head != source_head {
        return Err(differs(format!(
            "head {target_head} there, {source_head} here"
        )));
    }
    let campaign = config::load_campaign(dir)?;
    let listed = bulletin::list(&target).map_err(|error| MigrateError::Bulletin {
        n: 0,
        shown: target.shown().to_string(),
        error,
    })?;
    let source_bulletins = bulletin::list(&source).map_or(usize::MAX, |l| l.len());
    if listed.len() != source_bulletins {
        return Err(differs(format!(
            "{} bulletins there, {source_bulletins} here",
            listed.len()
        )));
    }
    for b in &listed {
        let bulletin_err = |error| MigrateError::Bulletin {
            n: b.number,
            shown: target.shown().to_string(),
            error,
        };
        let doc = bulletin::get(&target, b.number).map_err(bulletin_err)?;
        bulletin::verify(&target, &campaign, &key.verifying_key(), &cfg.origin, &doc)
            .map_err(bulletin_err)?;
    }

    // 5. hub.toml.
    point_config_at(dir, url)?;
    Ok(Migrated {
        shown: target.shown().to_string(),
        copied,
        resumed,
        already_moved,
        leaves: report.leaves,
        sources: report.sources,
        root: hex::encode(target_log.root()),
        head: target_head,
        bulletins: listed.len(),
        config: dir.config(),
    })
}

/// What the database holds, as far as `migrate` is concerned.
enum Target {
    /// Nothing.
    Empty,
    /// A copy of this hub that an earlier run left unfinished.
    Unfinished(Progress),
    /// This hub, wholly (an earlier run adopted the head).
    Moved { head: u64 },
}

fn target_state(target: &PgStore, key_line: &str) -> Result<Target, MigrateError> {
    let in_use = |what: String| MigrateError::TargetInUse {
        shown: target.shown().to_string(),
        what,
    };
    let Some(first) = target.scan(b"").next() else {
        if target.head()? != 0 {
            return Err(in_use(format!(
                "no keys but a head of {} (a hub wrote there and its keys were removed)",
                target.head()?
            )));
        }
        return Ok(Target::Empty);
    };
    let (first_key, _) = first?;
    if let Some(record) = target.get(PROGRESS_KEY)? {
        let p: Progress = serde_json::from_slice(&record).map_err(|e| StoreError::Corrupt {
            key: "meta/migrating".into(),
            message: e.to_string(),
        })?;
        if p.hub != key_line {
            return Err(in_use(format!(
                "an interrupted migrate of another hub ({})",
                p.hub
            )));
        }
        if target.head()? != 0 {
            return Err(in_use(
                "an interrupted migrate, and a hub served there".into(),
            ));
        }
        return Ok(Target::Unfinished(p));
    }
    match target.get(store_keys::HUB)? {
        Some(line) if line == key_line.as_bytes() && target.head()? > 0 => Ok(Target::Moved {
            head: target.head()?,
        }),
        Some(line) => Err(in_use(format!(
            "a hub (key {})",
            String::from_utf8_lossy(&line)
        ))),
        None => Err(in_use(format!(
            "data (key {:?})",
            String::from_utf8_lossy(&first_key)
        ))),
    }
}

fn json_bytes(p: &Progress) -> Vec<u8> {
    // A struct of strings and integers always serializes.
    serde_json::to_vec(p).unwrap_or_default()
}

/// Puts `store = "<url>"` at the top of hub.toml (before any table, where a top-level key
/// must be), through a temporary file renamed over it, 0600 like the original.
fn point_config_at(dir: &DataDir, url: &str) -> Result<(), MigrateError> {
    let path = dir.config();
    let io = |error| MigrateError::Io {
        path: path.clone(),
        error,
    };
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let text = format!(
        "# The PostgreSQL database that holds this hub's state, moved there from the embedded\n\
         # store by `spacesync-hub migrate`. The embedded store under db/ is kept as it was and\n\
         # no longer read; removing this line goes back to it (without what was written since).\n\
         # Prefer PGPASSWORD to a password here.\n\
         store = {}\n\n{text}",
        toml::Value::String(url.to_string())
    );
    let tmp = dir.0.join(".hub.toml.migrate");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(&dir.0) {
        let _ = d.sync_all();
    }
    // Read back as `serve` will.
    config::load_config(dir)?;
    Ok(())
}

/// Makes `target`'s keys up to `upto` (inclusive) equal to `source`'s, the head and the
/// progress record aside: puts what differs or is missing, deletes what the source no
/// longer holds. Returns how many keys it changed.
fn sync_prefix(source: &dyn Store, target: &dyn Store, upto: &[u8]) -> Result<u64, StoreError> {
    let ours = |k: &[u8]| k != store_keys::HEAD && k != PROGRESS_KEY;
    let upto = upto.to_vec();
    let bounded = move |r: &Result<(Vec<u8>, Vec<u8>), StoreError>| {
        r.as_ref()
            .map_or(true, |(k, _)| k.as_slice() <= upto.as_slice())
    };
    let mut src = source
        .scan(b"")
        .take_while(bounded.clone())
        .filter(|r| r.as_ref().map_or(true, |(k, _)| ours(k)))
        .peekable();
    let mut dst = target
        .scan(b"")
        .take_while(bounded)
        .filter(|r| r.as_ref().map_or(true, |(k, _)| ours(k)))
        .peekable();
    let (mut batch, mut in_batch, mut fixed) = (WriteBatch::new(), 0usize, 0u64);
    loop {
        let next_src = src.peek().map(|r| r.as_ref().map(|(k, _)| k.clone()));
        let next_dst = dst.peek().map(|r| r.as_ref().map(|(k, _)| k.clone()));
        let (a, b) = match (next_src, next_dst) {
            (None, None) => break,
            (Some(Err(_)), _) => return Err(src.next().and_then(Result::err).unwrap_or_else(gone)),
            (_, Some(Err(_))) => return Err(dst.next().and_then(Result::err).unwrap_or_else(gone)),
            (Some(Ok(a)), Some(Ok(b))) => (Some(a), Some(b)),
            (Some(Ok(a)), None) => (Some(a), None),
            (None, Some(Ok(b))) => (None, Some(b)),
        };
        match (a, b) {
            (Some(a), Some(b)) if a == b => {
                let (_, v) = src.next().transpose()?.unwrap_or_default();
                let (_, w) = dst.next().transpose()?.unwrap_or_default();
                let v = for_target(&a, v)?;
                if v != w {
                    batch.put(a, v);
                    (in_batch, fixed) = (in_batch + 1, fixed + 1);
                }
            }
            (Some(a), b) if b.as_ref().is_none_or(|b| a < *b) => {
                let (k, v) = src.next().transpose()?.unwrap_or_default();
                let v = for_target(&k, v)?;
                batch.put(k, v);
                (in_batch, fixed) = (in_batch + 1, fixed + 1);
            }
            _ => {
                let (k, _) = dst.next().transpose()?.unwrap_or_default();
                batch.delete(k);
                (in_batch, fixed) = (in_batch + 1, fixed + 1);
            }
        }
        if in_batch >= 1024 {
            target.apply(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        target.apply(batch)?;
    }
    Ok(fixed)
}

/// A source value as the database stores it: the log's compressed packs as plain packs
/// (PostgreSQL keeps them so, [`Store::compresses_log`], for its analyst views to unpack in
/// SQL), everything else as it is.
fn for_target(key: &[u8], value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let Some(last) = key
        .strip_prefix(store_keys::LOG)
        .and_then(|i| <[u8; 8]>::try_from(i).ok())
        .map(u64::from_be_bytes)
    else {
        return Ok(value);
    };
    crate::log::pack::uncompressed(last, value).map_err(|e| StoreError::Corrupt {
        key: format!("log/{last}"),
        message: e.to_string(),
    })
}

/// The error for an iterator that ended where it had just shown an error (cannot happen).
fn gone() -> StoreError {
    StoreError::Backend {
        op: "scan",
        message: "a scan ended while comparing the stores".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn put(s: &dyn Store, pairs: &[(&str, &str)]) {
        let mut b = WriteBatch::new();
        for (k, v) in pairs {
            b.put(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        s.apply(b).unwrap_or_else(|e| panic!("{e}"));
    }

    fn all(s: &dyn Store) -> Vec<(String, String)> {
        s.scan(b"")
            .map(|r| {
                let (k, v) = r.unwrap_or_else(|e| panic!("{e}"));
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect()
    }

    /// A resumed copy first makes what the interrupted run copied equal to the source:
    /// changed values copied again, new keys added, keys the source dropped deleted; keys
    /// past the resume point and the progress record untouched.
    #[test]
    fn a_resumed_copy_repairs_what_changed_since() {
        let (source, target) = (MemStore::new(), MemStore::new());
        put(
            &source,
            &[
                ("a", "1"),
                ("b", "new"),
                ("c", "3"),
                ("tok/1", "revoked"),
                ("z", "9"),
            ],
        );
        put(
            &target,
            &[
                ("a", "1"),
                ("b", "old"),
                ("bb", "gone"),
                ("tok/1", "active"),
                ("zz", "later"),
            ],
        );
        let mut p = WriteBatch::new();
        p.put(PROGRESS_KEY, b"progress".to_vec());
        target.apply(p).unwrap_or_else(|e| panic!("{e}"));
        let fixed = sync_prefix(&source, &target, b"tok/1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fixed, 4, "b changed, bb dropped, c added, tok/1 changed");
        let got = all(&target);
        let want: Vec<(String, String)> = [
            ("a", "1"),
            ("b", "new"),
            ("c", "3"),
            ("meta/migrating", "progress"),
            ("tok/1", "revoked"),
            ("zz", "later"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(
            sync_prefix(&source, &target, b"tok/1").unwrap_or_else(|e| panic!("{e}")),
            0
        );
    }
}
