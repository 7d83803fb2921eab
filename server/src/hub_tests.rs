//! Hub fan-out and presence, without sockets.

use super::*;
use crate::outbox::tests::{frame, try_next};
use crate::outbox::Next;
use crate::protocol::RelayKind;
use crate::test_support::participant;
use serde_json::Value;

fn json(next: Option<Next>) -> Value {
    match next {
        Some(Next::Frame(f)) => serde_json::from_str(f.as_str()).unwrap(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn room() -> RoomId {
    RoomId::parse("r").unwrap()
}

fn relay(sender: &str, to: Option<&str>) -> RelayMessage {
    let payload = serde_json::value::RawValue::from_string("{\"n\":1}".into()).unwrap();
    RelayMessage {
        room_id: room(),
        kind: RelayKind::Offer,
        sender_id: sender.into(),
        to: to.map(Into::into),
        sender_seq: None,
        seqs: None,
        frame: protocol::encode_relay(RelayKind::Offer, &payload, sender, "r", to),
    }
}

fn hub() -> Hub {
    Hub::new(Arc::new(Metrics::default()))
}

fn outbox() -> Arc<Outbox> {
    Arc::new(Outbox::new(16, 1 << 20))
}

/// Registers participant `id` of this instance (`i1`) with `outbox`, the bus having listed the
/// participants `listed` (also of `i1`) for the join.
fn join(h: &Hub, id: &str, outbox: &Arc<Outbox>, listed: &[&str]) {
    let listed: Vec<ParticipantInfo> = listed.iter().map(|l| participant(l, "i1")).collect();
    h.register(&room(), &participant(id, "i1"), outbox.clone(), &listed);
}

#[test]
fn register_sends_room_state_first_and_announces() {
    let h = hub();
    let (a, b) = (outbox(), outbox());
    join(&h, "a", &a, &["a"]);
    join(&h, "b", &b, &["a", "b"]);
    let v = json(try_next(&a));
    assert_eq!(v["type"], "room-state");
    let v = json(try_next(&a));
    assert_eq!(v["type"], "user-joined");
    assert_eq!(v["payload"]["participant_id"], "b");
    let v = json(try_next(&b));
    assert_eq!(v["type"], "room-state");
    assert_eq!(v["payload"]["participant_count"], 2);
    assert!(try_next(&b).is_none(), "no self announcement");
    assert_eq!(h.counts(), (1, 2));

    h.unregister(&room(), "b", LeaveReason::Timeout);
    let v = json(try_next(&a));
    assert_eq!(v["type"], "user-left");
    assert_eq!(v["payload"]["reason"], "timeout");
    h.unregister(&room(), "a", LeaveReason::Closed);
    assert_eq!(h.counts(), (0, 0));
}

#[test]
fn relay_routes() {
    let h = hub();
    let (a, b, c) = (outbox(), outbox(), outbox());
    join(&h, "a", &a, &["a"]);
    join(&h, "b", &b, &["a", "b"]);
    join(&h, "c", &c, &["a", "b", "c"]);
    for o in [&a, &b, &c] {
        while try_next(o).is_some() {}
    }
    assert_eq!(
        h.relay_local(relay("a", Some("c")).borrowed()),
        Route::LocalOnly
    );
    assert!(
        try_next(&b).is_none(),
        "targeted message reaches only its target"
    );
    let v = json(try_next(&c));
    assert_eq!(
        (v["sender_id"].as_str(), v["to"].as_str()),
        (Some("a"), Some("c"))
    );
    assert_eq!(
        h.relay_local(relay("a", Some("zzz")).borrowed()),
        Route::TargetNotFound
    );
    assert_eq!(h.relay_local(relay("a", None).borrowed()), Route::LocalOnly);
    assert!(try_next(&a).is_none(), "broadcast skips the sender");
    assert_eq!(json(try_next(&b))["to"], Value::Null);
    assert_eq!(json(try_next(&c))["to"], Value::Null);
}

#[test]
fn remote_members_and_events() {
    let h = hub();
    let a = outbox();
    // The bus reported a participant on another instance.
    h.register(
        &room(),
        &participant("a", "i1"),
        a.clone(),
        &[participant("x", "i2"), participant("a", "i1")],
    );
    while try_next(&a).is_some() {}
    assert_eq!(
        h.relay_local(relay("a", Some("x")).borrowed()),
        Route::Publish
    );
    assert_eq!(h.relay_local(relay("a", None).borrowed()), Route::Publish);
    assert!(try_next(&a).is_none());

    // What a bus asks before it hands over a relay from another instance.
    assert_eq!(h.relay_sender(&room(), "x", "i2"), RemoteSender::Member);
    assert_eq!(
        h.relay_sender(&room(), "x", "i9"),
        RemoteSender::Unknown,
        "a member of another instance"
    );
    assert_eq!(
        h.relay_sender(&room(), "nobody", "i2"),
        RemoteSender::Unknown
    );
    assert_eq!(
        h.relay_sender(&room(), "a", "i1"),
        RemoteSender::Unknown,
        "local members never relay through the bus"
    );
    assert_eq!(
        h.relay_sender(&RoomId::parse("other").unwrap(), "x", "i2"),
        RemoteSender::NoLocalRoom
    );
    // A room kept only for a join under way has nobody to deliver to yet.
    h.expect_join(&RoomId::parse("soon").unwrap(), "j");
    assert_eq!(
        h.relay_sender(&RoomId::parse("soon").unwrap(), "x", "i2"),
        RemoteSender::NoLocalRoom
    );
    h.join_failed(&RoomId::parse("soon").unwrap(), "j");

    // Remote relay to a local target, then a remote broadcast.
    h.deliver(RemoteEvent::Relay(relay("x", Some("a"))));
    assert_eq!(json(try_next(&a))["sender_id"], "x");
    h.deliver(RemoteEvent::Relay(relay("x", None)));
    assert_eq!(json(try_next(&a))["sender_id"], "x");

    // Presence from other instances; duplicates are ignored.
    h.deliver(RemoteEvent::Joined {
        room_id: room(),
        participant: participant("y", "i3"),
    });
    h.deliver(RemoteEvent::Joined {
        room_id: room(),
        participant: participant("y", "i3"),
    });
    assert_eq!(json(try_next(&a))["type"], "user-joined");
    assert!(try_next(&a).is_none());
    // The record a bus reconciles: other instances' members only, in join order.
    assert_eq!(
        h.remote_members(&room()),
        vec![participant("x", "i2"), participant("y", "i3")]
    );
    // The room hears about a leave with what it was told at the join, whatever the leave
    // carries.
    let renamed = ParticipantInfo {
        username: "someone else".into(),
        ..participant("x", "i2")
    };
    h.deliver(RemoteEvent::Left {
        room_id: room(),
        participant: renamed,
        reason: LeaveReason::InstanceLost,
    });
    h.deliver(RemoteEvent::Left {
        room_id: room(),
        participant: participant("x", "i2"),
        reason: LeaveReason::InstanceLost,
    });
    let v = json(try_next(&a));
    assert_eq!(
        (v["type"].as_str(), v["payload"]["reason"].as_str()),
        (Some("user-left"), Some("instance_lost"))
    );
    assert_eq!(v["payload"]["username"], "User x");
    assert!(try_next(&a).is_none());
    // A remote Left for a local participant is not ours to act on.
    h.deliver(RemoteEvent::Left {
        room_id: room(),
        participant: participant("a", "i1"),
        reason: LeaveReason::Closed,
    });
    assert_eq!(h.counts(), (1, 1));
    assert_eq!(
        h.relay_local(relay("a", Some("x")).borrowed()),
        Route::TargetNotFound
    );

    // Events for rooms without local participants are ignored.
    h.deliver(RemoteEvent::Joined {
        room_id: RoomId::parse("other").unwrap(),
        participant: participant("z", "i2"),
    });
    assert_eq!(h.counts(), (1, 1));
    assert_eq!(h.remote_members(&RoomId::parse("other").unwrap()), vec![]);
    assert_eq!(h.remote_members(&room()), vec![participant("y", "i3")]);
}

#[test]
fn slow_reader_is_marked_and_others_keep_receiving() {
    let h = hub();
    let slow = Arc::new(Outbox::new(3, 1 << 20));
    let fast = outbox();
    join(&h, "s", &slow, &["s"]);
    join(&h, "f", &fast, &["s", "f"]);
    while try_next(&fast).is_some() {}
    for _ in 0..5 {
        h.relay_local(relay("x", Some("s")).borrowed());
        h.relay_local(relay("s", Some("f")).borrowed());
        assert_eq!(json(try_next(&fast))["type"], "offer");
    }
    assert_eq!(try_next(&slow), Some(Next::Close(CloseCause::SlowConsumer)));
}

#[test]
fn drain_sends_reconnect_within_window() {
    let h = hub();
    let a = outbox();
    join(&h, "a", &a, &["a"]);
    h.drain(Duration::from_millis(500));
    assert_eq!(json(try_next(&a))["type"], "room-state");
    let v = json(try_next(&a));
    assert_eq!(v["type"], "reconnect");
    assert!(v["payload"]["after_ms"].as_u64().unwrap() < 500);
    assert_eq!(try_next(&a), Some(Next::Close(CloseCause::Draining)));
}

#[test]
fn signaling_during_a_drain_is_delivered_or_refused_never_lost() {
    let h = hub();
    let (s, t) = (outbox(), outbox());
    join(&h, "s", &s, &["s"]);
    join(&h, "t", &t, &["s", "t"]);
    while try_next(&s).is_some_and(|n| matches!(n, Next::Frame(_))) {}
    h.drain(Duration::ZERO);
    // Every outbox is now marked draining, but t's writer has not flushed:
    // an offer sent now still reaches t, after the reconnect hint.
    assert_eq!(
        h.relay_local(relay("s", Some("t")).borrowed()),
        Route::LocalOnly
    );
    assert_eq!(json(try_next(&t))["type"], "room-state");
    assert_eq!(json(try_next(&t))["type"], "reconnect");
    let v = json(try_next(&t));
    assert_eq!(
        (v["type"].as_str(), v["sender_id"].as_str()),
        (Some("offer"), Some("s"))
    );
    // t's writer has taken the close: the next offer is refused, so the
    // sender hears `target_not_found` instead of losing it.
    assert_eq!(try_next(&t), Some(Next::Close(CloseCause::Draining)));
    assert_eq!(
        h.relay_local(relay("s", Some("t")).borrowed()),
        Route::TargetNotFound
    );
    // The sender's own error reply still fits its draining outbox.
    assert_eq!(s.push(frame(1), Delivery::Droppable), Push::Queued);
}

#[test]
fn concurrent_joins_on_one_instance_stay_consistent() {
    let h = hub();
    let (a, b) = (outbox(), outbox());
    let mut ia = participant("a", "i1");
    ia.joined_at = "2026-11-28T16:30:27.100Z".into();
    let ib = participant("b", "i1");
    // Both passed the bus; b registers first while a is still in flight.
    h.register(&room(), &ib, b.clone(), &[ia.clone(), ib.clone()]);
    let v = json(try_next(&b));
    assert_eq!(
        v["payload"]["participant_count"], 1,
        "a is not registered yet: {v}"
    );
    h.register(&room(), &ia, a.clone(), &[ia.clone(), ib.clone()]);
    let v = json(try_next(&a));
    assert_eq!(v["payload"]["participant_count"], 2);
    assert_eq!(
        v["payload"]["participants"][0]["participant_id"], "a",
        "ordered by joined_at"
    );
    let v = json(try_next(&b));
    assert_eq!(
        (v["type"].as_str(), v["payload"]["participant_id"].as_str()),
        (Some("user-joined"), Some("a"))
    );

    // A participant that left before a stale bus list was read does not come back.
    h.unregister(&room(), "b", LeaveReason::Closed);
    let c = outbox();
    h.register(
        &room(),
        &participant("c", "i1"),
        c.clone(),
        &[ia.clone(), ib.clone(), participant("c", "i1")],
    );
    let v = json(try_next(&c));
    assert_eq!(v["payload"]["participant_count"], 2, "{v}");
}

#[test]
fn a_reader_that_missed_presence_gets_a_fresh_room_state_after_catching_up() {
    let h = hub();
    // The reader holds 2 presence updates (twice its bound of 1).
    let reader = Arc::new(Outbox::new(1, 1 << 20));
    join(&h, "r", &reader, &["r"]);
    let others: Vec<Arc<Outbox>> = (0..4).map(|_| outbox()).collect();
    for (i, o) in others.iter().enumerate() {
        h.register(
            &room(),
            &participant(&format!("p{i}"), "i1"),
            o.clone(),
            &[],
        );
    }
    h.unregister(&room(), "p0", LeaveReason::Closed);
    h.deliver(RemoteEvent::Joined {
        room_id: room(),
        participant: participant("remote", "i2"),
    });
    // room-state, then the one presence update that fitted beside it; the
    // other five were dropped.
    assert_eq!(json(try_next(&reader))["type"], "room-state");
    assert_eq!(json(try_next(&reader))["payload"]["participant_id"], "p0");
    assert_eq!(try_next(&reader), Some(Next::Resync));
    h.resync(&room(), "r");
    // Later presence is queued behind the fresh room-state.
    h.unregister(&room(), "p1", LeaveReason::Closed);
    let v = json(try_next(&reader));
    assert_eq!(v["type"], "room-state");
    assert_eq!(v["payload"]["self"]["participant_id"], "r");
    let mut ids: Vec<&str> = v["payload"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["participant_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["p1", "p2", "p3", "r", "remote"]);
    assert_eq!(v["payload"]["participant_count"], 5);
    let v = json(try_next(&reader));
    assert_eq!(
        (v["type"].as_str(), v["payload"]["participant_id"].as_str()),
        (Some("user-left"), Some("p1"))
    );
    assert_eq!(try_next(&reader), None, "in sync: no second resync");
    assert_eq!(h.member_count(&room()), 4);
}

/// A member of another instance that announces itself after the bus read the room for a local
/// join, but before that join registered, is in the joiner's `room-state`.
#[test]
fn a_remote_join_announced_while_a_local_join_is_under_way_is_kept() {
    let h = hub();
    h.expect_join(&room(), "a");
    h.deliver(RemoteEvent::Joined {
        room_id: room(),
        participant: participant("b", "i2"),
    });
    let a = outbox();
    // The bus read the room before b's join: its list names only a.
    join(&h, "a", &a, &["a"]);
    let state = json(try_next(&a));
    let ids: Vec<&str> = state["payload"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["participant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{state}");
    assert!(ids.contains(&"b"), "{state}");
}

/// A remote member that leaves between the bus's read of the room and the registration does not
/// come back with the (older) list that read returned.
#[test]
fn a_remote_leave_during_a_local_join_is_not_undone_by_its_member_list() {
    let h = hub();
    h.expect_join(&room(), "a");
    h.deliver(RemoteEvent::Left {
        room_id: room(),
        participant: participant("b", "i2"),
        reason: LeaveReason::Closed,
    });
    let a = outbox();
    h.register(
        &room(),
        &participant("a", "i1"),
        a.clone(),
        &[participant("a", "i1"), participant("b", "i2")],
    );
    let state = json(try_next(&a));
    assert_eq!(state["payload"]["participant_count"], 1, "{state}");
    assert!(h.remote_members(&room()).is_empty());
}

/// A join that does not happen leaves nothing behind; presence is no longer recorded for a room
/// without local members.
#[test]
fn a_failed_join_forgets_the_room() {
    let h = hub();
    h.expect_join(&room(), "a");
    h.join_failed(&room(), "a");
    h.deliver(RemoteEvent::Joined {
        room_id: room(),
        participant: participant("b", "i2"),
    });
    assert!(h.remote_members(&room()).is_empty());
    assert_eq!(h.counts(), (0, 0));
}

/// Two local participants `a`, `b` (read up to date) and one remote `c`.
fn room_of_three(h: &Hub) -> (Arc<Outbox>, Arc<Outbox>) {
    let (a, b) = (outbox(), outbox());
    let everyone = [
        participant("a", "i1"),
        participant("b", "i1"),
        participant("c", "i2"),
    ];
    h.register(&room(), &participant("a", "i1"), a.clone(), &everyone);
    h.register(&room(), &participant("b", "i1"), b.clone(), &everyone);
    while try_next(&a).is_some() {}
    while try_next(&b).is_some() {}
    (a, b)
}

#[test]
fn a_removal_closes_only_its_local_participant() {
    let h = hub();
    let (a, b) = room_of_three(&h);
    let remove = |id: &str| RoomAction::Remove {
        room_id: room(),
        participant_id: id.into(),
    };
    // The remote one is its own instance's to close.
    assert_eq!(h.apply(&remove("c")), 0);
    assert_eq!(h.apply(&remove("nobody")), 0);
    assert_eq!(h.apply(&remove("b")), 1);
    assert_eq!(try_next(&b), Some(Next::Close(CloseCause::Removed)));
    assert!(try_next(&a).is_none());
    let other_room = RoomAction::Close {
        room_id: RoomId::parse("elsewhere").unwrap(),
    };
    assert_eq!(h.apply(&other_room), 0);
}

#[test]
fn closing_the_room_closes_every_local_participant_after_its_queue() {
    let h = hub();
    let (a, b) = room_of_three(&h);
    a.push(frame(10), Delivery::Must);
    assert_eq!(h.apply(&RoomAction::Close { room_id: room() }), 2);
    assert!(matches!(try_next(&a), Some(Next::Frame(_))), "queued first");
    assert_eq!(try_next(&a), Some(Next::Close(CloseCause::RoomClosed)));
    assert_eq!(try_next(&b), Some(Next::Close(CloseCause::RoomClosed)));
}

#[test]
fn a_server_message_reaches_the_room_or_its_one_target() {
    let h = hub();
    let (a, b) = room_of_three(&h);
    let payload = serde_json::value::RawValue::from_string("{\"t\":1}".into()).unwrap();
    let frame = protocol::encode_server_message("r", &payload);
    let all = RoomAction::Message {
        room_id: room(),
        to: None,
        frame: frame.clone(),
    };
    assert_eq!(h.apply(&all), 2);
    for o in [&a, &b] {
        let v = json(try_next(o));
        assert_eq!(v["type"], "server-message");
        assert_eq!(v["sender_id"], Value::Null);
        assert_eq!(v["payload"]["t"], 1);
    }
    let one = RoomAction::Message {
        room_id: room(),
        to: Some("b".into()),
        frame,
    };
    assert_eq!(h.apply(&one), 1);
    assert!(try_next(&a).is_none());
    assert_eq!(json(try_next(&b))["type"], "server-message");
}

#[test]
fn an_update_replaces_the_record_and_is_announced_to_every_local_participant() {
    let h = hub();
    let (a, b) = room_of_three(&h);
    let mut updated = participant("c", "i2");
    let mut meta = crate::room::Metadata::new();
    meta.insert("role".into(), serde_json::json!("host"));
    updated.metadata = Some(meta);
    // Delivered from the bus, as an update made on another instance arrives.
    h.deliver(RemoteEvent::Action(RoomAction::Updated {
        room_id: room(),
        participant: updated.clone(),
    }));
    for o in [&a, &b] {
        let v = json(try_next(o));
        assert_eq!(v["type"], "participant-updated");
        assert_eq!(v["payload"]["participant_id"], "c");
        assert_eq!(v["payload"]["metadata"]["role"], "host");
    }
    let remote = h.remote_members(&room());
    assert_eq!(remote, vec![updated.clone()]);
    // A local participant's record too: its leave carries the new metadata.
    let mut b_updated = participant("b", "i1");
    b_updated.metadata = updated.metadata.clone();
    h.apply(&RoomAction::Updated {
        room_id: room(),
        participant: b_updated.clone(),
    });
    assert_eq!(json(try_next(&b))["type"], "participant-updated");
    assert_eq!(
        h.unregister(&room(), "b", LeaveReason::Removed),
        Some(b_updated)
    );
}

fn resumable(h: &Hub, id: &str, outbox: &Arc<Outbox>, listed: &[&str]) -> Claim {
    let listed: Vec<ParticipantInfo> = listed.iter().map(|l| participant(l, "i1")).collect();
    let attach = Attach {
        outbox: outbox.clone(),
        inbox: InboxLimits {
            max_messages: 3,
            max_bytes: 1 << 20,
        },
        resume_token: Some(format!("token-of-{id}")),
        numbered_by_bus: false,
    };
    h.join(&room(), &participant(id, "i1"), attach, &listed)
}

fn numbered(sender: &str, to: &str, seq: u64) -> RelayMessage {
    RelayMessage {
        sender_seq: Some(seq),
        ..relay(sender, Some(to))
    }
}

fn drain(o: &Outbox) -> Vec<Value> {
    std::iter::from_fn(|| try_next(o).map(|n| json(Some(n)))).collect()
}

#[test]
fn a_detached_participant_collects_and_a_resume_replays_in_order() {
    let h = hub();
    let (a, b) = (outbox(), outbox());
    resumable(&h, "a", &a, &["a"]);
    let claim = resumable(&h, "b", &b, &["a", "b"]);
    drain(&a);
    let state = drain(&b);
    assert_eq!(state[0]["payload"]["resume_token"], "token-of-b");
    assert_eq!(
        h.relay_local(numbered("a", "b", 1).borrowed()),
        Route::LocalOnly
    );
    assert_eq!(json(try_next(&b))["seq"], 1);
    h.detach(&room(), &claim).unwrap();
    assert_eq!(h.inbox_counts(), (1, 1));
    assert_eq!(
        h.relay_local(numbered("a", "b", 2).borrowed()),
        Route::LocalOnly
    );
    assert_eq!(
        h.relay_local(numbered("a", "b", 3).borrowed()),
        Route::LocalOnly
    );
    // A re-send of #3 is taken for what it is.
    assert_eq!(
        h.relay_local(numbered("a", "b", 3).borrowed()),
        Route::LocalOnly
    );
    let fresh = outbox();
    let (info, new_claim) = h.resume(&room(), "b", "user-b", 1, fresh.clone()).unwrap();
    assert_eq!(info.participant_id, "b");
    assert_ne!(new_claim, claim);
    let got = drain(&fresh);
    assert_eq!(got[0]["type"], "room-state");
    assert_eq!(got[0]["payload"]["resumed"], true);
    assert_eq!(got[0]["payload"]["participant_count"], 2);
    let seqs: Vec<u64> = got[1..]
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    // Live traffic numbers on; the room heard nothing of all this.
    h.relay_local(numbered("a", "b", 4).borrowed());
    assert_eq!(json(try_next(&fresh))["seq"], 4);
    assert!(try_next(&a).is_none(), "{:?}", drain(&a));
    // The old connection's claim can no longer make b leave or expire.
    assert!(h.leave(&room(), &claim, LeaveReason::Closed).is_err());
    assert!(h.detach(&room(), &claim).is_err());
    assert!(h.expire(&room(), &claim).is_none());
    // An attached participant does not expire either.
    assert!(h.expire(&room(), &new_claim).is_none());
    h.detach(&room(), &new_claim).unwrap();
    assert_eq!(h.expire(&room(), &new_claim).unwrap().participant_id, "b");
    let left = json(try_next(&a));
    assert_eq!(
        (left["type"].as_str(), left["payload"]["reason"].as_str()),
        (Some("user-left"), Some("timeout"))
    );
    assert_eq!(
        h.resume(&room(), "b", "user-b", 4, outbox())
            .unwrap_err()
            .refusal,
        Refusal::Expired
    );
}

#[test]
fn a_resume_is_refused_for_another_user_a_seq_ahead_or_an_overflow() {
    let h = hub();
    let (a, b) = (outbox(), outbox());
    resumable(&h, "a", &a, &["a"]);
    let claim = resumable(&h, "b", &b, &["a", "b"]);
    drain(&a);
    h.detach(&room(), &claim).unwrap();
    for seq in 1..=5 {
        h.relay_local(numbered("a", "b", seq).borrowed());
    }
    let refused = |user: &str, last: u64| h.resume(&room(), "b", user, last, outbox()).unwrap_err();
    assert_eq!(refused("user-a", 5).refusal, Refusal::Invalid);
    assert_eq!(refused("user-b", 6).refusal, Refusal::Invalid);
    assert!(try_next(&a).is_none(), "refusals so far change nothing");
    // Three kept (3, 4, 5): missing #2 is an overflow, and b leaves.
    let overflow = refused("user-b", 1);
    assert_eq!(overflow.refusal, Refusal::Overflow);
    assert_eq!(overflow.left.unwrap().participant_id, "b");
    let left = json(try_next(&a));
    assert_eq!(
        (left["type"].as_str(), left["payload"]["reason"].as_str()),
        (Some("user-left"), Some("closed"))
    );
    assert_eq!(refused("user-b", 5).refusal, Refusal::Expired);
}

#[test]
fn an_overflow_the_bus_found_removes_the_participant_at_once_wherever_it_was_held() {
    let h = hub();
    let (a, b) = (outbox(), outbox());
    resumable(&h, "a", &a, &["a"]);
    resumable(&h, "b", &b, &["a", "b"]);
    h.deliver(RemoteEvent::Joined {
        room_id: room(),
        participant: participant("x", "i2"),
    });
    drain(&a);
    drain(&b);
    let left = |o: &Outbox, id: &str| {
        let v = json(try_next(o));
        assert_eq!(
            (v["type"].as_str(), v["payload"]["reason"].as_str()),
            (Some("user-left"), Some("closed"))
        );
        assert_eq!(v["payload"]["participant_id"], id);
    };
    // Held on another instance.
    assert_eq!(
        h.remove_overflowed(&room(), "x").unwrap(),
        participant("x", "i2")
    );
    left(&a, "x");
    left(&b, "x");
    // Held here, its old connection still attached: closed, and the room told.
    assert_eq!(
        h.remove_overflowed(&room(), "b").unwrap().participant_id,
        "b"
    );
    assert_eq!(try_next(&b), Some(Next::Close(CloseCause::Superseded)));
    left(&a, "b");
    // Gone already: nothing to tell.
    assert!(h.remove_overflowed(&room(), "b").is_none());
    assert!(try_next(&a).is_none());
    assert_eq!(h.counts(), (1, 1));
}

#[test]
fn a_resume_closes_the_connection_still_attached() {
    let h = hub();
    let (a, b) = (outbox(), outbox());
    resumable(&h, "a", &a, &["a"]);
    resumable(&h, "b", &b, &["a", "b"]);
    drain(&b);
    let fresh = outbox();
    h.resume(&room(), "b", "user-b", 0, fresh.clone()).unwrap();
    assert_eq!(
        try_next(&b),
        Some(Next::Close(crate::outbox::CloseCause::Superseded))
    );
    assert_eq!(json(try_next(&fresh))["payload"]["resumed"], true);
}

#[test]
fn bus_seqs_never_go_back_when_the_bus_counter_starts_again() {
    let mut s = BusSeq::at(0);
    assert_eq!([s.next(1), s.next(2), s.next(3)], [1, 2, 3]);
    // Redis restarted empty: its counter gives 1 again.
    assert_eq!([s.next(1), s.next(2)], [4, 5]);
    let mut resumed = BusSeq::at(7);
    assert_eq!(resumed.next(8), 8);
}

#[test]
fn a_remote_member_first_learned_from_another_join_is_announced_once() {
    // a is registered on this instance (i1); x joins on i2. Before x's own announcement
    // reaches i1, b joins on i1 and the bus lists x for b's join. a must hear of x then:
    // x's announcement, arriving later, finds x known and says nothing more.
    let h = hub();
    let (a, b) = (outbox(), outbox());
    join(&h, "a", &a, &["a"]);
    assert_eq!(json(try_next(&a))["type"], "room-state");
    let listed = [participant("a", "i1"), participant("x", "i2")];
    h.register(&room(), &participant("b", "i1"), b.clone(), &listed);
    let mut joined = Vec::new();
    while let Some(next) = try_next(&a) {
        let v = json(Some(next));
        assert_eq!(v["type"], "user-joined", "{v}");
        joined.push(
            v["payload"]["participant_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    joined.sort();
    assert_eq!(joined, ["b", "x"]);
    // b has x in its room-state and is not told again.
    let state = json(try_next(&b));
    assert_eq!(state["payload"]["participant_count"], 3, "{state}");
    assert!(try_next(&b).is_none());
    h.deliver(RemoteEvent::Joined {
        room_id: room(),
        participant: participant("x", "i2"),
    });
    assert!(try_next(&a).is_none(), "x announced twice to a");
    assert!(
        try_next(&b).is_none(),
        "x announced to b after its room-state"
    );
}
