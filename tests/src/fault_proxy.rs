//! A fault-injecting TCP proxy for multi-process tests, placed between agents and the hub.
//!
//! Every accepted connection draws one [`Fault`] from the current [`FaultPlan`] (or takes
//! the next one queued with [`FaultProxy::force`]), then bytes are pumped both ways until
//! either side closes or the fault fires:
//!
//! | fault | what the client sees | what the hub sees |
//! |---|---|---|
//! | [`Fault::Refuse`] | accepted, then reset at once | nothing |
//! | [`Fault::Reset`] | reset after N request bytes went through | a request cut off after N bytes |
//! | [`Fault::Cut`] | the answer stops after N bytes, then the connection closes | the whole request: it commits, the answer is lost |
//! | [`Fault::Stall`] | the answer held back for a while (past the agent's timeout) | nothing unusual |
//! | [`Fault::Delay`] | connect and first answer bytes delayed | nothing unusual |
//!
//! [`FaultProxy::partition`] closes the listener itself (new connections are refused by the
//! kernel, `ECONNREFUSED`) and resets every open connection; [`FaultProxy::heal`] listens
//! again on the same port. The plan can be switched at any time with
//! [`FaultProxy::set_plan`]. Every fault that actually fired is counted ([`FaultCounts`]);
//! a drawn `Reset`/`Cut` whose byte budget is never reached is counted as passed.
//!
//! [`FaultProxy::round_robin`] forwards to several upstreams (hub replicas) in turn, one
//! connection each, as a load balancer does; an upstream that is down resets the client's
//! connection, and the client's retry goes to the next one.
//!
//! The draws come from a seeded RNG, so a seed fixes the sequence of faults per connection
//! order (the interleaving of connections is up to the scheduler).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What happens to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded untouched.
    Pass,
    /// Accepted and reset at once; nothing reaches the upstream.
    Refuse,
    /// Reset after `after` bytes of the request were forwarded.
    Reset {
        /// Request bytes let through before the reset.
        after: usize,
    },
    /// The request goes through whole; the answer is cut after `after` bytes.
    Cut {
        /// Answer bytes let through before the cut.
        after: usize,
    },
    /// The answer is held back `ms` milliseconds before its first byte is forwarded.
    Stall {
        /// How long.
        ms: u64,
    },
    /// The upstream connect and the first answer bytes are each delayed `ms` milliseconds.
    Delay {
        /// How long.
        ms: u64,
    },
}

/// How likely each fault is for a new connection (the rest pass untouched).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPlan {
    /// Chance of [`Fault::Refuse`].
    pub refuse: f64,
    /// Chance of [`Fault::Reset`]; the byte budget is drawn from `0..reset_bytes`.
    pub reset: f64,
    /// Request bytes a reset lets through at most.
    pub reset_bytes: usize,
    /// Chance of [`Fault::Cut`]; the byte budget is drawn from `0..cut_bytes`.
    pub cut: f64,
    /// Answer bytes a cut lets through at most.
    pub cut_bytes: usize,
    /// Chance of [`Fault::Stall`].
    pub stall: f64,
    /// How long a stall lasts.
    pub stall_ms: u64,
    /// Chance of [`Fault::Delay`]; the delay is drawn from `delay_ms`.
    pub delay: f64,
    /// Delay range, milliseconds (inclusive).
    pub delay_ms: (u64, u64),
}

impl FaultPlan {
    /// No faults.
    pub const NONE: FaultPlan = FaultPlan {
        refuse: 0.0,
        reset: 0.0,
        reset_bytes: 1,
        cut: 0.0,
        cut_bytes: 1,
        stall: 0.0,
        stall_ms: 0,
        delay: 0.0,
        delay_ms: (0, 0),
    };

    /// A plan where roughly `rate` of all connections meet a fault, spread over every kind;
    /// stalls last `stall_ms` (choose it above the client's timeout).
    pub fn chaos(rate: f64, stall_ms: u64) -> FaultPlan {
        let r = rate.clamp(0.0, 1.0);
        FaultPlan {
            refuse: r * 0.2,
            reset: r * 0.2,
            reset_bytes: 600,
            cut: r * 0.3,
            cut_bytes: 400,
            stall: r * 0.1,
            stall_ms,
            delay: r * 0.2,
            delay_ms: (5, 120),
        }
    }

