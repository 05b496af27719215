//! The hub's data directory and its commented TOML configuration.
//!
//! ```text
//! <data>/               0700: the store holds contact-form names and phone numbers
//! <data>/hub.toml       configuration (written by `init`, edited by the operator; 0600)
//! <data>/hub.key        the hub's Ed25519 key: receipts, checkpoints, bulletins (0600)
//! <data>/webhook.key    the key that signs webhook deliveries, and nothing else (0600)
//! <data>/campaign.toml  the campaign this hub runs (copied at `init`; 0600)
//! <data>/db/            the sled store (0700), unless hub.toml names a database
//! ```
//!
//! The store is chosen at `init` and recorded in hub.toml: without `--store`, sled under
//! `<data>/db/`; with `--store postgres://…`, that PostgreSQL database (the directory then
//! keeps only the keys and the configuration, and a copy of it is another client of the
//! same hub). Every command opens the store hub.toml names ([`open_store`]). `init`
//! refuses a database that already holds anything, and writes the hub's public key line
//! under [`crate::store::keys::HUB`] in the same statement that checks it, so two hubs
//! cannot share one database's log; opening a database that another hub's key claimed is
//! refused.
//!
//! `init` creates each of these with its mode from the start (an existing empty data
//! directory is made 0700; a non-empty one must already be). Every command that opens
//! the directory first checks it ([`check_permissions`]): a data directory, hub.toml or
//! key file that group or others may access is refused, naming the path, its mode and the
//! `chmod` that fixes it — the hub does not silently change modes an operator set.
//! A hub initialised before `webhook.key` existed gets one generated (0600) the first time
//! it is needed ([`webhook_key`]); `spacesync-hub webhook-key` prints its public line.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use spacesync_shared::Campaign;
use spacesync_shared::campaign::CAMPAIGN_2018_TOML;
use spacesync_shared::clock::Clock;
use spacesync_shared::keys;

use crate::hub::{Hub, Limits};
use crate::store::pg::{self, PgStore, Redacted};
use crate::store::{SledStore, Store, keys as store_keys};

/// A configuration or data-directory problem; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The data directory is already initialised.
    #[error("{0} already holds a hub (hub.key exists); refusing to overwrite it")]
    Exists(PathBuf),
    /// The directory is not initialised.
    #[error("{0} holds no hub; run `spacesync-hub --data {0} init` first")]
    NotInitialised(PathBuf),
    /// hub.toml does not parse.
    #[error("{path}: line {line}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The campaign file is wrong.
    #[error("{path}: {error}")]
    Campaign {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: spacesync_shared::campaign::CampaignError,
    },
    /// The key file is wrong.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// A file or directory of the data directory is open to group or others.
    #[error(
        "{path}: {what} is accessible to group or others (mode {mode:o}); it must be private to the hub's user: run `chmod {want:o} {path}`"
    )]
    Permissions {
        /// The file or directory.
        path: PathBuf,
        /// What it is (`data directory`, `configuration`, `key file`).
        what: &'static str,
        /// Its permission bits.
        mode: u32,
        /// The mode it should have (0700 or 0600).
        want: u32,
    },
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Loading the hub state failed.
    #[error(transparent)]
    Hub(#[from] crate::hub::LoadError),
    /// `store` in hub.toml (or `--store`) is not a database URL.
    #[error(
        "{path}: store = {shown:?} is not a PostgreSQL URL; write postgres://USER@HOST:PORT/DB (or leave `store` out for the embedded store under the data directory)"
    )]
    StoreUrl {
        /// Where it was given.
        path: PathBuf,
        /// The value, password redacted.
        shown: String,
    },
    /// `init` was pointed at a database that already holds a hub (or other data).
    #[error(
        "the PostgreSQL database {shown} already holds {what}; refusing to put a second hub's log in it. Use an empty database (CREATE DATABASE …), or copy the data directory of the hub that owns it"
    )]
    DatabaseInUse {
        /// The database, password redacted.
        shown: String,
        /// What it holds.
        what: String,
    },
    /// A migration into the database has not finished.
    #[error(
        "the PostgreSQL database {shown} holds a migration that has not finished (meta/migrating): nothing serves or changes it until it has; run `spacesync-hub --data DIR migrate --to …` on the sled hub again to finish it, or give an empty database"
    )]
    Migrating {
        /// The database, password hidden.
        shown: String,
    },
    /// The database belongs to the hub of another key.
    #[error(
        "the PostgreSQL database {shown} holds the log of another hub ({theirs}), not of this data directory's key ({ours} in {key}); point hub.toml's store at this hub's database, or use a copy of the other hub's data directory"
    )]
    OtherHub {
        /// The database, password redacted.
        shown: String,
        /// The key line stored in the database.
        theirs: String,
        /// This directory's key line.
        ours: String,
        /// The key file.
        key: PathBuf,
    },
}

