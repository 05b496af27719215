//! The hub's data directory and its commented TOML configuration.
//!
//! ```text
//! <data>/hub.toml       configuration (written by `init`, edited by the operator)
//! <data>/hub.key        the hub's Ed25519 key (0600)
//! <data>/campaign.toml  the campaign this hub runs (copied at `init`)
//! <data>/db/            the sled store
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use spacesync_shared::Campaign;
use spacesync_shared::campaign::CAMPAIGN_2018_TOML;
use spacesync_shared::clock::Clock;
use spacesync_shared::keys;

use crate::ingest::{Hub, Limits};
use crate::store::SledStore;

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
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Loading the hub state failed.
    #[error(transparent)]
    Hub(#[from] crate::ingest::IngestError),
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
    /// Where notices are also POSTed (signed with the hub key).
    #[serde(default)]
    pub webhooks: Vec<crate::notices::Webhook>,
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
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ConfigError + '_ {
    move |error| ConfigError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Creates a data directory: key, config, campaign. Returns the public key line.
pub fn init(dir: &DataDir, campaign_file: Option<&Path>) -> Result<String, ConfigError> {
    if dir.key().exists() {
        return Err(ConfigError::Exists(dir.0.clone()));
    }
    fs::create_dir_all(&dir.0).map_err(io(&dir.0))?;
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
    keys::write_secret(&dir.key(), &key)?;
    fs::write(dir.campaign(), campaign_text).map_err(io(&dir.campaign()))?;
    let config = format!(
        r#"# spacesync hub configuration. Edit and restart `spacesync-hub serve`.

# Address the HTTP API and dashboard listen on. Put a TLS-terminating proxy in front
# when agents reach the hub over the public network.
listen = "127.0.0.1:7400"

# The log's name in signed checkpoints (C2SP tlog-checkpoint origin line). Keep it
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
# POSTed to webhooks: the body is the notice JSON, signed with the hub key
# (header X-Spacesync-Signature: base64 Ed25519 over the body; X-Spacesync-Key: the
# hub's public key line). Failed deliveries are retried with backoff.
# [[webhooks]]
# url = "https://ministry.example/hooks/spacesync"
# scope = "440000"   # optional: only notices about this region
"#,
        id = campaign.id
    );
    fs::write(dir.config(), config).map_err(io(&dir.config()))?;
    Ok(keys::public_key_line(&key.verifying_key()))
}

/// Reads hub.toml.
pub fn load_config(dir: &DataDir) -> Result<HubConfig, ConfigError> {
    let path = dir.config();
    if !dir.key().exists() {
        return Err(ConfigError::NotInitialised(dir.0.clone()));
    }
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
    let store = Arc::new(SledStore::open(&dir.db())?);
    let hub = Hub::open(
        store,
        key,
        config.origin.clone(),
        campaign,
        clock,
        Limits {
            max_batch_entries: config.max_batch_entries,
            max_clock_skew: chrono::Duration::milliseconds(
                (crate::ingest::MAX_CLOCK_SKEW.num_milliseconds() as f64 * speed.max(1.0)).min(1e15)
                    as i64,
            ),
        },
    )?;
    Ok((hub, config))
}
