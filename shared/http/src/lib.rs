//! spacesync-http: the accept loop the hub and the agent serve their routers through.
//!
//! `axum::serve` has no header-read, body or idle timeouts and no connection caps: one
//! slow client holds a connection for as long as it likes, and 20,000 idle connections
//! exhaust the file descriptors so that `/healthz` goes unanswered. [`serve`] closes those
//! holes while keeping the same seam (`listener`, `router`, `shutdown` future):
//!
//! - **connection caps**: at most [`Limits::max_connections`] open at once, and at most
//!   [`Limits::max_connections_per_address`] from one IP address. A connection over the
//!   per-address cap is accepted and closed at once, so it neither queues in the kernel's
//!   backlog nor holds a descriptor. At the total cap a newcomer gets in by closing the
//!   oldest connection that waits for a request on the address holding the most
//!   connections (idle sockets cannot shut out a client with something to send); only
//!   when that address's connections are all busy is the newcomer closed;
//! - **header-read timeout**: a request head (also the next one on a kept-alive
//!   connection) must arrive within [`Limits::header_read_timeout`];
//! - **body timeout**: a request body must arrive whole within [`Limits::body_timeout`]
//!   of its head; a slower body fails to read (handlers answer it as unreadable);
//! - **idle timeout**: a connection on which no byte moves either way for
//!   [`Limits::idle_timeout`] while the server waits on it (reading a request, or writing
//!   an answer the client does not read) is closed; not while a request on it is being
//!   answered (the time the server takes is not the client's idling);
//! - **accept errors** such as `EMFILE` pause the loop briefly and are logged at most
//!   once a second, instead of spinning;
//! - each request carries `axum::extract::ConnectInfo<SocketAddr>`, the peer address.
//!
//! And [`private_copy`], the private directory copy of both binaries' `backup` and
//! `restore`, and [`sled_dir`], the one repair both binaries make to a sled directory before opening
//! it (the unfinished snapshot a kill during sled's open leaves behind).
//!
//! HTTP/1.1 only: the agents and every HTTP client speak it, and HTTP/2 brings its own
//! resource attacks for no gain here.

pub mod control;
pub mod private_copy;
pub mod sled_dir;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tower::ServiceExt as _;
use tracing::{debug, warn};

/// Connection limits. Every field has a safe default ([`Limits::default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connections open at once; further ones are closed on accept. Also bounded by the
    /// process's open-file limit less a reserve (see [`serve`]).
    pub max_connections: usize,
    /// Connections open at once from one IP address (0: no per-address cap — for a
    /// server behind a reverse proxy, where every connection comes from the proxy).
    pub max_connections_per_address: usize,
    /// Time allowed for a request head to arrive, also between requests on a kept-alive
    /// connection.
    pub header_read_timeout: Duration,
    /// Time allowed for a request body to arrive whole, from its head.
    pub body_timeout: Duration,
    /// Time a connection may sit with no byte moving while the server waits on it (not
    /// while it answers a request on it).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 4096,
            max_connections_per_address: 256,
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The `[http]` section of `hub.toml` and `agent.toml`: [`Limits`] in seconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// See [`Limits::max_connections`].
    pub max_connections: usize,
    /// See [`Limits::max_connections_per_address`]; 0 turns the per-address cap off.
    pub max_connections_per_address: usize,
    /// See [`Limits::header_read_timeout`].
    pub header_read_timeout_secs: u64,
    /// See [`Limits::body_timeout`].
    pub body_timeout_secs: u64,
    /// See [`Limits::idle_timeout`].
    pub idle_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        let l = Limits::default();
        HttpConfig {
            max_connections: l.max_connections,
            max_connections_per_address: l.max_connections_per_address,
            header_read_timeout_secs: l.header_read_timeout.as_secs(),
            body_timeout_secs: l.body_timeout.as_secs(),
            idle_timeout_secs: l.idle_timeout.as_secs(),
        }
    }
}

