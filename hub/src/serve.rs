//! `spacesync-hub serve`: the HTTP API, the optional metrics listener and the scheduler
//! (scheduled bulletins, notices, webhook deliveries) in one process, behind
//! [`run`]`(listeners, hub, shutdown)`. Production passes listeners bound to `hub.toml`'s
//! addresses and [`shutdown_signal`]; tests pass port-0 listeners and their own future.
//!
//! Shutdown: the API stops taking connections and finishes its requests; the metrics
//! listener ends with it; a watch channel tells the scheduler to stop after its tick.
//!
//! TLS: with `[tls]` in hub.toml (or `--tls-cert` / `--tls-key`) the API speaks HTTPS
//! through spacesync-http's accept loop (same caps and timeouts). SIGHUP reads the
//! certificate, key and client CA again ([`reload_on_sighup`]): new connections get them,
//! open ones keep theirs; a reload that fails keeps the old ones and logs why.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use spacesync_shared::keys;
use tokio::net::TcpListener;

use crate::config::HubConfig;
use crate::http::{self, AppState};
use crate::hub::Hub;

/// How often the scheduler looks at the hub clock.
const TICK: Duration = Duration::from_millis(200);

/// Why serving could not start or ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An address cannot be listened on.
    #[error("cannot listen on {addr} ({what}): {error}; {fix}")]
    Bind {
        /// `listen` or `metrics_listen`.
        what: &'static str,
        /// The address asked for.
        addr: String,
        /// What to do.
        fix: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("cannot serve HTTPS: {0}")]
    Tls(#[from] spacesync_http::tls::TlsError),
    /// The API's listener failed.
    #[error("the HTTP API failed: {0}")]
    Io(#[from] std::io::Error),
    /// The notice book could not be read from the store.
    #[error("cannot read the notices from the hub's store; run `spacesync-hub verify` ({0})")]
    Notices(#[from] crate::store::StoreError),
}

/// Binds the API's address (`listen` in hub.toml, or `--listen`).
pub async fn bind_api(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServeError::Bind {
            what: "listen",
            addr: addr.to_string(),
            fix: "is another hub running? choose another with --listen",
            error,
        })
}

/// Binds the token-free metrics address (`metrics_listen` in hub.toml).
pub async fn bind_metrics(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServeError::Bind {
            what: "metrics_listen in hub.toml",
            addr: addr.to_string(),
            fix: "choose a free address or remove the line",
            error,
        })
}

/// What [`run`] serves.
pub struct Serving {
    /// The opened hub.
    pub hub: Hub,
    /// `hub.toml`.
    pub cfg: HubConfig,
    /// Signs webhook deliveries (`webhook.key`).
    pub webhook_key: SigningKey,
    /// How many times faster than real time the hub clock runs (1 = real time): the
    /// signed-request window is kept at the same span of real time.
    pub speed: f64,
    /// HTTPS material (hub.toml's `[tls]`, or `--tls-cert` / `--tls-key`), paths resolved.
    pub tls: Option<spacesync_http::tls::TlsFiles>,
    /// The data directory: when set, `backup` requests are answered on its control socket
    /// ([`crate::backup::serve_control`]).
    pub dir: Option<crate::config::DataDir>,
}

