//! The fuzz targets' logic, as plain functions of arbitrary bytes. Each either returns
//! (the input was handled, accepted or refused) or panics (a bug). The cargo-fuzz targets
//! in `fuzz_targets/` call them under libFuzzer on nightly; `tests/tests/damaged_store.rs`
//! compiles this same file (`#[path]`) and runs every function on seeds and seeded
//! mutations of them, so stable CI covers the properties too (docs/fuzzing.md).
//!
//! - [`envelope`]: `Entry::from_payload` and `Envelope` JSON: never panic; the direct reader
//!   of space counts agrees with the full one (verdict and entry); what reads
//!   writes back to itself; verification of arbitrary envelopes never panics.
//! - [`records`]: `batch::parse` as JSON and as CSV: a refusal always says why; every
//!   accepted record writes back to itself (JSON), and space counts through CSV.
//! - [`ingest_body`]: arbitrary bodies at `POST /v1/ingest` of `spacesync_hub::http::app`:
//!   never a 5xx, always a well-formed answer.
//! - [`agent_intake`]: arbitrary bodies under each media type (and none) at the agent's
//!   `POST /v1/records`, through `spacesync_agent::http::app` with a valid token and Host:
//!   never a 5xx; a 200 assigns exactly as many new seqs as it says, contiguous after the
//!   head; any refusal is the standard error JSON and stores nothing.
//! - [`signed_request`]: the six parts of a signed agent request (method, path, timestamp,
//!   nonce, signature, body) as newline-separated fields into `wire::verify_request`:
//!   never a panic, and nothing verifies but the genuine request byte for byte (no part,
//!   the signature included, can be changed and still verify).
//! - [`ingest_chain`]: batches spliced and bit-flipped from a genuine signed chain into
//!   `Hub::ingest`: the hub never holds or receipts anything but the genuine entries, in
//!   order.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use spacesync_hub::http::{AppState, app};
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::ingest::IngestError;
use spacesync_hub::store::SledStore;
use spacesync_shared::batch::{self, Format};
use spacesync_shared::clock::FixedClock;
use spacesync_shared::entry::verify_signatures;
use spacesync_shared::keys::public_key_line;
use spacesync_shared::record::SpaceCount;
use spacesync_shared::wire::{ErrorBody, IngestBatch, IngestResponse, PATH_INGEST, Receipt};
use spacesync_shared::{Campaign, Digest, Entry, Envelope, Record, RegionCode, SourceId};
use tower::ServiceExt as _;

/// The hub's clock in the fixture.
const NOW: &str = "2018-11-25T02:00:00Z";
/// Most records [`records`] reads per batch.
const MAX_RECORDS: usize = 64;
/// Entries in the fixture's genuine chain.
const CHAIN: usize = 12;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// The key genuine entries are signed with.
pub fn source_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn hub_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// Envelope and entry decoding.
pub fn envelope(data: &[u8]) {
    // The direct reader of space counts takes exactly what the full reader takes, as the
    // same entry, and refuses with the full reader's words.
    assert_eq!(
        Entry::from_payload(data),
        Entry::from_payload_fully(data),
        "the direct and the full reader differ"
    );
    if let Ok(e) = Entry::from_payload(data) {
        // Parsing normalises (e.g. `recorded_at` to milliseconds); after that, writing
        // and reading are each other's inverse.
        let p = e.to_payload();
        let e2 = Entry::from_payload(&p)
            .unwrap_or_else(|err| panic!("an entry's own payload does not read back: {err}"));
        assert_eq!(e2.to_payload(), p, "payload round trip");
        assert_eq!((&e2.source, e2.seq, e2.prev), (&e.source, e.seq, e.prev));
        assert_eq!(e2.record, e.record, "record round trip");
    }
    if let Ok(env) = serde_json::from_slice::<Envelope>(data) {
        let json = serde_json::to_vec(&env).unwrap_or_default();
        let back: Envelope = serde_json::from_slice(&json)
            .unwrap_or_else(|err| panic!("an envelope's own JSON does not read back: {err}"));
        assert_eq!(back, env, "envelope round trip");
        let vk = source_key().verifying_key();
        if env
            .verify(spacesync_shared::entry::ENTRY_PAYLOAD_TYPE, &vk)
            .is_ok()
        {
            // Only genuine signatures verify; then the batch check agrees.
            assert!(
                verify_signatures(&[&env], &vk).is_ok(),
                "batch and single disagree"
            );
        }
        let _ = Entry::open(&env, &vk);
        let _ = Receipt::open(&env, &hub_key().verifying_key());
        let _ = env.payload_hash();
    }
}

