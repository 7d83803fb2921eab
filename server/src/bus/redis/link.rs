//! Link state and readiness of the Redis bus: whether commands work, whether Redis accepts
//! writes (not out of memory), whether the subscriber connection is up and when the readiness
//! canary last came back over it ([`Link`]), the
//! intervals derived from the presence TTL ([`Timing`]) and the pure rules read from them
//! (readiness, wedge detection, whether this instance may judge others dead, the health line).
//! Every Redis command goes through [`Inner::redis`], which keeps [`Link`] current. Room
//! subscriptions and presence are not kept here.

use std::time::{Duration, Instant};

use redis::RedisResult;

use super::Inner;
use crate::bus::BusError;

/// Intervals derived from the presence TTL (a short TTL in tests makes everything fast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: Duration,
    /// Heartbeat renewal, resync and dead-instance sweep period.
    pub heartbeat: Duration,
    /// Canary publication period.
    pub canary: Duration,
    /// Not ready once the last canary came back longer ago than this.
    pub canary_deadline: Duration,
    /// Upper bound for one Redis command; a stuck Redis becomes `bus_unavailable`.
    pub command_timeout: Duration,
    /// While Redis stays unreachable, how often the outage is logged again.
    pub outage_reminder: Duration,
}

impl Timing {
    /// Heartbeat every TTL/3 (three renewals per TTL survive one lost beat), canary every
    /// TTL/6 capped at 5 s, deadline two canary periods plus a second of slack; an outage is
    /// logged again every TTL (at most every minute).
    pub fn from_ttl(ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        let heartbeat = (ttl / 3).clamp(Duration::from_millis(250), Duration::from_secs(10));
        let canary = (ttl / 6).clamp(Duration::from_millis(250), Duration::from_secs(5));
        Timing {
            ttl,
            heartbeat,
            canary,
            canary_deadline: canary * 2 + Duration::from_secs(1),
            command_timeout: Duration::from_secs(2),
            outage_reminder: ttl.min(Duration::from_secs(60)),
        }
    }
}

/// Connection state that readiness is computed from.
#[derive(Debug, Clone, Default)]
pub(super) struct Link {
    /// The last command succeeded.
    pub(super) commands_ok: bool,
    /// The subscriber connection is up and subscribed (since when).
    pub(super) subscribed_since: Option<Instant>,
    /// When the last canary came back.
    pub(super) last_canary: Option<Instant>,
    /// When a command last failed: only a canary after it proves the path works again.
    pub(super) last_failure: Option<Instant>,
    /// Since when commands have been working without a failure.
    pub(super) commands_ok_since: Option<Instant>,
    /// The current outage of the command connection, for its log lines.
    pub(super) outage: Option<Outage>,
    /// Redis answers but refuses writes (`maxmemory` reached under `noeviction`): since the
    /// first `OOM` reply until a write that needs memory succeeds again. Reads, deletes and
    /// PUBLISH still work meanwhile, so they prove nothing about it.
    pub(super) out_of_memory: Option<Outage>,
}

/// An outage of the command connection: from its first failed command until one works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outage {
    since: Instant,
    /// When it was last logged.
    reported: Instant,
}

/// What one command's outcome changed about the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Nothing to act on: commands worked before and still do, or fail again within an
    /// outage that was logged recently.
    Steady,
    /// The first command that ever worked, without a failure before it.
    Connected,
    /// Commands work again after failing for `down_for`: events published meanwhile may be
    /// lost.
    Recovered { down_for: Duration },
    /// The first failure of an outage: after commands worked, or at start-up.
    Lost,
    /// Still failing, `down_for` into the outage, and a reminder is due.
    StillDown { down_for: Duration },
    /// The first `OOM` reply: Redis is reachable but refuses writes.
    OutOfMemory,
    /// Still refusing writes, `full_for` since the first `OOM`, and a reminder is due.
    StillOutOfMemory { full_for: Duration },
    /// A write that needs memory succeeded after `full_for` of refusals.
    MemoryBack { full_for: Duration },
}

