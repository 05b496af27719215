//! Who may read what. People and systems present bearer tokens (stored only as SHA-256
//! hashes) with a role; agents sign their pulls, with a timestamp and a nonce so a
//! captured request cannot be replayed.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration as StdDuration, Instant};

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
    /// When it was revoked; a revoked token is refused everywhere, and so are the
    /// dashboard sessions opened with it. The record stays for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
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
    /// No token matches what was given to revoke.
    #[error(
        "no token matches {0:?}; give the token itself (sst_…) or its id (see `spacesync-hub token list`)"
    )]
    NotFound(String),
    /// An id prefix matches several tokens.
    #[error("{0:?} matches several tokens; give more of the id (see `spacesync-hub token list`)")]
    Ambiguous(String),
}

/// The SHA-256 (hex) a token is stored under. Dashboard sessions keep it to find out
/// whether their token still holds.
pub fn token_hash(token: &str) -> String {
    Digest::of(token.trim().as_bytes()).to_hex()
}

/// Length of a token id: the first hex digits of the token's hash. It names a token in
/// `token list` and `token revoke` without revealing it.
pub const TOKEN_ID_LEN: usize = 12;

/// A token's id (the first [`TOKEN_ID_LEN`] hex digits of its hash).
pub fn token_id(token: &str) -> String {
    token_hash(token)[..TOKEN_ID_LEN].to_string()
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
        revoked_at: None,
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

/// Looks a presented token up; `None` when unknown or revoked.
pub fn lookup_token(store: &dyn Store, token: &str) -> Result<Option<TokenRecord>, StoreError> {
    lookup_token_hash(store, &token_hash(token))
}

/// Looks a token up by its hash ([`token_hash`]); `None` when unknown or revoked.
pub fn lookup_token_hash(store: &dyn Store, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
    Ok(store
        .get(&keys::tok(hash))?
        .and_then(|v| serde_json::from_slice::<TokenRecord>(&v).ok())
        .filter(|r| r.revoked_at.is_none()))
}

/// Every token record, revoked ones included, with its id, in id order.
pub fn list_tokens(store: &dyn Store) -> Result<Vec<(String, TokenRecord)>, StoreError> {
    let mut out = Vec::new();
    for r in store.scan(keys::TOK) {
        let (k, v) = r?;
        let hash = String::from_utf8_lossy(k.get(keys::TOK.len()..).unwrap_or_default());
        let id = hash.get(..TOKEN_ID_LEN).unwrap_or(&hash).to_string();
        let rec: TokenRecord = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            key: format!("tok/{id}…"),
            message: e.to_string(),
        })?;
        out.push((id, rec));
    }
    Ok(out)
}

/// Revokes a token given as the token itself (`sst_…`) or as its id (or a unique prefix
/// of at least 6 hex digits). From then on the token is refused everywhere and the
/// dashboard sessions opened with it end at their next request. Revoking a revoked token
/// changes nothing. Returns the token's id and record.
pub fn revoke_token(
    store: &dyn Store,
    token_or_id: &str,
    now: DateTime<Utc>,
) -> Result<(String, TokenRecord), TokenError> {
    let given = token_or_id.trim();
    // A token is never echoed back, even one that is not known.
    let not_found = || {
        TokenError::NotFound(if given.starts_with("sst_") {
            "sst_…".into()
        } else {
            given.chars().take(64).collect()
        })
    };
    let hash = if given.starts_with("sst_") {
        token_hash(given)
    } else {
        let id = given.to_ascii_lowercase();
        if id.len() < 6 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let mut found = Vec::new();
        for r in store.scan(&keys::tok(&id)) {
            let (k, _) = r?;
            found.push(
                String::from_utf8_lossy(k.get(keys::TOK.len()..).unwrap_or_default()).to_string(),
            );
        }
        if found.len() > 1 {
            return Err(TokenError::Ambiguous(id));
        }
        found.pop().ok_or_else(not_found)?
    };
    let key = keys::tok(&hash);
    let mut rec: TokenRecord = store
        .get(&key)?
        .and_then(|v| serde_json::from_slice(&v).ok())
        .ok_or_else(not_found)?;
    if rec.revoked_at.is_none() {
        rec.revoked_at = Some(now);
        let mut b = WriteBatch::new();
        b.put(key, serde_json::to_vec(&rec).unwrap_or_default());
        store.apply(b)?;
        store.flush()?;
    }
    Ok((hash.get(..TOKEN_ID_LEN).unwrap_or(&hash).to_string(), rec))
}

