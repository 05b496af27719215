//! The state every request handler shares, the API's ([`crate::http`]) and the
//! dashboard's ([`crate::dashboard`]) alike: the hub, the signed-request nonces, the
//! request budgets (per source and per client address) with their token buckets, the
//! ingest body budget and the connection counters. It knows nothing of HTTP answers: the
//! API decides what a spent budget looks like on the wire.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth::{NonceCache, REQUEST_WINDOW};
use crate::hub::Hub;
use crate::notices::NoticeBook;

/// Largest ingest request body (after decompression): `POST /v1/ingest`, and an offline
/// bundle's batch posted to the admin API.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Ingest body bytes (after decompression) the hub holds at once across all requests.
/// Without it, a client sending many gzip bodies that expand to just under
/// [`MAX_BODY`] and never finishing them makes the hub hold gigabytes.
pub const BODY_BUDGET: usize = 256 * 1024 * 1024;

/// Refused requests a second per client address, by default (`rate_per_address`).
pub const DEFAULT_RATE_PER_ADDRESS: f64 = 2.0;
/// Refused requests a client address may make in a burst, by default (`burst_per_address`).
pub const DEFAULT_BURST_PER_ADDRESS: f64 = 40.0;
/// Most client addresses whose budget is tracked; beyond it the least recently seen are
/// forgotten (full buckets first, which loses nothing).
pub const MAX_TRACKED_ADDRESSES: usize = 16_384;

/// Shared state of the HTTP API and the dashboard.
#[derive(Clone)]
pub struct AppState {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Notices raised to lagging regions, with delivery state (kept beside the hub, not
    /// in it: the rules read the hub, the hub knows nothing of notices).
    pub notices: Arc<NoticeBook>,
    /// Signed-request nonces.
    pub nonces: Arc<NonceCache>,
    /// Per-source request buckets, spent only by requests proven to come from the source
    /// (a batch whose every signature verifies, a signed request that verifies), so
    /// nobody else can use up a source's budget.
    pub limiter: Arc<RateLimiter>,
    /// Per-client-address buckets, spent by every refused request that did not prove a
    /// source (malformed, unknown source, bad signature, replayed nonce): they bound the
    /// work unauthenticated traffic can cause.
    pub addr_limiter: Arc<RateLimiter<AddrKey>>,
    /// Requests answered 429, by whose budget ran out, for `/metrics`.
    pub throttled: Arc<Throttled>,
    /// Bytes of ingest bodies (after decompression) held at once, hub-wide, in KiB
    /// permits: many half-sent bodies cannot add up to more than [`BODY_BUDGET`].
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Connection caps and timeouts of [`crate::http::serve`] (`[http]` in hub.toml).
    pub conn_limits: spacesync_http::Limits,
    /// Connections open, accepted and refused at the caps, for `/metrics`.
    pub conns: Arc<spacesync_http::Stats>,
    /// Entries ingested, refusals by code and batch durations, for `/metrics`.
    pub ingest_metrics: Arc<crate::metrics::IngestMetrics>,
    /// The threads that read and verify ingest batches, below the writer's priority.
    pub check_pool: Arc<crate::check_pool::CheckPool>,
    /// The one thread that admits checked ingest batches (the writer lock's usual holder):
    /// the writer's allocations stay in one of glibc's arenas instead of one for each of
    /// the blocking threads that took the lock in turn.
    pub admit_pool: Arc<crate::check_pool::CheckPool>,
}

/// Counts of 429 answers.
#[derive(Debug, Default)]
pub struct Throttled {
    /// A client address used up its allowance of refused requests.
    pub address: AtomicU64,
    /// A source sent (authenticated) requests faster than its rate.
    pub source: AtomicU64,
}

impl AppState {
    /// State over a hub with the given per-source rate (requests per second, burst), and
    /// the default allowance of refused requests per client address.
    pub fn new(hub: Arc<Hub>, notices: Arc<NoticeBook>, rate: f64, burst: f64) -> AppState {
        AppState {
            hub,
            notices,
            nonces: Arc::new(NonceCache::default()),
            limiter: Arc::new(RateLimiter::new(rate, burst)),
            addr_limiter: Arc::new(RateLimiter::with_capacity(
                DEFAULT_RATE_PER_ADDRESS,
                DEFAULT_BURST_PER_ADDRESS,
                MAX_TRACKED_ADDRESSES,
            )),
            throttled: Arc::new(Throttled::default()),
            body_budget: Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET / 1024)),
            conn_limits: spacesync_http::Limits::default(),
            conns: Arc::new(spacesync_http::Stats::default()),
            ingest_metrics: Arc::new(crate::metrics::IngestMetrics::default()),
            check_pool: Arc::new(crate::check_pool::CheckPool::per_core()),
            admit_pool: Arc::new(crate::check_pool::CheckPool::named("ingest-writer", 1, 0)),
        }
    }

    /// Sets the connection caps and timeouts [`crate::http::serve`] applies.
    pub fn with_connection_limits(mut self, limits: spacesync_http::Limits) -> AppState {
        self.conn_limits = limits;
        self
    }

    /// Sets the allowance of refused requests per client address (per second, burst).
    pub fn with_address_limit(mut self, rate: f64, burst: f64) -> AppState {
        self.addr_limiter = Arc::new(RateLimiter::with_capacity(
            rate,
            burst,
            MAX_TRACKED_ADDRESSES,
        ));
        self
    }

    /// For a hub clock running `speed` times real time: the signed-request window is kept
    /// at the same span of real time.
    pub fn with_time_scale(mut self, speed: f64) -> AppState {
        let ms = (REQUEST_WINDOW.num_milliseconds() as f64 * speed.max(1.0)).min(1e15) as i64;
        self.nonces = Arc::new(NonceCache::new(chrono::Duration::milliseconds(ms)));
        self
    }
}

