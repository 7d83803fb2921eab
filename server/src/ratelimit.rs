//! Per-connection rate limiting, pure: a token bucket for messages and a
//! sliding window of rejections that decides when flooding becomes abuse.
//! Time is passed in explicitly so tests need no clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long rejections are remembered when deciding on abuse.
pub const ABUSE_WINDOW: Duration = Duration::from_secs(10);

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Not relayed; answer `error rate_limited`.
    Reject,
    /// Rejected too often within [`ABUSE_WINDOW`]: close 1008 `rate_limited`.
    Abuse,
}

/// A token bucket (`rate` tokens per second, at most `burst`) plus the
/// rejection window: after `burst` rejections within 10 s the connection is
/// considered abusive.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    rejections: VecDeque<Instant>,
    max_rejections: usize,
}

impl RateLimiter {
    pub fn new(rate_per_second: u32, burst: u32, now: Instant) -> Self {
        RateLimiter {
            rate: f64::from(rate_per_second),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
            rejections: VecDeque::new(),
            max_rejections: burst.max(1) as usize,
        }
    }

    /// Accounts for one message arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        while let Some(first) = self.rejections.front() {
            if now.saturating_duration_since(*first) >= ABUSE_WINDOW {
                self.rejections.pop_front();
            } else {
                break;
            }
        }
        self.rejections.push_back(now);
        if self.rejections.len() >= self.max_rejections {
            Verdict::Abuse
        } else {
            Verdict::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, 5, t0);
        for i in 0..5 {
            assert_eq!(rl.check(t0), Verdict::Allow, "message {i} within burst");
        }
        assert_eq!(rl.check(t0), Verdict::Reject);
        // 100 ms at 10/s refills exactly one token.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(rl.check(t1), Verdict::Allow);
        assert_eq!(rl.check(t1), Verdict::Reject);
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(rl.check(t2), Verdict::Allow);
        }
        assert_eq!(rl.check(t2), Verdict::Reject);
    }

    #[test]
    fn burst_rejections_within_window_is_abuse() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1, 3, t0);
        for _ in 0..3 {
            assert_eq!(rl.check(t0), Verdict::Allow);
        }
        assert_eq!(rl.check(t0), Verdict::Reject);
        assert_eq!(rl.check(t0), Verdict::Reject);
        assert_eq!(rl.check(t0), Verdict::Abuse);
    }

    #[test]
    fn old_rejections_are_forgotten() {
        let t0 = Instant::now();
        // rate 0.0001/s would be ideal; 1/s with far-apart rejections works too.
        let mut rl = RateLimiter::new(1, 2, t0);
        assert_eq!(rl.check(t0), Verdict::Allow);
        assert_eq!(rl.check(t0), Verdict::Allow);
        assert_eq!(rl.check(t0), Verdict::Reject);
        // 11 s later: the bucket refilled and the old rejection expired.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(rl.check(t1), Verdict::Allow);
        assert_eq!(rl.check(t1), Verdict::Allow);
        assert_eq!(
            rl.check(t1),
            Verdict::Reject,
            "only one rejection in the window"
        );
        assert_eq!(rl.check(t1), Verdict::Abuse);
    }

    #[test]
    fn time_going_backwards_does_not_panic_or_refill() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut rl = RateLimiter::new(100, 2, t0);
        assert_eq!(rl.check(t0), Verdict::Allow);
        assert_eq!(rl.check(t0), Verdict::Allow);
        assert_eq!(rl.check(t0 - Duration::from_secs(1)), Verdict::Reject);
    }
}
