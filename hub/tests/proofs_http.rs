//! Proofs served over HTTP verify against signed checkpoints, for random sizes; every way
//! of corrupting a served proof or checkpoint is refused by the verifiers agents run.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use spacesync_shared::dsse::pae;
use spacesync_shared::merkle::{self, Hash, NoteVerifier};

fn hash(v: &Value) -> Hash {
    STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("base64")
        .try_into()
        .expect("32 bytes")
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().expect("array").iter().map(hash).collect()
}

fn verifier() -> NoteVerifier {
    NoteVerifier::new(ORIGIN, hub_key().verifying_key()).expect("verifier")
}

/// A hub whose log grew in random steps; the signed checkpoint note at every step, and the
/// leaf hash of every entry computed on the agent's side.
struct Grown {
    th: TestHub,
    _dir: tempfile::TempDir,
    /// (size, note) after each batch.
    notes: Vec<(u64, String)>,
    leaves: Vec<Hash>,
}

async fn grow(backend: Backend, seed: u64) -> Grown {
    let mut rng = Rng::new(seed);
    let dir = store_dir(backend);
    let th = TestHub::open(dir.path());
    let mut agents = vec![
        Agent::new("gd-a", 1, "440000"),
        Agent::new("bj-a", 2, "110000"),
    ];
    for a in &agents {
        th.register(a);
    }
    // The registry entries `register` logged are leaves like any other.
    let mut leaves: Vec<Hash> = spacesync_hub::log::iter(th.hub.store.as_ref())
        .map(|r| r.expect("leaf").1.leaf_hash())
        .collect();
    let mut notes = vec![(
        leaves.len() as u64,
        th.get("/v1/checkpoint", None).await.text(),
    )];
    while leaves.len() < 70 {
        let a = &mut agents[rng.below(2) as usize];
        let region = if a.scope.to_string() == "440000" {
            "440106"
        } else {
            "110105"
        };
        let n = rng.range(1, 9);
        let records: Vec<Value> = (0..n)
            .map(|i| activity(region, "2018-11-10", &format!("活动 {i}")))
            .collect();
        let batch = a.batch(&records);
        th.ingest_ok(&batch).await;
        for e in &batch.entries {
            leaves.push(merkle::leaf_hash(&pae(&e.payload_type, &e.payload)));
        }
        let note = th.get("/v1/checkpoint", None).await.text();
        notes.push((leaves.len() as u64, note));
    }
    Grown {
        th,
        _dir: dir,
        notes,
        leaves,
    }
}

/// The verified root of the checkpoint at `size`.
fn root(g: &Grown, size: u64) -> Hash {
    let (_, note) = g
        .notes
        .iter()
        .find(|(s, _)| *s == size)
        .expect("a note at this size");
    let cp = merkle::open_checkpoint(note, &verifier(), ORIGIN).expect("checkpoint verifies");
    assert_eq!(cp.size, size);
    cp.root
}

async fn served_proofs_verify_against_signed_checkpoints(backend: Backend) {
    for seed in [7, 8, 9] {
        let g = grow(backend, seed).await;
        let mut rng = Rng::new(seed * 31);
        let sizes: Vec<u64> = g.notes.iter().map(|(s, _)| *s).collect();
        for _ in 0..60 {
            // Inclusion of a random leaf in a random checkpointed tree.
            let size = *rng.pick(&sizes[1..]);
            let index = rng.below(size);
            let r =
                g.th.get_json(&format!("/v1/proof/inclusion?index={index}&size={size}"))
                    .await;
            let leaf = hash(&r["leaf_hash"]);
            assert_eq!(
                leaf, g.leaves[index as usize],
                "the served leaf is what was signed"
            );
            merkle::verify_inclusion(&leaf, index, size, &hashes(&r["proof"]), &root(&g, size))
                .unwrap_or_else(|e| panic!("seed {seed}: inclusion {index}/{size}: {e}"));

            // Consistency between two random checkpointed trees.
            let a = *rng.pick(&sizes);
            let b = *rng.pick(&sizes);
            let (old, new) = (a.min(b), a.max(b));
            let r =
                g.th.get_json(&format!("/v1/proof/consistency?old={old}&new={new}"))
                    .await;
            let old_root = if old == 0 {
                merkle::empty_root()
            } else {
                root(&g, old)
            };
            merkle::verify_consistency(old, new, &old_root, &root(&g, new), &hashes(&r["proof"]))
                .unwrap_or_else(|e| panic!("seed {seed}: consistency {old}→{new}: {e}"));
        }
        // Without `size`/`new`, proofs are against the latest checkpoint.
        let latest = *sizes.last().expect("sizes");
        let r = g.th.get_json("/v1/proof/inclusion?index=0").await;
        assert_eq!(r["size"], latest);
        merkle::verify_inclusion(
            &g.leaves[0],
            0,
            latest,
            &hashes(&r["proof"]),
            &root(&g, latest),
        )
        .expect("latest inclusion");
    }
}

