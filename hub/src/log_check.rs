//! What `verify` can judge of a log leaf without any other leaf — its signature under the
//! key in force at its seq, the entry its payload holds, its hashes — judged on every
//! core, while the caller walks the leaves in order for what does need the others (the
//! tree, each source's chain, the source index).
//!
//! [`walk`] reads the log with [`log::iter`] in chunks. While worker threads check one
//! chunk (its signatures through the one rule's batch path, [`sig::verify_batch`], whose
//! runs of equal keys count once), the calling thread hands the chunk before to the
//! caller's visitor and reads the chunk after. Every leaf's [`Verdict`] is the one single
//! verification gives ([`Checking::Serial`] is that path, kept as the reference), so the
//! visitor sees exactly what it would see leaf by leaf, in the same order.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{Scope, ScopedJoinHandle};

use ed25519_dalek::{Signature, VerifyingKey};
use spacesync_shared::chain::{ChainError, KeySchedule};
use spacesync_shared::dsse::{DsseError, key_id, pae};
use spacesync_shared::entry::{ENTRY_PAYLOAD_TYPE, EntryError};
use spacesync_shared::merkle::Hash;
use spacesync_shared::sig::TorsionDebt;
use spacesync_shared::{Digest, Entry, SourceId, sig};

use crate::entries::HUB_ENTRY_PAYLOAD_TYPE;
use crate::log::{self, LogRecord};
use crate::store::{Store, StoreError};

/// Leaves in the first chunk; each next chunk is twice the one before, up to
/// [`MAX_CHUNK`]. Small at first so the workers start at once and little of the run
/// passes with one thread busy.
pub const FIRST_CHUNK: usize = 256;

/// Leaves in a chunk once the walk is under way: about a second of signature work on two
/// cores, large enough that starting its threads costs nothing, and 32 batches, so the
/// threads end a chunk together and each settles the torsion tests of ~10 at once
/// (session 24: 8,192 → 32,768 took `verify` of 1.8 M leaves from 25.8–26.4 s to 24.3 s,
/// its peak resident from ~360 to ~470 MB).
pub const MAX_CHUNK: usize = 32768;

/// Signatures in one batch at most. Large batches pay for the torsion of their `R`s
/// together (`sig`'s aggregate test: about 8 µs a signature at 1,024 against 20 µs at 256
/// and 29 µs alone, on the machine of BENCHMARKS.md); a refused signature costs single
/// verifications of the batch's items before it, and the next batch is halved.
const MAX_BATCH: usize = 1024;

/// Leaves a thread takes at a time: one batch. Small enough that the threads end a chunk
/// together.
pub const PIECE: usize = MAX_BATCH;

/// How signatures are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checking {
    /// Leaf by leaf on the calling thread, each signature on its own
    /// ([`sig::verify`]): the reference the parallel path must agree with.
    Serial,
    /// In chunks on `threads` worker threads, batch verification, pipelined with the walk.
    Parallel {
        /// Worker threads (the walk itself runs on the calling thread besides).
        threads: NonZeroUsize,
    },
}

