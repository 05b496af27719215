//! The data directory and `agent.toml`.
//!
//! ```text
//! <data>/agent.toml     configuration (written by `init`, commented)
//! <data>/agent.key      the source's Ed25519 secret key (0600)
//! <data>/db/            the sled store
//! <data>/spool/         drop files here (write name.tmp, then rename)
//! <data>/spool/done/    imported files
//! <data>/spool/failed/  refused files, each beside <name>.errors.txt
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spacesync_shared::entry::SourceId;
use spacesync_shared::region::RegionCode;
use spacesync_shared::{Campaign, keys};

/// Default address of the local intake API: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7300";

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory itself.
    pub root: PathBuf,
}

impl DataDir {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }
    /// `agent.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("agent.toml")
    }
    /// `agent.key`.
    pub fn key(&self) -> PathBuf {
        self.root.join("agent.key")
    }
    /// The sled database directory.
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }
    /// The spool folder.
    pub fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }
    /// Imported spool files.
    pub fn spool_done(&self) -> PathBuf {
        self.spool().join("done")
    }
    /// Refused spool files.
    pub fn spool_failed(&self) -> PathBuf {
        self.spool().join("failed")
    }
}

/// A configuration problem; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or written.
    #[error("{path}: {error} (run `spacesync-agent init` first, or pass --data DIR)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The TOML does not parse or has an unknown key.
    #[error("{path}: line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A value is not acceptable.
    #[error("{path}: {field}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        field: &'static str,
        /// Why, and what would be accepted.
        why: String,
    },
    /// The campaign file named by `campaign` is wrong.
    #[error("{path}: campaign file: {error}")]
    Campaign {
        /// The campaign file.
        path: PathBuf,
        /// What is wrong in it.
        error: spacesync_shared::campaign::CampaignError,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Limits on what waits unreceipted in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Most unreceipted entries; intake answers 503 beyond it.
    pub max_entries: u64,
    /// Most unreceipted bytes (stored envelope size); intake answers 503 beyond it.
    pub max_bytes: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_entries: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

/// How and when the pusher talks to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Most entries in one ingest batch.
    pub max_entries: usize,
    /// Most bytes (uncompressed envelopes) in one ingest batch.
    pub max_bytes: usize,
    /// Seconds between sync cycles when nothing new arrives (new entries wake it at once).
    pub interval_secs: f64,
    /// Seconds before an HTTP request to the hub is abandoned (and the hub asked where it is).
    pub timeout_secs: f64,
    /// First retry delay ceiling, seconds; doubles per failure.
    pub retry_base_secs: f64,
    /// Largest retry delay ceiling, seconds.
    pub retry_cap_secs: f64,
    /// Seconds between re-probes while a permanent refusal stops pushing.
    pub reprobe_secs: f64,
    /// Seconds between notice fetches (by default every sync cycle).
    pub notices_secs: f64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_entries: 500,
            max_bytes: 4 << 20,
            interval_secs: 5.0,
            timeout_secs: 30.0,
            retry_base_secs: 0.5,
            retry_cap_secs: 60.0,
            reprobe_secs: 60.0,
            notices_secs: 5.0,
        }
    }
}

/// How long delivered entries stay on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days after its receipt's time that a delivered entry is pruned. The chain head and
    /// every receipt are kept regardless.
    pub delivered_days: f64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            delivered_days: 30.0,
        }
    }
}

/// Limits of the local intake.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// Largest request body of `POST /v1/records`, bytes.
    pub max_body_bytes: usize,
    /// Most records in one batch (request, spool file or imported file).
    pub max_records: usize,
    /// Milliseconds between scans of the spool folder.
    pub spool_poll_ms: u64,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            max_body_bytes: 32 << 20,
            max_records: 100_000,
            spool_poll_ms: 1000,
        }
    }
}

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This agent's source id, as registered at the hub.
    pub source: SourceId,
    /// The region this source may report on (normally its province).
    pub scope: RegionCode,
    /// Base URL of the hub (`https://hub.example/`).
    pub hub: String,
    /// The hub's public key line; when absent, trusted on first use and stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_key: Option<String>,
    /// Address of the local API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Campaign file; the bundled 2018 campaign when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<PathBuf>,
    /// Bearer token the platform must send to the intake API; none = no check (loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intake_token: Option<String>,
    /// Local URL notices are POSTed to as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice_webhook: Option<String>,
    /// `human` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Buffer limits.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Pusher settings.
    #[serde(default)]
    pub push: PushConfig,
    /// Retention of delivered entries.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Intake limits.
    #[serde(default)]
    pub intake: IntakeConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7300))
}