/// A token bucket per key (a source's budget, or a client address). Uses monotonic real
/// time: it protects the machine, not the campaign calendar. The table is bounded: when
/// `capacity` keys are held, full buckets are dropped (they carry no state), then the
/// least recently used half.
pub struct RateLimiter<K = String> {
    rate: f64,
    burst: f64,
    capacity: usize,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

/// Keys a source limiter holds by default: two budgets per registered source.
const DEFAULT_LIMITER_CAPACITY: usize = 65_536;

/// Longest Retry-After a limiter gives (also when a rate of 0 is configured).
const MAX_RETRY_AFTER_SECS: f64 = 3600.0;

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `rate` tokens a second, up to `burst`.
    pub fn new(rate: f64, burst: f64) -> RateLimiter<K> {
        RateLimiter::with_capacity(rate, burst, DEFAULT_LIMITER_CAPACITY)
    }

    /// `rate` tokens a second, up to `burst`, for at most `capacity` keys.
    pub fn with_capacity(rate: f64, burst: f64, capacity: usize) -> RateLimiter<K> {
        RateLimiter {
            rate: rate.max(0.0),
            burst: burst.max(0.0),
            capacity: capacity.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, tokens: f64, at: Instant, now: Instant) -> f64 {
        (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst)
    }

    /// Takes a token for `who`; on refusal, the seconds until one is available.
    pub fn take(&self, who: &K) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if !b.contains_key(who) {
            self.make_room(&mut b, now);
        }
        let (tokens, at) = b.entry(who.clone()).or_insert((self.burst, now));
        *tokens = self.refilled(*tokens, *at, now);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = if self.rate > 0.0 {
                ((1.0 - *tokens) / self.rate).ceil()
            } else {
                MAX_RETRY_AFTER_SECS
            };
            Err(wait.clamp(1.0, MAX_RETRY_AFTER_SECS) as u64)
        }
    }

    /// Would [`RateLimiter::take`] succeed now? Takes nothing.
    pub fn has_token(&self, who: &K) -> bool {
        let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.get(who)
            .is_none_or(|(tokens, at)| self.refilled(*tokens, *at, Instant::now()) >= 1.0)
    }

    /// Keys currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn make_room(&self, b: &mut HashMap<K, (f64, Instant)>, now: Instant) {
        if b.len() < self.capacity {
            return;
        }
        b.retain(|_, (tokens, at)| self.refilled(*tokens, *at, now) < self.burst);
        if b.len() >= self.capacity {
            let mut ats: Vec<Instant> = b.values().map(|(_, at)| *at).collect();
            ats.sort_unstable();
            let cut = ats[ats.len() / 2];
            b.retain(|_, (_, at)| *at > cut);
        }
    }
}

/// What one per-address budget is kept for: an IPv4 address, or an IPv6 /64 (what one
/// subscriber is usually given, so rotating through it gains nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    /// The key of `ip` (IPv4-mapped IPv6 addresses count as their IPv4 address).
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(IpAddr::V4(v4)),
                None => AddrKey(IpAddr::V6(Ipv6Addr::from(
                    u128::from(v6) & !((1u128 << 64) - 1),
                ))),
            },
        }
    }
}
