//! How requests reach the hub: the [`Transport`] seam and its HTTP implementation.
//!
//! The pusher speaks to the hub in [`Request`]s and hears [`Answer`]s (status,
//! `Retry-After`, body) or learns that the hub was not reached ([`Unreached`]). What an
//! answer means is decided elsewhere ([`super::classify`]), so the delivery state machine
//! can be driven by scripted answers in tests, without processes or sockets. [`HubClient`]
//! is the real thing: reqwest, gzip batches, signed requests.

use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use spacesync_shared::clock::Clock;
use spacesync_shared::err_chain;
use spacesync_shared::wire::{
    self, INGEST_CONTENT_TYPE, IngestBatch, NoticeAck, PATH_AGENT_ENTRIES, PATH_AGENT_HEAD,
    PATH_AGENT_NOTICES, PATH_AGENT_NOTICES_ACK, PATH_HUB_PUBKEY, PATH_INGEST,
};

use ed25519_dalek::SigningKey;

use crate::config::{Config, secs};
use crate::intake::Identity;
use crate::retry::parse_retry_after;

/// What the pusher asks of the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `GET /v1/pubkey` (unsigned): the hub's key line, trusted on first use.
    HubKey,
    /// Signed `GET /v1/agent/head`: which seq of this source the hub holds.
    Head,
    /// `POST /v1/ingest` (gzip JSON): a batch of entries, answered with receipts (one batch
    /// receipt asked for).
    Ingest {
        /// Seq of the first entry.
        first: u64,
        /// Seq of the last entry.
        last: u64,
        /// The batch.
        batch: IngestBatch,
    },
    /// Signed `GET /v1/agent/entries?from=&limit=`: the entries the hub holds of this
    /// source's chain from a seq, with a batch receipt (an agent restored from an older
    /// backup takes them back).
    Entries {
        /// First seq asked for.
        from: u64,
        /// Most entries.
        limit: usize,
    },
    /// Signed `GET /v1/agent/notices`: notices after an id.
    Notices {
        /// The highest notice id already stored.
        after: u64,
        /// Page size.
        limit: usize,
    },
    /// Signed `POST /v1/agent/notices/ack`: notices stored through an id.
    AckNotices(NoticeAck),
    /// `GET /v1/checkpoint` (unsigned): the hub's current signed checkpoint note.
    Checkpoint,
    /// `GET /v1/proof/consistency?old=&new=` (unsigned): that the tree of `new` leaves
    /// extends the tree of `old`.
    Consistency {
        /// Size of the kept (earlier) checkpoint.
        old: u64,
        /// Size of the fetched one.
        new: u64,
    },
    /// Signed `POST /v1/cosignature`: this agent's witness cosignature of a checkpoint it
    /// audited.
    Cosign(CosignatureSubmission),
    /// Signed `POST /v1/agent/log-alarm`: this agent's log alarm, raised or cleared, for the
    /// hub's source list and dashboard ([`super::report`]).
    LogAlarm(LogAlarmReport),
    /// `GET /v1/checkpoint?size=` (unsigned): the hub's checkpoint of an earlier tree (one a
    /// bulletin is pinned to), to cosign after a consistency proof to the kept one.
    CheckpointAt {
        /// Its size.
        size: u64,
    },
    /// `GET /v1/cosignature/wanted` (unsigned): the earlier checkpoints the hub asks its
    /// witnesses to cosign.
    WitnessWanted,
    /// `GET /v1/witnesses` (unsigned): the witnesses' verifier keys the hub knows.
    Witnesses,
    /// `GET /v1/proof/inclusion?index=&size=` (unsigned): that a leaf is in the tree.
    Inclusion {
        /// The leaf index a receipt named.
        index: u64,
        /// Size of the tree (the fetched checkpoint's).
        size: u64,
    },
}

pub use spacesync_shared::wire::PATH_CHECKPOINT;
use spacesync_shared::wire::{
    CosignatureSubmission, LogAlarmReport, PATH_AGENT_LOG_ALARM, PATH_COSIGNATURE,
    PATH_COSIGNATURE_WANTED, PATH_WITNESSES,
};
/// The hub's consistency proof endpoint.
pub const PATH_PROOF_CONSISTENCY: &str = "/v1/proof/consistency";
/// The hub's inclusion proof endpoint.
pub const PATH_PROOF_INCLUSION: &str = "/v1/proof/inclusion";

impl Request {
    /// What the request does, as the start of a sentence in logs and alarms.
    pub fn what(&self) -> String {
        match self {
            Request::HubKey => "fetching the hub key".into(),
            Request::Head => "asking the hub for its head".into(),
            Request::Ingest { first, last, .. } => format!("pushing seqs {first}–{last}"),
            Request::Entries { from, .. } => {
                format!("fetching the hub's entries of this source from seq {from}")
            }
            Request::Notices { .. } => "fetching notices".into(),
            Request::AckNotices(_) => "acknowledging notices".into(),
            Request::Checkpoint => "fetching the hub's checkpoint".into(),
            Request::Cosign(_) => "sending this agent's cosignature of the checkpoint".into(),
            Request::LogAlarm(r) if r.cleared => {
                "telling the hub this agent's log alarm was cleared".into()
            }
            Request::LogAlarm(_) => "reporting this agent's log alarm to the hub".into(),
            Request::CheckpointAt { size } => {
                format!("fetching the hub's checkpoint of tree size {size}")
            }
            Request::WitnessWanted => "asking which checkpoints the hub wants cosigned".into(),
            Request::Witnesses => "fetching the witnesses' keys".into(),
            Request::Consistency { old, new } => {
                format!("fetching a consistency proof from tree size {old} to {new}")
            }
            Request::Inclusion { index, size } => {
                format!("fetching an inclusion proof for leaf {index} in tree size {size}")
            }
        }
    }
}

