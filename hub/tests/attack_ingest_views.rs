//! Random ingest through the real hub (signatures, chains, batch receipts, the views
//! written in the ingest batch), with what an agent and a network do to it: batches that
//! resend entries already held before new ones, batches whose last entry is forged (the
//! prefix is held), withdrawals (some refused), hub entries (deadline extensions) between
//! them, and restarts anywhere. Checked on the way: every batch receipt covers exactly the
//! held entries of its batch, in seq order, each at a leaf of the log holding that entry's
//! hash, leaves rising with seqs, a resent entry at its first leaf. At the end: the hub
//! serves the same figures live, after a restart, and after `rebuild`; `verify` is clean.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use serde_json::Value;
use spacesync_hub::log;
use spacesync_hub::maintenance;
use spacesync_hub::store::SledStore;
use spacesync_hub::views::{Extension, HubEntry};
use spacesync_shared::Campaign;
use spacesync_shared::clock::Clock;
use spacesync_shared::wire::{BatchReceipt, IngestBatch, ReceiptForm};

#[derive(Debug, Clone)]
enum Op {
    /// A batch from source `src`: `resend` entries already held re-sent first, then the
    /// new records, the last one forged when `forge`.
    Batch {
        src: usize,
        resend: usize,
        snaps: Vec<(u8, i8, u16)>,
        withdraw: Option<u8>,
        forge: bool,
    },
    /// A deadline extension (a hub entry).
    Extend,
    /// The hub stops and starts again.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (
            0..2usize,
            0..4usize,
            prop::collection::vec((0..6u8, -3..6i8, 0..500u16), 0..6),
            prop::option::weighted(0.3, 0..20u8),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(src, resend, snaps, withdraw, forge)| Op::Batch {
                src,
                resend,
                snaps,
                withdraw,
                forge,
            }),
        1 => Just(Op::Extend),
        2 => Just(Op::Restart),
    ]
}

/// What the hub serves about its views (the source list sorted: its order is a hash
/// map's).
async fn answers(th: &TestHub) -> Vec<Value> {
    let mut pages = Vec::new();
    for path in [
        "/v1/progress",
        "/v1/regions/440000",
        "/v1/regions/440106",
        "/v1/sources",
    ] {
        pages.push(th.get_json(path).await);
    }
    if let Some(list) = pages[3]["sources"].as_array_mut() {
        list.sort_by_key(|s| s["source"].to_string());
    }
    pages
}

