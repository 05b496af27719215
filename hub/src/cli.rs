//! The subcommands. The binary parses [`Cli`] and calls [`execute`]; everything a
//! subcommand does beyond parsing is here or in the module it names.
//!
//! Time: every command that records something (`serve`, `agents add|rotate|revoke`,
//! `extend`, `notice-rules set`, `bulletin issue`) takes the hub clock from `--now` (RFC
//! 3339), and `serve` also from `--speed` (with `--now`: that many times faster than real
//! time), exactly as the agent's `run` does ([`make_clock`]); without `--now` it is the
//! system clock.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use indicatif::{HumanCount, HumanDuration, ProgressBar, ProgressState, ProgressStyle};
use serde_json::Value;
use spacesync_shared::clock::{Clock, FixedClock, ScaledClock, SystemClock};
use spacesync_shared::keys;

use spacesync_shared::admin::{
    self as wire_admin, AddSource, CreateToken, CreatedToken, EnrolCode, Extend, Extended, Invite,
    Invited, Issued, NoticeRuleSet, NoticeRules, RotateSource, SetNoticeRule, SourceInfo,
    SourceList, SourceRef, TokenInfo, TokenList, TokenRef,
};

use crate::admin;
use crate::auth::TokenError;
use crate::bulletin::{self, BulletinError};
use crate::config::{self, ConfigError, DataDir};
use crate::hub::Hub;
use crate::ingest::IngestError;
use crate::log::LogError;
use crate::registry::RegistryError;
use crate::render::{CsvError, Format, Lang, Rendering};
use crate::serve::{self, ServeError, Serving};
use crate::store::StoreError;
use crate::witness;
use crate::{http, maintenance};

/// The ministry's central aggregator for the online learning space campaign.
#[derive(Debug, Parser)]
#[command(
    name = "spacesync-hub",
    version,
    about = "The ministry's central aggregator for the online learning space campaign."
)]
pub struct Cli {
    /// Data directory.
    #[arg(
        long,
        global = true,
        env = "SPACESYNC_HUB_DATA",
        default_value = "./hub-data"
    )]
    pub data: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create the data directory, the hub key and a commented hub.toml.
    #[command(after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub init")]
    Init {
        /// Campaign file (default: the bundled 2018 campaign).
        #[arg(long)]
        campaign: Option<PathBuf>,
        /// Keep the hub's state in this PostgreSQL database
        /// (postgres://USER@HOST:PORT/DB[?sslmode=disable|prefer|require]; the password from
        /// PGPASSWORD, or in the URL) instead of the embedded store under DIR/db. Recorded
        /// in hub.toml; the database must hold no hub yet.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Serve the HTTP API.
    #[command(
        after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub serve --log-format json"
    )]
    Serve(ServeArgs),
    /// What `serve` becomes after a clean stop (the same process, a fresh image): brings
    /// sled's snapshot up to date so that the next start replays nothing.
    #[command(
        hide = true,
        name = "store-snapshot",
        after_help = "Run by `serve` itself after a clean stop; by hand only on a stopped hub.\n\nExample:\n  spacesync-hub --data /var/lib/spacesync-hub store-snapshot --log-format json"
    )]
    StoreSnapshot {
        /// Log format (as `serve` logged).
        #[arg(long, value_enum)]
        log_format: LogFormat,
    },
    /// Manage the registry of sources (agents). Every change is a hub-signed log entry.
    #[command(
        after_help = "Example:\n  spacesync-hub agents invite --source gd-rrt --scope 440000 --hub https://hub.example --expires 72h"
    )]
    Agents {
        /// Record a change as of this instant (RFC 3339) instead of now (stopped store only).
        #[arg(long, global = true)]
        now: Option<String>,
        /// Running hub or stopped store.
        #[command(flatten)]
        remote: Remote,
        /// What to change or show.
        #[command(subcommand)]
        cmd: AgentsCmd,
    },
    /// Manage API tokens.
    #[command(
        after_help = "Example:\n  spacesync-hub token create --role ministry --label \"Ms Li\" --hub https://hub.example   # admin token in SPACESYNC_HUB_TOKEN"
    )]
    Token {
        /// Running hub or stopped store.
        #[command(flatten)]
        remote: Remote,
        /// What to do with tokens.
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Print the hub's public key line.
    #[command(after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub pubkey")]
    Pubkey,
    /// Print the public key line webhook receivers verify deliveries with (generating
    /// webhook.key, 0600, on a hub initialised before it existed).
    #[command(after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub webhook-key")]
    WebhookKey,
    /// Grant a deadline extension (a hub-signed log entry).
    #[command(
        after_help = "Example:\n  spacesync-hub extend --region 440000 --milestone implementation_plan --until 2018-11-22 --reason \"flood\" --hub https://hub.example"
    )]
    Extend(ExtendArgs),
    /// Show the notice rules in force (lagging thresholds, reminder days, silence) and
    /// change those the campaign file lists in `[lagging] adjustable`; every change is a
    /// hub-signed log entry, in force for the next bulletin and notices.
    #[command(
        after_help = "Example:\n  spacesync-hub notice-rules set remind_days 14,7,3 --hub https://hub.example   # admin token in SPACESYNC_HUB_TOKEN"
    )]
    NoticeRules {
        /// Record a change as of this instant (RFC 3339) instead of now (stopped store only).
        #[arg(long, global = true)]
        now: Option<String>,
        /// Running hub or stopped store.
        #[command(flatten)]
        remote: Remote,
        /// What to show or change.
        #[command(subcommand)]
        cmd: NoticeRulesCmd,
    },
    /// Progress bulletins.
    #[command(
        after_help = "Example:\n  spacesync-hub bulletin show 3 --format html --lang en > b3.html"
    )]
    Bulletin {
        /// Running hub or stopped store (`issue`).
        #[command(flatten)]
        remote: Remote,
        /// What to do with bulletins.
        #[command(subcommand)]
        cmd: BulletinCmd,
    },
    /// Recompute every view from the log.
    #[command(
        after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub rebuild   # hub stopped"
    )]
    Rebuild,
    /// Write a consistent copy of this hub (keys, hub.toml, campaign, store) to a new
    /// directory, while it serves or not; `--data OUT` serves and verifies it directly.
    #[command(
        after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub backup /backup/hub-2018-11-25"
    )]
    Backup {
        /// The directory to create (must not exist, or be empty).
        out: PathBuf,
    },
    /// Make the data directory (absent or empty) a copy of a backup.
    #[command(
        after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub-restored restore /backup/hub-2018-11-25"
    )]
    Restore {
        /// The directory `backup` wrote.
        backup: PathBuf,
    },
    /// Ingest an agent's offline bundle (`spacesync-agent export-bundle`) on a stopped hub
    /// or, with --hub URL, on a running one, with the checks, idempotency and receipts of
    /// the network path, and write the receipts for `spacesync-agent import-receipts`.
    #[command(
        after_help = "Example:\n  spacesync-hub import-bundle gd-rrt.bundle --receipts gd-rrt.receipts --hub https://hub.example   # running hub (token: SPACESYNC_HUB_TOKEN); a stopped one: --data DIR instead of --hub"
    )]
    ImportBundle {
        /// Running hub or stopped store.
        #[command(flatten)]
        remote: Remote,
        /// The bundle file.
        file: PathBuf,
        /// Where to write the receipts (a new file).
        #[arg(long, value_name = "OUT")]
        receipts: PathBuf,
        /// The hub clock for the import (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
    },
    /// Move this stopped hub from the embedded store into an empty PostgreSQL database:
    /// the log verified, every key copied (a killed run goes on where it stopped), the
    /// database verified and compared, then hub.toml pointed at it (db/ is kept as it was).
    #[command(
        after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub migrate --to postgres://spacesync@db.example:5432/spacesync?sslmode=require   # hub stopped"
    )]
    Migrate {
        /// The database (postgres://USER@HOST:PORT/DB[?sslmode=…]; the password from
        /// PGPASSWORD, or in the URL). It must be empty, or hold what an interrupted
        /// migrate of this hub left.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Keys copied per transaction (tests use few, to stop a copy mid-way).
        #[arg(long, hide = true, default_value_t = crate::migrate::CHUNK)]
        keys_per_transaction: usize,
    },
    /// The campaign's witness policy: draft one from the registry, check a cosigned
    /// checkpoint against one.
    #[command(
        after_help = "Example:\n  spacesync-hub witnesses check cp.txt --policy witnesses-2018.txt   # no data directory needed"
    )]
    Witnesses {
        /// What to do.
        #[command(subcommand)]
        cmd: WitnessesCmd,
    },
    /// Dispute evidence files (`spacesync-agent evidence`).
    #[command(
        after_help = "Example:\n  spacesync-hub evidence verify gd-rrt-seq-42.evidence   # no data directory needed"
    )]
    Evidence {
        /// What to do with an evidence file.
        #[command(subcommand)]
        cmd: EvidenceCmd,
    },
    /// Re-verify the whole log: signatures, chains, Merkle root against the checkpoint.
    #[command(
        after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub verify   # hub stopped"
    )]
    Verify,
    /// Check hub.toml and the campaign file (with line numbers) and the data directory
    /// (permissions, keys, the store opens and belongs to this key) without starting.
    #[command(after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub check")]
    Check,
}

