//! The load: one HTTP client task per source, each sending its pre-signed batches in seq
//! order over loopback and waiting for each answer, as an agent's pusher does. Bodies are
//! gzipped (as agents send them) or plain, before the timed phase.
//!
//! An answer counts when it is 200, refuses nothing and says the hub holds the source
//! through the batch's last seq (`held_through`), which the hub says only after its flush.
//! A 429 is waited out (`Retry-After`) and retried, and counted.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::presign::SourceBatches;
use crate::procs;

/// What the clients measured.
#[derive(Debug, Clone)]
pub struct Driven {
    /// Entries the hub acknowledged.
    pub entries: u64,
    /// Wall seconds from the first request to the last answer.
    pub wall_s: f64,
    /// Each batch's latency (request start to the whole answer read), milliseconds.
    pub batch_ms: Vec<f64>,
    /// Hub CPU seconds (user + system) spent during the timed phase.
    pub hub_cpu_s: f64,
    /// This process's CPU seconds during the timed phase (the clients).
    pub client_cpu_s: f64,
    /// 429 answers waited out.
    pub throttled: u64,
    /// Request bytes sent (after gzip).
    pub bytes_sent: u64,
}

impl Driven {
    /// Entries a second.
    pub fn per_s(&self) -> f64 {
        self.entries as f64 / self.wall_s
    }
}

/// The fields of the ingest answer the clients check; the rest (the receipts) is read
/// and skipped, so a later receipt format does not break the harness.
#[derive(Deserialize)]
struct Answer {
    held_through: u64,
    #[serde(default)]
    refused: Vec<serde::de::IgnoredAny>,
}

/// Every source's request bodies, ready to send (see [`prepare`]).
pub struct Prepared {
    /// Per source: its id and its bodies in seq order.
    sources: Vec<(String, Vec<Ready>)>,
    gzip: bool,
}

/// A request body ready to send.
struct Ready {
    /// The bytes on the wire (a copy per send costs microseconds, next to milliseconds
    /// of hub work).
    bytes: Vec<u8>,
    last_seq: u64,
    entries: u64,
}

/// Gzips (fast level, as the agent's pusher does) or copies every body, on every core, so
/// the caller may drop its own bodies before [`send`].
pub fn prepare(sources: &[SourceBatches], gzip: bool) -> Result<Prepared> {
    let ready = prepare_bodies(sources, gzip)?;
    Ok(Prepared {
        sources: sources.iter().map(|s| s.id.clone()).zip(ready).collect(),
        gzip,
    })
}

fn prepare_bodies(sources: &[SourceBatches], gzip: bool) -> Result<Vec<Vec<Ready>>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<Result<Vec<Ready>>>> = (0..sources.len()).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut out);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(src) = sources.get(i) else {
                        return;
                    };
                    let r = src
                        .bodies
                        .iter()
                        .map(|b| {
                            let bytes = if gzip {
                                let mut gz = flate2::write::GzEncoder::new(
                                    Vec::with_capacity(b.json.len() / 3),
                                    flate2::Compression::fast(),
                                );
                                gz.write_all(&b.json)?;
                                gz.finish()?
                            } else {
                                b.json.clone()
                            };
                            Ok(Ready {
                                bytes,
                                last_seq: b.last_seq,
                                entries: b.last_seq - b.first_seq + 1,
                            })
                        })
                        .collect::<Result<Vec<_>>>();
                    if let Ok(mut g) = slots.lock() {
                        g[i] = Some(r);
                    }
                }
            });
        }
    });
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow!("a body was not prepared"))))
        .collect()
}

/// Sends every source's batches to the hub at `url` (pid `hub_pid`, for its CPU time),
/// one concurrent client per source. `batch_receipts`: ask for one signed receipt per batch,
/// as the agent's pusher does (a hub that does not know the ask answers one per entry).
pub async fn drive(
    url: &str,
    hub_pid: u32,
    sources: &[SourceBatches],
    gzip: bool,
    batch_receipts: bool,
) -> Result<Driven> {
    send(url, hub_pid, prepare(sources, gzip)?, batch_receipts).await
}

/// Sends prepared bodies (see [`drive`]).
pub async fn send(
    url: &str,
    hub_pid: u32,
    prepared: Prepared,
    batch_receipts: bool,
) -> Result<Driven> {
    send_to(&[url.to_string()], &[hub_pid], prepared, batch_receipts).await
}

