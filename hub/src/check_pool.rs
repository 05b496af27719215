//! The threads that read and verify ingest batches, below the writer's CPU priority.
//!
//! Ingest has one serial stage: the writer, one batch at a time under the state lock (the
//! chain checks, the views, sled's apply, the flush). Everything before it (inflating the
//! body, parsing it, checking every signature) runs for many batches at once. When those
//! threads share the cores with the writer at the same priority, the scheduler gives the
//! writer about the share of any other thread: with two of them runnable on two cores, two
//! thirds of one. The writer then sets the pace, and the batches it has not reached yet
//! pile up already verified while a core idles during its flush (BENCHMARKS.md, session
//! 19: 1.75–1.79 cores busy). Here the checks run on their own threads, one per core, whose
//! nice value is raised by [`CHECK_NICENESS`]: whenever the writer can run, it gets a core,
//! and the checks use every cycle it leaves. Nothing else runs on these threads, so they
//! never need their priority back (raising it would take a privilege the hub lacks).
//!
//! Jobs are taken in arrival order. A job's result goes back through a oneshot channel, so
//! the request awaiting it holds no runtime thread. A job whose request has gone (the
//! client hung up) is dropped unrun when its turn comes. What bounds the queue is the
//! caller's: the hub's ingest moves the request's share of the body budget into the job,
//! so a queued body stays counted until its job is done or dropped. A job that panics
//! answers [`PoolError::Panicked`] and its thread takes the next one. The threads start
//! with the first job (a hub that never ingests starts none; a start that failed is tried
//! again by the next job) and end when the pool is dropped.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use spacesync_shared::sig::TorsionDebt;
use thiserror::Error;
use tracing::warn;

/// How much lower than the hub's other threads the checks run (added to the nice value,
/// at most 19). At +10 a check thread weighs about a tenth of the writer (Linux CFS).
pub const CHECK_NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job gave no result.
#[derive(Debug, Clone, Error)]
pub enum PoolError {
    /// The job panicked (a bug: the panic message was logged where it happened).
    #[error("checking the batch failed unexpectedly (a bug in the hub; see its log)")]
    Panicked,
    /// The pool's threads could not be started.
    #[error(
        "could not start the threads that check ingest batches: {0}; the hub is out of threads or memory"
    )]
    Start(String),
    /// The job was dropped before it ran (the pool's threads ended).
    #[error("the batch was not checked: the hub's check threads have ended (is it stopping?)")]
    Dropped,
}

/// A fixed set of threads that run jobs at a lowered priority.
pub struct CheckPool {
    threads: usize,
    niceness: i32,
    /// The threads' name, before their number.
    name: &'static str,
    /// The queue to the threads, once they started.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// Jobs handed to the pool, and jobs a thread has taken: their difference is the queue.
    sent: Arc<AtomicU64>,
    taken: Arc<AtomicU64>,
    /// Torsion debts waiting to be settled together ([`CheckPool::torsion_free`]).
    gate: Arc<Mutex<Gate>>,
}

/// The batches' torsion debts waiting for one settling job, and whether one is queued.
#[derive(Default)]
struct Gate {
    waiting: Vec<(TorsionDebt, Answer)>,
    queued: bool,
    /// Settling jobs run, and debts they settled (their ratio is the batches a job
    /// settles at once).
    jobs: u64,
    debts: u64,
}

type Answer = tokio::sync::oneshot::Sender<Result<bool, PoolError>>;

impl CheckPool {
    /// A pool of `threads` threads (at least one) whose nice value is raised by `niceness`.
    pub fn new(threads: usize, niceness: i32) -> CheckPool {
        CheckPool::named("ingest-check", threads, niceness)
    }

    /// A pool whose threads are called `name` and their number.
    pub fn named(name: &'static str, threads: usize, niceness: i32) -> CheckPool {
        CheckPool {
            threads: threads.max(1),
            niceness,
            name,
            queue: Mutex::new(None),
            sent: Arc::default(),
            taken: Arc::default(),
            gate: Arc::default(),
        }
    }

    /// One thread per core, [`CHECK_NICENESS`] below the rest.
    pub fn per_core() -> CheckPool {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CheckPool::new(cores, CHECK_NICENESS)
    }

    /// Hands `job` to the threads, starting them first if they are not running (again,
    /// if a start failed: one failure must not stop ingest until a restart).
    fn send(&self, job: Job) -> Result<(), PoolError> {
        let tx = self.sender()?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        tx.send(job).map_err(|_| {
            self.sent.fetch_sub(1, Ordering::Relaxed);
            PoolError::Dropped
        })
    }