/// Where the last use of a token is stored: `tokused/<SHA-256 hex of the token>` (apart
/// from the token record, so recording a use can never undo a revocation).
const TOKEN_USED: &[u8] = b"tokused/";

/// Notes that the token whose hash is `hash` was presented now. Written at most once a
/// minute (of real time) per token, without a flush: it informs `token list`, it is not
/// a promise.
pub fn note_use(store: &dyn Store, hash: &str, now: DateTime<Utc>) {
    static LAST: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    let mut last = LAST
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let real = Instant::now();
    if last
        .get(hash)
        .is_some_and(|t| real.duration_since(*t) < StdDuration::from_secs(60))
    {
        return;
    }
    if last.len() > 10_000 {
        last.clear();
    }
    last.insert(hash.to_string(), real);
    drop(last);
    let mut b = WriteBatch::new();
    let mut key = TOKEN_USED.to_vec();
    key.extend_from_slice(hash.as_bytes());
    b.put(key, serde_json::to_vec(&now).unwrap_or_default());
    if let Err(e) = store.apply(b) {
        tracing::warn!(error = %e, "Could not record a token's use.");
    }
}

/// When each token (by id) was last presented to a running hub, as far as recorded.
pub fn token_uses(store: &dyn Store) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
    let mut used = HashMap::new();
    for r in store.scan(TOKEN_USED) {
        let (k, v) = r?;
        let hash = String::from_utf8_lossy(k.get(TOKEN_USED.len()..).unwrap_or_default());
        if let Ok(t) = serde_json::from_slice::<DateTime<Utc>>(&v)
            && let Some(id) = hash.get(..TOKEN_ID_LEN)
        {
            used.insert(id.to_string(), t);
        }
    }
    Ok(used)
}

/// How far a signed request's timestamp may be from the hub clock.
pub const REQUEST_WINDOW: Duration = Duration::minutes(5);

/// Nonces seen within the request window: a replayed signed request is refused, also
/// after a restart. Each nonce is kept until its request's timestamp has left the window,
/// in memory (the fast path) and under `n/` in the store, flushed before the request is
/// answered.
pub struct NonceCache {
    /// Nonce → the instant (hub clock) after which its request is refused by timestamp.
    seen: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Requests whose timestamp is further than this from the hub clock are refused.
    window: Duration,
    /// When expired nonces were last removed from the store.
    pruned_at: Mutex<Option<DateTime<Utc>>>,
    /// The latest hub-clock instant a signed request was accepted at (also stored, and
    /// read from the store at every check, since replicas share it): nonces expire against
    /// it, so a request signed more than a window before it is refused even after the clock
    /// went back (`serve --now` earlier, NTP stepping back) or when the replica that pruned
    /// its nonce runs ahead.
    high_water: Mutex<Option<DateTime<Utc>>>,
}

impl Default for NonceCache {
    fn default() -> NonceCache {
        NonceCache::new(REQUEST_WINDOW)
    }
}

/// What [`NonceCache::check_and_insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// First use: recorded, durably.
    Fresh,
    /// Used before (in this process, or stored by it, an earlier one or another replica).
    Replayed,
    /// Signed more than a window before the latest instant a signed request was accepted
    /// at (the high-water mark): its nonce may have been pruned, so it is refused. On
    /// replicas this also means a replica's clock runs ahead of this one's.
    BeforeHighWater(DateTime<Utc>),
}

impl NonceCheck {
    /// Whether the request may proceed.
    pub fn is_fresh(self) -> bool {
        self == NonceCheck::Fresh
    }
}

/// Most nonces held in memory before expired ones are dropped.
const MAX_NONCES_IN_MEMORY: usize = 10_000;

impl NonceCache {
    /// A cache for requests accepted within `window` of the hub clock.
    pub fn new(window: Duration) -> NonceCache {
        NonceCache {
            seen: Mutex::new(HashMap::new()),
            window,
            pruned_at: Mutex::new(None),
            high_water: Mutex::new(None),
        }
    }

