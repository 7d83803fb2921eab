//! The delivery rules, pure: what an HTTP answer means ([`Verdict`]), when to try again
//! (exponential backoff with jitter, `Retry-After`, the retry horizon) and when an endpoint
//! starts failing or recovers ([`EndpointHealth`], for its log lines). No I/O, no clock of its
//! own: callers pass `now`.

use std::time::{Duration, Instant};

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 410 Gone: the receiver wants no more; the event is not retried.
    Gone,
    /// Anything else: try again, not before `retry_after` if the receiver said so.
    Retry { retry_after: Option<Duration> },
}

/// Classifies an HTTP status (with its `Retry-After` header, when present).
pub fn verdict(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        _ => Verdict::Retry {
            retry_after: retry_after.and_then(parse_retry_after),
        },
    }
}

/// `Retry-After` in its delay-seconds form (an HTTP date is ignored: the backoff applies).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The backoff schedule of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before attempt `failed + 1` after `failed` failures (from 1): `initial` doubled per
    /// failure up to `max`, of which a random half (`jitter` in `[0, 1)`) is taken off so
    /// retries of many rooms spread out.
    pub fn delay(&self, failed: u32, jitter: f64) -> Duration {
        let exp = failed.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        base.mul_f64(1.0 - jitter / 2.0)
    }

    /// When to try again after `failed` failures at `now`, or `None` when that would be past
    /// `give_up_at` (the event's time plus the retry horizon): the event is dropped.
    pub fn next_attempt(
        &self,
        now: Instant,
        failed: u32,
        jitter: f64,
        retry_after: Option<Duration>,
        give_up_at: Instant,
    ) -> Option<Instant> {
        let delay = self
            .delay(failed, jitter)
            .max(retry_after.unwrap_or_default());
        let at = now + delay;
        (at <= give_up_at).then_some(at)
    }
}

/// What changed about an endpoint's health with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    Steady,
    /// The first failure after success (or at start).
    StartedFailing,
    /// The first success after `failures` failed attempts over `down_for`.
    Recovered {
        down_for: Duration,
        failures: u64,
    },
}

/// Whether an endpoint is failing, from the outcome of every attempt to it (all rooms).
#[derive(Debug, Clone, Default)]
pub struct EndpointHealth {
    failing_since: Option<Instant>,
    failures: u64,
}

impl EndpointHealth {
    pub fn failed(&mut self, now: Instant) -> HealthChange {
        self.failures += 1;
        if self.failing_since.is_some() {
            return HealthChange::Steady;
        }
        self.failing_since = Some(now);
        HealthChange::StartedFailing
    }

    pub fn succeeded(&mut self, now: Instant) -> HealthChange {
        let failures = std::mem::take(&mut self.failures);
        match self.failing_since.take() {
            Some(since) => HealthChange::Recovered {
                down_for: now.saturating_duration_since(since),
                failures,
            },
            None => HealthChange::Steady,
        }
    }

    pub fn is_failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_verdicts() {
        let cases: &[(u16, Option<&str>, Verdict)] = &[
            (200, None, Verdict::Delivered),
            (204, None, Verdict::Delivered),
            (299, None, Verdict::Delivered),
            (301, None, Verdict::Retry { retry_after: None }),
            (410, None, Verdict::Gone),
            (
                429,
                Some(" 7 "),
                Verdict::Retry {
                    retry_after: Some(Duration::from_secs(7)),
                },
            ),
            (
                503,
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                Verdict::Retry { retry_after: None },
            ),
            (500, None, Verdict::Retry { retry_after: None }),
        ];
        for (status, retry_after, want) in cases {
            assert_eq!(verdict(*status, *retry_after), *want, "{status}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_takes_at_most_half() {
        let b = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        };
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(b.delay(1, 0.0)), 500);
        assert_eq!(ms(b.delay(2, 0.0)), 1000);
        assert_eq!(ms(b.delay(5, 0.0)), 8000);
        assert_eq!(ms(b.delay(8, 0.0)), 60_000);
        assert_eq!(ms(b.delay(1000, 0.0)), 60_000);
        assert_eq!(ms(b.delay(2, 0.999_999)), 500);
        assert_eq!(ms(b.delay(2, 0.5)), 750);
    }

    #[test]
    fn retries_stop_at_the_horizon_and_honour_retry_after() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let give_up = t0 + Duration::from_secs(5);
        assert_eq!(
            b.next_attempt(t0, 1, 0.0, None, give_up),
            Some(t0 + Duration::from_secs(1))
        );
        assert_eq!(
            b.next_attempt(t0, 1, 0.0, Some(Duration::from_secs(3)), give_up),
            Some(t0 + Duration::from_secs(3))
        );
        assert_eq!(b.next_attempt(t0, 4, 0.0, None, give_up), None);
    }

    #[test]
    fn health_reports_the_first_failure_and_the_recovery_once() {
        let t0 = Instant::now();
        let mut h = EndpointHealth::default();
        assert_eq!(h.succeeded(t0), HealthChange::Steady);
        assert_eq!(h.failed(t0), HealthChange::StartedFailing);
        assert!(h.is_failing());
        assert_eq!(h.failed(t0), HealthChange::Steady);
        assert_eq!(
            h.succeeded(t0 + Duration::from_secs(3)),
            HealthChange::Recovered {
                down_for: Duration::from_secs(3),
                failures: 2
            }
        );
        assert_eq!(h.succeeded(t0), HealthChange::Steady);
        assert!(!h.is_failing());
    }
}
