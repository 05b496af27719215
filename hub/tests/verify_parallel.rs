//! `verify` on every core reports exactly what the serial reference reports: the same
//! problems, worded the same, in the same order, whatever damage a log carries and
//! wherever it falls against the chunks and pieces the parallel path cuts the log into.
//!
//! The serial reference ([`Checking::Serial`]) checks each leaf's signature on its own
//! with single verification; the parallel path checks chunks in batches on worker
//! threads while the walk consumes the chunk before. The log built here holds three
//! sources (one rotating its key midway, one registered midway), hub entries among them,
//! and spans the first three chunks.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use common::*;
use curve25519_dalek::scalar::Scalar;
use proptest::prelude::*;
use spacesync_hub::log::{self, LogRecord};
use spacesync_hub::log_check::{Checking, FIRST_CHUNK};
use spacesync_hub::maintenance::FEED_CHUNK;
use spacesync_hub::maintenance::{self, VerifyReport};
use spacesync_hub::store::{Store, WriteBatch};
use spacesync_shared::dsse::pae;

const SEED_A: u8 = 1;
const SEED_A_ROTATED: u8 = 9;

/// Where each kind of leaf stands in the good store's log.
struct Layout {
    size: u64,
    /// Indexes of the hub's own entries.
    hub: Vec<u64>,
    /// Indexes of each source's entries.
    by_source: BTreeMap<String, Vec<u64>>,
}

/// A closed store whose log spans three chunks of the parallel path (256, 512 and 1,024
/// leaves): by index, two registry entries, then sources gd-a, gd-b and (registered at
/// about 300) bj-c in batches of 37 to 200, gd-a's key rotated at about 500.
fn good_store(backend: Backend) -> &'static Path {
    good(backend).0.path()
}

fn layout(backend: Backend) -> &'static Layout {
    &good(backend).1
}

fn good(backend: Backend) -> &'static (tempfile::TempDir, Layout) {
    static SLED: OnceLock<(tempfile::TempDir, Layout)> = OnceLock::new();
    static PG: OnceLock<(tempfile::TempDir, Layout)> = OnceLock::new();
    let cell = match backend {
        Backend::Sled => &SLED,
        Backend::Postgres => &PG,
    };
    cell.get_or_init(|| {
        let dir = store_dir(backend);
        let th = TestHub::open(dir.path());
        let mut a = Agent::new("gd-a", SEED_A, "440000");
        let mut b = Agent::new("gd-b", 2, "440000");
        let mut c = Agent::new("bj-c", 3, "110000");
        th.register(&a);
        th.register(&b);
        let ingest = |agent: &mut Agent, n: u64| {
            let records: Vec<_> = (0..n)
                .map(|i| {
                    if agent.id.as_str() == "bj-c" {
                        activity("110105", "2018-11-05", &format!("活动 {}", agent.next + i))
                    } else {
                        let seq = agent.next + i;
                        teachers(
                            "440106",
                            &format!("44010600{:02}", seq % 90),
                            "2018-11-05",
                            seq,
                        )
                    }
                })
                .collect();
            let out = th.hub.ingest(agent.batch(&records)).expect("ingest");
            assert_eq!(out.status, 200, "{:?}", out.response);
        };
        ingest(&mut a, 120);
        ingest(&mut b, 100);
        ingest(&mut a, 80);
        th.register(&c);
        ingest(&mut c, 60);
        ingest(&mut b, 37);
        ingest(&mut a, 90);
        // gd-a signs with a new key from its next seq on.
        let rotated = Agent::new("gd-a", SEED_A_ROTATED, "440000");
        th.hub
            .rotate_source("gd-a", &rotated.key_line(), None)
            .expect("rotate");
        a.key = rotated.key;
        ingest(&mut a, 150);
        ingest(&mut c, 80);
        ingest(&mut b, 200);
        ingest(&mut a, 60);
        // As a clean stop does: every summary under its own key (the damage below cuts
        // the last one).
        th.hub.fold_summaries().expect("fold");
        assert!(
            th.log_size() > (FIRST_CHUNK * 3) as u64,
            "{}",
            th.log_size()
        );
        let mut layout = Layout {
            size: th.log_size(),
            hub: Vec::new(),
            by_source: BTreeMap::new(),
        };
        for r in log::iter(th.hub.store.as_ref()) {
            let (i, rec) = r.expect("leaf");
            match rec.source {
                None => layout.hub.push(i),
                Some(s) => layout.by_source.entry(s.to_string()).or_default().push(i),
            }
        }
        (dir, layout)
    })
}

