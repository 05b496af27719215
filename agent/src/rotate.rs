//! Key rotation from the agent (`spacesync-agent rotate-key`, agent stopped), in the
//! source's own chain: no network, no hub confirmation.
//!
//! 1. The new key is written to `agent.key.next` (0600, flushed) before anything else.
//! 2. One flushed store write appends a key-transition entry at the next seq N
//!    ([`spacesync_shared::record::KeyTransition`]: the new key's line and its proof, the
//!    whole entry signed by the key in force) and records that the new key signs from
//!    N+1 (the store's identity and key history).
//! 3. The files are swapped: `agent.key` becomes `agent.key.retired`, `agent.key.next`
//!    becomes `agent.key` (the directory synced after each).
//!
//! The pusher delivers the transition like any entry, whenever the hub is reachable; the
//! hub then takes only the new key from N+1 on. Until the hub has receipted the
//! transition, its registry still names the old key, so the agent's signed requests (the
//! hub's head, notices) are signed by the retired key, and by the other key when the hub
//! answers 401 (the hub may hold the transition before the agent holds its receipt);
//! once receipted, `agent.key.retired` is removed (see [`retired`]).
//!
//! A crash anywhere loses nothing and leaves a consistent agent: before step 2 the store
//! does not name the new key, so every seq is still the old key's; `run` refuses to start
//! while `agent.key.next` exists unnamed ([`RotateError::Pending`]) and `rotate-key` again
//! finishes the same rotation with the same key. After step 2 the store names it, and
//! opening the agent ([`settle`]) or `rotate-key` again finishes the swap, whichever file
//! rename the crash interrupted.
//!
//! `rotate-key --lost` is the other half of the hub-side `agents rotate` (the old key is
//! lost or compromised): the agent switches to a new key at once and prints its line and
//! first seq for the ministry's admin; the hub refuses its new entries until the admin
//! has run `agents rotate` with them. Nothing is written to the chain.

use std::path::Path;

use chrono::{DateTime, SubsecRound, Utc};
use ed25519_dalek::SigningKey;
use spacesync_shared::entry::Entry;
use spacesync_shared::keys;

use crate::config::{Config, DataDir};
use crate::store::{Store, StoreError};

/// Why a rotation did not finish; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// A key file problem.
    #[error("{0}")]
    Key(#[from] keys::KeyError),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A file could not be moved.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A rotation was interrupted before the chain recorded it; `run` may not sign with
    /// either key until it is finished.
    #[error(
        "{0} holds a new key whose key-transition entry was not written yet (an interrupted `rotate-key`); run `spacesync-agent rotate-key` again to finish it (no hub is needed), or `rotate-key --lost` when the old key is gone"
    )]
    Pending(std::path::PathBuf),
    /// The last rotation's transition is not receipted by the hub yet: the hub knows only
    /// the retired key, which a second rotation would destroy.
    #[error(
        "the last key rotation (its key-transition entry, seq {through}) is not delivered to the hub yet, and until it is the hub knows only the retired key in {path}; run the agent until `status` shows seq {through} delivered, then rotate again (or `rotate-key --lost` when the ministry re-registers the key by hand)"
    )]
    Undelivered {
        /// The retired key file.
        path: std::path::PathBuf,
        /// Seq of the undelivered transition.
        through: u64,
    },
    /// The key file does not hold the key the store is bound to.
    #[error(
        "{path} does not hold the key this store signs with ({want}); restore the right agent.key (from a backup) before rotating"
    )]
    Mismatch {
        /// The key file.
        path: std::path::PathBuf,
        /// The key line the store names.
        want: String,
    },
    /// A failure injected by a test at a step.
    #[cfg(test)]
    #[error("interrupted at {0:?} (test)")]
    Interrupted(Step),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RotateError + '_ {
    move |error| RotateError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn sync_dir(data: &DataDir) -> Result<(), RotateError> {
    std::fs::File::open(&data.root)
        .and_then(|d| d.sync_all())
        .map_err(io(&data.root))
}

