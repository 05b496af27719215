//! The subcommands. The binary parses [`Cli`] and calls [`execute`]; everything a
//! subcommand does beyond parsing is here or in the module it names.
//!
//! Time: every command that records something (`serve`, `agents add|rotate|revoke`,
//! `extend`, `bulletin issue`) takes the hub clock from `--now` (RFC 3339), and `serve`
//! also from `--speed` (with `--now`: that many times faster than real time), exactly as
//! the agent's `run` does ([`make_clock`]); without `--now` it is the system clock.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use indicatif::{HumanCount, HumanDuration, ProgressBar, ProgressState, ProgressStyle};
use serde_json::Value;
use spacesync_shared::clock::{Clock, FixedClock, ScaledClock, SystemClock};
use spacesync_shared::{RegionCode, SourceId, keys};

use crate::auth::{self, Role, TokenError};
use crate::bulletin::{self, BulletinError};
use crate::config::{self, ConfigError, DataDir};
use crate::hub::Hub;
use crate::ingest::IngestError;
use crate::log::LogError;
use crate::registry::{self, RegistryError};
use crate::render::{CsvError, Format, Lang};
use crate::serve::{self, ServeError, Serving};
use crate::store::StoreError;
use crate::views::{Extension, HubEntry};
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
    Serve(ServeArgs),
    /// Manage the registry of sources (agents). Every change is a hub-signed log entry.
    Agents {
        /// Record a change as of this instant (RFC 3339) instead of now.
        #[arg(long, global = true)]
        now: Option<String>,
        /// What to change or show.
        #[command(subcommand)]
        cmd: AgentsCmd,
    },
    /// Manage API tokens.
    Token {
        /// What to do with tokens.
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Print the hub's public key line.
    Pubkey,
    /// Print the public key line webhook receivers verify deliveries with (generating
    /// webhook.key, 0600, on a hub initialised before it existed).
    WebhookKey,
    /// Grant a deadline extension (a hub-signed log entry).
    Extend(ExtendArgs),
    /// Progress bulletins.
    Bulletin {
        /// What to do with bulletins.
        #[command(subcommand)]
        cmd: BulletinCmd,
    },
    /// Recompute every view from the log.
    Rebuild,
    /// Write a consistent copy of this hub (keys, hub.toml, campaign, store) to a new
    /// directory, while it serves or not; `--data OUT` serves and verifies it directly.
    Backup {
        /// The directory to create (must not exist, or be empty).
        out: PathBuf,
    },
    /// Make the data directory (absent or empty) a copy of a backup.
    Restore {
        /// The directory `backup` wrote.
        backup: PathBuf,
    },
    /// Ingest an agent's offline bundle (`spacesync-agent export-bundle`) on this stopped
    /// hub, with the checks, idempotency and receipts of the network path, and write the
    /// receipts for `spacesync-agent import-receipts`.
    ImportBundle {
        /// The bundle file.
        file: PathBuf,
        /// Where to write the receipts (a new file).
        #[arg(long, value_name = "OUT")]
        receipts: PathBuf,
        /// The hub clock for the import (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
    },
    /// Re-verify the whole log: signatures, chains, Merkle root against the checkpoint.
    Verify,
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
    /// Serve HTTPS with this certificate chain (PEM; overrides hub.toml's [tls] cert).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; overrides hub.toml's [tls] key).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
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
    /// Grant as of this instant (RFC 3339) instead of now.
    #[arg(long)]
    pub now: Option<String>,
}

/// `agents` subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// Register a source.
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
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a source.
    Revoke {
        /// Source id.
        id: String,
    },
    /// Replace a source's key from a seq on.
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
}

