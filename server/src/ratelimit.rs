//! Per-connection rate limiting, pure: a token bucket for messages, a second
//! one for what the relayed messages cost the room to deliver (frame bytes ×
//! recipients), and a sliding window of rejections that decides when flooding
//! becomes abuse. Time is passed in explicitly so tests need no clock.

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

/// The bytes a relay makes the server queue: one copy of the frame per
/// recipient. A broadcast into a room of 50 costs 49 frames, a targeted
/// message one.
pub fn delivery_cost(frame_bytes: usize, recipients: usize) -> u64 {
    let bytes = u64::try_from(frame_bytes).unwrap_or(u64::MAX);
    let recipients = u64::try_from(recipients).unwrap_or(u64::MAX);
    bytes.saturating_mul(recipients)
}

/// A token bucket: `rate` tokens per second, at most `capacity`.
///
/// A request is granted when the bucket holds its cost, or — for a request
/// dearer than the whole bucket — when the bucket is full; the whole cost is
/// then taken, so the balance may go below zero and the debt is paid back by
/// the refill. Within one instant a bucket therefore grants at most
/// `capacity` in total, or a single request larger than that.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, capacity: f64, now: Instant) -> Self {
        let capacity = capacity.max(1.0);
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn take(&mut self, cost: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= cost.min(self.capacity) {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// The limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Messages per second (any client message counts).
    pub messages_per_second: u32,
    /// Message bucket size; also the rejections within [`ABUSE_WINDOW`] that
    /// make a connection abusive.
    pub message_burst: u32,
    /// Delivered bytes (frame bytes × recipients) per second.
    pub bytes_per_second: u64,
    /// Delivered-bytes bucket size.
    pub byte_burst: u64,
}

/// The two buckets plus the rejection window: after `message_burst`
/// rejections (of either bucket) within 10 s the connection is considered
/// abusive.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    messages: Bucket,
    bytes: Bucket,
    rejections: VecDeque<Instant>,
    max_rejections: usize,
}

impl RateLimiter {
    pub fn new(limits: RateLimits, now: Instant) -> Self {
        let burst = limits.message_burst.max(1);
        // u64 → f64 loses precision only above 2^53 bytes, far beyond any
        // sensible setting.
        RateLimiter {
            messages: Bucket::new(f64::from(limits.messages_per_second), f64::from(burst), now),
            bytes: Bucket::new(
                limits.bytes_per_second as f64,
                limits.byte_burst as f64,
                now,
            ),
            rejections: VecDeque::new(),
            max_rejections: burst as usize,
        }
    }

