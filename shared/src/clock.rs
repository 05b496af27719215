//! Time, injected. Nothing outside this module reads the wall clock: deadlines,
//! bulletins and tests all depend on the clock they are given.

use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until told to move: tests and replays.
#[derive(Debug)]
pub struct FixedClock(Mutex<DateTime<Utc>>);

impl FixedClock {
    /// A clock reading `at`.
    pub fn new(at: DateTime<Utc>) -> FixedClock {
        FixedClock(Mutex::new(at))
    }

    /// Sets the time.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A clock that starts at a chosen instant and runs `speed` times faster than real time:
/// demos that run a campaign of months in minutes.
#[derive(Debug)]
pub struct ScaledClock {
    start: DateTime<Utc>,
    origin: Instant,
    speed: f64,
}

impl ScaledClock {
    /// Starts at `start`, running `speed` × real time (1.0 = real time).
    pub fn new(start: DateTime<Utc>, speed: f64) -> ScaledClock {
        ScaledClock {
            start,
            origin: Instant::now(),
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
        }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        let real = self.origin.elapsed().as_secs_f64() * self.speed;
        let micros = (real * 1e6).min(i64::MAX as f64) as i64;
        self.start + Duration::microseconds(micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let t0 = DateTime::parse_from_rfc3339("2018-11-20T09:00:00+08:00")
            .unwrap()
            .with_timezone(&Utc);
        let c = FixedClock::new(t0);
        assert_eq!(c.now(), t0);
        c.advance(Duration::days(1));
        assert_eq!(c.now(), t0 + Duration::days(1));
    }

    #[test]
    fn scaled_clock_starts_at_its_start_and_never_goes_back() {
        let t0 = DateTime::parse_from_rfc3339("2018-10-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = ScaledClock::new(t0, 86_400.0);
        let a = c.now();
        let b = c.now();
        assert!(a >= t0 && b >= a);
    }
}