/// Record batches as JSON and as CSV.
pub fn records(data: &[u8]) {
    for format in [Format::Json, Format::Csv] {
        match batch::parse(data, format, MAX_RECORDS, |_, _| Vec::new()) {
            Err(refusal) => {
                let lines = refusal.lines();
                assert!(
                    !lines.is_empty() && lines.iter().all(|l| !l.trim().is_empty()),
                    "a refusal must say why: {refusal:?}"
                );
            }
            Ok(recs) => {
                assert!(
                    !recs.is_empty() && recs.len() <= MAX_RECORDS,
                    "{}",
                    recs.len()
                );
                for r in &recs {
                    let back = Record::from_value(&r.to_value()).unwrap_or_else(|p| {
                        panic!("a record's own JSON is refused: {p:?}\n{}", r.to_value())
                    });
                    assert_eq!(&back, r, "record JSON round trip");
                }
                if format == Format::Csv {
                    let rows: Vec<SpaceCount> = recs
                        .iter()
                        .map(|r| match r {
                            Record::SpaceCount(s) => s.clone(),
                            other => panic!("CSV gave a {} record", other.kind()),
                        })
                        .collect();
                    let csv = batch::space_counts_to_csv(&rows);
                    let again =
                        batch::parse(csv.as_bytes(), Format::Csv, MAX_RECORDS, |_, _| Vec::new())
                            .unwrap_or_else(|e| panic!("our own CSV is refused: {e}\n{csv}"));
                    assert_eq!(again, recs, "CSV round trip:\n{csv}");
                }
            }
        }
    }
}

/// A hub over a temporary store with two registered sources, its router and a runtime,
/// made once per process.
pub struct Fixture {
    /// The hub.
    pub hub: Arc<Hub>,
    /// `http::app` over it.
    pub app: Router,
    /// Runs the router.
    pub rt: tokio::runtime::Runtime,
    /// The source whose genuine chain [`ingest_chain`] splices.
    pub chain_source: SourceId,
    /// Its genuine entries, seq 1..
    pub chain: Vec<Envelope>,
    _dir: tempfile::TempDir,
}

/// A genuine chain: activities in the source's scope, signed with [`source_key`].
pub fn genuine_chain(source: &SourceId, n: usize) -> Vec<Envelope> {
    let mut out: Vec<Envelope> = Vec::new();
    for seq in 1..=n as u64 {
        let record = Record::from_value(&serde_json::json!({"kind": "activity",
            "region": "440106", "date": "2018-11-20", "category": "training",
            "title": format!("chain {seq}")}))
        .unwrap_or_else(|p| panic!("{p:?}"));
        let entry = Entry {
            source: source.clone(),
            seq,
            prev: out.last().map_or(Digest::ZERO, Envelope::payload_hash),
            recorded_at: now() - chrono::Duration::hours(1),
            campaign: "2018".into(),
            record,
        };
        out.push(entry.sign(&source_key()));
    }
    out
}

/// The process-wide fixture.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(SledStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}")));
        let scope = RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}"));
        let body_source = SourceId::parse("fz-body").unwrap_or_else(|e| panic!("{e}"));
        let chain_source = SourceId::parse("fz-chain").unwrap_or_else(|e| panic!("{e}"));
        let hub = Arc::new(
            Hub::open(
                store,
                hub_key(),
                "spacesync-hub/campaign/2018".into(),
                Campaign::builtin_2018(),
                Arc::new(FixedClock::new(now())),
                Limits::default(),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        hub.add_source(
            body_source,
            scope,
            &public_key_line(&SigningKey::from_bytes(&[8; 32]).verifying_key()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        hub.add_source(
            chain_source.clone(),
            scope,
            &public_key_line(&source_key().verifying_key()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let book = spacesync_hub::notices::NoticeBook::load(hub.store.as_ref())
            .unwrap_or_else(|e| panic!("{e}"));
        let app = app(AppState::new(hub.clone(), Arc::new(book), 1e12, 1e12));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let chain = genuine_chain(&chain_source, CHAIN);
        Fixture {
            hub,
            app,
            rt,
            chain_source,
            chain,
            _dir: dir,
        }
    })
}

/// An arbitrary body at `POST /v1/ingest`.
pub fn ingest_body(data: &[u8]) {
    let f = fixture();
    let req = Request::post(PATH_INGEST)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(data.to_vec()))
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, body) = f.rt.block_on(async {
        let resp = f
            .app
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {});
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (status, body)
    });
    let text = String::from_utf8_lossy(&body);
    assert!(
        !status.is_server_error(),
        "an ingest body made the hub fail ({status}): {text}"
    );
    match status {
        StatusCode::OK | StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY
            if serde_json::from_slice::<IngestResponse>(&body).is_ok() => {}
        _ => {
            let e: ErrorBody = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{status} without an error body ({e}): {text}"));
            assert!(!e.error.is_empty(), "{status}: an empty error message");
        }
    }
}