/// Where an admin command acts: on the running hub at `--hub URL` (through its admin
/// API, with an admin token), or, without `--hub`, on the stopped store under `--data`.
#[derive(Debug, Clone, Default, Args)]
pub struct Remote {
    /// Act on the running hub at this URL (its admin API) instead of on a stopped store
    /// under --data, which is then not needed.
    #[arg(long = "hub", global = true, value_name = "URL")]
    pub hub: Option<String>,
    /// The admin token for --hub (better: the environment variable, or --token-file).
    #[arg(
        long = "token",
        id = "hub_token",
        global = true,
        env = "SPACESYNC_HUB_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// A file (mode 0600) holding the admin token for --hub.
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the --hub URL's certificate besides the public
    /// roots: the ministry's private CA.
    #[arg(
        long = "ca-file",
        global = true,
        env = "SPACESYNC_HUB_CA",
        value_name = "FILE"
    )]
    pub ca_file: Option<PathBuf>,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address (overrides hub.toml).
    #[arg(long)]
    pub listen: Option<String>,
    /// Fix the hub clock at this instant (RFC 3339), for tests, demos and replays.
    #[arg(long)]
    pub now: Option<String>,
    /// With --now: run the clock this many times faster than real time.
    #[arg(long, requires = "now")]
    pub speed: Option<f64>,
    /// Log format (overrides log_format in hub.toml).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve HTTPS with this certificate chain (PEM; overrides hub.toml's [tls] cert).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; overrides hub.toml's [tls] key).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `log_format` of hub.toml: `human` or `json`; anything else is refused (a typo is
    /// not a silent default).
    pub fn from_config(value: &str, dir: &DataDir) -> Result<LogFormat, CliError> {
        match value {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(CliError::Usage(format!(
                "{}: log_format = {other:?} is not \"human\" or \"json\"",
                dir.config().display()
            ))),
        }
    }
}

/// `bulletin show --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowFormat {
    /// The signed JSON document.
    Json,
    /// HTML.
    Html,
    /// Markdown.
    Md,
    /// The province table as CSV.
    Csv,
    /// Every data flag as CSV.
    FlagsCsv,
}

impl ShowFormat {
    fn format(self) -> Format {
        match self {
            ShowFormat::Json => Format::Json,
            ShowFormat::Html => Format::Rendered(Rendering::Html),
            ShowFormat::Md => Format::Rendered(Rendering::Markdown),
            ShowFormat::Csv => Format::Rendered(Rendering::Csv),
            ShowFormat::FlagsCsv => Format::Rendered(Rendering::FlagsCsv),
        }
    }
}

/// `bulletin show --lang`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LangArg {
    /// 中文.
    Zh,
    /// English.
    En,
}

/// `extend` options.
#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// The provincial unit (PP0000).
    #[arg(long)]
    pub region: String,
    /// Milestone id.
    #[arg(long)]
    pub milestone: String,
    /// New last day, YYYY-MM-DD (campaign time zone).
    #[arg(long)]
    pub until: NaiveDate,
    /// Why.
    #[arg(long)]
    pub reason: String,
    /// Grant as of this instant (RFC 3339) instead of now (stopped store only).
    #[arg(long)]
    pub now: Option<String>,
    /// Running hub or stopped store.
    #[command(flatten)]
    pub remote: Remote,
}

/// `agents` subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// Register a source.
    #[command(
        after_help = "Example:\n  spacesync-hub agents add --source gd-rrt --scope 440000 --key ed25519:… --hub https://hub.example"
    )]
    Add {
        /// Source id.
        #[arg(long)]
        source: String,
        /// Scope region (normally the province, PP0000).
        #[arg(long)]
        scope: String,
        /// The agent's public key line (`spacesync-agent pubkey`).
        #[arg(long)]
        key: String,
    },
    /// List sources.
    #[command(
        after_help = "Example:\n  spacesync-hub agents list --json --hub https://hub.example"
    )]
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a source.
    #[command(
        after_help = "Example:\n  spacesync-hub agents revoke gd-rrt --hub https://hub.example"
    )]
    Revoke {
        /// Source id.
        id: String,
    },
    /// Replace a source's key from a seq on.
    #[command(
        after_help = "Example:\n  spacesync-hub agents rotate gd-rrt --key ed25519:… --from-seq 1201 --hub https://hub.example"
    )]
    Rotate {
        /// Source id.
        id: String,
        /// The new public key line.
        #[arg(long)]
        key: String,
        /// First seq the new key signs (default: the next seq after what the hub holds).
        #[arg(long)]
        from_seq: Option<u64>,
    },
    /// Invite an agent: print a one-time enrolment code (the last line) that names the
    /// hub URL and pins the hub's key; the agent runs `spacesync-agent init --enrol CODE`.
    /// Needs --hub (the URL put in the code; the hub must run for the agent to enrol).
    #[command(
        after_help = "Example:\n  spacesync-hub agents invite --source gd-rrt --scope 440000 --hub https://hub.example --expires 72h"
    )]
    Invite {
        /// The source id the agent will have.
        #[arg(long)]
        source: String,
        /// Its scope region (normally the province, PP0000).
        #[arg(long)]
        scope: String,
        /// How long the code works: e.g. 30m, 72h, 7d (at most 30d).
        #[arg(long, default_value = "72h")]
        expires: String,
    },
}

/// `bulletin` subcommands.
#[derive(Debug, Subcommand)]
pub enum BulletinCmd {
    /// Issue a bulletin now; prints its number.
    #[command(after_help = "Example:\n  spacesync-hub bulletin issue --hub https://hub.example")]
    Issue {
        /// Issue as of this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
    },
    /// List issued bulletins.
    #[command(after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub bulletin list")]
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print one bulletin.
    #[command(
        after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub bulletin show 3 --format html --lang en > b3.html"
    )]
    Show {
        /// Bulletin number.
        n: u64,
        /// The form: csv is the province table, flags-csv every data flag.
        #[arg(long, value_enum, default_value_t = ShowFormat::Json)]
        format: ShowFormat,
        /// The language.
        #[arg(long, value_enum, default_value_t = LangArg::Zh)]
        lang: LangArg,
    },
    /// Check a bulletin file (JSON) against the log; exits 0 only when it matches. With
    /// --witnesses, also only when the campaign's published witness policy's quorum of
    /// units cosigned its checkpoint (counting the policy's keys, and keys they handed
    /// over to in signed key transitions, never keys only the hub's registry names).
    #[command(
        after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub bulletin verify b3.json --witnesses witnesses-2018.txt"
    )]
    Verify {
        /// The bulletin JSON file.
        file: PathBuf,
        /// The witness policy (`spacesync-witnesses/1`) published with the campaign.
        #[arg(long, value_name = "POLICY")]
        witnesses: Option<PathBuf>,
    },
}

/// `notice-rules` subcommands.
#[derive(Debug, Subcommand)]
pub enum NoticeRulesCmd {
    /// List every notice rule: its value in force, whether it may be changed live, and
    /// where the value comes from (the campaign file, or the log entry that set it).
    #[command(after_help = "Example:\n  spacesync-hub notice-rules show --hub https://hub.example")]
    Show {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change one: remind_days (e.g. 14,7,3 or none), escalate_after_days,
    /// due_soon_days, silent_after_days (days), behind, far_behind (shares, 0–1).
    #[command(
        after_help = "Example:\n  spacesync-hub notice-rules set behind 0.75 --hub https://hub.example"
    )]
    Set {
        /// The setting's name.
        setting: String,
        /// Its new value (a negative one is read, and refused, by the hub's check).
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token and print it (shown once; only its hash is stored).
    #[command(
        after_help = "Example:\n  spacesync-hub token create --role province:440000 --label \"Guangdong dept.\" --hub https://hub.example"
    )]
    Create {
        /// admin, ministry, or province:<PP0000>.
        #[arg(long)]
        role: String,
        /// Who the token is for.
        #[arg(long)]
        label: Option<String>,
    },
    /// List tokens: id, role, created, last used, revoked, label (never the tokens).
    #[command(after_help = "Example:\n  spacesync-hub token list --hub https://hub.example")]
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (on the running hub with --hub, or with --data: every replica on a
    /// PostgreSQL store, a stopped hub on the embedded one): it is refused from then on,
    /// and the dashboard sessions opened with it end.
    #[command(
        after_help = "Example:\n  spacesync-hub token revoke 2b7348af7367 --hub https://hub.example"
    )]
    Revoke {
        /// The token (sst_…) or its id from `token list`.
        token: String,
    },
}

