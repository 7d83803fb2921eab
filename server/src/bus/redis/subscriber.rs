//! The receiving side of the Redis bus: which room channels this instance is subscribed to
//! (one reference per local participant joined or joining, [`RoomRefs`]), the subscriber
//! connection and its task (reads messages in order, hands each to `inbound`, reconnects and
//! resubscribes every room when the connection ends or is declared wedged), and the canary
//! task that proves the pub/sub path works end to end. What is accepted from the connection
//! is decided in `inbound`, presence bookkeeping is in `presence`, what reaches the hub in
//! `remote`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::AsyncCommands;
use tokio::sync::{Mutex, Notify};

use super::inbound::DropLog;
use super::link::subscriber_wedged;
use super::Inner;
use crate::bus::BusError;
use crate::room::RoomId;

/// Reference counts of subscribed rooms, pure: the first reference subscribes a room, the
/// last one unsubscribes it.
#[derive(Debug, Default)]
pub(super) struct RoomRefs {
    refs: HashMap<RoomId, usize>,
}

/// What [`RoomRefs::release`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Released {
    /// Other local participants still hold the room: stay subscribed.
    StillHeld,
    /// That was the last reference (or there was none): unsubscribe.
    Last,
}

impl RoomRefs {
    /// Whether taking a reference on `room` has to subscribe it first.
    pub(super) fn needs_subscribe(&self, room: &RoomId) -> bool {
        !self.refs.contains_key(room)
    }

    /// Takes one reference (once subscribing, if needed, succeeded).
    pub(super) fn acquire(&mut self, room: &RoomId) {
        *self.refs.entry(room.clone()).or_insert(0) += 1;
    }

    /// Gives one reference back.
    pub(super) fn release(&mut self, room: &RoomId) -> Released {
        match self.refs.get_mut(room) {
            Some(count) if *count > 1 => {
                *count -= 1;
                Released::StillHeld
            }
            _ => {
                self.refs.remove(room);
                Released::Last
            }
        }
    }

    pub(super) fn rooms(&self) -> impl Iterator<Item = &RoomId> {
        self.refs.keys()
    }
}

/// Subscription state, changed only under its async mutex so SUBSCRIBE/UNSUBSCRIBE and the
/// subscriber's reconnect never interleave.
#[derive(Default)]
pub(super) struct Subs {
    pub(super) refs: RoomRefs,
    /// The live subscriber connection's command half.
    sink: Option<PubSubSink>,
}

/// What the subscriber side shares with the rest of the bus.
pub(super) struct Subscriber {
    /// Second in the lock order, after the presence gate.
    pub(super) subs: Mutex<Subs>,
    /// Wakes the subscriber task to replace its connection.
    repair: Notify,
    /// Asks the canary task for a canary now, not at its next tick.
    canary_now: Notify,
    /// The next canary nonce; starts at random so nobody can guess one (see `inbound`).
    canary_nonce: AtomicU64,
}

impl Default for Subscriber {
    fn default() -> Self {
        Subscriber {
            subs: Mutex::default(),
            repair: Notify::new(),
            canary_now: Notify::new(),
            canary_nonce: AtomicU64::new(rand::random()),
        }
    }
}

impl Subscriber {
    /// The nonce the next canary will carry.
    pub(super) fn next_canary(&self) -> u64 {
        self.canary_nonce.load(Ordering::Relaxed)
    }

    /// A delivery was refused until a canary proves the path (see `link::carries_at`): one
    /// now, so that a lost command connection costs a round trip, not a canary period.
    pub(super) fn want_canary(&self) {
        self.canary_now.notify_one();
    }
}

impl Inner {
    /// Counts one more local participant in `room`; the first one registers the room for
    /// crash cleanup and subscribes its channel, before any presence exists there.
    pub(super) async fn acquire_room(&self, room: &RoomId) -> Result<(), BusError> {
        let mut subs = self.subscriber.subs.lock().await;
        if subs.refs.needs_subscribe(room) {
            let mut conn = self.conn.clone();
            let rooms_key = self.keys.instance_rooms(self.instance());
            let room_str = room.as_str().to_owned();
            self.redis("register room", async move {
                conn.sadd::<_, _, i64>(rooms_key, room_str).await
            })
            .await?;
            if self.conn.is_cluster() {
                self.shard_subscribe(room).await?;
                subs.refs.acquire(room);
                return Ok(());
            }
            let Some(sink) = subs.sink.as_mut() else {
                return Err(BusError::SubscriberDown);
            };
            let channel = self.keys.room_channel(room);
            match tokio::time::timeout(self.timing.command_timeout, sink.subscribe(channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    self.subscriber.repair.notify_one();
                    return Err(BusError::Redis {
                        op: "subscribe",
                        source,
                    });
                }
                Err(_) => {
                    self.subscriber.repair.notify_one();
                    return Err(BusError::Timeout { op: "subscribe" });
                }
            }
        }
        subs.refs.acquire(room);
        Ok(())
    }

    /// Undoes one [`acquire_room`](Self::acquire_room); the last one unsubscribes.
    pub(super) async fn release_room(&self, room: &RoomId) {
        let mut subs = self.subscriber.subs.lock().await;
        if subs.refs.release(room) == Released::StillHeld {
            return;
        }
        if self.conn.is_cluster() {
            self.shard_unsubscribe(room).await;
        } else if let Some(sink) = subs.sink.as_mut() {
            let channel = self.keys.room_channel(room);
            // A failure leaves a stale subscription whose messages find no local recipient;
            // the next reconnect drops it.
            let _ =
                tokio::time::timeout(self.timing.command_timeout, sink.unsubscribe(channel)).await;
        }
        let mut conn = self.conn.clone();
        let rooms_key = self.keys.instance_rooms(self.instance());
        let room_str = room.as_str().to_owned();
        let removed = self
            .redis("unregister room", async move {
                conn.srem::<_, _, i64>(rooms_key, room_str).await
            })
            .await;
        if removed.is_err() {
            self.presence.local().room_write_failed(room);
        }
    }

