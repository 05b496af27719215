//! The data directory and `agent.toml`.
//!
//! ```text
//! <data>/              the data directory itself (0700)
//! <data>/agent.toml     configuration (written by `init`, commented; 0600)
//! <data>/agent.key      the source's Ed25519 secret key (0600)
//! <data>/intake.token   the bearer token of the local API (0600; see [`crate::token`])
//! <data>/db/            the sled store (0700)
//! <data>/spool/         drop files here (write name.tmp, then rename)
//! <data>/spool/done/    imported files
//! <data>/spool/failed/  refused files, each beside <name>.errors.txt
//! ```
//!
//! `init` creates the directories 0700 and the files 0600 from the start; `run` refuses to
//! start when the directory, the store directory, `agent.toml`, `agent.key` or
//! `intake.token` is open to group or others ([`DataDir::check_permissions`]): after an
//! attack an operator wants to be told, not to have the agent quietly tighten modes over
//! files someone may already have copied.

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
    /// `agent.key.next`: a new key while its rotation is not finished.
    pub fn key_next(&self) -> PathBuf {
        self.root.join("agent.key.next")
    }
    /// `agent.key.retired`: the key a key transition replaced, kept only to sign the
    /// agent's requests (head, notices) until the hub has receipted the transition.
    pub fn key_retired(&self) -> PathBuf {
        self.root.join("agent.key.retired")
    }
    /// `intake.token`.
    pub fn token(&self) -> PathBuf {
        self.root.join("intake.token")
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

    /// Creates the directory (and missing parents) with mode 0700; an existing directory
    /// open to group or others is tightened to 0700, which `init` reports. Returns the
    /// mode it had when it was tightened.
    pub fn create_private(&self) -> Result<Option<u32>, ConfigError> {
        let io = |error| ConfigError::Io {
            path: self.root.clone(),
            error,
        };
        private_dir(&self.root).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&self.root)
                .map_err(io)?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
                    .map_err(io)?;
                return Ok(Some(mode));
            }
        }
        Ok(None)
    }

    /// Refuses a data directory whose secrets others could reach: the directory and the
    /// store directory must be 0700 (no group or other bits), `agent.toml`, `agent.key` and
    /// `intake.token` 0600. Each refusal names the path, its mode and the `chmod` that fixes
    /// it. Files that do not exist are left to the code that reads them.
    pub fn check_permissions(&self) -> Result<(), ConfigError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let checks: [(PathBuf, &'static str, u32); 6] = [
                (self.root.clone(), "the data directory", 0o700),
                (self.db(), "the store directory", 0o700),
                (self.config(), "agent.toml", 0o600),
                (self.key(), "the source's secret key", 0o600),
                (self.key_next(), "the source's next secret key", 0o600),
                (self.token(), "the intake token", 0o600),
            ];
            for (path, what, want) in checks {
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(ConfigError::Io { path, error }),
                };
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(ConfigError::Permissions {
                        path,
                        what,
                        mode,
                        want,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Creates `path` (and missing parents) as a directory with mode 0700 from the start; an
/// existing directory is left as it is.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path)
}

/// Creates a new file with mode 0600 from the start (never chmod after writing: between the
/// write and the chmod anyone could have opened it). Refuses to overwrite.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
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
    /// A file or directory of the data directory is open to group or others.
    #[error(
        "{path}: {what} is readable or writable by group or others (mode {mode:03o}); refusing to start. Run `chmod {want:o} {path}`; if someone else may have read it, treat its secrets as leaked (`spacesync-agent token --rotate`; ask the hub operator about the source key)"
    )]
    Permissions {
        /// The file or directory.
        path: PathBuf,
        /// What it is.
        what: &'static str,
        /// Its permission bits.
        mode: u32,
        /// The mode it should have.
        want: u32,
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
            // The hub's default `max_batch_entries`: a hub pays per batch (the signatures'
            // torsion test, a flush, a checkpoint), so its CPU an entry is ~15 % lower at
            // 1,000 than at 500 (BENCHMARKS.md, session 17). A hub set lower answers 413
            // and the batches halve.
            max_entries: 1000,
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
    /// Days a spool file stays in `spool/done/` after it was imported (agent clock).
    pub spool_done_days: f64,
    /// Days a refused spool file (and its `.errors.txt`) stays in `spool/failed/`.
    pub spool_failed_days: f64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            delivered_days: 30.0,
            spool_done_days: 7.0,
            spool_failed_days: 30.0,
        }
    }
}

/// Limits of the local intake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// Largest request body of `POST /v1/records`, bytes.
    pub max_body_bytes: usize,
    /// Most records in one batch (request, spool file or imported file).
    pub max_records: usize,
    /// Milliseconds between scans of the spool folder.
    pub spool_poll_ms: u64,
    /// Seconds (agent clock) an idempotency key is remembered. Within it a retry with the
    /// same key and body is answered as before; after it the key is pruned, so the store
    /// stays bounded.
    pub idempotency_retention_secs: u64,
    /// `Host` values the API answers besides the listen address (and `localhost:PORT` /
    /// `127.0.0.1:PORT` on loopback or wildcard listeners): names the platform uses to reach
    /// the agent, as `name:port`. Any other `Host` is refused, which defeats DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