/// The points of a rotation a crash may interrupt (for the tests' injected failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing written yet.
    Start,
    /// `agent.key.next` written and flushed.
    KeyWritten,
    /// The transition entry and the new identity written and flushed.
    EntryWritten,
    /// `agent.key` renamed to `agent.key.retired`.
    Retired,
    /// `agent.key.next` renamed to `agent.key`: done.
    Swapped,
}

/// Replaces `agent.key` with `agent.key.next`, durably, keeping the old key as
/// `agent.key.retired`; resumes a swap interrupted after its first rename.
fn swap_files(
    data: &DataDir,
    crash: &mut dyn FnMut(Step) -> Result<(), RotateError>,
) -> Result<(), RotateError> {
    let (key, next, retired) = (data.key(), data.key_next(), data.key_retired());
    if key.exists() {
        std::fs::rename(&key, &retired).map_err(io(&key))?;
        sync_dir(data)?;
    }
    crash(Step::Retired)?;
    std::fs::rename(&next, &key).map_err(io(&next))?;
    sync_dir(data)?;
    crash(Step::Swapped)
}

fn line_of(key: &SigningKey) -> String {
    keys::public_key_line(&key.verifying_key())
}

/// At open: finishes a rotation the store already records (the files were not swapped
/// yet, or only half), refuses to go on while one is pending, and removes a retired key
/// the hub has receipted the transition of. Returns true when it finished one.
pub fn settle(data: &DataDir, cfg: &Config, store: &Store) -> Result<bool, RotateError> {
    let next = data.key_next();
    if !next.exists() {
        if let Some(r) = retired(data, store)?
            && store.acked()? >= r.through
        {
            forget_retired(data)?;
        }
        return Ok(false);
    }
    let key = keys::read_secret(&next)?;
    let want = format!("source {} with key {}", cfg.source, line_of(&key));
    if store.identity()?.as_deref() == Some(want.as_str()) {
        swap_files(data, &mut |_| Ok(()))?;
        return Ok(true);
    }
    Err(RotateError::Pending(next))
}

/// The key pending in `agent.key.next`, or a new one written there (0600, flushed).
fn next_key(data: &DataDir) -> Result<SigningKey, RotateError> {
    let next = data.key_next();
    if next.exists() {
        return Ok(keys::read_secret(&next)?);
    }
    let key = keys::generate()?;
    keys::write_secret(&next, &key)?;
    sync_dir(data)?;
    Ok(key)
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The new key line.
    pub key: String,
    /// The first seq it signs.
    pub from_seq: u64,
}

/// Rotates the key of the stopped agent of `data` in its chain (see the module docs):
/// the transition entry is stamped `now` (the agent clock) for `campaign`.
pub fn rotate(
    data: &DataDir,
    cfg: &Config,
    store: &Store,
    campaign: &str,
    now: DateTime<Utc>,
) -> Result<Done, RotateError> {
    rotate_with(data, cfg, store, campaign, now, &mut |_| Ok(()))
}

/// [`rotate`], calling `crash` at each [`Step`] (a test's failure there stops it as a
/// crash would).
fn rotate_with(
    data: &DataDir,
    cfg: &Config,
    store: &Store,
    campaign: &str,
    now: DateTime<Utc>,
    crash: &mut dyn FnMut(Step) -> Result<(), RotateError>,
) -> Result<Done, RotateError> {
    // Recorded already, files not (all) swapped yet (an interruption): finish that.
    if data.key_next().exists() && settle(data, cfg, store).is_ok() {
        let history = store.key_history()?;
        let (from_seq, key) = history.last().cloned().unwrap_or_default();
        return Ok(Done { key, from_seq });
    }
    // A second rotation before the hub has the first would overwrite the only key the
    // hub knows (agent.key.retired): the agent could then sign nothing it accepts.
    if let Some(r) = retired(data, store)?
        && store.acked()? < r.through
    {
        return Err(RotateError::Undelivered {
            path: data.key_retired(),
            through: r.through,
        });
    }
    crash(Step::Start)?;
    let old = keys::read_secret(&data.key())?;
    let old_line = line_of(&old);
    let bound = format!("source {} with key {old_line}", cfg.source);
    if let Some(identity) = store.identity()?
        && identity != bound
    {
        return Err(RotateError::Mismatch {
            path: data.key(),
            want: identity,
        });
    }
    let new = next_key(data)?;
    crash(Step::KeyWritten)?;
    let (head, prev) = store.head()?;
    let seq = head + 1;
    let entry = Entry::key_transition(
        cfg.source.clone(),
        seq,
        prev,
        now.trunc_subsecs(3),
        campaign.to_string(),
        &new,
    );
    let env = entry.sign(&old);
    let json = serde_json::to_vec(&env)
        .map_err(|e| StoreError::Corrupt(format!("the key-transition envelope: {e}")))?;
    let new_line = line_of(&new);
    store.append_transition(
        &cfg.source,
        seq,
        &json,
        env.payload_hash(),
        &old_line,
        &new_line,
    )?;
    crash(Step::EntryWritten)?;
    swap_files(data, crash)?;
    Ok(Done {
        key: new_line,
        from_seq: seq + 1,
    })
}