    /// The queue to the threads, starting them first if they are not running.
    fn sender(&self) -> Result<mpsc::Sender<Job>, PoolError> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match &mut *queue {
            Some(tx) => tx.clone(),
            None => queue
                .insert(start(self.name, self.threads, self.niceness).map_err(PoolError::Start)?)
                .clone(),
        })
    }

    /// Whether the `R`s of `debt` are torsion-free ([`TorsionDebt::settle`]), settled on
    /// a pool thread together with the debts of every batch checked meanwhile: one job
    /// settles all that wait when its turn comes, queued behind the checks handed to the
    /// pool before it, so under load it finds many (their aggregate test's fixed cost, 128
    /// `[L]X`, was a fifth of an ingest's CPU when each batch paid it). While one job is
    /// queued or running no other is queued; debts arriving during its run get the next
    /// one. An answer dropped (the client hung up) has its debt left out.
    pub async fn torsion_free(&self, debt: TorsionDebt) -> Result<bool, PoolError> {
        if debt.is_empty() {
            return Ok(true);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = {
            let mut gate = lock(&self.gate);
            gate.waiting.push((debt, tx));
            !std::mem::replace(&mut gate.queued, true)
        };
        if first {
            match self.sender() {
                Ok(queue) => queue_settling(&self.gate, queue),
                Err(e) => fail_waiting(&mut lock(&self.gate), &e),
            }
        }
        rx.await.map_err(|_| PoolError::Dropped)?
    }

    /// Runs `f` on one of the pool's threads and answers its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let taken = Arc::clone(&self.taken);
        let job: Job = Box::new(move || {
            taken.fetch_add(1, Ordering::Relaxed);
            // Nobody waits for it any more (the client hung up): dropped unrun, with what
            // it holds (the body and its share of the budget).
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        self.send(job)?;
        match rx.await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(_)) => Err(PoolError::Panicked),
            Err(_) => Err(PoolError::Dropped),
        }
    }

    /// The pool's Prometheus lines: batches checked, and batches read and waiting for a
    /// check thread (a queue that stays long means the checks, not the writer, set the pace).
    pub fn render(&self, out: &mut String) {
        let taken = self.taken.load(Ordering::Relaxed);
        let waiting = self.sent.load(Ordering::Relaxed).saturating_sub(taken);
        let _ = write!(
            out,
            "# HELP spacesync_hub_ingest_checks_total Ingest batches a check thread took (parsed and signatures verified; dropped unrun when the client had gone).\n\
             # TYPE spacesync_hub_ingest_checks_total counter\n\
             spacesync_hub_ingest_checks_total {taken}\n\
             # HELP spacesync_hub_ingest_checks_waiting Ingest batches read and waiting for a check thread.\n\
             # TYPE spacesync_hub_ingest_checks_waiting gauge\n\
             spacesync_hub_ingest_checks_waiting {waiting}\n"
        );
        let (jobs, debts) = {
            let gate = lock(&self.gate);
            (gate.jobs, gate.debts)
        };
        let _ = write!(
            out,
            "# HELP spacesync_hub_ingest_torsion_settles_total Jobs that tested the signatures' R points of the batches checked meanwhile for torsion, all at once.\n\
             # TYPE spacesync_hub_ingest_torsion_settles_total counter\n\
             spacesync_hub_ingest_torsion_settles_total {jobs}\n\
             # HELP spacesync_hub_ingest_torsion_batches_total Batches whose R points those jobs tested (over the jobs: the batches a test covers).\n\
             # TYPE spacesync_hub_ingest_torsion_batches_total counter\n\
             spacesync_hub_ingest_torsion_batches_total {debts}\n"
        );
    }
}

fn lock(gate: &Mutex<Gate>) -> std::sync::MutexGuard<'_, Gate> {
    gate.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers every waiting debt with `e` and leaves no job queued.
fn fail_waiting(gate: &mut Gate, e: &PoolError) {
    gate.queued = false;
    for (_, answer) in gate.waiting.drain(..) {
        let _ = answer.send(Err(e.clone()));
    }
}

/// Queues a job that settles whatever waits at the gate when it runs, and queues the next
/// one if more came meanwhile (`gate.queued` is set by the caller and stays set).
fn queue_settling(gate: &Arc<Mutex<Gate>>, queue: mpsc::Sender<Job>) {
    let job_gate = Arc::clone(gate);
    let next = queue.clone();
    let job: Job = Box::new(move || {
        let waiting: Vec<(TorsionDebt, Answer)> = std::mem::take(&mut lock(&job_gate).waiting)
            .into_iter()
            .filter(|(_, answer)| !answer.is_closed())
            .collect();
        let debts: Vec<&TorsionDebt> = waiting.iter().map(|(d, _)| d).collect();
        let verdicts = catch_unwind(AssertUnwindSafe(|| TorsionDebt::settle(&debts)));
        let settled = debts.len() as u64;
        drop(debts);
        {
            let mut g = lock(&job_gate);
            g.jobs += 1;
            g.debts += settled;
        }
        match verdicts {
            Ok(verdicts) => {
                for ((_, answer), clean) in waiting.into_iter().zip(verdicts) {
                    let _ = answer.send(Ok(clean));
                }
            }
            Err(_) => {
                for (_, answer) in waiting {
                    let _ = answer.send(Err(PoolError::Panicked));
                }
            }
        }
        let mut g = lock(&job_gate);
        if g.waiting.is_empty() {
            g.queued = false;
        } else {
            drop(g);
            queue_settling(&job_gate, next);
        }
    });
    if queue.send(job).is_err() {
        fail_waiting(&mut lock(gate), &PoolError::Dropped);
    }
}

