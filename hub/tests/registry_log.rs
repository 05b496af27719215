//! Recomputable means recomputable: registry changes are hub-signed log entries, a
//! bulletin verifies against the registry as of its checkpoint (also after a source it
//! named was revoked, in process and through the real binary), an old store's registry is
//! the starting point, `rebuild` reproduces the registry from the log, and a scheduled
//! bulletin and its slot are one write (a crash between the old two writes cannot issue a
//! slot twice).

mod common;

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use spacesync_hub::hub::{Hub, Limits};
use spacesync_hub::ingest::IngestError;
use spacesync_hub::notices::NoticeBook;
use spacesync_hub::registry::{self, SourceKey, SourceRecord, SourceStatus};
use spacesync_hub::store::{KvIter, Store, StoreError, WriteBatch, keys};
use spacesync_hub::views::{HUB_ENTRY_PAYLOAD_TYPE, HubEntry};
use spacesync_hub::{bulletin, log, maintenance, schedule};
use spacesync_shared::clock::FixedClock;
use spacesync_shared::{Campaign, SourceId};

use common::cli::ok;
use common::{Agent, Backend, ORIGIN, TestHub, hub_key, open_store, store_dir, t0, teachers};

/// Every hub entry in the log, with its index, after checking its signature.
fn hub_entries(store: &dyn Store) -> Vec<(u64, HubEntry)> {
    log::iter(store)
        .map(|r| r.expect("log leaf"))
        .filter(|(_, rec)| rec.source.is_none())
        .map(|(i, rec)| {
            rec.envelope
                .verify(HUB_ENTRY_PAYLOAD_TYPE, &hub_key().verifying_key())
                .expect("hub-signed");
            (
                i,
                serde_json::from_slice(&rec.envelope.payload).expect("hub entry"),
            )
        })
        .collect()
}

fn verify_bulletin(hub: &Hub, doc: &Value) -> Result<(), bulletin::BulletinError> {
    bulletin::verify(
        hub.store.as_ref(),
        &hub.campaign,
        &hub_key().verifying_key(),
        ORIGIN,
        doc,
    )
}

fn log_verifies(store: &dyn Store) {
    let report =
        maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {}).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}

fn names(doc: &Value, id: &str) -> bool {
    doc.to_string().contains(&format!("\"{id}\""))
}

async fn revoking_sources_an_old_bulletin_named_leaves_it_verifiable(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    let bj = Agent::new("bj-a", 2, "110000");
    th.register(&gd);
    th.register(&bj);
    // gd reports a drop (named in the data flags) well after bj was last heard of (bj is
    // named as silent).
    let silent = i64::from(th.hub.campaign.silent_after_days);
    th.clock.set(t0() + Duration::days(silent + 2));
    th.ingest_ok(&gd.batch(&[
        teachers("440106", "4401060001", "2018-11-01", 100),
        teachers("440106", "4401060001", "2018-11-05", 90),
    ]))
    .await;
    let doc = bulletin::issue(&th.hub, None, &[]).expect("issue");
    assert!(
        names(&doc["silent_sources"], "bj-a"),
        "{}",
        doc["silent_sources"]
    );
    assert!(!names(&doc["silent_sources"], "gd-a"));
    assert!(names(&doc, "gd-a"), "gd-a is named in the bulletin");
    let size = doc["checkpoint"]["size"].as_u64().expect("size");

    // Revoked at the bulletin's very instant: only the registry as of the checkpoint
    // (not the revocation time) keeps them in.
    th.hub.revoke_source("bj-a").expect("revoke bj");
    th.hub.revoke_source("gd-a").expect("revoke gd");
    verify_bulletin(&th.hub, &doc).expect("the old bulletin still verifies");

    let then = registry::as_of(th.hub.store.as_ref(), size).expect("as of");
    assert!(then.iter().all(|r| r.status == SourceStatus::Active));
    let now = registry::as_of(th.hub.store.as_ref(), u64::MAX).expect("as of now");
    assert!(now.iter().all(|r| r.status == SourceStatus::Revoked));
    // A bulletin issued now no longer lists the revoked source as silent.
    let later = bulletin::issue(&th.hub, None, &[]).expect("issue");
    assert!(!names(&later["silent_sources"], "bj-a"));
    verify_bulletin(&th.hub, &later).expect("the new bulletin verifies");
    log_verifies(th.hub.store.as_ref());

    // Reopened, the registry and both bulletins still hold.
    drop(th);
    let th = TestHub::open(dir.path());
    verify_bulletin(&th.hub, &doc).expect("after reopening");
    assert_eq!(
        th.hub.state().registry.len(),
        2,
        "the registry is loaded at open"
    );
}