fn read(s: &dyn Store, index: u64) -> LogRecord {
    log::read(s, index).expect("read").expect("leaf")
}

fn write(s: &dyn Store, index: u64, rec: &LogRecord) {
    log::replace_record(s, index, Some(rec.encode().expect("encode"))).expect("replace");
}

fn sig_bytes(rec: &LogRecord) -> [u8; 64] {
    rec.envelope.signatures[0]
        .sig
        .as_slice()
        .try_into()
        .expect("64-byte signature")
}

fn set_sig(s: &dyn Store, index: u64, f: impl FnOnce(&LogRecord) -> [u8; 64]) {
    let mut rec = read(s, index);
    let sig = f(&rec);
    rec.envelope.signatures[0].sig = sig.to_vec();
    write(s, index, &rec);
}

/// The secret scalar of the ed25519-dalek signing key made from `[seed; 32]`.
fn secret_scalar(seed: u8) -> Scalar {
    spacesync_shared::sig::secret_scalar(&[seed; 32])
}

/// The key holder's signature with R = [r]B + T[t]: the equation holds up to the torsion,
/// so a batch check without the rule's torsion check accepts it some of the time.
fn torsion_sig(rec: &LogRecord, seed: u8, t: usize, nonce: u64) -> [u8; 64] {
    let msg = pae(&rec.envelope.payload_type, &rec.envelope.payload);
    let r = Scalar::from(nonce.wrapping_mul(0x9E37_79B9) | 1);
    spacesync_shared::sig::sign_with_torsion_in_r(&secret_scalar(seed), &r, t, &msg)
}

/// The same signature with S + L: the same residue, a non-canonical encoding.
fn s_plus_l(rec: &LogRecord) -> [u8; 64] {
    let mut b = sig_bytes(rec);
    let l = hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
        .expect("hex");
    let mut carry = 0u16;
    for i in 0..32 {
        let v = b[32 + i] as u16 + l[i] as u16 + carry;
        b[32 + i] = v as u8;
        carry = v >> 8;
    }
    b
}

/// The seed of the key that signs the source leaf `rec` (gd-a rotated midway).
fn signer_seed(s: &dyn Store, rec: &LogRecord) -> Option<u8> {
    match rec.source.as_ref()?.as_str() {
        "gd-a" => {
            let rotated_from = spacesync_hub::registry::load_all(s)
                .expect("registry")
                .into_iter()
                .find(|r| r.id.as_str() == "gd-a")
                .and_then(|r| r.keys.get(1).map(|k| k.from_seq))
                .expect("gd-a rotated");
            Some(if rec.seq >= rotated_from {
                SEED_A_ROTATED
            } else {
                SEED_A
            })
        }
        "gd-b" => Some(2),
        "bj-c" => Some(3),
        _ => None,
    }
}

/// `verify` of a damaged copy of the good store, with each way of checking.
fn reports(backend: Backend, damage: impl FnOnce(&dyn Store)) -> Vec<(Checking, VerifyReport)> {
    let copy = copy_of(good_store(backend));
    let store = open_store(copy.path());
    let store = store.as_ref();
    damage(store);
    let key = hub_key().verifying_key();
    [Checking::Serial, parallel(1), parallel(2), parallel(4)]
        .into_iter()
        .map(|how| {
            let report = maintenance::verify_with(store, &key, ORIGIN, how, |_| {})
                .unwrap_or_else(|e| panic!("{how:?}: {e}"));
            (how, report)
        })
        .collect()
}

fn parallel(threads: usize) -> Checking {
    Checking::Parallel {
        threads: threads.try_into().expect("threads > 0"),
    }
}

/// Every way of checking gives the serial report; returns it.
fn same_reports(name: &str, reports: Vec<(Checking, VerifyReport)>) -> VerifyReport {
    let mut all = reports.into_iter();
    let (_, serial) = all.next().expect("serial");
    for (how, got) in all {
        assert_eq!(
            (got.leaves, got.sources, &got.problems),
            (serial.leaves, serial.sources, &serial.problems),
            "{name}: {how:?} differs from the serial reference"
        );
    }
    serial
}

