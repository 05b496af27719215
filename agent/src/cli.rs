//! The subcommands. The binary parses [`Cli`] and calls [`execute`].
//!
//! While `run` holds the store (sled allows one process per database), the other
//! subcommands talk to the running agent instead, at the `listen` address of `agent.toml`,
//! with the token of `intake.token`: `import` POSTs each file to `/v1/records` (same
//! validation, same atomicity, same idempotency key), `status` reads `/v1/status`,
//! `notices` reads `/v1/notices` and then marks what it showed read with
//! `POST /v1/notices/read`, and `verify` asks `POST /v1/verify` to check the live store.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use spacesync_shared::admin::EnrolCode;
use spacesync_shared::batch::Format;
use spacesync_shared::clock::{Clock, FixedClock, ScaledClock, SystemClock};
use spacesync_shared::entry::SourceId;
use spacesync_shared::region::RegionCode;
use spacesync_shared::wire::{ErrorBody, Notice, NoticeFacts};
use spacesync_shared::{Campaign, keys};

use crate::config::{Config, ConfigError, DataDir, LogFormat};
use crate::hub_key::{self, HubKeyError};
use crate::intake::{Accepted, IntakeError, Submission};
use crate::push::PushState;
use crate::server::{self, Agent, AgentError};
use crate::spool;
use crate::status::{self, StatusReport};
use crate::store::{Store, StoreError};
use crate::token::{self, TokenError};
use crate::verify::{self, VerifyReport};

/// The spacesync agent: takes a platform's records, signs them into the source's chain,
/// keeps them durably and delivers them to the hub.
#[derive(Debug, Parser)]
#[command(name = "spacesync-agent", version)]
pub struct Cli {
    /// Data directory: agent.toml, agent.key, the store and the spool folder.
    #[arg(
        long,
        global = true,
        env = "SPACESYNC_AGENT_DATA",
        default_value = "spacesync-agent-data"
    )]
    pub data: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data directory, the source key, the intake token and agent.toml; print the
    /// public key line (the intake token goes to stderr).
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent init --enrol ssenrol1.… --listen 127.0.0.1:7300"
    )]
    Init(InitArgs),
    /// Run the intake API, the spool watcher and the pusher.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent run --log-format json"
    )]
    Run(RunArgs),
    /// Import files (CSV by .csv extension, otherwise JSON / NDJSON), each whole or not at all.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent import counts.csv --dry-run"
    )]
    Import(ImportArgs),
    /// Show queue depth, delivery and hub state.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent status --json"
    )]
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the notices received from the hub, newest first.
    #[command(after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent notices")]
    Notices {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the local store offline: signatures, chain, seqs, receipts. Exits 1 on damage.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent verify --against-hub"
    )]
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also prove every receipted entry this store still holds in the hub's log (its
        /// checkpoint's signature and consistency with the one kept first); a failure
        /// raises the log alarm as the sync's audit does.
        #[arg(long)]
        against_hub: bool,
    },
    /// Clear the log alarm once its finding is settled (with the campaign): the next
    /// audit starts again from the hub's checkpoint; the evidence stays, with a record of
    /// this. Agent stopped. Nothing the hub answers clears it.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent clear-alarm --reason \"hub restored from its 2018-11-20 backup, agreed with the ministry (ticket 4711)\"   # agent stopped"
    )]
    ClearAlarm {
        /// Why (kept in the store's evidence).
        #[arg(long)]
        reason: String,
    },
    /// Print this source's public key line; with --witness, its line for the campaign's
    /// witness policy (`witness <unit> <vkey>`: the key it cosigns the hub's log with),
    /// which the province checks in the published policy.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent pubkey --witness"
    )]
    Pubkey {
        /// Print the witness policy line instead of the key line.
        #[arg(long)]
        witness: bool,
    },
    /// Print the intake token: the bearer token every API request except /healthz carries.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent token --rotate"
    )]
    Token(TokenArgs),
    /// Replace this source's key (the agent stopped), in its own chain: a key-transition
    /// entry at the next seq, signed by the current key, names the new key; from the seq
    /// after it the hub takes only the new key. No network: the pusher delivers it like
    /// any entry. Safe to run again after any interruption. With --lost (the old key is
    /// gone or compromised): switch at once and print what the hub's admin needs for
    /// `spacesync-hub agents rotate`.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent rotate-key"
    )]
    RotateKey(RotateKeyArgs),
    /// Write a consistent copy of this data directory (key, token, agent.toml, store) to a
    /// new directory, while the agent runs or not; `--data OUT` runs and verifies it.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent backup /backup/agent-2018-11-25"
    )]
    Backup {
        /// The directory to create (must not exist, or be empty).
        out: PathBuf,
    },
    /// Make the data directory (absent or empty) a copy of a backup.
    #[command(
        after_help = "At its first start the restored agent takes back from the hub what the hub holds of its chain\n(entries delivered after the backup), checked against its own key and chain, and accepts records\nonly after that (503 meanwhile). --offline skips that wait for a province that cannot reach the hub.\n\nExample:\n  spacesync-agent --data /var/lib/spacesync-agent-restored restore /backup/agent-2018-11-25"
    )]
    Restore {
        /// The directory `backup` wrote.
        backup: PathBuf,
        /// For a province that cannot reach the hub: accept records at once instead of
        /// first taking back from the hub what it holds of this chain. Only when no bundle
        /// of this agent was imported at the hub since the backup was made (else the
        /// agent reuses seqs the hub holds: a fork).
        #[arg(long)]
        offline: bool,
    },
    /// Write the dispute evidence file of one entry: the entry as signed, the hub's
    /// receipt, and its inclusion proof in the hub-signed checkpoint this agent last
    /// verified, with the witnesses' cosignatures (the hub reachable; a running agent
    /// builds it through its API).
    /// Anyone checks it offline: `spacesync-hub evidence verify FILE`.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent evidence --seq 42 --out gd-rrt-42.evidence"
    )]
    Evidence {
        /// The entry's seq.
        #[arg(long)]
        seq: u64,
        /// The file to create (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Prove the entry in the hub's checkpoint of this many entries (a bulletin's,
        /// which provinces cosign until the quorum is met) instead of the last one this
        /// agent verified; it must hold the entry and be no larger than that one.
        #[arg(long, value_name = "SIZE")]
        at_size: Option<u64>,
    },
    /// Write the entries the hub has not receipted (signed, in batches) to a bundle file,
    /// for a hub this agent cannot reach (`spacesync-hub import-bundle`). Agent stopped.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent export-bundle gd-rrt.bundle   # agent stopped"
    )]
    ExportBundle {
        /// The bundle file to create.
        file: PathBuf,
    },
    /// Verify the receipts file `spacesync-hub import-bundle --receipts` wrote and mark
    /// the entries it receipts delivered. Agent stopped.
    #[command(
        after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent import-receipts gd-rrt.receipts   # agent stopped"
    )]
    ImportReceipts {
        /// The receipts file.
        file: PathBuf,
    },
    /// Check agent.toml and the campaign file (with line numbers) and the data directory
    /// (permissions, key, intake token, the store opens and belongs to this source and
    /// key) without starting.
    #[command(after_help = "Example:\n  spacesync-agent --data /var/lib/spacesync-agent check")]
    Check,
}

