//! Key rotation from the agent (`spacesync-agent rotate-key`, agent stopped).
//!
//! The new key is written to `agent.key.next` (0600, flushed) before anything else. The
//! hub is then asked, in a request signed by the key in force, to let the new key sign
//! from the agent's next seq (`POST /v1/agent/rotate-key`; the body carries the new key's
//! own signature); the hub records it as `agents rotate` does, a hub-signed log entry, so
//! it accepts only the new key from that seq on. Only after the hub's answer does the
//! agent switch: the store's identity and key history change in one flushed write, then
//! `agent.key.next` replaces `agent.key`.
//!
//! A crash anywhere in between loses nothing: while `agent.key.next` exists and the store
//! does not name it, `run` refuses to start and `rotate-key` again finishes the same
//! rotation (the same key, the same seq; the hub answers a rotation it already recorded
//! as the first time, whichever of the two keys signs the request); once the store names
//! it, opening the agent finishes the swap of the files. No entry is signed meanwhile,
//! so every seq before the rotation is signed by the old key and every one after by the
//! new.
//!
//! `rotate-key --lost` is the other half of the hub-side `agents rotate` (the old key is
//! lost or compromised): the agent switches to a new key at once and prints its line and
//! first seq for the ministry's admin; the hub refuses its new entries until the admin
//! has run `agents rotate` with them.