impl Link {
    /// Records a command that succeeded at `now`.
    pub(super) fn command_ok(&mut self, now: Instant) -> Change {
        let outage = self.outage.take();
        if std::mem::replace(&mut self.commands_ok, true) {
            return Change::Steady;
        }
        self.commands_ok_since = Some(now);
        if self.last_failure.is_some() {
            Change::Recovered {
                down_for: outage.map_or(Duration::ZERO, |o| now.saturating_duration_since(o.since)),
            }
        } else {
            Change::Connected
        }
    }

    /// Records a command that failed at `now`; a reminder is due every `reminder`.
    pub(super) fn command_failed(&mut self, now: Instant, reminder: Duration) -> Change {
        // Readiness needs a canary that made the full trip after this failure.
        self.last_failure = Some(now);
        self.commands_ok = false;
        match &mut self.outage {
            None => {
                self.outage = Some(Outage {
                    since: now,
                    reported: now,
                });
                Change::Lost
            }
            Some(outage) if now.saturating_duration_since(outage.reported) >= reminder => {
                outage.reported = now;
                Change::StillDown {
                    down_for: now.saturating_duration_since(outage.since),
                }
            }
            Some(_) => Change::Steady,
        }
    }

    /// Records an `OOM` reply at `now` (the command reached Redis; record that with
    /// [`Link::command_ok`]); a reminder is due every `reminder`.
    pub(super) fn memory_full(&mut self, now: Instant, reminder: Duration) -> Change {
        match &mut self.out_of_memory {
            None => {
                self.out_of_memory = Some(Outage {
                    since: now,
                    reported: now,
                });
                Change::OutOfMemory
            }
            Some(full) if now.saturating_duration_since(full.reported) >= reminder => {
                full.reported = now;
                Change::StillOutOfMemory {
                    full_for: now.saturating_duration_since(full.since),
                }
            }
            Some(_) => Change::Steady,
        }
    }

    /// Records a write that needed memory and succeeded at `now`.
    pub(super) fn memory_ok(&mut self, now: Instant) -> Change {
        match self.out_of_memory.take() {
            Some(full) => Change::MemoryBack {
                full_for: now.saturating_duration_since(full.since),
            },
            None => Change::Steady,
        }
    }
}

/// Whether Redis refused a command because it is out of memory (`-OOM command not allowed
/// when used memory > 'maxmemory'`, also from inside a script).
pub(super) fn is_out_of_memory(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
}

/// Whether this instance may judge others dead: its own commands have worked for a full TTL.
/// Right after an outage every heartbeat may have lapsed at once; the others get one TTL to
/// renew theirs before anyone is declared lost.
pub(super) fn may_sweep(link: &Link, now: Instant, timing: &Timing) -> bool {
    link.commands_ok
        && link
            .commands_ok_since
            .is_some_and(|t| now.saturating_duration_since(t) >= timing.ttl)
}

/// Readiness, pure: commands work, Redis accepts writes (joins need them), the subscriber is
/// up and a canary came back recently over the current subscriber connection.
pub(super) fn ready_at(link: &Link, now: Instant, timing: &Timing) -> bool {
    let Some(since) = link.subscribed_since else {
        return false;
    };
    let after = link.last_failure.map_or(since, |f| f.max(since));
    link.commands_ok
        && link.out_of_memory.is_none()
        && link.last_canary.is_some_and(|t| {
            t >= after && now.saturating_duration_since(t) <= timing.canary_deadline
        })
}

