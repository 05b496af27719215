//! Log records are stored in the compact binary layout (`log::record`), and a store whose
//! records are the JSON older hubs wrote opens, verifies, proves, rebuilds and verifies its
//! bulletins exactly as before: the leaf hashes, root, checkpoint, proofs and figures do
//! not depend on how a record is laid out.

mod common;

use common::*;
use serde_json::Value;
use spacesync_hub::log::{self, LogRecord};
use spacesync_hub::store::{SledStore, Store, WriteBatch, keys};
use spacesync_hub::{bulletin, maintenance};
use spacesync_shared::Campaign;
use spacesync_shared::dsse::pae;
use spacesync_shared::merkle::{self, Hash};

/// What a reader can observe of a store, compared whole before and after its records
/// change layout.
#[derive(Debug, PartialEq)]
struct Seen {
    size: u64,
    root: Hash,
    checkpoint: String,
    leaves: Vec<Hash>,
    proofs: Vec<Vec<Hash>>,
    progress: Value,
}

async fn seen(th: &TestHub) -> Seen {
    let store = th.hub.store.as_ref();
    let snap = th.hub.snapshot();
    let size = snap.log_size;
    let leaves: Vec<Hash> = log::iter(store)
        .map(|r| r.expect("leaf").1.leaf_hash())
        .collect();
    let proofs = (0..size)
        .map(|i| log::inclusion_proof(store, i, size).expect("proof"))
        .collect();
    Seen {
        size,
        root: log::root_at(store, size).expect("root"),
        checkpoint: snap.checkpoint.clone(),
        leaves,
        proofs,
        progress: th.get_json("/v1/progress").await,
    }
}

/// Rewrites every log record of the store in `dir` as the JSON an older hub wrote:
/// `serde_json::to_vec(&LogRecord)`, the struct and derive its `Log::append` serialized.
fn rewrite_as_json(dir: &std::path::Path) -> usize {
    let store = SledStore::open(dir).expect("open");
    let mut wb = WriteBatch::new();
    let mut n = 0;
    for r in log::iter(&store) {
        let (index, rec) = r.expect("leaf");
        wb.put(keys::log(index), serde_json::to_vec(&rec).expect("json"));
        n += 1;
    }
    store.apply(wb).expect("apply");
    store.flush().expect("flush");
    n
}

fn first_bytes(dir: &std::path::Path) -> Vec<u8> {
    let store = SledStore::open(dir).expect("open");
    store
        .scan(keys::LOG)
        .map(|r| r.expect("scan").1[0])
        .collect()
}

async fn fill(th: &TestHub, agents: &mut [Agent], rounds: usize) {
    for round in 0..rounds {
        for a in agents.iter_mut() {
            let region = if a.scope.to_string() == "440000" {
                "440106"
            } else {
                "110105"
            };
            let records: Vec<Value> = (0..4)
                .map(|i| {
                    teachers(
                        region,
                        &format!("{region}{:04}", i + 1),
                        "2018-11-19",
                        (100 + round * 10 + i) as u64,
                    )
                })
                .chain([activity(region, "2018-11-10", &format!("活动 {round}"))])
                .collect();
            th.ingest_ok(&a.batch(&records)).await;
        }
    }
}