use std::path::Path;

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use spacesync_shared::admin::{self, Rotated};
use spacesync_shared::keys;
use spacesync_shared::wire::{self, ErrorBody};

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
    /// A rotation is half done and `run` may not sign with either key yet.
    #[error(
        "{0} holds a new key whose rotation the hub has not confirmed; run `spacesync-agent rotate-key` again to finish it (or `rotate-key --lost` when the old key is gone)"
    )]
    Pending(std::path::PathBuf),
    /// The hub was not reached or refused.
    #[error(
        "the hub at {hub} {why}; nothing changed here, {next} holds the new key: run `spacesync-agent rotate-key` again"
    )]
    Hub {
        /// The hub URL.
        hub: String,
        /// What happened.
        why: String,
        /// The pending key file.
        next: std::path::PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RotateError + '_ {
    move |error| RotateError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Replaces `agent.key` with `agent.key.next`, durably (the directory is synced).
fn swap_files(data: &DataDir) -> Result<(), RotateError> {
    let next = data.key_next();
    std::fs::rename(&next, data.key()).map_err(io(&next))?;
    std::fs::File::open(&data.root)
        .and_then(|d| d.sync_all())
        .map_err(io(&data.root))?;
    Ok(())
}

/// At open: finishes a rotation the store already records (the files were not swapped
/// yet), and refuses to go on while one is pending. Returns true when it finished one.
pub fn settle(data: &DataDir, cfg: &Config, store: &Store) -> Result<bool, RotateError> {
    let next = data.key_next();
    if !next.exists() {
        return Ok(false);
    }
    let key = keys::read_secret(&next)?;
    let line = keys::public_key_line(&key.verifying_key());
    let want = format!("source {} with key {line}", cfg.source);
    if store.identity()?.as_deref() == Some(want.as_str()) {
        swap_files(data)?;
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
    std::fs::File::open(&data.root)
        .and_then(|d| d.sync_all())
        .map_err(io(&data.root))?;
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

/// Rotates the key of the stopped agent of `data`, asking the hub first (see the module
/// docs). `now` stamps the signed request (the hub refuses one far from its clock).
pub async fn rotate(
    data: &DataDir,
    cfg: &Config,
    store: &Store,
    now: DateTime<Utc>,
) -> Result<Done, RotateError> {
    // Recorded already, files not swapped yet (an interruption): finish that.
    if data.key_next().exists() && settle(data, cfg, store).is_ok() {
        let history = store.key_history()?;
        let (from_seq, key) = history.last().cloned().unwrap_or_default();
        return Ok(Done { key, from_seq });
    }
    let old = keys::read_secret(&data.key())?;
    let new = next_key(data)?;
    let (head, _) = store.head()?;
    let from_seq = head + 1;
    let hub_key = crate::hub_key::known(cfg, store)
        .map_err(|e| RotateError::Hub {
            hub: cfg.hub.clone(),
            why: format!("key is not known here ({e})"),
            next: data.key_next(),
        })?
        .map(|k| keys::public_key_line(&k))
        .ok_or_else(|| RotateError::Hub {
            hub: cfg.hub.clone(),
            why: "was never reached, so its key is not known here: run the agent once, or pin hub_key in agent.toml".into(),
            next: data.key_next(),
        })?;
    let req = admin::rotate_request(&hub_key, cfg.source.as_str(), from_seq, &new);
    let body = serde_json::to_vec(&req).map_err(|e| RotateError::Hub {
        hub: cfg.hub.clone(),
        why: e.to_string(),
        next: data.key_next(),
    })?;
    // Signed by the key in force; when the hub already recorded this rotation (its answer
    // was lost), the new key is the one in force there.
    let mut last = String::new();
    for signer in [&old, &new] {
        match send(cfg, signer, &body, now).await {
            Ok(r) if r.key == req.key && r.from_seq == from_seq => {
                store.rotate_identity(
                    &cfg.source,
                    &keys::public_key_line(&old.verifying_key()),
                    &req.key,
                    from_seq,
                )?;
                swap_files(data)?;
                return Ok(Done {
                    key: req.key,
                    from_seq,
                });
            }
            Ok(r) => {
                last = format!(
                    "recorded another rotation ({} from seq {})",
                    r.key, r.from_seq
                );
                break;
            }
            Err((status, why)) => {
                last = why;
                if status != Some(401) {
                    break;
                }
            }
        }
    }
    Err(RotateError::Hub {
        hub: cfg.hub.clone(),
        why: last,
        next: data.key_next(),
    })
}

/// `rotate-key --lost`: switches to the new key from the next seq at once, without the
/// hub (whose admin records it with `agents rotate`).
pub fn rotate_lost(data: &DataDir, cfg: &Config, store: &Store) -> Result<Done, RotateError> {
    let new = next_key(data)?;
    let key = keys::public_key_line(&new.verifying_key());
    let (head, _) = store.head()?;
    let from_seq = head + 1;
    let old = if data.key().exists() {
        keys::public_key_line(&keys::read_secret(&data.key())?.verifying_key())
    } else {
        store
            .identity()?
            .and_then(|i| i.rsplit(' ').next().map(str::to_string))
            .unwrap_or_default()
    };
    store.rotate_identity(&cfg.source, &old, &key, from_seq)?;
    swap_files(data)?;
    Ok(Done { key, from_seq })
}

/// One signed request; the error carries the HTTP status when there was an answer.
async fn send(
    cfg: &Config,
    key: &SigningKey,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Rotated, (Option<u16>, String)> {
    // The agent's own TLS settings (ca_file, client certificate), as the pusher's.
    let http = crate::tls::http_client(
        &cfg.hub,
        cfg.ca_file.as_ref(),
        cfg.client_cert.as_ref().zip(cfg.client_key.as_ref()),
        std::time::Duration::from_secs(60),
    )
    .map_err(|e| (None, format!("cannot set up TLS to the hub: {e}")))?;
    let path = admin::PATH_AGENT_ROTATE_KEY;
    let nonce: [u8; 16] = rand::random();
    let headers = wire::sign_request(key, &cfg.source, "POST", path, now, nonce, body);
    let mut rb = http
        .post(cfg.hub_url(path))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        rb = rb.header(k, v);
    }
    let resp = rb.send().await.map_err(|e| {
        (
            None,
            format!("could not be reached ({})", spacesync_shared::err_chain(&e)),
        )
    })?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| (Some(status.as_u16()), format!("answer lost ({e})")))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| {
            (
                Some(status.as_u16()),
                format!("answered what is not a rotation ({e})"),
            )
        });
    }
    let said = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| format!("answered {status}"));
    Err((
        Some(status.as_u16()),
        format!("refused the rotation ({status}): {said}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An initialised data directory (as `init` makes it) and its store.
    fn agent() -> (tempfile::TempDir, DataDir, Config, Store) {
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

    fn line(path: &Path) -> String {
        keys::public_key_line(
            &keys::read_secret(path)
                .unwrap_or_else(|e| panic!("{e}"))
                .verifying_key(),
        )
    }

    #[test]
    fn an_interrupted_rotation_is_refused_until_finished_and_finished_once_recorded() {
        let (_dir, data, cfg, store) = agent();
        let old = line(&data.key());
        assert!(!settle(&data, &cfg, &store).unwrap_or_else(|e| panic!("{e}")));
        // Interrupted before the hub confirmed: the agent must not start (either key could
        // be wrong for the next seq).
        let next = next_key(&data).unwrap_or_else(|e| panic!("{e}"));
        let new = keys::public_key_line(&next.verifying_key());
        assert!(matches!(
            settle(&data, &cfg, &store),
            Err(RotateError::Pending(_))
        ));
        // The same key is used when the command runs again.
        assert_eq!(
            keys::public_key_line(
                &next_key(&data)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .verifying_key()
            ),
            new
        );
        assert_eq!(line(&data.key()), old);
        // Interrupted after the store recorded it: opening finishes the swap.
        store
            .rotate_identity(&cfg.source, &old, &new, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(settle(&data, &cfg, &store).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(line(&data.key()), new);
        assert!(!data.key_next().exists());
        assert_eq!(
            store.key_history().unwrap_or_else(|e| panic!("{e}")),
            vec![(1, old), (1, new)]
        );
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
