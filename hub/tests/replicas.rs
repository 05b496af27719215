//! Hub replicas on one PostgreSQL database, in one process: each replica is a `Hub` over
//! its own `PgStore` (its own connections), as `serve` on a copy of the data directory
//! is. Ingest interleaved and racing across replicas makes one log without a fork; every
//! replica's memory equals what a fresh start reads and what a rebuild computes; a resend
//! to the other replica is answered with the same receipts; one bulletin per slot; a
//! signed request's nonce is single-use across replicas.

mod common;

use std::sync::Arc;

use chrono::Duration;
use common::*;
use serde_json::Value;
use spacesync_hub::auth::NonceCache;
use spacesync_hub::bulletin;
use spacesync_hub::hub::Hub;
use spacesync_hub::maintenance;
use spacesync_hub::views::{Extension, HubEntry};
use spacesync_shared::RegionCode;
use spacesync_shared::wire::IngestBatch;

/// Everything a replica holds in memory, as text to compare whole: log, checkpoint, heads,
/// registry, alarms, and the views (the roll-up, per-source activity, extensions, and the
/// items: the ledger from memory, the space counts as of the views' position).
fn held(hub: &Hub) -> String {
    let s = hub.snapshot();
    let mut heads: Vec<_> = s.heads.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    heads.sort_by(|a, b| a.0.cmp(&b.0));
    let mut registry: Vec<_> = s.registry.values().cloned().collect();
    registry.sort_by(|a, b| a.id.cmp(&b.id));
    let rollup = s.views.rollup(&hub.campaign);
    let items = s.views.items(hub.store.as_ref()).expect("items");
    format!(
        "size {} root {:?}\ncheckpoint {}\nheads {heads:?}\nregistry {registry:?}\nalarms {:?}\nsources {:?}\nextensions {:?}\nnation {:?}\ntotals {:?}\nflags {:?}\nitems {:?}",
        s.log_size,
        s.log_root,
        s.checkpoint,
        s.alarms,
        s.views.sources(),
        s.views.extensions().collect::<Vec<_>>(),
        rollup.nation,
        rollup.totals,
        rollup.flags,
        items
            .iter()
            .map(|i| (i.meta.clone(), i.record.to_value()))
            .collect::<Vec<_>>(),
    )
}

/// The store verifies (signatures, chains, tree, checkpoint, and stored views = rebuild),
/// and every replica, caught up, holds exactly what a fresh start on the store reads.
async fn all_agree(dir: &std::path::Path, replicas: &[&TestHub]) {
    let fresh = TestHub::open(dir);
    let report = maintenance::verify(
        fresh.hub.store.as_ref(),
        &hub_key().verifying_key(),
        ORIGIN,
        |_| {},
    )
    .expect("verify");
    assert!(report.ok(), "{:#?}", report.problems);
    let want = held(&fresh.hub);
    let progress = fresh.get_json("/v1/progress").await;
    for (i, r) in replicas.iter().enumerate() {
        // A request catches the replica up first.
        assert_eq!(r.get_json("/v1/progress").await, progress, "replica {i}");
        assert_eq!(held(&r.hub), want, "replica {i} differs from a fresh start");
    }
}

/// What an agent has sent so far, to make withdrawals that the hub accepts.
#[derive(Default)]
struct Sent {
    /// Seqs that may still be withdrawn (not withdrawals, not withdrawn).
    withdrawable: Vec<u64>,
}