/// Settings from hub.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Address `serve` listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Checkpoint origin (the log's name).
    pub origin: String,
    /// Most entries per ingest request.
    #[serde(default = "default_batch")]
    pub max_batch_entries: usize,
    /// Ingest requests a second per source.
    #[serde(default = "default_rate")]
    pub rate_per_source: f64,
    /// Burst of ingest requests per source.
    #[serde(default = "default_burst")]
    pub burst_per_source: f64,
    /// Refused (malformed, unauthenticated, replayed) requests a second per client address.
    #[serde(default = "default_rate_per_address")]
    pub rate_per_address: f64,
    /// Burst of refused requests per client address.
    #[serde(default = "default_burst_per_address")]
    pub burst_per_address: f64,
    /// A second address serving `/metrics` without a token (absent: `/metrics` only on
    /// `listen`, for admin tokens).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// `human` or `json` logs.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Where notices are also POSTed (signed with the webhook key). The URLs are secrets.
    #[serde(default)]
    pub webhooks: Vec<crate::notices::Webhook>,
    /// Connection caps and timeouts of the listeners.
    #[serde(default)]
    pub http: spacesync_http::HttpConfig,
    /// Where the hub's state lives: absent, the embedded sled store under `<data>/db`; a
    /// `postgres://…` URL, that database. Set by `init --store`; never shown with its
    /// password.
    #[serde(default)]
    pub store: Option<String>,
    /// HTTPS on `listen`: the certificate chain and key (PEM), and optionally the CA that
    /// agents' client certificates must chain to. Relative paths are relative to the data
    /// directory. Reloaded on SIGHUP. Absent: plain HTTP (behind a TLS proxy, or tests).
    #[serde(default)]
    pub tls: Option<spacesync_http::tls::TlsFiles>,
    /// Addresses of reverse proxies in front of the hub: only from these are
    /// `X-Forwarded-For` / `-Proto` / `-Host` believed (the client address for rate
    /// limits, the scheme for the dashboard's cookie, the host for its origin check).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl HubConfig {
    /// `tls` with relative paths made relative to the data directory `dir`.
    pub fn tls_files(&self, dir: &DataDir) -> Option<spacesync_http::tls::TlsFiles> {
        self.tls.as_ref().map(|t| spacesync_http::tls::TlsFiles {
            cert: dir.0.join(&t.cert),
            key: dir.0.join(&t.key),
            client_ca: t.client_ca.as_ref().map(|c| dir.0.join(c)),
        })
    }
}

fn default_listen() -> String {
    "127.0.0.1:7400".into()
}
fn default_batch() -> usize {
    1000
}
fn default_rate() -> f64 {
    20.0
}
fn default_burst() -> f64 {
    100.0
}
fn default_rate_per_address() -> f64 {
    crate::http::DEFAULT_RATE_PER_ADDRESS
}
fn default_burst_per_address() -> f64 {
    crate::http::DEFAULT_BURST_PER_ADDRESS
}
fn default_log_format() -> String {
    "human".into()
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// hub.toml
    pub fn config(&self) -> PathBuf {
        self.0.join("hub.toml")
    }
    /// hub.key
    pub fn key(&self) -> PathBuf {
        self.0.join("hub.key")
    }
    /// campaign.toml
    pub fn campaign(&self) -> PathBuf {
        self.0.join("campaign.toml")
    }
    /// db/
    pub fn db(&self) -> PathBuf {
        self.0.join("db")
    }
    /// webhook.key
    pub fn webhook_key(&self) -> PathBuf {
        self.0.join("webhook.key")
    }
}

/// Creates `path` as a directory with mode 0700 (only its last component; the parents
/// must exist or are created with the default mode).
fn create_private_dir(path: &Path) -> Result<(), ConfigError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut b = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path).map_err(io(path))
}