/// A batch spliced from the genuine chain: each 3-byte group of `data` picks an entry and
/// may flip one bit of its payload or signature.
pub fn ingest_chain(data: &[u8]) {
    let f = fixture();
    let mut entries = Vec::new();
    for g in data.chunks(3).take(40) {
        let mut env = f.chain[g[0] as usize % f.chain.len()].clone();
        if let [_, how, at] = *g
            && how & 0x80 != 0
        {
            let bit = 1u8 << (how & 7);
            if how & 0x40 == 0 {
                let i = at as usize % env.payload.len().max(1);
                if let Some(b) = env.payload.get_mut(i) {
                    *b ^= bit;
                }
            } else if let Some(s) = env.signatures.first_mut() {
                let i = at as usize % s.sig.len().max(1);
                if let Some(b) = s.sig.get_mut(i) {
                    *b ^= bit;
                }
            }
        }
        entries.push(env);
    }
    let before = f.hub.head(&f.chain_source).held_through;
    let batch = IngestBatch {
        source: f.chain_source.clone(),
        entries,
    };
    match f.hub.ingest(batch) {
        Err(IngestError::Store(e)) => panic!("storage failed: {e}"),
        Err(IngestError::Log(e)) => panic!("the log failed: {e}"),
        Err(_) => {}
        Ok(out) => {
            let hub_vk: VerifyingKey = hub_key().verifying_key();
            for r in &out.response.receipts {
                let rc = Receipt::open(r, &hub_vk).unwrap_or_else(|e| panic!("receipt: {e}"));
                let genuine = f.chain[(rc.seq - 1) as usize].payload_hash();
                assert_eq!(
                    rc.entry_hash, genuine,
                    "a receipt for a forged seq {}",
                    rc.seq
                );
            }
            assert_eq!(
                out.appended as u64,
                out.response.held_through - before,
                "appended what was new"
            );
        }
    }
    let head = f.hub.head(&f.chain_source);
    assert!(head.held_through >= before, "the head went back");
    assert!(head.held_through as usize <= f.chain.len());
    if head.held_through > 0 {
        assert_eq!(
            head.head,
            f.chain[head.held_through as usize - 1].payload_hash(),
            "the hub holds a forged entry"
        );
    }
}

