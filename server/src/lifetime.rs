//! When a session must end on its own: at its token's `exp` (which an
//! accepted `refresh-token` moves) or at the optional maximum session length,
//! whichever comes first. The deadline arithmetic is pure; [`Lifetime`] is the
//! cell the reader updates and the session's watcher waits on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Why a session reached its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The token's `exp` passed without a refresh: close 1008 `token_expired`.
    Token,
    /// `limits.max_session_secs` passed: close 1001 `session_limit`.
    SessionLimit,
}

/// Which deadline comes first: the token's `exp` or the session limit
/// (both Unix seconds). A tie is the token's, the stricter of the two.
pub fn first_deadline(token_exp: u64, session_limit: Option<u64>) -> (u64, Expiry) {
    match session_limit {
        Some(limit) if limit < token_exp => (limit, Expiry::SessionLimit),
        _ => (token_exp, Expiry::Token),
    }
}

/// Time left until `deadline` (Unix seconds) as seen at `now`; zero once it
/// has passed. RFC 7519: `exp` is the time on or after which the token must
/// not be accepted, so a session ends at `exp` itself.
pub fn time_left(deadline: u64, now: SystemTime) -> Duration {
    match UNIX_EPOCH.checked_add(Duration::from_secs(deadline)) {
        Some(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        None => Duration::MAX,
    }
}

/// The longest single sleep; a later deadline is waited for in steps, so a
/// far-future `exp` never overflows the timer.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// One session's deadlines, shared by its reader (which accepts refreshed
/// tokens) and its watcher.
#[derive(Debug)]
pub struct Lifetime {
    token_exp: AtomicU64,
    session_limit: Option<u64>,
    changed: Notify,
}

impl Lifetime {
    /// `token_exp` is the joining token's `exp`; `max_session`, when set,
    /// ends the session that long after `started_unix` whatever the token.
    pub fn new(token_exp: u64, started_unix: u64, max_session: Option<Duration>) -> Self {
        Lifetime {
            token_exp: AtomicU64::new(token_exp),
            session_limit: max_session.map(|d| started_unix.saturating_add(d.as_secs())),
            changed: Notify::new(),
        }
    }

    /// A refreshed token was accepted: its `exp` is the new deadline.
    pub fn refresh(&self, token_exp: u64) {
        self.token_exp.store(token_exp, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// The current deadline and what it is.
    pub fn deadline(&self) -> (u64, Expiry) {
        first_deadline(self.token_exp.load(Ordering::Relaxed), self.session_limit)
    }

    /// Completes when the deadline passes; a refresh meanwhile moves it.
    pub async fn expired(&self) -> Expiry {
        loop {
            let (deadline, why) = self.deadline();
            let left = time_left(deadline, SystemTime::now());
            if left.is_zero() {
                return why;
            }
            // `notify_one` stores a permit, so a refresh between the read
            // above and this wait still wakes it.
            tokio::select! {
                () = tokio::time::sleep(left.min(MAX_SLEEP)) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earlier_deadline_wins() {
        let cases: &[(u64, Option<u64>, (u64, Expiry))] = &[
            (100, None, (100, Expiry::Token)),
            (100, Some(200), (100, Expiry::Token)),
            (100, Some(100), (100, Expiry::Token)),
            (100, Some(50), (50, Expiry::SessionLimit)),
        ];
        for &(exp, limit, want) in cases {
            assert_eq!(
                first_deadline(exp, limit),
                want,
                "exp {exp} limit {limit:?}"
            );
        }
    }

    #[test]
    fn time_left_counts_down_to_zero_at_the_deadline() {
        let at = |secs: u64, millis: u64| {
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
        };
        assert_eq!(time_left(1000, at(990, 0)), Duration::from_secs(10));
        assert_eq!(time_left(1000, at(999, 250)), Duration::from_millis(750));
        assert_eq!(time_left(1000, at(1000, 0)), Duration::ZERO);
        assert_eq!(time_left(1000, at(1500, 0)), Duration::ZERO);
        assert_eq!(time_left(u64::MAX, at(1000, 0)), Duration::MAX);
    }

    #[test]
    fn max_session_is_counted_from_the_start() {
        let l = Lifetime::new(10_000, 1_000, Some(Duration::from_secs(600)));
        assert_eq!(l.deadline(), (1_600, Expiry::SessionLimit));
        let l = Lifetime::new(10_000, 1_000, None);
        assert_eq!(l.deadline(), (10_000, Expiry::Token));
        // A refresh moves the token deadline, never past the session limit.
        let l = Lifetime::new(1_200, 1_000, Some(Duration::from_secs(600)));
        assert_eq!(l.deadline(), (1_200, Expiry::Token));
        l.refresh(5_000);
        assert_eq!(l.deadline(), (1_600, Expiry::SessionLimit));
    }

    #[tokio::test]
    async fn a_passed_deadline_expires_at_once_and_a_refresh_wakes_the_watcher() {
        let now = crate::auth::now_unix();
        let past = Lifetime::new(now - 1, now - 10, None);
        assert_eq!(past.expired().await, Expiry::Token);

        let l = std::sync::Arc::new(Lifetime::new(now + 3600, now, None));
        let watcher = tokio::spawn({
            let l = l.clone();
            async move { l.expired().await }
        });
        tokio::task::yield_now().await;
        assert!(!watcher.is_finished());
        // A refresh to a token that is already past: the watcher re-reads the
        // deadline at once instead of sleeping out the old hour.
        l.refresh(now - 1);
        let why = tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("woken by the refresh")
            .unwrap();
        assert_eq!(why, Expiry::Token);
    }
}