/// A random batch of 1‥4 records for `a`: space counts of four schools dated back and
/// forth (so some re-walk their subject), activities, withdrawals of earlier entries.
fn random_batch(a: &mut Agent, sent: &mut Sent, rng: &mut Rng) -> IngestBatch {
    let n = 1 + rng.below(4);
    let mut records: Vec<Value> = Vec::new();
    let mut withdrawn = Vec::new();
    for _ in 0..n {
        let seq = a.next + records.len() as u64;
        let pick = rng.below(10);
        if pick < 2 && !sent.withdrawable.is_empty() {
            let i = rng.below(sent.withdrawable.len() as u64) as usize;
            let target = sent.withdrawable.swap_remove(i);
            records.push(withdrawal(target));
            withdrawn.push(target);
            continue;
        }
        let record = if pick < 4 {
            activity("440106", "2018-11-01", &format!("training {seq}"))
        } else {
            let school = format!("44010600{:02}", rng.below(4) + 1);
            let day = 1 + rng.below(28);
            teachers(
                "440106",
                &school,
                &format!("2018-10-{day:02}"),
                100 + rng.below(50),
            )
        };
        records.push(record);
        sent.withdrawable.push(seq);
    }
    a.batch(&records)
}

fn agents() -> Vec<Agent> {
    ["gd-a", "gd-b", "gd-c", "gd-d"]
        .iter()
        .enumerate()
        .map(|(i, id)| Agent::new(id, 10 + i as u8, "440000"))
        .collect()
}

/// Two replicas take batches of four sources in turn and at once (HTTP, through the
/// router: every request catches its replica up first), registry changes and an
/// extension on either: one log, no fork, `verify` passes, and both replicas hold what a
/// fresh start reads.
#[tokio::test]
async fn two_replicas_interleave_into_one_log() {
    let dir = store_dir(Backend::Postgres);
    let a = TestHub::open(dir.path());
    let b = TestHub::open(dir.path());
    let replicas = [&a, &b];
    let mut agents = agents();
    let mut sent: Vec<Sent> = agents.iter().map(|_| Sent::default()).collect();
    // Registered on alternate replicas: each learns of the others' sources by catching up.
    for (i, ag) in agents.iter().enumerate() {
        replicas[i % 2].register(ag);
    }
    let mut rng = Rng::new(0x5eed_0013);
    let mut entries = 0u64;
    for round in 0..40 {
        if round == 20 {
            // A hub entry on one replica between source entries on both.
            b.hub
                .append_hub_entry(|seq, at| {
                    HubEntry::Extension(Extension {
                        seq,
                        region: RegionCode::parse("440000").expect("region"),
                        milestone: "implementation_plan".into(),
                        until: (t0() + Duration::days(10)).date_naive(),
                        reason: "flood".into(),
                        granted_at: at,
                    })
                })
                .expect("extension");
        }
        if round % 4 == 3 {
            // Two sources at once, one on each replica.
            let (i, j) = (rng.below(2) as usize, 2 + rng.below(2) as usize);
            let (left, right) = agents.split_at_mut(2);
            let (sl, sr) = sent.split_at_mut(2);
            let bi = random_batch(&mut left[i], &mut sl[i], &mut rng);
            let bj = random_batch(&mut right[j - 2], &mut sr[j - 2], &mut rng);
            entries += (bi.entries.len() + bj.entries.len()) as u64;
            let (ri, rj) = tokio::join!(a.ingest_ok(&bi), b.ingest_ok(&bj));
            assert_eq!(ri.held_through, left[i].next - 1);
            assert_eq!(rj.held_through, right[j - 2].next - 1);
            continue;
        }
        let i = rng.below(agents.len() as u64) as usize;
        let batch = random_batch(&mut agents[i], &mut sent[i], &mut rng);
        entries += batch.entries.len() as u64;
        let r = replicas[rng.below(2) as usize].ingest_ok(&batch).await;
        assert_eq!(r.held_through, agents[i].next - 1);
    }
    // One log: every source entry once, plus the four registrations and the extension.
    assert_eq!(a.source_leaves(), entries);
    a.get_json("/v1/progress").await;
    assert_eq!(a.log_size(), entries + 5);
    all_agree(dir.path(), &replicas).await;
}