fn registry_changes_are_hub_signed_log_entries_and_rebuild_reproduces_them(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let at = t0() + Duration::hours(3);
    th.clock.set(at);
    let new_key = Agent::new("gd-a", 9, "440000").key_line();
    th.hub
        .rotate_source("gd-a", &new_key, Some(5))
        .expect("rotate");
    th.hub.revoke_source("gd-a").expect("revoke");
    // Revoking twice logs nothing more.
    th.hub.revoke_source("gd-a").expect("revoke again");
    let size_before = th.log_size();
    // Refusals log nothing.
    assert!(matches!(
        th.hub.add_source(gd.id.clone(), gd.scope, &gd.key_line()),
        Err(registry::RegistryError::Exists(_))
    ));
    assert!(matches!(
        th.hub.rotate_source("gd-a", &new_key, None),
        Err(registry::RegistryError::Revoked(_))
    ));
    assert!(matches!(
        th.hub.revoke_source("nobody"),
        Err(registry::RegistryError::Unknown(_))
    ));
    assert_eq!(th.log_size(), size_before);

    let entries: Vec<HubEntry> = hub_entries(th.hub.store.as_ref())
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let id = SourceId::parse("gd-a").expect("id");
    match &entries[..] {
        [
            HubEntry::SourceAdded(a),
            HubEntry::KeyRotated(r),
            HubEntry::SourceRevoked(v),
        ] => {
            assert_eq!(
                (&a.source, a.scope, a.key.as_str(), a.at, a.seq),
                (&id, gd.scope, gd.key_line().as_str(), t0(), 1)
            );
            assert_eq!(
                (&r.source, r.key.as_str(), r.from_seq, r.at, r.seq),
                (&id, new_key.as_str(), 5, at, 2)
            );
            assert_eq!((&v.source, v.revoked, v.at, v.seq), (&id, true, at, 3));
        }
        other => panic!("unexpected hub entries: {other:?}"),
    }

    // The registry is derived state: deleted, `rebuild` brings it back from the log.
    let store = th.hub.store.clone();
    let before = registry::load_all(store.as_ref()).expect("load");
    assert_eq!(before[0].keys.len(), 2);
    let mut wb = WriteBatch::new();
    for r in store.scan(keys::REG) {
        wb.delete(r.expect("scan").0);
    }
    store.apply(wb).expect("delete");
    let report = maintenance::verify(store.as_ref(), &hub_key().verifying_key(), ORIGIN, |_| {})
        .expect("verify");
    // Checked under the registry the log gives, every leaf holds: the one problem is the
    // stored registry.
    assert!(
        matches!(report.problems.as_slice(), [p] if p.contains("stored registry disagrees")),
        "{:?}",
        report.problems
    );
    maintenance::rebuild(store.as_ref(), Campaign::builtin_2018().baseline, |_| {})
        .expect("rebuild");
    assert_eq!(registry::load_all(store.as_ref()).expect("load"), before);
    log_verifies(store.as_ref());
}

