//! The receiving side of the Redis bus on a Redis Cluster: sharded pub/sub. A room's channel
//! carries the room's hash tag, so it lives in the room's slot; `SSUBSCRIBE` must be sent to
//! the master serving that slot, and `SPUBLISH` (sent through the command handle, which
//! routes it by slot) reaches only that shard. This module keeps one subscriber connection
//! per master (RESP3, pushes read by one reader task per node, in order), subscribes each room
//! channel on its slot's master, and follows the cluster by itself:
//!
//! - the slot map is read with `CLUSTER SLOTS` ([`slots::Topology`]) at start, periodically,
//!   and at once when anything suggests it changed: a `MOVED`/`ASK`/`-LOADING`/`CLUSTERDOWN`
//!   reply to `SSUBSCRIBE`, a node connection that ends, or a server-sent `sunsubscribe` (Redis
//!   sends one for every sharded channel of a slot that migrates away or whose master is
//!   demoted);
//! - every maintenance round makes each wanted channel confirmed on its slot's current master,
//!   connects to new masters, drops connections to nodes that are no longer masters, and
//!   replaces a node connection whose canary stopped coming back (wedged);
//! - each master gets its own readiness canary channel (a hash tag searched so that its slot
//!   is one the master serves): readiness proves every shard, not just one.
//!
//! A subscription gap (reconnect, migration) asks presence for a resync and the hub's remote
//! members for a reconciliation, exactly as the one-Redis subscriber does after a reconnect.
//! Room reference counts stay in `subscriber` ([`super::subscriber::RoomRefs`]); this module
//! only places channels. What is accepted from a channel is decided in `inbound`.
//!
//! Lock order: `subscriber.subs` (async) is taken before `Shards::state` (a std leaf lock, never
//! held across an `.await`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    Value,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::inbound::{canary_is_ours, DropLog, DropReason};
use super::link::{subscriber_wedged, Link};
use super::slots::{self, key_slot, NodeAddr, Topology};
use super::Inner;
use crate::bus::BusError;
use crate::room::RoomId;

/// How many candidate names the canary search tries per master (a master serving one slot
/// needs ~16384 on average; a real shard serves thousands).
const CANARY_SEARCH: u32 = 1 << 20;

/// Without any sign of change, the slot map is re-read every this many maintenance rounds.
const TOPOLOGY_EVERY: u32 = 8;

/// The cluster subscriber state shared by the maintenance task, the node readers and joins.
#[derive(Default)]
pub(super) struct Shards {
    state: Mutex<State>,
    /// Wakes the maintenance task for an immediate round with a fresh slot map.
    refresh: Notify,
}

#[derive(Default)]
struct State {
    /// The last slot map read; empty until the first `CLUSTER SLOTS` answered.
    topology: Topology,
    nodes: HashMap<NodeAddr, Node>,
    /// Sharded channels Redis unsubscribed us from (slot migrated, master demoted): a gap.
    unsubscribed: HashSet<String>,
    /// Source of [`Node::generation`].
    generations: u64,
}

/// One master and this instance's subscriber connection to it.
#[derive(Default)]
struct Node {
    /// Tells a reader of an old connection from the current one's.
    generation: u64,
    conn: Option<MultiplexedConnection>,
    reader: Option<JoinHandle<()>>,
    connected_since: Option<Instant>,
    /// Whether a connection to this node was ever made: the next one follows a gap.
    was_connected: bool,
    /// This instance's canary channel on this master's slots.
    canary: Option<String>,
    last_canary: Option<Instant>,
    /// Channels the node confirmed (`ssubscribe` push) and did not drop since.
    confirmed: HashSet<String>,
    /// Every wanted channel of this node's slots was confirmed in the last round.
    complete: bool,
    /// No reconnect before this.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

/// What readiness needs from the shards, pure: `(subscribed_since, last_canary)` for
/// [`Link`]. Subscribed only when the slot map covers every slot and every master is
/// connected with all its wanted channels confirmed, since the latest of those connections;
/// the canary time is the stalest master's, so one silent shard makes the instance not ready.
pub(super) fn aggregate<'a>(
    covers_all_slots: bool,
    nodes: impl IntoIterator<Item = (Option<Instant>, Option<Instant>, bool)> + 'a,
) -> (Option<Instant>, Option<Instant>) {
    let mut since: Option<Instant> = None;
    let mut canary: Option<Option<Instant>> = None;
    let mut any = false;
    let mut all_up = covers_all_slots;
    for (connected_since, last_canary, complete) in nodes {
        any = true;
        match connected_since {
            Some(t) if complete => since = Some(since.map_or(t, |s| s.max(t))),
            _ => all_up = false,
        }
        canary = Some(match (canary, last_canary) {
            (None, c) => c,
            (Some(Some(a)), Some(b)) => Some(a.min(b)),
            (Some(_), _) => None,
        });
    }
    if !any || !all_up {
        return (None, canary.flatten());
    }
    (since, canary.flatten())
}