/// Bad signatures at the first and last leaf of chunks, between the pieces threads take, in the
/// middle, from every source and on hub entries: each named as single verification names
/// it, in log order, by every way of checking.
fn bad_signatures_wherever_they_fall_are_reported_as_single_verification_reports_them(
    backend: Backend,
) {
    let first = FIRST_CHUNK as u64;
    let layout = layout(backend);
    let mut bad: Vec<u64> = vec![
        // Chunk edges: 255 | 256 and 767 | 768.
        first - 1,
        first,
        3 * first - 1,
        3 * first,
        // Piece edges inside the second chunk (511 | 512), and the middle of a piece.
        2 * first - 1,
        2 * first,
        first + first / 2 - 1,
        first + first / 2,
        // A run of three, and the last leaf.
        100,
        101,
        102,
        layout.size - 1,
    ];
    // Every source, and every hub entry after the first.
    for leaves in layout.by_source.values() {
        bad.push(leaves[leaves.len() / 2]);
    }
    bad.extend(&layout.hub[1..]);
    bad.sort_unstable();
    bad.dedup();
    let reports = reports(backend, |s| {
        for &i in &bad {
            set_sig(s, i, |rec| {
                let mut b = sig_bytes(rec);
                b[40] ^= 0x10;
                b
            });
        }
    });
    let report = same_reports("flipped signature bits", reports);
    // Each damaged leaf once, in order; a signature is not in the tree, so nothing else.
    let named: Vec<u64> = report
        .problems
        .iter()
        .map(|p| {
            assert!(p.contains("bad signature by key"), "{p}");
            p.strip_prefix("log leaf ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no leaf in {p}"))
        })
        .collect();
    assert_eq!(named, bad, "{:#?}", report.problems);
    for source in layout.by_source.keys() {
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains(&format!("({source} seq "))),
            "no damage reported for {source}: {:#?}",
            report.problems
        );
    }
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with(&format!("log leaf {} (hub entry ", layout.hub[1]))),
        "{:#?}",
        report.problems
    );
}

/// Signatures the bare batch equation may accept but the rule refuses — torsion in R
/// (each of the seven small-order points, many nonces) and S + L — inside runs of honest
/// signatures by the same key: refused at their leaf by every way of checking.
fn torsion_and_non_canonical_signatures_are_refused_inside_honest_runs(backend: Backend) {
    for round in 0..4u64 {
        let at: Vec<u64> = (0..8).map(|k| 10 + round * 3 + k * 97).collect();
        let placed = at.clone();
        let reports = reports(backend, |s| {
            for (k, &i) in placed.iter().enumerate() {
                set_sig(s, i, |rec| match k {
                    7 => s_plus_l(rec),
                    t => {
                        let seed = signer_seed(s, rec).expect("a source leaf");
                        torsion_sig(rec, seed, t + 1, round * 8 + k as u64)
                    }
                });
            }
        });
        let report = same_reports(&format!("torsion round {round}"), reports);
        assert_eq!(report.problems.len(), at.len(), "{:#?}", report.problems);
        for (p, i) in report.problems.iter().zip(&at) {
            assert!(
                p.starts_with(&format!("log leaf {i} (")) && p.contains("bad signature by key"),
                "{p}"
            );
        }
    }
}

/// One way to damage a leaf.
#[derive(Debug, Clone)]
enum Damage {
    /// A bit of the signature flipped.
    FlipSig(usize),
    /// A byte of the payload changed (the tree, the chain and the signature break).
    FlipPayload(usize),
    /// Signed by the key holder with a torsion-carrying R.
    Torsion(usize),
    /// S + L.
    SPlusL,
    /// The signature of another leaf.
    SigOf(u64),
    /// The source index entry of the leaf deleted.
    DropIndex,
    /// The leaf deleted (the walk stops there).
    Delete,
    /// The record no longer decodes (the walk stops there).
    Garble,
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (0usize..512).prop_map(Damage::FlipSig),
        2 => (0usize..400).prop_map(Damage::FlipPayload),
        2 => (1usize..8).prop_map(Damage::Torsion),
        1 => Just(Damage::SPlusL),
        1 => (0u64..1000).prop_map(Damage::SigOf),
        1 => Just(Damage::DropIndex),
        1 => Just(Damage::Delete),
        1 => Just(Damage::Garble),
    ]
}

