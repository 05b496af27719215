//! Waiting before trying again: the one retry policy of [`spacesync_shared::retry`]
//! (capped exponential backoff with full jitter, `Retry-After` as a floor — the same
//! arithmetic the hub's webhook delivery uses), with the agent's randomness and waiting.
//!
//! This is the only module that uses the `backoff` crate: [`retry`] is its
//! `future::retry_notify` (the tokio timer loop), driven by [`Backoff`], which implements
//! its `Backoff` trait over the shared policy. Two of that crate's habits would be wrong
//! for an agent and are avoided: its `ExponentialBackoff` gives up after 15 minutes (ours
//! never returns `None`: an agent never gives up on a transient fault), and its loop lets
//! a server's `Retry-After` *replace* the delay (we hand it to the policy as a floor, so the
//! larger of the two wins and the schedule still advances). The pusher, whose waits also
//! end on new entries or shutdown, draws its delays from [`Backoff::next_delay`].

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::warn;

pub use spacesync_shared::retry::{MAX_RETRY_AFTER, Schedule, parse_retry_after};

/// A `Retry-After` handed from a failed attempt to the next delay.
type Floor = Arc<Mutex<Option<Duration>>>;

/// Successive delays of one run of failures; [`Backoff::reset`] after a success.
pub struct Backoff {
    schedule: Schedule,
    /// Retries so far in this run of failures (the policy's `attempt`).
    attempt: u32,
    rng: StdRng,
    /// Set by [`retry`]'s operation when the server sent `Retry-After`.
    floor: Floor,
}

impl Backoff {
    /// A schedule with delays drawn from the operating system's randomness.
    pub fn new(schedule: Schedule) -> Backoff {
        Backoff::with_rng(schedule, StdRng::from_os_rng())
    }

    /// A reproducible schedule (tests).
    pub fn seeded(schedule: Schedule, seed: u64) -> Backoff {
        Backoff::with_rng(schedule, StdRng::seed_from_u64(seed))
    }

    fn with_rng(schedule: Schedule, rng: StdRng) -> Backoff {
        Backoff {
            schedule,
            attempt: 0,
            rng,
            floor: Floor::default(),
        }
    }

    /// The next delay: uniform in `[0, min(cap, base · 2^n)]`, but at least `retry_after`.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let d = self
            .schedule
            .delay(self.attempt, self.rng.random(), retry_after);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl backoff::backoff::Backoff for Backoff {
    fn reset(&mut self) {
        Backoff::reset(self);
    }

    fn next_backoff(&mut self) -> Option<Duration> {
        let floor = self.floor.lock().unwrap_or_else(|p| p.into_inner()).take();
        Some(self.next_delay(floor))
    }
}

/// How an attempt failed.
#[derive(Debug)]
pub enum Failure<E> {
    /// Worth retrying (connection refused, timeout, 5xx, 429 …).
    Transient {
        /// What happened.
        error: E,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (a 4xx that needs a person).
    Permanent(E),
}

/// Runs `op` until it succeeds or fails permanently; transient failures are retried forever
/// on `schedule`, each logged at WARN with `what`.
pub async fn retry<T, E, F, Fut>(schedule: Schedule, what: &str, mut op: F) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let backoff = Backoff::new(schedule);
    let floor = backoff.floor.clone();
    let mut attempt: u64 = 0;
    backoff::future::retry_notify(
        backoff,
        || {
            let attempt = op();
            let floor = floor.clone();
            async move {
                match attempt.await {
                    Ok(t) => Ok(t),
                    Err(Failure::Permanent(e)) => Err(backoff::Error::Permanent(e)),
                    Err(Failure::Transient { error, retry_after }) => {
                        *floor.lock().unwrap_or_else(|p| p.into_inner()) = retry_after;
                        Err(backoff::Error::Transient {
                            err: error,
                            retry_after: None,
                        })
                    }
                }
            }
        },
        |error: E, delay: Duration| {
            attempt += 1;
            warn!(
                what,
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %error,
                "Attempt failed; will retry."
            );
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const S: Schedule = Schedule {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    };

    #[test]
    fn delays_are_full_jitter_under_a_capped_doubling_ceiling() {
        let mut b = Backoff::seeded(S, 7);
        let mut below_half = 0;
        for n in 0..40u32 {
            let ceiling = S.base.saturating_mul(2u32.saturating_pow(n)).min(S.cap);
            let d = b.next_delay(None);
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
            if d < ceiling / 2 {
                below_half += 1;
            }
        }
        // Full jitter: about half the draws fall below half the ceiling.
        assert!((8..=32).contains(&below_half), "{below_half}");
        // Mean at the cap is about cap / 2.
        let mean = (0..2000)
            .map(|_| b.next_delay(None).as_secs_f64())
            .sum::<f64>()
            / 2000.0;
        assert!((2.2..2.8).contains(&mean), "{mean}");
        b.reset();
        assert!(b.next_delay(None) <= S.base);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::seeded(S, 1);
        for _ in 0..20 {
            assert!(b.next_delay(Some(Duration::from_secs(9))) >= Duration::from_secs(9));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_never_gives_up_on_transient_faults_and_stays_capped() {
        let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let c = calls.clone();
        let start = Instant::now();
        // 500 failures × up to 5 s: far beyond backoff's default 15-minute give-up.
        let out: Result<u32, String> = retry(S, "test", || {
            let c = c.clone();
            async move {
                let mut v = c.lock().unwrap_or_else(|p| p.into_inner());
                v.push(Instant::now());
                if v.len() <= 500 {
                    Err(Failure::Transient {
                        error: "503".to_string(),
                        retry_after: None,
                    })
                } else {
                    Ok(42)
                }
            }
        })
        .await;
        assert_eq!(out, Ok(42));
        let v = calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let gaps: Vec<Duration> = v.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g <= S.cap + Duration::from_millis(1)));
        let elapsed = v.last().map(|l| *l - start).unwrap_or_default();
        assert!(elapsed > Duration::from_secs(15 * 60), "{elapsed:?}");
        // Jittered: the gaps at the cap are not all the same.
        let distinct: std::collections::BTreeSet<_> = gaps[20..].iter().collect();
        assert!(distinct.len() > 100);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_end_the_retry_at_once() {
        let mut n = 0;
        let out: Result<(), String> = retry(S, "test", || {
            n += 1;
            async { Err(Failure::Permanent("401".to_string())) }
        })
        .await;
        assert_eq!(out, Err("401".to_string()));
        assert_eq!(n, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_waits_at_least_the_servers_retry_after() {
        let start = Instant::now();
        let mut n = 0;
        let out: Result<u32, String> = retry(S, "test", || {
            n += 1;
            let first = n == 1;
            async move {
                if first {
                    Err(Failure::Transient {
                        error: "429".to_string(),
                        retry_after: Some(Duration::from_secs(30)),
                    })
                } else {
                    Ok(1)
                }
            }
        })
        .await;
        assert_eq!(out, Ok(1));
        let waited = start.elapsed();
        // The floor, not a replacement for the schedule: 30 s, plus nothing of the
        // 100 ms ceiling that would outgrow it.
        assert!(
            (Duration::from_secs(30)..Duration::from_millis(30_100)).contains(&waited),
            "{waited:?}"
        );
    }
}