/// Serves the API on `listener` (and `/metrics` on `metrics`, without a token) until
/// `shutdown` completes, with the scheduler running beside it; then stops everything and
/// hands back the hub as it stopped (for the views checkpoint: [`write_views_checkpoint`]).
pub async fn run(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Arc<Hub>, ServeError> {
    let Serving {
        hub,
        cfg,
        webhook_key,
        speed,
        tls,
        dir,
    } = serving;
    let tls = match tls {
        Some(files) => {
            let t = Arc::new(spacesync_http::tls::ServerTls::load(files)?);
            tracing::info!(cert = %t.files().cert.display(), client_certificates = t.files().client_ca.is_some(), "Serving HTTPS.");
            Some(t)
        }
        None => None,
    };
    // Always: SIGHUP's default action ends the process, and the unit's `systemctl reload`
    // sends it whether or not the hub serves HTTPS.
    let reloader = tokio::spawn(reload_on_sighup(tls.clone()));
    let options = spacesync_http::EdgeOptions {
        tls,
        trusted_proxies: cfg.trusted_proxies.clone().into(),
    };
    let webhook_public = keys::public_key_line(&webhook_key.verifying_key());
    for h in &cfg.webhooks {
        tracing::info!(webhook = %h.id(), key = %webhook_public, "Notices go to a webhook, signed with the webhook key.");
    }
    tracing::info!(
        max_connections = cfg.http.max_connections,
        per_address = cfg.http.max_connections_per_address,
        "Connection limits."
    );
    let local = listener.local_addr()?;
    let started = std::time::Instant::now();
    let book = Arc::new(crate::notices::NoticeBook::load(hub.store.as_ref())?);
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "Loaded the notice book."
    );
    tracing::info!(addr = %local, log_size = hub.snapshot().log_size, "Hub listening.");
    let hub = Arc::new(hub);
    let store = hub.store.clone();
    {
        let hub = hub.clone();
        tokio::task::spawn_blocking(move || match crate::witness::prune(hub.store.as_ref()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                "Cleared cosignatures no checkpoint serves any more."
            ),
            Err(e) => {
                tracing::warn!(error = %e, "Could not clear old cosignatures; they stay, and the next start tries again.")
            }
        });
    }
    let socket = dir
        .as_ref()
        .map(|d| d.0.join(crate::backup::CONTROL_SOCKET));
    #[cfg(unix)]
    let control = dir.map(|d| {
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::backup::serve_control(hub, d).await {
                tracing::error!(error = %e, "Cannot answer backup requests; `backup` works only while the hub is stopped.");
            }
        })
    });
    #[cfg(not(unix))]
    let control: Option<tokio::task::JoinHandle<()>> = dir.map(|_| tokio::spawn(async {}));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(crate::schedule::run(
        hub.clone(),
        book.clone(),
        cfg.webhooks.clone(),
        webhook_key,
        TICK,
        stop_rx,
    ));
    let at_stop = hub.clone();
    let state = AppState::new(hub, book, cfg.rate_per_source, cfg.burst_per_source)
        .with_address_limit(cfg.rate_per_address, cfg.burst_per_address)
        .with_time_scale(speed)
        .with_connection_limits(cfg.http.limits());
    // The token-free metrics listener ends with the main one.
    let metrics = match metrics {
        Some(ml) => {
            tracing::info!(addr = %ml.local_addr()?, "Metrics listening.");
            Some(tokio::spawn(http::serve_metrics(
                ml,
                state.clone(),
                std::future::pending(),
            )))
        }
        None => None,
    };
    let served = http::serve_with(listener, state, options, shutdown).await;
    if let Some(m) = metrics {
        m.abort();
    }
    reloader.abort();
    if let Some(c) = control {
        c.abort();
    }
    // Nobody answers on it any more: a later `backup` copies the stopped store directly.
    if let Some(p) = socket {
        let _ = std::fs::remove_file(p);
    }
    let _ = stop_tx.send(true);
    if let Err(e) = scheduler.await {
        tracing::warn!(task = "scheduler", error = %e, "Task ended abnormally.");
    }
    served?;
    // What a clean stop leaves is on disk before the process goes (`serve` on sled then
    // replaces its image without dropping the store: `cli::snapshot_after_stop`).
    if let Err(e) = store.flush() {
        tracing::warn!(error = %e, "Could not flush the store at the stop.");
    }
    tracing::info!("Hub stopped.");
    Ok(at_stop)
}

/// At a clean stop on sled, once nothing writes any more (the caller waited for the
/// runtime's blocking work and flushed: `cli::snapshot_after_stop`): the views checkpoint
/// of the state every change was published in, so the next start reads the summaries in one sequential read
/// instead of from sled's pages ([`crate::views::checkpoint`]). Only when that state is
/// the store's (same head); a failure costs the next start time, never figures.
pub fn write_views_checkpoint(hub: &Hub, store: &dyn crate::store::Store) {
    let snap = hub.snapshot();
    match store.head() {
        Ok(head) if head == snap.head => {}
        Ok(head) => {
            tracing::info!(
                store_head = head,
                views_head = snap.head,
                "No views checkpoint: the store moved on after the views' last change."
            );
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "No views checkpoint: cannot read the store's head.");
            return;
        }
    }
    let started = std::time::Instant::now();
    let bytes = snap.views.checkpoint(snap.head);
    match store.put_views_checkpoint(&bytes) {
        Ok(true) => tracing::info!(
            bytes = bytes.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "Wrote the views checkpoint for the next start."
        ),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Could not write the views checkpoint; the next start reads the summaries from the store (slower, same figures).")
        }
    }
}

/// Reads the TLS files again on every SIGHUP, for as long as it runs; without TLS, says
/// there is nothing to reload (a SIGHUP never ends the hub).
pub async fn reload_on_sighup(tls: Option<Arc<spacesync_http::tls::ServerTls>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for SIGHUP; certificates are reloaded only by a restart.");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let Some(tls) = &tls else {
                tracing::info!(
                    "SIGHUP: nothing to reload (the hub serves plain HTTP; hub.toml and the campaign are read at start)."
                );
                continue;
            };
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(cert = %tls.files().cert.display(), "Reloaded the TLS certificate and key (SIGHUP); new connections use them.")
                }
                Err(e) => {
                    tracing::error!(error = %e, "Cannot reload the TLS certificate (SIGHUP); still serving the previous one.")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
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
