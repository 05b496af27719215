//! Same-run limits: what the machine can do at most for each step the hub or the agent
//! must take per entry, measured on the same entries in the same invocation, so a figure is
//! always read as a ratio to its limit.
//!
//! Every measurement repeats its pass until at least `min_s` seconds have gone by, so small
//! runs are not timer noise. Verification goes through `spacesync_shared` (the one signature
//! rule), exactly what the hub calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, anyhow};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use spacesync_shared::dsse::pae;
use spacesync_shared::entry::{ENTRY_PAYLOAD_TYPE, verify_signatures, verify_signatures_deferring};
use spacesync_shared::sig::TorsionDebt;
use spacesync_shared::{Entry, Envelope};

/// Repeats `pass` (which returns the items it processed) until `min_s` seconds have gone
/// by; items per second.
fn rate(min_s: f64, mut pass: impl FnMut() -> Result<u64>) -> Result<f64> {
    let t = Instant::now();
    let mut n = 0;
    loop {
        n += pass()?;
        let s = t.elapsed().as_secs_f64();
        if s >= min_s || n == 0 {
            return Ok(n as f64 / s.max(1e-9));
        }
    }
}

/// Threads that measure "all cores".
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How a batch's signatures are verified for a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verifier {
    /// The one signature rule (`spacesync_shared::sig`) as cheaply as it can be checked:
    /// each batch's equation on its own, the torsion test of the `R`s settled for
    /// [`SETTLE_EVERY`] batches at once (`sig::TorsionDebt`), as the hub's check pool
    /// settles the batches checked meanwhile.
    Rule,
    /// The rule with each batch paying its own torsion test (the limit until session 24,
    /// and what a hub verifying one batch at a time pays).
    RulePerBatch,
    /// `ed25519_dalek::verify_batch` alone: the library's batch equation without the
    /// rule's per-point checks (torsion, canonical encodings) — the raw bound.
    Raw,
}

/// Verifies one batch's signatures by `key` the way `how` says.
fn verify_one_batch(how: Verifier, envs: &[Envelope], key: &VerifyingKey) -> Result<()> {
    match how {
        Verifier::Rule => {
            let mut debt = TorsionDebt::new();
            verify_deferring(envs, key, &mut debt)?;
            settle(&mut vec![debt])
        }
        Verifier::RulePerBatch => {
            let refs: Vec<&Envelope> = envs.iter().collect();
            verify_signatures(&refs, key).map_err(|(i, e)| anyhow!("entry {i} of a batch: {e}"))
        }
        Verifier::Raw => {
            let paes: Vec<Vec<u8>> = envs
                .iter()
                .map(|e| pae(&e.payload_type, &e.payload))
                .collect();
            let msgs: Vec<&[u8]> = paes.iter().map(Vec::as_slice).collect();
            let sigs = envs
                .iter()
                .map(|e| e.signature_by(ENTRY_PAYLOAD_TYPE, key))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("a signature does not decode: {e}"))?;
            let keys = vec![*key; envs.len()];
            ed25519_dalek::verify_batch(&msgs, &sigs, &keys)
                .map_err(|e| anyhow!("raw batch verification: {e}"))
        }
    }
}

/// Batches whose torsion debts [`Verifier::Rule`] settles at once: past 8 the test's fixed
/// cost is small against its cost a point (11.5 µs a signature at 8 batches of 1,000, 11.2 at
/// 16, 15.0 at 1, one core of the machine of BENCHMARKS.md).
pub const SETTLE_EVERY: usize = 16;

/// One batch's signatures by `key` under the rule, its `R`s' torsion test left in `debt`.
fn verify_deferring(envs: &[Envelope], key: &VerifyingKey, debt: &mut TorsionDebt) -> Result<()> {
    let refs: Vec<&Envelope> = envs.iter().collect();
    verify_signatures_deferring(&refs, key, debt)
        .map_err(|(i, e)| anyhow!("entry {i} of a batch: {e}"))
}