/// `verify` checks the log under the registry the log's own entries give, whatever `reg/`
/// holds: with another key stored for a source, or the stored registry deleted, the one
/// problem named is the stored registry (the leaves hold under the log's keys); once
/// `reg/` agrees again, there is none.
#[test]
fn verify_checks_the_log_under_the_registry_it_gives() {
    let dir = store_dir(Backend::Sled);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let records = [
        teachers("440106", "4144010601", "2018-11-01", 100),
        teachers("440106", "4144010602", "2018-11-01", 50),
    ];
    let out = th.hub.ingest(gd.batch(&records)).expect("ingest");
    assert_eq!(out.status, 200, "{:?}", out.response);
    let store = th.hub.store.clone();
    log_verifies(store.as_ref());
    let before = registry::load_all(store.as_ref()).expect("load");
    let verify = || {
        maintenance::verify(store.as_ref(), &hub_key().verifying_key(), ORIGIN, |_| {})
            .expect("verify")
            .problems
    };
    let stored_only = |problems: &[String]| matches!(problems, [p] if p.contains("stored registry disagrees") && p.contains("gd-a"));
    let mut other = before[0].clone();
    other.keys[0].key = Agent::new("gd-x", 9, "440000").key_line();
    let mut wb = WriteBatch::new();
    registry::put(&mut wb, &other);
    store.apply(wb).expect("put");
    let problems = verify();
    assert!(stored_only(&problems), "another key: {problems:?}");
    let mut wb = WriteBatch::new();
    for r in store.scan(keys::REG) {
        wb.delete(r.expect("scan").0);
    }
    store.apply(wb).expect("delete");
    let problems = verify();
    assert!(stored_only(&problems), "deleted: {problems:?}");
    let mut wb = WriteBatch::new();
    registry::put(&mut wb, &before[0]);
    store.apply(wb).expect("put back");
    log_verifies(store.as_ref());
}

/// A batch whose signatures were checked before a registry change committed is judged by
/// the record in force when it is appended (review finding 1): checked before a revocation,
/// it is refused; checked before a rotation to a new key from its own seq, its old-key
/// entries are refused — and the log, which `verify` audits with the key schedule of its
/// registry entries, still verifies.
fn a_registry_change_between_check_and_append_is_honoured(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut gd = Agent::new("gd-a", 1, "440000");
    th.register(&gd);
    let checked = th
        .hub
        .check(gd.batch(&[teachers("440106", "4144010601", "2018-11-01", 100)]))
        .expect("check");
    th.hub.revoke_source("gd-a").expect("revoke");
    assert!(
        matches!(th.hub.append(checked), Err(IngestError::Revoked(_))),
        "a batch checked before the revocation was appended after it"
    );

    let mut bj = Agent::new("bj-a", 2, "110000");
    th.register(&bj);
    let checked = th
        .hub
        .check(bj.batch(&[teachers("110105", "1111010501", "2018-11-01", 70)]))
        .expect("check");
    let new_key = Agent::new("bj-a", 3, "110000").key_line();
    th.hub
        .rotate_source("bj-a", &new_key, Some(1))
        .expect("rotate");
    let out = th.hub.append(checked).expect("append answers");
    assert_eq!(
        out.appended, 0,
        "an old-key entry landed at a seq the new key signs"
    );
    assert_eq!(out.response.refused.len(), 1, "{:?}", out.response.refused);
    assert_eq!(th.source_leaves(), 0);
    log_verifies(th.hub.store.as_ref());
}

/// A registry record as a hub from before logged registry changes wrote it.
fn legacy_record(agent: &Agent, added_at: DateTime<Utc>) -> SourceRecord {
    SourceRecord {
        id: agent.id.clone(),
        scope: agent.scope,
        status: SourceStatus::Active,
        keys: vec![SourceKey {
            key: agent.key_line(),
            from_seq: 1,
            added_at,
        }],
        added_at,
        revoked_at: None,
    }
}

