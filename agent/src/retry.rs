//! How long to wait before trying again: capped exponential backoff with full jitter.
//!
//! This is the only module that uses the `backoff` crate. Its `ExponentialBackoff` gives the
//! ceiling `min(cap, base · 2^n)`; we set its own randomization to 0 and draw the actual
//! delay uniformly from `[0, ceiling]` ("full jitter"), so many agents that lost the hub
//! at the same moment do not come back at the same moment. Two of its defaults are wrong
//! for an agent and are overridden: it gives up after 15 minutes (`max_elapsed_time`) —
//! an agent must never give up on a transient fault — and it ignores the server's
//! `Retry-After`, which we honour by waiting the larger of it and the jittered delay.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backoff::backoff::Backoff as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::warn;

/// The shape of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
}

impl Schedule {
    /// From seconds (as in `agent.toml`).
    pub fn from_secs(base: f64, cap: f64) -> Schedule {
        let base = crate::config::secs(base).max(Duration::from_millis(1));
        Schedule {
            base,
            cap: crate::config::secs(cap).max(base),
        }
    }
}

/// Successive delays of one run of failures; [`Backoff::reset`] after a success.
pub struct Backoff {
    inner: backoff::ExponentialBackoff,
    schedule: Schedule,
    rng: StdRng,
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
        let inner = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(schedule.base)
            .with_randomization_factor(0.0)
            .with_multiplier(2.0)
            .with_max_interval(schedule.cap)
            .with_max_elapsed_time(None)
            .build();
        Backoff {
            inner,
            schedule,
            rng,
        }
    }

    /// The ceiling `min(cap, base · 2^n)` of the next delay (advances n).
    fn ceiling(&mut self) -> Duration {
        // With max_elapsed_time None, next_backoff never returns None; the cap is the
        // safe answer should it ever.
        self.inner
            .next_backoff()
            .unwrap_or(self.schedule.cap)
            .min(self.schedule.cap)
    }

    /// The next delay: uniform in `[0, ceiling]`, but at least `retry_after`.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(self.rng.random_range(0..=nanos));
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.inner.reset();
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
    let mut backoff = Backoff::new(schedule);
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(t) => return Ok(t),
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Transient { error, retry_after }) => {
                let delay = backoff.next_delay(retry_after);
                warn!(
                    what,
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    error = %error,
                    "Attempt failed; will retry."
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Parses a `Retry-After` header given in seconds (HTTP dates are ignored).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
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
}