#[tokio::test]
async fn a_store_of_json_records_opens_verifies_and_proves_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agents = vec![
        Agent::new("gd-a", 1, "440000"),
        Agent::new("bj-a", 2, "110000"),
    ];
    let (before, doc) = {
        let th = TestHub::open(dir.path());
        for a in &agents {
            th.register(a);
        }
        fill(&th, &mut agents, 3).await;
        let doc = bulletin::issue(&th.hub, None, &[]).expect("bulletin");
        (seen(&th).await, doc)
    };
    let firsts = first_bytes(dir.path());
    assert!(
        firsts.iter().all(|b| [1, 4].contains(b)) && firsts.contains(&4),
        "records are written in the binary layout, version 1, a batch's run of them packed \
         and compressed (4); {firsts:?}"
    );
    // The agent's side of the leaf hash: PAE of exactly what was signed.
    assert_eq!(before.leaves.len() as u64, before.size);

    let n = rewrite_as_json(dir.path());
    assert_eq!(n as u64, before.size);
    assert!(first_bytes(dir.path()).iter().all(|b| *b == b'{'));

    let th = TestHub::open(dir.path());
    assert_eq!(seen(&th).await, before, "the JSON store reads differently");
    let store = th.hub.store.as_ref();
    let report = maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {})
        .expect("verify runs");
    assert!(report.ok(), "{:#?}", report.problems);
    bulletin::verify(
        store,
        &Campaign::builtin_2018(),
        &hub_key().verifying_key(),
        ORIGIN,
        &doc,
    )
    .expect("the bulletin verifies against the JSON log");

    // New entries go in as binary beside the old JSON ones; the mixed store verifies,
    // rebuilds to the same figures, and proves every leaf.
    fill(&th, &mut agents, 2).await;
    let mixed = seen(&th).await;
    assert_eq!(&mixed.leaves[..before.leaves.len()], &before.leaves[..]);
    let report = maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {})
        .expect("verify runs");
    assert!(report.ok(), "{:#?}", report.problems);
    maintenance::rebuild(store, Campaign::builtin_2018().baseline, |_| {}).expect("rebuild");
    drop(th);
    // One JSON value per old leaf; the new leaves packed after them.
    let bytes = first_bytes(dir.path());
    assert_eq!(
        bytes.iter().filter(|b| **b == b'{').count() as u64,
        before.size
    );
    assert!(
        bytes[before.size as usize..]
            .iter()
            .all(|b| [1, 4].contains(b))
    );
    assert!(
        (bytes.len() as u64) < mixed.size,
        "the new leaves are packed"
    );
    let th = TestHub::open(dir.path());
    assert_eq!(seen(&th).await, mixed, "rebuilt over a mixed store");
    for (i, leaf) in mixed.leaves.iter().enumerate() {
        let rec = log::read(th.hub.store.as_ref(), i as u64)
            .expect("read")
            .expect("leaf");
        let env = &rec.envelope;
        assert_eq!(
            *leaf,
            merkle::leaf_hash(&pae(&env.payload_type, &env.payload))
        );
        assert!(
            merkle::verify_inclusion(leaf, i as u64, mixed.size, &mixed.proofs[i], &mixed.root)
                .is_ok(),
            "leaf {i}"
        );
    }
}

/// A record exactly as the hub before the binary layout wrote it (its `agents add` entry
/// for `gd-a`, signed with the test hub key; taken from a store made by 2b8f10c): it still reads, to the record whose binary form reads back the
/// same.
#[test]
fn a_json_record_of_an_older_hub_reads() {
    let json = OLD_RECORD.trim().as_bytes();
    let rec = LogRecord::decode(json).expect("the old JSON reads");
    assert_eq!(rec.source, None);
    assert_eq!(rec.seq, 1);
    rec.envelope
        .verify(
            spacesync_hub::views::HUB_ENTRY_PAYLOAD_TYPE,
            &hub_key().verifying_key(),
        )
        .expect("the hub's signature");
    assert_eq!(
        serde_json::to_vec(&rec).expect("json"),
        json,
        "the JSON layout moved"
    );
    let bin = rec.encode().expect("encode");
    assert!(bin.len() < json.len());
    assert_eq!(LogRecord::decode(&bin), Ok(rec));
}

const OLD_RECORD: &str = r#"
{"received_at":"2018-11-20T02:00:00Z","seq":1,"envelope":{"payloadType":"application/vnd.spacesync.hub-entry+json","payload":"eyJraW5kIjoic291cmNlX2FkZGVkIiwic2VxIjoxLCJzb3VyY2UiOiJnZC1hIiwic2NvcGUiOiI0NDAwMDAiLCJrZXkiOiJlZDI1NTE5OmlvamozWFFKOFpYOVV0c3RQTHBkY3NwbkNiOGRsQkliODNTSUFiUVBiMXc9IiwiYXQiOiIyMDE4LTExLTIwVDAyOjAwOjAwWiJ9","signatures":[{"keyid":"3097e2dee2cb4a34b53840cdb705aed71067c36f68db0e0f559c3f3fa043315f","sig":"Xk+vYZbB98vMf0ZAY+pLNCnHZOMV2YU4sVkRExdwg0/uQcrXvG6n4mj8b1051ZbbwRwtdlSzW3rQ24bEf3PqBw=="}]}}
"#;

