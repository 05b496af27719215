//! Review of 546de0e: records decoded into reused slots, and the parallel walk that
//! reuses the slots of a chunk walked before.
//!
//! 1. `decode_into` over a slot in any earlier state (a good record, a hostile one that
//!    failed half-way, a JSON one) reads exactly as `decode` alone: the same record or
//!    the same error, nothing of the earlier record left behind.
//! 2. `verify` walking in parallel (slots reused from chunk 0 for chunk 2) reports what
//!    the serial reference (fresh records) reports, with leaves in chunk 0 carrying more
//!    signatures, a longer payload type and another source than the leaves that later
//!    take their slots, and a half-readable record in chunk 2.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use spacesync_hub::log::record::{self, RecordRef};
use spacesync_hub::log::{self, LogRecord};
use spacesync_hub::log_check::{Checking, FIRST_CHUNK};
use spacesync_hub::maintenance;
use spacesync_hub::store::Store;
use spacesync_shared::SourceId;
use spacesync_shared::dsse::{Envelope, EnvelopeSignature};

fn random_record(rng: &mut Rng) -> LogRecord {
    let sources = ["gd-a", "gd-b", "bj-c", "x1"];
    let source = if rng.chance(25) {
        None
    } else {
        let id: &&str = rng.pick(&sources[..]);
        Some(SourceId::parse(id).expect("id"))
    };
    let n_sigs = rng.below(4) as usize;
    let signatures = (0..n_sigs)
        .map(|i| EnvelopeSignature {
            keyid: if rng.chance(50) {
                // A lower-case hex id: stored as 32 raw bytes.
                (0..64)
                    .map(|_| *rng.pick(&['0', '7', 'a', 'f'][..]))
                    .collect()
            } else {
                format!("key-{i}-{}", "z".repeat(rng.below(40) as usize))
            },
            sig: (0..rng.below(100)).map(|b| b as u8).collect(),
        })
        .collect();
    let received_at: DateTime<Utc> = DateTime::from_timestamp(
        rng.range(0, 2_000_000_000) as i64,
        rng.below(1_000_000_000) as u32,
    )
    .expect("time");
    LogRecord {
        received_at,
        source,
        seq: rng.next_u64() >> rng.below(64),
        envelope: Envelope {
            payload_type: "p".repeat(rng.below(80) as usize),
            payload: (0..rng.below(300)).map(|b| (b * 7) as u8).collect(),
            signatures,
        },
    }
}

fn encode(rec: &LogRecord, json: bool) -> Vec<u8> {
    if json {
        return serde_json::to_vec(rec).expect("json");
    }
    let mut out = Vec::new();
    record::encode_into(
        RecordRef {
            received_at: rec.received_at,
            source: rec.source.as_ref(),
            seq: rec.seq,
            envelope: &rec.envelope,
        },
        &mut out,
    )
    .expect("encode");
    out
}

