//! Who may read what. People and systems present bearer tokens (stored only as SHA-256
//! hashes) with a role; agents sign their pulls, with a timestamp and a nonce so a
//! captured request cannot be replayed.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use spacesync_shared::RegionCode;
use spacesync_shared::dsse::Digest;
use spacesync_shared::region::Level;

use crate::store::{Store, StoreError, WriteBatch, keys};

/// A reader's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, including contact-form personal data and administration.
    Admin,
    /// Reads everything except personal data.
    Ministry,
    /// Reads its own province only.
    Province(RegionCode),
}

impl Role {
    /// May this role read figures about `region`?
    pub fn can_read(&self, region: RegionCode) -> bool {
        match self {
            Role::Admin | Role::Ministry => true,
            Role::Province(p) => region.is_within(*p),
        }
    }

    /// May this role read national figures and every province?
    pub fn reads_all(&self) -> bool {
        matches!(self, Role::Admin | Role::Ministry)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin => f.write_str("admin"),
            Role::Ministry => f.write_str("ministry"),
            Role::Province(c) => write!(f, "province:{c}"),
        }
    }
}

/// Why a role is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role {0:?} is not one of admin, ministry, province:<PP0000 code>")]
pub struct RoleError(pub String);

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Role, RoleError> {
        match s {
            "admin" => Ok(Role::Admin),
            "ministry" => Ok(Role::Ministry),
            other => {
                let code = other
                    .strip_prefix("province:")
                    .and_then(|c| RegionCode::parse(c).ok())
                    .filter(|c| c.level() == Level::Province)
                    .ok_or_else(|| RoleError(s.to_string()))?;
                Ok(Role::Province(code))
            }
        }
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A stored token: the hash is the key; the token itself is never stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Optional note (who it was given to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Token errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness.
    #[error("cannot generate a token: the system random source failed ({0})")]
    Random(String),
}

fn token_hash(token: &str) -> String {
    Digest::of(token.trim().as_bytes()).to_hex()
}

/// Creates a token with `role`, stores its hash, and returns the token (shown once).
pub fn create_token(
    store: &dyn Store,
    role: Role,
    label: Option<String>,
    now: DateTime<Utc>,
) -> Result<String, TokenError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
    let token = format!("sst_{}", URL_SAFE_NO_PAD.encode(raw));
    let rec = TokenRecord {
        role,
        created_at: now,
        label,
    };
    let mut b = WriteBatch::new();
    b.put(
        keys::tok(&token_hash(&token)),
        serde_json::to_vec(&rec).unwrap_or_default(),
    );
    store.apply(b)?;
    store.flush()?;
    Ok(token)
}

/// Looks a presented token up; `None` when unknown.
pub fn lookup_token(store: &dyn Store, token: &str) -> Result<Option<TokenRecord>, StoreError> {
    Ok(store
        .get(&keys::tok(&token_hash(token)))?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}

/// How far a signed request's timestamp may be from the hub clock.
pub const REQUEST_WINDOW: Duration = Duration::minutes(5);

/// Nonces seen within the request window: a replayed signed request is refused.
pub struct NonceCache {
    seen: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Requests older than this are refused by timestamp, so nonces are kept twice as long.
    window: Duration,
}

impl Default for NonceCache {
    fn default() -> NonceCache {
        NonceCache::new(REQUEST_WINDOW)
    }
}

impl NonceCache {
    /// A cache for requests accepted within `window` of the hub clock.
    pub fn new(window: Duration) -> NonceCache {
        NonceCache {
            seen: Mutex::new(HashMap::new()),
            window,
        }
    }

    /// The accepted distance between a request's timestamp and the hub clock.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records `nonce`; false when it was already used within the window.
    pub fn check_and_insert(&self, nonce: &str, now: DateTime<Utc>) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, t| *t > now - self.window * 2);
        }
        if seen.get(nonce).is_some_and(|t| *t > now - self.window * 2) {
            return false;
        }
        seen.insert(nonce.to_string(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_scope() {
        let gd: Role = "province:440000".parse().unwrap();
        assert!(gd.can_read(RegionCode::parse("440106").unwrap()));
        assert!(!gd.can_read(RegionCode::parse("110105").unwrap()));
        assert!(!gd.reads_all());
        assert!("province:440100".parse::<Role>().is_err());
        assert!("root".parse::<Role>().is_err());
        assert_eq!("ministry".parse::<Role>().unwrap().to_string(), "ministry");
    }

    #[test]
    fn tokens_are_stored_as_hashes_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let t = create_token(&store, Role::Ministry, None, Utc::now()).unwrap();
        assert_eq!(
            lookup_token(&store, &t).unwrap().unwrap().role,
            Role::Ministry
        );
        assert!(lookup_token(&store, "sst_wrong").unwrap().is_none());
        for r in store.scan(b"") {
            let (k, v) = r.unwrap();
            assert!(!String::from_utf8_lossy(&k).contains(&t));
            assert!(!String::from_utf8_lossy(&v).contains(&t));
        }
    }

    #[test]
    fn nonces_are_single_use() {
        let c = NonceCache::default();
        let now = Utc::now();
        assert!(c.check_and_insert("a", now));
        assert!(!c.check_and_insert("a", now));
        assert!(c.check_and_insert("b", now));
    }
}