fn apply(s: &dyn Store, index: u64, size: u64, d: &Damage) {
    // A leaf already deleted or garbled by an earlier damage stays so.
    let Ok(Some(rec)) = log::read(s, index) else {
        return;
    };
    match d {
        Damage::FlipSig(bit) => set_sig(s, index, |rec| {
            let mut b = sig_bytes(rec);
            b[bit / 8] ^= 1 << (bit % 8);
            b
        }),
        Damage::FlipPayload(at) => {
            let mut rec = rec;
            let n = rec.envelope.payload.len();
            rec.envelope.payload[at % n] ^= 0x04;
            write(s, index, &rec);
        }
        Damage::Torsion(t) => {
            if let Some(seed) = signer_seed(s, &rec) {
                set_sig(s, index, |rec| torsion_sig(rec, seed, *t, index));
            }
        }
        Damage::SPlusL => set_sig(s, index, s_plus_l),
        Damage::SigOf(other) => {
            if let Ok(Some(other)) = log::read(s, other % size) {
                set_sig(s, index, |_| sig_bytes(&other));
            }
        }
        Damage::DropIndex => {
            if let Some(source) = &rec.source
                && let Ok(Some(key)) = spacesync_hub::log::index::key_of(s, source, rec.seq)
            {
                let mut b = WriteBatch::new();
                b.delete(key);
                s.apply(b).expect("apply");
            }
        }
        Damage::Delete => log::replace_record(s, index, None).expect("remove leaf"),
        Damage::Garble => {
            // Cut short: the record no longer reads.
            let bytes = rec.encode().expect("encode");
            log::replace_record(s, index, Some(bytes[..bytes.len() / 2].to_vec()))
                .expect("replace");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Random damage at random leaves: 1, 2 and 4 worker threads give the serial report.
    #[test]
    fn random_damage_gives_the_serial_report_on_any_number_of_threads(
        damage in proptest::collection::vec((0u64..1000, damage_strategy()), 1..12)
    ) {
        let size = layout(Backend::Sled).size;
        let reports = reports(Backend::Sled, |s| {
            for (at, d) in &damage {
                apply(s, at % size, size, d);
            }
        });
        same_reports(&format!("{damage:?}"), reports);
    }
}

/// The untouched log verifies on every way of checking.
fn the_good_log_verifies_on_any_number_of_threads(backend: Backend) {
    let report = same_reports("good", reports(backend, |_| {}));
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.sources, 3);
}

/// On every core the views are rebuilt from the leaves the walk has read and parsed (fed to
/// the views thread in messages of 256 leaves, [`FEED_CHUNK`]), serially from the log itself:
/// stored views damaged at the log's end, past the first message, are named alike by both.
fn views_damaged_at_the_logs_end_are_named_by_every_way_of_checking(backend: Backend) {
    let last = |s: &dyn Store, prefix: &[u8]| -> (Vec<u8>, Vec<u8>) {
        s.scan(prefix).last().expect("a key").expect("read")
    };
    let put = |s: &dyn Store, k: Vec<u8>, v: Vec<u8>| {
        let mut b = WriteBatch::new();
        b.put(k, v);
        s.apply(b).expect("apply");
    };
    let cases: [(&str, &[u8]); 3] = [
        ("last space count block cut short", b"v/c/"),
        ("last summary cut short", b"v/s/"),
        ("last ledger item cut short", b"v/i/"),
    ];
    for (name, prefix) in cases {
        let report = same_reports(
            name,
            reports(backend, |s| {
                let (k, v) = last(s, prefix);
                assert!(
                    keys_tail(&k) > 2 * FEED_CHUNK as u64 || prefix == b"v/s/",
                    "{name}: the key is not past the first message"
                );
                put(s, k, v[..v.len() / 2].to_vec());
            }),
        );
        assert!(
            report.problems.iter().any(|p| p.contains("stored")),
            "{name}: {:#?}",
            report.problems
        );
    }
    // A changed count, not cut short: the rebuilt and the stored ones differ.
    let report = same_reports(
        "last space count block changed",
        reports(backend, |s| {
            let (k, mut v) = last(s, b"v/c/");
            let at = v.len() - 1;
            v[at] ^= 0x01;
            put(s, k, v);
        }),
    );
    assert!(!report.ok(), "a changed count: verify found nothing");
}

/// The log index a view key ends with.
fn keys_tail(k: &[u8]) -> u64 {
    k.len()
        .checked_sub(8)
        .and_then(|at| k[at..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

backends!(sync bad_signatures_wherever_they_fall_are_reported_as_single_verification_reports_them, torsion_and_non_canonical_signatures_are_refused_inside_honest_runs, the_good_log_verifies_on_any_number_of_threads, views_damaged_at_the_logs_end_are_named_by_every_way_of_checking);
