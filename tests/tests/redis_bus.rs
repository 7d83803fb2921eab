//! The Redis bus driven directly (several `RedisBus` instances in one process, each with a
//! recording hub) against a real redis-server: Lua scripts, origin filtering, ordering,
//! crash cleanup, Redis restart and a killed subscriber connection. The same behaviours
//! through real server processes and WebSockets are in `redis_cluster.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_e2e::redis::{RedisProcess, RedisProxy};
use switchboard_server::bus::redis::metrics::BusMetrics;
use switchboard_server::bus::redis::{Endpoint, RedisBus, RedisSettings};
use switchboard_server::bus::{
    Adoption, Bus, Delivered, JoinLimits, JoinOutcome, LocalHub, RelayDelivery, RelayMessage,
    RemoteEvent, RemoteSender,
};
use switchboard_server::protocol::{Frame, RelayKind};
use switchboard_server::room::{LeaveReason, ParticipantInfo, RoomId};

/// Records every event an instance's bus delivers to its local side, and keeps what the hub
/// keeps: the other instances' members of each room (from join results and delivered
/// events), the record the bus reconciles with Redis.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<RemoteEvent>>,
    remote: Mutex<HashMap<RoomId, Vec<ParticipantInfo>>>,
}

impl LocalHub for Recorder {
    fn deliver(&self, event: RemoteEvent) {
        {
            let mut remote = self.remote.lock().unwrap();
            match &event {
                RemoteEvent::Joined {
                    room_id,
                    participant,
                } => {
                    let members = remote.entry(room_id.clone()).or_default();
                    if !members.contains(participant) {
                        members.push(participant.clone());
                    }
                }
                RemoteEvent::Left {
                    room_id,
                    participant,
                    ..
                } => {
                    if let Some(members) = remote.get_mut(room_id) {
                        members.retain(|m| m.participant_id != participant.participant_id);
                    }
                }
                RemoteEvent::Relay(_) | RemoteEvent::Action(_) => {}
            }
        }
        self.events.lock().unwrap().push(event);
    }

    // The recorder keeps every room's events whether or not a join is under way.
    fn expect_join(&self, _room: &RoomId, _participant_id: &str) {}

    fn join_failed(&self, _room: &RoomId, _participant_id: &str) {}

    fn relay_sender(&self, room: &RoomId, participant_id: &str, instance: &str) -> RemoteSender {
        match self.remote.lock().unwrap().get(room) {
            None => RemoteSender::NoLocalRoom,
            Some(members) => {
                if members
                    .iter()
                    .any(|m| m.participant_id == participant_id && m.instance_id == instance)
                {
                    RemoteSender::Member
                } else {
                    RemoteSender::Unknown
                }
            }
        }
    }

    fn remote_members(&self, room: &RoomId) -> Vec<ParticipantInfo> {
        self.remote
            .lock()
            .unwrap()
            .get(room)
            .cloned()
            .unwrap_or_default()
    }
}

impl Recorder {
    /// What the hub records when it registers `me` with a join result: the members of other
    /// instances.
    fn registered(&self, room_id: &RoomId, me: &ParticipantInfo, participants: &[ParticipantInfo]) {
        let mut remote = self.remote.lock().unwrap();
        let members = remote.entry(room_id.clone()).or_default();
        for p in participants {
            if p.instance_id != me.instance_id && !members.contains(p) {
                members.push(p.clone());
            }
        }
    }