/// Whether `path` is a directory with nothing in it.
fn is_empty_dir(path: &Path) -> Result<bool, ConfigError> {
    Ok(fs::read_dir(path).map_err(io(path))?.next().is_none())
}

/// Sets a directory's mode to 0700.
fn set_private_dir(path: &Path) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io(path))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes a new file with mode 0600 from the start (never a moment readable by others).
fn write_private(path: &Path, text: &str) -> Result<(), ConfigError> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Refuses `path` when group or others have any access to it.
fn check_private(path: &Path, what: &'static str, want: u32) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(io(path))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::Permissions {
                path: path.to_path_buf(),
                what,
                mode,
                want,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what, want);
    Ok(())
}

/// Checks that the data directory (0700), hub.toml and the key files (0600) are private
/// to the hub's user. Every command that opens the directory calls this first.
pub fn check_permissions(dir: &DataDir) -> Result<(), ConfigError> {
    if !dir.key().exists() {
        return Err(ConfigError::NotInitialised(dir.0.clone()));
    }
    check_private(&dir.0, "the data directory", 0o700)?;
    check_private(&dir.config(), "the configuration", 0o600)?;
    check_private(&dir.key(), "the hub's key file", 0o600)?;
    if dir.webhook_key().exists() {
        check_private(&dir.webhook_key(), "the webhook key file", 0o600)?;
    }
    Ok(())
}

/// Opens the store hub.toml names after checking the data directory (for commands that
/// need nothing else: tokens, registry, bulletin listing, rebuild, verify).
pub fn open_store(dir: &DataDir) -> Result<Arc<dyn Store>, ConfigError> {
    let config = load_config(dir)?;
    open_backend(dir, &config, crate::store::SERVING_CACHE)
}

/// [`open_store`] for a command that reads the whole store once (`verify`, `bulletin
/// verify`): sled's cache at [`crate::store::WALK_CACHE`], as what it reads is not read
/// again.
pub fn open_store_for_walk(dir: &DataDir) -> Result<Arc<dyn Store>, ConfigError> {
    let config = load_config(dir)?;
    open_backend(dir, &config, crate::store::WALK_CACHE)
}

/// Opens the backend `config` names: sled under `<data>/db` with a cache of
/// `sled_cache` bytes, or the PostgreSQL database (refused when another hub's key
/// claimed it).
fn open_backend(
    dir: &DataDir,
    config: &HubConfig,
    sled_cache: u64,
) -> Result<Arc<dyn Store>, ConfigError> {
    match &config.store {
        None => Ok(Arc::new(SledStore::open_with_cache(&dir.db(), sled_cache)?)),
        Some(url) => {
            if !pg::is_url(url) {
                return Err(ConfigError::StoreUrl {
                    path: dir.config(),
                    shown: Redacted(url).to_string(),
                });
            }
            let store = PgStore::open(url)?;
            // A half-copied key space would be served as if whole (and its first commit
            // would stop the migration from resuming).
            if store.get(store_keys::MIGRATING)?.is_some() {
                return Err(ConfigError::Migrating {
                    shown: store.shown().to_string(),
                });
            }
            let ours = keys::public_key_line(&keys::read_secret(&dir.key())?.verifying_key());
            if let Some(theirs) = store.get(store_keys::HUB)? {
                let theirs = String::from_utf8_lossy(&theirs).into_owned();
                if theirs != ours {
                    return Err(ConfigError::OtherHub {
                        shown: store.shown().to_string(),
                        theirs,
                        ours,
                        key: dir.key(),
                    });
                }
            }
            Ok(Arc::new(store))
        }
    }
}