/// Default of `[intake] idempotency_retention_secs`: one day.
pub const DEFAULT_IDEMPOTENCY_RETENTION_SECS: u64 = 24 * 3600;

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            max_body_bytes: 32 << 20,
            max_records: 100_000,
            spool_poll_ms: 1000,
            idempotency_retention_secs: DEFAULT_IDEMPOTENCY_RETENTION_SECS,
            allowed_hosts: Vec::new(),
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
    /// CA certificates (PEM) trusted for the hub's certificate besides the system's roots
    /// (`init --ca-file`; stored absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) shown to a hub that asks for one (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Address of the local API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Campaign file; the bundled 2018 campaign when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<PathBuf>,
    /// The old optional `intake_token` key, read so that old files still load, and ignored:
    /// the token is `<data>/intake.token` (see [`crate::token`]). `run` warns while it is
    /// present; it is never written back.
    #[serde(default, rename = "intake_token", skip_serializing)]
    pub legacy_intake_token: Option<String>,
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
    /// Connection caps and timeouts of the local API.
    #[serde(default)]
    pub http: spacesync_http::HttpConfig,
}

/// Checks one `allowed_hosts` entry: `name:port` (or `[v6]:port`), visible ASCII, no
/// scheme, path or user info.
fn check_host_entry(h: &str) -> Result<(), String> {
    let bad = || {
        "write it as host:port, exactly as the platform's requests carry it in the Host header (e.g. \"agent.gd.example:7300\")".to_string()
    };
    if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    if h.contains(['/', '@', '?', '#']) {
        return Err(bad());
    }
    let (name, port) = h.rsplit_once(':').ok_or_else(bad)?;
    if name.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    if name.starts_with('[') != name.ends_with(']') {
        return Err(bad());
    }
    Ok(())
}