/// A subcommand failed; each says what and, where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad option value.
    #[error("{0}")]
    Usage(String),
    /// Data directory, hub.toml, campaign or key problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key file problem.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An evidence file is not genuine.
    #[error("{}: {error}", file.display())]
    Evidence {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        error: spacesync_shared::evidence::EvidenceError,
    },
    /// A witness policy does not read, or a checkpoint does not check out under it.
    #[error("{}: {error}", file.display())]
    Policy {
        /// The policy (or the checkpoint read under it).
        file: PathBuf,
        /// What is wrong.
        error: spacesync_shared::witness_policy::PolicyError,
    },
    /// Reading a checkpoint's cosignatures failed.
    #[error(transparent)]
    Witness(#[from] crate::witness::WitnessError),
    /// The log's tree state.
    #[error(transparent)]
    Log(#[from] LogError),
    /// `verify` could not finish.
    #[error(transparent)]
    Verify(#[from] maintenance::VerifyError),
    /// `migrate` stopped.
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
    /// Appending a hub entry failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// A registry change was refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A token operation failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A bulletin operation failed.
    #[error(transparent)]
    Bulletin(#[from] BulletinError),
    /// A bulletin file does not match the log.
    #[error("{file} does not match this hub's log: {error}")]
    BulletinMismatch {
        /// The file given.
        file: PathBuf,
        /// How it differs.
        error: BulletinError,
    },
    /// The CSV form of a bulletin could not be written.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A backup or restore failed.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// A bundle could not be imported.
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    /// A file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A JSON document could not be read or written.
    #[error("{what}: {error}")]
    Json {
        /// What was being read or written.
        what: String,
        /// The parser's error.
        error: serde_json::Error,
    },
    /// An admin operation was refused or failed (on the stopped store).
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// The running hub refused the request or could not be reached.
    #[error("the hub at {url}: {what}")]
    Hub {
        /// Its base URL.
        url: String,
        /// What it said, or why it was not reached, and what to do.
        what: String,
    },
    /// The async runtime cannot start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// `verify` found damage (each problem was printed).
    #[error("{count} problem(s) found in {dir}")]
    Damage {
        /// How many problems.
        count: usize,
        /// The data directory.
        dir: PathBuf,
    },
}

fn json<T: serde::Serialize + ?Sized>(what: &str, v: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(v).map_err(|error| CliError::Json {
        what: what.to_string(),
        error,
    })
}

/// Sets up logging to stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, CliError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            CliError::Usage(format!(
                "--now {s:?}: {e}; give an RFC 3339 instant such as 2018-11-20T09:00:00+08:00"
            ))
        })
}

/// The clock `--now` / `--speed` ask for: the system clock without `--now`, fixed at
/// `--now`, or starting at `--now` and running `--speed` times real time. The same rules
/// and messages as the agent's.
pub fn make_clock(now: Option<&str>, speed: Option<f64>) -> Result<Arc<dyn Clock>, CliError> {
    Ok(match (now, speed) {
        (None, None) => Arc::new(SystemClock),
        (None, Some(_)) => {
            return Err(CliError::Usage(
                "--speed needs --now (the instant the accelerated clock starts at)".into(),
            ));
        }
        (Some(t), None) => Arc::new(FixedClock::new(parse_time(t)?)),
        (Some(t), Some(s)) => {
            if !(s.is_finite() && s > 0.0) {
                return Err(CliError::Usage(format!(
                    "--speed {s}: must be a positive number (1 = real time)"
                )));
            }
            Arc::new(ScaledClock::new(parse_time(t)?, s))
        }
    })
}

/// The progress of a pass over `len` log leaves, drawn on stderr only when stderr is a
/// terminal (never into logs, pipes or CI): leaves done of all, the rate, and the time
/// left at that rate. It is cleared when the pass ends; the command's last line says
/// what was found. Advance it with [`advance`].
fn bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::hidden());
    }
    // The mean rate since the first leaf (indicatif's own estimate weighs the seconds
    // before it, when the registry is read, for a long time).
    fn rate(state: &ProgressState) -> f64 {
        state.pos() as f64 / state.elapsed().as_secs_f64().max(1e-3)
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {human_pos}/{human_len} leaves, {rate}, {left} left",
        )
        .map(|s| {
            s.with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}/s", HumanCount(rate(state).round() as u64));
                },
            )
            .with_key(
                "left",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let left = state.len().unwrap_or(0).saturating_sub(state.pos()) as f64;
                    let secs = if state.pos() == 0 {
                        0.0
                    } else {
                        left / rate(state)
                    };
                    let _ = write!(
                        w,
                        "{:#}",
                        HumanDuration(std::time::Duration::from_secs_f64(secs))
                    );
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

/// The callback a pass calls with each leaf's index: moves `pb` to it, starting its clock
/// at the first leaf.
fn advance(pb: &ProgressBar) -> impl FnMut(u64) + '_ {
    let mut started = false;
    move |index| {
        if !started {
            pb.reset_elapsed();
            started = true;
        }
        pb.set_position(index + 1);
    }
}

/// What `evidence` does.
#[derive(Debug, Subcommand)]
pub enum EvidenceCmd {
    /// Check an evidence file offline, with nothing but the file: the entry's signature by
    /// the source key, the hub's receipt, the inclusion proof in the hub-signed checkpoint,
    /// and every listed witness's cosignature. Exits 0 for a genuine file; otherwise
    /// non-zero, naming what is wrong. With --witnesses, the campaign's published witness
    /// policy decides who counts: its hub key must be the file's, and its witnesses must
    /// have cosigned the checkpoint for at least its quorum of provincial units.
    #[command(
        after_help = "Example:\n  spacesync-hub evidence verify gd-rrt-42.evidence --witnesses witnesses-2018.txt   # no data directory needed"
    )]
    Verify {
        /// The evidence file.
        file: PathBuf,
        /// The witness policy (`spacesync-witnesses/1`) published with the campaign.
        #[arg(long, value_name = "POLICY")]
        witnesses: Option<PathBuf>,
    },
}

/// What `witnesses` does.
#[derive(Debug, Subcommand)]
pub enum WitnessesCmd {
    /// Write a draft witness policy from this hub's registry: the hub key, the campaign's
    /// quorum, and the witness key of every active source by provincial unit. A draft
    /// only: the keys come from the hub, so each province must confirm its line (the
    /// output of `spacesync-agent pubkey --witness`) before the policy is published.
    #[command(
        after_help = "Example:\n  spacesync-hub --data /var/lib/spacesync-hub witnesses policy > witnesses-2018.draft"
    )]
    Policy,
    /// Check a checkpoint note (as `GET /v1/checkpoint?size=N` serves it, with its
    /// cosignature lines) against a witness policy; exits 0 only when the hub's signature
    /// verifies with the policy's hub key and its quorum of units cosigned. Needs no data
    /// directory.
    #[command(
        after_help = "Example:\n  spacesync-hub witnesses check cp.txt --policy witnesses-2018.txt   # cp.txt: curl https://hub.example/v1/checkpoint?size=72391"
    )]
    Check {
        /// The checkpoint note file.
        note: PathBuf,
        /// The witness policy.
        #[arg(long, value_name = "POLICY")]
        policy: PathBuf,
    },
}