    fn events(&self) -> Vec<RemoteEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds for the recorded events.
    async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&[RemoteEvent]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.events()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; got {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The bus settings a server with default limits would pass.
fn settings(
    url: impl Into<String>,
    key_prefix: impl Into<String>,
    instance_id: impl Into<String>,
    presence_ttl: Duration,
) -> RedisSettings {
    settings_for(
        Endpoint::Single(url.into()),
        key_prefix,
        instance_id,
        presence_ttl,
    )
}

/// [`settings`] for one Redis or a cluster.
fn settings_for(
    endpoint: Endpoint,
    key_prefix: impl Into<String>,
    instance_id: impl Into<String>,
    presence_ttl: Duration,
) -> RedisSettings {
    RedisSettings {
        endpoint,
        key_prefix: key_prefix.into(),
        instance_id: instance_id.into(),
        presence_ttl,
        max_message_bytes: 64 * 1024,
        max_json_depth: 32,
        max_metadata_bytes: 1024,
        publish_timeout: Duration::from_secs(5),
        webhooks: None,
        // These tests drive `publish`; numbered delivery (resume) is on only where a test says
        // so, and is tested through servers too.
        resume_grace: Duration::ZERO,
        inbox_messages: 256,
        inbox_bytes: 1 << 20,
    }
}

struct Node {
    bus: Arc<RedisBus>,
    hub: Arc<Recorder>,
    id: String,
}

async fn node(redis: &RedisProcess, prefix: &str, id: &str, ttl: Duration) -> Node {
    node_with(settings(redis.url(), prefix, id, ttl)).await
}

async fn node_with(settings: RedisSettings) -> Node {
    let hub = Arc::new(Recorder::default());
    let id = settings.instance_id.clone();
    let bus = RedisBus::start(settings, hub.clone(), BusMetrics::default())
        .await
        .expect("redis bus starts");
    let node = Node {
        bus: Arc::new(bus),
        hub,
        id,
    };
    wait_ready(&node, true, Duration::from_secs(10)).await;
    node
}

async fn wait_ready(node: &Node, want: bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while node.bus.is_ready() != want {
        assert!(
            Instant::now() < deadline,
            "{}: readiness did not become {want} within {timeout:?}: {:?}",
            node.id,
            node.bus.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn room(id: &str) -> RoomId {
    RoomId::parse(id).unwrap()
}

fn participant(id: &str, instance: &str) -> ParticipantInfo {
    ParticipantInfo {
        participant_id: id.into(),
        user_id: format!("user-{id}"),
        username: format!("User {id}"),
        joined_at: "2026-11-28T16:30:27.123Z".into(),
        instance_id: instance.into(),
        metadata: None,
    }
}

fn chat(room_id: &RoomId, from: &str, to: Option<&str>, n: usize) -> RelayMessage {
    // The envelope a server relays, with a fixed timestamp so frames compare equal.
    let to_json = to.map_or("null".to_owned(), |t| format!("\"{t}\""));
    RelayMessage {
        room_id: room_id.clone(),
        kind: RelayKind::ChatMessage,
        sender_id: from.into(),
        to: to.map(str::to_owned),
        sender_seq: None,
        seqs: None,
        frame: Frame::from_json_text(format!(
            "{{\"type\":\"chat-message\",\"payload\":{{\"n\":{n}}},\"sender_id\":\"{from}\",\"room_id\":\"{}\",\"timestamp\":\"2026-11-28T16:30:27.123Z\",\"to\":{to_json}}}",
            room_id.as_str()
        )),
    }
}

/// `capacity` participants per room and the default of five per user.
fn limits(capacity: usize) -> JoinLimits {
    JoinLimits {
        capacity,
        per_user: Some(5),
    }
}

async fn join(node: &Node, room_id: &RoomId, p: &ParticipantInfo, cap: usize) -> JoinOutcome {
    let outcome = node.bus.join(room_id, p, limits(cap)).await.expect("join");
    if let JoinOutcome::Joined { participants } = &outcome {
        node.hub.registered(room_id, p, participants);
    }
    outcome
}

fn relays(events: &[RemoteEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            RemoteEvent::Relay(m) => Some(m.frame.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

const TTL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_relay_and_order_across_instances_without_echo() {
    let redis = RedisProcess::start();
    let a = node(&redis, "sb", "a", TTL).await;
    let b = node(&redis, "sb", "b", TTL).await;
    let r = room("r1");
    let pa = participant("pa", "a");
    let pb = participant("pb", "b");
    assert!(matches!(
        join(&a, &r, &pa, 50).await,
        JoinOutcome::Joined { .. }
    ));
    let JoinOutcome::Joined { participants } = join(&b, &r, &pb, 50).await else {
        panic!("b refused");
    };
    assert_eq!(participants, vec![pa.clone(), pb.clone()]);
    // A hears B's join; B never hears its own.
    a.hub
        .wait_for("user-joined of pb on a", Duration::from_secs(10), |ev| {
            ev.iter().any(|e| matches!(e, RemoteEvent::Joined { participant, .. } if participant.participant_id == "pb"))
        })
        .await;
    assert_eq!(
        a.bus.participants(&r).await.unwrap(),
        b.bus.participants(&r).await.unwrap()
    );

    for n in 0..1000 {
        a.bus.publish(chat(&r, "pa", Some("pb"), n)).await.unwrap();
    }
    b.hub
        .wait_for("1000 relays on b", Duration::from_secs(10), |ev| {
            relays(ev).len() >= 1000
        })
        .await;
    let got = relays(&b.hub.events());
    let want: Vec<String> = (0..1000)
        .map(|n| chat(&r, "pa", Some("pb"), n).frame.as_str().to_owned())
        .collect();
    assert_eq!(got, want, "order preserved, nothing duplicated");
    assert!(
        relays(&a.hub.events()).is_empty(),
        "a publisher never receives its own messages"
    );

    b.bus.leave(&r, &pb, LeaveReason::Closed).await.unwrap();
    a.hub
        .wait_for("user-left of pb", Duration::from_secs(10), |ev| {
            ev.iter().any(|e| matches!(e, RemoteEvent::Left { participant, reason: LeaveReason::Closed, .. } if participant.participant_id == "pb"))
        })
        .await;
    assert_eq!(a.bus.participants(&r).await.unwrap(), vec![pa]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_atomic_across_instances() {
    let redis = RedisProcess::start();
    let nodes = [
        node(&redis, "sb", "a", TTL).await,
        node(&redis, "sb", "b", TTL).await,
        node(&redis, "sb", "c", TTL).await,
    ];
    let r = room("full");
    let mut joins = Vec::new();
    for i in 0..120 {
        let n = &nodes[i % 3];
        let bus = n.bus.clone();
        let p = participant(&format!("p{i}"), &n.id);
        let r = r.clone();
        joins.push(tokio::spawn(
            async move { bus.join(&r, &p, limits(50)).await },
        ));
    }
    let mut admitted = 0;
    let mut full = 0;
    for j in joins {
        match j.await.unwrap().unwrap() {
            JoinOutcome::Joined { .. } => admitted += 1,
            JoinOutcome::RoomFull => full += 1,
            JoinOutcome::UserLimit => {
                panic!("120 distinct users: nobody is over the per-user limit")
            }
        }
    }
    assert_eq!((admitted, full), (50, 70));
    assert_eq!(nodes[0].bus.participants(&r).await.unwrap().len(), 50);
}

/// The per-user limit is checked in the same atomic step: 30 joins of one user racing over
/// three instances admit exactly five; the user's seats are counted per room, from the
/// records, so a leave frees one at once and another user is never affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_is_atomic_across_instances() {
    let redis = RedisProcess::start();
    let nodes = [
        node(&redis, "sb", "a", TTL).await,
        node(&redis, "sb", "b", TTL).await,
        node(&redis, "sb", "c", TTL).await,
    ];
    let r = room("tabs");
    let of_alice = |i: usize, instance: &str| ParticipantInfo {
        user_id: "alice".into(),
        ..participant(&format!("alice-{i}"), instance)
    };
    let mut joins = Vec::new();
    for i in 0..30 {
        let n = &nodes[i % 3];
        let bus = n.bus.clone();
        let p = of_alice(i, &n.id);
        let r = r.clone();
        joins.push(tokio::spawn(async move {
            let outcome = bus.join(&r, &p, limits(50)).await;
            (p, outcome)
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for j in joins {
        match j.await.unwrap() {
            (p, Ok(JoinOutcome::Joined { .. })) => admitted.push(p),
            (_, Ok(JoinOutcome::UserLimit)) => refused += 1,
            (p, other) => panic!("{}: {other:?}", p.participant_id),
        }
    }
    assert_eq!((admitted.len(), refused), (5, 25));
    assert_eq!(nodes[0].bus.participants(&r).await.unwrap().len(), 5);
    assert!(matches!(
        join(&nodes[1], &r, &participant("bob", "b"), 50).await,
        JoinOutcome::Joined { .. }
    ));
    assert!(matches!(
        join(&nodes[2], &room("elsewhere"), &of_alice(99, "c"), 50).await,
        JoinOutcome::Joined { .. }
    ));
    let gone = admitted.remove(0);
    let holder = nodes.iter().find(|n| n.id == gone.instance_id).unwrap();
    holder
        .bus
        .leave(&r, &gone, LeaveReason::Closed)
        .await
        .unwrap();
    assert!(matches!(
        join(&nodes[0], &r, &of_alice(100, "a"), 50).await,
        JoinOutcome::Joined { .. }
    ));
    assert_eq!(
        join(&nodes[1], &r, &of_alice(101, "b"), 50).await,
        JoinOutcome::UserLimit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_cleaned_up_once_with_instance_lost() {
    let redis = RedisProcess::start();
    let a = node(&redis, "sb", "a", TTL).await;
    let b = node(&redis, "sb", "b", TTL).await;
    let c = node(&redis, "sb", "c", TTL).await;
    let (r1, r2) = (room("one"), room("two"));
    join(&a, &r1, &participant("a1", "a"), 50).await;
    join(&a, &r2, &participant("a2", "a"), 50).await;
    join(&b, &r1, &participant("b1", "b"), 50).await;
    join(&c, &r2, &participant("c2", "c"), 50).await;
    let started = Instant::now();
    // A crash: background tasks stop, nothing is removed from Redis.
    drop(a);
    let lost = |ev: &[RemoteEvent], id: &str| {
        ev.iter()
            .filter(|e| matches!(e, RemoteEvent::Left { participant, reason: LeaveReason::InstanceLost, .. } if participant.participant_id == id))
            .count()
    };
    b.hub
        .wait_for("a1 lost on b", TTL + Duration::from_secs(5), |ev| {
            lost(ev, "a1") == 1
        })
        .await;
    c.hub
        .wait_for("a2 lost on c", TTL + Duration::from_secs(5), |ev| {
            lost(ev, "a2") == 1
        })
        .await;
    assert!(started.elapsed() < TTL + Duration::from_secs(5));
    // Give a second cleaner the chance to (wrongly) run again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lost(&b.hub.events(), "a1"), 1);
    assert_eq!(lost(&c.hub.events(), "a2"), 1);
    assert_eq!(lost(&b.hub.events(), "a2"), 0, "b has nobody in room two");
    assert_eq!(
        b.bus.participants(&r1).await.unwrap(),
        vec![participant("b1", "b")]
    );
    assert_eq!(
        c.bus.participants(&r2).await.unwrap(),
        vec![participant("c2", "c")]
    );
    assert!(redis
        .keys("sb:instance:{a}:*")
        .iter()
        .all(|k| k.ends_with(":lost") || k.ends_with(":cleanup")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_that_is_alive() {
    let mut redis = RedisProcess::start();
    let a = node(&redis, "sb", "a", TTL).await;
    let b = node(&redis, "sb", "b", TTL).await;
    let r = room("r");
    join(&a, &r, &participant("pa", "a"), 50).await;
    join(&b, &r, &participant("pb", "b"), 50).await;
    redis.kill();
    wait_ready(&a, false, Duration::from_secs(5)).await;
    let err = a.bus.publish(chat(&r, "pa", None, 1)).await;
    assert!(
        err.is_err(),
        "publish while Redis is down must fail, never drop silently"
    );
    redis.restart_same_port();
    wait_ready(&a, true, Duration::from_secs(10)).await;
    wait_ready(&b, true, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = a.bus.participants(&r).await.unwrap_or_default();
        if list.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence not re-registered: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.bus.publish(chat(&r, "pa", None, 2)).await.unwrap();
    b.hub
        .wait_for("relay after restart", Duration::from_secs(10), |ev| {
            relays(ev).iter().any(|f| f.contains("\"n\":2"))
        })
        .await;
    // Nobody was declared lost or left: the outage was invisible to the room.
    assert!(b
        .hub
        .events()
        .iter()
        .all(|e| !matches!(e, RemoteEvent::Left { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_is_repaired_and_prefixes_isolate() {
    let redis = RedisProcess::start();
    let a = node(&redis, "one", "a", TTL).await;
    let b = node(&redis, "one", "b", TTL).await;
    let other = node(&redis, "two", "x", TTL).await;
    let r = room("shared");
    join(&a, &r, &participant("pa", "a"), 50).await;
    join(&b, &r, &participant("pb", "b"), 50).await;
    join(&other, &r, &participant("px", "x"), 50).await;
    assert_eq!(a.bus.participants(&r).await.unwrap().len(), 2);
    assert_eq!(
        other.bus.participants(&r).await.unwrap(),
        vec![participant("px", "x")]
    );

    assert!(redis.client_kill_pubsub() >= 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        a.bus.publish(chat(&r, "pa", None, n)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if relays(&b.hub.events())
            .iter()
            .any(|f| f.contains(&format!("\"n\":{n}}}")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relaying did not recover after CLIENT KILL"
        );
    }
    wait_ready(&b, true, Duration::from_secs(10)).await;
    assert!(
        relays(&other.hub.events()).is_empty(),
        "another prefix never sees our rooms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_declared_lost_while_alive_comes_back_with_user_joined() {
    let redis = RedisProcess::start();
    let a = node(&redis, "sb", "a", TTL).await;
    let b = node(&redis, "sb", "b", TTL).await;
    let r = room("stall");
    let pa = participant("pa", "a");
    join(&a, &r, &pa, 50).await;
    join(&b, &r, &participant("pb", "b"), 50).await;
    // What a long stall looks like from outside: a's heartbeat stays gone (a renews it every
    // second, so keep deleting it) until b has declared a lost.
    let lost_on_b = |ev: &[RemoteEvent]| {
        ev.iter().any(|e| matches!(e, RemoteEvent::Left { participant, reason: LeaveReason::InstanceLost, .. } if participant.participant_id == "pa"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lost_on_b(&b.hub.events()) {
        assert!(Instant::now() < deadline, "b never declared a lost");
        redis.command(&["DEL", "sb:instance:{a}:alive"]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // a hears about its own "loss", ignores it, re-registers and re-announces pa.
    b.hub
        .wait_for("pa re-joined on b", Duration::from_secs(10), |ev| {
            ev.iter().any(|e| matches!(e, RemoteEvent::Joined { participant, .. } if participant.participant_id == "pa"))
        })
        .await;
    assert!(a
        .hub
        .events()
        .iter()
        .all(|e| !matches!(e, RemoteEvent::Left { .. })));
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.bus.participants(&r).await.unwrap().len() != 2 {
        assert!(Instant::now() < deadline, "pa not re-registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        redis.command(&["EXISTS", "sb:instance:{a}:lost"]),
        switchboard_e2e::redis::Reply::Integer(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_before_redis_becomes_ready_when_redis_appears() {
    let mut redis = RedisProcess::start();
    redis.kill();
    let hub = Arc::new(Recorder::default());
    let bus = RedisBus::start(
        settings(redis.url(), "sb", "early", TTL),
        hub.clone(),
        BusMetrics::default(),
    )
    .await
    .expect("starting does not need Redis yet");
    let early = Node {
        bus: Arc::new(bus),
        hub,
        id: "early".into(),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!early.bus.is_ready());
    assert!(early
        .bus
        .join(&room("r"), &participant("p", "early"), limits(5))
        .await
        .is_err());
    redis.restart_same_port();
    wait_ready(&early, true, Duration::from_secs(10)).await;
    assert!(matches!(
        join(&early, &room("r"), &participant("p", "early"), 5).await,
        JoinOutcome::Joined { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_restarted_with_the_same_id_cleans_up_its_past() {
    let redis = RedisProcess::start();
    let b = node(&redis, "sb", "b", TTL).await;
    let r = room("again");
    join(&b, &r, &participant("pb", "b"), 50).await;
    let a = node(&redis, "sb", "a", TTL).await;
    join(&a, &r, &participant("old", "a"), 50).await;
    drop(a);
    // Back at once, same id: its heartbeat never lapses, so nobody else would clean up.
    let a2 = node(&redis, "sb", "a", TTL).await;
    let JoinOutcome::Joined { participants } = join(&a2, &r, &participant("new", "a"), 50).await
    else {
        panic!("new refused");
    };
    let new_saw_old = participants.iter().any(|p| p.participant_id == "old");
    // Whoever saw "old" in a room-state hears it leave: the other instance always, the new
    // incarnation's participant when it joined before the cleanup ran, whichever instance ran
    // it (a2's first resync, or b's sweep if a2's first heartbeat came after "a" lapsed).
    if new_saw_old {
        a2.hub
            .wait_for("old announced gone on a2", Duration::from_secs(10), |ev| {
                ev.iter().any(|e| matches!(e, RemoteEvent::Left { participant, reason: LeaveReason::InstanceLost, .. } if participant.participant_id == "old"))
            })
            .await;
    }
    b.hub
        .wait_for("old announced gone", Duration::from_secs(10), |ev| {
            ev.iter().any(|e| matches!(e, RemoteEvent::Left { participant, reason: LeaveReason::InstanceLost, .. } if participant.participant_id == "old"))
        })
        .await;
    // Presence converges on exactly the live participants. Not at once: when the new
    // incarnation's first heartbeat came too late (a loaded machine), b cleaned up after "a"
    // itself, "new" included, and a2 re-registers "new" at its next heartbeat.
    let want = ["new".to_string(), "pb".to_string()];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ids: Vec<String> = b
            .bus
            .participants(&r)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.participant_id)
            .collect();
        ids.sort();
        if ids == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence did not converge on {want:?}: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_partition_longer_than_the_ttl_nobody_is_declared_lost() {
    let redis = RedisProcess::start();
    let proxy = RedisProxy::start(redis.port()).await;
    let behind_proxy = |id: &'static str| {
        let url = proxy.url();
        async move {
            let hub = Arc::new(Recorder::default());
            let bus = RedisBus::start(
                settings(url, "sb", id, TTL),
                hub.clone(),
                BusMetrics::default(),
            )
            .await
            .expect("bus starts");
            Node {
                bus: Arc::new(bus),
                hub,
                id: id.into(),
            }
        }
    };
    let a = behind_proxy("a").await;
    // Heartbeats half a period apart: whoever renews first could judge the other dead.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = behind_proxy("b").await;
    wait_ready(&a, true, Duration::from_secs(10)).await;
    wait_ready(&b, true, Duration::from_secs(10)).await;
    let r = room("partitioned");
    join(&a, &r, &participant("pa", "a"), 50).await;
    join(&b, &r, &participant("pb", "b"), 50).await;
    tokio::time::sleep(TTL).await;
    // Both instances lose Redis while it keeps running: every heartbeat expires meanwhile.
    proxy.partition();
    wait_ready(&a, false, Duration::from_secs(5)).await;
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert!(
        redis.keys("sb:instance:*:alive").is_empty(),
        "heartbeats expired"
    );
    proxy.heal();
    wait_ready(&a, true, Duration::from_secs(10)).await;
    wait_ready(&b, true, Duration::from_secs(10)).await;
    // Whoever came back first gave the other a TTL to renew before judging it.
    tokio::time::sleep(TTL * 2).await;
    for n in [&a, &b] {
        assert!(
            n.hub
                .events()
                .iter()
                .all(|e| !matches!(e, RemoteEvent::Left { .. })),
            "{} saw a spurious leave: {:?}",
            n.id,
            n.hub.events()
        );
    }
    assert_eq!(a.bus.participants(&r).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_participants_still_registered_leaves_them_to_the_sweep() {
    let redis = RedisProcess::start();
    let a = node(&redis, "sb", "a", TTL).await;
    let b = node(&redis, "sb", "b", TTL).await;
    let r = room("stuck");
    join(&a, &r, &participant("a1", "a"), 50).await;
    join(&b, &r, &participant("b1", "b"), 50).await;
    // The drain timed out: a1's session never left, yet the process shuts its bus down.
    a.bus.shutdown().await;
    // Its record is still there, so the rooms set and the instance entry must be too (or no
    // sweeper would ever find the record again: a ghost seat forever)…
    assert_eq!(
        redis.command(&["SMEMBERS", "sb:instance:{a}:rooms"]),
        switchboard_e2e::redis::Reply::Array(vec![switchboard_e2e::redis::Reply::Bulk(Some(
            "stuck".into()
        ))])
    );
    assert_eq!(
        redis.command(&["SISMEMBER", "sb:instances", "a"]),
        switchboard_e2e::redis::Reply::Integer(1)
    );
    // …and a live instance removes it as lost.
    b.hub
        .wait_for("a1 lost on b", TTL + Duration::from_secs(5), |ev| {
            ev.iter().any(|e| matches!(e, RemoteEvent::Left { participant, reason: LeaveReason::InstanceLost, .. } if participant.participant_id == "a1"))
        })
        .await;
    assert_eq!(
        b.bus.participants(&r).await.unwrap(),
        vec![participant("b1", "b")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_forgets_the_instance() {
    let redis = RedisProcess::start();
    let a = node(&redis, "sb", "a", TTL).await;
    let r = room("clean");
    let p = participant("a1", "a");
    join(&a, &r, &p, 50).await;
    a.bus.leave(&r, &p, LeaveReason::Draining).await.unwrap();
    a.bus.shutdown().await;
    assert_eq!(redis.keys("sb:instance:{a}:*"), Vec::<String>::new());
    assert_eq!(
        redis.command(&["SISMEMBER", "sb:instances", "a"]),
        switchboard_e2e::redis::Reply::Integer(0)
    );
}

/// A node that numbers deliveries (resume on) with these inbox bounds.
async fn resume_node(redis: &RedisProcess, id: &str, messages: usize, bytes: usize) -> Node {
    let mut s = settings(redis.url(), "sb", id, TTL);
    s.resume_grace = Duration::from_secs(30);
    s.inbox_messages = messages;
    s.inbox_bytes = bytes;
    node_with(s).await
}

/// `message` for `recipient`, after the sender's relay with client seq `follows`.
fn to(message: RelayMessage, recipient: &str, follows: Option<u64>) -> RelayDelivery {
    RelayDelivery {
        message,
        recipients: vec![recipient.into()],
        follows,
    }
}

/// `a.bus.adopt` of `p` after `last_seq`: the replayed frames' `n`, or the overflow's loss.
async fn adopt(
    node: &Node,
    r: &RoomId,
    p: &ParticipantInfo,
    last_seq: u64,
) -> Result<Vec<u64>, usize> {
    let adoption = node
        .bus
        .adopt(r, &p.participant_id, &p.user_id, last_seq)
        .await
        .expect("adopt");
    match adoption {
        Adoption::Adopted(a) => Ok(a
            .replay
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
                v["payload"]["n"].as_u64().unwrap()
            })
            .collect()),
        Adoption::Overflowed { participant, lost } => {
            assert_eq!(
                participant.instance_id, node.id,
                "moved to the adopting node"
            );
            Err(lost)
        }
        Adoption::Refused(refusal) => panic!("adopt refused: {refusal:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_replays_only_within_both_inbox_bounds_exactly() {
    let redis = RedisProcess::start();
    // The sender's node trims (approximately) to 256; the adopting nodes check their bounds.
    let a = resume_node(&redis, "a", 256, 1 << 20).await;
    let r = room("bounds");
    let (pa, pb) = (participant("pa", "a"), participant("pb", "a"));
    for p in [&pa, &pb] {
        assert!(matches!(
            join(&a, &r, p, 50).await,
            JoinOutcome::Joined { .. }
        ));
    }
    // Frames 10 to 12 have the same size.
    let size = chat(&r, "pa", Some("pb"), 10).frame.len();
    for n in 1..=12 {
        let to_pb = to(chat(&r, "pa", Some("pb"), n), "pb", None);
        for outcome in a.bus.deliver(vec![to_pb]).await {
            assert_eq!(outcome.unwrap(), Delivered::Sent);
        }
    }
    // At most 8 messages.
    let m = resume_node(&redis, "m", 8, 1 << 20).await;
    assert_eq!(adopt(&m, &r, &pb, 4).await, Ok((5..=12).collect()));
    assert_eq!(adopt(&m, &r, &pb, 3).await, Err(1));
    assert_eq!(adopt(&m, &r, &pb, 0).await, Err(4));
    assert_eq!(adopt(&m, &r, &pb, 12).await, Ok(vec![]));
    // At most three messages' bytes.
    let b = resume_node(&redis, "b", 256, 3 * size).await;
    assert_eq!(adopt(&b, &r, &pb, 9).await, Ok(vec![10, 11, 12]));
    assert_eq!(adopt(&b, &r, &pb, 8).await, Err(1));
    let short = resume_node(&redis, "s", 256, 3 * size - 1).await;
    assert_eq!(adopt(&short, &r, &pb, 9).await, Err(1));
    // A message bigger than the byte bound on its own is never replayed.
    let tiny = resume_node(&redis, "t", 256, size - 1).await;
    assert_eq!(adopt(&tiny, &r, &pb, 11).await, Err(1));
    assert_eq!(adopt(&tiny, &r, &pb, 12).await, Ok(vec![]));
    // A gap in the stream (entries lost) is an overflow too, whatever the bounds.
    redis.command(&["XDEL", "sb:room:{bounds}:inbox:pb", "11-1"]);
    assert_eq!(adopt(&m, &r, &pb, 9).await, Err(2));
    assert_eq!(adopt(&m, &r, &pb, 11).await, Ok(vec![12]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_taken_only_after_the_relay_it_follows() {
    // A connection's relays go to Redis in batches; in a batch each numbered one names the one
    // before it, and Redis takes it only after that one.
    let redis = RedisProcess::start();
    let a = resume_node(&redis, "a", 256, 1 << 20).await;
    let r = room("follows");
    let (pa, pb) = (participant("pa", "a"), participant("pb", "a"));
    for p in [&pa, &pb] {
        assert!(matches!(
            join(&a, &r, p, 50).await,
            JoinOutcome::Joined { .. }
        ));
    }
    let numbered = |seq: u64, follows: Option<u64>| {
        let mut message = chat(&r, "pa", Some("pb"), seq as usize);
        message.sender_seq = Some(seq);
        to(message, "pb", follows)
    };
    let deliver = |batch: Vec<RelayDelivery>| async {
        a.bus
            .deliver(batch)
            .await
            .into_iter()
            .map(|outcome| outcome.expect("delivered"))
            .collect::<Vec<_>>()
    };
    use Delivered::{Behind, Duplicate, Sent};
    assert_eq!(
        deliver(vec![numbered(1, None), numbered(2, Some(1))]).await,
        [Sent, Sent]
    );
    // 3 never reached Redis (refused, or lost with a connection): 4 and 5 after it in the same
    // batch are not taken either.
    assert_eq!(
        deliver(vec![numbered(4, Some(3)), numbered(5, Some(4))]).await,
        [Behind, Behind]
    );
    // The client sends them again in order, in one batch: each follows one that is taken.
    assert_eq!(
        deliver(vec![
            numbered(3, Some(2)),
            numbered(4, Some(3)),
            numbered(5, Some(4))
        ])
        .await,
        [Sent, Sent, Sent]
    );
    // A re-send of one that was taken is a duplicate, whatever it follows.
    assert_eq!(deliver(vec![numbered(4, Some(9))]).await, [Duplicate]);
    // Following one taken long ago (more than 32 below the highest) counts as taken.
    let many: Vec<_> = (6..=40).map(|seq| numbered(seq, None)).collect();
    assert_eq!(deliver(many).await, [Sent; 35]);
    assert_eq!(deliver(vec![numbered(41, Some(2))]).await, [Sent]);
    // pb's inbox holds exactly what was taken, each once, in seq order.
    let m = resume_node(&redis, "m", 256, 1 << 20).await;
    assert_eq!(adopt(&m, &r, &pb, 0).await, Ok((1..=41).collect()));
}