/// `rotate-key` options.
#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// The old key is lost or compromised: switch without the hub, whose admin then runs
    /// `spacesync-hub agents rotate` with the printed key and seq.
    #[arg(long)]
    pub lost: bool,
    /// Stamp the key-transition entry with this instant (RFC 3339), for an agent that runs
    /// with --now.
    #[arg(long)]
    pub now: Option<String>,
}

/// `token` options.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Create the token when this data directory has none (made before tokens existed).
    #[arg(long, conflicts_with = "rotate")]
    pub generate: bool,
    /// Replace the token with a new one; restart the agent and give it to the platform.
    #[arg(long)]
    pub rotate: bool,
}

/// `init` options: either `--enrol CODE` (source, scope, hub and its key come from the
/// code and the hub), or the manual `--source --scope --hub [--hub-key]`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Enrol with a one-time code from `spacesync-hub agents invite`: the key is
    /// registered with the hub over the network and the hub's key pinned.
    #[arg(long, value_name = "CODE", conflicts_with_all = ["source", "scope", "hub", "hub_key"])]
    pub enrol: Option<String>,
    /// Source id registered at the hub (a-z, 0-9, '-').
    #[arg(long, required_unless_present = "enrol")]
    pub source: Option<String>,
    /// Scope region code (normally the province, PP0000).
    #[arg(long, required_unless_present = "enrol")]
    pub scope: Option<String>,
    /// Hub base URL.
    #[arg(long, required_unless_present = "enrol")]
    pub hub: Option<String>,
    /// Local API address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The hub's public key line (`ed25519:...`) to pin.
    #[arg(long)]
    pub hub_key: Option<String>,
    /// CA certificates (PEM) to trust for the hub's TLS certificate besides the system's
    /// roots (stored in agent.toml as `ca_file`).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Campaign file; the bundled 2018 campaign when absent.
    #[arg(long)]
    pub campaign: Option<PathBuf>,
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Local API address (overrides agent.toml).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Hub base URL (overrides agent.toml).
    #[arg(long)]
    pub hub: Option<String>,
    /// Fix the agent clock at this instant (RFC 3339).
    #[arg(long)]
    pub now: Option<String>,
    /// With --now: run the clock this many times faster than real time.
    #[arg(long, requires = "now")]
    pub speed: Option<f64>,
    /// Log format (overrides agent.toml).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// `import` options.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Files to import; each is one batch.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Judge only: report what would be accepted or refused, store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Judge dates against this instant (RFC 3339) instead of the real clock.
    #[arg(long)]
    pub now: Option<String>,
}