/// Connection settings for one node: the seed's user, password and TLS settings with the
/// node's address, speaking RESP3 (pushes on a multiplexed connection).
fn node_info(seed: &ConnectionInfo, addr: &NodeAddr) -> ConnectionInfo {
    let conn_addr = match seed.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: addr.host.clone(),
            port: addr.port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(addr.host.clone(), addr.port),
    };
    let redis = seed
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    seed.clone().set_addr(conn_addr).set_redis_settings(redis)
}

/// The host of the seed, for a `CLUSTER SLOTS` entry without one.
fn seed_host(seed: &ConnectionInfo) -> String {
    match seed.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        _ => String::new(),
    }
}

/// Channel name and payload of an `smessage` push.
fn smessage(push: &PushInfo) -> Option<(&str, &[u8])> {
    let channel = match push.data.first()? {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?,
        _ => return None,
    };
    let payload = match push.data.get(1)? {
        Value::BulkString(b) => b.as_slice(),
        _ => return None,
    };
    Some((channel, payload))
}

/// The channel a `ssubscribe` / `sunsubscribe` push is about.
fn push_channel(push: &PushInfo) -> Option<String> {
    match push.data.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

impl Shards {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain data: a panic elsewhere cannot leave it inconsistent in a harmful way.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every master's canary channel, for the canary task.
    pub(super) fn canaries(&self) -> Vec<String> {
        self.state()
            .nodes
            .values()
            .filter_map(|n| n.canary.clone())
            .collect()
    }
}

impl Inner {
    /// Subscribes a room's channel on its slot's master (called by `acquire_room` with the
    /// subscriptions lock held).
    pub(super) async fn shard_subscribe(&self, room: &RoomId) -> Result<(), BusError> {
        let channel = self.keys.room_channel(room);
        let target = {
            let state = self.shards.state();
            state
                .topology
                .owner(key_slot(channel.as_bytes()))
                .and_then(|owner| Some((owner.clone(), state.nodes.get(owner)?.conn.clone()?)))
        };
        let Some((owner, mut conn)) = target else {
            self.shards.refresh.notify_one();
            return Err(BusError::SubscriberDown);
        };
        let reply = tokio::time::timeout(
            self.timing.command_timeout,
            redis::cmd("SSUBSCRIBE")
                .arg(&channel)
                .query_async::<Value>(&mut conn),
        )
        .await;
        match reply {
            Ok(Ok(_)) => {
                if let Some(node) = self.shards.state().nodes.get_mut(&owner) {
                    node.confirmed.insert(channel);
                }
                Ok(())
            }
            Ok(Err(source)) => {
                // MOVED, ASK, LOADING, CLUSTERDOWN: the slot map changed or is changing.
                self.shards.refresh.notify_one();
                Err(BusError::Redis {
                    op: "subscribe",
                    source,
                })
            }
            Err(_) => {
                self.shards.refresh.notify_one();
                Err(BusError::Timeout { op: "subscribe" })
            }
        }
    }

    /// Unsubscribes a room's channel wherever it is subscribed (called by `release_room` with
    /// the subscriptions lock held). A failure leaves a stale subscription whose messages find
    /// no local recipient; the next maintenance round drops it.
    pub(super) async fn shard_unsubscribe(&self, room: &RoomId) {
        let channel = self.keys.room_channel(room);
        let holders: Vec<MultiplexedConnection> = {
            let mut state = self.shards.state();
            state
                .nodes
                .values_mut()
                .filter_map(|n| {
                    if n.confirmed.remove(&channel) {
                        n.conn.clone()
                    } else {
                        None
                    }
                })
                .collect()
        };
        for mut conn in holders {
            let _ = tokio::time::timeout(
                self.timing.command_timeout,
                redis::cmd("SUNSUBSCRIBE")
                    .arg(&channel)
                    .query_async::<Value>(&mut conn),
            )
            .await;
        }
    }

    /// Recomputes readiness' view of the subscribers from the node states.
    fn publish_shard_link(&self) {
        let (since, canary) = {
            let state = self.shards.state();
            let masters = state.topology.masters();
            aggregate(
                state.topology.covers_all_slots(),
                masters.iter().map(|m| match state.nodes.get(m) {
                    Some(n) => (n.connected_since, n.last_canary, n.complete),
                    None => (None, None, false),
                }),
            )
        };
        let mut link = self.link();
        link.subscribed_since = since;
        link.last_canary = canary;
    }

    /// A canary came back over `addr`'s connection `generation`.
    fn shard_canary(&self, addr: &NodeAddr, generation: u64, channel: &str, payload: &[u8]) {
        if !canary_is_ours(payload, self.subscriber.next_canary()) {
            self.metrics.bus_message_dropped(DropReason::Canary);
            return;
        }
        {
            let mut state = self.shards.state();
            let Some(node) = state.nodes.get_mut(addr) else {
                return;
            };
            if node.generation != generation || node.canary.as_deref() != Some(channel) {
                // A canary of a slot that moved: the next round gives the node a new one.
                return;
            }
            node.last_canary = Some(Instant::now());
        }
        self.publish_shard_link();
    }

    /// A reader saw its connection end: forget it and reconnect in the next round.
    fn shard_connection_lost(&self, addr: &NodeAddr, generation: u64) {
        {
            let mut state = self.shards.state();
            let Some(node) = state.nodes.get_mut(addr) else {
                return;
            };
            if node.generation != generation {
                return;
            }
            node.conn = None;
            node.connected_since = None;
            node.confirmed.clear();
            node.complete = false;
            // The reader is this very task: it ends by itself.
            node.reader = None;
        }
        tracing::warn!(node = %addr, "redis cluster subscriber connection lost");
        self.publish_shard_link();
        self.shards.refresh.notify_one();
    }

    /// Reads the slot map; on failure the last one is kept.
    async fn read_topology(&self, fallback_host: &str) -> Result<Topology, BusError> {
        let mut conn = self.conn.clone();
        let reply: Value = self
            .redis("cluster slots", async move {
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Topology::parse(&reply, fallback_host).map_err(|e| BusError::Config(e.to_string()))
    }

    /// Opens a subscriber connection to `addr` and starts its reader.
    async fn connect_node(
        self: &Arc<Self>,
        seed: &ConnectionInfo,
        addr: &NodeAddr,
    ) -> Result<(), redis::RedisError> {
        let (tx, rx) = mpsc::unbounded_channel::<PushInfo>();
        let client = redis::Client::open(node_info(seed, addr))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(self.timing.command_timeout))
            .set_push_sender(tx);
        let conn = tokio::time::timeout(
            self.timing.command_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
        let mut state = self.shards.state();
        state.generations += 1;
        let generation = state.generations;
        let Some(node) = state.nodes.get_mut(addr) else {
            return Ok(());
        };
        let reader = tokio::spawn(
            read_node(Arc::downgrade(self), addr.clone(), generation, rx)
                .instrument(tracing::Span::current()),
        );
        if let Some(old) = node.reader.replace(reader) {
            old.abort();
        }
        node.generation = generation;
        node.conn = Some(conn);
        node.connected_since = Some(Instant::now());
        node.last_canary = None;
        node.confirmed.clear();
        node.complete = false;
        node.retry_at = None;
        node.backoff = Duration::from_millis(100);
        if std::mem::replace(&mut node.was_connected, true) {
            drop(state);
            // Messages published while we were away are gone (at-most-once); presence is
            // re-checked so the room lists converge.
            self.presence.request_sync();
            self.reconcile.request();
            self.metrics.reconnected("subscriber");
            tracing::info!(node = %addr, "redis cluster subscriber reconnected");
        } else {
            tracing::info!(node = %addr, "redis cluster subscriber connected");
        }
        Ok(())
    }

    /// One maintenance round: slot map, node connections, wedged nodes, channel placement.
    async fn maintain(self: &Arc<Self>, seed: &ConnectionInfo, fresh_topology: bool) {
        if fresh_topology {
            match self.read_topology(&seed_host(seed)).await {
                Ok(topology) => self.adopt_topology(topology),
                Err(e) => tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "cannot read the redis cluster slot map"
                ),
            }
        }
        self.replace_wedged_nodes();
        let now = Instant::now();
        let due: Vec<NodeAddr> = {
            let state = self.shards.state();
            state
                .nodes
                .iter()
                .filter(|(_, n)| n.conn.is_none() && n.retry_at.is_none_or(|t| t <= now))
                .map(|(a, _)| a.clone())
                .collect()
        };
        for addr in due {
            if let Err(e) = self.connect_node(seed, &addr).await {
                tracing::debug!(
                    node = %addr,
                    error = &e as &dyn std::error::Error,
                    "redis cluster subscriber connect failed"
                );
                let mut state = self.shards.state();
                if let Some(node) = state.nodes.get_mut(&addr) {
                    node.backoff = (node.backoff * 2)
                        .clamp(Duration::from_millis(100), Duration::from_secs(2));
                    node.retry_at = Some(Instant::now() + node.backoff);
                }
            }
        }
        self.place_channels().await;
        self.publish_shard_link();
    }

    /// Takes a new slot map: nodes that are masters now get an entry (connected in this
    /// round), nodes that are not any more are dropped, each master gets its canary channel.
    fn adopt_topology(&self, topology: Topology) {
        let masters = topology.masters();
        let mut state = self.shards.state();
        if state.topology != topology {
            tracing::info!(
                masters = masters.len(),
                complete = topology.covers_all_slots(),
                "redis cluster slot map changed"
            );
        }
        state.nodes.retain(|addr, _| masters.contains(addr));
        for master in &masters {
            let canary = slots::find_channel_on(&topology, master, CANARY_SEARCH, |n| {
                self.keys.shard_canary_channel(n)
            })
            .map(|(_, name)| name);
            let node = state.nodes.entry(master.clone()).or_default();
            if node.canary != canary {
                node.canary = canary;
                node.last_canary = None;
            }
        }
        state.topology = topology;
    }

    /// Drops node connections that stay connected but deliver no canary (the same rule as the
    /// one-Redis subscriber, per node); the next round reconnects them.
    fn replace_wedged_nodes(&self) {
        let now = Instant::now();
        let (commands_ok, last_failure) = {
            let link = self.link();
            (link.commands_ok, link.last_failure)
        };
        let mut state = self.shards.state();
        for (addr, node) in state.nodes.iter_mut() {
            let view = Link {
                commands_ok,
                subscribed_since: node.connected_since,
                last_canary: node.last_canary,
                last_failure,
                ..Link::default()
            };
            if node.conn.is_some() && subscriber_wedged(&view, now, &self.timing) {
                tracing::warn!(node = %addr, "readiness canary did not come back over this shard; replacing its subscriber connection");
                node.conn = None;
                node.connected_since = None;
                node.confirmed.clear();
                node.complete = false;
                if let Some(reader) = node.reader.take() {
                    reader.abort();
                }
            }
        }
    }

    /// Makes every wanted channel (local rooms, each master's canary) confirmed on the master
    /// of its slot, and drops confirmations elsewhere.
    async fn place_channels(&self) {
        let subs = self.subscriber.subs.lock().await;
        let mut wanted: Vec<String> = subs
            .refs
            .rooms()
            .map(|r| self.keys.room_channel(r))
            .collect();
        let (to_subscribe, to_unsubscribe, gaps) = {
            let mut state = self.shards.state();
            wanted.extend(state.nodes.values().filter_map(|n| n.canary.clone()));
            let wanted_set: HashSet<&String> = wanted.iter().collect();
            let gaps = std::mem::take(&mut state.unsubscribed)
                .into_iter()
                .filter(|c| wanted_set.contains(c) && !self.keys.is_shard_canary_channel(c))
                .count();
            let mut to_subscribe: Vec<(NodeAddr, MultiplexedConnection, String)> = Vec::new();
            let mut complete: HashMap<NodeAddr, bool> = HashMap::new();
            for channel in &wanted {
                let Some(owner) = state.topology.owner(key_slot(channel.as_bytes())).cloned()
                else {
                    continue;
                };
                let Some(node) = state.nodes.get(&owner) else {
                    continue;
                };
                if node.confirmed.contains(channel) {
                    continue;
                }
                complete.insert(owner.clone(), false);
                if let Some(conn) = node.conn.clone() {
                    to_subscribe.push((owner, conn, channel.clone()));
                }
            }
            let mut to_unsubscribe: Vec<(MultiplexedConnection, String)> = Vec::new();
            let topology = state.topology.clone();
            for (addr, node) in state.nodes.iter_mut() {
                node.complete = node.conn.is_some() && complete.get(addr).copied().unwrap_or(true);
                let stale: Vec<String> = node
                    .confirmed
                    .iter()
                    .filter(|c| {
                        !wanted_set.contains(c)
                            || topology.owner(key_slot(c.as_bytes())) != Some(addr)
                    })
                    .cloned()
                    .collect();
                for channel in stale {
                    node.confirmed.remove(&channel);
                    if let Some(conn) = node.conn.clone() {
                        to_unsubscribe.push((conn, channel));
                    }
                }
            }
            (to_subscribe, to_unsubscribe, gaps)
        };
        if gaps > 0 {
            // Messages of those rooms between the migration and the new subscription are gone.
            self.presence.request_sync();
            self.reconcile.request();
            tracing::info!(
                rooms = gaps,
                "redis cluster moved subscribed slots; resubscribing on their new masters"
            );
        }
        // Concurrently: each node connection pipelines its requests, and a node that does not
        // answer costs one timeout per round, not one per channel.
        let replies = futures_util::future::join_all(to_subscribe.into_iter().map(
            |(owner, mut conn, channel)| async move {
                let reply = tokio::time::timeout(
                    self.timing.command_timeout,
                    redis::cmd("SSUBSCRIBE")
                        .arg(&channel)
                        .query_async::<Value>(&mut conn),
                )
                .await;
                (owner, channel, reply)
            },
        ))
        .await;
        let mut refresh = false;
        for (owner, channel, reply) in replies {
            match reply {
                Ok(Ok(_)) => {
                    if let Some(node) = self.shards.state().nodes.get_mut(&owner) {
                        node.confirmed.insert(channel);
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(node = %owner, error = &e as &dyn std::error::Error, "ssubscribe refused");
                    refresh = true;
                }
                Err(_) => refresh = true,
            }
        }
        futures_util::future::join_all(to_unsubscribe.into_iter().map(
            |(mut conn, channel)| async move {
                let _ = tokio::time::timeout(
                    self.timing.command_timeout,
                    redis::cmd("SUNSUBSCRIBE")
                        .arg(&channel)
                        .query_async::<Value>(&mut conn),
                )
                .await;
            },
        ))
        .await;
        drop(subs);
        // Nodes whose channels all got confirmed just now are complete for readiness.
        {
            let mut state = self.shards.state();
            let topology = state.topology.clone();
            let mut missing: HashSet<NodeAddr> = HashSet::new();
            for channel in &wanted {
                if let Some(owner) = topology.owner(key_slot(channel.as_bytes())) {
                    if !state
                        .nodes
                        .get(owner)
                        .is_some_and(|n| n.confirmed.contains(channel))
                    {
                        missing.insert(owner.clone());
                    }
                }
            }
            for (addr, node) in state.nodes.iter_mut() {
                node.complete = node.conn.is_some() && !missing.contains(addr);
            }
        }
        if refresh {
            self.shards.refresh.notify_one();
        }
    }
}

/// Reads one node connection's pushes in order: messages go to `inbound` (canaries are
/// checked here), confirmations and server-sent unsubscriptions update the node's state,
/// and reconciliations of this node's rooms run between two messages.
async fn read_node(
    inner: Weak<Inner>,
    addr: NodeAddr,
    generation: u64,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    let mut drop_log = DropLog::default();
    let Some(mut reconciler) = inner.upgrade().map(|i| i.reconcile.reconciler()) else {
        return;
    };
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { break };
                let Some(inner) = inner.upgrade() else { return };
                match push.kind {
                    PushKind::SMessage => {
                        let Some((channel, payload)) = smessage(&push) else { continue };
                        if inner.keys.is_shard_canary_channel(channel) {
                            inner.shard_canary(&addr, generation, channel, payload);
                        } else {
                            inner.on_message(&mut drop_log, channel, payload).await;
                        }
                    }
                    PushKind::SSubscribe => {
                        if let Some(channel) = push_channel(&push) {
                            let mut state = inner.shards.state();
                            if let Some(node) = state.nodes.get_mut(&addr).filter(|n| n.generation == generation) {
                                node.confirmed.insert(channel);
                            }
                        }
                    }
                    PushKind::SUnsubscribe => {
                        if let Some(channel) = push_channel(&push) {
                            {
                                let mut state = inner.shards.state();
                                if let Some(node) = state.nodes.get_mut(&addr).filter(|n| n.generation == generation) {
                                    node.confirmed.remove(&channel);
                                }
                                state.unsubscribed.insert(channel);
                            }
                            // Ours (a room emptied) or the server's (its slot moved): the
                            // maintenance round tells them apart and resubscribes the latter.
                            inner.shards.refresh.notify_one();
                        }
                    }
                    PushKind::Disconnection => break,
                    _ => {}
                }
            }
            target = reconciler.woken() => {
                let Some(inner) = inner.upgrade() else { return };
                let rooms: Vec<RoomId> = {
                    let state = inner.shards.state();
                    state
                        .nodes
                        .get(&addr)
                        .map(|n| n.confirmed.iter().filter_map(|c| inner.keys.room_from_channel(c)).collect())
                        .unwrap_or_default()
                };
                inner.reconcile_rooms(&mut reconciler, target, rooms).await;
            }
        }
    }
    if let Some(inner) = inner.upgrade() {
        inner.shard_connection_lost(&addr, generation);
    }
}