/// A served inclusion proof with what it is checked against.
#[derive(Clone)]
struct Inclusion {
    leaf: Hash,
    index: u64,
    size: u64,
    proof: Vec<Hash>,
    root: Hash,
}

fn check_inclusion_refused(name: &str, p: &Inclusion) {
    assert!(
        merkle::verify_inclusion(&p.leaf, p.index, p.size, &p.proof, &p.root).is_err(),
        "{name}: a corrupted inclusion proof verified"
    );
}

/// A served consistency proof with what it is checked against.
#[derive(Clone)]
struct Consistency {
    old: u64,
    new: u64,
    old_root: Hash,
    new_root: Hash,
    proof: Vec<Hash>,
}

fn check_consistency_refused(name: &str, p: &Consistency) {
    assert!(
        merkle::verify_consistency(p.old, p.new, &p.old_root, &p.new_root, &p.proof).is_err(),
        "{name}: a corrupted consistency proof verified"
    );
}

fn flip(mut h: Hash) -> Hash {
    h[0] ^= 1;
    h
}

async fn corrupted_proofs_and_checkpoints_are_refused(backend: Backend) {
    let g = grow(backend, 11).await;
    let sizes: Vec<u64> = g.notes.iter().map(|(s, _)| *s).collect();
    // Interior leaves of non-power-of-two trees, where every kind of corruption matters.
    let pick = |at_least: u64| {
        sizes
            .iter()
            .copied()
            .find(|s| *s >= at_least && !s.is_power_of_two())
            .expect("a checkpointed size")
    };
    for (index, size) in [(5, pick(12)), (0, pick(3)), (21, pick(60)), (33, pick(34))] {
        let r =
            g.th.get_json(&format!("/v1/proof/inclusion?index={index}&size={size}"))
                .await;
        let good = Inclusion {
            leaf: hash(&r["leaf_hash"]),
            index,
            size,
            proof: hashes(&r["proof"]),
            root: root(&g, size),
        };
        merkle::verify_inclusion(&good.leaf, index, size, &good.proof, &good.root)
            .expect("the good proof verifies");
        let other_size = sizes
            .iter()
            .copied()
            .find(|s| *s != size && *s > 0)
            .expect("size");
        let other_leaf = g.leaves[(index as usize + 1) % g.leaves.len()];
        let mut cases: Vec<(&str, Inclusion)> = vec![
            (
                "index + 1",
                Inclusion {
                    index: index + 1,
                    ..good.clone()
                },
            ),
            (
                "size × 2",
                Inclusion {
                    size: size * 2,
                    ..good.clone()
                },
            ),
            (
                "index = size",
                Inclusion {
                    index: size,
                    ..good.clone()
                },
            ),
            (
                "wrong leaf",
                Inclusion {
                    leaf: other_leaf,
                    ..good.clone()
                },
            ),
            (
                "leaf hash of empty data",
                Inclusion {
                    leaf: merkle::leaf_hash(b""),
                    ..good.clone()
                },
            ),
            (
                "empty root",
                Inclusion {
                    root: merkle::empty_root(),
                    ..good.clone()
                },
            ),
            (
                "root of another size",
                Inclusion {
                    root: root(&g, other_size),
                    ..good.clone()
                },
            ),
            (
                "trailing hash",
                Inclusion {
                    proof: [good.proof.clone(), vec![good.leaf]].concat(),
                    ..good.clone()
                },
            ),
            (
                "last hash dropped",
                Inclusion {
                    proof: good.proof[..good.proof.len() - 1].to_vec(),
                    ..good.clone()
                },
            ),
            (
                "empty proof",
                Inclusion {
                    proof: vec![],
                    ..good.clone()
                },
            ),
            (
                "first hash flipped",
                Inclusion {
                    proof: {
                        let mut p = good.proof.clone();
                        p[0] = flip(p[0]);
                        p
                    },
                    ..good.clone()
                },
            ),
            (
                "hashes swapped",
                Inclusion {
                    proof: {
                        let mut p = good.proof.clone();
                        p.swap(0, 1);
                        p
                    },
                    ..good.clone()
                },
            ),
        ];
        if index > 0 {
            cases.push((
                "index − 1",
                Inclusion {
                    index: index - 1,
                    ..good.clone()
                },
            ));
        }
        for (name, p) in &cases {
            check_inclusion_refused(&format!("inclusion {index}/{size}: {name}"), p);
        }
    }

    for (old, new) in [
        (sizes[2], sizes[sizes.len() - 2]),
        (sizes[1], *sizes.last().expect("sizes")),
    ] {
        let r =
            g.th.get_json(&format!("/v1/proof/consistency?old={old}&new={new}"))
                .await;
        let good = Consistency {
            old,
            new,
            old_root: root(&g, old),
            new_root: root(&g, new),
            proof: hashes(&r["proof"]),
        };
        merkle::verify_consistency(old, new, &good.old_root, &good.new_root, &good.proof)
            .expect("the good proof verifies");
        assert!(!good.proof.is_empty());
        let cases: Vec<(&str, Consistency)> = vec![
            (
                "old + 1",
                Consistency {
                    old: old + 1,
                    ..good.clone()
                },
            ),
            (
                "old − 1",
                Consistency {
                    old: old - 1,
                    ..good.clone()
                },
            ),
            (
                "new × 2",
                Consistency {
                    new: new * 2,
                    ..good.clone()
                },
            ),
            (
                "old and new swapped",
                Consistency {
                    old: new,
                    new: old,
                    ..good.clone()
                },
            ),
            (
                "roots swapped",
                Consistency {
                    old_root: good.new_root,
                    new_root: good.old_root,
                    ..good.clone()
                },
            ),
            (
                "empty old root",
                Consistency {
                    old_root: merkle::empty_root(),
                    ..good.clone()
                },
            ),
            (
                "empty new root",
                Consistency {
                    new_root: merkle::empty_root(),
                    ..good.clone()
                },
            ),
            (
                "new root flipped",
                Consistency {
                    new_root: flip(good.new_root),
                    ..good.clone()
                },
            ),
            (
                "trailing hash",
                Consistency {
                    proof: [good.proof.clone(), vec![good.old_root]].concat(),
                    ..good.clone()
                },
            ),
            (
                "last hash dropped",
                Consistency {
                    proof: good.proof[..good.proof.len() - 1].to_vec(),
                    ..good.clone()
                },
            ),
            (
                "empty proof",
                Consistency {
                    proof: vec![],
                    ..good.clone()
                },
            ),
            (
                "first hash flipped",
                Consistency {
                    proof: {
                        let mut p = good.proof.clone();
                        p[0] = flip(p[0]);
                        p
                    },
                    ..good.clone()
                },
            ),
        ];
        for (name, p) in &cases {
            check_consistency_refused(&format!("consistency {old}→{new}: {name}"), p);
        }
    }

    // The checkpoint note: wrong origin, wrong key, tampered body, trailing bytes.
    let (size, note) = g.notes.last().expect("notes").clone();
    merkle::open_checkpoint(&note, &verifier(), ORIGIN).expect("the good note verifies");
    let stranger = NoteVerifier::new(ORIGIN, SigningKey::from_bytes(&[9; 32]).verifying_key())
        .expect("verifier");
    let other_origin =
        NoteVerifier::new("example.org/log", hub_key().verifying_key()).expect("verifier");
    let bigger = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    assert_ne!(bigger, note);
    let ours = verifier();
    let cases: Vec<(&str, String, &NoteVerifier, &str)> = vec![
        (
            "expected another origin",
            note.clone(),
            &ours,
            "example.org/log",
        ),
        (
            "verifier under another name",
            note.clone(),
            &other_origin,
            ORIGIN,
        ),
        ("verifier with another key", note.clone(), &stranger, ORIGIN),
        ("size line altered", bigger, &ours, ORIGIN),
        ("trailing bytes", format!("{note}x"), &ours, ORIGIN),
        (
            "signature line removed",
            note.lines().take(4).collect::<Vec<_>>().join("\n") + "\n",
            &ours,
            ORIGIN,
        ),
        ("empty note", String::new(), &ours, ORIGIN),
    ];
    for (name, text, v, origin) in cases {
        assert!(
            merkle::open_checkpoint(&text, v, origin).is_err(),
            "checkpoint: {name}: accepted"
        );
    }

    // The API refuses out-of-range requests with a reason, in the error body form.
    for (path, reason) in [
        (
            format!("/v1/proof/inclusion?index={size}&size={size}"),
            "outside a tree",
        ),
        (
            format!("/v1/proof/inclusion?index=0&size={}", size + 1),
            "larger than the log",
        ),
        (
            "/v1/proof/inclusion?index=0&size=0".to_string(),
            "outside a tree of size 0",
        ),
        (
            format!("/v1/proof/consistency?old=1&new={}", size + 1),
            "larger than the log",
        ),
        (format!("/v1/proof/consistency?old={}", size + 1), "exceeds"),
        (
            "/v1/proof/consistency?old=5&new=3".to_string(),
            "old tree size 5 exceeds new tree size 3",
        ),
        (
            "/v1/proof/inclusion?index=x".to_string(),
            "index: invalid digit",
        ),
    ] {
        let r = g.th.get(&path, None).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let err = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains(reason), "{path}: {err:?} lacks {reason:?}");
    }
}

backends!(async served_proofs_verify_against_signed_checkpoints, corrupted_proofs_and_checkpoints_are_refused);