/// Four threads, two per replica, each sending one source's batches as fast as it can
/// through `Hub::ingest`: their commits race for the head, the losers catch up and try
/// again. One log with every entry once, and both replicas hold what a fresh start reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_replicas_commit_one_log() {
    let dir = store_dir(Backend::Postgres);
    let a = TestHub::open(dir.path());
    let b = TestHub::open(dir.path());
    let agents = agents();
    for ag in &agents {
        a.register(ag);
    }
    b.hub.sync().expect("sync");
    const BATCHES: usize = 12;
    let total: u64 = std::thread::scope(|t| {
        let handles: Vec<_> = agents
            .into_iter()
            .enumerate()
            .map(|(i, mut ag)| {
                let hub: Arc<Hub> = if i % 2 == 0 {
                    a.hub.clone()
                } else {
                    b.hub.clone()
                };
                t.spawn(move || {
                    let mut rng = Rng::new(i as u64);
                    let mut sent = Sent::default();
                    let mut n = 0;
                    for _ in 0..BATCHES {
                        let batch = random_batch(&mut ag, &mut sent, &mut rng);
                        n += batch.entries.len() as u64;
                        let out = hub.ingest(batch).expect("ingest");
                        assert_eq!(out.status, 200, "{:?}", out.response.refused);
                        assert_eq!(out.response.held_through, ag.next - 1);
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    assert_eq!(a.source_leaves(), total);
    all_agree(dir.path(), &[&a, &b]).await;
}

/// A batch one replica appended, sent again to the other (the agent's retry after a lost
/// answer, routed elsewhere by the load balancer), is answered as a resend: the same
/// receipts, byte for byte, and nothing appended. Sent to both at once, it is appended
/// once and both answer the same receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_to_the_other_replica_gets_the_same_receipts() {
    let dir = store_dir(Backend::Postgres);
    let a = TestHub::open(dir.path());
    let b = TestHub::open(dir.path());
    let mut ag = Agent::new("gd-a", 7, "440000");
    a.register(&ag);
    let batch = ag.batch(&[
        teachers("440106", "4401060001", "2018-11-05", 100),
        activity("440106", "2018-11-06", "training"),
    ]);
    let first = a.ingest(&batch).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let size = a.log_size();
    let again = b.ingest(&batch).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["receipts"], first.json()["receipts"]);
    assert_eq!(again.json()["held_through"], 2);
    assert_eq!(b.log_size(), size, "the resend appended something");

    // The same new batch to both replicas at once.
    let next = ag.batch(&[teachers("440106", "4401060002", "2018-11-07", 90)]);
    let (ha, hb) = (a.hub.clone(), b.hub.clone());
    let (na, nb) = (next.clone(), next.clone());
    let (ra, rb) = std::thread::scope(|t| {
        let x = t.spawn(move || ha.ingest(na).expect("ingest"));
        let y = t.spawn(move || hb.ingest(nb).expect("ingest"));
        (x.join().expect("a"), y.join().expect("b"))
    });
    assert_eq!((ra.status, rb.status), (200, 200));
    assert_eq!(ra.appended + rb.appended, 1, "appended twice or never");
    assert_eq!(
        serde_json::to_value(&ra.response.receipts).expect("json"),
        serde_json::to_value(&rb.response.receipts).expect("json")
    );
    assert_eq!(a.source_leaves(), 3);
    all_agree(dir.path(), &[&a, &b]).await;
}

/// Two replicas due to issue the same scheduled bulletin at once issue one; two
/// `bulletin issue`s at once take two numbers.
#[test]
fn one_bulletin_per_slot_across_replicas() {
    let dir = store_dir(Backend::Postgres);
    let a = TestHub::open(dir.path());
    let b = TestHub::open(dir.path());
    let due = bulletin::slot_time(&a.hub.campaign, 2) + Duration::minutes(1);
    a.clock.set(due);
    b.clock.set(due);
    for round in 0..5 {
        let issued: Vec<Vec<u64>> = std::thread::scope(|t| {
            let handles: Vec<_> = [&a, &b]
                .map(|r| {
                    let hub = r.hub.clone();
                    t.spawn(move || bulletin::issue_due(&hub, Vec::new).expect("issue_due"))
                })
                .into_iter()
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let all: Vec<u64> = issued.into_iter().flatten().collect();
        assert_eq!(all.len(), 1, "slot {round}: {all:?}");
        let next = bulletin::slot_time(&a.hub.campaign, 3 + round) + Duration::minutes(1);
        a.clock.set(next);
        b.clock.set(next);
    }
    let numbers: Vec<Value> = std::thread::scope(|t| {
        let handles: Vec<_> = [&a, &b]
            .map(|r| {
                let hub = r.hub.clone();
                t.spawn(move || bulletin::issue(&hub, None, &[]).expect("issue")["number"].clone())
            })
            .into_iter()
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut numbers: Vec<u64> = numbers.iter().filter_map(Value::as_u64).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [6, 7]);
    let listed = bulletin::list(a.hub.store.as_ref()).expect("list");
    assert_eq!(listed.len(), 7);
}

/// A signed request's nonce, taken on one replica, is refused on the other (each keeps
/// its own cache in memory; the claim is one insert-if-absent in the database), also
/// when both see it at once.
#[test]
fn a_nonce_is_single_use_across_replicas() {
    let dir = store_dir(Backend::Postgres);
    let a = TestHub::open(dir.path());
    let b = TestHub::open(dir.path());
    let now = t0();
    let (ca, cb) = (NonceCache::default(), NonceCache::default());
    assert!(
        ca.check_and_insert(a.hub.store.as_ref(), "n-1", now, now)
            .expect("a")
            .is_fresh()
    );
    assert!(
        !cb.check_and_insert(b.hub.store.as_ref(), "n-1", now, now)
            .expect("b")
            .is_fresh()
    );
    for i in 0..20 {
        let nonce = format!("race-{i}");
        let (x, y) = std::thread::scope(|t| {
            let x = t.spawn(|| ca.check_and_insert(a.hub.store.as_ref(), &nonce, now, now));
            let y = t.spawn(|| cb.check_and_insert(b.hub.store.as_ref(), &nonce, now, now));
            (
                x.join().expect("a").expect("a").is_fresh(),
                y.join().expect("b").expect("b").is_fresh(),
            )
        });
        assert!(x ^ y, "{nonce}: accepted {} times", x as u8 + y as u8);
    }
}

fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&chrono::Utc)
}

/// The notices the admin role reads on a replica, through its API (the request catches
/// the replica's notice book up first).
async fn notices_on(t: &TestHub) -> Vec<Value> {
    t.get_json("/v1/notices").await["notices"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// One replica holds the scheduler lease and does the clockwork; the other serves the
/// notices it raised. When the holder stops renewing, the lease lapses and the other takes
/// over with the next epoch; the old holder, waking up with its lapsed lease, writes
/// nothing (fenced): no second bulletin for a slot, no notice. Racing for a lapsed lease,
/// one replica gets it. A lone holder whose lease lapsed between two ticks (an accelerated
/// clock: 30 s of hub time pass within one tick) still does its work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_runs_on_the_lease_holder_and_moves_when_it_stops() {
    use spacesync_hub::auth::Role;
    use spacesync_hub::schedule::{self, LEASE_TTL};
    let dir = store_dir(Backend::Postgres);
    let start = at("2018-11-14T09:00:00+08:00");
    let a = TestHub::open_at(dir.path(), start);
    let b = TestHub::open_at(dir.path(), start);
    a.register(&Agent::new("gd-a", 1, "440000"));
    let set = |when| {
        a.clock.set(when);
        b.clock.set(when);
    };
    set(start);
    let la = schedule::acquire(&a.hub, "a", LEASE_TTL)
        .expect("acquire")
        .expect("a takes the free lease");
    assert_eq!(la.epoch, 1);
    assert!(
        schedule::acquire(&b.hub, "b", LEASE_TTL)
            .expect("acquire")
            .is_none(),
        "b took a held lease"
    );
    schedule::tick_leased(&a.hub, &a.notices, &la).expect("tick");
    let store = a.hub.store.clone();
    assert_eq!(bulletin::list(store.as_ref()).expect("list").len(), 1);
    let raised = a.notices.list(Role::Admin).len();
    assert!(raised > 0, "no notice raised on 2018-11-14");
    // The other replica serves what the holder raised.
    assert_eq!(notices_on(&b).await.len(), raised);

    // Renewed by its holder before it lapses, the lease stays with it.
    set(start + Duration::seconds(20));
    let renewed = schedule::acquire(&a.hub, "a", LEASE_TTL)
        .expect("acquire")
        .expect("renewed");
    assert_eq!(renewed.epoch, 1);
    assert!(renewed.expires_at > la.expires_at);
    set(start + Duration::seconds(40));
    assert!(
        schedule::acquire(&b.hub, "b", LEASE_TTL)
            .expect("acquire")
            .is_none()
    );
    // The holder stops; once its lease lapsed, the other replica takes over.
    set(start + Duration::seconds(51));
    let lb = schedule::acquire(&b.hub, "b", LEASE_TTL)
        .expect("acquire")
        .expect("b takes the lapsed lease");
    assert_eq!(lb.epoch, 2);

    // The next slot is due and new notices with it. The old holder wakes up with its
    // lapsed lease: fenced, it writes nothing.
    let next = at("2018-11-19T09:01:00+08:00");
    set(next);
    schedule::tick_leased(&a.hub, &a.notices, &renewed).expect("tick");
    assert_eq!(bulletin::list(store.as_ref()).expect("list").len(), 1);
    assert_eq!(notices_on(&a).await.len(), raised);
    // The holder of the day renews (its lease lapsed on the hub clock, but nobody took it
    // over: the epoch stays) and does the work, once.
    let lb = schedule::acquire(&b.hub, "b", LEASE_TTL)
        .expect("acquire")
        .expect("b");
    assert_eq!(lb.epoch, 2);
    for _ in 0..3 {
        schedule::tick_leased(&b.hub, &b.notices, &lb).expect("tick");
    }
    assert_eq!(bulletin::list(store.as_ref()).expect("list").len(), 2);
    let now_raised = notices_on(&a).await.len();
    assert!(now_raised > raised, "no notice raised on 2018-11-19");
    assert_eq!(notices_on(&b).await.len(), now_raised);

    // Racing for a lapsed lease: exactly one replica gets it.
    for round in 0..5 {
        set(next + Duration::minutes(1 + round));
        let got: Vec<bool> = std::thread::scope(|t| {
            let handles: Vec<_> = [(&a, "a"), (&b, "b")]
                .map(|(r, me)| {
                    let hub = r.hub.clone();
                    t.spawn(move || {
                        schedule::acquire(&hub, me, LEASE_TTL)
                            .expect("acquire")
                            .is_some()
                    })
                })
                .into_iter()
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(
            got.iter().filter(|g| **g).count(),
            1,
            "round {round}: {got:?}"
        );
    }

    // A lone holder on an accelerated clock: its lease lapsed long before the tick that
    // finds the next slot due, and nobody took it over. Its work is done, once.
    let (holder, me) = if schedule::acquire(&a.hub, "a", LEASE_TTL)
        .expect("acquire")
        .is_some()
    {
        (&a, "a")
    } else {
        (&b, "b")
    };
    let lease = schedule::acquire(&holder.hub, me, LEASE_TTL)
        .expect("acquire")
        .expect("held");
    set(at("2018-11-26T09:05:00+08:00"));
    schedule::tick_leased(&holder.hub, &holder.notices, &lease).expect("tick");
    assert_eq!(
        bulletin::list(store.as_ref()).expect("list").len(),
        3,
        "the holder's lapsed lease stopped its work"
    );
}

/// An agent's fetch recorded on one replica and its acknowledgement on the other: the
/// stored notice keeps both (a notice change is a merge committed at the head, never an
/// overwrite of what another replica recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notice_deliveries_recorded_on_two_replicas_are_both_kept() {
    use spacesync_hub::auth::Role;
    use spacesync_hub::schedule;
    let dir = store_dir(Backend::Postgres);
    let start = at("2018-11-14T09:00:00+08:00");
    let a = TestHub::open_at(dir.path(), start);
    let b = TestHub::open_at(dir.path(), start);
    let gd = Agent::new("gd-a", 1, "440000");
    a.register(&gd);
    a.clock.set(start);
    b.clock.set(start);
    schedule::tick(&a.hub, &a.notices).expect("tick");
    b.notices.refresh(b.hub.store.as_ref()).expect("refresh");
    let store = a.hub.store.as_ref();
    let fetched = a
        .notices
        .fetch(store, &gd.id, gd.scope, 0, 100, start)
        .expect("fetch");
    assert!(!fetched.is_empty());
    let through = fetched.iter().map(|n| n.id).max().unwrap_or(0);
    // b's book has not seen the fetch; its acknowledgement must not erase it.
    let acked = b
        .notices
        .ack(
            store,
            &gd.id,
            gd.scope,
            through,
            start + Duration::minutes(1),
        )
        .expect("ack");
    assert_eq!(acked, fetched.len());
    let fresh = spacesync_hub::notices::NoticeBook::load(store).expect("load");
    let mine: Vec<_> = fresh
        .list(Role::Admin)
        .into_iter()
        .filter(|n| fetched.iter().any(|f| f.id == n.id))
        .collect();
    assert_eq!(mine.len(), fetched.len());
    for n in mine {
        assert_eq!(n.state, "acknowledged", "{}", n.id);
        assert_eq!(
            n.fetched_by,
            std::slice::from_ref(&gd.id),
            "the fetch was overwritten"
        );
        assert_eq!(n.acked_by, std::slice::from_ref(&gd.id));
    }
}

/// Two replicas' `exclusively` sections on one database never overlap: a hub's start runs
/// `views::prepare` in one, so replicas started together convert the stored views one at a
/// time (the second then finds nothing to do) instead of rewriting the same keys at once,
/// the slower undoing what the faster ingested after it (the review of session 21).
#[test]
fn replicas_start_their_views_one_at_a_time() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    let dir = store_dir(Backend::Postgres);
    let (a, b) = (open_store(dir.path()), open_store(dir.path()));
    let inside = Arc::new(AtomicBool::new(false));
    let (entered, entered_rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let first = std::thread::spawn({
        let inside = inside.clone();
        move || {
            a.exclusively(&mut || {
                inside.store(true, Ordering::SeqCst);
                entered.send(()).expect("send");
                go_rx.recv().expect("go");
                inside.store(false, Ordering::SeqCst);
                Ok(())
            })
        }
    });
    entered_rx.recv().expect("the first is inside");
    let (second_in, second_in_rx) = mpsc::channel();
    let second = std::thread::spawn({
        let inside = inside.clone();
        move || {
            b.exclusively(&mut || {
                second_in.send(inside.load(Ordering::SeqCst)).expect("send");
                Ok(())
            })
        }
    });
    assert!(
        second_in_rx
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "the second replica got in while the first was inside"
    );
    go.send(()).expect("go");
    assert_eq!(
        second_in_rx.recv_timeout(std::time::Duration::from_secs(30)),
        Ok(false),
        "the second gets in once the first is out"
    );
    first.join().expect("first").expect("first's section");
    second.join().expect("second").expect("second's section");
}