/// Whether a delivery published now would come back through this instance's subscriber, pure:
/// commands work and the subscriber connection has every channel subscribed, on the Redis the
/// commands reach. After a command failed that is proven by a resubscription since, or by a
/// canary published since and received: right after a Redis restart commands work before the
/// subscriber has noticed it must resubscribe, and a numbered delivery published then reaches
/// no subscriber, although Redis confirms it; after a lost command connection alone the next
/// canary comes back over the subscriber that never left. Unlike readiness it waits for no
/// canary otherwise: a server that just started delivers at once.
pub(super) fn carries_at(link: &Link) -> bool {
    let Some(subscribed) = link.subscribed_since else {
        return false;
    };
    let proven = link
        .last_failure
        .is_none_or(|failed| subscribed >= failed || link.last_canary.is_some_and(|c| c >= failed));
    link.commands_ok && proven
}

/// The subscriber connection looks wedged: connected long enough for a canary to come back,
/// but none did within the deadline (while commands, hence the canary publish, work).
pub(super) fn subscriber_wedged(link: &Link, now: Instant, timing: &Timing) -> bool {
    let Some(since) = link.subscribed_since else {
        return false;
    };
    // Measured from the latest of: connection, last command failure, last canary.
    let last = [Some(since), link.last_failure, link.last_canary]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(since);
    link.commands_ok && now.saturating_duration_since(last) > timing.canary_deadline
}

/// Readiness and the short health line for `/webrtc/health` (never holds credentials).
pub(super) fn health_at(link: &Link, now: Instant, timing: &Timing) -> (bool, String) {
    let ready = ready_at(link, now, timing);
    let detail = if !link.commands_ok {
        "redis unreachable".to_owned()
    } else if link.out_of_memory.is_some() {
        "redis out of memory".to_owned()
    } else if link.subscribed_since.is_none() {
        "redis subscriber reconnecting".to_owned()
    } else {
        match link.last_canary {
            None => "waiting for the first canary".to_owned(),
            Some(t) if !ready => format!(
                "canary late ({} ms since the last one)",
                now.saturating_duration_since(t).as_millis()
            ),
            Some(_) => "ok".to_owned(),
        }
    };
    (ready, detail)
}