/// `rotate-key --lost`: switches to the new key from the next seq at once, without the
/// hub (whose admin records it with `agents rotate`).
pub fn rotate_lost(data: &DataDir, cfg: &Config, store: &Store) -> Result<Done, RotateError> {
    let new = next_key(data)?;
    let key = line_of(&new);
    let (head, _) = store.head()?;
    let from_seq = head + 1;
    let old = if data.key().exists() {
        line_of(&keys::read_secret(&data.key())?)
    } else {
        store
            .identity()?
            .and_then(|i| i.rsplit(' ').next().map(str::to_string))
            .unwrap_or_default()
    };
    store.rotate_identity(&cfg.source, &old, &key, from_seq)?;
    // A lost key is not kept to sign anything: the admin's rotation makes the hub take
    // the new key at once.
    if data.key().exists() {
        std::fs::remove_file(data.key()).map_err(io(&data.key()))?;
    }
    swap_files(data, &mut |_| Ok(()))?;
    forget_retired(data)?;
    Ok(Done { key, from_seq })
}

/// A retired key still signing the agent's requests: the hub's registry names it until
/// the transition entry at `through` is delivered.
#[derive(Clone)]
pub struct Retired {
    /// The key the transition replaced.
    pub key: SigningKey,
    /// Seq of the transition entry.
    pub through: u64,
}

/// The retired key of the last key transition, while `agent.key.retired` exists.
pub fn retired(data: &DataDir, store: &Store) -> Result<Option<Retired>, RotateError> {
    let path = data.key_retired();
    if !path.exists() {
        return Ok(None);
    }
    let key = keys::read_secret(&path)?;
    let line = line_of(&key);
    // The key history names where the retired key stopped signing.
    let history = store.key_history()?;
    let through = history
        .windows(2)
        .rev()
        .find(|w| w[0].1 == line)
        .map(|w| w[1].0.saturating_sub(1));
    Ok(through.map(|through| Retired { key, through }))
}