    /// The rooms this instance is subscribed to (or subscribing).
    pub(super) async fn subscribed_rooms(&self) -> Vec<RoomId> {
        let subs = self.subscriber.subs.lock().await;
        subs.refs.rooms().cloned().collect()
    }
}

/// Keeps one subscriber connection alive, subscribed to the canary and every local room.
pub(super) async fn subscriber_task(inner: Arc<Inner>) {
    let mut drop_log = DropLog::default();
    let mut reconciler = inner.reconcile.reconciler();
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let super::conn::Subscribe::Single(client) = &inner.subscribe else {
            // A cluster's subscriptions are kept by `shards`; this task never runs for one.
            return;
        };
        let connected =
            tokio::time::timeout(inner.timing.command_timeout, client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "redis subscriber connect failed"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        {
            let mut subs = inner.subscriber.subs.lock().await;
            let mut channels = vec![inner.keys.canary_channel()];
            channels.extend(subs.refs.rooms().map(|r| inner.keys.room_channel(r)));
            let subscribed =
                tokio::time::timeout(inner.timing.command_timeout, sink.subscribe(channels)).await;
            if !matches!(subscribed, Ok(Ok(()))) {
                drop(subs);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            subs.sink = Some(sink);
            inner.link().subscribed_since = Some(Instant::now());
        }
        backoff = Duration::from_millis(100);
        if first {
            first = false;
            tracing::info!("redis subscriber connected");
        } else {
            // Messages published while we were away are gone (at-most-once); presence is
            // re-checked so the room lists converge.
            inner.presence.request_sync();
            inner.reconcile.request();
            inner.metrics.reconnected("subscriber");
            tracing::info!("redis subscriber reconnected and resubscribed");
        }
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => {
                        inner
                            .on_message(&mut drop_log, message.get_channel_name(), message.get_payload_bytes())
                            .await;
                    }
                    None => {
                        tracing::warn!("redis subscriber connection lost");
                        break;
                    }
                },
                () = inner.subscriber.repair.notified() => {
                    tracing::warn!("replacing the redis subscriber connection");
                    break;
                }
                target = reconciler.woken() => {
                    let rooms = inner.subscribed_rooms().await;
                    inner.reconcile_rooms(&mut reconciler, target, rooms).await;
                }
            }
        }
        inner.subscriber.subs.lock().await.sink = None;
        inner.link().subscribed_since = None;
    }
}

/// The least time between two canaries asked for by refused deliveries.
const CANARY_ON_DEMAND_SPACING: Duration = Duration::from_millis(50);

/// Publishes the readiness canary and replaces a subscriber that stopped delivering it.
pub(super) async fn canary_task(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.timing.canary);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asked_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = inner.subscriber.canary_now.notified() => {
                // However many deliveries ask while Redis stays away: one canary per spacing.
                if let Some(at) = asked_at {
                    tokio::time::sleep_until(at + CANARY_ON_DEMAND_SPACING).await;
                }
                asked_at = Some(tokio::time::Instant::now());
            }
        }
        let nonce = inner
            .subscriber
            .canary_nonce
            .fetch_add(1, Ordering::Relaxed);
        if inner.conn.is_cluster() {
            // One canary per master, concurrently: a master that is down must not make the
            // others' canaries late. `shards` replaces wedged node connections itself.
            let publishes = inner.shards.canaries().into_iter().map(|channel| {
                let inner = &inner;
                async move {
                    let mut conn = inner.conn.clone();
                    let cmd = conn.publish(&channel, nonce);
                    inner
                        .redis(
                            "canary",
                            async move { cmd.query_async::<i64>(&mut conn).await },
                        )
                        .await
                }
            });
            futures_util::future::join_all(publishes).await;
            continue;
        }
        let mut conn = inner.conn.clone();
        let cmd = conn.publish(&inner.keys.canary_channel(), nonce);
        let _ = inner
            .redis(
                "canary",
                async move { cmd.query_async::<i64>(&mut conn).await },
            )
            .await;
        let wedged = subscriber_wedged(&inner.link(), Instant::now(), &inner.timing);
        if wedged {
            tracing::warn!("readiness canary did not come back");
            inner.subscriber.repair.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reference_subscribes_and_the_last_unsubscribes() {
        let (r, other) = (RoomId::parse("r").unwrap(), RoomId::parse("o").unwrap());
        let mut refs = RoomRefs::default();
        assert!(refs.needs_subscribe(&r));
        refs.acquire(&r);
        assert!(
            !refs.needs_subscribe(&r),
            "a second joiner reuses the subscription"
        );
        refs.acquire(&r);
        refs.acquire(&other);
        assert_eq!(refs.release(&r), Released::StillHeld);
        assert_eq!(refs.release(&r), Released::Last);
        assert!(refs.needs_subscribe(&r));
        // Releasing what was never held (a failed join's undo) still unsubscribes.
        assert_eq!(refs.release(&r), Released::Last);
        assert_eq!(refs.rooms().collect::<Vec<_>>(), [&other]);
    }
}
