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
//! the request awaiting it holds no runtime thread. A job that panics answers
//! [`PoolError::Panicked`] and its thread takes the next one. The threads start with the
//! first job (a hub that never ingests starts none) and end when the pool is dropped.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use thiserror::Error;
use tracing::warn;

/// How much lower than the hub's other threads the checks run (added to the nice value,
/// at most 19). At +10 a check thread weighs about a tenth of the writer (Linux CFS).
pub const CHECK_NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job gave no result.
#[derive(Debug, Error)]
pub enum PoolError {
    /// The job panicked (a bug: the panic message was logged where it happened).
    #[error("checking the batch failed unexpectedly (a bug in the hub; see its log)")]
    Panicked,
    /// The pool's threads could not be started.
    #[error(
        "could not start the threads that check ingest batches: {0}; the hub is out of threads or memory"
    )]
    Start(String),
}

/// A fixed set of threads that run jobs at a lowered priority.
pub struct CheckPool {
    threads: usize,
    niceness: i32,
    queue: OnceLock<Result<mpsc::Sender<Job>, String>>,
    /// Jobs handed to the pool, and jobs a thread has taken: their difference is the queue.
    sent: Arc<AtomicU64>,
    taken: Arc<AtomicU64>,
}

impl CheckPool {
    /// A pool of `threads` threads (at least one) whose nice value is raised by `niceness`.
    pub fn new(threads: usize, niceness: i32) -> CheckPool {
        CheckPool {
            threads: threads.max(1),
            niceness,
            queue: OnceLock::new(),
            sent: Arc::default(),
            taken: Arc::default(),
        }
    }

    /// One thread per core, [`CHECK_NICENESS`] below the rest.
    pub fn per_core() -> CheckPool {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CheckPool::new(cores, CHECK_NICENESS)
    }

    fn sender(&self) -> Result<&mpsc::Sender<Job>, PoolError> {
        self.queue
            .get_or_init(|| start(self.threads, self.niceness))
            .as_ref()
            .map_err(|e| PoolError::Start(e.clone()))
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
            // A dropped receiver (the request went away) needs no answer.
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        let queue = self.sender()?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        queue
            .send(job)
            .map_err(|_| PoolError::Start("the pool's threads have all ended".into()))?;
        match rx.await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(_)) | Err(_) => Err(PoolError::Panicked),
        }
    }
}

impl CheckPool {
    /// The pool's Prometheus lines: batches checked, and batches read and waiting for a
    /// check thread (a queue that stays long means the checks, not the writer, set the pace).
    pub fn render(&self, out: &mut String) {
        let taken = self.taken.load(Ordering::Relaxed);
        let waiting = self.sent.load(Ordering::Relaxed).saturating_sub(taken);
        let _ = write!(
            out,
            "# HELP spacesync_hub_ingest_checks_total Ingest batches a check thread took (inflated, parsed, signatures verified).\n\
             # TYPE spacesync_hub_ingest_checks_total counter\n\
             spacesync_hub_ingest_checks_total {taken}\n\
             # HELP spacesync_hub_ingest_checks_waiting Ingest batches read and waiting for a check thread.\n\
             # TYPE spacesync_hub_ingest_checks_waiting gauge\n\
             spacesync_hub_ingest_checks_waiting {waiting}\n"
        );
    }
}

/// Starts the threads, each taking jobs from one queue until every sender is gone.
fn start(threads: usize, niceness: i32) -> Result<mpsc::Sender<Job>, String> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("ingest-check-{i}"))
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
pub(crate) fn lower_own_priority(by: i32) {
    // SAFETY: getpriority and setpriority read and set the calling thread's nice value
    // (who = 0 is the caller; on Linux, the calling thread); no memory is passed.
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let to = now.saturating_add(by).min(19);
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, to) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), nice = to, "Could not lower the priority of a signature-checking thread; the serial stage (the ingest writer, or verify's walk) shares the cores with the checks: slower under load, nothing else.");
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_own_priority(_by: i32) {}

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
    #[tokio::test]
    async fn the_pool_runs_below_the_callers_priority_and_the_caller_keeps_its_own() {
        let mine = own_niceness();
        let pool = CheckPool::new(1, 7);
        let theirs = pool.run(own_niceness).await.expect("ran");
        assert_eq!(theirs, (mine + 7).min(19));
        assert_eq!(own_niceness(), mine, "the caller's priority changed");
        // Capped at 19, the lowest there is.
        let low = CheckPool::new(1, 40);
        assert_eq!(low.run(own_niceness).await.expect("ran"), 19);
    }

    #[tokio::test]
    async fn a_job_that_panics_answers_an_error_and_the_thread_takes_the_next() {
        let pool = CheckPool::new(1, 0);
        let r = pool.run(|| -> u8 { panic!("a bug in a check") }).await;
        assert!(matches!(r, Err(PoolError::Panicked)), "{r:?}");
        assert_eq!(pool.run(|| 5u8).await.expect("the thread lived on"), 5);
    }
}