/// Settles `debts` at once and empties it; an error if any is not clean.
fn settle(debts: &mut Vec<TorsionDebt>) -> Result<()> {
    let refs: Vec<&TorsionDebt> = debts.iter().collect();
    let clean = TorsionDebt::settle(&refs).iter().all(|&c| c);
    debts.clear();
    if clean {
        Ok(())
    } else {
        Err(anyhow!("a signature's R has a small-order component"))
    }
}

/// Ed25519 batch verification of every batch (as the hub receives them: one source's key
/// per batch) on all cores under the rule ([`Verifier::Rule`]); entries a second.
pub fn verify_batch_all_cores(
    batches: &[(VerifyingKey, Vec<Envelope>)],
    min_s: f64,
) -> Result<f64> {
    verify_all_cores(Verifier::Rule, batches, min_s)
}

/// The batch-verification limit on all cores, with the CPU it spent per signature.
#[derive(Debug, Clone, Copy)]
pub struct VerifyLimit {
    /// Signatures a second (wall clock).
    pub per_s: f64,
    /// This process's user + system CPU seconds per signature while measuring it: on a
    /// shared machine the limit's threads do not have every core either, so `verify`'s CPU
    /// per leaf is compared with this rather than with the wall-clock rate.
    pub cpu_per_sig: f64,
}

/// [`verify_batch_all_cores`] and its own CPU per signature.
pub fn verify_limit(batches: &[(VerifyingKey, Vec<Envelope>)], min_s: f64) -> Result<VerifyLimit> {
    let (per_s, cpu_per_sig) = with_cpu(|| verify_batch_all_cores(batches, min_s))?;
    Ok(VerifyLimit { per_s, cpu_per_sig })
}

/// A rate `measure` returns (units a second) and this process's CPU seconds per unit while
/// it ran (every thread's, sled's flushers included).
fn with_cpu(measure: impl FnOnce() -> Result<f64>) -> Result<(f64, f64)> {
    let (cpu, t) = (crate::procs::cpu_seconds(None)?, std::time::Instant::now());
    let per_s = measure()?;
    let cpu_per_unit =
        (crate::procs::cpu_seconds(None)? - cpu) / (per_s * t.elapsed().as_secs_f64()).max(1.0);
    Ok((per_s, cpu_per_unit))
}

/// Like [`verify_batch_all_cores`], verifying as `how` says.
pub fn verify_all_cores(
    how: Verifier,
    batches: &[(VerifyingKey, Vec<Envelope>)],
    min_s: f64,
) -> Result<f64> {
    let threads = cores();
    rate(min_s, || {
        let next = AtomicUsize::new(0);
        let results: Vec<Result<u64>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| -> Result<u64> {
                        let mut n = 0;
                        let mut debts = Vec::new();
                        while let Some((key, envs)) =
                            batches.get(next.fetch_add(1, Ordering::Relaxed))
                        {
                            if how == Verifier::Rule {
                                debts.push(TorsionDebt::new());
                                let debt = debts.last_mut().ok_or(anyhow!("no debt"))?;
                                verify_deferring(envs, key, debt)?;
                                if debts.len() == SETTLE_EVERY {
                                    settle(&mut debts)?;
                                }
                            } else {
                                verify_one_batch(how, envs, key)?;
                            }
                            n += envs.len() as u64;
                        }
                        settle(&mut debts)?;
                        Ok(n)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a verifying thread panicked")))
                })
                .collect()
        });
        results.into_iter().sum()
    })
}

/// Ed25519 single verification (one signature at a time) on one core, of at most `max`
/// entries; entries a second.
pub fn verify_single(
    batches: &[(VerifyingKey, Vec<Envelope>)],
    max: usize,
    min_s: f64,
) -> Result<f64> {
    rate(min_s, || {
        let mut n = 0;
        'all: for (key, envs) in batches {
            for e in envs {
                if n as usize >= max {
                    break 'all;
                }
                e.verify(ENTRY_PAYLOAD_TYPE, key)
                    .map_err(|e| anyhow!("single verification: {e}"))?;
                n += 1;
            }
        }
        Ok(n)
    })
}