/// [`drive`] against several hub replicas: source `i` sends to `urls[i % n]` (as a load
/// balancer spreading agents would); the hub CPU is the sum over `hub_pids`.
pub async fn drive_replicas(
    urls: &[String],
    hub_pids: &[u32],
    sources: &[SourceBatches],
    gzip: bool,
    batch_receipts: bool,
) -> Result<Driven> {
    send_to(urls, hub_pids, prepare(sources, gzip)?, batch_receipts).await
}

fn hubs_cpu(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|p| procs::cpu_seconds(Some(*p))).sum()
}

async fn send_to(
    urls: &[String],
    hub_pids: &[u32],
    prepared: Prepared,
    batch_receipts: bool,
) -> Result<Driven> {
    if urls.is_empty() {
        bail!("no hub to send to");
    }
    let gzip = prepared.gzip;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(prepared.sources.len().max(1))
        .pool_idle_timeout(spacesync_http::CLIENT_POOL_IDLE)
        .timeout(Duration::from_secs(600))
        .build()
        .context("building the HTTP client")?;
    let endpoints: Vec<Arc<String>> = urls
        .iter()
        .map(|u| Arc::new(format!("{u}{}", spacesync_shared::wire::PATH_INGEST)))
        .collect();
    let cpu0 = hubs_cpu(hub_pids)?;
    let self0 = procs::cpu_seconds(None)?;
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (id, bodies)) in prepared.sources.into_iter().enumerate() {
        let http = http.clone();
        let endpoint = endpoints[i % endpoints.len()].clone();
        tasks.spawn(
            async move { client(&http, &endpoint, &id, bodies, gzip, batch_receipts).await },
        );
    }
    let mut batch_ms = Vec::new();
    let (mut entries, mut throttled, mut bytes_sent) = (0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        let c = r.map_err(|e| anyhow!("a client task failed: {e}"))??;
        batch_ms.extend(c.batch_ms);
        entries += c.entries;
        throttled += c.throttled;
        bytes_sent += c.bytes_sent;
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let hub_cpu_s = hubs_cpu(hub_pids)? - cpu0;
    let client_cpu_s = procs::cpu_seconds(None)? - self0;
    Ok(Driven {
        entries,
        wall_s,
        batch_ms,
        hub_cpu_s,
        client_cpu_s,
        throttled,
        bytes_sent,
    })
}

/// What one client saw.
struct ClientResult {
    batch_ms: Vec<f64>,
    entries: u64,
    throttled: u64,
    bytes_sent: u64,
}

async fn client(
    http: &reqwest::Client,
    endpoint: &str,
    id: &str,
    bodies: Vec<Ready>,
    gzip: bool,
    batch_receipts: bool,
) -> Result<ClientResult> {
    let mut out = ClientResult {
        batch_ms: Vec::with_capacity(bodies.len()),
        entries: 0,
        throttled: 0,
        bytes_sent: 0,
    };
    for b in bodies {
        loop {
            let t = Instant::now();
            let mut req = http
                .post(endpoint)
                .header("content-type", "application/json")
                .body(b.bytes.clone());
            if gzip {
                req = req.header("content-encoding", "gzip");
            }
            if batch_receipts {
                req = req.header(
                    spacesync_shared::wire::HDR_RECEIPTS,
                    spacesync_shared::wire::RECEIPTS_BATCH,
                );
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("{id}: sending seqs up to {}", b.last_seq))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok());
            let body = resp.bytes().await.with_context(|| {
                format!("{id}: reading the answer for seqs up to {}", b.last_seq)
            })?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if status.as_u16() == 429 {
                out.throttled += 1;
                tokio::time::sleep(Duration::from_secs_f64(
                    retry_after.unwrap_or(1.0).max(0.01),
                ))
                .await;
                continue;
            }
            if !status.is_success() {
                bail!(
                    "{id}: the hub answered {status} to seqs up to {}: {}",
                    b.last_seq,
                    String::from_utf8_lossy(&body[..body.len().min(600)])
                );
            }
            let a: Answer = serde_json::from_slice(&body)
                .with_context(|| format!("{id}: the ingest answer does not parse"))?;
            if !a.refused.is_empty() || a.held_through < b.last_seq {
                bail!(
                    "{id}: the hub holds through seq {} after a batch ending at {} ({} refused): {}",
                    a.held_through,
                    b.last_seq,
                    a.refused.len(),
                    String::from_utf8_lossy(&body[..body.len().min(600)])
                );
            }
            out.batch_ms.push(ms);
            out.entries += b.entries;
            out.bytes_sent += b.bytes.len() as u64;
            break;
        }
    }
    Ok(out)
}
