//! The hub's public key, which every receipt must verify with: pinned as `hub_key` in
//! `agent.toml`, else the line stored when the hub was first reached (trust on first use).
//! The one place that decides which key that is — the pusher before it checks receipts,
//! and `verify` (the command and `POST /v1/verify`) before it re-checks them.

use ed25519_dalek::VerifyingKey;
use spacesync_shared::keys::{self, PublicKeyError};

use crate::config::Config;
use crate::store::{Store, StoreError};

/// The hub key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HubKeyError {
    /// `hub_key` in agent.toml is not a key line.
    #[error("hub_key in agent.toml: {0}")]
    Pinned(PublicKeyError),
    /// The line stored on first use is not a key line (a damaged store).
    #[error("the stored hub key is unusable ({0}); set hub_key in agent.toml")]
    Stored(PublicKeyError),
    /// What the hub sent as its key is not a key line.
    #[error(
        "{url} did not answer a key line ({error}); check the hub URL, or pin hub_key in agent.toml"
    )]
    Fetched {
        /// Where it was fetched.
        url: String,
        /// Why it is not a key.
        error: PublicKeyError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The hub key already known: the pinned one, else the one stored on first use; `None`
/// while the hub has never been reached.
pub fn known(cfg: &Config, store: &Store) -> Result<Option<VerifyingKey>, HubKeyError> {
    if let Some(line) = &cfg.hub_key {
        return keys::parse_public_key(line)
            .map(Some)
            .map_err(HubKeyError::Pinned);
    }
    match store.hub_key()? {
        Some(line) => keys::parse_public_key(&line)
            .map(Some)
            .map_err(HubKeyError::Stored),
        None => Ok(None),
    }
}

/// Trusts the key line the hub answered at `url` (first use): checks it and stores it
/// durably, so every later run checks receipts with the same key.
pub async fn trust_first_use(
    store: &Store,
    url: &str,
    answered: &[u8],
) -> Result<(VerifyingKey, String), HubKeyError> {
    let line = String::from_utf8_lossy(answered).trim().to_string();
    let key = keys::parse_public_key(&line).map_err(|error| HubKeyError::Fetched {
        url: url.to_string(),
        error,
    })?;
    store.set_hub_key(&line).await?;
    Ok((key, line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::tests::identity;
    use ed25519_dalek::SigningKey;

    fn line(seed: u8) -> String {
        keys::public_key_line(&SigningKey::from_bytes(&[seed; 32]).verifying_key())
    }

    #[tokio::test]
    async fn pinned_then_stored_then_first_use() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let ident = identity();
        let mut cfg = Config::new(
            ident.source.clone(),
            ident.scope,
            "http://127.0.0.1:1".into(),
        );
        let k = |o: Result<Option<VerifyingKey>, HubKeyError>| {
            o.map(|k| k.map(|k| keys::public_key_line(&k)))
                .map_err(|e| e.to_string())
        };
        assert_eq!(k(known(&cfg, &store)), Ok(None));
        let junk = trust_first_use(&store, "http://hub/v1/pubkey", b"<html>").await;
        assert!(matches!(junk, Err(HubKeyError::Fetched { .. })));
        assert_eq!(k(known(&cfg, &store)), Ok(None), "junk is not stored");
        let (_, stored) = trust_first_use(&store, "u", format!("{}\n", line(1)).as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored, line(1));
        assert_eq!(k(known(&cfg, &store)), Ok(Some(line(1))));
        cfg.hub_key = Some(line(2));
        assert_eq!(k(known(&cfg, &store)), Ok(Some(line(2))), "pinned wins");
        cfg.hub_key = Some("ed25519:nope".into());
        assert!(matches!(known(&cfg, &store), Err(HubKeyError::Pinned(_))));
    }
}
