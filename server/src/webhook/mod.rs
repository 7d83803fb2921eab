//! Webhooks: every presence fact (a room started or finished, a participant joined, left or
//! was updated) delivered to the configured HTTP endpoints, signed per the Standard Webhooks
//! specification, at least once and in order per room.
//!
//! Facts are recorded by the bus in the same atomic step that changes presence (the Redis
//! bus's Lua scripts append to a per-room stream; the in-process bus appends to [`memory`]
//! under its presence lock), so each fact is recorded exactly once whichever instance saw it.
//! This module never records; it delivers what an [`EventLog`] holds:
//!
//! | file | owns |
//! |---|---|
//! | `event.rs` | event kinds, the recorded fact, the JSON body |
//! | `sign.rs` | `whsec_` secrets and the `v1` signature |
//! | `retry.rs` | what an answer means, backoff and horizon, endpoint health (pure) |
//! | `client.rs` | the HTTP client (hyper + rustls): one POST with a timeout |
//! | `dispatcher.rs` | the delivery loop: one worker per room and endpoint, scans, metrics, logs |
//! | `memory.rs` | the in-process bus's event log (in memory, lost at exit) |
//! | `metrics.rs` | deliveries, queue depth, oldest undelivered age |
//!
//! The Redis event log lives with the Redis bus (`bus/redis/webhooks.rs`): it shares its keys,
//! scripts and connection.

pub mod client;
pub mod dispatcher;
pub mod event;
pub mod memory;
pub mod metrics;
pub mod retry;
pub mod sign;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::bus::BusError;
use crate::room::RoomId;
pub use event::{EventFilter, EventKind, RecordedEvent};
pub use sign::SigningSecret;

/// What a bus needs to record events: one consumer group per endpoint (events of a room are
/// kept until every group has them) and how long undelivered events are kept at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// Group ids of the configured endpoints ([`endpoint_group`]).
    pub groups: Vec<String>,
    /// The retry horizon: older undelivered events are given up.
    pub horizon: Duration,
}

/// The consumer group id of an endpoint: a digest of its URL (which may carry a token, so it
/// is not used as is), stable across instances with the same configuration.
pub fn endpoint_group(url: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(url.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("ep-{hex}")
}

/// One endpoint's view of a room's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupStatus {
    /// Events recorded and not yet delivered or given up (the one in flight included).
    pub depth: u64,
    /// Unix milliseconds of the oldest of them.
    pub oldest_ms: Option<i64>,
    /// Another live instance is delivering this room to this endpoint.
    pub held_elsewhere: bool,
}

/// The result of [`EventLog::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The oldest undelivered event; `entry` identifies it for renew and ack.
    Event {
        entry: String,
        event: Box<RecordedEvent>,
    },
    /// Another live instance holds the room's next event for this group.
    Busy,
    /// Nothing to deliver.
    Empty,
}

/// Where recorded events wait for delivery. Per room and group, events are handed out one
/// at a time in recording order: the next only after the previous was acknowledged.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Rooms that may hold undelivered events (cluster-wide on the Redis bus).
    async fn pending_rooms(&self) -> Result<Vec<RoomId>, BusError>;

    /// Makes sure `room` is found by [`pending_rooms`](Self::pending_rooms) (its events were
    /// recorded; the bus's own registration may have failed).
    async fn register(&self, room: &RoomId) -> Result<(), BusError>;

    /// For each of `groups`, what is waiting in `room`.
    async fn status(&self, room: &RoomId, groups: &[String]) -> Result<Vec<GroupStatus>, BusError>;

    /// Takes the oldest undelivered event of `room` for `group` (again, if this instance held
    /// it already, or if its holder stopped renewing it for a lease).
    async fn claim(&self, room: &RoomId, group: &str) -> Result<Claim, BusError>;

    /// Keeps holding `entry`; false when another instance took it over.
    async fn renew(&self, room: &RoomId, group: &str, entry: &str) -> Result<bool, BusError>;

    /// `entry` is done for `group` (delivered or given up): the next one may go.
    async fn ack(&self, room: &RoomId, group: &str, entry: &str) -> Result<(), BusError>;

    /// Forgets `room` if every group has all of its events (unless new ones raced in).
    async fn settle(&self, room: &RoomId) -> Result<(), BusError>;
}

/// Rooms with newly recorded events, from the bus to this instance's dispatcher, so delivery
/// starts at once instead of at the next scan.
#[derive(Debug, Default)]
pub struct Wakes {
    rooms: Mutex<HashSet<RoomId>>,
    notify: tokio::sync::Notify,
}

impl Wakes {
    pub fn wake(&self, room: &RoomId) {
        self.lock().insert(room.clone());
        self.notify.notify_one();
    }

    /// Waits until some room was woken, then takes them all.
    pub async fn next(&self) -> HashSet<RoomId> {
        loop {
            let taken = std::mem::take(&mut *self.lock());
            if !taken.is_empty() {
                return taken;
            }
            self.notify.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<RoomId>> {
        // A set of ids: a panic elsewhere cannot leave it inconsistent.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_stable_and_tell_urls_apart() {
        let a = endpoint_group("https://hooks.example/a?token=s3cret");
        assert_eq!(a, endpoint_group("https://hooks.example/a?token=s3cret"));
        assert_ne!(a, endpoint_group("https://hooks.example/b"));
        assert!(a.starts_with("ep-") && a.len() == 19, "{a}");
        assert!(!a.contains("s3cret"));
    }

    #[tokio::test]
    async fn wakes_hand_over_every_room_once() {
        let wakes = Wakes::default();
        let (a, b) = (RoomId::parse("a").unwrap(), RoomId::parse("b").unwrap());
        wakes.wake(&a);
        wakes.wake(&b);
        wakes.wake(&a);
        assert_eq!(wakes.next().await, HashSet::from([a, b]));
        assert!(wakes.lock().is_empty());
    }
}