impl Checking {
    /// Parallel on every core the system offers.
    pub fn all_cores() -> Checking {
        Checking::Parallel {
            threads: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// A checking thread panicked: a bug, reported instead of the verdicts it owed.
#[derive(Debug, thiserror::Error)]
#[error("a signature-checking thread stopped: {message}")]
pub struct WorkerPanicked {
    /// The panic's message.
    pub message: String,
}

impl WorkerPanicked {
    /// From a joined thread's panic payload.
    pub fn from_payload(payload: &(dyn std::any::Any + Send)) -> WorkerPanicked {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        WorkerPanicked { message }
    }
}

/// What is known of a leaf before it is walked.
#[derive(Debug)]
pub struct Checked {
    /// Its Merkle leaf hash ([`LogRecord::leaf_hash`]).
    pub leaf_hash: Hash,
    /// Its signature, and what follows from it.
    pub verdict: Verdict,
}

/// A leaf's signature, judged as single verification judges it.
// Nearly every leaf is a `Source(Ok(_))`, the large variant: boxing it would add an
// allocation per leaf and save no memory.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Verdict {
    /// A source's entry, from a source the registry does not hold: nothing to check it with.
    Unregistered,
    /// A source's entry under the key in force at the seq the log records: what
    /// [`KeySchedule::verify`] says, and for a signature that holds, the entry read.
    Source(Result<Signed, ChainError>),
    /// A hub entry under the hub key: what [`spacesync_shared::Envelope::verify`] says.
    Hub(Result<(), DsseError>),
}

/// A source's entry whose signature holds.
#[derive(Debug)]
pub struct Signed {
    /// The payload read as an entry ([`Entry::from_payload`]).
    pub entry: Result<Entry, EntryError>,
    /// SHA-256 of the payload, what `prev` links.
    pub hash: Digest,
}

impl Signed {
    /// Reads `rec`'s payload (whose signature holds).
    pub fn read(rec: &LogRecord) -> Signed {
        Signed {
            entry: Entry::from_payload(&rec.envelope.payload),
            hash: rec.envelope.payload_hash(),
        }
    }
}

/// The keys a log's leaves are checked with: each registered source's schedule, and the
/// hub's key.
pub struct Checker<'a> {
    keys: HashMap<SourceId, KeySchedule>,
    hub_key: &'a VerifyingKey,
}

/// A signature waiting for its batch: the leaf it belongs to, the signed bytes, the key.
struct Pending {
    at: usize,
    msg: Vec<u8>,
    sig: Signature,
    key: VerifyingKey,
}

impl<'a> Checker<'a> {
    /// Checks with these key schedules (by source) and this hub key.
    pub fn new(keys: HashMap<SourceId, KeySchedule>, hub_key: &'a VerifyingKey) -> Checker<'a> {
        Checker { keys, hub_key }
    }

    /// One leaf, with single verification.
    pub fn check_one(&self, rec: &LogRecord) -> Checked {
        let verdict = match &rec.source {
            None => Verdict::Hub(rec.envelope.verify(HUB_ENTRY_PAYLOAD_TYPE, self.hub_key)),
            Some(source) => match self.keys.get(source) {
                None => Verdict::Unregistered,
                Some(keys) => Verdict::Source(
                    keys.verify(&rec.envelope, rec.seq)
                        .map(|_| Signed::read(rec)),
                ),
            },
        };
        Checked {
            leaf_hash: rec.leaf_hash(),
            verdict,
        }
    }

    /// Many leaves, their signatures in batches: the same verdicts as [`Checker::check_one`]
    /// leaf by leaf.
    pub fn check_many(&self, leaves: &[(u64, LogRecord)]) -> Vec<Checked> {
        self.check_many_with(leaves, None)
    }

    /// [`Checker::check_many`] leaving the torsion test of the signatures' `R`s in `debt`
    /// (`sig::verify_batch_deferring`): the verdicts hold only once `debt` settles clean;
    /// when it does not, check the leaves again with [`Checker::check_many`].
    pub fn check_many_deferring(
        &self,
        leaves: &[(u64, LogRecord)],
        debt: &mut TorsionDebt,
    ) -> Vec<Checked> {
        self.check_many_with(leaves, Some(debt))
    }

    fn check_many_with(
        &self,
        leaves: &[(u64, LogRecord)],
        debt: Option<&mut TorsionDebt>,
    ) -> Vec<Checked> {
        // Everything single verification refuses before the equation is judged here as it
        // judges it; what is left waits for the batch equation.
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(leaves.len());
        let mut pending: Vec<Pending> = Vec::new();
        for (at, (_, rec)) in leaves.iter().enumerate() {
            let key = match &rec.source {
                None => match rec
                    .envelope
                    .signature_by(HUB_ENTRY_PAYLOAD_TYPE, self.hub_key)
                {
                    Err(e) => Err(Verdict::Hub(Err(e))),
                    Ok(sig) => Ok((sig, *self.hub_key)),
                },
                Some(source) => match self.keys.get(source) {
                    None => Err(Verdict::Unregistered),
                    Some(keys) => match keys.key_for(rec.seq) {
                        Err(e) => Err(Verdict::Source(Err(e))),
                        Ok(key) => match rec.envelope.signature_by(ENTRY_PAYLOAD_TYPE, key) {
                            Err(error) => Err(Verdict::Source(Err(ChainError::BadSignature {
                                seq: rec.seq,
                                error,
                            }))),
                            Ok(sig) => Ok((sig, *key)),
                        },
                    },
                },
            };
            match key {
                Err(verdict) => verdicts.push(Some(verdict)),
                Ok((sig, key)) => {
                    verdicts.push(None);
                    pending.push(Pending {
                        at,
                        msg: pae(&rec.envelope.payload_type, &rec.envelope.payload),
                        sig,
                        key,
                    });
                }
            }
        }
        let holds = equations(&pending, debt);
        for (p, holds) in pending.iter().zip(holds) {
            let rec = &leaves[p.at].1;
            let refused = || DsseError::BadSignature {
                keyid: key_id(&p.key),
            };
            verdicts[p.at] = Some(match (&rec.source, holds) {
                (None, true) => Verdict::Hub(Ok(())),
                (None, false) => Verdict::Hub(Err(refused())),
                (Some(_), true) => Verdict::Source(Ok(Signed::read(rec))),
                (Some(_), false) => Verdict::Source(Err(ChainError::BadSignature {
                    seq: rec.seq,
                    error: refused(),
                })),
            });
        }
        leaves
            .iter()
            .zip(verdicts)
            .map(|((_, rec), verdict)| Checked {
                leaf_hash: rec.leaf_hash(),
                // Every leaf got its verdict above: before the equation or from it.
                verdict: verdict.unwrap_or(Verdict::Unregistered),
            })
            .collect()
    }
}

/// For each signature, whether its equation holds (rules 1–3 of [`sig`] included), in
/// batches: the batch path names the first signature single verification refuses, the
/// ones before it hold, and the next batch starts after it. A refusal halves the next
/// batch (so a log damaged throughout costs about single verification, not a batch per
/// signature), a batch that holds doubles it again. With a `debt`, the batches' torsion
/// tests are left in it (what holds, holds once it settles clean).
fn equations(pending: &[Pending], mut debt: Option<&mut TorsionDebt>) -> Vec<bool> {
    let n = pending.len();
    let msgs: Vec<&[u8]> = pending.iter().map(|p| p.msg.as_slice()).collect();
    let sigs: Vec<Signature> = pending.iter().map(|p| p.sig).collect();
    let keys: Vec<VerifyingKey> = pending.iter().map(|p| p.key).collect();
    let mut holds = vec![false; n];
    let (mut start, mut size) = (0, MAX_BATCH);
    while start < n {
        let end = (start + size).min(n);
        if end - start == 1 {
            holds[start] = sig::verify(&keys[start], msgs[start], &sigs[start]).is_ok();
            if holds[start] {
                size = 2;
            }
            start = end;
            continue;
        }
        let (m, g, k) = (&msgs[start..end], &sigs[start..end], &keys[start..end]);
        let verdict = match debt.as_deref_mut() {
            Some(debt) => sig::verify_batch_deferring(m, g, k, debt),
            None => sig::verify_batch(m, g, k),
        };
        match verdict {
            Ok(()) => {
                holds[start..end].fill(true);
                start = end;
                size = (size * 2).min(MAX_BATCH);
            }
            Err((first, _)) => {
                holds[start..start + first].fill(true);
                start += first + 1;
                size = (size / 2).max(1);
            }
        }
    }
    holds
}

/// Leaves read from the log, up to the first that does not read.
struct Chunk {
    leaves: Vec<(u64, LogRecord)>,
    /// Why the leaf after `leaves` does not read; the log is not read past it.
    error: Option<StoreError>,
}

/// Reads up to `n` leaves: fewer at the end of the log, or up to a leaf that does not read;
/// into `slots`, the leaves of a chunk walked already, so that a leaf is decoded where one
/// was before instead of into fresh allocations (see [`log::Leaves::next_into`]).
fn read_chunk(leaves: &mut log::Leaves<'_>, n: usize, mut slots: Vec<(u64, LogRecord)>) -> Chunk {
    let mut filled = 0;
    let mut error = None;
    while filled < n {
        if filled == slots.len() {
            slots.push((0, LogRecord::empty()));
        }
        let slot = &mut slots[filled];
        match leaves.next_into(&mut slot.1) {
            None => break,
            Some(Ok(index)) => {
                slot.0 = index;
                filled += 1;
            }
            Some(Err(e)) => {
                error = Some(e);
                break;
            }
        }
    }
    // What is past the last leaf read: slots left over, or one a leaf did not read into.
    slots.truncate(filled);
    Chunk {
        leaves: slots,
        error,
    }
}

/// A chunk being checked, in pieces that whoever is free takes next: the worker threads,
/// and the walking thread once it has walked the chunk before and read the one after, so
/// no core idles while a piece is left.
struct Pieces<'a> {
    checker: &'a Checker<'a>,
    pieces: Vec<&'a [(u64, LogRecord)]>,
    next: AtomicUsize,
}

/// Verdicts of some pieces, by piece number.
type Done = Vec<(usize, Vec<Checked>)>;

impl<'a> Pieces<'a> {
    fn new(checker: &'a Checker<'a>, leaves: &'a [(u64, LogRecord)]) -> Pieces<'a> {
        Pieces {
            checker,
            pieces: leaves.chunks(PIECE).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Checks pieces until none is left, their torsion tests settled together at the
    /// end (one test's fixed cost for all the pieces this thread took: 15.0 µs a
    /// signature with one test a batch of 1,000, 12.4 with one for four, one core of the
    /// machine of BENCHMARKS.md); a piece whose test fails is checked again on its own.
    fn take(&self) -> Done {
        let mut done = Vec::new();
        let mut debts = Vec::new();
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(piece) = self.pieces.get(i) else {
                break;
            };
            let mut debt = TorsionDebt::new();
            done.push((i, self.checker.check_many_deferring(piece, &mut debt)));
            debts.push(debt);
        }
        let refs: Vec<&TorsionDebt> = debts.iter().collect();
        for ((i, checked), clean) in done.iter_mut().zip(TorsionDebt::settle(&refs)) {
            if !clean {
                *checked = self.checker.check_many(self.pieces[*i]);
            }
        }
        done
    }

    /// Starts up to `threads` workers taking pieces (as many as the system lets start;
    /// with none, the walking thread takes every piece itself).
    fn start<'scope>(
        &'a self,
        s: &'scope Scope<'scope, 'a>,
        threads: usize,
    ) -> Vec<ScopedJoinHandle<'scope, Done>> {
        (0..threads.min(self.pieces.len()))
            .map_while(|_| {
                std::thread::Builder::new()
                    .name("verify-signatures".into())
                    .spawn_scoped(s, move || self.take())
                    .ok()
            })
            .collect()
    }