fn damage(rng: &mut Rng, mut b: Vec<u8>, other: &[u8]) -> Vec<u8> {
    match rng.below(6) {
        0 => {
            let i = rng.below(b.len() as u64) as usize;
            b[i] ^= 1 << rng.below(8);
        }
        1 => {
            let n = rng.below(b.len() as u64 + 1) as usize;
            b.truncate(n);
        }
        2 => b.extend_from_slice(&other[..other.len().min(rng.below(20) as usize)]),
        3 => {
            // This record's head with another's tail.
            let cut = rng.below(b.len() as u64) as usize;
            let from = rng.below(other.len() as u64) as usize;
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
        4 => {
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.next_u64() as u8;
        }
        _ => {}
    }
    b
}

/// `decode_into` into a slot whatever it held reads as `decode`: the same record, or the
/// same error.
#[test]
fn decode_into_any_used_slot_reads_as_decode_alone() {
    let mut rng = Rng::new(0x5eed_2222);
    let mut slot = LogRecord::empty();
    let mut other = encode(&random_record(&mut rng), false);
    let (mut oks, mut errs) = (0u32, 0u32);
    for case in 0..60_000u32 {
        let rec = random_record(&mut rng);
        let json = rng.chance(10);
        let good = encode(&rec, json);
        let bytes = if rng.chance(50) {
            damage(&mut rng, good.clone(), &other)
        } else {
            good.clone()
        };
        other = good;
        let alone = record::decode(&bytes);
        let into = record::decode_into(&bytes, &mut slot);
        match (&alone, into) {
            (Ok(a), Ok(())) => {
                oks += 1;
                assert_eq!(a, &slot, "case {case}: {bytes:?}");
                if bytes == other {
                    assert_eq!(a, &rec, "case {case}");
                }
            }
            (Err(a), Err(b)) => {
                errs += 1;
                assert_eq!(a, &b, "case {case}: {bytes:?}");
            }
            (a, b) => panic!("case {case}: decode {a:?}, decode_into {b:?}: {bytes:?}"),
        }
    }
    assert!(oks > 20_000 && errs > 5_000, "{oks} {errs}");
}

fn read(s: &dyn Store, index: u64) -> LogRecord {
    log::read(s, index).expect("read").expect("leaf")
}

fn write(s: &dyn Store, index: u64, rec: &LogRecord) {
    log::replace_record(s, index, Some(rec.encode().expect("encode"))).expect("replace");
}

/// Leaves in chunk 0 made to carry more (signatures, payload type, another source) than
/// the leaves that take their slots in chunk 2; a half-readable record in chunk 2: the
/// parallel walk reports exactly as the serial reference.
#[test]
fn verify_in_parallel_reports_as_serial_with_fat_leaves_before_reused_slots() {
    let dir = store_dir(Backend::Sled);
    {
        let th = TestHub::open(dir.path());
        let mut a = Agent::new("gd-a", 1, "440000");
        let mut b = Agent::new("gd-b", 2, "440000");
        th.register(&a);
        th.register(&b);
        for round in 0..10u64 {
            let agent = if round % 2 == 0 { &mut a } else { &mut b };
            let records: Vec<_> = (0..110)
                .map(|i| {
                    let seq = agent.next + i;
                    teachers(
                        "440106",
                        &format!("44010600{:02}", seq % 90),
                        "2018-11-05",
                        seq,
                    )
                })
                .collect();
            let out = th.hub.ingest(agent.batch(&records)).expect("ingest");
            assert_eq!(out.status, 200, "{:?}", out.response);
        }
        assert!(th.log_size() > 3 * FIRST_CHUNK as u64 + 300);
    }
    let first = FIRST_CHUNK as u64;
    // Chunk 2 starts at 3 * FIRST_CHUNK and reads into chunk 0's slots.
    let chunk2 = 3 * first;
    let key = hub_key().verifying_key();
    let run = |name: &str, damage: &dyn Fn(&dyn Store)| {
        let copy = copy_of(dir.path());
        let store = open_store(copy.path());
        let store = store.as_ref();
        damage(store);
        let mut reports = Vec::new();
        for how in [
            Checking::Serial,
            Checking::Parallel {
                threads: 1.try_into().expect("1"),
            },
            Checking::Parallel {
                threads: 2.try_into().expect("2"),
            },
        ] {
            let r = maintenance::verify_with(store, &key, ORIGIN, how, |_| {})
                .unwrap_or_else(|e| panic!("{name}: {how:?}: {e}"));
            reports.push((how, r.leaves, r.sources, r.problems));
        }
        let (_, l, s, p) = &reports[0];
        for (how, l2, s2, p2) in &reports[1..] {
            assert_eq!(
                (l2, s2, p2),
                (l, s, p),
                "{name}: {how:?} differs from serial"
            );
        }
        p.clone()
    };
    // Fat leaves in chunk 0 at slots 10..20; the leaves of chunk 2 at the same slots stay.
    let fat = |s: &dyn Store| {
        for slot in 10..20u64 {
            let mut rec = read(s, slot);
            rec.envelope.payload_type.push_str(&"x".repeat(200));
            for i in 0..3 {
                rec.envelope.signatures.push(EnvelopeSignature {
                    keyid: format!("extra-{i}"),
                    sig: vec![7; 64],
                });
            }
            rec.source = Some(SourceId::parse("zz-other").expect("id"));
            rec.seq += 1_000_000;
            write(s, slot, &rec);
        }
    };
    let fat_only = run("fat leaves only", &fat);
    assert!(!fat_only.is_empty());
    eprintln!(
        "fat: {} problems, first {:?}, last {:?}",
        fat_only.len(),
        fat_only.first(),
        fat_only.last()
    );
    // Chunk 2's leaves at those slots never name chunk 0's extra content.
    for p in &fat_only {
        for idx in chunk2 + 10..chunk2 + 20 {
            if p.starts_with(&format!("log leaf {idx} ")) {
                assert!(!p.contains("zz-other") && !p.contains("extra-"), "{p}");
            }
        }
    }
    // With a half-readable leaf in chunk 2 (its head good, its tail cut).
    for cut in [1usize, 20, 60] {
        let half = move |s: &dyn Store| {
            fat(s);
            let idx = chunk2 + 15;
            let bytes = read(s, idx).encode().expect("encode");
            let keep = bytes.len().saturating_sub(cut);
            log::replace_record(s, idx, Some(bytes[..keep].to_vec())).expect("replace");
        };
        let problems = run(&format!("half-readable leaf, {cut} bytes cut"), &half);
        eprintln!("cut {cut}: {:?}", problems.last());
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("{}", chunk2 + 15))),
            "{problems:#?}"
        );
    }
}