    fn draw(&self, rng: &mut StdRng) -> Fault {
        let x: f64 = rng.random();
        let mut edge = 0.0;
        let mut hit = |p: f64| {
            edge += p;
            x < edge
        };
        if hit(self.refuse) {
            Fault::Refuse
        } else if hit(self.reset) {
            Fault::Reset {
                after: rng.random_range(0..self.reset_bytes.max(1)),
            }
        } else if hit(self.cut) {
            Fault::Cut {
                after: rng.random_range(0..self.cut_bytes.max(1)),
            }
        } else if hit(self.stall) {
            Fault::Stall { ms: self.stall_ms }
        } else if hit(self.delay) {
            Fault::Delay {
                ms: rng.random_range(self.delay_ms.0..=self.delay_ms.1.max(self.delay_ms.0)),
            }
        } else {
            Fault::Pass
        }
    }
}

/// Counters of what the proxy did; every field but `connections` and `passed` is a fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Connections accepted.
    pub connections: u64,
    /// Connections that ran to their end without a fault firing.
    pub passed: u64,
    /// Connections reset at once.
    pub refused: u64,
    /// Connections reset mid-request.
    pub resets: u64,
    /// Answers cut off.
    pub cuts: u64,
    /// Answers held back.
    pub stalls: u64,
    /// Connections delayed.
    pub delays: u64,
    /// Open connections reset by a partition.
    pub severed: u64,
    /// Partitions (listener closed).
    pub partitions: u64,
}

impl FaultCounts {
    /// Every fault injected.
    pub fn total(&self) -> u64 {
        self.refused
            + self.resets
            + self.cuts
            + self.stalls
            + self.delays
            + self.severed
            + self.partitions
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} faults over {} connections: refused {}, reset mid-request {}, answer cut {}, stalled {}, delayed {}, severed by partition {}, partitions {}",
            self.total(),
            self.connections,
            self.refused,
            self.resets,
            self.cuts,
            self.stalls,
            self.delays,
            self.severed,
            self.partitions
        )
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    passed: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
    cuts: AtomicU64,
    stalls: AtomicU64,
    delays: AtomicU64,
    severed: AtomicU64,
    partitions: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    /// Where connections go, in turn.
    upstreams: Vec<SocketAddr>,
    /// Connections forwarded so far (picks the next upstream).
    turn: AtomicU64,
    plan: Mutex<FaultPlan>,
    forced: Mutex<VecDeque<Fault>>,
    rng: Mutex<StdRng>,
    counters: Counters,
    /// Bumped by a partition: every open connection resets when it changes.
    sever: watch::Sender<u64>,
}