    /// The accepted distance between a request's timestamp and the hub clock.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records `nonce` of a request signed at `ts`: [`NonceCheck::Fresh`], durably in
    /// `store`, unless it was already used (seen since this process started, or stored by
    /// an earlier one or by another replica on the same database) or is too old for the
    /// stored nonces to vouch for.
    /// Blocking (a store flush).
    pub fn check_and_insert(
        &self,
        store: &dyn Store,
        nonce: &str,
        ts: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<NonceCheck, StoreError> {
        let expires = ts.max(now) + self.window;
        // Read afresh each time (one primary-key read): another replica, its clock ahead,
        // may have moved the mark and pruned by it; the one this process wrote last is a
        // floor, so a blind write racing another replica's never moves the mark back
        // further than this process had seen it.
        let stored = store
            .get(keys::NONCE_HIGH_WATER)?
            .and_then(|v| decode_instant(&v));
        let high_water = {
            let mine = *self.high_water.lock().unwrap_or_else(|p| p.into_inner());
            stored.max(mine)
        };
        if let Some(hw) = high_water.filter(|hw| ts + self.window < *hw) {
            // Older than anything the stored nonces still vouch for.
            return Ok(NonceCheck::BeforeHighWater(hw));
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() > MAX_NONCES_IN_MEMORY {
                seen.retain(|_, t| *t >= now);
            }
            if seen.get(nonce).is_some_and(|t| *t >= now) {
                return Ok(NonceCheck::Replayed);
            }
            // Taken before the store is asked, so two copies of one request racing each
            // other cannot both pass.
            seen.insert(nonce.to_string(), expires);
        }
        let key = keys::nonce(&Digest::of(nonce.as_bytes()).to_hex());
        // Claimed with one atomic insert-if-absent, shared by every replica on the store: a
        // request replayed to another replica finds the nonce taken. A stored nonce stays
        // taken until it is pruned, a window after its request's timestamp left the window.
        if !store.insert_if_absent(&key, &expires.timestamp_millis().to_be_bytes())? {
            return Ok(NonceCheck::Replayed);
        }
        let mut b = WriteBatch::new();
        let hw = high_water.map_or(now, |h| h.max(now));
        b.put(
            keys::NONCE_HIGH_WATER.to_vec(),
            hw.timestamp_millis().to_be_bytes().to_vec(),
        );
        // Expiry is judged against the high-water mark: a clock gone back prunes nothing
        // that could still be replayed.
        self.prune(store, hw, &mut b)?;
        store.apply(b)?;
        store.flush()?;
        *self.high_water.lock().unwrap_or_else(|p| p.into_inner()) = Some(hw);
        Ok(NonceCheck::Fresh)
    }

    /// Adds the deletion of expired stored nonces to `b`, at most once per window.
    fn prune(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
        b: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        let mut at = self.pruned_at.lock().unwrap_or_else(|p| p.into_inner());
        if at.is_some_and(|t| now - t < self.window && t <= now) {
            return Ok(());
        }
        *at = Some(now);
        for kv in store.scan(keys::NONCE) {
            let (k, v) = kv?;
            // An undecodable value is dropped too: it protects nothing.
            if decode_instant(&v).is_none_or(|t| t < now) {
                b.delete(k);
            }
        }
        Ok(())
    }
}

fn decode_instant(v: &[u8]) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::from_be_bytes(v.try_into().ok()?))
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
        // Revoked by id, the token is refused; the record stays, marked.
        let other = create_token(&store, Role::Admin, None, Utc::now()).unwrap();
        let (id, _) = revoke_token(&store, &token_id(&t), Utc::now()).unwrap();
        assert_eq!(id, token_id(&t));
        assert!(lookup_token(&store, &t).unwrap().is_none());
        assert!(lookup_token(&store, &other).unwrap().is_some());
        let listed = list_tokens(&store).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(
            listed
                .iter()
                .any(|(i, r)| *i == id && r.revoked_at.is_some())
        );
        assert!(matches!(
            revoke_token(&store, "sst_unknown", Utc::now()),
            Err(TokenError::NotFound(_))
        ));
        assert!(matches!(
            revoke_token(&store, "xyz", Utc::now()),
            Err(TokenError::NotFound(_))
        ));
        // By the token itself; again is harmless.
        revoke_token(&store, &other, Utc::now()).unwrap();
        revoke_token(&store, &other, Utc::now()).unwrap();
        assert!(lookup_token(&store, &other).unwrap().is_none());
        for r in store.scan(b"") {
            let (k, v) = r.unwrap();
            assert!(!String::from_utf8_lossy(&k).contains(&t));
            assert!(!String::from_utf8_lossy(&v).contains(&t));
        }
    }

    #[test]
    fn nonces_are_single_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let c = NonceCache::default();
        let now = Utc::now();
        assert!(
            c.check_and_insert(&store, "a", now, now)
                .unwrap()
                .is_fresh()
        );
        assert!(
            !c.check_and_insert(&store, "a", now, now)
                .unwrap()
                .is_fresh()
        );
        assert!(
            c.check_and_insert(&store, "b", now, now)
                .unwrap()
                .is_fresh()
        );
    }

    #[test]
    fn nonces_survive_a_restart_and_expire_with_their_window() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        {
            let store = crate::store::SledStore::open(dir.path()).unwrap();
            assert!(
                NonceCache::default()
                    .check_and_insert(&store, "a", now, now)
                    .unwrap()
                    .is_fresh()
            );
        }
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let fresh = NonceCache::default();
        assert!(
            !fresh
                .check_and_insert(&store, "a", now, now)
                .unwrap()
                .is_fresh()
        );
        // Once the request's timestamp is out of the window, the nonce is forgotten and
        // pruned from the store by the next insertion.
        let later = now + REQUEST_WINDOW * 2;
        let other = NonceCache::default();
        assert!(
            other
                .check_and_insert(&store, "b", later, later)
                .unwrap()
                .is_fresh()
        );
        let left: Vec<_> = store.scan(keys::NONCE).collect();
        assert_eq!(left.len(), 1, "the expired nonce was pruned");
    }

    #[test]
    fn a_pruned_nonce_does_not_replay_after_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = Utc::now();
        let later = t + REQUEST_WINDOW * 2;
        {
            let store = crate::store::SledStore::open(dir.path()).unwrap();
            let c = NonceCache::default();
            assert!(c.check_and_insert(&store, "a", t, t).unwrap().is_fresh());
            // The clock moves on; "a" is pruned by the next insertion.
            assert!(
                c.check_and_insert(&store, "b", later, later)
                    .unwrap()
                    .is_fresh()
            );
        }
        // Restarted with the clock back at t (an earlier `--now`, NTP stepping back): the
        // captured request signed at t is refused though its nonce is gone.
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let fresh = NonceCache::default();
        assert!(
            !fresh
                .check_and_insert(&store, "a", t, t)
                .unwrap()
                .is_fresh()
        );
        // A request signed now (within a window of the high-water mark) still passes.
        assert!(
            fresh
                .check_and_insert(&store, "c", later, t)
                .unwrap()
                .is_fresh()
        );
    }

    /// Replicas on one store with skewed clocks: a nonce pruned by the replica whose clock
    /// is ahead cannot be replayed to another replica, which reads the stored high-water
    /// mark afresh rather than the one it saw first.
    #[test]
    fn a_nonce_pruned_by_a_replica_ahead_does_not_replay_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let t = Utc::now();
        let (a, b, c) = (
            NonceCache::default(),
            NonceCache::default(),
            NonceCache::default(),
        );
        // b has seen the store once (its high-water mark then: t).
        assert!(b.check_and_insert(&store, "b0", t, t).unwrap().is_fresh());
        // c accepts "n" signed at t; a, whose clock is 20 minutes ahead, accepts a
        // request and prunes "n" (expired by a's clock).
        assert!(c.check_and_insert(&store, "n", t, t).unwrap().is_fresh());
        let ahead = t + REQUEST_WINDOW * 4;
        assert!(
            a.check_and_insert(&store, "a0", ahead, ahead)
                .unwrap()
                .is_fresh()
        );
        let n_key = keys::nonce(&Digest::of(b"n").to_hex());
        assert_eq!(store.get(&n_key).unwrap(), None, "a pruned it");
        // "n" replayed to b, within b's own window: refused.
        let later = t + Duration::minutes(1);
        assert!(
            !b.check_and_insert(&store, "n", t, later)
                .unwrap()
                .is_fresh()
        );
        // Fail closed: while a runs 20 minutes ahead, b refuses even fresh requests signed
        // by its own clock (replicas' clocks must agree within the window).
        assert!(
            !b.check_and_insert(&store, "b1", later, later)
                .unwrap()
                .is_fresh()
        );
        // The stored mark never moves back: b's writes keep a's.
        assert!(
            b.check_and_insert(&store, "b2", ahead, later)
                .unwrap()
                .is_fresh()
        );
        let hw = store
            .get(keys::NONCE_HIGH_WATER)
            .unwrap()
            .and_then(|v| decode_instant(&v));
        assert_eq!(
            hw.map(|h| h.timestamp_millis()),
            Some(ahead.timestamp_millis())
        );
    }
}