/// A path as the text a TOML string holds.
fn path_text(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.to_string_lossy().into_owned())
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
            ca_file: None,
            client_cert: None,
            client_key: None,
            listen: default_listen(),
            campaign: None,
            legacy_intake_token: None,
            notice_webhook: None,
            log_format: LogFormat::Human,
            buffer: BufferConfig::default(),
            push: PushConfig::default(),
            retention: RetentionConfig::default(),
            intake: IntakeConfig::default(),
            http: spacesync_http::HttpConfig::default(),
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
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(bad(
                "client_cert",
                "client_cert and client_key go together: set both (a client certificate and its key, PEM) or neither".into(),
            ));
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
        if self.intake.idempotency_retention_secs == 0 {
            return Err(bad(
                "intake.idempotency_retention_secs",
                format!(
                    "must be at least 1 (default {DEFAULT_IDEMPOTENCY_RETENTION_SECS}); retries are only safe while their key is remembered"
                ),
            ));
        }
        for h in &self.intake.allowed_hosts {
            if let Err(why) = check_host_entry(h) {
                return Err(bad("intake.allowed_hosts", format!("{h:?}: {why}")));
            }
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
# CA certificates (PEM) trusted for the hub's TLS certificate, besides the system's
# roots: the ministry's or a government CA (`init --ca-file`).
{ca_file}
# A client certificate and its key (PEM) for a hub that asks agents for one (mutual
# TLS); the signed requests are still required beside it.
{client_cert}
{client_key}
# Address of the local intake API. Loopback by default. Every request except GET /healthz
# must carry `Authorization: Bearer <token>`, the token in intake.token beside this file
# (`spacesync-agent token` prints it; `token --rotate` replaces it). Requests with an
# Origin header (browsers) are refused, and so are requests whose Host is not this
# address (or localhost:PORT / 127.0.0.1:PORT on a loopback or 0.0.0.0 / [::] listener)
# or listed in [intake] allowed_hosts: that defeats DNS rebinding. Listening on 0.0.0.0
# or [::] does not accept every Host: list the names the platform uses.
listen = {listen}
# Campaign file (TOML); relative paths are relative to this directory. When absent the
# bundled 2018 campaign is used.
{campaign}
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
# Imported spool files leave spool/done/ this many days after their import, refused ones
# (with their .errors.txt) leave spool/failed/ this many days after the refusal.
spool_done_days = {spool_done:?}
spool_failed_days = {spool_failed:?}

[intake]
# Largest request body of POST /v1/records, bytes.
max_body_bytes = {i_body}
# Most records in one batch (request, spool file or imported file).
max_records = {i_records}
# How often the spool folder is scanned, milliseconds.
spool_poll_ms = {i_poll}
# Idempotency-Key values (and the spool's and import's file keys) are remembered this
# many seconds on the agent clock: a retry within it with the same key and the same body
# is answered as the first time and stored once; the same key with another body is
# refused (422). Older keys are pruned.
idempotency_retention_secs = {i_idem}
# Host header values accepted besides the listen address, as "name:port", e.g.
# ["agent.gd.example:7300"] when the platform reaches this agent by that name.
allowed_hosts = {i_hosts}

{http}"#,
            http = self.http.commented_toml(),
            source = q(self.source.as_str()),
            scope = q(&self.scope.to_string()),
            hub = q(&self.hub),
            hub_key = opt("hub_key", &self.hub_key, "\"ed25519:...\""),
            ca_file = opt(
                "ca_file",
                &path_text(&self.ca_file),
                "\"/etc/spacesync/hub-ca.crt\""
            ),
            client_cert = opt(
                "client_cert",
                &path_text(&self.client_cert),
                "\"/etc/spacesync/agent.crt\""
            ),
            client_key = opt(
                "client_key",
                &path_text(&self.client_key),
                "\"/etc/spacesync/agent-client.key\""
            ),
            listen = q(&self.listen.to_string()),
            campaign = opt(
                "campaign",
                &self
                    .campaign
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                "\"campaign-2018.toml\""
            ),
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
            spool_done = self.retention.spool_done_days,
            spool_failed = self.retention.spool_failed_days,
            i_body = self.intake.max_body_bytes,
            i_records = self.intake.max_records,
            i_poll = self.intake.spool_poll_ms,
            i_idem = self.intake.idempotency_retention_secs,
            i_hosts = toml::Value::Array(
                self.intake
                    .allowed_hosts
                    .iter()
                    .map(|h| toml::Value::String(h.clone()))
                    .collect()
            ),
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
        c.ca_file = Some("/etc/spacesync/ministry-ca.crt".into());
        c.intake.allowed_hosts = vec!["agent.gd.example:7300".into(), "[::1]:7300".into()];
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
            (
                "allowed_hosts = [\"agent.gd.example:7300\"",
                "allowed_hosts = [\"http://agent.gd.example/\"",
                "host:port",
            ),
            (
                "idempotency_retention_secs = 86400",
                "idempotency_retention_secs = 0",
                "at least 1",
            ),
        ] {
            std::fs::write(&path, text.replacen(from, to, 1)).unwrap_or_else(|e| panic!("{e}"));
            let err = Config::load(&path).expect_err(to).to_string();
            assert!(err.contains(want), "{to}: {err}");
            assert!(err.contains("agent.toml"), "{err}");
        }
    }

    #[test]
    fn an_old_intake_token_line_still_loads_and_is_never_written_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("agent.toml");
        let text = sample()
            .to_toml()
            .replacen("hub = ", "intake_token = \"s3cret\"\nhub = ", 1);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.legacy_intake_token.as_deref(), Some("s3cret"));
        assert!(!c.to_toml().contains("s3cret"));
        assert!(!c.to_commented_toml().contains("s3cret"));
    }

    #[cfg(unix)]
    #[test]
    fn secrets_open_to_others_are_refused_with_the_chmod_that_fixes_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = DataDir::new(dir.path().join("agent"));
        assert_eq!(data.create_private().ok(), Some(None));
        private_dir(&data.db()).unwrap_or_else(|e| panic!("{e}"));
        for p in [data.config(), data.key(), data.token()] {
            private_file(&p).unwrap_or_else(|e| panic!("{e}"));
        }
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&data.root), 0o700);
        assert_eq!(mode(&data.db()), 0o700);
        assert_eq!(mode(&data.token()), 0o600);
        assert!(data.check_permissions().is_ok());
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        for (path, loose, fix) in [
            (data.root.clone(), 0o755, "chmod 700"),
            (data.root.clone(), 0o710, "chmod 700"),
            (data.db(), 0o750, "chmod 700"),
            (data.config(), 0o644, "chmod 600"),
            (data.key(), 0o640, "chmod 600"),
            (data.token(), 0o604, "chmod 600"),
            (data.token(), 0o620, "chmod 600"),
        ] {
            let good = mode(&path);
            set(&path, loose);
            let err = data
                .check_permissions()
                .map(|_| ())
                .expect_err("must be refused")
                .to_string();
            set(&path, good);
            let shown = format!("{}", path.display());
            assert!(err.contains(&shown), "{err}");
            assert!(err.contains(&format!("mode {loose:03o}")), "{err}");
            assert!(err.contains(&format!("{fix} {shown}")), "{err}");
        }
        assert!(data.check_permissions().is_ok());
        // init tightens a directory it is given (and says so); it never loosens one.
        set(&data.root, 0o755);
        assert_eq!(data.create_private().ok(), Some(Some(0o755)));
        assert_eq!(mode(&data.root), 0o700);
    }
}