#[test]
fn damaged_records_are_named_by_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let th = TestHub::open(dir.path());
    th.register(&Agent::new("gd-a", 1, "440000"));
    drop(th);
    let store = SledStore::open(dir.path()).expect("open");
    let good = store.get(&keys::log(0)).expect("get").expect("leaf 0");
    for (bytes, want) in [
        (good[..good.len() - 3].to_vec(), "ends inside its signature"),
        ([&good[..], b"x"].concat(), "1 bytes follow the end"),
        (vec![9, 1, 2], "version 9"),
    ] {
        let mut wb = WriteBatch::new();
        wb.put(keys::log(0), bytes);
        store.apply(wb).expect("apply");
        let err = log::read(&store, 0).expect_err("refused").to_string();
        assert!(
            err.contains("log/0") && err.contains(want),
            "{err} lacks {want}"
        );
    }
}

/// Nodes below `log::FIRST_STORED_LEVEL` are not stored; proofs and roots computed with them
/// taken from the records equal those of a tree keeping every node, for every size, index
/// and pair of sizes — also when a store written before keeps the lower levels.
#[test]
fn proofs_without_the_lowest_levels_stored_equal_the_full_trees() {
    use spacesync_hub::log::{FIRST_STORED_LEVEL, Log, RecordRef};
    use spacesync_shared::merkle::{MemoryTree, NodeSource};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    let mut log = Log::load(&store).expect("load");
    let mut full = MemoryTree::new();
    let key = hub_key();
    let mut wb = WriteBatch::new();
    for i in 0..37u64 {
        let env = spacesync_shared::Envelope::sign(&key, "text/plain", format!("leaf {i}").into());
        let rec = RecordRef {
            received_at: t0(),
            source: None,
            seq: i + 1,
            envelope: &env,
        };
        assert_eq!(log.append(&mut wb, rec).expect("append"), i);
        full.push(log::leaf_hash(&env)).expect("push");
        if i % 5 == 4 || i == 36 {
            log.put_frontier(&mut wb);
            store.apply(std::mem::take(&mut wb)).expect("apply");
        }
    }
    let levels: Vec<u8> = store
        .scan(keys::NODE)
        .map(|r| r.expect("scan").0[keys::NODE.len()])
        .collect();
    assert!(!levels.is_empty() && levels.iter().all(|l| *l >= FIRST_STORED_LEVEL));

    let compare = |what: &str| {
        for size in 0..=37u64 {
            assert_eq!(
                log::root_at(&store, size).ok(),
                merkle::root_at(&full, size).ok(),
                "{what}: root at {size}"
            );
            for index in 0..size {
                assert_eq!(
                    log::inclusion_proof(&store, index, size).ok(),
                    merkle::inclusion_proof(&full, index, size).ok(),
                    "{what}: inclusion of {index} in {size}"
                );
            }
            for old in 0..=size {
                assert_eq!(
                    log::consistency_proof(&store, old, size).ok(),
                    merkle::consistency_proof(&full, old, size).ok(),
                    "{what}: consistency {old} → {size}"
                );
            }
        }
    };
    compare("upper levels stored");
    // A store written before keeps every level.
    let mut wb = WriteBatch::new();
    for level in 0..FIRST_STORED_LEVEL {
        for index in 0..(37u64 >> level) {
            let h = full.node(level, index).expect("node");
            wb.put(keys::node(level, index), h.to_vec());
        }
    }
    store.apply(wb).expect("apply");
    compare("every level stored");
}

/// Rewrites the store in `dir` in the layout of hubs before session 9 (main as of
/// 7f2f8ec): the source index one 48-byte value per entry under `src/<source>\0<seq>`
/// (log index ‖ hash ‖ receive time), and tree nodes stored from level 2. Returns how many
/// index values it wrote.
fn rewrite_in_older_layout(dir: &std::path::Path) -> usize {
    use spacesync_hub::log::index::Run;
    use spacesync_shared::merkle::NodeSource;

    let store = SledStore::open(dir).expect("open");
    let mut wb = WriteBatch::new();
    let mut n = 0;
    for r in store.scan(keys::SRC) {
        let (k, v) = r.expect("scan");
        let last = keys::tail_u64(&k).expect("seq");
        let run = Run::decode(last, &v).expect("a run");
        assert_eq!(v[0], 1, "written as a run");
        let source_part = &k[..k.len() - 8];
        wb.delete(k.clone());
        let mut seq = last;
        while let Some(held) = run.held(seq) {
            wb.put(
                [source_part, &seq.to_be_bytes()].concat(),
                held.to_entry_bytes(),
            );
            n += 1;
            seq -= 1;
        }
    }
    let size = log::iter(&store).count() as u64;
    for level in [2u8, 3] {
        for index in 0..(size >> level) {
            let h = log::StoredNodes(&store).node(level, index).expect("node");
            wb.put(keys::node(level, index), h.to_vec());
        }
    }
    store.apply(wb).expect("apply");
    store.flush().expect("flush");
    n
}