/// Opens the hub again once the one dropped has let go of the store: sled's flusher thread
/// can hold the directory's lock for a moment after the last handle is dropped (a new
/// process, as a real restart is, never meets this).
fn reopen(dir: &std::path::Path) -> TestHub {
    for _ in 0..100 {
        if SledStore::open(dir).is_ok() {
            // That handle's own flusher may hold the lock a moment too: try the hub until
            // it opens.
            for _ in 0..100 {
                let th = std::panic::catch_unwind(|| TestHub::open(dir));
                if let Ok(th) = th {
                    return th;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    TestHub::open(dir)
}

fn open_store(dir: &std::path::Path) -> SledStore {
    for _ in 0..100 {
        if let Ok(s) = SledStore::open(dir) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    SledStore::open(dir).expect("open")
}

fn run(ops: &[Op]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut th = TestHub::open(dir.path());
    let mut agents = [
        Agent::new("gd-a", 1, "440000"),
        Agent::new("gd-b", 2, "440000"),
    ];
    for a in &agents {
        th.register(a);
    }
    // Each source's held envelopes, by seq (from 1), and the leaf each was first held at.
    let mut held: [Vec<spacesync_shared::Envelope>; 2] = [Vec::new(), Vec::new()];
    type First = BTreeMap<u64, (u64, chrono::DateTime<chrono::Utc>)>;
    let mut leaf: [First; 2] = [BTreeMap::new(), BTreeMap::new()];
    let baseline = Campaign::builtin_2018().baseline;
    for (n, op) in ops.iter().enumerate() {
        // Time moves on, so a resent entry answered with a new time would show.
        th.clock.set(th.clock.now() + chrono::Duration::seconds(61));
        match op {
            Op::Restart => {
                drop(th);
                th = reopen(dir.path());
            }
            Op::Extend => {
                th.hub
                    .append_hub_entry(|seq, at| {
                        HubEntry::Extension(Extension {
                            seq,
                            region: "440000".parse().expect("region"),
                            milestone: "contact_form".into(),
                            until: chrono::NaiveDate::from_ymd_opt(2018, 12, 1).expect("date"),
                            reason: format!("op {n}"),
                            granted_at: at,
                        })
                    })
                    .expect("extend");
            }
            Op::Batch {
                src,
                resend,
                snaps,
                withdraw,
                forge,
            } => {
                let a = &mut agents[*src];
                let mut records: Vec<Value> = snaps
                    .iter()
                    .map(|(school, day, teachers_n)| {
                        let date = baseline + chrono::Duration::days(i64::from(*day) * 4);
                        teachers(
                            "440106",
                            &format!("41440106{:02}", school),
                            &date.to_string(),
                            u64::from(*teachers_n),
                        )
                    })
                    .collect();
                if let Some(t) = withdraw {
                    records.push(withdrawal(u64::from(*t) % a.next.max(2) + 1));
                }
                if records.is_empty() && *resend == 0 {
                    continue;
                }
                let first_new = a.next;
                let mut probe = a.clone();
                let mut entries: Vec<_> = held[*src]
                    .iter()
                    .skip(held[*src].len().saturating_sub(*resend))
                    .cloned()
                    .collect();
                let resent = entries.len();
                for r in &records {
                    entries.push(probe.sign_next(r));
                }
                if *forge
                    && entries.len() > resent
                    && let Some(last) = entries.last_mut()
                {
                    last.signatures[0].sig[7] ^= 0x10;
                }
                if entries.is_empty() {
                    continue;
                }
                let batch = IngestBatch {
                    source: a.id.clone(),
                    entries: entries.clone(),
                };
                let out = th
                    .hub
                    .ingest_with(batch, ReceiptForm::Batch)
                    .expect("ingest");
                let held_through = out.response.held_through;
                // The chain moves by what the hub holds.
                for env in &entries[resent..] {
                    let e = spacesync_shared::Entry::from_payload(&env.payload).expect("entry");
                    if e.seq <= held_through && e.seq >= first_new {
                        a.advance(env);
                        held[*src].push(env.clone());
                    }
                }
                // The batch receipt: exactly the held entries of the batch, each at a leaf
                // holding its hash; rising leaves; resent entries at their first leaf.
                let covered: Vec<u64> = entries
                    .iter()
                    .map(|env| {
                        spacesync_shared::Entry::from_payload(&env.payload)
                            .expect("entry")
                            .seq
                    })
                    .take_while(|seq| *seq <= held_through)
                    .collect();
                let Some(env) = &out.response.batch_receipt else {
                    assert!(
                        covered.is_empty(),
                        "op {n}: no batch receipt for {covered:?}"
                    );
                    continue;
                };
                assert!(out.response.receipts.is_empty(), "op {n}: both forms");
                let b = BatchReceipt::open(env, &hub_key().verifying_key())
                    .unwrap_or_else(|e| panic!("op {n}: {e}"));
                assert_eq!(b.source, a.id);
                let seqs: Vec<u64> = b.entries.iter().map(|i| i.seq).collect();
                assert_eq!(seqs, covered, "op {n}: what the batch receipt covers");
                for item in &b.entries {
                    let rec = log::read(th.hub.store.as_ref(), item.log_index)
                        .expect("read")
                        .unwrap_or_else(|| panic!("op {n}: no leaf {}", item.log_index));
                    assert_eq!(rec.source.as_ref(), Some(&a.id), "op {n}");
                    assert_eq!(rec.seq, item.seq, "op {n}");
                    assert_eq!(rec.envelope.payload_hash(), item.entry_hash, "op {n}");
                    let first = *leaf[*src]
                        .entry(item.seq)
                        .or_insert((item.log_index, item.received_at));
                    assert_eq!(
                        first,
                        (item.log_index, item.received_at),
                        "op {n}: seq {} moved or was received again",
                        item.seq
                    );
                }
            }
        }
    }
    // The answers say when they were made: the same instant for each.
    th.clock.set(t0());
    let live = rt.block_on(answers(&th));
    drop(th);
    let th = reopen(dir.path());
    assert_eq!(rt.block_on(answers(&th)), live, "after a restart");
    drop(th);
    {
        let store = open_store(dir.path());
        maintenance::rebuild(&store, baseline, |_| {}).expect("rebuild");
        let report = maintenance::verify(&store, &hub_key().verifying_key(), ORIGIN, |_| {})
            .expect("verify");
        assert!(report.ok(), "{:#?}", report.problems);
    }
    let th = reopen(dir.path());
    assert_eq!(rt.block_on(answers(&th)), live, "after rebuild");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn served_figures_live_equal_restarted_equal_rebuilt(ops in prop::collection::vec(op(), 1..25)) {
        run(&ops);
    }
}