/// `bulletin` subcommands.
#[derive(Debug, Subcommand)]
pub enum BulletinCmd {
    /// Issue a bulletin now; prints its number.
    Issue {
        /// Issue as of this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
    },
    /// List issued bulletins.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print one bulletin.
    Show {
        /// Bulletin number.
        n: u64,
        /// json, html, md, csv (the province table) or flags-csv (every data flag).
        #[arg(long, default_value = "json")]
        format: String,
        /// zh or en.
        #[arg(long, default_value = "zh")]
        lang: String,
    },
    /// Check a bulletin file (JSON) against the log; exits 0 only when it matches.
    Verify {
        /// The bulletin JSON file.
        file: PathBuf,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token and print it (shown once; only its hash is stored).
    Create {
        /// admin, ministry, or province:<PP0000>.
        #[arg(long)]
        role: String,
        /// Who the token is for.
        #[arg(long)]
        label: Option<String>,
    },
    /// List tokens: id, role, created, revoked, label (never the tokens themselves).
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (run on the stopped hub): it is refused from then on, and the
    /// dashboard sessions opened with it end.
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
    /// The log's tree state.
    #[error(transparent)]
    Log(#[from] LogError),
    /// `verify` could not finish.
    #[error(transparent)]
    Verify(#[from] maintenance::VerifyError),
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

/// Sets up logging to stderr: `json` for JSON lines, anything else for human lines.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
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
                "Initialised hub in {}{state}; edit {} then run `spacesync-hub serve`.",
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
        Cmd::Agents { now, cmd } => agents(&dir, make_clock(now.as_deref(), None)?, cmd)?,
        Cmd::Token { cmd } => token(&dir, cmd)?,
        Cmd::Extend(a) => {
            let (hub, _) = config::open_hub(&dir, make_clock(a.now.as_deref(), None)?)?;
            let index = extend(&hub, &a)?;
            spacesync_shared::outln!(
                "extension for {} {} until {} recorded at log index {index}",
                a.region,
                a.milestone,
                a.until
            );
        }
        Cmd::Bulletin { cmd } => bulletins(&dir, cmd)?,
        Cmd::Rebuild => {
            let store = config::open_store(&dir)?;
            let baseline = config::load_campaign(&dir)?.baseline;
            let size = crate::log::Log::load(store.as_ref())?.size();
            let pb = bar(size, "rebuild");
            let n = maintenance::rebuild(store.as_ref(), baseline, advance(&pb))?;
            pb.finish_and_clear();
            spacesync_shared::outln!("rebuilt views from {size} log leaves ({n} view items)");
        }
        Cmd::Verify => verify(&dir)?,
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
            file,
            receipts,
            now,
        } => {
            let bundle = crate::bundle::read(&file)?;
            if receipts.exists() {
                return Err(crate::bundle::BundleError::ReceiptsExist(receipts).into());
            }
            let (hub, _) = config::open_hub(&dir, make_clock(now.as_deref(), None)?)?;
            let (outcomes, stopped) = crate::bundle::import(&hub, &bundle);
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
    init_logging(&cfg.log_format);
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
    let rt = tokio::runtime::Runtime::new().map_err(CliError::Runtime)?;
    rt.block_on(async move {
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
    Ok(())
}

fn agents(dir: &DataDir, clock: Arc<dyn Clock>, cmd: AgentsCmd) -> Result<(), CliError> {
    match cmd {
        AgentsCmd::Add { source, scope, key } => {
            let id = SourceId::parse(&source)
                .map_err(|e| CliError::Usage(format!("--source {source:?}: {e}")))?;
            let scope = RegionCode::parse(&scope)
                .map_err(|e| CliError::Usage(format!("--scope {scope:?}: {e}")))?;
            let (hub, _) = config::open_hub(dir, clock)?;
            let rec = hub.add_source(id, scope, &key)?;
            spacesync_shared::outln!(
                "added {} (scope {}, key {})",
                rec.id,
                rec.scope,
                rec.current_key().unwrap_or("")
            );
        }
        AgentsCmd::List { json: as_json } => {
            let all = registry::load_all(config::open_store(dir)?.as_ref())?;
            if as_json {
                spacesync_shared::outln!("{}", json("the source list", &all)?);
            } else {
                spacesync_shared::outln!(
                    "{:<24} {:<8} {:<8} {:<22} key",
                    "source",
                    "scope",
                    "status",
                    "added"
                );
                for r in all {
                    spacesync_shared::outln!(
                        "{:<24} {:<8} {:<8} {:<22} {}",
                        r.id.as_str(),
                        r.scope.to_string(),
                        format!("{:?}", r.status).to_lowercase(),
                        r.added_at.format("%Y-%m-%d %H:%M:%S"),
                        r.current_key().unwrap_or("")
                    );
                }
            }
        }
        AgentsCmd::Revoke { id } => {
            let (hub, _) = config::open_hub(dir, clock)?;
            let rec = hub.revoke_source(&id)?;
            spacesync_shared::outln!("revoked {}", rec.id);
        }
        AgentsCmd::Rotate { id, key, from_seq } => {
            let (hub, _) = config::open_hub(dir, clock)?;
            let rec = hub.rotate_source(&id, &key, from_seq)?;
            let k = rec.keys.last().map(|k| k.from_seq).unwrap_or(1);
            spacesync_shared::outln!("rotated {}: the new key signs from seq {k} on", rec.id);
        }
    }
    Ok(())
}

fn token(dir: &DataDir, cmd: TokenCmd) -> Result<(), CliError> {
    let store = config::open_store(dir)?;
    let now = SystemClock.now();
    match cmd {
        TokenCmd::Create { role, label } => {
            let role: Role = role
                .parse()
                .map_err(|e| CliError::Usage(format!("--role: {e}")))?;
            let token = auth::create_token(store.as_ref(), role, label, now)?;
            eprintln!(
                "Token id {} (for `token list` and `token revoke`); the token is shown once:",
                auth::token_id(&token)
            );
            spacesync_shared::outln!("{token}");
        }
        TokenCmd::List { json: as_json } => {
            let all = auth::list_tokens(store.as_ref())?;
            if as_json {
                let list: Vec<Value> = all
                    .iter()
                    .map(|(id, r)| {
                        serde_json::json!({
                            "id": id, "role": r.role, "created_at": r.created_at,
                            "revoked_at": r.revoked_at, "label": r.label,
                        })
                    })
                    .collect();
                spacesync_shared::outln!("{}", json("the token list", &list)?);
            } else {
                spacesync_shared::outln!(
                    "{:<14} {:<17} {:<20} {:<20} label",
                    "id",
                    "role",
                    "created",
                    "revoked"
                );
                for (id, r) in all {
                    spacesync_shared::outln!(
                        "{:<14} {:<17} {:<20} {:<20} {}",
                        id,
                        r.role.to_string(),
                        r.created_at.format("%Y-%m-%d %H:%M:%S"),
                        r.revoked_at
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_else(|| "-".into()),
                        r.label.as_deref().unwrap_or("")
                    );
                }
            }
        }
        TokenCmd::Revoke { token } => {
            let (id, rec) = auth::revoke_token(store.as_ref(), &token, now)?;
            spacesync_shared::outln!(
                "revoked token {id} ({}{}); its dashboard sessions end at their next request",
                rec.role,
                rec.label.map(|l| format!(", {l}")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Grants a deadline extension: checks region, milestone and reason against the hub's
/// campaign, then appends the hub-signed [`Extension`] entry (stamped by the hub clock).
/// Returns its log index.
pub fn extend(hub: &Hub, a: &ExtendArgs) -> Result<u64, CliError> {
    let region = RegionCode::parse(&a.region)
        .map_err(|e| CliError::Usage(format!("--region {:?}: {e}", a.region)))?;
    if !hub.campaign.is_unit(region.province()) {
        return Err(CliError::Usage(format!(
            "--region {region} is not inside one of the campaign's provincial units"
        )));
    }
    if hub.campaign.deliverables().all(|d| d.id != a.milestone) {
        return Err(CliError::Usage(format!(
            "--milestone {:?} is not a deliverable of campaign {}; expected one of {}",
            a.milestone,
            hub.campaign.id,
            hub.campaign
                .deliverables()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if a.reason.trim().is_empty() {
        return Err(CliError::Usage(
            "--reason must say why the extension is granted".into(),
        ));
    }
    let (index, _) = hub.append_hub_entry(|seq, at| {
        HubEntry::Extension(Extension {
            seq,
            region,
            milestone: a.milestone.clone(),
            until: a.until,
            reason: a.reason.clone(),
            granted_at: at,
        })
    })?;
    Ok(index)
}

fn bulletins(dir: &DataDir, cmd: BulletinCmd) -> Result<(), CliError> {
    match cmd {
        BulletinCmd::Issue { now } => {
            let (hub, _) = config::open_hub(dir, make_clock(now.as_deref(), None)?)?;
            let book = crate::notices::NoticeBook::load(hub.store.as_ref())?;
            let doc = bulletin::issue(&hub, None, &book.log())?;
            spacesync_shared::outln!("{}", doc["number"]);
        }
        BulletinCmd::List { json: as_json } => {
            let store = config::open_store(dir)?;
            let list = bulletin::list(store.as_ref())?;
            if as_json {
                spacesync_shared::outln!("{}", json("the bulletin list", &list)?);
            } else {
                for b in list {
                    let issued = b.issued_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
                    spacesync_shared::outln!("{:>4}  {issued}  {}", b.number, b.title);
                }
            }
        }
        BulletinCmd::Show { n, format, lang } => {
            let store = config::open_store(dir)?;
            let doc = bulletin::get(store.as_ref(), n)?;
            let lang = Lang::parse(&lang)
                .ok_or_else(|| CliError::Usage(format!("--lang {lang:?}: expected zh or en")))?;
            let format = Format::from_name(&format).ok_or_else(|| {
                CliError::Usage(format!(
                    "--format {format:?}: expected json, html, md, csv or flags-csv"
                ))
            })?;
            let out = bulletin::show(&doc, format, lang)?;
            spacesync_shared::out!("{out}");
            if !out.ends_with('\n') {
                spacesync_shared::outln!();
            }
        }
        BulletinCmd::Verify { file } => {
            let store = config::open_store(dir)?;
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
            spacesync_shared::outln!(
                "ok: bulletin {} matches the log at checkpoint size {}",
                doc["number"],
                doc["checkpoint"]["size"]
            );
        }
    }
    Ok(())
}

fn verify(dir: &DataDir) -> Result<(), CliError> {
    let store = config::open_store(dir)?;
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