/// Removes `agent.key.retired` (the hub has the transition: nothing signs with it again).
pub fn forget_retired(data: &DataDir) -> Result<(), RotateError> {
    let path = data.key_retired();
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(data),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&path)(e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An initialised data directory (as `init` makes it) and its store.
    pub(crate) fn agent() -> (tempfile::TempDir, DataDir, Config, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = DataDir::new(dir.path().join("a"));
        data.create_private().unwrap_or_else(|e| panic!("{e}"));
        crate::config::private_dir(&data.db()).unwrap_or_else(|e| panic!("{e}"));
        let key = keys::generate().unwrap_or_else(|e| panic!("{e}"));
        keys::write_secret(&data.key(), &key).unwrap_or_else(|e| panic!("{e}"));
        let cfg = Config::new(
            spacesync_shared::SourceId::parse("gd-a").unwrap_or_else(|e| panic!("{e}")),
            spacesync_shared::RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}")),
            "http://127.0.0.1:9".into(),
        );
        let store = Store::open(&data.db()).unwrap_or_else(|e| panic!("{e}"));
        store
            .bind_identity(&cfg.source, &keys::public_key_line(&key.verifying_key()))
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, data, cfg, store)
    }

    pub(crate) fn line(path: &Path) -> String {
        keys::public_key_line(
            &keys::read_secret(path)
                .unwrap_or_else(|e| panic!("{e}"))
                .verifying_key(),
        )
    }

    pub(crate) fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_542_679_200, 0).unwrap_or_default()
    }

    /// One activity at seq 1, signed by the agent's key, appended and flushed.
    pub(crate) fn first_entry(data: &DataDir, cfg: &Config, store: &Store) {
        let key = keys::read_secret(&data.key()).unwrap_or_else(|e| panic!("{e}"));
        let v = serde_json::json!({"kind":"activity","region":"440100","date":"2018-11-20",
            "category":"training","title":"before"});
        let entry = Entry {
            source: cfg.source.clone(),
            seq: 1,
            prev: spacesync_shared::dsse::Digest::ZERO,
            recorded_at: now(),
            campaign: "2018".into(),
            record: spacesync_shared::Record::from_value(&v).unwrap_or_else(|p| panic!("{p:?}")),
        };
        let env = entry.sign(&key);
        store
            .append(&crate::store::Append {
                first: 1,
                envelopes: vec![serde_json::to_vec(&env).unwrap_or_default()],
                head_hash: env.payload_hash(),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        store.flush().unwrap_or_else(|e| panic!("{e}"));
    }

    /// The agent is consistent: `agent.key` is the key the store is bound to, no
    /// rotation is pending, and the stored chain verifies from the first key, its
    /// transitions handing it to `agent.key` for the next seq. Returns the chain's length.
    fn consistent(data: &DataDir, cfg: &Config, store: &Store, first: &str) -> u64 {
        assert!(!data.key_next().exists());
        let key = line(&data.key());
        assert_eq!(
            store.identity().unwrap_or_else(|e| panic!("{e}")),
            Some(format!("source {} with key {key}", cfg.source))
        );
        let first = keys::parse_public_key(first).unwrap_or_else(|e| panic!("{e}"));
        let mut v = spacesync_shared::chain::ChainVerifier::new(
            cfg.source.clone(),
            first,
            cfg.scope,
            "2018",
        );
        for row in store.raw_entries() {
            let (seq, bytes) = row.unwrap_or_else(|e| panic!("{e}"));
            let env = crate::store::parse_envelope(seq, &bytes).unwrap_or_else(|e| panic!("{e}"));
            v.push(&env).unwrap_or_else(|e| panic!("seq {seq}: {e}"));
        }
        let next = v.next_seq();
        let in_force = v.keys().key_for(next).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            keys::public_key_line(in_force),
            key,
            "the key in force at seq {next}"
        );
        next - 1
    }

    #[test]
    fn a_crash_at_every_step_ends_in_a_consistent_agent() {
        for step in [
            Step::Start,
            Step::KeyWritten,
            Step::EntryWritten,
            Step::Retired,
            Step::Swapped,
        ] {
            let (dir, data, cfg, store) = agent();
            first_entry(&data, &cfg, &store);
            let old = line(&data.key());
            let got = rotate_with(&data, &cfg, &store, "2018", now(), &mut |at| {
                if at == step {
                    Err(RotateError::Interrupted(at))
                } else {
                    Ok(())
                }
            });
            assert!(
                matches!(got, Err(RotateError::Interrupted(s)) if s == step),
                "{step:?}"
            );
            // The process dies here: the store is opened afresh, as the next start does.
            drop(store);
            let store = Store::open(&data.db()).unwrap_or_else(|e| panic!("{e}"));
            match step {
                // Nothing written, or only the new key's file: the old key still signs,
                // `run` refuses while a key is pending, and `rotate-key` again finishes
                // with the same key.
                Step::Start | Step::KeyWritten => {
                    let pending = data.key_next().exists();
                    assert_eq!(pending, step == Step::KeyWritten);
                    let next = pending.then(|| line(&data.key_next()));
                    if pending {
                        assert!(matches!(
                            settle(&data, &cfg, &store),
                            Err(RotateError::Pending(_))
                        ));
                    }
                    assert_eq!(store.head().unwrap_or_else(|e| panic!("{e}")).0, 1);
                    let done = rotate(&data, &cfg, &store, "2018", now())
                        .unwrap_or_else(|e| panic!("{step:?}: {e}"));
                    if let Some(next) = next {
                        assert_eq!(done.key, next, "the pending key is the one used");
                    }
                    assert_eq!(done.from_seq, 3);
                }
                // The chain holds the transition: opening finishes the file swap.
                Step::EntryWritten | Step::Retired => {
                    assert!(settle(&data, &cfg, &store).unwrap_or_else(|e| panic!("{e}")));
                }
                Step::Swapped => {
                    assert!(!settle(&data, &cfg, &store).unwrap_or_else(|e| panic!("{e}")));
                }
            }
            assert_eq!(consistent(&data, &cfg, &store, &old), 2, "{step:?}");
            // The retired key signs requests until the hub receipts seq 2.
            let r = retired(&data, &store)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("{step:?}: no retired key"));
            assert_eq!((line_of(&r.key), r.through), (old.clone(), 2));
            drop(dir);
        }
    }

    #[test]
    fn a_rotation_needs_no_hub_and_the_retired_key_goes_once_receipted() {
        let (_dir, data, cfg, store) = agent();
        first_entry(&data, &cfg, &store);
        let old = line(&data.key());
        // The configured hub (port 9) is never asked.
        let done = rotate(&data, &cfg, &store, "2018", now()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(done.from_seq, 3);
        assert_eq!(line(&data.key()), done.key);
        assert_eq!(consistent(&data, &cfg, &store, &old), 2);
        assert_eq!(
            store.key_history().unwrap_or_else(|e| panic!("{e}")),
            vec![(1, old), (3, done.key.clone())]
        );
        // Not receipted: the retired key stays.
        assert!(!settle(&data, &cfg, &store).unwrap_or_else(|e| panic!("{e}")));
        assert!(data.key_retired().exists());
        // A second rotation now would destroy the only key the hub knows: refused, and
        // nothing changes.
        let retired_before = std::fs::read(data.key_retired()).unwrap_or_default();
        assert!(matches!(
            rotate(&data, &cfg, &store, "2018", now()),
            Err(RotateError::Undelivered { through: 2, .. })
        ));
        assert_eq!(
            std::fs::read(data.key_retired()).unwrap_or_default(),
            retired_before
        );
        assert_eq!(line(&data.key()), done.key);
        assert!(!data.key_next().exists());
        // Receipted through seq 2: the next open removes it.
        store
            .record_receipts(&[(1, b"r1".to_vec()), (2, b"r2".to_vec())])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!settle(&data, &cfg, &store).unwrap_or_else(|e| panic!("{e}")));
        assert!(!data.key_retired().exists());
        assert!(
            retired(&data, &store)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
        // A store whose key file is another key's is not rotated.
        let (_d2, data2, cfg2, store2) = agent();
        std::fs::remove_file(data2.key()).unwrap_or_else(|e| panic!("{e}"));
        keys::write_secret(
            &data2.key(),
            &keys::generate().unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            rotate(&data2, &cfg2, &store2, "2018", now()),
            Err(RotateError::Mismatch { .. })
        ));
        assert!(!data2.key_next().exists());
    }

    #[test]
    fn a_lost_key_is_replaced_at_once_from_the_next_seq() {
        let (_dir, data, cfg, store) = agent();
        let old = line(&data.key());
        let done = rotate_lost(&data, &cfg, &store).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(done.from_seq, 1);
        assert_eq!(line(&data.key()), done.key);
        assert_eq!(
            store.identity().unwrap_or_else(|e| panic!("{e}")),
            Some(format!("source gd-a with key {}", done.key))
        );
        assert_eq!(
            store.key_history().unwrap_or_else(|e| panic!("{e}")),
            vec![(1, old), (1, done.key)]
        );
    }
}
