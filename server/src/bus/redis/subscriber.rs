//! The receiving side of the Redis bus: which room channels this instance is subscribed to
//! (one reference per local participant joined or joining, [`RoomRefs`]), the subscriber
//! connection and its task (reads messages in order, hands each to [`Inner::on_message`],
//! reconnects and resubscribes every room when the connection ends or is declared wedged),
//! and the canary task that proves the pub/sub path works end to end. Presence bookkeeping is
//! in `presence`, what reaches the hub in `remote`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::AsyncCommands;
use tokio::sync::{Mutex, Notify};

use super::link::subscriber_wedged;
use super::{wire, Inner};
use crate::bus::{BusError, RemoteEvent};
use crate::room::{LeaveReason, RoomId};

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
#[derive(Default)]
pub(super) struct Subscriber {
    /// Second in the lock order, after the presence gate.
    pub(super) subs: Mutex<Subs>,
    /// Wakes the subscriber task to replace its connection.
    repair: Notify,
    canary_nonce: AtomicU64,
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
        if let Some(sink) = subs.sink.as_mut() {
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

    /// Handles one message from the subscriber connection, in receive order.
    fn on_message(&self, channel: &str, payload: &[u8]) {
        if channel == self.keys.canary_channel() {
            self.link().last_canary = Some(Instant::now());
            return;
        }
        let envelope = match wire::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(
                    channel,
                    error = &e as &dyn std::error::Error,
                    "dropping malformed bus message"
                );
                return;
            }
        };
        // Local recipients were served directly by the sender's instance.
        if envelope.origin == self.instance() {
            return;
        }
        if let RemoteEvent::Left {
            room_id,
            participant,
            reason: LeaveReason::InstanceLost,
        } = &envelope.event
        {
            if participant.instance_id == self.instance() {
                // Another instance believed us dead (our heartbeat lapsed, e.g. a stall or a
                // slow restart with the same id) and removed every record carrying our id.
                let live = {
                    let mut local = self.presence.local();
                    local.needs_sync = true;
                    local.is_live(room_id, &participant.participant_id)
                };
                if live {
                    // Alive here: the resync puts it back and re-announces it.
                    tracing::warn!(
                        "our presence was cleaned up by another instance; re-registering"
                    );
                    return;
                }
                // A record of an earlier incarnation of this instance: that participant really
                // is gone, and our local participants may have it in their room-state. (A
                // participant whose join is still under way is not in `local` yet; the hub
                // ignores a leave of a local participant, and the resync re-registers it.)
                tracing::info!(
                    "a past incarnation's participant was cleaned up by another instance"
                );
            }
        }
        self.deliver(envelope.event);
    }
}

/// Keeps one subscriber connection alive, subscribed to the canary and every local room.
pub(super) async fn subscriber_task(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let connected = tokio::time::timeout(
            inner.timing.command_timeout,
            inner.client.get_async_pubsub(),
        )
        .await;
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
                        let channel = message.get_channel_name().to_owned();
                        inner.on_message(&channel, message.get_payload_bytes());
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
                () = inner.reconcile.woken() => inner.reconcile_if_pending().await,
            }
        }
        inner.subscriber.subs.lock().await.sink = None;
        inner.link().subscribed_since = None;
    }
}

/// Publishes the readiness canary and replaces a subscriber that stopped delivering it.
pub(super) async fn canary_task(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.timing.canary);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let nonce = inner
            .subscriber
            .canary_nonce
            .fetch_add(1, Ordering::Relaxed);
        let mut conn = inner.conn.clone();
        let channel = inner.keys.canary_channel();
        let _ = inner
            .redis("canary", async move {
                conn.publish::<_, _, i64>(channel, nonce).await
            })
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