    /// Takes what pieces are left, waits for every worker (all are joined, also after a
    /// panic), and returns the verdicts in order.
    fn finish(
        &self,
        workers: Vec<ScopedJoinHandle<'_, Done>>,
    ) -> Result<Vec<Checked>, WorkerPanicked> {
        let mut done: Done = std::panic::catch_unwind(AssertUnwindSafe(|| self.take()))
            .map_err(|payload| WorkerPanicked::from_payload(payload.as_ref()))?;
        let mut panicked = None;
        for h in workers {
            match h.join() {
                Ok(d) => done.extend(d),
                Err(payload) => {
                    panicked.get_or_insert_with(|| WorkerPanicked::from_payload(payload.as_ref()));
                }
            }
        }
        if let Some(p) = panicked {
            return Err(p);
        }
        done.sort_unstable_by_key(|(i, _)| *i);
        Ok(done.into_iter().flat_map(|(_, checked)| checked).collect())
    }
}

/// Hands a checked chunk to `visit`, leaf by leaf, then the error that ended it; the
/// chunk's leaves are left in it, to be read into again.
fn visit_chunk<E>(
    chunk: &mut Chunk,
    checked: Vec<Checked>,
    visit: &mut impl FnMut(Result<(u64, &LogRecord, Checked), StoreError>) -> Result<ControlFlow<()>, E>,
) -> Result<ControlFlow<()>, E> {
    for ((index, rec), c) in chunk.leaves.iter().zip(checked) {
        if visit(Ok((*index, rec, c)))?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    match chunk.error.take() {
        Some(e) => visit(Err(e)),
        None => Ok(ControlFlow::Continue(())),
    }
}

/// Every leaf of the log in order, each with what [`Checker`] found, to `visit`, until
/// it breaks; a leaf that does not read is visited as its error, and the log is not read
/// past it. Returns `Break` when `visit` broke off.
pub fn walk<E>(
    store: &dyn Store,
    checker: &Checker<'_>,
    how: Checking,
    mut visit: impl FnMut(Result<(u64, &LogRecord, Checked), StoreError>) -> Result<ControlFlow<()>, E>,
) -> Result<ControlFlow<()>, E>
where
    E: From<WorkerPanicked>,
{
    let threads = match how {
        Checking::Serial => {
            for r in log::iter(store) {
                let flow = match r {
                    Ok((index, rec)) => {
                        let checked = checker.check_one(&rec);
                        visit(Ok((index, &rec, checked)))?
                    }
                    Err(e) => visit(Err(e))?,
                };
                if flow.is_break() {
                    return Ok(flow);
                }
            }
            return Ok(ControlFlow::Continue(()));
        }
        Checking::Parallel { threads } => threads.get(),
    };
    let mut leaves = log::iter(store);
    let mut size = FIRST_CHUNK;
    let mut next = read_chunk(&mut leaves, size, Vec::new());
    // The chunk checked last round, waiting for its walk.
    let mut ready: Option<(Chunk, Vec<Checked>)> = None;
    loop {
        let current = next;
        // Nothing more can be read after a short chunk or an error.
        let more = current.error.is_none() && current.leaves.len() == size;
        size = (size * 2).min(MAX_CHUNK);
        let pieces = Pieces::new(checker, &current.leaves);
        let (walked, read, checked) = std::thread::scope(|s| {
            let workers = pieces.start(s, threads);
            let (walked, spare) = match ready.take() {
                Some((mut chunk, checked)) => {
                    let walked = visit_chunk(&mut chunk, checked, &mut visit);
                    (walked, chunk.leaves)
                }
                None => (Ok(ControlFlow::Continue(())), Vec::new()),
            };
            let read = (more && matches!(walked, Ok(ControlFlow::Continue(()))))
                .then(|| read_chunk(&mut leaves, size, spare));
            (walked, read, pieces.finish(workers))
        });
        if walked?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        let checked = checked?;
        match read {
            Some(chunk) => {
                ready = Some((current, checked));
                next = chunk;
            }
            None => {
                let mut current = current;
                return visit_chunk(&mut current, checked, &mut visit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn pending(k: &SigningKey, msg: &[u8], honest: bool) -> Pending {
        let sig = if honest {
            k.sign(msg)
        } else {
            k.sign(b"something else")
        };
        Pending {
            at: 0,
            msg: msg.to_vec(),
            sig,
            key: k.verifying_key(),
        }
    }

    #[test]
    fn equations_name_every_refused_signature_whatever_the_batch_sizes() {
        let (a, b) = (key(1), key(2));
        // Runs of two keys; refusals alone, in pairs, at batch edges, and everything refused.
        let n = 2 * MAX_BATCH + 100;
        for bad in [
            vec![],
            vec![0],
            vec![MAX_BATCH - 1],
            vec![MAX_BATCH],
            vec![3, 4, 5, 700, 2 * MAX_BATCH],
            (0..40).collect(),
            (0..n).step_by(7).collect::<Vec<usize>>(),
            (0..n).collect(),
        ] {
            let items: Vec<Pending> = (0..n)
                .map(|i| {
                    let k = if (i / 100) % 2 == 0 { &a } else { &b };
                    pending(k, format!("m{i}").as_bytes(), !bad.contains(&i))
                })
                .collect();
            let holds = equations(&items, None);
            let want: Vec<bool> = (0..n).map(|i| !bad.contains(&i)).collect();
            assert_eq!(holds, want, "bad at {bad:?}");
            // Deferring the torsion tests gives the same verdicts, and a clean debt.
            let mut debt = TorsionDebt::new();
            assert_eq!(equations(&items, Some(&mut debt)), want, "bad at {bad:?}");
            assert_eq!(TorsionDebt::settle(&[&debt]), [true]);
        }
        assert!(equations(&[], None).is_empty());
    }

    #[test]
    fn a_checking_thread_that_panics_is_an_error_not_a_hang() {
        let hub_key = key(3).verifying_key();
        let checker = Checker::new(HashMap::new(), &hub_key);
        let pieces = Pieces::new(&checker, &[]);
        let got = std::thread::scope(|s| {
            let h = s.spawn(|| -> Done { panic!("checker bug") });
            pieces.finish(vec![h])
        });
        assert!(
            matches!(&got, Err(WorkerPanicked { message }) if message == "checker bug"),
            "{got:?}"
        );
    }
}