/// The agent half of the fixture: an agent store, its writer task and its router.
pub struct AgentFixture {
    app: Router,
    store: spacesync_agent::store::Store,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// The intake token of [`agent_fixture`].
const AGENT_TOKEN: &str = "fuzz-token";
/// The listen address the agent fixture answers as (its `Host`).
const AGENT_LISTEN: &str = "127.0.0.1:7300";

/// The process-wide agent fixture.
pub fn agent_fixture() -> &'static AgentFixture {
    static F: OnceLock<AgentFixture> = OnceLock::new();
    F.get_or_init(|| {
        use spacesync_agent::{config, http as ahttp, intake, store};
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let st = store::Store::open(&dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
        let source = SourceId::parse("gd-rrt").unwrap_or_else(|e| panic!("{e}"));
        let scope = RegionCode::parse("440000").unwrap_or_else(|e| panic!("{e}"));
        let ident = Arc::new(intake::Identity {
            source: source.clone(),
            scope,
            campaign: Campaign::builtin_2018(),
            key: source_key(),
        });
        let clock: Arc<dyn spacesync_shared::clock::Clock> = Arc::new(FixedClock::new(now()));
        let mut cfg = config::Config::new(source, scope, "http://127.0.0.1:9".into());
        cfg.intake.max_records = MAX_RECORDS;
        let listen: std::net::SocketAddr = AGENT_LISTEN.parse().unwrap_or_else(|e| panic!("{e}"));
        cfg.listen = listen;
        let writer = intake::Writer::open(
            st.clone(),
            ident.clone(),
            clock.clone(),
            config::BufferConfig::default(),
            MAX_RECORDS,
            5,
            3600,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let handle = rt.block_on(async {
            let (handle, _task) = intake::spawn_writer(writer, Arc::default());
            handle
        });
        let app = ahttp::app(ahttp::AppState {
            intake: handle,
            store: st.clone(),
            cfg: Arc::new(cfg),
            ident,
            push: Arc::default(),
            clock,
            edge: Arc::new(ahttp::Edge::new(AGENT_TOKEN.into(), listen, &[])),
            verifying: Arc::new(tokio::sync::Semaphore::new(1)),
            asks: None,
        });
        AgentFixture {
            app,
            store: st,
            rt,
            _dir: dir,
        }
    })
}

/// An arbitrary body at the agent's `POST /v1/records`; the first byte picks the media type.
pub fn agent_intake(data: &[u8]) {
    const TYPES: [&str; 7] = [
        "application/json",
        "application/x-ndjson",
        "text/csv",
        "text/plain",
        "application/json; charset=utf-8",
        "multipart/form-data; boundary=x",
        "",
    ];
    let f = agent_fixture();
    let (ct, body) = match data.split_first() {
        Some((b, rest)) => (TYPES[*b as usize % TYPES.len()], rest),
        None => ("application/json", data),
    };
    let before = f.store.head().unwrap_or_else(|e| panic!("{e}")).0;
    let mut req = Request::post("/v1/records")
        .header(header::HOST, AGENT_LISTEN)
        .header(header::AUTHORIZATION, format!("Bearer {AGENT_TOKEN}"));
    if !ct.is_empty() {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(Body::from(body.to_vec()))
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, answer) = f.rt.block_on(async {
        let resp = f
            .app
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {});
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (status, bytes)
    });
    let after = f.store.head().unwrap_or_else(|e| panic!("{e}")).0;
    assert!(
        !status.is_server_error(),
        "{status} for {:?}",
        String::from_utf8_lossy(&answer)
    );
    if status == StatusCode::OK {
        let a: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
            panic!(
                "200 without an intake answer ({e}): {}",
                String::from_utf8_lossy(&answer)
            )
        });
        let seqs: Vec<u64> = a["seqs"]
            .as_array()
            .map(|v| v.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let expected: Vec<u64> = (before + 1..=after).collect();
        assert_eq!(seqs, expected, "the seqs answered are the ones stored");
        assert_eq!(a["accepted"].as_u64(), Some(seqs.len() as u64));
    } else {
        let e: ErrorBody = serde_json::from_slice(&answer).unwrap_or_else(|e| {
            panic!(
                "{status} without the error JSON ({e}): {}",
                String::from_utf8_lossy(&answer)
            )
        });
        assert!(!e.error.is_empty(), "{status} with an empty reason");
        assert_eq!(before, after, "a refused batch stored something ({status})");
    }
}