impl HttpConfig {
    /// The limits, with every timeout at least one second.
    pub fn limits(&self) -> Limits {
        let s = |n: u64| Duration::from_secs(n.max(1));
        Limits {
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address,
            header_read_timeout: s(self.header_read_timeout_secs),
            body_timeout: s(self.body_timeout_secs),
            idle_timeout: s(self.idle_timeout_secs),
        }
    }

    /// The section as commented TOML, for the files `init` writes.
    pub fn commented_toml(&self) -> String {
        format!(
            "# Connection limits (see the operator's guide): connections open at once, in total and
# from one IP address (0 = no per-address cap; set it to 0 behind a reverse proxy), and
# the seconds allowed for a request head, a whole request body, and a connection on
# which no byte moves.
[http]
max_connections = {}
max_connections_per_address = {}
header_read_timeout_secs = {}
body_timeout_secs = {}
idle_timeout_secs = {}
",
            self.max_connections,
            self.max_connections_per_address,
            self.header_read_timeout_secs,
            self.body_timeout_secs,
            self.idle_timeout_secs
        )
    }
}

/// How long a client of ours (the agent's pusher, the hub's admin client, the bench's
/// clients) keeps a kept-alive connection to a spacesync server for reuse.
///
/// [`serve`] closes a connection that waits longer than [`Limits::header_read_timeout`]
/// (10 s by default) for its next request. A client that reuses a connection idle for
/// about that long sends its request as the server closes it and gets "connection closed
/// before message completed": a push that fails for nothing. Clients drop a connection
/// idle this long instead, well inside the default; a server configured with a
/// header-read timeout at or below it brings the race back. This narrows the race, it
/// does not close it: a server at its connection cap closes an idle connection at any
/// moment, and so does a stop; the agent's pusher retries those pushes with backoff.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(5);

/// File descriptors kept free for everything that is not a client connection (store
/// files, outgoing connections, logs).
const FD_RESERVE: u64 = 256;

/// Largest request head, in bytes (hyper's read buffer; its minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections closed on accept because a cap was reached (and, at the total cap,
    /// no idle connection could be closed instead).
    pub refused: AtomicU64,
    /// Idle connections closed to make room for a newcomer at the total cap.
    pub evicted: AtomicU64,
    /// Accept errors (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
}

/// Raises the process's open-file soft limit to its hard limit (as Go's runtime does):
/// the caps of [`Limits`] then decide, not a low default of 1024. Returns the soft limit
/// now in force, if known.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
        && cur < max
    {
        let mut raised = lim;
        raised.current = Some(max);
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Some(max);
        }
    }
    lim.current
}

/// Sets the file-creation mask to 0077, so every file a server creates (its stores'
/// files included, which it does not create itself) is private to its user whatever the
/// shell or unit that started it set. Returns the mask it replaces.
pub fn private_umask() -> u32 {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077)).as_raw_mode()
}

