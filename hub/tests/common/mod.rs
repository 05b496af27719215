//! Shared helpers for the hub's integration tests: an in-process hub over a temporary
//! store (sled, or a fresh PostgreSQL database: [`Backend`], [`store_dir`],
//! [`backends!`]) with a fixed clock, agents that sign hash-chained entries, record builders,
//! and one-shot HTTP requests against `http::app`.
//!
//! Each test file uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod cli;

pub mod layouts;

pub mod model;

pub mod stores;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use spacesync_hub::auth::{self, Role};
use spacesync_hub::http::{self as hubhttp, AppState};
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::notices::NoticeBook;
use spacesync_hub::store::pg::PgStore;
use spacesync_hub::store::{SledStore, Store, StoreError};
use spacesync_shared::clock::{Clock, FixedClock};
use spacesync_shared::keys::public_key_line;
use spacesync_shared::wire::{IngestBatch, IngestResponse, PATH_INGEST};
use spacesync_shared::{Campaign, Digest, Entry, Envelope, Record, RegionCode, SourceId};
use tower::ServiceExt;

/// The hub clock in every test: 2018-11-20 10:00 China Standard Time.
pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2018-11-20T02:00:00Z")
        .expect("valid time")
        .with_timezone(&Utc)
}

/// The checkpoint origin of the test hub.
pub const ORIGIN: &str = "spacesync-hub/campaign/2018";

/// The test hub's key (fixed, so failures reproduce).
pub fn hub_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// Which store a test hub runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// sled in the test's directory.
    Sled,
    /// A fresh database on the test process's private PostgreSQL (spacesync-pgtest).
    Postgres,
}

/// The file in a test directory that names its PostgreSQL database.
const STORE_URL_FILE: &str = "store-url";

/// A temporary directory for a test hub on `backend`: for PostgreSQL a fresh database is
/// created and named in the directory, so [`open_store`] and [`TestHub::open_at`] on that
/// directory open the same database again (a restart), as sled reopens its directory.
pub fn store_dir(backend: Backend) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    if backend == Backend::Postgres {
        std::fs::write(
            dir.path().join(STORE_URL_FILE),
            spacesync_pgtest::database(),
        )
        .expect("write store-url");
    }
    dir
}

/// The store of a test directory from [`store_dir`] (sled for a plain directory).
pub fn open_store(dir: &Path) -> Arc<dyn Store> {
    match std::fs::read_to_string(dir.join(STORE_URL_FILE)) {
        Ok(url) => Arc::new(PgStore::open(&url).expect("open the test database")),
        Err(_) => Arc::new(open_sled(dir)),
    }
}

/// Opens sled over `dir`, waiting (up to 10 s) while this process's previous handle of the
/// same directory lets go: sled releases its lock from its own background threads a moment
/// after the last handle is dropped, so a reopen right after a drop can see `Locked`.
fn open_sled(dir: &Path) -> SledStore {
    let start = std::time::Instant::now();
    loop {
        match SledStore::open(dir) {
            Err(StoreError::Locked(_)) if start.elapsed() < std::time::Duration::from_secs(10) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => {
                return other.unwrap_or_else(|e| panic!("open sled over {}: {e}", dir.display()));
            }
        }
    }
}

/// A copy of the closed store in `dir` (from [`store_dir`]) in a new directory of the same
/// backend: sled's files copied, or every pair read into a fresh database.
pub fn copy_of(dir: &Path) -> tempfile::TempDir {
    let pg = dir.join(STORE_URL_FILE).exists();
    let copy = store_dir(if pg { Backend::Postgres } else { Backend::Sled });
    if pg {
        let (from, to) = (open_store(dir), open_store(copy.path()));
        let mut batch = spacesync_hub::store::WriteBatch::new();
        for r in from.scan(b"") {
            let (k, v) = r.expect("scan");
            batch.put(k, v);
            if batch.len() >= 5_000 {
                to.apply(std::mem::take(&mut batch)).expect("apply");
            }
        }
        to.apply(batch).expect("apply");
    } else {
        copy_dir(dir, copy.path());
    }
    copy
}