/// Index values per layout: (48-byte per-entry values, runs).
fn index_layouts(dir: &std::path::Path) -> (usize, usize) {
    let store = SledStore::open(dir).expect("open");
    let values: Vec<Vec<u8>> = store.scan(keys::SRC).map(|r| r.expect("scan").1).collect();
    let old = values.iter().filter(|v| v.len() == 48).count();
    (old, values.len() - old)
}

/// The source index keeps one run per batch (one key, not one per entry), and a store of
/// the per-entry index older hubs wrote opens without migration: the same heads, figures
/// and proofs, a resend of an old batch answered with the receipts it got the first time,
/// an old entry withdrawn, new batches indexed as runs beside the old values, `verify`
/// clean and `rebuild` equal over the mixed store.
#[tokio::test]
async fn a_store_of_the_older_per_entry_index_opens_resends_withdraws_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agents = vec![
        Agent::new("gd-a", 1, "440000"),
        Agent::new("bj-a", 2, "110000"),
    ];
    let (before, heads, first_batch, first_answer) = {
        let th = TestHub::open(dir.path());
        for a in &agents {
            th.register(a);
        }
        let first_batch = agents[0].batch(&[
            teachers("440106", "4401060091", "2018-11-12", 90),
            teachers("440106", "4401060092", "2018-11-12", 91),
        ]);
        let first_answer = th.ingest_ok(&first_batch).await;
        fill(&th, &mut agents, 3).await;
        let heads: Vec<_> = agents.iter().map(|a| th.hub.head(&a.id)).collect();
        (seen(&th).await, heads, first_batch, first_answer)
    };
    // 2 sources × (1 + 3) batches, one run each.
    assert_eq!(index_layouts(dir.path()), (0, 7));

    let n = rewrite_in_older_layout(dir.path());
    assert_eq!(n as u64, 2 + 3 * 2 * 5, "one value per entry");
    assert_eq!(index_layouts(dir.path()), (n, 0));

    let th = TestHub::open(dir.path());
    assert_eq!(seen(&th).await, before, "the older index reads differently");
    let now: Vec<_> = agents.iter().map(|a| th.hub.head(&a.id)).collect();
    assert_eq!(now, heads, "heads read from the older index");
    let store = th.hub.store.as_ref();
    let report = maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {})
        .expect("verify runs");
    assert!(report.ok(), "{:#?}", report.problems);

    // A resend of the first batch: found in the older index, the same receipts.
    let again = th.ingest_ok(&first_batch).await;
    assert_eq!(again.receipts, first_answer.receipts, "a resend's receipts");
    assert_eq!(th.log_size(), before.size, "a resend appends nothing");

    // An entry of the older index withdrawn: its school (no other snapshot) goes.
    let school = |p: &Value| {
        p["schools"]
            .as_array()
            .expect("schools")
            .iter()
            .any(|s| s["code"] == "4401060091")
    };
    assert!(school(&th.get_json("/v1/regions/440106").await));
    th.ingest_ok(&agents[0].batch(&[withdrawal(1)])).await;
    fill(&th, &mut agents, 2).await;
    assert!(!school(&th.get_json("/v1/regions/440106").await));
    let mixed = seen(&th).await;
    assert_eq!(&mixed.leaves[..before.leaves.len()], &before.leaves[..]);
    let report = maintenance::verify(store, &hub_key().verifying_key(), ORIGIN, |_| {})
        .expect("verify runs");
    assert!(report.ok(), "{:#?}", report.problems);
    maintenance::rebuild(store, Campaign::builtin_2018().baseline, |_| {}).expect("rebuild");
    let heads: Vec<_> = agents.iter().map(|a| th.hub.head(&a.id)).collect();
    drop(th);
    assert_eq!(index_layouts(dir.path()), (n, 1 + 2 * 2));
    let th = TestHub::open(dir.path());
    assert_eq!(seen(&th).await, mixed, "rebuilt over a mixed index");
    let now: Vec<_> = agents.iter().map(|a| th.hub.head(&a.id)).collect();
    assert_eq!(now, heads, "heads read from a run after older values");
}