/// SHA-256 of every payload on one core: (payloads a second, MB a second).
pub fn sha256(payloads: &[&[u8]], min_s: f64) -> Result<(f64, f64)> {
    let bytes: usize = payloads.iter().map(|p| p.len()).sum();
    let per_s = rate(min_s, || {
        let mut x = 0u8;
        for p in payloads {
            x ^= Sha256::digest(p)[0];
        }
        std::hint::black_box(x);
        Ok(payloads.len() as u64)
    })?;
    let mb_s = per_s * (bytes as f64 / payloads.len().max(1) as f64) / 1e6;
    Ok((per_s, mb_s))
}

/// A durable batched append: `values` inserted into a fresh sled tree in `batch`-sized
/// atomic batches, each followed by a flush (what the hub must do at least per ingest
/// batch); values a second.
pub fn sled_append(values: &[Vec<u8>], batch: usize, min_s: f64) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 << 20)
        .open()
        .map_err(|e| anyhow!("opening sled in {}: {e}", dir.path().display()))?;
    let mut key = 0u64;
    rate(min_s, || {
        for chunk in values.chunks(batch.max(1)) {
            let mut b = sled::Batch::default();
            for v in chunk {
                b.insert(&key.to_be_bytes(), v.as_slice());
                key += 1;
            }
            db.apply_batch(b).map_err(|e| anyhow!("sled batch: {e}"))?;
            db.flush().map_err(|e| anyhow!("sled flush: {e}"))?;
        }
        Ok(values.len() as u64)
    })
}

/// [`sled_append`] and this process's CPU seconds per value while measuring it (the
/// flusher's threads included).
pub fn append_limit(values: &[Vec<u8>], batch: usize, min_s: f64) -> Result<(f64, f64)> {
    with_cpu(|| sled_append(values, batch, min_s))
}

/// Signing on one core: (raw Ed25519 signatures of the entries' DSSE PAE bytes a second,
/// whole `Entry::sign` — JSON payload, PAE, signature — a second).
pub fn sign_one_core(entries: &[Entry], key: &SigningKey, min_s: f64) -> Result<(f64, f64)> {
    let paes: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| pae(ENTRY_PAYLOAD_TYPE, &e.to_payload()))
        .collect();
    let raw = rate(min_s, || {
        for p in &paes {
            std::hint::black_box(key.sign(p));
        }
        Ok(paes.len() as u64)
    })?;
    let whole = rate(min_s, || {
        for e in entries {
            std::hint::black_box(e.sign(key));
        }
        Ok(entries.len() as u64)
    })?;
    Ok((raw, whole))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Shape, plan};
    use spacesync_shared::Digest;

    #[test]
    fn limits_measure_positive_rates() {
        let plans = plan(Shape::Entries {
            total: 64,
            sources: 2,
        })
        .expect("plan");
        let batches: Vec<(VerifyingKey, Vec<Envelope>)> = plans
            .iter()
            .map(|p| {
                (
                    p.key.verifying_key(),
                    p.sign(0, p.entries, Digest::ZERO).expect("sign"),
                )
            })
            .collect();
        assert!(verify_batch_all_cores(&batches, 0.01).expect("batch") > 0.0);
        assert!(verify_all_cores(Verifier::Raw, &batches, 0.01).expect("raw") > 0.0);
        assert!(verify_all_cores(Verifier::RulePerBatch, &batches, 0.01).expect("rule") > 0.0);
        assert!(verify_single(&batches, 10, 0.01).expect("single") > 0.0);
        let payloads: Vec<&[u8]> = batches[0].1.iter().map(|e| e.payload.as_slice()).collect();
        assert!(sha256(&payloads, 0.01).expect("sha").0 > 0.0);
        let values: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
        assert!(sled_append(&values, 8, 0.01).expect("sled") > 0.0);
        // A bad signature is not a rate.
        let mut bad = batches.clone();
        bad[0].1[3].payload[10] ^= 1;
        assert!(verify_batch_all_cores(&bad, 0.01).is_err());
        assert!(verify_all_cores(Verifier::RulePerBatch, &bad, 0.01).is_err());
    }
}