/// Reads a witness policy file.
fn read_policy(path: &Path) -> Result<spacesync_shared::witness_policy::Policy, CliError> {
    use std::io::Read as _;
    let io = |error| CliError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(spacesync_shared::witness_policy::MAX_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(io)?;
    spacesync_shared::witness_policy::Policy::parse(&text).map_err(|error| CliError::Policy {
        file: path.to_path_buf(),
        error,
    })
}

/// `witnesses check NOTE --policy P`.
fn witnesses_check(note: &Path, policy: &Path) -> Result<(), CliError> {
    use std::io::Read as _;
    let p = read_policy(policy)?;
    // Bounded: the note comes from the hub (a few KiB with 99 cosignature lines).
    let mut text = String::new();
    std::fs::File::open(note)
        .and_then(|f| {
            f.take(spacesync_shared::evidence::MAX_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(|error| CliError::Io {
            path: note.to_path_buf(),
            error,
        })?;
    if text.len() > spacesync_shared::evidence::MAX_BYTES {
        return Err(CliError::Usage(format!(
            "{}: more than {} bytes, not a checkpoint note",
            note.display(),
            spacesync_shared::evidence::MAX_BYTES
        )));
    }
    let t = p.tally(&text).map_err(|error| CliError::Policy {
        file: note.to_path_buf(),
        error,
    })?;
    if !t.met() {
        return Err(CliError::Usage(format!(
            "{}: {}",
            note.display(),
            t.describe()
        )));
    }
    spacesync_shared::outln!("ok: {}", t.describe());
    Ok(())
}

/// `evidence verify FILE`: the summary line of a genuine file, or what is wrong.
fn evidence(cmd: EvidenceCmd) -> Result<(), CliError> {
    use std::io::Read as _;
    let EvidenceCmd::Verify { file, witnesses } = cmd;
    let policy = witnesses.as_deref().map(read_policy).transpose()?;
    let io = |error| CliError::Io {
        path: file.clone(),
        error,
    };
    // At most one byte more than a file may have: a huge file is refused, not read whole.
    let mut bytes = Vec::new();
    std::fs::File::open(&file)
        .and_then(|f| {
            f.take(spacesync_shared::evidence::MAX_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(io)?;
    let evidence_error = |error| CliError::Evidence {
        file: file.clone(),
        error,
    };
    let (p, tally) = match &policy {
        Some(policy) => spacesync_shared::evidence::verify_under(&bytes, policy)
            .map(|(p, t)| (p, Some(t)))
            .map_err(evidence_error)?,
        None => (
            spacesync_shared::evidence::verify(&bytes).map_err(evidence_error)?,
            None,
        ),
    };
    let witnesses = if let Some(t) = tally {
        format!("under the witness policy, {}", t.describe())
    } else if p.witnesses.is_empty() {
        "no witness cosignature".to_string()
    } else {
        format!(
            "cosigned by {} witness(es): {}",
            p.witnesses.len(),
            p.witnesses.join(", ")
        )
    };
    spacesync_shared::outln!(
        "ok: seq {} of source {} (signed by its key) was receipted by the hub at leaf {} (received {}), and the hub-signed checkpoint of {} entries of log {} holds it there; {witnesses}",
        p.seq,
        p.source,
        p.log_index,
        p.received_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        p.size,
        p.origin
    );
    Ok(())
}

/// Runs a subcommand; its output goes to stdout, notes to stderr.
pub fn execute(cli: Cli) -> Result<ExitCode, CliError> {
    // Everything this process creates (sled's own files included) is private to its user.
    http::private_umask();
    let dir = DataDir(cli.data);
    match cli.cmd {
        Cmd::Init { campaign, store } => {
            let line = config::init(&dir, campaign.as_deref(), store.as_deref())?;
            let state = match &store {
                Some(url) => format!(
                    " with its state in the PostgreSQL database {}",
                    crate::store::pg::Redacted(url)
                ),
                None => String::new(),
            };
            eprintln!(
                "Initialised hub in {}{state}; edit {} then start the hub (`systemctl enable --now spacesync-hub` where the package is installed, else `spacesync-hub serve`).",
                dir.0.display(),
                dir.config().display()
            );
            spacesync_shared::outln!("{line}");
        }
        Cmd::Pubkey => {
            config::check_permissions(&dir)?;
            let key = keys::read_secret(&dir.key())?;
            spacesync_shared::outln!("{}", keys::public_key_line(&key.verifying_key()));
        }
        Cmd::WebhookKey => {
            let (key, generated) = config::webhook_key(&dir)?;
            if generated {
                eprintln!(
                    "Generated {} (this hub was initialised before webhook keys existed).",
                    dir.webhook_key().display()
                );
            }
            spacesync_shared::outln!("{}", keys::public_key_line(&key.verifying_key()));
        }
        Cmd::Serve(a) => serve(&dir, a)?,
        Cmd::StoreSnapshot { log_format } => {
            init_logging(log_format);
            return Ok(store_snapshot(&dir));
        }
        Cmd::Agents { now, remote, cmd } => agents(&dir, now.as_deref(), &remote, cmd)?,
        Cmd::Token { remote, cmd } => token(&dir, &remote, cmd)?,
        Cmd::Extend(a) => {
            let index = extend(&dir, &a)?;
            spacesync_shared::outln!(
                "extension for {} {} until {} recorded at log index {index}",
                a.region,
                a.milestone,
                a.until
            );
        }
        Cmd::NoticeRules { now, remote, cmd } => notice_rules(&dir, now.as_deref(), &remote, cmd)?,
        Cmd::Bulletin { remote, cmd } => bulletins(&dir, &remote, cmd)?,
        Cmd::Evidence { cmd } => evidence(cmd)?,
        Cmd::Witnesses {
            cmd: WitnessesCmd::Check { note, policy },
        } => witnesses_check(&note, &policy)?,
        Cmd::Witnesses {
            cmd: WitnessesCmd::Policy,
        } => {
            let store = config::open_store(&dir)?;
            let cfg = config::load_config(&dir)?;
            let campaign = config::load_campaign(&dir)?;
            let key = keys::read_secret(&dir.key())?;
            let registry = crate::registry::load_all(store.as_ref())?;
            spacesync_shared::out!(
                "{}",
                witness::draft_policy(
                    &registry,
                    &cfg.origin,
                    key.verifying_key(),
                    campaign.witness_quorum as usize
                )
            );
        }
        Cmd::Rebuild => {
            let store = config::open_store(&dir)?;
            let baseline = config::load_campaign(&dir)?.baseline;
            let size = crate::log::Log::load(store.as_ref())?.size();
            let pb = bar(size, "rebuild");
            let n = maintenance::rebuild(store.as_ref(), baseline, advance(&pb))?;
            pb.finish_and_clear();
            spacesync_shared::outln!("rebuilt views from {size} log leaves ({n} view items)");
        }
        Cmd::Migrate {
            to,
            keys_per_transaction,
        } => migrate(&dir, &to, keys_per_transaction)?,
        Cmd::Verify => verify(&dir)?,
        Cmd::Check => check(&dir)?,
        Cmd::Backup { out } => {
            let s = crate::backup::backup(&dir, &out)?;
            spacesync_shared::outln!(
                "backup of {} written to {}: {} keys, log size {}; check it with `spacesync-hub --data {} verify`",
                dir.0.display(),
                s.out.display(),
                s.keys,
                s.log_size,
                s.out.display()
            );
        }
        Cmd::ImportBundle {
            remote,
            file,
            receipts,
            now,
        } => {
            let bundle = crate::bundle::read(&file)?;
            if receipts.exists() {
                return Err(crate::bundle::BundleError::ReceiptsExist(receipts).into());
            }
            let (outcomes, stopped) = match remote.target(&dir, now.as_deref())? {
                Target::Store(dir, clock) => {
                    let (hub, _) = config::open_hub(dir, clock)?;
                    crate::bundle::import(&hub, &bundle)
                }
                Target::Hub(c) => import_remote(&c, &bundle),
            };
            crate::bundle::write_receipts(&receipts, &bundle, &outcomes)?;
            for line in crate::bundle::describe(&outcomes) {
                spacesync_shared::outln!("{line}");
            }
            if let Some(e) = stopped {
                return Err(e.into());
            }
            let refused: usize = outcomes.iter().map(|o| o.response.refused.len()).sum();
            eprintln!(
                "Receipts written to {}; carry it back and run `spacesync-agent import-receipts {}` on the agent.",
                receipts.display(),
                receipts.display()
            );
            if refused > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Restore { backup } => {
            let size = crate::backup::restore(&backup, &dir)?;
            spacesync_shared::outln!(
                "restored {} into {} (log size {size}); run `spacesync-hub --data {} verify`, then serve",
                backup.display(),
                dir.0.display(),
                dir.0.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `serve`: opens the hub on the clock of `--now` / `--speed`, binds its addresses and
/// runs [`serve::run`] until ctrl-c or SIGTERM.
fn serve(dir: &DataDir, a: ServeArgs) -> Result<(), CliError> {
    let clock = make_clock(a.now.as_deref(), a.speed)?;
    let speed = a.speed.unwrap_or(1.0);
    let cfg = config::load_config(dir)?;
    let format = match a.log_format {
        Some(f) => f,
        None => LogFormat::from_config(&cfg.log_format, dir)?,
    };
    init_logging(format);
    let (hub, cfg) = config::open_hub_scaled(dir, clock, speed)?;
    let (webhook_key, generated) = config::webhook_key(dir)?;
    if generated {
        tracing::warn!(path = %dir.webhook_key().display(), key = %keys::public_key_line(&webhook_key.verifying_key()), "Generated the webhook signing key (this hub was initialised before it existed); give its public line to webhook receivers.");
    }
    let addr = a.listen.unwrap_or_else(|| cfg.listen.clone());
    let tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(spacesync_http::tls::TlsFiles {
            cert,
            key,
            client_ca: cfg.tls_files(dir).and_then(|t| t.client_ca),
        }),
        _ => cfg.tls_files(dir),
    };
    let fds = http::raise_fd_limit();
    tracing::info!(open_files_limit = ?fds, "Open-file limit.");
    // The embedded store gets sled's snapshot brought up to date after a clean stop.
    let on_sled = cfg.store.is_none();
    // Held past `serve::run` on sled, so the last handle is never dropped (freeing a large
    // store's page table piece by piece takes seconds): the exec closes it.
    let kept = on_sled.then(|| hub.store.clone());
    let rt = tokio::runtime::Runtime::new().map_err(CliError::Runtime)?;
    let served = rt.block_on(async move {
        let listener = serve::bind_api(&addr).await?;
        let metrics = match &cfg.metrics_listen {
            Some(m) => Some(serve::bind_metrics(m).await?),
            None => None,
        };
        let serving = Serving {
            hub,
            cfg,
            webhook_key,
            speed,
            tls,
            dir: Some(dir.clone()),
        };
        serve::run(listener, metrics, serving, serve::shutdown_signal()).await
    })?;
    if let Some(store) = kept {
        snapshot_after_stop(dir, format, rt, store, &served);
    }
    Ok(())
}

/// After a clean stop on the embedded store: this process becomes `store-snapshot`
/// ([`store_snapshot`]; same process id, a fresh image), so that the next start reads
/// sled's page table instead of replaying what this run wrote.
///
/// Why a fresh image: sled lets go of the store's lock only once the handle is freed,
/// and freeing the page table of a large store piece by piece took 3–8 s at 9 M entries;
/// `exec` closes the store's file (close-on-exec) at once and leaves the memory to the
/// system. Everything the hub acknowledged is flushed already (`serve::run` flushes once
/// more at its end). Work still running on the runtime's blocking threads — a `backup`
/// asked for over the control socket just before the stop, copying the store — is waited
/// for first (up to [`STOP_BLOCKING_PATIENCE`]), so the exec cannot cut a copy in half. A
/// failed `exec` is logged and changes nothing: the next start replays, as after a crash.
fn snapshot_after_stop(
    dir: &DataDir,
    format: LogFormat,
    rt: tokio::runtime::Runtime,
    store: Arc<dyn crate::store::Store>,
    hub: &crate::hub::Hub,
) {
    rt.shutdown_timeout(STOP_BLOCKING_PATIENCE);
    match store.flush() {
        // Nothing writes any more: the views checkpoint for the next start.
        Ok(()) => serve::write_views_checkpoint(hub, store.as_ref()),
        Err(e) => tracing::warn!(error = %e, "Could not flush the store at the stop."),
    }
    // Never dropped: the exec closes it (see above).
    std::mem::forget(store);
    #[cfg(target_os = "linux")]
    let error = {
        use std::os::unix::process::CommandExt;
        // The running binary itself, even if a package upgrade replaced its path.
        std::process::Command::new("/proc/self/exe")
            .arg("--data")
            .arg(&dir.0)
            .arg("store-snapshot")
            .arg("--log-format")
            .arg(match format {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            })
            .exec()
    };
    #[cfg(not(target_os = "linux"))]
    let error = {
        let _ = (dir, format);
        std::io::Error::other("not on Linux")
    };
    tracing::warn!(
        error = %error,
        "Could not write the store's snapshot after the stop; the next start replays the log written since the last one."
    );
}

/// How long a clean stop waits for work on the runtime's blocking threads (a `backup`
/// copying the store) before it replaces the process image.
const STOP_BLOCKING_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// `store-snapshot`: [`crate::store::SledStore::snapshot_open`] on the data directory's
/// store, the handle then forgotten (the process ends; see [`snapshot_after_stop`]). A
/// failure is logged and changes nothing the next start cannot redo; the exit status
/// says whether it worked. A hub whose store is PostgreSQL has no sled store to bring up
/// to date: refused, before anything is created under the data directory.
fn store_snapshot(dir: &DataDir) -> ExitCode {
    match config::load_config(dir) {
        Ok(cfg) if cfg.store.is_some() => {
            tracing::error!(data = %dir.0.display(), "This hub's store is PostgreSQL ([store] in hub.toml): there is no sled snapshot to write; nothing was done.");
            return ExitCode::FAILURE;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(data = %dir.0.display(), error = %e, "Cannot read the hub's configuration; no snapshot written.");
            return ExitCode::FAILURE;
        }
    }
    let started = std::time::Instant::now();
    match crate::store::SledStore::snapshot_open(&dir.db()) {
        Ok(store) => {
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "Wrote the store's snapshot; the next start replays nothing."
            );
            std::mem::forget(store);
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::warn!(
                store = %dir.db().display(),
                error = %e,
                "Could not write the store's snapshot (after a stop: another process — a `serve` started meanwhile? — may hold the store); the next start replays the log written since the last one."
            );
            ExitCode::FAILURE
        }
    }
}

/// [`crate::bundle::import`] through a running hub's admin API: each batch in order,
/// stopping at the first the hub refuses as a whole or the first failed call (the answers
/// before it still count, and go into the receipts file).
fn import_remote(
    c: &HubClient,
    bundle: &spacesync_shared::bundle::Bundle,
) -> (
    Vec<crate::bundle::BatchOutcome>,
    Option<crate::bundle::BundleError>,
) {
    let mut out = Vec::with_capacity(bundle.batches.len());
    for (i, batch) in bundle.batches.iter().enumerate() {
        let stop = |why: String| crate::bundle::BundleError::RemoteBatch {
            index: i + 1,
            hub: c.base.clone(),
            why,
        };
        match c.post::<_, wire_admin::BundleBatchAnswer>(wire_admin::PATH_BUNDLE_BATCH, batch) {
            Ok(wire_admin::BundleBatchAnswer::Ingested {
                status,
                appended,
                response,
            }) => out.push(crate::bundle::outcome(batch, status, appended, response)),
            Ok(wire_admin::BundleBatchAnswer::Refused { error }) => {
                return (out, Some(stop(error)));
            }
            Err(e) => return (out, Some(stop(e.to_string()))),
        }
    }
    (out, None)
}

/// Where an admin command acts.
enum Target<'a> {
    /// The stopped store under `--data`, changes stamped by this clock.
    Store(&'a DataDir, Arc<dyn Clock>),
    /// The running hub, through its admin API.
    Hub(HubClient),
}

impl Remote {
    /// The target `--hub` names, or the stopped store; `now` is the command's `--now`,
    /// which only a stopped store takes (a running hub records on its own clock).
    fn target<'a>(&self, dir: &'a DataDir, now: Option<&str>) -> Result<Target<'a>, CliError> {
        let Some(url) = &self.hub else {
            return Ok(Target::Store(dir, make_clock(now, None)?));
        };
        if now.is_some() {
            return Err(CliError::Usage(format!(
                "--now applies to a stopped store; the hub at {url} records changes on its own clock (leave out --now, or --hub)"
            )));
        }
        let token = match (&self.token, &self.token_file) {
            (_, Some(path)) => read_token_file(path)?,
            (Some(t), None) => t.trim().to_string(),
            (None, None) => {
                return Err(CliError::Usage(format!(
                    "--hub {url}: give an admin token with --token, the environment variable SPACESYNC_HUB_TOKEN or --token-file PATH (create one with `spacesync-hub token create --role admin` on the stopped hub)"
                )));
            }
        };
        Ok(Target::Hub(HubClient::new(
            url,
            token,
            self.ca_file.as_deref(),
        )?))
    }
}

/// Reads an admin token from a file only its owner can read (as key files are).
fn read_token_file(path: &std::path::Path) -> Result<String, CliError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |error| CliError::Io {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CliError::Usage(format!(
            "{}: the token file is open to others (mode {mode:03o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    if meta.len() > 4096 {
        return Err(CliError::Usage(format!(
            "{}: not a token file (larger than 4 KiB)",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(CliError::Usage(format!(
            "{}: expected one token (sst_…) and nothing else",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// A client of a running hub's admin API: one admin token, no redirects (the token goes
/// to the URL given and nowhere else), JSON in and out.
pub struct HubClient {
    /// Base URL, without a trailing `/`.
    base: String,
    /// The admin token.
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

/// Largest answer read from the admin API.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

impl HubClient {
    /// A client of the hub at `url` (http:// or https://), trusting the public roots and
    /// the CA certificates in `ca_file`.
    pub fn new(
        url: &str,
        token: String,
        ca_file: Option<&std::path::Path>,
    ) -> Result<HubClient, CliError> {
        let base = url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--hub {url:?}: give the hub's base URL, e.g. https://hub.example or http://127.0.0.1:7400"
            )));
        }
        if wire_admin::plain_http_off_loopback(&base) {
            eprintln!(
                "warning: --hub {base} is plain HTTP: the admin token crosses the network readable; use https:// (or a loopback address)"
            );
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(spacesync_http::CLIENT_POOL_IDLE)
            .timeout(std::time::Duration::from_secs(120));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|error| CliError::Io {
                path: path.to_path_buf(),
                error,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "--ca-file {}: no PEM certificate in it (give the CA that signed the hub's certificate)",
                        path.display()
                    ))
                })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Usage(format!("cannot build an HTTP client: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        Ok(HubClient {
            base,
            token,
            http,
            rt,
        })
    }

    /// `GET path`.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(reqwest::Method::GET, path, None)
    }

    /// `POST path` with `body` as JSON.
    pub fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        let bytes = serde_json::to_vec(body).map_err(|error| CliError::Json {
            what: format!("the request to {}{path}", self.base),
            error,
        })?;
        self.call(reqwest::Method::POST, path, Some(bytes))
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CliError> {
        let url = format!("{}{path}", self.base);
        let err = |what: String| CliError::Hub {
            url: self.base.clone(),
            what,
        };
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let (status, bytes) = self
            .rt
            .block_on(async {
                let mut resp = req.send().await?;
                let status = resp.status();
                let mut bytes = Vec::new();
                while let Some(chunk) = resp.chunk().await? {
                    if bytes.len() + chunk.len() > MAX_ANSWER {
                        break;
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>((status, bytes))
            })
            .map_err(|e| {
                let chain = spacesync_shared::err_chain(&e);
                let hint = if chain.contains("UnknownIssuer") {
                    "its certificate is signed by a CA this machine does not trust: give that CA with --ca-file FILE (or SPACESYNC_HUB_CA)"
                } else {
                    "is it running, and is --hub its address?"
                };
                err(format!("cannot reach it ({chain}); {hint}"))
            })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                err(format!(
                    "its answer to {path} is not what this CLI expects ({e}); is --hub a spacesync hub of the same version?"
                ))
            });
        }
        let said = serde_json::from_slice::<spacesync_shared::wire::ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("answered {status}"));
        Err(err(match status.as_u16() {
            401 => format!(
                "refused the token ({said}); this command needs a token with the admin role: give it with --token, SPACESYNC_HUB_TOKEN or --token-file"
            ),
            403 => format!("{said}; this command needs a token with the admin role"),
            404 if said.starts_with("no such endpoint") => {
                format!("has no {path} ({said}); is --hub a spacesync hub with the admin API?")
            }
            _ => said,
        }))
    }
}

/// Parses a duration such as `30m`, `72h`, `7d` or `3600s`.
fn parse_expiry(s: &str) -> Result<u64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--expires {s:?}: give a number and a unit: s, m, h or d (e.g. 72h)"
        ))
    };
    let s = s.trim();
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

fn print_source(verb: &str, r: &SourceInfo) {
    spacesync_shared::outln!(
        "{verb} {} (scope {}, key {})",
        r.id,
        r.scope,
        r.current_key().unwrap_or("")
    );
}

fn agents(
    dir: &DataDir,
    now: Option<&str>,
    remote: &Remote,
    cmd: AgentsCmd,
) -> Result<(), CliError> {
    let target = remote.target(dir, now)?;
    let open = |dir: &DataDir, clock: &Arc<dyn Clock>| -> Result<Hub, CliError> {
        Ok(config::open_hub(dir, clock.clone())?.0)
    };
    match cmd {
        AgentsCmd::Add { source, scope, key } => {
            let req = AddSource { source, scope, key };
            let rec = match &target {
                Target::Store(dir, clock) => admin::add_source(&open(dir, clock)?, &req)?,
                Target::Hub(c) => c.post(wire_admin::PATH_SOURCES, &req)?,
            };
            print_source("added", &rec);
        }
        AgentsCmd::List { json: as_json } => {
            let all = match &target {
                Target::Store(dir, clock) => admin::list_sources(&open(dir, clock)?),
                Target::Hub(c) => c.get::<SourceList>(wire_admin::PATH_SOURCES)?,
            };
            if as_json {
                spacesync_shared::outln!("{}", json("the source list", &all.sources)?);
            } else {
                spacesync_shared::outln!(
                    "{:<24} {:<8} {:<8} {:<22} key",
                    "source",
                    "scope",
                    "status",
                    "added"
                );
                for r in all.sources {
                    spacesync_shared::outln!(
                        "{:<24} {:<8} {:<8} {:<22} {}",
                        r.id,
                        r.scope,
                        r.status,
                        r.added_at.format("%Y-%m-%d %H:%M:%S"),
                        r.current_key().unwrap_or("")
                    );
                }
            }
        }
        AgentsCmd::Revoke { id } => {
            let req = SourceRef { source: id };
            let rec = match &target {
                Target::Store(dir, clock) => admin::revoke_source(&open(dir, clock)?, &req)?,
                Target::Hub(c) => c.post(wire_admin::PATH_SOURCES_REVOKE, &req)?,
            };
            spacesync_shared::outln!("revoked {}", rec.id);
        }
        AgentsCmd::Rotate { id, key, from_seq } => {
            let req = RotateSource {
                source: id,
                key,
                from_seq,
            };
            let rec = match &target {
                Target::Store(dir, clock) => admin::rotate_source(&open(dir, clock)?, &req)?,
                Target::Hub(c) => c.post(wire_admin::PATH_SOURCES_ROTATE, &req)?,
            };
            let k = rec.keys.last().map(|k| k.from_seq).unwrap_or(1);
            spacesync_shared::outln!("rotated {}: the new key signs from seq {k} on", rec.id);
        }
        AgentsCmd::Invite {
            source,
            scope,
            expires,
        } => {
            let Target::Hub(c) = &target else {
                return Err(CliError::Usage(
                    "agents invite needs --hub URL: the code names the URL agents reach the hub at, and the hub must be running for them to enrol".into(),
                ));
            };
            if wire_admin::plain_http_off_loopback(&c.base) {
                return Err(CliError::Usage(format!(
                    "agents invite: --hub {} is plain HTTP off this machine; the code's one-time secret would reach the hub readable, and whoever read it could enrol first. Invite with the hub's https:// URL",
                    c.base
                )));
            }
            let req = Invite {
                source,
                scope,
                expires_in_secs: parse_expiry(&expires)?,
            };
            let inv: Invited = c.post(wire_admin::PATH_INVITES, &req)?;
            let code = EnrolCode {
                hub: c.base.clone(),
                hub_key: inv.hub_key.clone(),
                secret: inv.secret.clone(),
            };
            eprintln!(
                "Enrolment code for source {} (scope {}), valid once until {}; on the agent's machine run\n  spacesync-agent --data DIR init --enrol CODE\nThe code pins this hub's key {}:",
                req.source,
                req.scope,
                inv.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                inv.hub_key
            );
            spacesync_shared::outln!("{}", code.encode());
        }
    }
    Ok(())
}

fn token(dir: &DataDir, remote: &Remote, cmd: TokenCmd) -> Result<(), CliError> {
    let target = remote.target(dir, None)?;
    // Tokens are not registry changes: the system clock stamps them, as before.
    let open = |dir: &DataDir| -> Result<Hub, CliError> {
        Ok(config::open_hub(dir, Arc::new(SystemClock))?.0)
    };
    match cmd {
        TokenCmd::Create { role, label } => {
            let req = CreateToken { role, label };
            let made = match &target {
                Target::Store(dir, _) => admin::create_token(&open(dir)?, &req)?,
                Target::Hub(c) => c.post::<_, CreatedToken>(wire_admin::PATH_TOKENS, &req)?,
            };
            eprintln!(
                "Token id {} ({}; for `token list` and `token revoke`); the token is shown once:",
                made.id, made.role
            );
            spacesync_shared::outln!("{}", made.token);
        }
        TokenCmd::List { json: as_json } => {
            let all = match &target {
                Target::Store(dir, _) => admin::list_tokens(config::open_store(dir)?.as_ref())?,
                Target::Hub(c) => c.get::<TokenList>(wire_admin::PATH_TOKENS)?,
            };
            if as_json {
                spacesync_shared::outln!("{}", json("the token list", &all.tokens)?);
            } else {
                let t = |t: Option<DateTime<Utc>>| {
                    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "-".into())
                };
                spacesync_shared::outln!(
                    "{:<14} {:<17} {:<20} {:<20} {:<20} label",
                    "id",
                    "role",
                    "created",
                    "last used",
                    "revoked"
                );
                for r in all.tokens {
                    spacesync_shared::outln!(
                        "{:<14} {:<17} {:<20} {:<20} {:<20} {}",
                        r.id,
                        r.role,
                        r.created_at.format("%Y-%m-%d %H:%M:%S"),
                        t(r.last_used_at),
                        t(r.revoked_at),
                        r.label.as_deref().unwrap_or("")
                    );
                }
            }
        }
        TokenCmd::Revoke { token } => {
            let req = TokenRef { token };
            let rec = match &target {
                Target::Store(dir, _) => admin::revoke_token(&open(dir)?, &req)?,
                Target::Hub(c) => c.post::<_, TokenInfo>(wire_admin::PATH_TOKENS_REVOKE, &req)?,
            };
            spacesync_shared::outln!(
                "revoked token {} ({}{}); its dashboard sessions end at their next request",
                rec.id,
                rec.role,
                rec.label.map(|l| format!(", {l}")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `extend`: grants a deadline extension on the running hub or the stopped store; the
/// checks are [`admin::extend`]'s either way. Returns its log index.
pub fn extend(dir: &DataDir, a: &ExtendArgs) -> Result<u64, CliError> {
    let req = Extend {
        region: a.region.clone(),
        milestone: a.milestone.clone(),
        until: a.until,
        reason: a.reason.clone(),
    };
    let done = match a.remote.target(dir, a.now.as_deref())? {
        Target::Store(dir, clock) => admin::extend(&config::open_hub(dir, clock)?.0, &req)?,
        Target::Hub(c) => c.post::<_, Extended>(wire_admin::PATH_EXTENSIONS, &req)?,
    };
    Ok(done.log_index)
}

/// `notice-rules show|set` on the running hub or the stopped store; the checks are
/// [`admin::set_notice_rule`]'s either way.
fn notice_rules(
    dir: &DataDir,
    now: Option<&str>,
    remote: &Remote,
    cmd: NoticeRulesCmd,
) -> Result<(), CliError> {
    let target = remote.target(dir, now)?;
    match cmd {
        NoticeRulesCmd::Show { json: as_json } => {
            let all = match &target {
                Target::Store(dir, clock) => {
                    admin::notice_rules(&config::open_hub(dir, clock.clone())?.0)
                }
                Target::Hub(c) => c.get::<NoticeRules>(wire_admin::PATH_NOTICE_RULES)?,
            };
            if as_json {
                spacesync_shared::outln!("{}", json("the notice rules", &all)?);
                return Ok(());
            }
            spacesync_shared::outln!(
                "{:<20} {:<12} {:<11} from",
                "setting",
                "value",
                "adjustable"
            );
            for r in all.rules {
                let from = match &r.changed {
                    None => format!("campaign {}", all.campaign),
                    Some(o) => format!(
                        "log index {} (hub entry {}), {}{}",
                        o.log_index,
                        o.seq,
                        o.at.to_rfc3339_opts(SecondsFormat::Secs, true),
                        o.token
                            .as_deref()
                            .map(|t| format!(", admin token {t}"))
                            .unwrap_or_else(|| ", on the stopped store".into())
                    ),
                };
                spacesync_shared::outln!(
                    "{:<20} {:<12} {:<11} {from}",
                    r.setting.name(),
                    r.value.to_string(),
                    if r.adjustable { "yes" } else { "no" }
                );
            }
        }
        NoticeRulesCmd::Set { setting, value } => {
            let req = SetNoticeRule { setting, value };
            let done = match &target {
                Target::Store(dir, clock) => {
                    admin::set_notice_rule(&config::open_hub(dir, clock.clone())?.0, &req, None)?
                }
                Target::Hub(c) => {
                    c.post::<_, NoticeRuleSet>(wire_admin::PATH_NOTICE_RULES, &req)?
                }
            };
            match done.log_index {
                Some(i) => spacesync_shared::outln!(
                    "notice rule {} changed from {} to {}, recorded at log index {i}; the next bulletin and notices use it",
                    done.setting,
                    done.old,
                    done.new
                ),
                None => spacesync_shared::outln!(
                    "notice rule {} is already {}; nothing recorded",
                    done.setting,
                    done.new
                ),
            }
        }
    }
    Ok(())
}

fn bulletins(dir: &DataDir, remote: &Remote, cmd: BulletinCmd) -> Result<(), CliError> {
    if remote.hub.is_some() && !matches!(cmd, BulletinCmd::Issue { .. }) {
        return Err(CliError::Usage(
            "--hub applies to `bulletin issue`; read bulletins from a running hub at GET /v1/bulletins/<n>.<json|html|md|csv>".into(),
        ));
    }
    match cmd {
        BulletinCmd::Issue { now } => {
            let issued = match remote.target(dir, now.as_deref())? {
                Target::Store(dir, clock) => {
                    let (hub, _) = config::open_hub(dir, clock)?;
                    let book = crate::notices::NoticeBook::load(hub.store.as_ref())?;
                    admin::issue_bulletin(&hub, &book.log())?
                }
                Target::Hub(c) => {
                    c.post::<_, Issued>(wire_admin::PATH_BULLETINS_ISSUE, &serde_json::json!({}))?
                }
            };
            spacesync_shared::outln!("{}", issued.number);
        }
        BulletinCmd::List { json: as_json } => {
            let store = config::open_store(dir)?;
            let campaign = config::load_campaign(dir)?;
            let registry = crate::registry::load_all(store.as_ref())?;
            let mut list = bulletin::list(store.as_ref())?;
            for b in &mut list {
                let c = &b.checkpoint;
                b.witnessed = Some(witness::status_now(
                    store.as_ref(),
                    &registry,
                    &campaign,
                    c.size,
                    &c.note,
                    b.issued_at,
                )?);
            }
            if as_json {
                spacesync_shared::outln!("{}", json("the bulletin list", &list)?);
            } else {
                for b in list {
                    let issued = b.issued_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
                    let w = b
                        .witnessed
                        .as_ref()
                        .map(|w| crate::wording::bulletin::witnessed(Lang::En, w))
                        .unwrap_or_default();
                    spacesync_shared::outln!("{:>4}  {issued}  {}  ({w})", b.number, b.title);
                }
            }
        }
        BulletinCmd::Show { n, format, lang } => {
            let store = config::open_store(dir)?;
            let doc = bulletin::get(store.as_ref(), n)?;
            let lang = match lang {
                LangArg::Zh => Lang::Zh,
                LangArg::En => Lang::En,
            };
            let campaign = config::load_campaign(dir)?;
            let registry = crate::registry::load_all(store.as_ref())?;
            let cp = &doc["checkpoint"];
            let issued_at = doc["issued_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            let witnessed = match (cp["size"].as_u64(), cp["note"].as_str(), issued_at) {
                (Some(size), Some(note), Some(at)) => Some(witness::status_now(
                    store.as_ref(),
                    &registry,
                    &campaign,
                    size,
                    note,
                    at.to_utc(),
                )?),
                _ => None,
            };
            let out = bulletin::show_witnessed(&doc, format.format(), lang, witnessed)?;
            spacesync_shared::out!("{out}");
            if !out.ends_with('\n') {
                spacesync_shared::outln!();
            }
        }
        BulletinCmd::Verify { file, witnesses } => {
            let policy = witnesses.as_deref().map(read_policy).transpose()?;
            let store = config::open_store_for_walk(dir)?;
            let cfg = config::load_config(dir)?;
            let campaign = config::load_campaign(dir)?;
            let key = keys::read_secret(&dir.key())?;
            let text = std::fs::read_to_string(&file).map_err(|error| CliError::Io {
                path: file.clone(),
                error,
            })?;
            let doc: Value = serde_json::from_str(&text).map_err(|error| CliError::Json {
                what: format!(
                    "{} is not JSON (give the JSON form of a bulletin)",
                    file.display()
                ),
                error,
            })?;
            bulletin::verify(
                store.as_ref(),
                &campaign,
                &key.verifying_key(),
                &cfg.origin,
                &doc,
            )
            .map_err(|error| CliError::BulletinMismatch {
                file: file.clone(),
                error,
            })?;
            let size = doc["checkpoint"]["size"].as_u64().unwrap_or_default();
            let note = doc["checkpoint"]["note"].as_str().unwrap_or_default();
            // The cosignatures against the registry as it stood at the checkpoint.
            let registry = crate::registry::load_all(store.as_ref())?;
            let w = witness::status_as_of(store.as_ref(), &registry, &campaign, size, note)
                .map_err(|error| CliError::BulletinMismatch {
                    file: file.clone(),
                    error: bulletin::BulletinError::Witness(error.to_string()),
                })?;
            if let (Some(mut policy), Some(path)) = (policy, witnesses) {
                let policy_error = |error| CliError::Policy {
                    file: path.clone(),
                    error,
                };
                policy
                    .check_log(&cfg.origin, &key.verifying_key())
                    .map_err(policy_error)?;
                let added =
                    witness::extend_by_transitions(store.as_ref(), &mut policy, &campaign.id)?;
                let t = witness::status_under(store.as_ref(), &policy, size, note)?;
                let handed = if added > 0 {
                    format!(
                        " ({added} key(s) its witnesses handed over to in their chains counted)"
                    )
                } else {
                    String::new()
                };
                if !t.met() {
                    return Err(CliError::Usage(format!(
                        "bulletin {} matches the log, but under the witness policy {}: {}{handed}; it is not witnessed yet (agents cosign a bulletin's checkpoint when they sync)",
                        doc["number"],
                        path.display(),
                        t.describe()
                    )));
                }
                spacesync_shared::outln!(
                    "ok: bulletin {} matches the log at checkpoint size {size}; under the witness policy {}: {}{handed}",
                    doc["number"],
                    path.display(),
                    t.describe()
                );
                return Ok(());
            }
            spacesync_shared::outln!(
                "ok: bulletin {} matches the log at checkpoint size {size}; {}{}",
                doc["number"],
                crate::wording::bulletin::witnessed(Lang::En, &w),
                if w.witnesses.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": units {}; sources {}",
                        w.units.join(", "),
                        w.witnesses.join(", ")
                    )
                }
            );
        }
    }
    Ok(())
}

/// `check`: every file and the store, without starting; the first problem is the error.
fn check(dir: &DataDir) -> Result<(), CliError> {
    config::check_permissions(dir)?;
    let cfg = config::load_config(dir)?;
    LogFormat::from_config(&cfg.log_format, dir)?;
    let campaign = config::load_campaign(dir)?;
    let key = keys::read_secret(&dir.key())?;
    if dir.webhook_key().exists() {
        keys::read_secret(&dir.webhook_key())?;
    }
    let ours = keys::public_key_line(&key.verifying_key());
    let store = match config::open_store(dir) {
        Ok(store) => Some(store),
        // A serving hub holds the embedded store: the files are what can be checked.
        Err(ConfigError::Store(StoreError::Locked(path))) => {
            eprintln!("note: the store {path} is in use (is `serve` running?); it was not opened");
            None
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(store) = &store
        && let Some(theirs) = store.get(crate::store::keys::HUB)?
        && theirs != ours.as_bytes()
    {
        return Err(CliError::Usage(format!(
            "the store belongs to the hub of key {}, but {} holds {ours}; point --data at that hub's directory",
            String::from_utf8_lossy(&theirs),
            dir.key().display()
        )));
    }
    // The latest checkpoint was signed by this directory's key (a store of another hub
    // has another's).
    if let Some(store) = &store
        && let Some(note) = store.get(crate::store::keys::CHECKPOINT)?
    {
        let note = String::from_utf8_lossy(&note);
        spacesync_shared::merkle::NoteVerifier::new(&cfg.origin, key.verifying_key())
            .and_then(|v| spacesync_shared::merkle::open_checkpoint(&note, &v, &cfg.origin))
            .map_err(|e| {
                CliError::Usage(format!(
                    "the store's latest checkpoint does not verify with {} ({e}): the store belongs to another hub, or origin in hub.toml changed; point --data at that hub's directory",
                    dir.key().display()
                ))
            })?;
    }
    // Live notice rule changes stay in force over an edited campaign file: say when the
    // two together leave far_behind at or above behind (nothing breaks, but no unit can
    // be "behind" then).
    if let Some(store) = &store {
        let mut rules = campaign.clone();
        for c in crate::views::stored_rule_changes(store.as_ref())?.values() {
            rules.set_rule(c.setting, &c.new);
        }
        let (l, file) = (&rules.lagging, &campaign.lagging);
        let changed = (l.behind, l.far_behind) != (file.behind, file.far_behind);
        if changed && l.far_behind >= l.behind {
            eprintln!(
                "warning: the notice rules in force (the campaign file with the live changes in the log, see `notice-rules show`) have far_behind {} not below behind {}; change one with `spacesync-hub notice-rules set`",
                l.far_behind, l.behind
            );
        }
    }
    spacesync_shared::outln!(
        "ok: {} (listen {}), campaign {} ({}), key {ours}{}",
        dir.config().display(),
        cfg.listen,
        campaign.id,
        dir.campaign().display(),
        if store.is_some() { ", store opens" } else { "" }
    );
    Ok(())
}

fn migrate(dir: &DataDir, url: &str, chunk: usize) -> Result<(), CliError> {
    // Phases of unknown length: a counter with the phase's name, on a terminal only.
    let pb = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{msg}: {human_pos}") {
            pb.set_style(style);
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut phase = String::new();
    let m = crate::migrate::migrate(dir, url, chunk, |what, n| {
        if what != phase {
            phase = what.to_string();
            pb.set_message(phase.clone());
        }
        pb.set_position(n);
    })?;
    pb.finish_and_clear();
    let how = if m.already_moved {
        "already copied by an earlier run; checked again".to_string()
    } else if m.resumed {
        format!("{} keys copied, going on from an interrupted run", m.copied)
    } else {
        format!("{} keys copied", m.copied)
    };
    spacesync_shared::outln!(
        "migrated {} to {}: {how}; {} log leaves from {} sources verified on both sides, root {}, head {}, {} bulletins match the moved log; {} now names the database (db/ is kept, no longer read). Start `spacesync-hub --data {} serve`.",
        dir.0.display(),
        m.shown,
        m.leaves,
        m.sources,
        m.root,
        m.head,
        m.bulletins,
        m.config.display(),
        dir.0.display()
    );
    Ok(())
}

fn verify(dir: &DataDir) -> Result<(), CliError> {
    let store = config::open_store_for_walk(dir)?;
    let cfg = config::load_config(dir)?;
    let key = keys::read_secret(&dir.key())?;
    let size = crate::log::Log::load(store.as_ref())?.size();
    let pb = bar(size, "verify");
    let report = maintenance::verify(
        store.as_ref(),
        &key.verifying_key(),
        &cfg.origin,
        advance(&pb),
    )?;
    pb.finish_and_clear();
    if report.ok() {
        spacesync_shared::outln!(
            "ok: {} leaves from {} sources; signatures, chains and the Merkle root match the signed checkpoint",
            report.leaves,
            report.sources
        );
        Ok(())
    } else {
        for p in &report.problems {
            spacesync_shared::outln!("DAMAGE: {p}");
        }
        Err(CliError::Damage {
            count: report.problems.len(),
            dir: dir.0.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand's path of names, e.g. `["agents", "invite"]`.
    fn paths(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            out.push(p.clone());
            paths(sub, p, out);
        }
    }

    #[test]
    fn every_commands_help_ends_with_an_example() {
        use clap::CommandFactory;
        let mut all = Vec::new();
        paths(&Cli::command(), Vec::new(), &mut all);
        assert!(all.len() > 20, "{all:?}");
        for p in all {
            let mut args = vec!["spacesync-hub".to_string()];
            args.extend(p.iter().cloned());
            args.push("--help".into());
            let help = match Cli::try_parse_from(&args) {
                Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.to_string(),
                other => panic!("{p:?}: {other:?}"),
            };
            let lines: Vec<&str> = help.trim_end().lines().collect();
            let n = lines.len();
            assert!(
                n >= 2
                    && lines[n - 2] == "Example:"
                    && lines[n - 1].starts_with("  spacesync-hub "),
                "{p:?} --help does not end with an example:\n{help}"
            );
        }
    }

    #[test]
    fn enum_flags_refuse_typos() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        for bad in [
            &["spacesync-hub", "bulletin", "show", "1", "--format", "htm"][..],
            &["spacesync-hub", "bulletin", "show", "1", "--lang", "fr"],
            &["spacesync-hub", "serve", "--log-format", "jsn"],
        ] {
            let e = parse(bad).expect_err("a typo is refused");
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{bad:?}");
        }
        let ok = parse(&[
            "spacesync-hub",
            "bulletin",
            "show",
            "1",
            "--format",
            "flags-csv",
        ]);
        assert!(matches!(
            ok.map(|c| c.cmd),
            Ok(Cmd::Bulletin {
                cmd: BulletinCmd::Show {
                    format: ShowFormat::FlagsCsv,
                    ..
                },
                ..
            })
        ),);
        let dir = DataDir(PathBuf::from("/nowhere"));
        assert!(LogFormat::from_config("jsn", &dir).is_err());
        assert_eq!(
            LogFormat::from_config("json", &dir).ok(),
            Some(LogFormat::Json)
        );
    }

    #[test]
    fn the_clock_follows_now_and_speed_as_the_agent_does() {
        let t = "2018-10-01T08:00:00+08:00";
        let fixed = make_clock(Some(t), None).map(|c| c.now());
        assert_eq!(
            fixed.ok(),
            DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        );
        assert!(make_clock(None, None).is_ok());
        for bad in [
            make_clock(None, Some(2.0)),
            make_clock(Some(t), Some(0.0)),
            make_clock(Some(t), Some(f64::NAN)),
            make_clock(Some(t), Some(-3.0)),
            make_clock(Some("yesterday"), None),
        ] {
            assert!(matches!(bad, Err(CliError::Usage(_))));
        }
    }
}