/// Copies a directory tree (a closed sled store, say).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        let kind = e.file_type().expect("type");
        if kind.is_dir() {
            copy_dir(&e.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(e.path(), target).expect("copy");
        }
        // Anything else (the control socket a killed hub leaves) is not data.
    }
}

/// Runs each named test function (taking a [`Backend`]) once per backend, as
/// `NAME::sled` and `NAME::postgres`: `backends!(async a, b)` for `async fn`s (each on a
/// `#[tokio::test]` runtime), `backends!(sync c)` for plain ones.
#[macro_export]
macro_rules! backends {
    (async $($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sled() {
                    super::$name(super::common::Backend::Sled).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name(super::common::Backend::Postgres).await
                }
            }
        )+
    };
    (sync $($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sled() {
                    super::$name(super::common::Backend::Sled)
                }
                #[test]
                fn postgres() {
                    super::$name(super::common::Backend::Postgres)
                }
            }
        )+
    };
}

/// A hub over a store in `dir`, with its router and an admin token.
pub struct TestHub {
    /// Where the store lives (owned by the caller so the hub can be reopened).
    pub dir: PathBuf,
    /// The hub.
    pub hub: Arc<Hub>,
    /// Its notice book (beside the hub, as `serve` keeps it).
    pub notices: Arc<NoticeBook>,
    /// `http::app` over the hub.
    pub app: Router,
    /// The hub's clock.
    pub clock: Arc<FixedClock>,
    /// An admin bearer token.
    pub admin: String,
}

impl TestHub {
    /// Opens (or creates) a hub over `dir` (from [`store_dir`], or any directory for sled)
    /// with the clock at `now`.
    pub fn open_at(dir: &Path, now: DateTime<Utc>) -> TestHub {
        TestHub::open_with(dir, now, Campaign::builtin_2018())
    }

    /// [`TestHub::open_at`] with another campaign.
    pub fn open_with(dir: &Path, now: DateTime<Utc>, campaign: Campaign) -> TestHub {
        let store = open_store(dir);
        let clock = Arc::new(FixedClock::new(now));
        let hub = Hub::open(
            store,
            hub_key(),
            ORIGIN.to_string(),
            campaign,
            clock.clone(),
            Limits::default(),
        )
        .expect("open hub");
        let admin = auth::create_token(hub.store.as_ref(), Role::Admin, None, now).expect("token");
        let notices = Arc::new(NoticeBook::load(hub.store.as_ref()).expect("notices"));
        let hub = Arc::new(hub);
        // A generous rate: these tests are about what is refused, not about throttling.
        let app = hubhttp::app(AppState::new(hub.clone(), notices.clone(), 1e9, 1e9));
        TestHub {
            dir: dir.to_path_buf(),
            hub,
            notices,
            app,
            clock,
            admin,
        }
    }

    /// Opens a hub over `dir` at [`t0`].
    pub fn open(dir: &Path) -> TestHub {
        TestHub::open_at(dir, t0())
    }

    /// Registers `agent` (scope and current key) as of [`t0`], as `agents add` does (a
    /// hub-signed log entry), whatever the hub clock says now.
    pub fn register(&self, agent: &Agent) {
        let now = self.clock.now();
        self.clock.set(t0());
        self.hub
            .add_source(agent.id.clone(), agent.scope, &agent.key_line())
            .expect("register source");
        self.clock.set(now);
    }