/// Starts the threads, each taking jobs from one queue until every sender is gone.
fn start(name: &str, threads: usize, niceness: i32) -> Result<mpsc::Sender<Job>, String> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                lower_own_priority(niceness);
                loop {
                    // The lock is held only to take a job, not to run it.
                    let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                }
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(tx)
}

/// Raises the calling thread's nice value by `by` (Linux: a thread's nice value is its
/// own). A failure costs only the ordering, so it is logged, not returned.
#[cfg(target_os = "linux")]
fn lower_own_priority(by: i32) {
    // SAFETY: getpriority and setpriority read and set the calling thread's nice value
    // (who = 0 is the caller; on Linux, the calling thread); no memory is passed.
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let to = now.saturating_add(by).min(19);
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, to) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), nice = to, "Could not lower the priority of a signature-checking thread; the serial stage (the ingest writer, or verify's walk) shares the cores with the checks: slower under load, nothing else.");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_own_priority(_by: i32) {}

/// The calling thread's nice value (for tests).
#[cfg(all(test, target_os = "linux"))]
fn own_niceness() -> i32 {
    // SAFETY: as in `lower_own_priority`.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_answer_in_the_pool() {
        let pool = CheckPool::new(2, 0);
        let here = std::thread::current().id();
        let (there, name) = pool
            .run(|| {
                let t = std::thread::current();
                (t.id(), t.name().map(str::to_owned))
            })
            .await
            .expect("ran");
        assert_ne!(there, here);
        assert!(name.is_some_and(|n| n.starts_with("ingest-check-")));
        let pool = Arc::new(pool);
        let mut runs = tokio::task::JoinSet::new();
        for i in 0..20u64 {
            let pool = Arc::clone(&pool);
            runs.spawn(async move { (i, pool.run(move || (0..=i).sum::<u64>()).await) });
        }
        let mut sums = vec![0; 20];
        while let Some(done) = runs.join_next().await {
            let (i, sum) = done.expect("joined");
            sums[i as usize] = sum.expect("ran");
        }
        assert_eq!(
            sums,
            (0..20u64).map(|i| i * (i + 1) / 2).collect::<Vec<_>>()
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_pool_runs_below_the_callers_priority_and_the_caller_keeps_its_own() {
        // On a thread of its own, brought back to nice 0 where that is allowed (as root,
        // as CI runs): under `nice -n 19` the +7 could not show (19 is the floor).
        let seen = std::thread::spawn(|| {
            // SAFETY: as in `lower_own_priority`; this thread's own nice value.
            let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
            let mine = own_niceness();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            // The pool's threads start from this thread, and inherit its nice value.
            let theirs = rt.block_on(CheckPool::new(1, 7).run(own_niceness));
            // Far past the floor: capped there, and no error.
            let low = rt.block_on(CheckPool::new(1, 40).run(own_niceness));
            (mine, theirs, low, own_niceness())
        })
        .join()
        .expect("joined");
        let (mine, theirs, low, after) = seen;
        assert!(
            mine <= 12,
            "this test needs a thread at nice 12 or less to see +7 (it runs at {mine}): run it as root or without `nice`"
        );
        assert_eq!(theirs.expect("ran"), mine + 7);
        assert_eq!(after, mine, "the caller's priority changed");
        assert_eq!(low.expect("ran"), 19);
    }

    #[tokio::test]
    async fn a_job_whose_caller_went_away_is_dropped_unrun_and_the_gauge_comes_back() {
        let pool = Arc::new(CheckPool::new(1, 0));
        // Occupies the only thread until released.
        let (release, gate) = mpsc::channel::<()>();
        let blocker = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(move || gate.recv().is_ok()).await })
        };
        let gauges = |pool: &CheckPool| {
            let mut out = String::new();
            pool.render(&mut out);
            let get = |name: &str| -> u64 {
                out.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                    .unwrap_or_else(|| panic!("{name} missing from {out}"))
            };
            (
                get("spacesync_hub_ingest_checks_total"),
                get("spacesync_hub_ingest_checks_waiting"),
            )
        };
        let settle = |want: (u64, u64)| {
            let pool = Arc::clone(&pool);
            async move {
                for _ in 0..500 {
                    if gauges(&pool) == want {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                panic!("the gauges never read {want:?}: {:?}", gauges(&pool));
            }
        };
        settle((1, 0)).await;
        let ran = Arc::new(AtomicU64::new(0));
        for n in 1..=5u64 {
            let (p, r) = (Arc::clone(&pool), Arc::clone(&ran));
            let caller =
                tokio::spawn(async move { p.run(move || r.fetch_add(1, Ordering::Relaxed)).await });
            settle((1, n)).await;
            // The request's future is dropped, as when its client hangs up.
            caller.abort();
            let _ = caller.await;
        }
        // One still wanted, behind them.
        let wanted = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(|| 42u8).await })
        };
        settle((1, 6)).await;
        release.send(()).expect("the blocker waits");
        assert!(blocker.await.expect("joined").expect("ran"));
        assert_eq!(wanted.await.expect("joined").expect("ran"), 42);
        settle((7, 0)).await;
        assert_eq!(
            ran.load(Ordering::Relaxed),
            0,
            "a job nobody waited for ran"
        );
    }

    #[tokio::test]
    async fn a_job_that_panics_answers_an_error_and_the_thread_takes_the_next() {
        let pool = CheckPool::new(1, 0);
        let r = pool.run(|| -> u8 { panic!("a bug in a check") }).await;
        assert!(matches!(r, Err(PoolError::Panicked)), "{r:?}");
        assert_eq!(pool.run(|| 5u8).await.expect("the thread lived on"), 5);
    }

    /// A debt of `n` honest signatures, or with a torsion `R` (torsion point 4, order 2)
    /// at item 0 that passed the batch equation (tried again until its weight is even).
    fn debt(n: usize, seed: u8, torsion: bool) -> TorsionDebt {
        use ed25519_dalek::{Signature, SigningKey};
        use spacesync_shared::sig::{secret_scalar, sign_with_torsion_in_r};
        let a = secret_scalar(&[seed; 32]);
        let vk = SigningKey::from_bytes(&[seed; 32]).verifying_key();
        let msgs: Vec<Vec<u8>> = (0..n).map(|i| format!("{seed}/{i}").into_bytes()).collect();
        let sigs: Vec<Signature> = msgs
            .iter()
            .enumerate()
            .map(|(i, msg)| {
                let r = curve25519_dalek::scalar::Scalar::from(7u64 + i as u64);
                let t = if torsion && i == 0 { 4 } else { 0 };
                Signature::from_bytes(&sign_with_torsion_in_r(&a, &r, t, msg))
            })
            .collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let vks = vec![vk; n];
        for _ in 0..200 {
            let mut debt = TorsionDebt::new();
            if spacesync_shared::sig::verify_batch_deferring(&refs, &sigs, &vks, &mut debt).is_ok()
            {
                return debt;
            }
            assert!(torsion, "honest signatures refused");
        }
        panic!("the torsion R never passed the batch equation in 200 tries");
    }

    /// Debts handed in while the pool is busy are settled by one job; a torsion debt
    /// among them is answered `false`, the others `true`.
    #[tokio::test]
    async fn debts_that_wait_together_are_settled_by_one_job_and_each_answered() {
        let pool = Arc::new(CheckPool::new(1, 0));
        let (release, gate) = mpsc::channel::<()>();
        let busy = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(move || gate.recv().is_ok()).await })
        };
        let mut answers = Vec::new();
        for i in 0..6u8 {
            let pool = Arc::clone(&pool);
            let d = debt(40, i, i == 3);
            answers.push(tokio::spawn(async move { pool.torsion_free(d).await }));
        }
        // Every debt is waiting at the gate before the one thread is free.
        for _ in 0..500 {
            if lock(&pool.gate).waiting.len() == 6 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(lock(&pool.gate).waiting.len(), 6);
        release.send(()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            busy.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"))
        );
        for (i, answer) in answers.into_iter().enumerate() {
            let clean = answer
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(clean, i != 3, "debt {i}");
        }
        let mut out = String::new();
        pool.render(&mut out);
        assert!(
            out.contains("spacesync_hub_ingest_torsion_settles_total 1\n"),
            "{out}"
        );
        assert!(
            out.contains("spacesync_hub_ingest_torsion_batches_total 6\n"),
            "{out}"
        );
        // The gate is free again: a later debt gets a job of its own.
        assert!(
            pool.torsion_free(debt(3, 9, false))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(
            pool.torsion_free(TorsionDebt::new())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        );
    }
}
