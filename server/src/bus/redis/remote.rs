//! What crosses from the Redis bus to the hub: every remote join, leave and relay reaches it
//! through [`Inner::deliver`], and after events may have been missed (a subscriber gap, a
//! Redis outage) `Inner::reconcile_remote` compares the hub's record of other instances'
//! members — the only such record, asked for through [`LocalHub::remote_members`] — with
//! Redis presence and delivers the joins and leaves the hub missed. The bus keeps no copy of
//! remote membership.
//!
//! [`LocalHub::remote_members`]: crate::bus::LocalHub::remote_members

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::AsyncCommands;
use tokio::sync::watch;

use super::{parse_infos, sorted, Inner};
use crate::bus::{BusError, RemoteEvent, RoomAction};
use crate::room::{LeaveReason, ParticipantInfo, RoomId};

/// Reconciliation requests: bumped when events may have been missed, and released to the
/// subscriber tasks once presence has settled. Each subscriber task (one for one Redis, one
/// per shard node on a cluster) reconciles the rooms it receives, between two of its messages,
/// with its own [`Reconciler`].
pub(super) struct Reconcile {
    requested: AtomicU64,
    /// The latest request presence has settled for.
    settled: watch::Sender<u64>,
}

impl Default for Reconcile {
    fn default() -> Self {
        Reconcile {
            requested: AtomicU64::new(0),
            settled: watch::Sender::new(0),
        }
    }
}

impl Reconcile {
    /// Events may have been missed: reconcile once presence has settled.
    pub(super) fn request(&self) {
        self.requested.fetch_add(1, Ordering::Relaxed);
    }

    /// Presence has settled: wake the subscriber tasks if a reconciliation is pending.
    pub(super) fn wake_if_pending(&self) {
        let requested = self.requested.load(Ordering::Relaxed);
        self.settled.send_if_modified(|settled| {
            let changed = *settled != requested;
            *settled = requested;
            changed
        });
    }

    /// One subscriber task's view of the requests; it has handled none of the earlier ones.
    pub(super) fn reconciler(&self) -> Reconciler {
        let settled = self.settled.subscribe();
        let done = *settled.borrow();
        Reconciler { settled, done }
    }
}

/// What one subscriber task has reconciled.
pub(super) struct Reconciler {
    settled: watch::Receiver<u64>,
    done: u64,
}