    /// Accounts for one message arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.messages.take(1.0, now) {
            Verdict::Allow
        } else {
            self.reject(now)
        }
    }

    /// Accounts for what relaying one message costs (see [`delivery_cost`]);
    /// called after [`RateLimiter::check`] allowed it, once its recipients
    /// are known.
    pub fn check_delivery(&mut self, cost: u64, now: Instant) -> Verdict {
        if self.bytes.take(cost as f64, now) {
            Verdict::Allow
        } else {
            self.reject(now)
        }
    }

    fn reject(&mut self, now: Instant) -> Verdict {
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

    /// Message limits only: the byte bucket never refuses.
    fn messages(rate: u32, burst: u32) -> RateLimits {
        RateLimits {
            messages_per_second: rate,
            message_burst: burst,
            bytes_per_second: u64::MAX / 4,
            byte_burst: u64::MAX / 4,
        }
    }

    /// Generous message limits; the byte bucket is what is tested.
    fn bytes(rate: u64, burst: u64) -> RateLimits {
        RateLimits {
            messages_per_second: 1000,
            message_burst: 1000,
            bytes_per_second: rate,
            byte_burst: burst,
        }
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(messages(10, 5), t0);
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
        let mut rl = RateLimiter::new(messages(1, 3), t0);
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
        let mut rl = RateLimiter::new(messages(1, 2), t0);
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
        let mut rl = RateLimiter::new(messages(100, 2), t0);
        assert_eq!(rl.check(t0), Verdict::Allow);
        assert_eq!(rl.check(t0), Verdict::Allow);
        assert_eq!(rl.check(t0 - Duration::from_secs(1)), Verdict::Reject);
    }

    #[test]
    fn delivery_cost_is_bytes_times_recipients() {
        let cases: &[(usize, usize, u64)] = &[
            (60_000, 49, 2_940_000),
            (6_000, 1, 6_000),
            (500, 0, 0),
            (usize::MAX, 2, u64::MAX),
        ];
        for &(bytes, recipients, want) in cases {
            assert_eq!(
                delivery_cost(bytes, recipients),
                want,
                "{bytes} × {recipients}"
            );
        }
    }

    #[test]
    fn byte_bucket_grants_at_most_its_capacity_at_once() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(bytes(1000, 10_000), t0);
        for i in 0..4 {
            assert_eq!(rl.check_delivery(2_500, t0), Verdict::Allow, "chunk {i}");
        }
        assert_eq!(rl.check_delivery(1, t0), Verdict::Reject);
        // One second refills 1000 bytes: a 1000-byte delivery fits, 1001 not.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(rl.check_delivery(1_001, t1), Verdict::Reject);
        assert_eq!(rl.check_delivery(1_000, t1), Verdict::Allow);
        assert_eq!(rl.check_delivery(1, t1), Verdict::Reject);
    }

    #[test]
    fn a_delivery_dearer_than_the_bucket_needs_a_full_bucket_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(bytes(1000, 10_000), t0);
        // A broadcast costing 3 buckets is granted once, on a full bucket ...
        assert_eq!(rl.check_delivery(30_000, t0), Verdict::Allow);
        // ... and its debt of 20,000 takes 20 s to pay back before the next
        // byte: the long-run rate holds even for huge broadcasts.
        assert_eq!(
            rl.check_delivery(1, t0 + Duration::from_secs(19)),
            Verdict::Reject
        );
        assert_eq!(
            rl.check_delivery(1, t0 + Duration::from_millis(20_010)),
            Verdict::Allow
        );
        // Not full again yet: a second huge one waits for the whole bucket.
        assert_eq!(
            rl.check_delivery(30_000, t0 + Duration::from_secs(25)),
            Verdict::Reject
        );
        assert_eq!(
            rl.check_delivery(30_000, t0 + Duration::from_secs(31)),
            Verdict::Allow
        );
    }

    #[test]
    fn both_buckets_feed_one_rejection_window() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            RateLimits {
                messages_per_second: 1,
                message_burst: 3,
                bytes_per_second: 1,
                byte_burst: 100,
            },
            t0,
        );
        assert_eq!(rl.check(t0), Verdict::Allow);
        assert_eq!(rl.check_delivery(100, t0), Verdict::Allow);
        assert_eq!(rl.check(t0), Verdict::Allow);
        assert_eq!(rl.check_delivery(100, t0), Verdict::Reject);
        assert_eq!(rl.check(t0), Verdict::Allow);
        assert_eq!(rl.check_delivery(100, t0), Verdict::Reject);
        assert_eq!(
            rl.check(t0),
            Verdict::Abuse,
            "third rejection of either kind"
        );
    }

    /// The documented guarantee of the defaults: whatever one sender sends in
    /// one instant, no single reader gets more than its queue holds.
    #[test]
    fn default_burst_fits_a_default_reader_queue() {
        const QUEUE_MESSAGES: u64 = 256;
        const QUEUE_BYTES: u64 = 1_048_576;
        const MAX_FRAME: usize = 65_536 + 512;
        let limits = RateLimits {
            messages_per_second: 50,
            message_burst: 200,
            bytes_per_second: 262_144,
            byte_burst: 524_288,
        };
        // Worst cases for one reader: every message targeted at it (one
        // recipient each), at any frame size up to the largest.
        for frame in [200, 5_000, 30_000, MAX_FRAME] {
            let t0 = Instant::now();
            let mut rl = RateLimiter::new(limits, t0);
            let (mut messages, mut bytes) = (0u64, 0u64);
            for _ in 0..10_000 {
                if rl.check(t0) == Verdict::Allow
                    && rl.check_delivery(delivery_cost(frame, 1), t0) == Verdict::Allow
                {
                    messages += 1;
                    bytes += frame as u64;
                }
            }
            assert!(messages < QUEUE_MESSAGES, "{messages} messages of {frame}");
            assert!(bytes < QUEUE_BYTES, "{bytes} bytes in frames of {frame}");
        }
    }
}