impl Inner {
    /// Runs one Redis operation with the command timeout and records whether Redis works.
    pub(super) async fn redis<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = RedisResult<T>>,
    ) -> Result<T, BusError> {
        self.redis_within(op, self.timing.command_timeout, fut)
            .await
    }

    /// [`redis`](Self::redis) with its own timeout (a PUBLISH waits `redis.publish_timeout_secs`).
    pub(super) async fn redis_within<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        fut: impl std::future::Future<Output = RedisResult<T>>,
    ) -> Result<T, BusError> {
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) if is_out_of_memory(&source) => {
                Err(BusError::OutOfMemory { op, source })
            }
            Ok(Err(source)) => Err(BusError::Redis { op, source }),
            Err(_) => Err(BusError::Timeout { op }),
        };
        let now = Instant::now();
        // An OOM reply came from Redis: it is reachable, only full.
        let reached = matches!(&result, Ok(_) | Err(BusError::OutOfMemory { .. }));
        // Taken and released before anything else is locked (see the lock order).
        let (change, memory) = {
            let mut link = self.link();
            match &result {
                Ok(_) => (link.command_ok(now), Change::Steady),
                Err(BusError::OutOfMemory { .. }) => (
                    link.command_ok(now),
                    link.memory_full(now, self.timing.outage_reminder),
                ),
                Err(_) => (
                    link.command_failed(now, self.timing.outage_reminder),
                    Change::Steady,
                ),
            }
        };
        if let Err(e) = &result {
            // Whatever this write was, Redis may not hold it: make presence whole later.
            self.presence.request_sync();
            self.log_memory(memory, e);
        }
        // One line when an outage starts (with the reason), one per reminder period while it
        // lasts, one when it ends: whichever caller saw the change logs it.
        match (&result, change) {
            (_, Change::Connected) if reached => {
                // Whatever happened before we could reach Redis, make presence whole.
                self.presence.request_sync();
                tracing::info!(parent: &self.span, "redis commands connected");
            }
            (_, Change::Recovered { down_for }) if reached => {
                self.presence.request_sync();
                // Events published while we were cut off may be lost.
                self.reconcile.request();
                self.metrics.reconnected("commands");
                tracing::info!(
                    parent: &self.span,
                    down_for_ms = millis(down_for),
                    "redis reachable again"
                );
            }
            (Err(e), change) if !reached => match change {
                Change::Lost => tracing::warn!(
                    parent: &self.span,
                    reason = %with_sources(e),
                    "redis unreachable"
                ),
                Change::StillDown { down_for } => tracing::warn!(
                    parent: &self.span,
                    reason = %with_sources(e),
                    down_for_ms = millis(down_for),
                    "redis still unreachable"
                ),
                _ => {}
            },
            _ => {}
        }
        result
    }

    /// A write that needs memory (the heartbeat's SET) succeeded: Redis accepts writes again.
    pub(super) fn memory_ok(&self) {
        let change = self.link().memory_ok(Instant::now());
        if let Change::MemoryBack { full_for } = change {
            // Joins and leaves refused meanwhile are reconciled by the resync.
            self.presence.request_sync();
            tracing::info!(
                parent: &self.span,
                full_for_ms = millis(full_for),
                "redis out of memory ended: writes accepted again"
            );
        }
    }

    /// One line when Redis starts refusing writes, one per reminder period while it does. Not
    /// an outage: Redis answers, so "unreachable" would send an operator the wrong way.
    fn log_memory(&self, change: Change, e: &BusError) {
        match change {
            Change::OutOfMemory => tracing::warn!(
                parent: &self.span,
                reason = %with_sources(e),
                "redis out of memory: writes refused (maxmemory reached); not ready until a write succeeds"
            ),
            Change::StillOutOfMemory { full_for } => tracing::warn!(
                parent: &self.span,
                reason = %with_sources(e),
                full_for_ms = millis(full_for),
                "redis still out of memory"
            ),
            _ => {}
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An error and its sources in one line, so the reason survives every log format (the JSON
/// format records only an error's own message). A source whose text its error already
/// shows (the Redis driver repeats its I/O error) is not repeated.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commands work, subscribed and a canary back, all since `t0`.
    fn healthy(t0: Instant) -> Link {
        Link {
            commands_ok: true,
            subscribed_since: Some(t0),
            last_canary: Some(t0),
            last_failure: None,
            commands_ok_since: Some(t0),
            outage: None,
            out_of_memory: None,
        }
    }

    #[test]
    fn deliveries_wait_for_the_subscriber_to_be_back() {
        let t0 = Instant::now();
        let healthy = healthy(t0);
        assert!(carries_at(&healthy));
        // Just started or just resubscribed, no canary back yet: the channels are subscribed.
        let no_canary_yet = Link {
            last_canary: None,
            ..healthy.clone()
        };
        assert!(carries_at(&no_canary_yet));
        // Commands back after a Redis restart, subscriber not yet resubscribed: not in place.
        let unsubscribed = Link {
            subscribed_since: None,
            ..healthy.clone()
        };
        assert!(!carries_at(&unsubscribed));
        let down = Link {
            commands_ok: false,
            ..healthy.clone()
        };
        assert!(!carries_at(&down));
    }

    #[test]
    fn after_a_failure_deliveries_wait_for_proof_the_subscriber_hears_this_redis() {
        let t0 = Instant::now();
        let failed = t0 + Duration::from_secs(1);
        let later = failed + Duration::from_millis(5);
        // A command failed, then one worked (the canary's publish, say): the subscriber,
        // subscribed before the failure, may be on a Redis that has since restarted empty.
        let commands_back = Link {
            last_failure: Some(failed),
            ..healthy(t0)
        };
        assert!(!carries_at(&commands_back));
        // A canary published after the failure came back over it: the same Redis.
        let canary_back = Link {
            last_canary: Some(later),
            ..commands_back.clone()
        };
        assert!(carries_at(&canary_back));
        // Or it resubscribed since.
        let resubscribed = Link {
            subscribed_since: Some(later),
            last_canary: None,
            ..commands_back.clone()
        };
        assert!(carries_at(&resubscribed));
    }

    #[test]
    fn timing_scales_with_the_ttl() {
        let t = Timing::from_ttl(Duration::from_secs(30));
        assert_eq!(t.heartbeat, Duration::from_secs(10));
        assert_eq!(t.canary, Duration::from_secs(5));
        assert_eq!(t.canary_deadline, Duration::from_secs(11));
        assert_eq!(t.outage_reminder, Duration::from_secs(30));
        let t = Timing::from_ttl(Duration::from_secs(3));
        assert_eq!(t.heartbeat, Duration::from_secs(1));
        assert_eq!(t.canary, Duration::from_millis(500));
        assert_eq!(t.canary_deadline, Duration::from_secs(2));
        assert_eq!(t.outage_reminder, Duration::from_secs(3));
        assert_eq!(
            Timing::from_ttl(Duration::from_secs(300)).outage_reminder,
            Duration::from_secs(60)
        );
        let t = Timing::from_ttl(Duration::from_millis(10));
        assert_eq!(t.ttl, Duration::from_secs(1));
        assert_eq!(t.heartbeat, Duration::from_secs(1) / 3);
        assert_eq!(t.canary, Duration::from_millis(250));
    }

    #[test]
    fn command_outcomes_report_each_transition_once() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let reminder = Duration::from_millis(100);
        let mut fresh = Link::default();
        assert_eq!(fresh.command_ok(at(0)), Change::Connected);
        assert_eq!(fresh.command_ok(at(1)), Change::Steady);
        assert_eq!(fresh.commands_ok_since, Some(at(0)));
        // Unreachable at start-up is an outage too, logged at its first failure.
        let mut link = Link::default();
        assert_eq!(link.command_failed(at(0), reminder), Change::Lost);
        assert_eq!(
            link.command_ok(at(10)),
            Change::Recovered {
                down_for: Duration::from_millis(10)
            }
        );
        // A success after a failure is a recovery, and restarts the working-since clock.
        assert_eq!(link.commands_ok_since, Some(at(10)));
        assert_eq!(link.command_failed(at(20), reminder), Change::Lost);
        assert_eq!(link.command_failed(at(30), reminder), Change::Steady);
        assert_eq!(link.last_failure, Some(at(30)));
        assert!(!link.commands_ok);
        assert_eq!(
            link.command_ok(at(40)),
            Change::Recovered {
                down_for: Duration::from_millis(20)
            }
        );
        assert_eq!(link.command_ok(at(50)), Change::Steady);
        assert_eq!(link.commands_ok_since, Some(at(40)));
    }

    #[test]
    fn a_long_outage_is_reported_again_once_per_reminder_period() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let reminder = Duration::from_millis(100);
        let mut link = healthy(t0);
        let outcomes: Vec<Change> = [0, 50, 99, 100, 150, 210, 299, 300]
            .into_iter()
            .map(|ms| link.command_failed(at(1000 + ms), reminder))
            .collect();
        let down = |ms| Change::StillDown {
            down_for: Duration::from_millis(ms),
        };
        assert_eq!(
            outcomes,
            [
                Change::Lost,
                Change::Steady,
                Change::Steady,
                down(100),
                Change::Steady,
                down(210),
                Change::Steady,
                Change::Steady,
            ],
            "reminders count from the last report, not from the start"
        );
        assert_eq!(
            link.command_ok(at(1400)),
            Change::Recovered {
                down_for: Duration::from_millis(400)
            }
        );
        // The next outage starts afresh.
        assert_eq!(link.command_failed(at(1500), reminder), Change::Lost);
    }

    #[test]
    fn a_logged_reason_carries_the_whole_chain() {
        let e = crate::bus::BusError::Redis {
            op: "canary",
            source: ::redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            )),
        };
        let text = with_sources(&e);
        assert!(
            text.starts_with("bus unavailable: redis canary failed: ")
                && text.matches("connection refused").count() == 1,
            "{text}"
        );
    }

    #[test]
    fn ready_only_while_commands_subscriber_and_canary_work() {
        let timing = Timing::from_ttl(Duration::from_secs(3));
        let t0 = Instant::now();
        let healthy = healthy(t0);
        assert!(ready_at(&healthy, t0 + Duration::from_secs(1), &timing));
        assert!(!ready_at(&healthy, t0 + Duration::from_secs(3), &timing));
        let no_canary_yet = Link {
            last_canary: None,
            ..healthy.clone()
        };
        assert!(!ready_at(&no_canary_yet, t0, &timing));
        let down = Link {
            commands_ok: false,
            ..healthy.clone()
        };
        assert!(!ready_at(&down, t0, &timing));
        let unsubscribed = Link {
            subscribed_since: None,
            ..healthy.clone()
        };
        assert!(!ready_at(&unsubscribed, t0, &timing));
        // A canary that came back over the previous subscriber connection proves nothing.
        let resubscribed = Link {
            subscribed_since: Some(t0 + Duration::from_millis(10)),
            ..healthy.clone()
        };
        assert!(!ready_at(
            &resubscribed,
            t0 + Duration::from_millis(20),
            &timing
        ));
        // Nor does one from before a command failure, once commands work again.
        let failed_since = Link {
            last_failure: Some(t0 + Duration::from_millis(10)),
            ..healthy.clone()
        };
        assert!(!ready_at(
            &failed_since,
            t0 + Duration::from_millis(20),
            &timing
        ));
        let canary_after_failure = Link {
            last_canary: Some(t0 + Duration::from_millis(30)),
            ..failed_since
        };
        assert!(ready_at(
            &canary_after_failure,
            t0 + Duration::from_millis(40),
            &timing
        ));
    }

    #[test]
    fn health_names_what_is_missing() {
        let timing = Timing::from_ttl(Duration::from_secs(3));
        let t0 = Instant::now();
        let healthy = healthy(t0);
        assert_eq!(health_at(&healthy, t0, &timing), (true, "ok".to_owned()));
        let down = Link {
            commands_ok: false,
            ..healthy.clone()
        };
        assert_eq!(
            health_at(&down, t0, &timing),
            (false, "redis unreachable".to_owned())
        );
        let unsubscribed = Link {
            subscribed_since: None,
            ..healthy.clone()
        };
        assert_eq!(
            health_at(&unsubscribed, t0, &timing),
            (false, "redis subscriber reconnecting".to_owned())
        );
        let no_canary = Link {
            last_canary: None,
            ..healthy.clone()
        };
        assert_eq!(
            health_at(&no_canary, t0, &timing),
            (false, "waiting for the first canary".to_owned())
        );
        assert_eq!(
            health_at(&healthy, t0 + Duration::from_millis(2500), &timing),
            (false, "canary late (2500 ms since the last one)".to_owned())
        );
    }

    #[test]
    fn out_of_memory_is_reported_once_reminded_and_ended_by_a_write() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let reminder = Duration::from_millis(100);
        let mut link = healthy(t0);
        assert_eq!(link.memory_ok(at(0)), Change::Steady, "nothing to end");
        let outcomes: Vec<Change> = [0, 50, 100, 150, 250]
            .into_iter()
            .map(|ms| link.memory_full(at(ms), reminder))
            .collect();
        assert_eq!(
            outcomes,
            [
                Change::OutOfMemory,
                Change::Steady,
                Change::StillOutOfMemory {
                    full_for: Duration::from_millis(100)
                },
                Change::Steady,
                Change::StillOutOfMemory {
                    full_for: Duration::from_millis(250)
                },
            ]
        );
        // Redis answers meanwhile: reads and OOM replies are not an outage.
        assert_eq!(link.command_ok(at(300)), Change::Steady);
        assert!(link.commands_ok);
        assert_eq!(
            link.memory_ok(at(400)),
            Change::MemoryBack {
                full_for: Duration::from_millis(400)
            }
        );
        assert_eq!(link.memory_ok(at(500)), Change::Steady);
        assert_eq!(link.memory_full(at(600), reminder), Change::OutOfMemory);
    }

    #[test]
    fn out_of_memory_means_not_ready_however_well_the_canary_flows() {
        let timing = Timing::from_ttl(Duration::from_secs(3));
        let t0 = Instant::now();
        let full = Link {
            out_of_memory: Some(Outage {
                since: t0,
                reported: t0,
            }),
            ..healthy(t0)
        };
        // A canary that came back after the OOM reply (PUBLISH works when Redis is full).
        let canary_later = Link {
            last_canary: Some(t0 + Duration::from_millis(10)),
            ..full.clone()
        };
        let now = t0 + Duration::from_millis(20);
        assert_eq!(
            health_at(&canary_later, now, &timing),
            (false, "redis out of memory".to_owned())
        );
        let unreachable = Link {
            commands_ok: false,
            ..full
        };
        assert_eq!(
            health_at(&unreachable, now, &timing).1,
            "redis unreachable",
            "unreachable says more than full"
        );
    }

    #[test]
    fn only_an_oom_reply_counts_as_out_of_memory() {
        let oom = ::redis::make_extension_error(
            "OOM".into(),
            Some("command not allowed when used memory > 'maxmemory'.".into()),
        );
        assert!(is_out_of_memory(&oom));
        let other = ::redis::make_extension_error("BUSY".into(), None);
        assert!(!is_out_of_memory(&other));
        let io = ::redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert!(!is_out_of_memory(&io));
    }

    #[test]
    fn wedged_means_subscribed_but_no_canary_within_the_deadline() {
        let timing = Timing::from_ttl(Duration::from_secs(3));
        let t0 = Instant::now();
        let fresh = Link {
            last_canary: None,
            ..healthy(t0)
        };
        assert!(!subscriber_wedged(
            &fresh,
            t0 + Duration::from_secs(1),
            &timing
        ));
        assert!(subscriber_wedged(
            &fresh,
            t0 + Duration::from_secs(3),
            &timing
        ));
        // A canary from before the current connection does not count as recent.
        let reconnected = Link {
            last_canary: Some(t0),
            subscribed_since: Some(t0 + Duration::from_secs(10)),
            ..fresh.clone()
        };
        assert!(!subscriber_wedged(
            &reconnected,
            t0 + Duration::from_secs(11),
            &timing
        ));
        // A command failure restarts the clock: the canary gets a full deadline to come back
        // before a long-connected, healthy subscriber is declared wedged.
        let recovered = Link {
            last_canary: Some(t0),
            last_failure: Some(t0 + Duration::from_secs(60)),
            ..fresh.clone()
        };
        assert!(!subscriber_wedged(
            &recovered,
            t0 + Duration::from_secs(61),
            &timing
        ));
        assert!(subscriber_wedged(
            &recovered,
            t0 + Duration::from_secs(63),
            &timing
        ));
        // Redis down: not the subscriber's fault, reconnecting it would not help.
        let down = Link {
            commands_ok: false,
            ..fresh
        };
        assert!(!subscriber_wedged(
            &down,
            t0 + Duration::from_secs(30),
            &timing
        ));
    }

    #[test]
    fn dead_instances_are_judged_only_after_a_full_ttl_of_working_commands() {
        let timing = Timing::from_ttl(Duration::from_secs(3));
        let t0 = Instant::now();
        let link = Link {
            commands_ok: true,
            commands_ok_since: Some(t0),
            ..Link::default()
        };
        assert!(!may_sweep(&link, t0 + Duration::from_secs(2), &timing));
        assert!(may_sweep(&link, t0 + Duration::from_secs(3), &timing));
        let down = Link {
            commands_ok: false,
            ..link
        };
        assert!(!may_sweep(&down, t0 + Duration::from_secs(30), &timing));
        assert!(!may_sweep(&Link::default(), t0, &timing));
    }
}
