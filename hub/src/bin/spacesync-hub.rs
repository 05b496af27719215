//! `spacesync-hub`: the command line. Parses arguments and calls the library.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use spacesync_hub::auth::{self, Role};
use spacesync_hub::config::{self, DataDir};
use spacesync_hub::http::{self, AppState};
use spacesync_hub::store::{SledStore, Store};
use spacesync_hub::{maintenance, registry};
use spacesync_shared::clock::{Clock, FixedClock, ScaledClock, SystemClock};
use spacesync_shared::keys;
use spacesync_shared::{RegionCode, SourceId};

#[derive(Parser)]
#[command(
    name = "spacesync-hub",
    version,
    about = "The ministry's central aggregator for the online learning space campaign."
)]
struct Cli {
    /// Data directory.
    #[arg(
        long,
        global = true,
        env = "SPACESYNC_HUB_DATA",
        default_value = "./hub-data"
    )]
    data: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the data directory, the hub key and a commented hub.toml.
    Init {
        /// Campaign file (default: the bundled 2018 campaign).
        #[arg(long)]
        campaign: Option<PathBuf>,
    },
    /// Serve the HTTP API.
    Serve {
        /// Listen address (overrides hub.toml).
        #[arg(long)]
        listen: Option<String>,
        /// Fix the hub clock at this instant (RFC 3339), for tests, demos and replays.
        #[arg(long)]
        now: Option<DateTime<Utc>>,
        /// With --now: run the clock this many times faster than real time.
        #[arg(long)]
        speed: Option<f64>,
    },
    /// Manage the registry of sources (agents).
    Agents {
        #[command(subcommand)]
        cmd: AgentsCmd,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Print the hub's public key line.
    Pubkey,
    /// Recompute every view from the log.
    Rebuild,
    /// Re-verify the whole log: signatures, chains, Merkle root against the checkpoint.
    Verify,
}

#[derive(Subcommand)]
enum AgentsCmd {
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

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token and print it (shown once; only its hash is stored).
    Create {
        /// admin, ministry, or province:<PP0000>.
        #[arg(long)]
        role: String,
        /// Who the token is for.
        #[arg(long)]
        label: Option<String>,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn open_store(dir: &DataDir) -> Result<SledStore> {
    if !dir.key().exists() {
        bail!(
            "{} holds no hub; run `spacesync-hub --data {} init` first",
            dir.0.display(),
            dir.0.display()
        );
    }
    Ok(SledStore::open(&dir.db())?)
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let dir = DataDir(cli.data.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.cmd {
        Cmd::Init { campaign } => {
            let line = config::init(&dir, campaign.as_deref())?;
            eprintln!(
                "Initialised hub in {}; edit {} then run `spacesync-hub serve`.",
                dir.0.display(),
                dir.config().display()
            );
            println!("{line}");
        }
        Cmd::Pubkey => {
            let key = keys::read_secret(&dir.key())?;
            println!("{}", keys::public_key_line(&key.verifying_key()));
        }
        Cmd::Serve { listen, now, speed } => {
            let clock: Arc<dyn Clock> = match (now, speed) {
                (Some(t), Some(s)) => Arc::new(ScaledClock::new(t, s)),
                (Some(t), None) => Arc::new(FixedClock::new(t)),
                (None, Some(_)) => {
                    bail!("--speed needs --now (the instant the accelerated clock starts at)")
                }
                (None, None) => clock,
            };
            let cfg = config::load_config(&dir)?;
            init_logging(&cfg.log_format);
            let (hub, cfg) = config::open_hub(&dir, clock)?;
            let addr = listen.unwrap_or(cfg.listen.clone());
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}; is another hub running? choose another with --listen"))?;
                let local = listener.local_addr()?;
                tracing::info!(addr = %local, log_size = hub.state().log.size(), "Hub listening.");
                let state = AppState::new(Arc::new(hub), cfg.rate_per_source, cfg.burst_per_source);
                http::serve(listener, state, shutdown_signal()).await?;
                tracing::info!("Hub stopped.");
                anyhow::Ok(())
            })?;
        }
        Cmd::Agents { cmd } => {
            let store = open_store(&dir)?;
            let now = clock.now();
            match cmd {
                AgentsCmd::Add { source, scope, key } => {
                    let id = SourceId::parse(&source).context("--source")?;
                    let scope = RegionCode::parse(&scope).context("--scope")?;
                    let rec = registry::add(&store, id, scope, &key, now)?;
                    println!(
                        "added {} (scope {}, key {})",
                        rec.id,
                        rec.scope,
                        rec.current_key().unwrap_or("")
                    );
                }
                AgentsCmd::List { json } => {
                    let all = registry::load_all(&store)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&all)?);
                    } else {
                        println!(
                            "{:<24} {:<8} {:<8} {:<22} key",
                            "source", "scope", "status", "added"
                        );
                        for r in all {
                            println!(
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
                    let rec = registry::revoke(&store, &id, now)?;
                    println!("revoked {}", rec.id);
                }
                AgentsCmd::Rotate { id, key, from_seq } => {
                    let sid = SourceId::parse(&id).context("source id")?;
                    let held = store
                        .last(&spacesync_hub::store::keys::src_prefix(&sid))?
                        .and_then(|(k, _)| spacesync_hub::store::keys::tail_u64(&k))
                        .unwrap_or(0);
                    let rec = registry::rotate(&store, &id, &key, from_seq, held, now)?;
                    let k = rec.keys.last().map(|k| k.from_seq).unwrap_or(1);
                    println!("rotated {}: the new key signs from seq {k} on", rec.id);
                }
            }
        }
        Cmd::Token { cmd } => {
            let store = open_store(&dir)?;
            match cmd {
                TokenCmd::Create { role, label } => {
                    let role: Role = role.parse().context("--role")?;
                    let token = auth::create_token(&store, role, label, clock.now())?;
                    println!("{token}");
                }
            }
        }
        Cmd::Rebuild => {
            let store = open_store(&dir)?;
            let size = spacesync_hub::log::Log::load(&store)?.size();
            let pb = bar(size, "rebuild");
            let n = maintenance::rebuild(&store, |i| pb.set_position(i + 1))?;
            pb.finish_and_clear();
            println!("rebuilt views from {size} log leaves ({n} view items)");
        }
        Cmd::Verify => {
            let store = open_store(&dir)?;
            let cfg = config::load_config(&dir)?;
            let key = keys::read_secret(&dir.key())?;
            let size = spacesync_hub::log::Log::load(&store)?.size();
            let pb = bar(size, "verify");
            let report = maintenance::verify(&store, &key.verifying_key(), &cfg.origin, |i| {
                pb.set_position(i + 1)
            })?;
            pb.finish_and_clear();
            if report.ok() {
                println!(
                    "ok: {} leaves from {} sources; signatures, chains and the Merkle root match the signed checkpoint",
                    report.leaves, report.sources
                );
            } else {
                for p in &report.problems {
                    println!("DAMAGE: {p}");
                }
                bail!(
                    "{} problem(s) found in {}",
                    report.problems.len(),
                    dir.0.display()
                );
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("Shutting down.");
}