/// The genuine signed request of [`signed_request`]: its six fields, newline-separated.
pub fn genuine_request() -> Vec<u8> {
    let source = SourceId::parse("fz-req").unwrap_or_else(|e| panic!("{e}"));
    let body = b"{\"up_to\":3}";
    let headers = spacesync_shared::wire::sign_request(
        &source_key(),
        &source,
        "POST",
        "/v1/agent/notices/ack",
        now(),
        [9; 16],
        body,
    );
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for part in [
        "POST".to_string(),
        "/v1/agent/notices/ack".to_string(),
        get(spacesync_shared::wire::HDR_TIMESTAMP),
        get(spacesync_shared::wire::HDR_NONCE),
        get(spacesync_shared::wire::HDR_SIGNATURE),
    ] {
        out.extend_from_slice(part.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out
}

/// Signed-request verification of arbitrary parts: never a panic; only the genuine
/// request verifies.
pub fn signed_request(data: &[u8]) {
    let parts: Vec<&[u8]> = data.splitn(6, |&b| b == b'\n').collect();
    let text = |i: usize| parts.get(i).and_then(|p| std::str::from_utf8(p).ok());
    // Header values are text; a part that is not UTF-8 cannot arrive as one.
    let (Some(method), Some(path), Some(ts), Some(nonce), Some(sig)) =
        (text(0), text(1), text(2), text(3), text(4))
    else {
        return;
    };
    let body = parts.get(5).copied().unwrap_or_default();
    let key = source_key().verifying_key();
    if spacesync_shared::wire::verify_request(&key, method, path, ts, nonce, sig, body).is_ok() {
        assert_eq!(
            data,
            genuine_request().as_slice(),
            "a changed request verified"
        );
    }
}

/// Inputs to start from, per target: what genuine traffic looks like.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let source = SourceId::parse("fz-chain").unwrap_or_else(|e| panic!("{e}"));
    let chain = genuine_chain(&source, 3);
    let env_json = |e: &Envelope| serde_json::to_vec(e).unwrap_or_default();
    let batch = |entries: &[Envelope]| {
        serde_json::to_vec(&IngestBatch {
            source: source.clone(),
            entries: entries.to_vec(),
        })
        .unwrap_or_default()
    };
    let act = r#"{"kind":"activity","region":"440106","date":"2018-11-20","category":"training","title":"t"}"#;
    let sc = r#"{"kind":"space_count","region":"440106","school":"4401060001","as_of":"2018-11-20","spaces":{"teacher":12,"student":340},"real_name":{"teacher":10},"population":{"teachers":15}}"#;
    let ms = r#"{"kind":"milestone","region":"440000","milestone":"contact_form","submitted_on":"2018-10-20","details":{"contacts":[{"name":"王芳","phone":"13800000000","role":"负责人"}]}}"#;
    let rec = r#"{"kind":"recommendation","level":"county","by":"440106","nominee":{"type":"school","code":"4401060001","region":"440106"}}"#;
    let wd = r#"{"kind":"withdrawal","target_seq":1,"reason":"duplicate"}"#;
    // A space count as agents write it: what the direct reader takes.
    let count_payload = {
        let mut e = Entry::from_payload(&chain[0].payload).unwrap_or_else(|e| panic!("{e}"));
        let v = spacesync_shared::json::from_str(sc).unwrap_or_else(|e| panic!("{e}"));
        e.record = Record::from_value(&v).unwrap_or_else(|p| panic!("{p:?}"));
        e.to_payload()
    };
    let csv = "region,school,as_of,teacher,student,real_name_teacher\n440106,4401060001,2018-11-20,12,340,10\n440106,,2018-11-19,1200.0,,\n";
    vec![
        ("envelope", chain[0].payload.clone()),
        ("envelope", chain[1].payload.clone()),
        ("envelope", env_json(&chain[2])),
        ("envelope", count_payload),
        ("records", act.as_bytes().to_vec()),
        ("records", format!("[{sc},{act}]").into_bytes()),
        ("records", [ms, rec, wd].join("\n").into_bytes()),
        ("records", csv.as_bytes().to_vec()),
        // Regression: a year chrono reads but writes differently ("-018" → "-0018").
        (
            "records",
            act.replace("2018-11-20", "-018-11-20").into_bytes(),
        ),
        ("ingest_body", batch(&chain)),
        ("ingest_body", batch(&chain[1..])),
        (
            "ingest_body",
            b"{\"source\":\"fz-body\",\"entries\":[]}".to_vec(),
        ),
        ("signed_request", genuine_request()),
        ("agent_intake", [&[0u8][..], act.as_bytes()].concat()),
        (
            "agent_intake",
            [&[1u8][..], [sc, act, rec].join("\n").as_bytes()].concat(),
        ),
        ("agent_intake", [&[2u8][..], csv.as_bytes()].concat()),
        ("agent_intake", [&[3u8][..], act.as_bytes()].concat()),
        ("ingest_chain", vec![0, 0, 0, 1, 0, 0, 2, 0, 0]),
        ("ingest_chain", vec![0, 0x81, 7, 1, 0xc3, 9, 2, 0, 0]),
    ]
}