impl Shared {
    fn next_fault(&self) -> Fault {
        if let Some(f) = self
            .forced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
        {
            return f;
        }
        let plan = *self.plan.lock().unwrap_or_else(|p| p.into_inner());
        plan.draw(&mut self.rng.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A running proxy. Dropping it stops accepting; open connections end with their peers.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` under `plan`.
    pub async fn start(upstream: SocketAddr, plan: FaultPlan, seed: u64) -> FaultProxy {
        FaultProxy::round_robin(vec![upstream], plan, seed).await
    }

    /// Listens on a free loopback port and forwards each connection to the next of
    /// `upstreams` in turn, under `plan`.
    pub async fn round_robin(upstreams: Vec<SocketAddr>, plan: FaultPlan, seed: u64) -> FaultProxy {
        assert!(!upstreams.is_empty(), "a proxy needs an upstream");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let (sever, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            upstreams,
            turn: AtomicU64::new(0),
            plan: Mutex::new(plan),
            forced: Mutex::new(VecDeque::new()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counters: Counters::default(),
            sever,
        });
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy {
            addr,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the plan for connections accepted from now on.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock().unwrap_or_else(|p| p.into_inner()) = plan;
    }

    /// The current plan.
    pub fn plan(&self) -> FaultPlan {
        *self.shared.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues faults for the next connections, ahead of the plan's draws.
    pub fn force(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared
            .forced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(faults);
    }

    /// Closes the listener (new connections are refused by the kernel) and resets every
    /// open connection. No-op when already partitioned.
    pub fn partition(&self) {
        let task = self
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = task {
            t.abort();
            bump(&self.shared.counters.partitions);
            self.shared.sever.send_modify(|n| *n += 1);
        }
    }

    /// Listens again on the same port after [`FaultProxy::partition`].
    pub async fn heal(&self) {
        if self
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        // The aborted acceptor drops its listener when it is next polled; retry briefly.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 200, "proxy rebind {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let task = tokio::spawn(accept_loop(listener, self.shared.clone()));
        *self.acceptor.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// What the proxy did so far.
    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultCounts {
            connections: g(&c.connections),
            passed: g(&c.passed),
            refused: g(&c.refused),
            resets: g(&c.resets),
            cuts: g(&c.cuts),
            stalls: g(&c.stalls),
            delays: g(&c.delays),
            severed: g(&c.severed),
            partitions: g(&c.partitions),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(t) = self
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
        self.shared.sever.send_modify(|n| *n += 1);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        bump(&shared.counters.connections);
        let fault = shared.next_fault();
        tokio::spawn(handle(client, fault, shared.clone()));
    }
}

/// How a connection ended.
enum End {
    /// Both sides done, or one closed: no fault fired.
    Clean,
    /// A reset fired (already counted): reset the client.
    Fired,
    /// A cut fired (already counted): the client's side is closed already.
    Cut,
    /// A partition: reset the client.
    Severed,
}

async fn handle(mut client: TcpStream, fault: Fault, shared: Arc<Shared>) {
    let c = &shared.counters;
    let mut sever = shared.sever.subscribe();
    if fault == Fault::Refuse {
        bump(&c.refused);
        reset(client);
        return;
    }
    if let Fault::Delay { ms } = fault {
        bump(&c.delays);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let turn = shared.turn.fetch_add(1, Ordering::Relaxed) as usize;
    let target = shared.upstreams[turn % shared.upstreams.len()];
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        // The hub is down: pass that on as a reset, as a dead host's proxy would.
        reset(client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let mut cbuf = vec![0u8; 16 * 1024];
        let mut ubuf = vec![0u8; 16 * 1024];
        let (mut sent_up, mut sent_down) = (0usize, 0usize);
        let mut client_done = false;
        let mut first_answer = true;
        loop {
            tokio::select! {
                r = cr.read(&mut cbuf), if !client_done => {
                    let n = match r {
                        Ok(0) | Err(_) => {
                            // The client is gone; let the upstream finish the request.
                            client_done = true;
                            let _ = uw.shutdown().await;
                            continue;
                        }
                        Ok(n) => n,
                    };
                    if let Fault::Reset { after } = fault
                        && sent_up + n > after
                    {
                        let _ = uw.write_all(&cbuf[..after - sent_up]).await;
                        bump(&c.resets);
                        break End::Fired;
                    }
                    if uw.write_all(&cbuf[..n]).await.is_err() {
                        break End::Clean;
                    }
                    sent_up += n;
                }
                r = ur.read(&mut ubuf) => {
                    let n = match r {
                        Ok(0) | Err(_) => break End::Clean,
                        Ok(n) => n,
                    };
                    if first_answer {
                        first_answer = false;
                        match fault {
                            Fault::Stall { ms } => {
                                bump(&c.stalls);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            Fault::Delay { ms } => {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            _ => {}
                        }
                    }
                    if let Fault::Cut { after } = fault
                        && sent_down + n > after
                    {
                        let _ = cw.write_all(&ubuf[..after - sent_down]).await;
                        // FIN, not RST: a reset may discard the bytes just written.
                        let _ = cw.shutdown().await;
                        bump(&c.cuts);
                        break End::Cut;
                    }
                    if cw.write_all(&ubuf[..n]).await.is_err() {
                        break End::Clean;
                    }
                    sent_down += n;
                }
                _ = sever.changed() => break End::Severed,
            }
        }
    };
    match end {
        End::Clean => {
            if matches!(fault, Fault::Pass | Fault::Reset { .. } | Fault::Cut { .. }) {
                bump(&c.passed);
            }
        }
        End::Fired => reset(client),
        End::Cut => drop(client),
        End::Severed => {
            bump(&c.severed);
            reset(client);
        }
    }
}

/// Closes with RST rather than FIN, so the peer sees "connection reset".
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every request (one read) with `answer`, then closes.
    async fn upstream(answer: &'static [u8]) -> (SocketAddr, Arc<AtomicU64>) {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let requests = Arc::new(AtomicU64::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.ends_with(b"\n\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                    let _ = s.write_all(answer).await;
                });
            }
        });
        (addr, requests)
    }

    /// Sends one request through the proxy; returns the answer bytes read before EOF or
    /// error, and whether an error ended it.
    async fn exchange(proxy: &FaultProxy) -> (Vec<u8>, bool) {
        let Ok(mut s) = TcpStream::connect(proxy.addr()).await else {
            return (Vec::new(), true);
        };
        if s.write_all(b"hello proxy\n\n").await.is_err() {
            return (Vec::new(), true);
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return (out, false),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (out, true),
            }
        }
    }

    const ANSWER: &[u8] = b"0123456789abcdefghij";

    /// One behaviour per row: the fault forced, what the client reads, whether the
    /// upstream saw the whole request, and the counts that moved.
    #[tokio::test]
    async fn each_fault_does_what_it_says_and_is_counted() {
        let (up, seen) = upstream(ANSWER).await;
        let proxy = FaultProxy::start(up, FaultPlan::NONE, 7).await;
        type Row = (Fault, &'static [u8], u64, fn(&FaultCounts) -> u64);
        let cases: [Row; 5] = [
            (Fault::Pass, ANSWER, 1, |c| c.passed),
            (Fault::Cut { after: 7 }, &ANSWER[..7], 1, |c| c.cuts),
            (Fault::Refuse, b"", 0, |c| c.refused),
            (Fault::Reset { after: 3 }, b"", 0, |c| c.resets),
            (Fault::Delay { ms: 30 }, ANSWER, 1, |c| c.delays),
        ];
        for (fault, want, reached, counter) in cases {
            let before = (proxy.counts(), seen.load(Ordering::Relaxed));
            proxy.force([fault]);
            let (got, _) = exchange(&proxy).await;
            assert_eq!(got, want, "{fault:?}");
            // Let the connection task finish counting.
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(
                seen.load(Ordering::Relaxed) - before.1,
                reached,
                "{fault:?}: requests that reached the upstream"
            );
            assert_eq!(
                counter(&proxy.counts()) - counter(&before.0),
                1,
                "{fault:?}: {}",
                proxy.counts()
            );
        }
        assert_eq!(proxy.counts().total(), 4, "{}", proxy.counts());
    }

    #[tokio::test]
    async fn a_partition_refuses_connections_until_healed() {
        let (up, _) = upstream(ANSWER).await;
        let proxy = FaultProxy::start(up, FaultPlan::NONE, 7).await;
        assert_eq!(exchange(&proxy).await.0, ANSWER);
        proxy.partition();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let refused = TcpStream::connect(proxy.addr()).await;
        assert!(refused.is_err(), "connect during a partition must fail");
        proxy.heal().await;
        assert_eq!(exchange(&proxy).await.0, ANSWER);
        assert_eq!(proxy.counts().partitions, 1);
    }

    #[test]
    fn a_plan_draws_every_kind_near_its_rate() {
        let plan = FaultPlan::chaos(0.5, 100);
        let mut rng = StdRng::seed_from_u64(1);
        let n = 20_000;
        let faults = (0..n)
            .filter(|_| plan.draw(&mut rng) != Fault::Pass)
            .count();
        let share = faults as f64 / n as f64;
        assert!((0.47..0.53).contains(&share), "{share}");
        assert_eq!(FaultPlan::NONE.draw(&mut rng), Fault::Pass);
    }
}
