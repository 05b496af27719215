//! The one retry policy: how long to wait before trying again after a transient fault.
//!
//! Capped exponential backoff with full jitter: before retry `n` (0 for the first) the
//! ceiling is `min(cap, base · 2^n)` and the delay is drawn uniformly from `[0, ceiling]`,
//! so many agents (or webhooks) that failed at the same moment do not come back at the same
//! moment. A server's `Retry-After` is a floor: the delay is the larger of it and the drawn
//! one. The policy never gives up: whether to stop is the caller's decision (a permanent
//! refusal), never the clock's.
//!
//! This is pure arithmetic, used by the agent's pusher and notice forwarder
//! (`agent/src/retry.rs` draws the randomness and waits) and by the hub's webhook delivery.
//! The caller supplies the random draw, so this module reads no clock and no random
//! source — as everything in `shared`, it can be tested without either.

use std::time::Duration;

/// The largest `Retry-After` honoured: a hub that asks for more is waited for an hour,
/// then asked again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The shape of a retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
}

/// Seconds as a `Duration`; anything not a positive finite number is zero.
fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(1e9))
    } else {
        Duration::ZERO
    }
}

impl Schedule {
    /// From seconds (as in `agent.toml`): the base is at least a millisecond, the cap at
    /// least the base.
    pub fn from_secs(base: f64, cap: f64) -> Schedule {
        let base = secs(base).max(Duration::from_millis(1));
        Schedule {
            base,
            cap: secs(cap).max(base),
        }
    }

    /// The ceiling before retry `attempt` (0-based): `min(cap, base · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.checked_pow(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before retry `attempt` (0-based). `draw` is a uniformly random `u64` (the
    /// caller's randomness): the delay is `ceiling · draw / u64::MAX`, so `[0, ceiling]`
    /// uniformly, but at least `retry_after` (itself at most [`MAX_RETRY_AFTER`]).
    pub fn delay(&self, attempt: u32, draw: u64, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos();
        let nanos = ceiling * u128::from(draw) / u128::from(u64::MAX);
        let jittered = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let floor = retry_after.unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER);
        jittered.max(floor)
    }
}

/// Parses a `Retry-After` header value given in seconds (HTTP dates are ignored), at most
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Schedule = Schedule {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    };

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let ms: Vec<u128> = (0..9).map(|n| S.ceiling(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(S.ceiling(u32::MAX), S.cap);
    }

    #[test]
    fn the_draw_spans_zero_to_the_ceiling() {
        for n in [0, 3, 40] {
            assert_eq!(S.delay(n, 0, None), Duration::ZERO);
            assert_eq!(S.delay(n, u64::MAX, None), S.ceiling(n));
            let half = S.delay(n, u64::MAX / 2, None);
            let want = S.ceiling(n) / 2;
            assert!(half.abs_diff(want) <= Duration::from_nanos(1), "{half:?}");
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_is_capped() {
        let nine = Some(Duration::from_secs(9));
        assert_eq!(S.delay(0, u64::MAX, nine), Duration::from_secs(9));
        assert_eq!(
            S.delay(0, 0, Some(Duration::from_secs(1 << 40))),
            MAX_RETRY_AFTER
        );
        // A Retry-After below the drawn delay changes nothing.
        let d = S.delay(6, u64::MAX, Some(Duration::from_millis(1)));
        assert_eq!(d, S.cap);
    }

    #[test]
    fn schedules_from_seconds_are_sane() {
        let s = Schedule::from_secs(0.5, 60.0);
        assert_eq!(s.base, Duration::from_millis(500));
        assert_eq!(s.cap, Duration::from_secs(60));
        let odd = Schedule::from_secs(f64::NAN, -1.0);
        assert_eq!(odd.base, Duration::from_millis(1));
        assert_eq!(odd.cap, odd.base);
        assert_eq!(Schedule::from_secs(10.0, 1.0).cap, Duration::from_secs(10));
    }

    #[test]
    fn retry_after_is_read_in_seconds_only() {
        assert_eq!(parse_retry_after(Some(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(Some("99999")), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(Some("-1")), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