fn fd_soft_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The address a connection is counted under: IPv4 as is, IPv6 by its /64 (one host or
/// site usually holds a whole /64, so counting single IPv6 addresses would not cap it).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One open connection, as the tracker sees it.
struct ConnCtl {
    /// Requests being answered on it now; 0 means it waits for a request head.
    in_flight: AtomicU64,
    /// Set once it has been chosen for eviction.
    closing: std::sync::atomic::AtomicBool,
    /// Tells its task to drop it.
    close: tokio::sync::Notify,
}

/// Who holds connections, per address (oldest first), with a guard that gives the slot
/// back. At the total cap a newcomer is not refused while somebody idles: the oldest
/// connection waiting for a request on the address holding the most connections is closed
/// instead, so idle sockets (an attacker's, or forgotten ones) cannot shut out a client
/// that has something to send.
struct Tracker {
    max_total: usize,
    /// Connections open at once counting those closing for eviction: above it a newcomer
    /// is closed on accept even when an idle connection could make room.
    max_open: usize,
    max_per_address: usize,
    per_address: Mutex<HashMap<IpAddr, Held>>,
    next_id: AtomicU64,
    stats: Arc<Stats>,
}

/// One address's connections, oldest first, and how many of them are closing for
/// eviction (still open until their tasks run and drop them).
#[derive(Default)]
struct Held {
    conns: std::collections::BTreeMap<u64, Arc<ConnCtl>>,
    closing: usize,
}

impl Held {
    /// Connections not yet chosen for eviction.
    fn live(&self) -> usize {
        self.conns.len().saturating_sub(self.closing)
    }
}

struct Slot {
    tracker: Arc<Tracker>,
    ip: IpAddr,
    id: u64,
    ctl: Arc<ConnCtl>,
}

/// Connections being closed for eviction may exceed the cap by a quarter of it (at least
/// this many) before newcomers are refused outright. An evicted connection's slot comes
/// back only when its task runs and drops it; when reconnecting idlers churn against the
/// cap (hundreds a second) on a CPU-starved host, a small allowance filled up and shut
/// out the newcomers eviction exists for (a `/healthz` probe failed twice in 40 under a
/// loaded full test run). Still bounded by the descriptors: see [`open_ceiling`].
const EVICTION_SLACK: usize = 64;

/// [`Tracker::max_open`]: the cap plus the eviction allowance, never closer than half the
/// reserve to the process's descriptor limit.
fn open_ceiling(max_total: usize, fd_soft: Option<u64>) -> usize {
    let wanted = max_total.saturating_add((max_total / 4).max(EVICTION_SLACK));
    let fds = fd_soft
        .map(|n| n.saturating_sub(FD_RESERVE / 2) as usize)
        .unwrap_or(usize::MAX);
    wanted.min(fds).max(max_total)
}

impl Tracker {
    fn admit(self: &Arc<Tracker>, ip: IpAddr) -> Option<Slot> {
        let mut map = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.stats.open.load(Ordering::Relaxed) as usize;
        let here = map.get(&ip).map_or(0, |m| m.conns.len());
        if self.max_per_address > 0 && here >= self.max_per_address {
            return None;
        }
        if open >= self.max_total {
            if open >= self.max_open || !Self::evict_one(&mut map) {
                return None;
            }
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ctl = Arc::new(ConnCtl {
            in_flight: AtomicU64::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
            close: tokio::sync::Notify::new(),
        });
        map.entry(ip).or_default().conns.insert(id, ctl.clone());
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            tracker: self.clone(),
            ip,
            id,
            ctl,
        })
    }

    /// Closes the oldest idle connection of the address holding the most connections not
    /// already closing; when all of that address's are busy, the next heaviest address's.
    /// False when no connection anywhere waits for a request (then none is closed).
    ///
    /// Connections chosen earlier count until their tasks drop them, which on a starved
    /// host can take a while: ranking addresses by all their connections kept choosing an
    /// address whose every connection was already closing, and refused the newcomer.
    fn evict_one(map: &mut HashMap<IpAddr, Held>) -> bool {
        let mut ranked: Vec<(usize, IpAddr)> = map
            .iter()
            .filter(|(_, h)| h.live() > 0)
            .map(|(ip, h)| (h.live(), *ip))
            .collect();
        ranked.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        for (_, ip) in ranked {
            let Some(held) = map.get_mut(&ip) else {
                continue;
            };
            let chosen = held.conns.values().find(|ctl| {
                ctl.in_flight.load(Ordering::Relaxed) == 0
                    && !ctl.closing.swap(true, Ordering::Relaxed)
            });
            if let Some(ctl) = chosen {
                ctl.close.notify_one();
                held.closing += 1;
                return true;
            }
        }
        false
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .tracker
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get_mut(&self.ip) {
            if m.conns.remove(&self.id).is_some() && self.ctl.closing.load(Ordering::Relaxed) {
                m.closing = m.closing.saturating_sub(1);
            }
            if m.conns.is_empty() {
                map.remove(&self.ip);
            }
        }
        self.tracker.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request in flight on a connection while it lives.
struct Busy(Arc<ConnCtl>);

impl Busy {
    fn new(ctl: &Arc<ConnCtl>) -> Busy {
        ctl.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(ctl.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What [`serve_with`] adds to plain HTTP: TLS and the proxies whose forwarded headers
/// are believed.
#[derive(Debug, Clone, Default)]
pub struct EdgeOptions {
    /// Serve HTTPS with this configuration (reloadable while serving).
    pub tls: Option<Arc<tls::ServerTls>>,
    /// Peers whose `X-Forwarded-For` / `-Proto` / `-Host` headers are believed (a reverse
    /// proxy in front of the server). From any other peer those headers are removed
    /// before the router sees the request.
    pub trusted_proxies: Arc<[IpAddr]>,
}

/// The client certificate a request's connection presented (mutual TLS), as a request
/// extension: the end-entity certificate, DER. Absent on plain connections and when the
/// listener asks for no client certificate.
#[derive(Debug, Clone)]
pub struct ClientCert(pub Arc<Vec<u8>>);

/// Serves `router` on `listener` under `limits` until `shutdown` completes, then lets
/// requests in flight finish (connections idle between requests close at once). Plain
/// HTTP; forwarded headers are believed from nobody (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(
        listener,
        router,
        limits,
        stats,
        EdgeOptions::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with [`EdgeOptions`]: HTTPS when `options.tls` is set (the TLS handshake
/// must complete within [`Limits::header_read_timeout`], and the idle timeout covers it),
/// and forwarded headers believed only from `options.trusted_proxies`. Each request's
/// `ConnectInfo<SocketAddr>` is the client: the TCP peer, or behind a trusted proxy the
/// last address of `X-Forwarded-For` (the one the proxy added; port 0). On a TLS
/// connection from anyone but a trusted proxy, `X-Forwarded-Proto: https` is set, so the
/// router reads one header for "the client's connection is encrypted".
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: Arc<Stats>,
    options: EdgeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let fd_soft = fd_soft_limit();
    let fd_cap = fd_soft
        .map(|n| n.saturating_sub(FD_RESERVE).max(16) as usize)
        .unwrap_or(usize::MAX);
    let max_total = limits.max_connections.min(fd_cap).max(1);
    let tracker = Arc::new(Tracker {
        max_total,
        max_open: open_ceiling(max_total, fd_soft),
        max_per_address: limits.max_connections_per_address,
        per_address: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        stats: stats.clone(),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(100)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut last_accept_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        warn!(error = %e, open = stats.open.load(Ordering::Relaxed), "Cannot accept a connection; pausing briefly.");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        let Some(slot) = tracker.admit(address_key(peer.ip())) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            debug!(peer = %peer, "Connection over the cap; closed.");
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let io = IdleIo::new(stream, limits.idle_timeout, slot.ctl.clone());
        let conn = Conn {
            router: router.clone(),
            body_timeout: limits.body_timeout,
            peer,
            trusted: options.trusted_proxies.clone(),
            http: http.clone(),
            watcher: graceful.watcher(),
        };
        match &options.tls {
            None => {
                tokio::spawn(conn.run(io, false, None, slot));
            }
            Some(t) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(t.current());
                let handshake_limit = limits.header_read_timeout;
                tokio::spawn(async move {
                    let shaken = tokio::select! {
                        r = tokio::time::timeout(handshake_limit, acceptor.accept(io)) => r,
                        _ = slot.ctl.close.notified() => {
                            debug!(peer = %peer, "Connection in its TLS handshake closed to make room at the cap.");
                            return;
                        }
                    };
                    match shaken {
                        Ok(Ok(tls)) => {
                            let cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| ClientCert(Arc::new(c.as_ref().to_vec())));
                            conn.run(tls, true, cert, slot).await;
                        }
                        Ok(Err(e)) => {
                            debug!(peer = %peer, error = %e, "TLS handshake failed.");
                        }
                        Err(_) => {
                            debug!(peer = %peer, "TLS handshake did not complete in time; closed.");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One accepted connection, ready to serve requests once its stream is ready.
struct Conn {
    router: Router,
    body_timeout: Duration,
    peer: SocketAddr,
    trusted: Arc<[IpAddr]>,
    http: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Conn {
    /// Serves requests on `io` until the connection ends or is closed to make room.
    async fn run<I>(self, io: I, tls: bool, cert: Option<ClientCert>, slot: Slot)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            router,
            body_timeout,
            peer,
            trusted,
            http,
            watcher,
        } = self;
        let ctl = slot.ctl.clone();
        let from_proxy = trusted.contains(&canonical_ip(peer.ip()));
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let router = router.clone();
            let busy = Busy::new(&ctl);
            let cert = cert.clone();
            async move {
                let mut req =
                    req.map(|b| axum::body::Body::new(DeadlineBody::new(b, body_timeout)));
                let client = forwarded(req.headers_mut(), peer, from_proxy, tls);
                req.extensions_mut().insert(ConnectInfo(client));
                if let Some(c) = cert {
                    req.extensions_mut().insert(c);
                }
                let answer = router.oneshot(req).await;
                drop(busy);
                answer
            }
        });
        let conn = watcher.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::select! {
            r = conn => {
                if let Err(e) = r {
                    debug!(peer = %peer, error = %e, "Connection ended with an error.");
                }
            }
            _ = slot.ctl.close.notified() => {
                debug!(peer = %peer, "Idle connection closed to make room at the cap.");
            }
        }
        drop(slot);
    }
}

/// The forwarded headers a proxy adds.
const FORWARDED_HEADERS: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Applies the forwarded-header rule to a request from `peer` and returns the client's
/// address: from a trusted proxy, the headers stay and the client is the last
/// `X-Forwarded-For` address (the peer itself when there is none or it does not parse);
/// from anyone else they are removed, and on TLS `X-Forwarded-Proto: https` is set.
fn forwarded(
    headers: &mut hyper::HeaderMap,
    peer: SocketAddr,
    from_proxy: bool,
    tls: bool,
) -> SocketAddr {
    if from_proxy {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        return match last {
            Some(ip) => SocketAddr::new(canonical_ip(ip), 0),
            None => peer,
        };
    }
    for h in FORWARDED_HEADERS {
        headers.remove(h);
    }
    if tls {
        headers.insert(
            "x-forwarded-proto",
            hyper::header::HeaderValue::from_static("https"),
        );
    }
    peer
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// The body did not arrive whole in time.
    Timeout(Duration),
    /// The connection failed while reading it.
    Hyper(hyper::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Timeout(d) => write!(
                f,
                "the request body did not arrive within {} s; send it faster or in smaller batches",
                d.as_secs()
            ),
            BodyError::Hyper(e) => write!(f, "the connection failed while reading the body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(BodyError::Hyper)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyError::Timeout(this.limit))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that fails with `TimedOut` when the server waits on it (a read or a write
/// that is pending) and no byte has moved for `limit` — except while a request on it is
/// being answered: the server's own work (a batch queued for its checks, say) is not the
/// client idling, and a request's body has its own deadline ([`DeadlineBody`]).
struct IdleIo {
    inner: TcpStream,
    timer: Pin<Box<Sleep>>,
    limit: Duration,
    ctl: Arc<ConnCtl>,
}

impl IdleIo {
    fn new(inner: TcpStream, limit: Duration, ctl: Arc<ConnCtl>) -> IdleIo {
        IdleIo {
            inner,
            timer: Box::pin(tokio::time::sleep(limit)),
            limit,
            ctl,
        }
    }

    /// The idle rule for one poll: bytes moved restart the timer; a pending poll fails
    /// once the timer has run out, unless a request on the connection is being answered:
    /// then the timer starts again.
    fn track<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        moved: impl FnOnce(&T) -> bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(Ok(v)) => {
                if moved(&v) {
                    self.timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.limit);
                }
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.timer.as_mut().poll(cx).is_ready() => {
                if self.ctl.in_flight.load(Ordering::Relaxed) == 0 {
                    return Poll::Ready(Err(idle_error(self.limit)));
                }
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.limit);
                // Registers this task with the timer started again.
                let _ = self.timer.as_mut().poll(cx);
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn idle_error(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no data moved for {} s; connection closed", limit.as_secs()),
    )
}

impl AsyncRead for IdleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let after = buf.filled().len();
        this.track(polled, |_| after > before, cx)
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.track(polled, |n| *n > 0, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(polled, |n| *n > 0, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_give_up_a_kept_alive_connection_before_the_default_server_closes_it() {
        let default = Limits::default().header_read_timeout;
        assert!(
            CLIENT_POOL_IDLE * 3 / 2 <= default,
            "clients keep idle connections {CLIENT_POOL_IDLE:?}, servers close them at {default:?}: too close"
        );
        assert_eq!(
            HttpConfig::default().limits().header_read_timeout,
            default,
            "the files init writes carry the same default"
        );
    }

    /// The allowance for connections closing after eviction: a quarter of the cap (at
    /// least 64), never within half the reserve of the descriptor limit.
    #[test]
    fn the_open_ceiling_follows_the_cap_and_the_descriptors() {
        assert_eq!(open_ceiling(4096, Some(65_536)), 5120);
        assert_eq!(open_ceiling(100, Some(65_536)), 164);
        assert_eq!(open_ceiling(4096, None), 5120);
        // Descriptors bind: 1,024 allowed, 128 kept free.
        assert_eq!(open_ceiling(768, Some(1024)), 896);
        // Never below the cap itself.
        assert_eq!(open_ceiling(1000, Some(1000)), 1000);
    }

    /// The heaviest address's connections all chosen for eviction but not closed yet (their
    /// tasks have not run), and the newcomers busy: the next newcomer still gets in, by
    /// closing an idle connection of another address — not refused because the heaviest
    /// address had nothing left to close (a `/healthz` probe failed so in CI).
    #[test]
    fn eviction_passes_over_addresses_whose_connections_are_all_closing() {
        let tracker = Arc::new(Tracker {
            max_total: 5,
            max_open: open_ceiling(5, None),
            max_per_address: 0,
            per_address: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stats: Arc::new(Stats::default()),
        });
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        let held: Vec<Slot> = [a, a, a, b, b]
            .iter()
            .filter_map(|ip| tracker.admit(*ip))
            .collect();
        assert_eq!(held.len(), 5);
        let mut busy = Vec::new();
        let mut newcomers = Vec::new();
        for n in 0..5 {
            let slot = tracker
                .admit(c)
                .unwrap_or_else(|| panic!("newcomer {n} was refused"));
            busy.push(Busy::new(&slot.ctl));
            newcomers.push(slot);
        }
        assert_eq!(tracker.stats.evicted.load(Ordering::Relaxed), 5);
        let closing = held
            .iter()
            .filter(|s| s.ctl.closing.load(Ordering::Relaxed))
            .count();
        assert_eq!(closing, 5, "every idle connection was chosen once");
        assert!(
            newcomers
                .iter()
                .all(|s| !s.ctl.closing.load(Ordering::Relaxed)),
            "a busy connection was chosen"
        );
        // Nothing idle is left: the next newcomer is refused, and the counts are whole
        // once the evicted connections close.
        assert!(tracker.admit(c).is_none());
        drop(held);
        let map = tracker
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        assert_eq!(map.len(), 1);
        assert_eq!(map[&c].closing, 0);
        assert_eq!(map[&c].live(), 5);
    }

    /// A burst of newcomers at the total cap, while every connection evicted for them is
    /// still open (its task has not run yet): each is admitted, by closing an idle one,
    /// until the allowance is spent — not after 64.
    #[test]
    fn newcomers_are_admitted_while_evicted_connections_linger() {
        let tracker = Arc::new(Tracker {
            max_total: 400,
            max_open: open_ceiling(400, None),
            max_per_address: 0,
            per_address: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stats: Arc::new(Stats::default()),
        });
        let idler = IpAddr::from([10, 0, 0, 1]);
        let held: Vec<Slot> = (0..400).filter_map(|_| tracker.admit(idler)).collect();
        assert_eq!(held.len(), 400);
        let newcomer = IpAddr::from([10, 0, 0, 2]);
        // Slots of evicted connections are not dropped here: their tasks have not run.
        let admitted: Vec<Slot> = (0..100).map_while(|_| tracker.admit(newcomer)).collect();
        assert_eq!(admitted.len(), 100, "admitted {} of 100", admitted.len());
        assert_eq!(tracker.stats.evicted.load(Ordering::Relaxed), 100);
        // The allowance spent, the next is refused until evicted connections close.
        assert!(tracker.admit(newcomer).is_none());
        drop(held);
        assert!(tracker.admit(newcomer).is_some());
    }
    use axum::routing::{get, post};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    struct Server {
        addr: SocketAddr,
        stats: Arc<Stats>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
        }
    }

    async fn start(limits: Limits) -> Server {
        let router =
            Router::new()
                .route("/healthz", get(|| async { "ok\n" }))
                .route(
                    "/peer",
                    get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        peer.ip().to_string()
                    }),
                )
                .route(
                    "/echo",
                    post(
                        |body: Result<
                            axum::body::Bytes,
                            axum::extract::rejection::BytesRejection,
                        >| async move {
                            match body {
                                Ok(b) => (axum::http::StatusCode::OK, format!("{} bytes", b.len())),
                                Err(e) => (
                                    axum::http::StatusCode::BAD_REQUEST,
                                    format!("{e}: {}", e.body_text()),
                                ),
                            }
                        },
                    ),
                )
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        ([(axum::http::header::CONNECTION, "close")], "slow done")
                    }),
                )
                .route("/big", get(|| async { vec![b'x'; 64 * 1024 * 1024] }));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let stats = Arc::new(Stats::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(serve(listener, router, limits, stats.clone(), async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            stats,
            stop: Some(tx),
        }
    }

    /// A connection from a chosen loopback source address (127.0.0.x).
    async fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
        let s = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        s.bind(SocketAddr::from((src, 0)))
            .unwrap_or_else(|e| panic!("{e}"));
        s.connect(to).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends a GET and reads the whole answer (the server closes after it).
    async fn get_from(src: [u8; 4], to: SocketAddr, path: &str) -> String {
        let mut c = connect_from(src, to).await;
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let mut out = String::new();
        let _ = c.read_to_string(&mut out).await;
        out
    }

    /// Waits until the server closes `c` (read returns 0 or an error); panics after `max`.
    async fn closed_within(c: &mut TcpStream, max: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let r = tokio::time::timeout(max, async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(r.is_ok(), "the connection was still open after {max:?}");
        got
    }

    fn short() -> Limits {
        Limits {
            max_connections: 64,
            max_connections_per_address: 8,
            header_read_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let m: IpAddr = "::ffff:10.1.2.3".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            address_key(m),
            "10.1.2.3"
                .parse::<IpAddr>()
                .unwrap_or_else(|e| panic!("{e}"))
        );
    }

    #[tokio::test]
    async fn requests_carry_the_peer_address() {
        let s = start(short()).await;
        let answer = get_from([127, 0, 0, 3], s.addr, "/peer").await;
        assert!(answer.ends_with("127.0.0.3"), "{answer}");
    }

    #[tokio::test]
    async fn a_slow_head_is_cut_off_and_others_are_served() {
        let s = start(short()).await;
        let mut slow = connect_from([127, 0, 0, 2], s.addr).await;
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHo")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            get_from([127, 0, 0, 1], s.addr, "/healthz")
                .await
                .contains("ok")
        );
        closed_within(&mut slow, Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed() {
        let s = start(short()).await;
        let mut c = connect_from([127, 0, 0, 2], s.addr).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let got = closed_within(&mut c, Duration::from_secs(5)).await;
        assert!(String::from_utf8_lossy(&got).contains("ok"));
    }

    #[tokio::test]
    async fn an_answer_that_takes_longer_than_the_idle_timeout_is_still_given() {
        // /slow answers after 3 s; the idle timeout is 1 s. While the server works on a
        // request no byte moves, and the client is not the one idling.
        let s = start(short()).await;
        let mut c = connect_from([127, 0, 0, 2], s.addr).await;
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let got = closed_within(&mut c, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        assert!(text.contains("slow done"), "{text:?}");
    }

    #[tokio::test]
    async fn a_slow_body_fails_to_read() {
        let s = start(short()).await;
        let mut c = connect_from([127, 0, 0, 2], s.addr).await;
        c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Trickle a byte every 300 ms: the idle timer keeps restarting; the body deadline does not.
        let writer = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if c.write_all(b"d").await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        let got = closed_within(&mut c, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains("did not arrive within 1 s"), "{text}");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_dropped() {
        let s = start(short()).await;
        let mut c = connect_from([127, 0, 0, 2], s.addr).await;
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Never read: the server's writes stall once the socket buffers fill.
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.stats.open.load(Ordering::Relaxed) > 0 {
            assert!(
                Instant::now() < deadline,
                "the stalled connection was kept open"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn caps_per_address_and_in_total_close_the_extra_connections() {
        let s = start(short()).await;
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(connect_from([127, 0, 0, 2], s.addr).await);
        }
        // Let the server accept them all.
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.stats.open.load(Ordering::Relaxed) < 8 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut ninth = connect_from([127, 0, 0, 2], s.addr).await;
        let got = closed_within(&mut ninth, Duration::from_secs(2)).await;
        assert!(got.is_empty());
        assert_eq!(s.stats.refused.load(Ordering::Relaxed), 1);
        // Another address is still served.
        assert!(
            get_from([127, 0, 0, 1], s.addr, "/healthz")
                .await
                .contains("ok")
        );
        drop(held);
    }

    #[tokio::test]
    async fn at_the_total_cap_an_idle_connection_makes_room_for_a_newcomer() {
        let mut limits = short();
        limits.max_connections = 4;
        limits.max_connections_per_address = 0;
        limits.header_read_timeout = Duration::from_secs(30);
        limits.idle_timeout = Duration::from_secs(30);
        let s = start(limits).await;
        // Three idle sockets from one address (the heaviest), one from another.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from([127, 0, 1, 1], s.addr).await);
        }
        let mut other = connect_from([127, 0, 1, 2], s.addr).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.stats.open.load(Ordering::Relaxed) < 4 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A newcomer with a request is served, and the oldest idle socket of the heaviest
        // address was closed for it.
        assert!(
            get_from([127, 0, 2, 1], s.addr, "/healthz")
                .await
                .contains("ok")
        );
        assert_eq!(s.stats.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.refused.load(Ordering::Relaxed), 0);
        assert!(
            closed_within(&mut held[0], Duration::from_secs(2))
                .await
                .is_empty()
        );
        // The lighter address kept its connection.
        let mut probe = [0u8; 1];
        let still_open =
            tokio::time::timeout(Duration::from_millis(300), other.read(&mut probe)).await;
        assert!(
            still_open.is_err(),
            "the other address's connection was closed"
        );
        assert!(s.stats.open.load(Ordering::Relaxed) <= 4);
    }

    #[tokio::test]
    async fn at_the_total_cap_busy_connections_are_kept_and_the_newcomer_is_refused() {
        let mut limits = short();
        limits.max_connections = 2;
        limits.max_connections_per_address = 0;
        limits.idle_timeout = Duration::from_secs(30);
        let s = start(limits).await;
        // Two requests in flight (the answer takes 3 s).
        let mut busy = Vec::new();
        for i in 0..2u8 {
            let mut c = connect_from([127, 0, 3, i + 1], s.addr).await;
            c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            busy.push(c);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.stats.open.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut late = connect_from([127, 0, 3, 9], s.addr).await;
        assert!(
            closed_within(&mut late, Duration::from_secs(2))
                .await
                .is_empty()
        );
        assert_eq!(s.stats.refused.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.evicted.load(Ordering::Relaxed), 0);
        // The busy ones get their answers.
        for c in &mut busy {
            let got = closed_within(c, Duration::from_secs(10)).await;
            assert!(String::from_utf8_lossy(&got).contains("slow done"));
        }
    }
}
