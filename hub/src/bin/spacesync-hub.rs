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
use spacesync_hub::store::SledStore;
use spacesync_hub::views::{Extension, HubEntry};
use spacesync_hub::{bulletin, maintenance, registry, render};
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
    /// Manage the registry of sources (agents). Every change is a hub-signed log entry.
    Agents {
        /// Record a change as of this instant (RFC 3339) instead of now.
        #[arg(long, global = true)]
        now: Option<DateTime<Utc>>,
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
    /// Print the public key line webhook receivers verify deliveries with (generating
    /// webhook.key, 0600, on a hub initialised before it existed).
    WebhookKey,
    /// Grant a deadline extension (a hub-signed log entry).
    Extend {
        /// The provincial unit (PP0000).
        #[arg(long)]
        region: String,
        /// Milestone id.
        #[arg(long)]
        milestone: String,
        /// New last day, YYYY-MM-DD (campaign time zone).
        #[arg(long)]
        until: chrono::NaiveDate,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Grant as of this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<DateTime<Utc>>,
    },
    /// Progress bulletins.
    Bulletin {
        #[command(subcommand)]
        cmd: BulletinCmd,
    },
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
enum BulletinCmd {
    /// Issue a bulletin now; prints its number.
    Issue {
        /// Issue as of this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<DateTime<Utc>>,
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
        /// json, html, md or csv.
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
    Ok(config::open_store(dir)?)
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
    // Everything this process creates (sled's own files included) is private to its user.
    http::private_umask();
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
            config::check_permissions(&dir)?;
            let key = keys::read_secret(&dir.key())?;
            println!("{}", keys::public_key_line(&key.verifying_key()));
        }
        Cmd::WebhookKey => {
            let (key, generated) = config::webhook_key(&dir)?;
            if generated {
                eprintln!(
                    "Generated {} (this hub was initialised before webhook keys existed).",
                    dir.webhook_key().display()
                );
            }
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
            let (hub, cfg) = config::open_hub_scaled(&dir, clock, speed.unwrap_or(1.0))?;
            let (webhook_key, generated) = config::webhook_key(&dir)?;
            let webhook_public = keys::public_key_line(&webhook_key.verifying_key());
            if generated {
                tracing::warn!(path = %dir.webhook_key().display(), key = %webhook_public, "Generated the webhook signing key (this hub was initialised before it existed); give its public line to webhook receivers.");
            }
            for h in &cfg.webhooks {
                tracing::info!(webhook = %h.id(), key = %webhook_public, "Notices go to a webhook, signed with the webhook key.");
            }
            let addr = listen.unwrap_or(cfg.listen.clone());
            let fds = http::raise_fd_limit();
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(async move {
                tracing::info!(open_files_limit = ?fds, max_connections = cfg.http.max_connections, per_address = cfg.http.max_connections_per_address, "Connection limits.");
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}; is another hub running? choose another with --listen"))?;
                let local = listener.local_addr()?;
                tracing::info!(addr = %local, log_size = hub.snapshot().log_size, "Hub listening.");
                let hub = Arc::new(hub);
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let scheduler = tokio::spawn(spacesync_hub::schedule::run(
                    hub.clone(),
                    cfg.webhooks.clone(),
                    webhook_key,
                    std::time::Duration::from_millis(200),
                    stop_rx,
                ));
                let state = AppState::new(hub, cfg.rate_per_source, cfg.burst_per_source)
                    .with_address_limit(cfg.rate_per_address, cfg.burst_per_address)
                    .with_time_scale(speed.unwrap_or(1.0))
                    .with_connection_limits(cfg.http.limits());
                // The token-free metrics listener ends with the main one.
                let metrics = match &cfg.metrics_listen {
                    Some(maddr) => {
                        let ml = tokio::net::TcpListener::bind(maddr)
                            .await
                            .with_context(|| format!("cannot listen on metrics_listen = {maddr:?} (hub.toml); choose a free address or remove the line"))?;
                        tracing::info!(addr = %ml.local_addr()?, "Metrics listening.");
                        Some(tokio::spawn(http::serve_metrics(
                            ml,
                            state.clone(),
                            std::future::pending(),
                        )))
                    }
                    None => None,
                };
                http::serve(listener, state, shutdown_signal()).await?;
                if let Some(m) = metrics {
                    m.abort();
                }
                let _ = stop_tx.send(true);
                let _ = scheduler.await;
                tracing::info!("Hub stopped.");
                anyhow::Ok(())
            })?;
        }
        Cmd::Agents { now, cmd } => {
            let clock: Arc<dyn Clock> = match now {
                Some(t) => Arc::new(FixedClock::new(t)),
                None => clock,
            };
            match cmd {
                AgentsCmd::Add { source, scope, key } => {
                    let id = SourceId::parse(&source).context("--source")?;
                    let scope = RegionCode::parse(&scope).context("--scope")?;
                    let (hub, _) = config::open_hub(&dir, clock)?;
                    let rec = hub.add_source(id, scope, &key)?;
                    println!(
                        "added {} (scope {}, key {})",
                        rec.id,
                        rec.scope,
                        rec.current_key().unwrap_or("")
                    );
                }
                AgentsCmd::List { json } => {
                    let all = registry::load_all(&open_store(&dir)?)?;
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
                    let (hub, _) = config::open_hub(&dir, clock)?;
                    let rec = hub.revoke_source(&id)?;
                    println!("revoked {}", rec.id);
                }
                AgentsCmd::Rotate { id, key, from_seq } => {
                    let (hub, _) = config::open_hub(&dir, clock)?;
                    let rec = hub.rotate_source(&id, &key, from_seq)?;
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
                    eprintln!(
                        "Token id {} (for `token list` and `token revoke`); the token is shown once:",
                        auth::token_id(&token)
                    );
                    println!("{token}");
                }
                TokenCmd::List { json } => {
                    let all = auth::list_tokens(&store)?;
                    if json {
                        let list: Vec<serde_json::Value> = all
                            .iter()
                            .map(|(id, r)| {
                                serde_json::json!({
                                    "id": id, "role": r.role, "created_at": r.created_at,
                                    "revoked_at": r.revoked_at, "label": r.label,
                                })
                            })
                            .collect();
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        println!(
                            "{:<14} {:<17} {:<20} {:<20} label",
                            "id", "role", "created", "revoked"
                        );
                        for (id, r) in all {
                            println!(
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
                    let (id, rec) = auth::revoke_token(&store, &token, clock.now())?;
                    println!(
                        "revoked token {id} ({}{}); its dashboard sessions end at their next request",
                        rec.role,
                        rec.label.map(|l| format!(", {l}")).unwrap_or_default()
                    );
                }
            }
        }
        Cmd::Extend {
            region,
            milestone,
            until,
            reason,
            now,
        } => {
            let clock: Arc<dyn Clock> = match now {
                Some(t) => Arc::new(FixedClock::new(t)),
                None => clock,
            };
            let (hub, _) = config::open_hub(&dir, clock)?;
            let region = RegionCode::parse(&region).context("--region")?;
            if !hub.campaign.is_unit(region.province()) {
                bail!("--region {region} is not inside one of the campaign's provincial units");
            }
            if hub.campaign.deliverables().all(|d| d.id != milestone) {
                bail!(
                    "--milestone {milestone:?} is not a deliverable of campaign {}; expected one of {}",
                    hub.campaign.id,
                    hub.campaign
                        .deliverables()
                        .map(|d| d.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if reason.trim().is_empty() {
                bail!("--reason must say why the extension is granted");
            }
            let (index, _) = hub.append_hub_entry(|seq, at| {
                HubEntry::Extension(Extension {
                    seq,
                    region,
                    milestone: milestone.clone(),
                    until,
                    reason: reason.clone(),
                    granted_at: at,
                })
            })?;
            println!(
                "extension for {region} {milestone} until {until} recorded at log index {index}"
            );
        }
        Cmd::Bulletin { cmd } => match cmd {
            BulletinCmd::Issue { now } => {
                let clock: Arc<dyn Clock> = match now {
                    Some(t) => Arc::new(FixedClock::new(t)),
                    None => clock,
                };
                let (hub, _) = config::open_hub(&dir, clock)?;
                let doc = bulletin::issue(&hub, None, hub.notices.log_json())?;
                println!("{}", doc["number"]);
            }
            BulletinCmd::List { json } => {
                let store = open_store(&dir)?;
                let list = bulletin::list(&store)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    for b in list {
                        println!(
                            "{:>4}  {}  {}",
                            b["number"],
                            b["issued_at"].as_str().unwrap_or(""),
                            b["title"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            BulletinCmd::Show { n, format, lang } => {
                let store = open_store(&dir)?;
                let doc = bulletin::get(&store, n)?;
                let lang = render::Lang::parse(&lang).context("--lang must be zh or en")?;
                let out = match format.as_str() {
                    "json" => serde_json::to_string_pretty(&doc)?,
                    "html" => render::html(&doc, lang),
                    "md" => render::markdown(&doc, lang),
                    "csv" => render::csv(&doc, lang)?,
                    other => bail!("--format {other:?}: expected json, html, md or csv"),
                };
                print!("{out}");
                if !out.ends_with('\n') {
                    println!();
                }
            }
            BulletinCmd::Verify { file } => {
                let store = open_store(&dir)?;
                let cfg = config::load_config(&dir)?;
                let campaign = config::load_campaign(&dir)?;
                let key = keys::read_secret(&dir.key())?;
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let doc: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{} is not JSON (give the JSON form of a bulletin)",
                        file.display()
                    )
                })?;
                bulletin::verify(&store, &campaign, &key.verifying_key(), &cfg.origin, &doc)
                    .with_context(|| format!("{} does not match this hub's log", file.display()))?;
                println!(
                    "ok: bulletin {} matches the log at checkpoint size {}",
                    doc["number"], doc["checkpoint"]["size"]
                );
            }
        },
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