/// The hub's answer, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, in seconds, when given.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Vec<u8>,
}

/// The hub was not reached, or its answer did not arrive whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreached {
    /// What happened, as a sentence.
    pub error: String,
    /// The hub may have acted on the request (anything after the connection was made):
    /// ask it where it stands before trusting the local view.
    pub doubt: bool,
}

/// Sends requests to the hub. Answers of any status are `Ok`; only a hub not reached (or
/// an answer cut off) is `Err`.
pub trait Transport: Send {
    /// Sends `req` and reads the whole answer.
    fn send(&mut self, req: &Request) -> impl Future<Output = Result<Answer, Unreached>> + Send;
}

/// Most bytes of one hub answer the agent reads: per-entry receipts for 100,000 entries
/// (about 45 MiB) fit; a hub's answers are far smaller.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The hub over HTTP.
pub struct HubClient {
    http: reqwest::Client,
    cfg: Arc<Config>,
    /// Signs the agent's requests (head, notices) with the source key.
    ident: Arc<Identity>,
    /// Stamps signed requests (the hub refuses those far from its own clock).
    clock: Arc<dyn Clock>,
    /// The key a key transition retired, while the hub may not hold the transition yet.
    retired: Option<RetiredSigner>,
}

/// The retired key of a key transition not yet receipted (`agent.key.retired`): the hub's
/// registry names it until the transition arrives, so it signs the agent's requests
/// first, the new key second when the hub answers 401 (the hub may hold the transition
/// before the agent holds its receipt). Once the store holds the transition's receipt the
/// file is removed and only the new key signs.
pub struct RetiredSigner {
    /// The key and the transition's seq.
    pub retired: crate::rotate::Retired,
    /// Where `agent.key.retired` is.
    pub data: crate::config::DataDir,
    /// Where the delivered seq is read.
    pub store: crate::store::Store,
}

impl HubClient {
    /// A client with `push.timeout_secs` for whole requests; redirects are never followed;
    /// TLS as [`crate::tls::client_config`] sets it up.
    pub fn new(
        cfg: Arc<Config>,
        ident: Arc<Identity>,
        clock: Arc<dyn Clock>,
    ) -> Result<HubClient, crate::tls::TlsError> {
        let timeout = secs(cfg.push.timeout_secs).max(Duration::from_millis(100));
        let http = crate::tls::http_client(
            &cfg.hub,
            cfg.ca_file.as_ref(),
            cfg.client_cert.as_ref().zip(cfg.client_key.as_ref()),
            timeout,
        )?;
        Ok(HubClient {
            http,
            cfg,
            ident,
            clock,
            retired: None,
        })
    }

    /// Signs requests with `retired`'s key while its transition is not receipted.
    pub fn with_retired(mut self, retired: Option<RetiredSigner>) -> HubClient {
        self.retired = retired;
        self
    }

    /// The key to sign requests with first, and the one to try when the hub answers 401.
    fn request_keys(&mut self) -> (SigningKey, Option<SigningKey>) {
        let current = self.ident.key.clone();
        let Some(r) = &self.retired else {
            return (current, None);
        };
        match r.store.acked() {
            Ok(acked) if acked >= r.retired.through => {
                let through = r.retired.through;
                match crate::rotate::forget_retired(&r.data) {
                    Ok(()) => {
                        tracing::info!(
                            seq = through,
                            "The hub receipted the key transition; the retired key was removed."
                        );
                        self.retired = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot remove the retired key; it signs nothing more.");
                        self.retired = None;
                    }
                }
                (current, None)
            }
            _ => (r.retired.key.clone(), Some(current)),
        }
    }

    fn signed(
        &self,
        key: &SigningKey,
        method: reqwest::Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let nonce: [u8; 16] = rand::random();
        let headers = wire::sign_request(
            key,
            &self.ident.source,
            method.as_str(),
            path_and_query,
            self.clock.now(),
            nonce,
            &body,
        );
        let mut rb = self
            .http
            .request(method, self.cfg.hub_url(path_and_query))
            .body(body);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        rb
    }