    /// Registers `agent` as a hub from before registry changes were logged did: a `reg/`
    /// record and no log entry, so log indexes count source entries alone.
    pub fn register_unlogged(&self, agent: &Agent) {
        use spacesync_hub::registry::{self, SourceKey, SourceRecord, SourceStatus};
        let rec = SourceRecord {
            id: agent.id.clone(),
            scope: agent.scope,
            status: SourceStatus::Active,
            keys: vec![SourceKey {
                key: agent.key_line(),
                from_seq: 1,
                added_at: t0(),
            }],
            added_at: t0(),
            revoked_at: None,
        };
        let mut wb = spacesync_hub::store::WriteBatch::new();
        registry::put(&mut wb, &rec);
        let store = self.hub.store.as_ref();
        store.apply(wb).expect("write registry record");
        store.flush().expect("flush");
        self.hub.refresh_registry().expect("refresh registry");
    }

    /// A bearer token with `role`.
    pub fn token(&self, role: Role) -> String {
        auth::create_token(self.hub.store.as_ref(), role, None, t0()).expect("token")
    }

    /// Sends a request through the router.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        send(&self.app, req).await
    }

    /// `GET path` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(get_req(path, token)).await
    }

    /// `GET path` as admin, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path, Some(&self.admin.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
        r.json()
    }

    /// Posts a batch as JSON.
    pub async fn ingest(&self, batch: &IngestBatch) -> Reply {
        self.send(ingest_req(
            serde_json::to_vec(batch).expect("json"),
            Some("application/json"),
            None,
        ))
        .await
    }

    /// Posts a batch and expects every entry held (200, no refusal).
    pub async fn ingest_ok(&self, batch: &IngestBatch) -> IngestResponse {
        let r = self.ingest(batch).await;
        assert_eq!(r.status, StatusCode::OK, "ingest: {}", r.text());
        let resp: IngestResponse = serde_json::from_slice(&r.body).expect("ingest response");
        assert!(resp.refused.is_empty(), "{:?}", resp.refused);
        resp
    }

    /// Log size.
    pub fn log_size(&self) -> u64 {
        self.hub.state().log.size()
    }

    /// Log leaves that sources signed (the log size less the hub's own entries, such as
    /// the registry changes [`TestHub::register`] logs).
    pub fn source_leaves(&self) -> u64 {
        spacesync_hub::log::iter(self.hub.store.as_ref())
            .filter(|r| r.as_ref().map_or(true, |(_, rec)| rec.source.is_some()))
            .count() as u64
    }
}

/// An HTTP answer.
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as (lossy) text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends one request through `app`.
pub async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.expect("infallible router");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// `GET path` with an optional bearer token.
pub fn get_req(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::empty()).expect("request")
}