/// Claims the empty database at `url` for the hub of `key_line`: refused when it holds
/// anything already.
fn claim_database(url: &str, key_line: &str) -> Result<(), ConfigError> {
    if !pg::is_url(url) {
        return Err(ConfigError::StoreUrl {
            path: "--store".into(),
            shown: Redacted(url).to_string(),
        });
    }
    let store = PgStore::open(url)?;
    let in_use = |what: String| ConfigError::DatabaseInUse {
        shown: store.shown().to_string(),
        what,
    };
    if let Some(first) = store.scan(b"").next() {
        let (k, _) = first?;
        return Err(in_use(match store.get(store_keys::HUB)? {
            Some(line) => format!("a hub (key {})", String::from_utf8_lossy(&line)),
            None => format!("data (key {:?})", String::from_utf8_lossy(&k)),
        }));
    }
    if let Some(line) = store.claim(store_keys::HUB, key_line.as_bytes())? {
        return Err(in_use(format!(
            "a hub (key {}), initialised at the same moment",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(())
}

/// The webhook signing key, generated (0600) when this hub was initialised before it
/// existed. Returns the key and whether it was just generated.
pub fn webhook_key(dir: &DataDir) -> Result<(ed25519_dalek::SigningKey, bool), ConfigError> {
    check_permissions(dir)?;
    let path = dir.webhook_key();
    if !path.exists() {
        let key = keys::generate()?;
        match keys::write_secret(&path, &key) {
            Ok(()) => return Ok((key, true)),
            // Another command generated it at the same moment: use theirs.
            Err(keys::KeyError::Exists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((keys::read_secret(&path)?, false))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ConfigError + '_ {
    move |error| ConfigError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Creates a data directory: key, config, campaign; the store under `<data>/db`, or, with
/// `store`, claims that PostgreSQL database (which must hold nothing). Returns the public
/// key line.
pub fn init(
    dir: &DataDir,
    campaign_file: Option<&Path>,
    store: Option<&str>,
) -> Result<String, ConfigError> {
    if dir.key().exists() {
        return Err(ConfigError::Exists(dir.0.clone()));
    }
    if !dir.0.exists() {
        create_private_dir(&dir.0)?;
    } else if is_empty_dir(&dir.0)? {
        // Made beforehand for the hub (`mkdir`, a mount, a tempdir), nothing in it yet:
        // it becomes the hub's, private.
        set_private_dir(&dir.0)?;
    } else {
        // Something else lives there: its mode is not init's to change.
        check_private(&dir.0, "the data directory", 0o700)?;
    }
    let campaign_text = match campaign_file {
        Some(p) => fs::read_to_string(p).map_err(io(p))?,
        None => CAMPAIGN_2018_TOML.to_string(),
    };
    let campaign = Campaign::from_toml(&campaign_text).map_err(|error| ConfigError::Campaign {
        path: campaign_file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "bundled 2018 campaign".into()),
        error,
    })?;
    let key = keys::generate()?;
    let key_line = keys::public_key_line(&key.verifying_key());
    // The database first: a refused one leaves the directory as it was.
    if let Some(url) = store {
        claim_database(url, &key_line)?;
    }
    keys::write_secret(&dir.key(), &key)?;
    keys::write_secret(&dir.webhook_key(), &keys::generate()?)?;
    write_private(&dir.campaign(), &campaign_text)?;
    if store.is_none() && !dir.db().exists() {
        create_private_dir(&dir.db())?;
    }
    let store_line = match store {
        // TOML basic string: the URL's quotes and backslashes escaped.
        Some(url) => format!(
            "# The PostgreSQL database that holds this hub's state (log, views, registry,\n\
             # tokens, bulletins). This directory keeps the keys and this file; a copy of it\n\
             # opens the same hub. Prefer PGPASSWORD to a password here.\n\
             store = {}\n\n",
            toml::Value::String(url.to_string())
        ),
        None => String::new(),
    };
    let config = format!(
        r#"# spacesync hub configuration. Edit and restart `spacesync-hub serve`.

# Address the HTTP API and dashboard listen on. Serve HTTPS (the [tls] section below, or
# `serve --tls-cert FILE --tls-key FILE`) when agents reach the hub over a network.
listen = "127.0.0.1:7400"

# Reverse proxies in front of the hub, by address: only their X-Forwarded-For,
# X-Forwarded-Proto and X-Forwarded-Host headers are believed (the client address for
# the per-address limits, https for the dashboard's Secure cookie, the host for its
# origin check). From anyone else those headers are dropped.
trusted_proxies = []

{store_line}# The log's name in signed checkpoints (C2SP tlog-checkpoint origin line). Keep it
# stable for the life of the log: witnesses and agents pin it.
origin = "spacesync-hub/campaign/{id}"

# Most entries an agent may send in one ingest request.
max_batch_entries = 1000

# Ingest requests per second per source, and the burst allowed. Only requests that
# prove the source (every signature in the batch verifies; a signed agent request)
# spend this budget, so nobody else can use it up.
rate_per_source = 20.0
burst_per_source = 100.0

# Refused requests (malformed, unknown source, bad signature, replayed) per second per
# client address (IPv6: per /64), and the burst allowed; beyond it the address gets 429.
# Behind a proxy every client shares the proxy's address: requests that prove a source
# still get through.
rate_per_address = 2.0
burst_per_address = 40.0

# /metrics names every source and its head: on `listen` it needs an admin token. Set an
# address here to also serve it without a token to your monitoring system only.
# metrics_listen = "127.0.0.1:9300"

# Log format: "human" or "json".
log_format = "human"

# Notices to lagging regions are pulled by the provinces' agents. They can also be
# POSTed to webhooks. Webhook URLs are secrets (keep this file 0600): only admin tokens
# see them; bulletins, the notices API, the dashboard and the logs name a webhook as
# "https://host/… (8 hex digits)". Each POST carries the notice JSON and two headers:
#   X-Spacesync-Timestamp: Unix seconds (hub clock)
#   X-Spacesync-Signature: base64 Ed25519 signature over
#                          "spacesync-webhook-v1\n" + timestamp + "\n" + body
# signed with webhook.key (not the hub key). The receiver verifies with the public line
# printed by `spacesync-hub webhook-key`, configured on its side (no key is sent), refuses
# timestamps more than 5 minutes from its clock, and de-duplicates on the notice "id"
# (failed deliveries are retried with backoff, with a fresh timestamp).
# [[webhooks]]
# url = "https://ministry.example/hooks/spacesync"
# scope = "440000"   # optional: only notices about this region

# HTTPS: the certificate chain (PEM, the hub's certificate first) and its key, readable
# by the hub's user. Relative paths are relative to this directory. `kill -HUP` (or
# `systemctl reload spacesync-hub`) reads them again without dropping connections; a
# reload that fails keeps the old certificate and logs why. With client_ca set, every
# agent must also present a client certificate issued by that CA (mutual TLS; a second
# factor beside the signed requests). The same files can be given to `serve` as
# --tls-cert / --tls-key.
# [tls]
# cert = "/etc/spacesync/tls/hub.crt"
# key = "/etc/spacesync/tls/hub.key"
# client_ca = "/etc/spacesync/tls/agents-ca.crt"

{http}"#,
        id = campaign.id,
        http = spacesync_http::HttpConfig::default().commented_toml()
    );
    write_private(&dir.config(), &config)?;
    Ok(key_line)
}

/// Reads hub.toml, after [`check_permissions`].
pub fn load_config(dir: &DataDir) -> Result<HubConfig, ConfigError> {
    let path = dir.config();
    check_permissions(dir)?;
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    toml::from_str(&text).map_err(|e| ConfigError::Config {
        line: e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(1),
        message: e.message().trim().to_string(),
        path,
    })
}

/// Reads the hub's campaign.
pub fn load_campaign(dir: &DataDir) -> Result<Campaign, ConfigError> {
    let path = dir.campaign();
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    Campaign::from_toml(&text).map_err(|error| ConfigError::Campaign { path, error })
}

/// Opens the hub over its data directory.
pub fn open_hub(dir: &DataDir, clock: Arc<dyn Clock>) -> Result<(Hub, HubConfig), ConfigError> {
    open_hub_scaled(dir, clock, 1.0)
}

/// Opens the hub for a clock running `speed` times real time: clock-skew allowances are
/// kept at the same span of real time.
pub fn open_hub_scaled(
    dir: &DataDir,
    clock: Arc<dyn Clock>,
    speed: f64,
) -> Result<(Hub, HubConfig), ConfigError> {
    let config = load_config(dir)?;
    let campaign = load_campaign(dir)?;
    let key = keys::read_secret(&dir.key())?;
    let store = open_backend(dir, &config, crate::store::SERVING_CACHE)?;
    let hub = Hub::open(
        store,
        key,
        config.origin.clone(),
        campaign,
        clock,
        Limits {
            max_batch_entries: config.max_batch_entries,
            max_clock_skew: chrono::Duration::milliseconds(
                (crate::hub::MAX_CLOCK_SKEW.num_milliseconds() as f64 * speed.max(1.0)).min(1e15)
                    as i64,
            ),
        },
    )?;
    Ok((hub, config))
}