impl Reconciler {
    /// Completes with the request to handle once one settled that this task has not handled.
    pub(super) async fn woken(&mut self) -> u64 {
        loop {
            let target = *self.settled.borrow_and_update();
            if target != self.done {
                return target;
            }
            if self.settled.changed().await.is_err() {
                // The bus is gone; its tasks are aborted with it.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What the hub missed about one room: (members in Redis it does not know, members it knows
/// that are no longer in Redis), each in join order. Only other instances' members count on
/// either side: this instance's own are known exactly by the hub.
pub(super) fn missed(
    me: &str,
    known: Vec<ParticipantInfo>,
    present: Vec<ParticipantInfo>,
) -> (Vec<ParticipantInfo>, Vec<ParticipantInfo>) {
    let others = |list: Vec<ParticipantInfo>| -> HashMap<String, ParticipantInfo> {
        list.into_iter()
            .filter(|p| p.instance_id != me)
            .map(|p| (p.participant_id.clone(), p))
            .collect()
    };
    let (known, present) = (others(known), others(present));
    let joined = present
        .iter()
        .filter(|(id, _)| !known.contains_key(*id))
        .map(|(_, p)| p.clone())
        .collect();
    let gone = known
        .iter()
        .filter(|(id, _)| !present.contains_key(*id))
        .map(|(_, p)| p.clone())
        .collect();
    (sorted(joined), sorted(gone))
}

impl Inner {
    /// Hands an event to the hub: the one place remote membership crosses over.
    pub(super) fn deliver(&self, event: RemoteEvent) {
        if let RemoteEvent::Action(RoomAction::Updated {
            room_id,
            participant,
        }) = &event
        {
            // A participant of ours got new metadata: a resync must write back the new record.
            self.presence.local().update(room_id, participant);
        }
        self.hub.deliver(event);
    }

    /// Runs request `target` (from [`Reconciler::woken`]) for `rooms`, the rooms this
    /// subscriber task receives; a failed one is requested again.
    pub(super) async fn reconcile_rooms(
        &self,
        reconciler: &mut Reconciler,
        target: u64,
        rooms: Vec<RoomId>,
    ) {
        match self.reconcile_remote(rooms).await {
            Ok(()) => reconciler.done = target,
            Err(e) => {
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "remote member reconciliation failed; retrying"
                );
                reconciler.done = target;
                self.reconcile.request();
            }
        }
    }

    /// Compares the hub's record of other instances' members of each subscribed room with
    /// Redis presence and delivers the joins and leaves it missed (a subscriber gap loses the
    /// events published meanwhile for good). Runs on the subscriber task between two messages:
    /// an event published after a room's HVALS is handled after its differences, so the two
    /// cannot cross (a leave read before a stale made-up join would leave a ghost).
    async fn reconcile_remote(&self, rooms: Vec<RoomId>) -> Result<(), BusError> {
        let mut joined_total = 0usize;
        let mut left_total = 0usize;
        for room in rooms {
            let mut conn = self.conn.clone();
            let key = self.keys.room_participants(&room);
            let values: Vec<String> = self
                .redis("reconcile presence", async move { conn.hvals(key).await })
                .await?;
            let known = self.hub.remote_members(&room);
            let (joined, gone) = missed(self.instance(), known, parse_infos(&values));
            for participant in gone {
                let reason = self.missed_leave_reason(&participant).await?;
                left_total += 1;
                self.deliver(RemoteEvent::Left {
                    room_id: room.clone(),
                    participant,
                    reason,
                });
            }
            joined_total += joined.len();
            for participant in joined {
                self.deliver(RemoteEvent::Joined {
                    room_id: room.clone(),
                    participant,
                });
            }
        }
        if joined_total > 0 || left_total > 0 {
            tracing::info!(
                joined = joined_total,
                left = left_total,
                "remote members reconciled with redis presence"
            );
        }
        Ok(())
    }

    /// A missed leave of a live instance was a plain leave; a dead instance's participants
    /// are what an instance_lost cleanup would have announced.
    async fn missed_leave_reason(&self, gone: &ParticipantInfo) -> Result<LeaveReason, BusError> {
        let mut conn = self.conn.clone();
        let alive_key = self.keys.instance_alive(&gone.instance_id);
        let alive: bool = self
            .redis(
                "check heartbeat",
                async move { conn.exists(alive_key).await },
            )
            .await?;
        Ok(if alive {
            LeaveReason::Closed
        } else {
            LeaveReason::InstanceLost
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::participant;

    /// A longer id joined later: the join order shows in the ids.
    fn p(id: &str, instance: &str) -> ParticipantInfo {
        ParticipantInfo {
            joined_at: format!("2026-01-01T00:00:0{}.000Z", id.len()),
            ..participant(id, instance)
        }
    }

    fn ids(v: &[ParticipantInfo]) -> Vec<&str> {
        v.iter().map(|p| p.participant_id.as_str()).collect()
    }

    /// Whether `r` has a request to handle right now.
    async fn woken_now(r: &mut Reconciler) -> Option<u64> {
        tokio::time::timeout(std::time::Duration::from_millis(10), r.woken())
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn every_subscriber_task_handles_each_settled_request_once() {
        let reconcile = Reconcile::default();
        let (mut a, mut b) = (reconcile.reconciler(), reconcile.reconciler());
        reconcile.wake_if_pending();
        assert_eq!(woken_now(&mut a).await, None, "nothing requested");
        reconcile.request();
        reconcile.request();
        assert_eq!(woken_now(&mut a).await, None, "presence has not settled");
        reconcile.wake_if_pending();
        // Two requests, one run per task.
        assert_eq!(woken_now(&mut a).await, Some(2));
        a.done = 2;
        assert_eq!(woken_now(&mut a).await, None);
        assert_eq!(woken_now(&mut b).await, Some(2), "every task runs it");
        b.done = 2;
        // A task that starts later (a new shard connection) owes nothing from before.
        let mut c = reconcile.reconciler();
        assert_eq!(woken_now(&mut c).await, None);
        reconcile.request();
        reconcile.wake_if_pending();
        assert_eq!(woken_now(&mut c).await, Some(3));
    }

    #[test]
    fn reconciliation_finds_missed_joins_and_leaves() {
        let (joined, gone) = missed(
            "me",
            vec![p("a", "other"), p("ghost", "other")],
            vec![p("a", "other"), p("bb", "other")],
        );
        assert_eq!(ids(&joined), ["bb"]);
        assert_eq!(ids(&gone), ["ghost"]);
        let (joined, gone) = missed("me", vec![p("a", "other")], vec![p("a", "other")]);
        assert!(joined.is_empty() && gone.is_empty());
    }

    #[test]
    fn this_instances_own_members_are_never_reconciled() {
        // Our own records in Redis (live, or a past incarnation's that the resync removes)
        // are not remote members, whatever the hub or Redis hold.
        let (joined, gone) = missed(
            "me",
            vec![p("stale", "me")],
            vec![p("mine", "me"), p("x", "other")],
        );
        assert_eq!(ids(&joined), ["x"]);
        assert!(gone.is_empty());
    }

    #[test]
    fn results_come_in_join_order() {
        let (joined, gone) = missed(
            "me",
            vec![p("ccc", "o"), p("a", "o")],
            vec![p("dddd", "o"), p("bb", "o")],
        );
        assert_eq!(ids(&joined), ["bb", "dddd"]);
        assert_eq!(ids(&gone), ["a", "ccc"]);
    }
}