/// Seconds as a `Duration`, clamped to something sane.
pub fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(1e9))
    } else {
        Duration::ZERO
    }
}

impl Config {
    /// A configuration with defaults for everything but identity and hub.
    pub fn new(source: SourceId, scope: RegionCode, hub: String) -> Config {
        Config {
            source,
            scope,
            hub,
            hub_key: None,
            listen: default_listen(),
            campaign: None,
            intake_token: None,
            notice_webhook: None,
            log_format: LogFormat::Human,
            buffer: BufferConfig::default(),
            push: PushConfig::default(),
            retention: RetentionConfig::default(),
            intake: IntakeConfig::default(),
        }
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1),
            message: e.message().trim().to_string(),
        })?;
        cfg.check(path)?;
        Ok(cfg)
    }

    /// Checks values that TOML types alone cannot.
    pub fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field, why: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            why,
        };
        if !(self.hub.starts_with("http://") || self.hub.starts_with("https://")) {
            return Err(bad(
                "hub",
                format!(
                    "{:?} is not an http:// or https:// URL; write the hub's base URL, e.g. \"https://hub.example/\"",
                    self.hub
                ),
            ));
        }
        if let Some(k) = &self.hub_key {
            keys::parse_public_key(k).map_err(|e| bad("hub_key", e.to_string()))?;
        }
        if self.push.max_entries == 0 || self.push.max_bytes == 0 {
            return Err(bad(
                "push",
                "max_entries and max_bytes must be at least 1".into(),
            ));
        }
        if self.buffer.max_entries == 0 || self.buffer.max_bytes == 0 {
            return Err(bad(
                "buffer",
                "max_entries and max_bytes must be at least 1".into(),
            ));
        }
        if self.intake.max_records == 0 {
            return Err(bad("intake.max_records", "must be at least 1".into()));
        }
        if self.intake_token.as_deref().is_some_and(str::is_empty) {
            return Err(bad(
                "intake_token",
                "is empty; remove the line to disable the check".into(),
            ));
        }
        if let Some(w) = &self.notice_webhook
            && !(w.starts_with("http://") || w.starts_with("https://"))
        {
            return Err(bad(
                "notice_webhook",
                format!("{w:?} is not an http:// or https:// URL"),
            ));
        }
        Ok(())
    }

    /// Loads the campaign named in the configuration (relative paths are relative to the
    /// data directory), or the bundled 2018 campaign.
    pub fn load_campaign(&self, data: &DataDir) -> Result<Campaign, ConfigError> {
        let Some(p) = &self.campaign else {
            return Ok(Campaign::builtin_2018());
        };
        let path = data.root.join(p);
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Io {
            path: path.clone(),
            error,
        })?;
        Campaign::from_toml(&text).map_err(|error| ConfigError::Campaign { path, error })
    }

    /// The hub URL of an endpoint path.
    pub fn hub_url(&self, path: &str) -> String {
        format!("{}{path}", self.hub.trim_end_matches('/'))
    }

    /// Plain TOML (no comments), for tools and tests that rewrite the file.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The commented file `init` writes.
    pub fn to_commented_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let opt = |key: &str, v: &Option<String>, example: &str| match v {
            Some(v) => format!("{key} = {}", q(v)),
            None => format!("# {key} = {example}"),
        };
        let b = &self.buffer;
        let p = &self.push;
        format!(
            r#"# spacesync agent configuration, written by `spacesync-agent init`.
# Edit and restart the agent (`spacesync-agent run`) for changes to apply.

# This agent's source id, as registered at the hub (`agents add`).
source = {source}
# The region this source reports on (normally its province, PP0000). Records about
# regions outside it are refused at intake.
scope = {scope}
# Base URL of the hub; https:// in production.
hub = {hub}
# The hub's public key line. When absent the agent fetches it from the hub on first
# contact, stores it and logs a warning (trust on first use); pin it here to be sure.
{hub_key}
# Address of the local intake API. Loopback by default; if you open it wider, set
# intake_token too.
listen = {listen}
# Campaign file (TOML); relative paths are relative to this directory. When absent the
# bundled 2018 campaign is used.
{campaign}
# Bearer token the platform must send (`Authorization: Bearer <token>`) to the intake API.
{token}
# Local URL each notice from the hub is POSTed to as JSON (retried until it answers 2xx).
{webhook}
# Log format: "human" or "json".
log_format = {log_format}

[buffer]
# Entries the hub has not yet receipted are kept here. Beyond these limits intake answers
# 503 with Retry-After (nothing is ever dropped).
max_entries = {b_entries}
max_bytes = {b_bytes}

[push]
# One ingest batch holds at most this many entries / bytes (before gzip).
max_entries = {p_entries}
max_bytes = {p_bytes}
# Seconds between sync cycles when nothing new arrives; new entries are pushed at once.
interval_secs = {p_interval:?}
# Seconds before a request to the hub is abandoned.
timeout_secs = {p_timeout:?}
# Retries after transient failures wait a random time up to min(cap, base * 2^n).
retry_base_secs = {p_base:?}
retry_cap_secs = {p_cap:?}
# While the hub refuses permanently (unknown or revoked key …), re-probe this often.
reprobe_secs = {p_reprobe:?}
# Seconds between notice fetches.
notices_secs = {p_notices:?}

[retention]
# Delivered (receipted) entries are pruned this many days after their receipt.
# The chain head and all receipts are kept.
delivered_days = {retention:?}

[intake]
# Largest request body of POST /v1/records, bytes.
max_body_bytes = {i_body}
# Most records in one batch (request, spool file or imported file).
max_records = {i_records}
# How often the spool folder is scanned, milliseconds.
spool_poll_ms = {i_poll}
"#,
            source = q(self.source.as_str()),
            scope = q(&self.scope.to_string()),
            hub = q(&self.hub),
            hub_key = opt("hub_key", &self.hub_key, "\"ed25519:...\""),
            listen = q(&self.listen.to_string()),
            campaign = opt(
                "campaign",
                &self
                    .campaign
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                "\"campaign-2018.toml\""
            ),
            token = opt("intake_token", &self.intake_token, "\"change-me\""),
            webhook = opt(
                "notice_webhook",
                &self.notice_webhook,
                "\"http://127.0.0.1:8080/spacesync/notices\""
            ),
            log_format = q(match self.log_format {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            }),
            b_entries = b.max_entries,
            b_bytes = b.max_bytes,
            p_entries = p.max_entries,
            p_bytes = p.max_bytes,
            p_interval = p.interval_secs,
            p_timeout = p.timeout_secs,
            p_base = p.retry_base_secs,
            p_cap = p.retry_cap_secs,
            p_reprobe = p.reprobe_secs,
            p_notices = p.notices_secs,
            retention = self.retention.delivered_days,
            i_body = self.intake.max_body_bytes,
            i_records = self.intake.max_records,
            i_poll = self.intake.spool_poll_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        let mut c = Config::new(
            SourceId::parse("gd-rrt").unwrap_or_else(|e| panic!("{e}")),
            RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}")),
            "http://127.0.0.1:9/".into(),
        );
        c.notice_webhook = Some("http://127.0.0.1:8080/n".into());
        c
    }

    #[test]
    fn commented_file_reads_back_to_the_same_config() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("agent.toml");
        let c = sample();
        std::fs::write(&path, c.to_commented_toml()).unwrap_or_else(|e| panic!("{e}"));
        let back = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, c);
        std::fs::write(&path, c.to_toml()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Config::load(&path).unwrap_or_else(|e| panic!("{e}")), c);
    }

    #[test]
    fn mistakes_name_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("agent.toml");
        let text = sample().to_commented_toml();
        for (from, to, want) in [
            ("max_records = ", "max_recs = ", "unknown field"),
            ("hub = \"http", "hub = \"ftp", "not an http"),
            ("scope = \"440000\"", "scope = \"44\"", "6-digit"),
        ] {
            std::fs::write(&path, text.replacen(from, to, 1)).unwrap_or_else(|e| panic!("{e}"));
            let err = Config::load(&path).expect_err(to).to_string();
            assert!(err.contains(want), "{to}: {err}");
            assert!(err.contains("agent.toml"), "{err}");
        }
    }
}