/// `POST /v1/ingest` with raw bytes, a content type and a content encoding.
pub fn ingest_req(
    body: Vec<u8>,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Request<Body> {
    let mut b = Request::post(PATH_INGEST);
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    if let Some(ce) = content_encoding {
        b = b.header(header::CONTENT_ENCODING, ce);
    }
    b.body(Body::from(body)).expect("request")
}

/// Gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// A source: its key, its scope and where its chain stands.
#[derive(Clone)]
pub struct Agent {
    /// Source id.
    pub id: SourceId,
    /// Signing key.
    pub key: SigningKey,
    /// Scope region.
    pub scope: RegionCode,
    /// Seq of the next entry.
    pub next: u64,
    /// Hash of the last entry's payload (zeros before seq 1).
    pub prev: Digest,
    /// Agent clock stamped on entries.
    pub recorded_at: DateTime<Utc>,
}

impl Agent {
    /// An agent with a key derived from `seed`.
    pub fn new(id: &str, seed: u8, scope: &str) -> Agent {
        Agent {
            id: SourceId::parse(id).expect("source id"),
            key: SigningKey::from_bytes(&[seed; 32]),
            scope: RegionCode::parse(scope).expect("scope"),
            next: 1,
            prev: Digest::ZERO,
            recorded_at: t0() - chrono::Duration::hours(1),
        }
    }

    /// The public key line the hub registers.
    pub fn key_line(&self) -> String {
        public_key_line(&self.key.verifying_key())
    }

    /// The next entry for `record`, not yet signed and without advancing.
    pub fn entry(&self, record: &Value) -> Entry {
        Entry {
            source: self.id.clone(),
            seq: self.next,
            prev: self.prev,
            recorded_at: self.recorded_at,
            campaign: "2018".into(),
            record: record_of(record),
        }
    }

    /// Signs the next entry and advances the chain.
    pub fn sign_next(&mut self, record: &Value) -> Envelope {
        let env = self.entry(record).sign(&self.key);
        self.advance(&env);
        env
    }

    /// Advances the chain past `env` (an entry this agent made).
    pub fn advance(&mut self, env: &Envelope) {
        self.prev = env.payload_hash();
        self.next += 1;
    }

    /// Signs a key transition to `new` as the next entry (by the key in force) and takes
    /// the new key.
    pub fn transition(&mut self, new: &SigningKey) -> Envelope {
        let e = Entry::key_transition(
            self.id.clone(),
            self.next,
            self.prev,
            self.recorded_at,
            "2018".into(),
            new,
        );
        let env = e.sign(&self.key);
        self.advance(&env);
        self.key = new.clone();
        env
    }

    /// A batch of the next entries, one per record.
    pub fn batch(&mut self, records: &[Value]) -> IngestBatch {
        let entries = records.iter().map(|r| self.sign_next(r)).collect();
        IngestBatch {
            source: self.id.clone(),
            entries,
        }
    }
}

/// Reads a record through the strict reader (panics with the problems).
pub fn record_of(v: &Value) -> Record {
    Record::from_value(v).unwrap_or_else(|p| panic!("bad test record {v}: {p:?}"))
}

/// A `space_count` snapshot. `school` may be empty for a region's own total.
pub fn space_count(region: &str, school: &str, as_of: &str, spaces: Value) -> Value {
    let mut v =
        json!({ "kind": "space_count", "region": region, "as_of": as_of, "spaces": spaces });
    if !school.is_empty() {
        v["school"] = json!(school);
    }
    v
}

/// A `space_count` with only teacher spaces.
pub fn teachers(region: &str, school: &str, as_of: &str, n: u64) -> Value {
    space_count(region, school, as_of, json!({ "teacher": n }))
}

/// An `activity`.
pub fn activity(region: &str, date: &str, title: &str) -> Value {
    json!({ "kind": "activity", "region": region, "date": date, "category": "training",
            "title": title, "participants": 30 })
}

/// A `withdrawal` of `target_seq`.
pub fn withdrawal(target_seq: u64) -> Value {
    json!({ "kind": "withdrawal", "target_seq": target_seq, "reason": "entered twice" })
}

/// A `milestone` submission by `province`.
pub fn milestone(id: &str, province: &str, on: &str) -> Value {
    json!({ "kind": "milestone", "milestone": id, "region": province, "submitted_on": on,
            "document": { "title": "方案", "sha256": "9f2c4b6e1a3d5f7081c2e4a6b8d0f1e3c5a7b9d1f3e5a7c9b1d3f5a7c9e1b3d5" } })
}

/// A school `recommendation` at `level` by `by`.
pub fn recommendation(level: &str, by: &str, school: &str, county: &str) -> Value {
    json!({ "kind": "recommendation", "level": level, "by": by,
            "nominee": { "type": "school", "code": school, "region": county } })
}

/// A small deterministic generator (SplitMix64), so seeded runs reproduce without a
/// dependency.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Views driven through `Views::apply` directly (no hub, no signatures), over an
/// in-memory store holding what the views read beside their own keys, as ingest writes it
/// in the same batch: the log records (a withdrawal's target is found through its record)
/// and the source index.
pub struct DirectViews<S = spacesync_hub::store::MemStore> {
    /// The views.
    pub views: spacesync_hub::views::Views,
    /// Their store.
    pub store: S,
    log: spacesync_hub::log::Log,
    hub_seq: u64,
}

impl DirectViews {
    /// Empty views merged for `baseline`, over an empty in-memory store prepared as a hub's
    /// start does.
    pub fn new(baseline: chrono::NaiveDate) -> DirectViews {
        DirectViews::on(spacesync_hub::store::MemStore::new(), baseline)
    }
}

impl<S: spacesync_hub::store::Store> DirectViews<S> {
    /// Empty views merged for `baseline`, over `store` prepared as a hub's start does.
    pub fn on(store: S, baseline: chrono::NaiveDate) -> DirectViews<S> {
        spacesync_hub::views::prepare(&store, baseline).expect("prepare");
        let log = spacesync_hub::log::Log::load(&store).expect("empty log");
        DirectViews {
            views: spacesync_hub::views::Views::new(baseline),
            store,
            log,
            hub_seq: 0,
        }
    }

    /// Writes one batch as ingest would: `gap` hub entries first (they leave gaps in the
    /// log indexes the views see), then each `(source, seq, record)` received at `at`.
    /// Returns the entries' log indexes.
    pub fn apply_batch(
        &mut self,
        gap: u64,
        entries: &[(SourceId, u64, Record)],
        at: DateTime<Utc>,
    ) -> Vec<u64> {
        use spacesync_hub::log::RecordRef;
        use spacesync_hub::store::{WriteBatch, keys};
        use spacesync_hub::views::{Extension, HUB_ENTRY_PAYLOAD_TYPE, HubEntry, Meta};
        let mut wb = WriteBatch::new();
        for _ in 0..gap {
            // A hub entry: a deadline extension, as `extend` logs it.
            let hub_seq = self.hub_seq + 1;
            self.hub_seq = hub_seq;
            let ext = HubEntry::Extension(Extension {
                seq: hub_seq,
                region: RegionCode::parse("440000").expect("code"),
                milestone: "contact_form".into(),
                until: chrono::NaiveDate::from_ymd_opt(2018, 12, 1).expect("date"),
                reason: format!("gap {hub_seq}"),
                granted_at: at,
            });
            let envelope = Envelope {
                payload_type: HUB_ENTRY_PAYLOAD_TYPE.into(),
                payload: serde_json::to_vec(&ext).expect("json"),
                signatures: Vec::new(),
            };
            let filler = RecordRef {
                received_at: at,
                source: None,
                seq: hub_seq,
                envelope: &envelope,
            };
            let index = self.log.append(&mut wb, filler).expect("append");
            self.views.apply_hub(index, &ext, &mut wb);
        }
        let mut indexes = Vec::new();
        for (source, seq, record) in entries {
            let entry = Entry {
                source: source.clone(),
                seq: *seq,
                prev: Digest::ZERO,
                recorded_at: at,
                campaign: "2018".into(),
                record: record.clone(),
            };
            let envelope = Envelope {
                payload_type: spacesync_shared::entry::ENTRY_PAYLOAD_TYPE.into(),
                payload: entry.to_payload(),
                signatures: Vec::new(),
            };
            let rec = RecordRef {
                received_at: at,
                source: Some(source),
                seq: *seq,
                envelope: &envelope,
            };
            let index = self.log.append(&mut wb, rec).expect("append");
            // The per-entry layout of hubs before session 9 (log index, entry hash, receive
            // time), which still reads: stores built here keep it covered.
            let mut held = index.to_be_bytes().to_vec();
            held.extend_from_slice(&[0; 32]);
            held.extend_from_slice(&at.timestamp_millis().to_be_bytes());
            wb.put(keys::src(source, *seq), held);
            let meta = Meta {
                log_index: index,
                received_at: at,
                source: source.clone(),
                seq: *seq,
                recorded_at: at,
                withdrawn_by: None,
            };
            self.views
                .apply(&self.store, meta, record, &mut wb)
                .expect("apply");
            indexes.push(index);
        }
        // The views' position and the sources' activity, then the batch's pack of leaves
        // (and the frontier), as every batch of appends ends.
        self.views.seal(&self.store, &mut wb).expect("seal");
        self.log.put_frontier(&mut wb);
        self.store.apply(wb).expect("write");
        indexes
    }
}