    fn build(&self, req: &Request, key: &SigningKey) -> Result<reqwest::RequestBuilder, Unreached> {
        Ok(match req {
            Request::HubKey => self.http.get(self.cfg.hub_url(PATH_HUB_PUBKEY)),
            Request::Head => self.signed(key, reqwest::Method::GET, PATH_AGENT_HEAD, Vec::new()),
            Request::Ingest { batch, .. } => {
                let json = serde_json::to_vec(batch).unwrap_or_default();
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let gzipped =
                    gz.write_all(&json)
                        .and_then(|_| gz.finish())
                        .map_err(|e| Unreached {
                            error: format!("compressing a batch: {e}"),
                            doubt: false,
                        })?;
                self.http
                    .post(self.cfg.hub_url(PATH_INGEST))
                    .header(CONTENT_TYPE, INGEST_CONTENT_TYPE)
                    .header(CONTENT_ENCODING, "gzip")
                    // One signed receipt for the batch; a hub that does not know this
                    // header ignores it and answers one receipt per entry.
                    .header(wire::HDR_RECEIPTS, wire::RECEIPTS_BATCH)
                    .body(gzipped)
            }
            Request::Entries { from, limit } => {
                let pq = format!("{PATH_AGENT_ENTRIES}?from={from}&limit={limit}");
                self.signed(key, reqwest::Method::GET, &pq, Vec::new())
            }
            Request::Notices { after, limit } => {
                let pq = format!("{PATH_AGENT_NOTICES}?after={after}&limit={limit}");
                self.signed(key, reqwest::Method::GET, &pq, Vec::new())
            }
            Request::AckNotices(ack) => {
                let body = serde_json::to_vec(ack).unwrap_or_default();
                self.signed(key, reqwest::Method::POST, PATH_AGENT_NOTICES_ACK, body)
                    .header(CONTENT_TYPE, "application/json")
            }
            Request::Checkpoint => self.http.get(self.cfg.hub_url(PATH_CHECKPOINT)),
            Request::Cosign(sub) => {
                let body = serde_json::to_vec(sub).unwrap_or_default();
                self.signed(key, reqwest::Method::POST, PATH_COSIGNATURE, body)
                    .header(CONTENT_TYPE, "application/json")
            }
            Request::LogAlarm(report) => {
                let body = serde_json::to_vec(report).unwrap_or_default();
                self.signed(key, reqwest::Method::POST, PATH_AGENT_LOG_ALARM, body)
                    .header(CONTENT_TYPE, "application/json")
            }
            Request::CheckpointAt { size } => self
                .http
                .get(self.cfg.hub_url(&format!("{PATH_CHECKPOINT}?size={size}"))),
            Request::WitnessWanted => self.http.get(self.cfg.hub_url(PATH_COSIGNATURE_WANTED)),
            Request::Witnesses => self.http.get(self.cfg.hub_url(PATH_WITNESSES)),
            Request::Consistency { old, new } => self.http.get(
                self.cfg
                    .hub_url(&format!("{PATH_PROOF_CONSISTENCY}?old={old}&new={new}")),
            ),
            Request::Inclusion { index, size } => self.http.get(
                self.cfg
                    .hub_url(&format!("{PATH_PROOF_INCLUSION}?index={index}&size={size}")),
            ),
        })
    }
}

impl Transport for HubClient {
    async fn send(&mut self, req: &Request) -> Result<Answer, Unreached> {
        let (first, other) = self.request_keys();
        let answer = self.send_signed_by(req, &first).await?;
        let signed = matches!(
            req,
            Request::Head
                | Request::Entries { .. }
                | Request::Notices { .. }
                | Request::AckNotices(_)
                | Request::Cosign(_)
                | Request::LogAlarm(_)
        );
        match other {
            // Across a key transition the hub names one of the two keys.
            Some(other) if signed && answer.status == 401 => self.send_signed_by(req, &other).await,
            _ => Ok(answer),
        }
    }
}

impl HubClient {
    /// Sends `req`, a signed one signed by `key`, and reads the whole answer.
    async fn send_signed_by(&self, req: &Request, key: &SigningKey) -> Result<Answer, Unreached> {
        let rb = self.build(req, key)?;
        let resp = rb
            .send()
            .await
            .map_err(|e| match crate::tls::certificate_problem(&e) {
                // The handshake failed: nothing was sent.
                Some(problem) => Unreached {
                    error: crate::tls::describe(&self.cfg.hub, &problem),
                    doubt: false,
                },
                None => Unreached {
                    error: format!(
                        "cannot reach the hub at {}: {}",
                        self.cfg.hub,
                        err_chain(&e)
                    ),
                    // Refused before anything was sent: no doubt. Anything else may have
                    // reached the hub.
                    doubt: !e.is_connect(),
                },
            })?;
        let status = resp.status().as_u16();
        let retry_after = parse_retry_after(
            resp.headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        // Read in pieces up to a bound: a hub (or whatever answers at its address) that
        // sends without end must not take the agent's memory.
        let too_large = || Unreached {
            error: format!(
                "the hub's answer is larger than {} MiB, far more than any answer of a hub; it was not read",
                MAX_ANSWER_BYTES >> 20
            ),
            doubt: true,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(piece) = resp.chunk().await.map_err(|e| Unreached {
            error: format!("the hub's answer was cut off: {}", err_chain(&e)),
            doubt: true,
        })? {
            if body.len() + piece.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&piece);
        }
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}