async fn an_old_stores_registry_is_the_starting_point(backend: Backend) {
    let dir = store_dir(backend);
    let gd = Agent::new("gd-a", 1, "440000");
    let bj = Agent::new("bj-a", 2, "110000");
    {
        // The store as an old hub left it: `reg/` records, no registry entry in the log.
        let store = open_store(dir.path());
        let mut wb = WriteBatch::new();
        registry::put(&mut wb, &legacy_record(&gd, t0()));
        registry::put(&mut wb, &legacy_record(&bj, t0()));
        store.apply(wb).expect("write");
        store.flush().expect("flush");
    }
    let silent = i64::from(Campaign::builtin_2018().silent_after_days);
    let th = TestHub::open_at(dir.path(), t0() + Duration::days(silent + 2));
    assert_eq!(th.hub.state().registry.len(), 2);
    let mut gd = gd;
    th.ingest_ok(&gd.batch(&[teachers("440106", "4401060001", "2018-11-01", 100)]))
        .await;
    let old = bulletin::issue(&th.hub, None, &[]).expect("issue");
    assert!(names(&old["silent_sources"], "bj-a"));
    verify_bulletin(&th.hub, &old).expect("verifies before any registry entry");
    assert!(hub_entries(th.hub.store.as_ref()).is_empty());
    log_verifies(th.hub.store.as_ref());

    th.hub.revoke_source("bj-a").expect("revoke");
    let entries = hub_entries(th.hub.store.as_ref());
    match &entries[..] {
        [
            (_, HubEntry::RegistryBaseline(b)),
            (_, HubEntry::SourceRevoked(r)),
        ] => {
            assert_eq!(b.sources.len(), 2);
            assert!(b.sources.iter().all(|s| s.status == SourceStatus::Active));
            assert_eq!(r.source.as_str(), "bj-a");
        }
        other => panic!("unexpected hub entries: {other:?}"),
    }
    // The baseline is the starting point also for the bulletin issued before it.
    verify_bulletin(&th.hub, &old).expect("the old bulletin still verifies");
    log_verifies(th.hub.store.as_ref());
    let before = registry::load_all(th.hub.store.as_ref()).expect("load");
    maintenance::rebuild(th.hub.store.as_ref(), th.hub.campaign.baseline, |_| {}).expect("rebuild");
    assert_eq!(
        registry::load_all(th.hub.store.as_ref()).expect("load"),
        before
    );
}

/// A store that "crashes" after `left` more writes: that write and everything after it
/// fails, as if the process died there (what was written before stays).
struct Crashing {
    inner: Arc<dyn Store>,
    left: Mutex<Option<usize>>,
}

impl Crashing {
    fn crashed(&self) -> bool {
        *self.left.lock().unwrap_or_else(|p| p.into_inner()) == Some(0)
    }

    fn crash() -> StoreError {
        StoreError::Backend {
            op: "apply",
            message: "simulated crash".into(),
        }
    }
}

impl Store for Crashing {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
        self.inner.scan(prefix)
    }
    fn last(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.last(prefix)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        match *left {
            Some(0) => return Err(Crashing::crash()),
            Some(ref mut n) => *n -= 1,
            None => {}
        }
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.crashed() {
            return Err(Crashing::crash());
        }
        self.inner.flush()
    }
}

fn open_over(store: Arc<dyn Store>, at: DateTime<Utc>) -> Hub {
    Hub::open(
        store,
        hub_key(),
        ORIGIN.into(),
        Campaign::builtin_2018(),
        Arc::new(FixedClock::new(at)),
        Limits::default(),
    )
    .expect("open hub")
}

fn a_crash_while_issuing_a_scheduled_bulletin_never_issues_its_slot_twice(backend: Backend) {
    let campaign = Campaign::builtin_2018();
    let slot = bulletin::slot_time(&campaign, 2);
    let at = slot + Duration::minutes(5);
    // Crash after every possible number of writes of one scheduler tick, until a tick
    // completes without crashing.
    for writes in 0.. {
        let dir = store_dir(backend);
        let sled = open_store(dir.path());
        let crashing = Arc::new(Crashing {
            inner: sled.clone(),
            left: Mutex::new(None),
        });
        let hub = open_over(crashing.clone(), at);
        hub.add_source(
            SourceId::parse("gd-a").expect("id"),
            spacesync_shared::RegionCode::parse("440000").expect("scope"),
            &Agent::new("gd-a", 1, "440000").key_line(),
        )
        .expect("add");
        *crashing.left.lock().expect("lock") = Some(writes);
        let book = NoticeBook::load(hub.store.as_ref()).expect("notices");
        let first = schedule::tick(&hub, &book);
        let crashed = crashing.crashed();
        assert_eq!(first.is_err(), crashed, "after {writes} writes: {first:?}");
        drop(hub);

        // Restarted, the scheduler runs again.
        let hub = open_over(sled.clone(), at + Duration::minutes(1));
        let book = NoticeBook::load(hub.store.as_ref()).expect("notices");
        schedule::tick(&hub, &book).expect("tick after restart");
        let for_slot: Vec<bulletin::Listed> = bulletin::list(hub.store.as_ref())
            .expect("list")
            .into_iter()
            .filter(|b| b.scheduled_for == Some(slot))
            .collect();
        assert_eq!(
            for_slot.len(),
            1,
            "crash after {writes} writes: slot {slot} issued {} times",
            for_slot.len()
        );
        for b in for_slot {
            let n = b.number;
            verify_bulletin(&hub, &bulletin::get(hub.store.as_ref(), n).expect("get"))
                .expect("verifies");
        }
        if !crashed {
            break;
        }
        assert!(writes < 100, "a scheduler tick should not take 100 writes");
    }
}

