//! `spacesync-agent run`: the intake API, the writer, the pusher, the spool watcher, the
//! webhook forwarder and the idle memory settler in one process, behind [`run`]`(listener, agent, shutdown)`.
//! Production passes a listener on `listen` and ctrl-c/SIGTERM; tests pass a port-0
//! listener and their own future.
//!
//! Shutdown: the HTTP server stops taking connections and finishes its requests; a watch
//! channel tells the tasks to stop; the spool watcher ends and drops its intake handle,
//! which (with the router's) ends the writer after its last group is flushed; the store is
//! flushed once more.

use std::future::Future;
use std::sync::{Arc, Mutex};

use spacesync_shared::clock::Clock;
use spacesync_shared::keys;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{info, warn};

use crate::config::{Config, ConfigError, DataDir, secs};
use crate::http::{self, AppState, Edge};
use crate::intake::{Identity, Writer, spawn_writer, spawn_writer_after};
use crate::push::{PushState, Pusher};
use crate::retry::Schedule;
use crate::store::{Store, StoreError};
use crate::{notices, spool, token};

/// Why the agent cannot start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration or campaign problem.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Key file problem.
    #[error("{0}")]
    Key(#[from] keys::KeyError),
    /// Intake token problem.
    #[error("{0}")]
    Token(#[from] token::TokenError),
    /// Store problem.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Spool folder problem.
    #[error("{0}")]
    Spool(#[from] spool::SpoolError),
    /// The HTTP client cannot be built.
    #[error("cannot create the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// TLS to the hub cannot be set up (`ca_file`, `client_cert`, `client_key`).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The HTTP server failed.
    #[error("the local API failed: {0}")]
    Serve(std::io::Error),
    /// A key rotation is pending or could not be finished.
    #[error("{0}")]
    Rotate(#[from] crate::rotate::RotateError),
}

/// An opened agent: configuration, key, campaign and store.
pub struct Agent {
    /// Where its files are.
    pub data: DataDir,
    /// `agent.toml`, with command-line overrides applied.
    pub cfg: Arc<Config>,
    /// Source, scope, campaign and key.
    pub ident: Arc<Identity>,
    /// The store.
    pub store: Store,
    /// The agent clock.
    pub clock: Arc<dyn Clock>,
}

impl Agent {
    /// Loads key, campaign and store for `cfg`.
    pub fn open(data: DataDir, cfg: Config, clock: Arc<dyn Clock>) -> Result<Agent, AgentError> {
        let campaign = cfg.load_campaign(&data)?;
        let store = Store::open(&data.db())?;
        // A rotation the store records but whose files were not swapped is finished; a
        // pending one (not confirmed by the hub) stops the agent here.
        if crate::rotate::settle(&data, &cfg, &store)? {
            tracing::info!(source = %cfg.source, "Finished a key rotation: agent.key.next is now agent.key.");
        }
        let key = keys::read_secret(&data.key())?;
        let ident = Arc::new(Identity {
            source: cfg.source.clone(),
            scope: cfg.scope,
            campaign,
            key,
        });
        store.bind_identity(&ident.source, &ident.key_line())?;
        Ok(Agent {
            data,
            cfg: Arc::new(cfg),
            ident,
            store,
            clock,
        })
    }

    /// A writer for this agent's store (the one `run` and `import` use).
    pub fn writer(&self) -> Result<Writer, StoreError> {
        writer_for(
            self.store.clone(),
            self.ident.clone(),
            self.clock.clone(),
            &self.cfg,
        )
    }
}

fn writer_for(
    store: Store,
    ident: Arc<Identity>,
    clock: Arc<dyn Clock>,
    cfg: &Config,
) -> Result<Writer, StoreError> {
    Writer::open(
        store,
        ident,
        clock,
        cfg.buffer,
        cfg.intake.max_records,
        secs(cfg.push.interval_secs).as_secs().clamp(1, 60),
        cfg.intake.idempotency_retention_secs,
    )
}

/// Serves until `shutdown` completes, then stops every task cleanly.
///
/// Refuses to start when the data directory's secrets are open to others
/// ([`DataDir::check_permissions`](crate::config::DataDir::check_permissions)) or there is
/// no usable intake token ([`token::read`]).
pub async fn run(
    listener: TcpListener,
    agent: Agent,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    agent.data.check_permissions()?;
    let intake_token = token::read(&agent.data.token())?;
    if agent.cfg.legacy_intake_token.is_some() {
        warn!(
            config = %agent.data.config().display(),
            token = %agent.data.token().display(),
            "agent.toml still has intake_token; it is ignored (the token is in intake.token). Remove the line."
        );
    }
    spool::create_dirs(&agent.data)?;
    #[cfg(unix)]
    let control = {
        let (store, data) = (agent.store.clone(), agent.data.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::backup::serve_control(store, data).await {
                tracing::error!(error = %e, "Cannot answer backup requests; `backup` works only while the agent is stopped.");
            }
        })
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let appended = Arc::new(Notify::new());
    let notices_stored = Arc::new(Notify::new());
    let push_state: PushState = agent
        .store
        .push_state()?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    // Counters and the alarm are re-derived by this run; keep the history fields.
    let push_state = Arc::new(Mutex::new(PushState {
        alarm: None,
        hub_reachable: None,
        ..push_state
    }));

    // A backup copy may be behind the hub: intake opens once the pusher has taken back
    // what the hub holds of this chain (its seqs would otherwise fork the chain).
    let catching_up = agent.store.catching_up()?;
    let (caught_up_tx, caught_up_rx) = watch::channel(false);
    let (intake, writer_task) = if catching_up {
        info!(source = %agent.cfg.source, "This data directory is a backup copy: intake opens once the hub was asked what it holds of this chain.");
        let open = {
            let (store, ident, clock, cfg) = (
                agent.store.clone(),
                agent.ident.clone(),
                agent.clock.clone(),
                agent.cfg.clone(),
            );
            move || writer_for(store, ident, clock, &cfg)
        };
        spawn_writer_after(caught_up_rx, open, appended.clone())
    } else {
        spawn_writer(agent.writer()?, appended.clone())
    };
    // A key transition the hub has not receipted: its retired key signs requests first.
    let retired = crate::rotate::retired(&agent.data, &agent.store)?.map(|retired| {
        crate::push::transport::RetiredSigner {
            retired,
            data: agent.data.clone(),
            store: agent.store.clone(),
        }
    });
    let pusher = Pusher::new(
        agent.cfg.clone(),
        agent.ident.clone(),
        agent.store.clone(),
        agent.clock.clone(),
        push_state.clone(),
        appended,
        notices_stored.clone(),
        retired,
    )?;
    let mut pusher = match catching_up {
        true => pusher.catching_up(caught_up_tx),
        false => pusher,
    };
    let asks = pusher.asks();
    let pusher_task = tokio::spawn(pusher.run(stop_rx.clone()));
    let idle_task = tokio::spawn(crate::idle::settle_when_quiet(
        agent.store.clone(),
        stop_rx.clone(),
    ));
    let spool_task = tokio::spawn(spool::watch(
        agent.data.clone(),
        intake.clone(),
        std::time::Duration::from_millis(agent.cfg.intake.spool_poll_ms.max(10)),
        agent.clock.clone(),
        agent.cfg.retention,
        stop_rx.clone(),
    ));
    let webhook_task = agent.cfg.notice_webhook.clone().map(|url| {
        let p = agent.cfg.push;
        tokio::spawn(notices::forward(
            agent.store.clone(),
            url,
            Schedule::from_secs(p.retry_base_secs, p.retry_cap_secs),
            notices_stored,
            stop_rx.clone(),
        ))
    });

    // The address actually bound (a port-0 listener has its real port only now): the Host
    // checks answer for it.
    let addr = listener.local_addr().map_err(AgentError::Serve)?;
    let app = http::app(AppState {
        intake,
        store: agent.store.clone(),
        cfg: agent.cfg.clone(),
        ident: agent.ident.clone(),
        push: push_state,
        clock: agent.clock.clone(),
        edge: Arc::new(Edge::new(
            intake_token,
            addr,
            &agent.cfg.intake.allowed_hosts,
        )),
        verifying: Arc::new(Semaphore::new(1)),
        asks: Some(asks),
    });
    info!(listen = %addr, source = %agent.cfg.source, hub = %agent.cfg.hub, "Agent started.");
    let served = spacesync_http::serve(
        listener,
        app,
        agent.cfg.http.limits(),
        Arc::new(spacesync_http::Stats::default()),
        shutdown,
    )
    .await;
    info!("Shutting down.");
    #[cfg(unix)]
    {
        control.abort();
        // Nobody answers on it any more: a later `backup` copies the stopped store directly.
        let _ = std::fs::remove_file(agent.data.root.join(crate::backup::CONTROL_SOCKET));
    }
    let _ = stop_tx.send(true);
    for (name, task) in [
        ("spool", spool_task),
        ("pusher", pusher_task),
        ("idle", idle_task),
    ] {
        if let Err(e) = task.await {
            warn!(task = name, error = %e, "Task ended abnormally.");
        }
    }
    if let Some(t) = webhook_task
        && let Err(e) = t.await
    {
        warn!(task = "webhook", error = %e, "Task ended abnormally.");
    }
    // Every intake handle is gone now (router and spool): the writer finishes and ends.
    if let Err(e) = writer_task.await {
        warn!(task = "writer", error = %e, "Task ended abnormally.");
    }
    agent.store.flush_async().await?;
    served.map_err(AgentError::Serve)?;
    info!("Agent stopped.");
    Ok(())
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
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
        _ = ctrl_c => {}
        _ = term => {}
    }
}