/// Keeps the cluster subscriber connections and subscriptions in line with the slot map.
pub(super) async fn shards_task(inner: Arc<Inner>) {
    let super::conn::Subscribe::Cluster(seed) = &inner.subscribe else {
        // One Redis: `subscriber` keeps the subscription.
        return;
    };
    let seed = seed.clone();
    let mut tick = tokio::time::interval(inner.timing.canary);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = 0u32;
    loop {
        let fresh = tokio::select! {
            _ = tick.tick() => {
                rounds = rounds.wrapping_add(1);
                // Re-read the map while anything is off, and now and then regardless.
                let off = inner.link().subscribed_since.is_none();
                off || rounds % TOPOLOGY_EVERY == 1
            }
            () = inner.shards.refresh.notified() => true,
        };
        inner.maintain(&seed, fresh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_master_up_and_takes_the_stalest_canary() {
        let t0 = Instant::now();
        let at = |ms: u64| Some(t0 + Duration::from_millis(ms));
        // Two masters up since 10 and 20 ms, canaries at 50 and 40 ms.
        assert_eq!(
            aggregate(true, [(at(10), at(50), true), (at(20), at(40), true)]),
            (at(20), at(40))
        );
        // One master still subscribing its channels: not subscribed.
        assert_eq!(
            aggregate(true, [(at(10), at(50), true), (at(20), at(40), false)]),
            (None, at(40))
        );
        // One master never sent a canary: no canary time at all.
        assert_eq!(
            aggregate(true, [(at(10), at(50), true), (at(20), None, true)]).1,
            None
        );
        // A master without connection.
        assert_eq!(
            aggregate(true, [(at(10), at(50), true), (None, None, false)]).0,
            None
        );
        // Slots without a master, or no masters known yet.
        assert_eq!(aggregate(false, [(at(10), at(50), true)]).0, None);
        assert_eq!(aggregate(true, []), (None, None));
    }

    #[test]
    fn node_connections_keep_the_seeds_credentials_and_speak_resp3() {
        use redis::IntoConnectionInfo;
        let seed = "redis://user:pw@seed:7000/".into_connection_info().unwrap();
        let info = node_info(
            &seed,
            &NodeAddr {
                host: "10.0.0.2".into(),
                port: 7005,
            },
        );
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("10.0.0.2".into(), 7005));
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().protocol(), ProtocolVersion::RESP3);
        assert_eq!(seed_host(&seed), "seed");
    }

    #[test]
    fn smessages_are_read_as_channel_and_payload() {
        let push = PushInfo {
            kind: PushKind::SMessage,
            data: vec![
                Value::BulkString(b"p:room:{r}:events".to_vec()),
                Value::BulkString(b"payload".to_vec()),
            ],
        };
        assert_eq!(
            smessage(&push),
            Some(("p:room:{r}:events", b"payload".as_slice()))
        );
        let odd = PushInfo {
            kind: PushKind::SMessage,
            data: vec![Value::Int(1)],
        };
        assert_eq!(smessage(&odd), None);
    }
}