// --- through the real binary ---

fn cli_revoke_then_verify_old_bulletin(backend: Backend) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    common::cli::init(&dir, backend);
    let gd = Agent::new("gd-a", 1, "440000");
    let bj = Agent::new("bj-a", 2, "110000");
    let start = "2018-10-01T08:00:00+08:00";
    for a in [&gd, &bj] {
        ok(
            &dir,
            &[
                "agents",
                "add",
                "--source",
                a.id.as_str(),
                "--scope",
                &a.scope.to_string(),
                "--key",
                &a.key_line(),
                "--now",
                start,
            ],
        );
    }
    // Both sources silent by then: the bulletin names them.
    let issued = "2018-11-20T10:00:00+08:00";
    assert_eq!(ok(&dir, &["bulletin", "issue", "--now", issued]), "1");
    let doc = ok(&dir, &["bulletin", "show", "1", "--format", "json"]);
    let parsed: Value = serde_json::from_str(&doc).expect("bulletin JSON");
    assert!(names(&parsed["silent_sources"], "bj-a"), "{parsed}");
    let file = tmp.path().join("bulletin-1.json");
    std::fs::write(&file, &doc).expect("write bulletin");
    let file = file.to_str().expect("utf-8 path");

    // Revoked at the same instant the bulletin was issued: what counts is the checkpoint.
    assert_eq!(
        ok(&dir, &["agents", "revoke", "bj-a", "--now", issued]),
        "revoked bj-a"
    );
    ok(&dir, &["agents", "revoke", "gd-a"]);
    let out = ok(&dir, &["bulletin", "verify", file]);
    assert!(out.starts_with("ok: bulletin 1"), "{out}");
    let listed: Value =
        serde_json::from_str(&ok(&dir, &["agents", "list", "--json"])).expect("list JSON");
    assert!(
        listed
            .as_array()
            .expect("array")
            .iter()
            .all(|r| r["status"] == "revoked"),
        "{listed}"
    );
    ok(&dir, &["verify"]);
    ok(&dir, &["rebuild"]);
    ok(&dir, &["verify"]);
    let out = ok(&dir, &["bulletin", "verify", file]);
    assert!(out.starts_with("ok: bulletin 1"), "{out}");
}

/// Two issuers at once (the scheduler and an operator, say) never take the same number,
/// and each later bulletin's history names every earlier one.
fn concurrent_issuers_take_distinct_numbers(backend: Backend) {
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let hub = &th.hub;
    let numbers: Vec<u64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..3)
                        .map(|_| {
                            bulletin::issue(hub, None, &[]).expect("issue")["number"]
                                .as_u64()
                                .expect("number")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("issuer"))
            .collect()
    });
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=12).collect::<Vec<_>>(), "{numbers:?}");
    for n in 1..=12u64 {
        let doc = bulletin::get(hub.store.as_ref(), n).expect("stored");
        let history: Vec<u64> = doc["history"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["number"].as_u64())
            .collect();
        assert_eq!(history, (1..n).collect::<Vec<_>>(), "bulletin {n}");
        verify_bulletin(hub, &doc).expect("verifies");
    }
}

backends!(async revoking_sources_an_old_bulletin_named_leaves_it_verifiable, an_old_stores_registry_is_the_starting_point);

backends!(sync registry_changes_are_hub_signed_log_entries_and_rebuild_reproduces_them, a_crash_while_issuing_a_scheduled_bulletin_never_issues_its_slot_twice);

backends!(sync concurrent_issuers_take_distinct_numbers);

backends!(sync cli_revoke_then_verify_old_bulletin);

backends!(sync a_registry_change_between_check_and_append_is_honoured);