/// A subcommand failed; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad option value.
    #[error("{0}")]
    Usage(String),
    /// Configuration problem.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Key file problem.
    #[error("{0}")]
    Key(#[from] keys::KeyError),
    /// Intake token problem.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// Store problem.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Agent problem.
    #[error("{0}")]
    Agent(#[from] AgentError),
    /// A backup or restore failed.
    #[error("{0}")]
    Backup(#[from] crate::backup::BackupError),
    /// A bundle could not be written, or its receipts not stored.
    #[error("{0}")]
    Bundle(#[from] crate::bundle::BundleError),
    /// The hub key cannot be used.
    #[error("{0}")]
    HubKey(#[from] HubKeyError),
    /// No evidence file was written.
    #[error(transparent)]
    Evidence(#[from] crate::evidence::EvidenceError),
    /// The TLS client could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A key rotation failed.
    #[error("{0}")]
    Rotate(#[from] crate::rotate::RotateError),
    /// Enrolment failed.
    #[error("{0}")]
    Enrol(#[from] crate::enrol::EnrolError),
    /// Talking to the running agent failed.
    #[error("the running agent at {addr}: {why}")]
    Remote {
        /// Its address.
        addr: String,
        /// What went wrong.
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |error| CliError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Sets up logging to stderr.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => b.try_init(),
        LogFormat::Json => b.json().try_init(),
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

/// The clock `--now` / `--speed` ask for.
pub fn make_clock(now: Option<&str>, speed: Option<f64>) -> Result<Arc<dyn Clock>, CliError> {
    Ok(match (now, speed) {
        (None, _) => Arc::new(SystemClock),
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

/// Runs a subcommand.
pub fn execute(cli: Cli) -> Result<ExitCode, CliError> {
    // Everything this process creates (sled's files, spool reports) is private to its user.
    spacesync_http::private_umask();
    let data = DataDir::new(cli.data);
    match cli.command {
        Command::Init(a) => init(&data, a),
        Command::Run(a) => run(data, a),
        Command::Import(a) => {
            init_logging(LogFormat::Human, "warn");
            import(data, a)
        }
        Command::Status { json } => show_status(&data, json),
        Command::Evidence { seq, out, at_size } => evidence(data, seq, at_size, &out),
        Command::Notices { json } => show_notices(&data, json),
        Command::Verify { json, against_hub } => run_verify(data, json, against_hub),
        Command::ClearAlarm { reason } => clear_alarm(data, reason),
        Command::Pubkey { witness } => {
            let key = keys::read_secret(&data.key())?;
            if witness {
                let cfg = Config::load(&data.config())?;
                let c = spacesync_shared::cosign::Cosigner::new(
                    &spacesync_shared::cosign::witness_name(&cfg.source),
                    key.verifying_key(),
                )
                .map_err(|e| CliError::Usage(format!("source {}: {e}", cfg.source)))?;
                spacesync_shared::outln!(
                    "{}",
                    spacesync_shared::witness_policy::line(cfg.scope, &c)
                );
            } else {
                spacesync_shared::outln!("{}", keys::public_key_line(&key.verifying_key()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(a) => token_cmd(&data, a),
        Command::Check => check(&data),
        Command::RotateKey(a) => rotate_key(&data, a),
        Command::Backup { out } => {
            let s = crate::backup::backup(&data, &out)?;
            spacesync_shared::outln!(
                "backup of {} written to {}: chain head {}, delivered through {} ({} keys); check it with `spacesync-agent --data {} verify`",
                data.root.display(),
                s.out.display(),
                s.copied.head,
                s.copied.acked,
                s.copied.keys,
                s.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ExportBundle { file } => {
            let cfg = Config::load(&data.config())?;
            let e = crate::bundle::export(&data, &cfg, &file)?;
            if e.entries == 0 {
                spacesync_shared::outln!(
                    "wrote {}: no entries — the hub has receipted everything through seq {}",
                    file.display(),
                    e.head
                );
            } else {
                spacesync_shared::outln!(
                    "wrote {}: {} entries, seqs {}–{}; take it to the hub (`spacesync-hub import-bundle {} --receipts FILE`)",
                    file.display(),
                    e.entries,
                    e.first,
                    e.last,
                    file.display()
                );
                if e.last < e.head {
                    spacesync_shared::outln!(
                        "seqs {}–{} did not fit in one file: import this bundle's receipts (`import-receipts`), then run export-bundle again for them",
                        e.last + 1,
                        e.head
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportReceipts { file } => {
            let cfg = Config::load(&data.config())?;
            let clock: Arc<dyn spacesync_shared::clock::Clock> =
                Arc::new(spacesync_shared::clock::SystemClock);
            let r = crate::bundle::import_receipts(&data, cfg, clock, &file)?;
            if r.after == r.before {
                spacesync_shared::outln!(
                    "nothing new in {}: delivered through seq {} already (receipts imported before, or for entries this agent does not hold)",
                    file.display(),
                    r.after
                );
            } else {
                spacesync_shared::outln!(
                    "marked seqs {}–{} delivered (receipts verified with the hub key)",
                    r.before + 1,
                    r.after
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { backup, offline } => {
            let head = crate::backup::restore(&backup, &data)?;
            if offline {
                crate::store::Store::open(&data.db())?.caught_up()?;
                spacesync_shared::outln!(
                    "--offline: the agent accepts records at once, without asking the hub what it holds of this chain"
                );
            }
            spacesync_shared::outln!(
                "restored {} into {} (chain head {head}); run `spacesync-agent --data {} verify`, then start it",
                backup.display(),
                data.root.display(),
                data.root.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn rotate_key(data: &DataDir, a: RotateKeyArgs) -> Result<ExitCode, CliError> {
    data.check_permissions()?;
    let cfg = Config::load(&data.config())?;
    let clock = make_clock(a.now.as_deref(), None)?;
    let store = Store::open(&data.db())?;
    if !(a.lost && stopped_at_a_key_not_held(&store)?) {
        refuse_while_catching_up(&store, data, "rotate-key")?;
    }
    if a.lost {
        let done = crate::rotate::rotate_lost(data, &cfg, &store)?;
        spacesync_shared::outln!("{}", done.key);
        eprintln!(
            "Switched to a new key from seq {} on. The hub refuses it until its admin runs:\n  spacesync-hub agents rotate {} --key {} --from-seq {} --hub URL",
            done.from_seq, cfg.source, done.key, done.from_seq
        );
        return Ok(ExitCode::SUCCESS);
    }
    let campaign = cfg.load_campaign(data)?;
    let done = crate::rotate::rotate(data, &cfg, &store, &campaign.id, clock.now())?;
    spacesync_shared::outln!("{}", done.key);
    eprintln!(
        "Rotated: the key-transition entry is seq {}, signed by the old key; from seq {} on only the new key above signs. The pusher delivers it with the next entries (the hub need not be reachable now); start the agent (`systemctl enable --now spacesync-agent` where the package is installed, else `spacesync-agent run`).",
        done.from_seq - 1,
        done.from_seq
    );
    Ok(ExitCode::SUCCESS)
}

/// A store restored from a backup has not yet taken back what the hub holds of its chain
/// (`run` does that first): appending now would put new entries at seqs the hub already
/// holds, a fork no later start can repair (outside review of issue 15, session 9).
fn refuse_while_catching_up(store: &Store, data: &DataDir, what: &str) -> Result<(), CliError> {
    if store.catching_up()? {
        return Err(CliError::Usage(format!(
            "{what}: {} is a restored backup that has not yet taken back the entries the hub holds of its chain; start the agent once (`spacesync-agent --data {} run`) and let it catch up first (or restore with --offline if it never reaches the hub)",
            data.root.display(),
            data.root.display()
        )));
    }
    Ok(())
}

/// A restored store that took back all the hub holds of its chain and met there a key
/// rotation made after the backup, to a key this directory does not hold (the pusher's
/// `key_not_held` alarm, kept in the store): it is not behind the hub, and it can go on only
/// under a new key, so `rotate-key --lost` (which that alarm names) may switch to one.
fn stopped_at_a_key_not_held(store: &Store) -> Result<bool, CliError> {
    let push: PushState = store
        .push_state()?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Ok(push.alarm.is_some_and(|a| a.code == "key_not_held"))
}

/// `check`: every file and the store, without starting; the first problem is the error.
fn check(data: &DataDir) -> Result<ExitCode, CliError> {
    data.check_permissions()?;
    let cfg = Config::load(&data.config())?;
    let campaign = cfg.load_campaign(data)?;
    let key = keys::read_secret(&data.key())?;
    token::read(&data.token())?;
    let line = keys::public_key_line(&key.verifying_key());
    let opened = match Store::open(&data.db()) {
        Ok(store) => {
            let want = format!("source {} with key {line}", cfg.source);
            if let Some(bound) = store.identity()?
                && bound != want
            {
                return Err(CliError::Usage(format!(
                    "{}: the store belongs to {bound}, but agent.toml and agent.key say {want}; point --data at the right directory",
                    data.db().display()
                )));
            }
            ", store opens"
        }
        // A running agent holds its store: the files are what can be checked.
        Err(StoreError::Locked { .. }) => {
            eprintln!(
                "note: the store {} is in use (is `run` running?); it was not opened",
                data.db().display()
            );
            ""
        }
        Err(e) => return Err(e.into()),
    };
    spacesync_shared::outln!(
        "ok: {} (source {}, scope {}, hub {}), campaign {}, key {line}{opened}",
        data.config().display(),
        cfg.source,
        cfg.scope,
        cfg.hub,
        campaign.id
    );
    Ok(ExitCode::SUCCESS)
}

fn token_cmd(data: &DataDir, a: TokenArgs) -> Result<ExitCode, CliError> {
    let path = data.token();
    if !(a.generate || a.rotate) {
        spacesync_shared::outln!("{}", token::read(&path)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !data.config().exists() {
        return Err(CliError::Usage(format!(
            "{}: no agent.toml; this is not an agent data directory (run `spacesync-agent init` first, or pass --data DIR)",
            data.root.display()
        )));
    }
    let t = token::generate()?;
    if a.rotate {
        token::replace(&path, &t)?;
    } else {
        token::write_new(&path, &t)?;
    }
    spacesync_shared::outln!("{t}");
    eprintln!(
        "Wrote {} (mode 0600). Give this token to the platform (`Authorization: Bearer <token>`){}.",
        path.display(),
        if a.rotate {
            "; the old one stops working when the agent restarts — restart it now"
        } else {
            ", then start the agent (`systemctl enable --now spacesync-agent` where the package is installed, else `spacesync-agent run`)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn init(data: &DataDir, a: InitArgs) -> Result<ExitCode, CliError> {
    if let Some(code) = &a.enrol {
        return init_enrol(data, code, &a);
    }
    let (Some(source), Some(scope), Some(hub)) = (&a.source, &a.scope, &a.hub) else {
        return Err(CliError::Usage(
            "init needs --enrol CODE, or --source, --scope and --hub".into(),
        ));
    };
    let source = SourceId::parse(source).map_err(|e| CliError::Usage(format!("--source: {e}")))?;
    let scope = RegionCode::parse(scope).map_err(|e| CliError::Usage(format!("--scope: {e}")))?;
    let mut cfg = Config::new(source, scope, hub.clone());
    if let Some(k) = &a.hub_key {
        keys::parse_public_key(k).map_err(|e| CliError::Usage(format!("--hub-key: {e}")))?;
        cfg.hub_key = Some(k.clone());
    }
    init_config(&mut cfg, &a)?;
    refuse_initialised(&[data.key(), data.config(), data.token()])?;
    create_dir(data)?;
    let key = keys::generate()?;
    keys::write_secret(&data.key(), &key)?;
    let intake_token = write_rest(data, &cfg)?;
    let line = keys::public_key_line(&key.verifying_key());
    spacesync_shared::outln!("{line}");
    eprintln!(
        "Initialised {}. Register source {} (scope {}) at the hub with the key line above, then start the agent (`systemctl enable --now spacesync-agent` where the package is installed, else `spacesync-agent run`).",
        data.root.display(),
        cfg.source,
        cfg.scope
    );
    print_intake_token(&intake_token);
    Ok(ExitCode::SUCCESS)
}

/// `--listen`, `--ca-file` and `--campaign` of `init`, checked into `cfg`.
fn init_config(cfg: &mut Config, a: &InitArgs) -> Result<(), CliError> {
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(ca) = &a.ca_file {
        let abs = std::path::absolute(ca).map_err(io_err(ca))?;
        // Read now, so a wrong path or a file without certificates is said at init.
        spacesync_http::tls::read_roots("--ca-file", &abs)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        cfg.ca_file = Some(abs);
    }
    if let Some(c) = &a.campaign {
        let abs = std::path::absolute(c).map_err(io_err(c))?;
        let text = std::fs::read_to_string(&abs).map_err(io_err(&abs))?;
        Campaign::from_toml(&text).map_err(|error| ConfigError::Campaign {
            path: abs.clone(),
            error,
        })?;
        cfg.campaign = Some(abs);
    }
    Ok(())
}

fn refuse_initialised(files: &[PathBuf]) -> Result<(), CliError> {
    for p in files {
        if p.exists() {
            return Err(CliError::Usage(format!(
                "{}: exists already; this data directory is initialised. Refusing to overwrite it (move it away first if you really mean to start a new identity)",
                p.display()
            )));
        }
    }
    Ok(())
}

/// The data directory 0700, every file 0600 from the moment it exists.
fn create_dir(data: &DataDir) -> Result<(), CliError> {
    if let Some(mode) = data.create_private()? {
        eprintln!(
            "note: {} was open to others (mode {mode:03o}); it is now 0700",
            data.root.display()
        );
    }
    Ok(())
}

/// Writes the intake token, agent.toml (last: its presence marks an initialised
/// directory), the store and spool directories. Returns the intake token.
fn write_rest(data: &DataDir, cfg: &Config) -> Result<String, CliError> {
    let intake_token = token::generate()?;
    token::write_new(&data.token(), &intake_token)?;
    let db = data.db();
    crate::config::private_dir(&db).map_err(io_err(&db))?;
    spool::create_dirs(data).map_err(|e| CliError::Usage(e.to_string()))?;
    let path = data.config();
    let mut f = crate::config::private_file(&path).map_err(io_err(&path))?;
    std::io::Write::write_all(&mut f, cfg.to_commented_toml().as_bytes()).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    Ok(intake_token)
}

fn print_intake_token(intake_token: &str) {
    eprintln!(
        "Intake token (every API request sends `Authorization: Bearer <token>`; `spacesync-agent --data DIR token` prints it again):\n{intake_token}"
    );
}

/// `init --enrol CODE`: makes the key (written before the hub is asked, so a crash after
/// the hub registered it cannot lose it: running the same command again reuses it, and
/// the hub answers a retry by the same key as the first time), registers it with the
/// hub the code names, pins the code's hub key and writes agent.toml, ready to `run`.
fn init_enrol(data: &DataDir, code: &str, a: &InitArgs) -> Result<ExitCode, CliError> {
    let code = EnrolCode::parse(code).map_err(|e| CliError::Usage(format!("--enrol: {e}")))?;
    refuse_initialised(&[data.config(), data.token()])?;
    create_dir(data)?;
    let key = if data.key().exists() {
        eprintln!(
            "note: reusing {} from an enrolment that did not finish",
            data.key().display()
        );
        keys::read_secret(&data.key())?
    } else {
        let key = keys::generate()?;
        keys::write_secret(&data.key(), &key)?;
        key
    };
    let ca_file = match &a.ca_file {
        Some(ca) => Some(std::path::absolute(ca).map_err(io_err(ca))?),
        None => None,
    };
    let enrolled = runtime()?.block_on(crate::enrol::enrol(&code, &key, ca_file.as_ref()))?;
    let source = SourceId::parse(&enrolled.source)
        .map_err(|e| CliError::Usage(format!("the hub enrolled an unusable source id: {e}")))?;
    let scope = RegionCode::parse(&enrolled.scope)
        .map_err(|e| CliError::Usage(format!("the hub enrolled an unusable scope: {e}")))?;
    let mut cfg = Config::new(source, scope, code.hub.clone());
    cfg.hub_key = Some(code.hub_key.clone());
    init_config(&mut cfg, a)?;
    cfg.check(&data.config())?;
    let intake_token = write_rest(data, &cfg)?;
    spacesync_shared::outln!("{}", keys::public_key_line(&key.verifying_key()));
    eprintln!(
        "Enrolled {} as source {} (scope {}) at {}, whose key {} is pinned; start the agent (`systemctl enable --now spacesync-agent` where the package is installed, else `spacesync-agent run`).",
        data.root.display(),
        cfg.source,
        cfg.scope,
        cfg.hub,
        code.hub_key
    );
    print_intake_token(&intake_token);
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the async runtime: {e}")))
}

fn run(data: DataDir, a: RunArgs) -> Result<ExitCode, CliError> {
    crate::idle::run_with_tcache_off();
    let mut cfg = Config::load(&data.config())?;
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(h) = a.hub {
        cfg.hub = h;
        cfg.check(&data.config())?;
    }
    init_logging(a.log_format.unwrap_or(cfg.log_format), "info");
    let clock = make_clock(a.now.as_deref(), a.speed)?;
    let addr = cfg.listen;
    let fds = spacesync_http::raise_fd_limit();
    tracing::debug!(open_files_limit = ?fds, "Open-file limit.");
    crate::idle::tune_allocator();
    runtime()?.block_on(async move {
        let agent = Agent::open(data, cfg, clock)?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            CliError::Usage(format!(
                "cannot listen on {addr}: {e}; is another agent running? Change listen in agent.toml or pass --listen"
            ))
        })?;
        server::run(listener, agent, server::shutdown_signal()).await?;
        Ok::<_, CliError>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Base URL of the running agent's API.
fn local_base(cfg: &Config) -> String {
    let mut addr = cfg.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// A request body for [`remote`]: bytes, Content-Type, and an idempotency key.
type RemoteBody<'a> = (Vec<u8>, &'a str, Option<String>);

fn remote(
    data: &DataDir,
    cfg: &Config,
    method: reqwest::Method,
    path: &str,
    body: Option<RemoteBody<'_>>,
) -> Result<(u16, Vec<u8>), CliError> {
    let intake_token = token::read(&data.token())?;
    let base = local_base(cfg);
    let err = |why: String| CliError::Remote {
        addr: base.clone(),
        why,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(e.to_string()))?;
    rt.block_on(async {
        let http = reqwest::Client::new();
        let mut rb = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&intake_token);
        if let Some((b, ct, key)) = body {
            rb = rb.header(reqwest::header::CONTENT_TYPE, ct).body(b);
            if let Some(key) = key {
                rb = rb.header("idempotency-key", key);
            }
        }
        let resp = rb.send().await.map_err(|e| {
            err(format!(
                "{}; the store is locked by another process but its API does not answer — is it still starting?",
                spacesync_shared::err_chain(&e)
            ))
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| err(e.to_string()))?;
        Ok((status, bytes.to_vec()))
    })
}

fn remote_json<T: serde::de::DeserializeOwned>(
    data: &DataDir,
    cfg: &Config,
    method: reqwest::Method,
    path: &str,
    body: Option<RemoteBody<'_>>,
) -> Result<T, CliError> {
    let (status, body) = remote(data, cfg, method, path, body)?;
    let base = local_base(cfg);
    if status != 200 {
        return Err(CliError::Remote {
            addr: base,
            why: format!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        });
    }
    serde_json::from_slice(&body).map_err(|e| CliError::Remote {
        addr: base,
        why: format!("{path}: unreadable answer: {e}"),
    })
}

fn print_accepted(file: &str, a: &Accepted) {
    let range = match (a.seqs.first(), a.seqs.last()) {
        (Some(f), Some(l)) if f == l => format!("seq {f}"),
        (Some(f), Some(l)) => format!("seqs {f}–{l}"),
        _ => "no seqs".into(),
    };
    if a.replayed {
        spacesync_shared::outln!(
            "{file}: already imported earlier as {range}; nothing stored again"
        );
    } else if a.dry_run {
        spacesync_shared::outln!(
            "{file}: would accept {} records as {range} (dry run; nothing stored)",
            a.accepted
        );
    } else {
        spacesync_shared::outln!("{file}: accepted {} records as {range}", a.accepted);
    }
    for w in &a.warnings {
        spacesync_shared::outln!("{file}: warning: {w}");
    }
}

fn print_refused(file: &str, headline: &str, problems: &[String]) {
    spacesync_shared::outln!("{file}: {headline}");
    for p in problems {
        spacesync_shared::outln!("{file}: {p}");
    }
}

fn records_estimate(bytes: &[u8], format: Format) -> u64 {
    let lines = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count() as u64;
    match format {
        Format::Csv => lines.saturating_sub(1),
        Format::Json => lines,
    }
}

fn progress_bar(len: u64) -> ProgressBar {
    // Large files only, and never when stderr is not a terminal (logs, CI, pipes).
    if len < 5_000 || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn import(data: DataDir, a: ImportArgs) -> Result<ExitCode, CliError> {
    let cfg = Config::load(&data.config())?;
    let clock = make_clock(a.now.as_deref(), None)?;
    let agent = match Agent::open(data.clone(), cfg.clone(), clock) {
        Ok(agent) => agent,
        Err(AgentError::Store(StoreError::Locked { .. })) => {
            return import_remote(&data, &cfg, &a);
        }
        Err(e) => return Err(e.into()),
    };
    refuse_while_catching_up(&agent.store, &data, "import")?;
    let mut writer = agent.writer()?;
    let mut failed = 0;
    for path in &a.files {
        let file = path.display().to_string();
        let body = std::fs::read(path).map_err(io_err(path))?;
        let format = Format::from_path(&file);
        let pb = progress_bar(records_estimate(&body, format) * 2);
        pb.set_message(file.clone());
        let sub = Submission {
            idempotency_key: Some(spool::file_key(&body)),
            body,
            format,
            dry_run: a.dry_run,
        };
        let result = writer.submit(&sub, &mut |n| pb.set_position(n));
        pb.finish_and_clear();
        match result {
            Ok(acc) => {
                if !acc.dry_run && !acc.replayed {
                    agent.store.flush()?;
                }
                print_accepted(&file, &acc);
            }
            Err(IntakeError::Refused(r)) => {
                failed += 1;
                let what = if a.dry_run {
                    "would be refused"
                } else {
                    "refused; nothing of it was stored"
                };
                print_refused(&file, what, &r.lines());
            }
            Err(IntakeError::Store(e)) => return Err(e.into()),
            Err(e) => {
                failed += 1;
                print_refused(&file, &e.to_string(), &[]);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn import_remote(data: &DataDir, cfg: &Config, a: &ImportArgs) -> Result<ExitCode, CliError> {
    eprintln!(
        "The agent is running; sending the files to it at {}.",
        local_base(cfg)
    );
    if a.now.is_some() {
        eprintln!("note: --now is ignored; the running agent judges dates by its own clock");
    }
    let mut failed = 0;
    for path in &a.files {
        let file = path.display().to_string();
        let body = std::fs::read(path).map_err(io_err(path))?;
        let ct = match Format::from_path(&file) {
            Format::Csv => "text/csv",
            Format::Json => "application/json",
        };
        let key = spool::file_key(&body);
        let q = if a.dry_run { "?dry_run=true" } else { "" };
        let (status, resp) = remote(
            data,
            cfg,
            reqwest::Method::POST,
            &format!("/v1/records{q}"),
            Some((body, ct, Some(key))),
        )?;
        if status == 200 {
            match serde_json::from_slice::<Accepted>(&resp) {
                Ok(acc) => print_accepted(&file, &acc),
                Err(e) => print_refused(&file, &format!("unreadable answer: {e}"), &[]),
            }
        } else {
            failed += 1;
            match serde_json::from_slice::<ErrorBody>(&resp) {
                Ok(b) => print_refused(&file, &b.error, &b.problems),
                Err(_) => print_refused(&file, &format!("answered {status}"), &[]),
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn show_status(data: &DataDir, json: bool) -> Result<ExitCode, CliError> {
    let cfg = Config::load(&data.config())?;
    let report: StatusReport = match Store::open(&data.db()) {
        Ok(store) => {
            let push: PushState = store
                .push_state()?
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            status::report(&store, &cfg, &push, &SystemClock, false)?
        }
        Err(StoreError::Locked { .. }) => {
            remote_json(data, &cfg, reqwest::Method::GET, "/v1/status", None)?
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        spacesync_shared::outln!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        spacesync_shared::out!("{}", status::render_human(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn show_notices(data: &DataDir, json: bool) -> Result<ExitCode, CliError> {
    let cfg = Config::load(&data.config())?;
    let list: Vec<Notice> = match Store::open(&data.db()) {
        Ok(store) => {
            let mut list = store.notices_after(0)?;
            if let Some(max) = list.iter().map(|n| n.id).max() {
                store.mark_notices_read(max)?;
            }
            list.reverse();
            list
        }
        Err(StoreError::Locked { .. }) => {
            // Reading changes nothing; marking what was shown read is a POST of its own.
            let list: Vec<Notice> =
                remote_json(data, &cfg, reqwest::Method::GET, "/v1/notices", None)?;
            if let Some(max) = list.iter().map(|n| n.id).max() {
                let body =
                    serde_json::to_vec(&crate::http::MarkRead { up_to: max }).unwrap_or_default();
                let _: crate::http::ReadMark = remote_json(
                    data,
                    &cfg,
                    reqwest::Method::POST,
                    "/v1/notices/read",
                    Some((body, "application/json", None)),
                )?;
            }
            list
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        spacesync_shared::outln!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
    } else if list.is_empty() {
        spacesync_shared::outln!("no notices");
    } else {
        for n in &list {
            let deadline = n
                .deadline
                .map(|d| format!(" (deadline {d})"))
                .unwrap_or_default();
            spacesync_shared::outln!(
                "#{} {} [{}] {} → {}{deadline}\n  {}\n  {}",
                n.id,
                n.created_at,
                n.rule,
                n.subject,
                n.addressee,
                n.text,
                n.text_en
            );
            if let Some(facts) = facts_line(&n.facts) {
                spacesync_shared::outln!("  {facts}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A notice's structured facts on one line (`milestone implementation_plan · due
/// 2018-11-15 · 3 day(s) late`), or nothing when it carries none.
fn facts_line(f: &NoticeFacts) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(m) = &f.milestone {
        parts.push(format!("milestone {m}"));
    }
    if let Some(d) = f.due {
        parts.push(format!("due {d}"));
    }
    if let Some(d) = f.days_left {
        parts.push(format!("{d} day(s) left"));
    }
    if let Some(d) = f.days_late {
        parts.push(format!("{d} day(s) late"));
    }
    if let Some(t) = f.target {
        parts.push(format!("target {t}"));
    }
    if let Some(e) = f.expected {
        parts.push(format!("expected by now {e}"));
    }
    if let Some(r) = f.reached {
        parts.push(format!("reached {r}"));
    }
    if let (Some(by), Some(who)) = (&f.nominated_by, &f.nominee) {
        parts.push(format!("{who} nominated by {by}"));
    }
    if let Some(l) = f.limit {
        parts.push(format!("limit {l}"));
    }
    if let Some(c) = f.count {
        parts.push(format!("counted {c}"));
    }
    if !f.problems.is_empty() {
        parts.push(format!("{} plan problem(s)", f.problems.len()));
    }
    if let Some(s) = &f.source {
        parts.push(format!("source {s}"));
    }
    if let Some(d) = f.days_silent {
        parts.push(format!("silent {d} day(s)"));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

fn evidence(
    data: DataDir,
    seq: u64,
    at_size: Option<u64>,
    out: &std::path::Path,
) -> Result<ExitCode, CliError> {
    let cfg = Config::load(&data.config())?;
    let agent = match Agent::open(data.clone(), cfg.clone(), Arc::new(SystemClock)) {
        Ok(a) => a,
        Err(AgentError::Store(StoreError::Locked { .. })) => {
            // The running agent builds it (it reads the store and asks the hub).
            let (status, body) = remote(
                &data,
                &cfg,
                reqwest::Method::GET,
                &match at_size {
                    Some(n) => format!("/v1/evidence?seq={seq}&at_size={n}"),
                    None => format!("/v1/evidence?seq={seq}"),
                },
                None,
            )?;
            if status != 200 {
                let why = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                return Err(CliError::Remote {
                    addr: local_base(&cfg),
                    why: format!("evidence for seq {seq}: {why}"),
                });
            }
            // Checked here too, as anyone receiving it would.
            let p = spacesync_shared::evidence::verify(&body)
                .map_err(crate::evidence::EvidenceError::SelfCheck)?;
            crate::evidence::save(&body, out)?;
            return Ok(evidence_written(seq, out, &p));
        }
        Err(e) => return Err(e.into()),
    };
    let hub_key =
        hub_key::known(&cfg, &agent.store)?.ok_or(crate::evidence::EvidenceError::NoHubKey)?;
    let mut client =
        crate::push::HubClient::new(agent.cfg.clone(), agent.ident.clone(), agent.clock.clone())?;
    let (bytes, p) = runtime()?.block_on(crate::evidence::build(
        &mut client,
        &cfg.hub,
        &agent.store,
        &agent.ident,
        &hub_key,
        seq,
        at_size,
    ))?;
    crate::evidence::save(&bytes, out)?;
    Ok(evidence_written(seq, out, &p))
}

fn clear_alarm(data: DataDir, reason: String) -> Result<ExitCode, CliError> {
    if reason.trim().is_empty() {
        return Err(CliError::Usage(
            "say why the alarm is cleared: --reason is empty".into(),
        ));
    }
    let cfg = Config::load(&data.config())?;
    let cleared = match Agent::open(data.clone(), cfg.clone(), Arc::new(SystemClock)) {
        Ok(agent) => {
            let state = crate::push::SharedPushState::default();
            let now = agent.clock.now();
            let cleared = runtime()?
                .block_on(crate::push::audit::clear_alarm(
                    &agent.store,
                    &state,
                    &reason,
                    now,
                ))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            agent.store.flush()?;
            cleared
        }
        Err(AgentError::Store(StoreError::Locked { .. })) => {
            return Err(CliError::Usage(format!(
                "the store {} is in use (is `run` running?): stop the agent, clear the alarm, start it again (only whoever holds the data directory clears it, never an API token)",
                data.db().display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    match cleared {
        Some(old) => spacesync_shared::outln!(
            "log alarm cleared (it was: {old}); the next audit starts from the hub's checkpoint, and the evidence stays in the store"
        ),
        None => spacesync_shared::outln!("no log alarm stood; nothing changed"),
    }
    Ok(ExitCode::SUCCESS)
}

fn evidence_written(
    seq: u64,
    out: &std::path::Path,
    p: &spacesync_shared::evidence::Proven,
) -> ExitCode {
    spacesync_shared::outln!(
        "evidence for seq {seq} written to {}: leaf {} of the hub's checkpoint of {} entries, cosigned by {} witness(es); anyone can check it with `spacesync-hub evidence verify {}`",
        out.display(),
        p.log_index,
        p.size,
        p.witnesses.len(),
        out.display()
    );
    ExitCode::SUCCESS
}

fn run_verify(data: DataDir, json: bool, against_hub: bool) -> Result<ExitCode, CliError> {
    let cfg = Config::load(&data.config())?;
    let rep: VerifyReport = match Agent::open(data.clone(), cfg.clone(), Arc::new(SystemClock)) {
        Ok(agent) => {
            let mut rep = verify::verify(
                &agent.store,
                &agent.ident,
                hub_key::known(&cfg, &agent.store)?.as_ref(),
            )?;
            if against_hub {
                let full = runtime()?
                    .block_on(crate::push::audit_all_stopped(
                        agent.cfg.clone(),
                        agent.ident.clone(),
                        agent.store.clone(),
                        agent.clock.clone(),
                    ))
                    .map_err(|why| CliError::Remote {
                        addr: cfg.hub.clone(),
                        why,
                    })?;
                agent.store.flush()?;
                rep.against_hub = Some(full);
            }
            rep
        }
        Err(AgentError::Store(StoreError::Locked { .. })) => {
            let path = if against_hub {
                "/v1/verify?against_hub=true"
            } else {
                "/v1/verify"
            };
            remote_json(&data, &cfg, reqwest::Method::POST, path, None)?
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        spacesync_shared::outln!("{}", serde_json::to_string_pretty(&rep).unwrap_or_default());
    } else {
        let pruned = if rep.pruned_through > 0 {
            format!(", 1–{} pruned after delivery", rep.pruned_through)
        } else {
            String::new()
        };
        spacesync_shared::outln!(
            "checked {} entries (seqs {}–{}{pruned}) and {} receipts",
            rep.entries,
            rep.pruned_through + 1,
            rep.head_seq,
            rep.receipts
        );
        if let Some(a) = &rep.against_hub {
            match (&a.alarm, a.checkpoint_size) {
                (Some(alarm), _) => spacesync_shared::outln!("LOG ALARM: {alarm}"),
                (None, Some(size)) => spacesync_shared::outln!(
                    "against the hub: {} receipted entries proven in its signed log of {size} entries ({} pruned here after delivery, not checkable)",
                    a.proven,
                    a.pruned
                ),
                (None, None) => {}
            }
        }
        if rep.ok() {
            spacesync_shared::outln!("OK: signatures, chain, seqs and receipts are sound");
        } else {
            for p in &rep.problems {
                spacesync_shared::outln!("DAMAGE: {p}");
            }
            if !rep.problems.is_empty() {
                spacesync_shared::outln!(
                    "{} problem(s) found; keep a copy of the data directory and tell the hub operator before changing anything",
                    rep.problems.len()
                );
            }
        }
    }
    Ok(if rep.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        let mut all = Vec::new();
        paths(&Cli::command(), Vec::new(), &mut all);
        assert!(all.len() >= 9, "{all:?}");
        for p in all {
            let mut args = vec!["spacesync-agent".to_string()];
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
                    && lines[n - 1].starts_with("  spacesync-agent "),
                "{p:?} --help does not end with an example:\n{help}"
            );
        }
    }

    #[test]
    fn init_takes_a_code_or_the_manual_flags_not_both() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ());
        assert!(parse(&["spacesync-agent", "init", "--enrol", "ssenrol1.x"]).is_ok());
        assert!(
            parse(&[
                "spacesync-agent",
                "init",
                "--source",
                "a-b",
                "--scope",
                "440000",
                "--hub",
                "http://h"
            ])
            .is_ok()
        );
        assert!(parse(&["spacesync-agent", "init"]).is_err());
        assert!(
            parse(&[
                "spacesync-agent",
                "init",
                "--enrol",
                "ssenrol1.x",
                "--source",
                "a-b"
            ])
            .is_err()
        );
        assert!(parse(&["spacesync-agent", "run", "--log-format", "jsn"]).is_err());
    }

    #[test]
    fn check_names_what_is_wrong_and_passes_a_sound_directory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = DataDir::new(dir.path().join("a"));
        let init_args = InitArgs {
            enrol: None,
            source: Some("gd-a".into()),
            scope: Some("440000".into()),
            hub: Some("http://127.0.0.1:9".into()),
            listen: None,
            hub_key: None,
            ca_file: None,
            campaign: None,
        };
        init(&data, init_args).unwrap_or_else(|e| panic!("{e}"));
        check(&data).unwrap_or_else(|e| panic!("{e}"));
        // The store, once bound, must match the key: another key is named.
        Store::open(&data.db())
            .and_then(|s| {
                s.bind_identity(
                    &SourceId::parse("gd-a").unwrap_or_else(|e| panic!("{e}")),
                    "ed25519:other",
                )
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let e = check(&data).expect_err("another key");
        assert!(e.to_string().contains("store belongs to"), "{e}");
        // A syntax error in agent.toml: its line.
        std::fs::remove_dir_all(data.db()).unwrap_or_else(|e| panic!("{e}"));
        crate::config::private_dir(&data.db()).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(data.config()).unwrap_or_else(|e| panic!("{e}"));
        let line = text
            .lines()
            .position(|l| l.starts_with("scope"))
            .unwrap_or_else(|| panic!("scope line"))
            + 1;
        std::fs::write(
            data.config(),
            text.replace("scope = \"440000\"", "scope = 440000 x"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = check(&data).expect_err("syntax");
        assert!(e.to_string().contains(&format!("line {line}")), "{e}");
        std::fs::write(data.config(), &text).unwrap_or_else(|e| panic!("{e}"));
        // The key open to others: the chmod that fixes it.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(data.key(), std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = check(&data).expect_err("permissions");
        assert!(
            e.to_string().contains("chmod")
                || e.to_string().contains("0600")
                || e.to_string().contains("600"),
            "{e}"
        );
    }
}
