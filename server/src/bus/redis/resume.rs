//! Resume on the Redis bus: every relayed message is numbered per recipient and kept in the
//! recipient's inbox in Redis (a capped stream with a TTL under the room's hash tag) by one
//! script that also publishes it, so a participant can resume on any instance, also after
//! the one it was on died or drained; a resume adopts the participant's presence record and
//! reads what it missed in the same atomic step. Owns the two scripts; keys are in `keys`,
//! the Lua in `scripts`.

use std::time::Duration;

use redis::{RedisResult, Script};

use super::link::is_out_of_memory;
use super::{publish_failure, scripts, wire, Inner};
use crate::bus::{Adopted, Adoption, BusError, Delivered, RelayDelivery, RemoteEvent};
use crate::protocol::Frame;
use crate::resume::Refusal;
use crate::room::{ParticipantInfo, RoomId};

/// How many times an adoption reads the record again when it changed under it.
const ADOPT_ATTEMPTS: usize = 3;

/// The inbox bounds in Redis and the scripts.
pub(super) struct ResumeStore {
    /// Messages kept per inbox: trimmed to about this many (`MAXLEN ~`, cheap) as messages
    /// arrive, held exactly when a resume reads them.
    inbox_messages: usize,
    /// Bytes of the missed messages a resume may replay (held when a resume reads them).
    inbox_bytes: usize,
    /// TTL of an inbox, refreshed with every message: the grace window and a presence TTL,
    /// so an instance's loss is cleaned up before its participants' inboxes go.
    inbox_ttl: Duration,
    deliver: Script,
    adopt: Script,
}

impl ResumeStore {
    pub(super) fn new(inbox_messages: usize, inbox_bytes: usize, inbox_ttl: Duration) -> Self {
        ResumeStore {
            inbox_messages: inbox_messages.max(1),
            inbox_bytes,
            inbox_ttl,
            deliver: Script::new(scripts::DELIVER),
            adopt: Script::new(scripts::ADOPT),
        }
    }
}

impl Inner {
    /// [`Bus::deliver`](crate::bus::Bus::deliver): number, keep and publish each delivery in
    /// one script call, all of them in one pipeline (Redis runs it in order).
    pub(super) async fn deliver_numbered(
        &self,
        deliveries: Vec<RelayDelivery>,
    ) -> Vec<Result<Delivered, BusError>> {
        let count = deliveries.len();
        // From a reconnect until the subscriber has resubscribed, Redis would confirm a
        // delivery that no subscriber receives (every recipient, local ones too, gets it
        // from there): refuse it, the client sends it again.
        if !super::link::carries_at(&self.link()) {
            self.subscriber.want_canary();
            return vec![Err(BusError::SubscriberDown); count];
        }
        let numbered = deliveries.iter().map(|d| d.message.sender_seq.is_some());
        let mut all = Vec::with_capacity(count);
        for run in pipelines(numbered, self.conn.is_cluster()) {
            let len = run.len();
            let replies = self.deliver_pipeline(&deliveries[run]).await;
            let failed = replies.is_err();
            all.extend(outcomes(replies, len));
            if failed {
                // The rest would not overtake it: refused the same way.
                if let Some(Err(e)) = all.last().cloned() {
                    all.resize(count, Err(e));
                }
                break;
            }
        }
        all
    }

    /// One pipeline of `DELIVER` calls: each one's reply, or the pipeline's failure.
    async fn deliver_pipeline(
        &self,
        deliveries: &[RelayDelivery],
    ) -> Result<Vec<RedisResult<Vec<String>>>, BusError> {
        let mut pipe = redis::pipe();
        // Each call's error is its own: the others ran.
        pipe.ignore_errors();
        for delivery in deliveries {
            pipe.add_command(self.deliver_command(delivery));
        }
        let script = &self.resume.deliver;
        let mut conn = self.conn.clone();
        let started = std::time::Instant::now();
        let replies = self
            .redis_within("deliver", self.publish_timeout, async move {
                let mut replies: Vec<RedisResult<Vec<String>>> =
                    pipe.query_async(&mut conn).await?;
                if replies.iter().all(is_no_script) {
                    // Redis lost its script cache (restarted): none of them ran.
                    script.load_async(&mut conn).await?;
                    replies = pipe.query_async(&mut conn).await?;
                }
                // Refused as a whole (out of memory, loading, a replica): the command's
                // failure, which the link records (readiness, logs, the canary).
                match replies.first() {
                    Some(Err(e)) if replies.iter().all(|r| r.is_err()) => Err(e.clone()),
                    _ => Ok(replies),
                }
            })
            .await;
        self.metrics.publish_latency(started.elapsed());
        if replies.is_err() {
            // The client sends these again soon: find out at once when the path is back.
            self.subscriber.want_canary();
        }
        replies
    }

    /// The `DELIVER` script call for one delivery (see `scripts::DELIVER` for its keys and
    /// arguments).
    fn deliver_command(&self, delivery: &RelayDelivery) -> redis::Cmd {
        let RelayDelivery {
            message,
            recipients,
            follows,
        } = delivery;
        let store = &self.resume;
        let room = &message.room_id;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(store.deliver.get_hash())
            .arg(2 + recipients.len())
            .arg(self.keys.room_seqs(room))
            .arg(self.keys.room_sent(room));
        for id in recipients {
            cmd.arg(self.keys.inbox(room, id));
        }
        cmd.arg(self.keys.room_channel(room))
            .arg(store.inbox_messages)
            .arg(u64::try_from(store.inbox_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(wire::relay_header_prefix(self.instance(), message))
            .arg(message.frame.as_bytes().as_ref())
            .arg(&message.sender_id)
            .arg(message.sender_seq.unwrap_or(0))
            .arg(if self.conn.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            })
            .arg(follows.unwrap_or(0));
        for id in recipients {
            cmd.arg(id);
        }
        cmd
    }

    /// [`Bus::adopt`](crate::bus::Bus::adopt): subscribe the room, move the record to this
    /// instance with what the participant missed, register it, announce the move.
    pub(super) async fn adopt(
        &self,
        room: &RoomId,
        participant_id: &str,
        user_id: &str,
        last_seq: u64,
    ) -> Result<Adoption, BusError> {
        let _gate = self.presence.gate.read().await;
        // Subscribed before the record moves: every delivery after it reaches this instance.
        self.acquire_room(room).await?;
        let adoption = self
            .adopt_subscribed(room, participant_id, user_id, last_seq)
            .await;
        // An overflowed one moved here too, so that its leave (the caller's) is ours.
        match adoption.as_ref().ok().and_then(Adoption::moved) {
            Some(participant) => self.moved_here(room, participant).await,
            None => self.release_room(room).await,
        }
        adoption
    }

    /// The record of `participant` names this instance now: registers it here and tells the
    /// other instances, so that its old instance lets go of it.
    async fn moved_here(&self, room: &RoomId, participant: &ParticipantInfo) {
        let already_here = {
            let mut local = self.presence.local();
            let here = local.is_live(room, &participant.participant_id);
            local.add(room, participant);
            here
        };
        if already_here {
            // Resumed where it was: its join holds the room's subscription already.
            self.release_room(room).await;
        }
        let event = RemoteEvent::Joined {
            room_id: room.clone(),
            participant: participant.clone(),
        };
        if let Err(e) = self.publish_event(room, &event).await {
            tracing::warn!(parent: &self.span, error = %e, "resume not announced");
        }
    }

    async fn adopt_subscribed(
        &self,
        room: &RoomId,
        participant_id: &str,
        user_id: &str,
        last_seq: u64,
    ) -> Result<Adoption, BusError> {
        for _ in 0..ADOPT_ATTEMPTS {
            let mut conn = self.conn.clone();
            let key = self.keys.room_participants(room);
            let id = participant_id.to_owned();
            let current: Option<String> = self
                .redis("read record", async move {
                    redis::AsyncCommands::hget(&mut conn, key, id).await
                })
                .await?;
            let Some(current) = current else {
                return Ok(Adoption::Refused(Refusal::Expired));
            };
            let Ok(info) = serde_json::from_str::<ParticipantInfo>(&current) else {
                return Ok(Adoption::Refused(Refusal::Expired));
            };
            if info.user_id != user_id {
                return Ok(Adoption::Refused(Refusal::Invalid));
            }
            let moved = ParticipantInfo {
                instance_id: self.instance().to_owned(),
                ..info
            };
            let mut invocation = self.resume.adopt.key(self.keys.room_participants(room));
            invocation
                .key(self.keys.room_seqs(room))
                .key(self.keys.inbox(room, participant_id))
                .arg(participant_id)
                .arg(&current)
                .arg(serde_json::to_string(&moved).unwrap_or_default())
                .arg(last_seq)
                .arg(self.resume.inbox_messages)
                .arg(self.resume.inbox_bytes);
            let mut conn = self.conn.clone();
            let reply: Vec<String> = self
                .redis(
                    "adopt",
                    async move { invocation.invoke_async(&mut conn).await },
                )
                .await?;
            match reply.first().map(String::as_str) {
                Some("ok") => return Ok(Adoption::Adopted(Box::new(adopted(moved, &reply)))),
                Some("changed") => continue,
                Some("ahead") => return Ok(Adoption::Refused(Refusal::Invalid)),
                Some("overflow") => {
                    return Ok(Adoption::Overflowed {
                        participant: Box::new(moved),
                        lost: overflow_lost(&reply),
                    })
                }
                _ => return Ok(Adoption::Refused(Refusal::Expired)),
            }
        }
        // Someone keeps changing it (metadata updates racing): try again later.
        Ok(Adoption::Refused(Refusal::Expired))
    }

    /// [`Bus::release`](crate::bus::Bus::release): the participant moved to another instance.
    pub(super) async fn release_moved(&self, room: &RoomId, participant_id: &str) {
        let _gate = self.presence.gate.read().await;
        let was_local = self.presence.local().remove(room, participant_id);
        if was_local {
            self.release_room(room).await;
        }
    }
}

/// The adopt script's `{'overflow', lost}`: how many missed messages were no longer kept (at
/// least one).
/// How a batch is split into pipelines, sent one after the other: one pipeline, except on a
/// Redis Cluster, where redis-rs sends a whole pipeline again when one of its replies is a
/// redirection (a slot moving): a numbered delivery run twice comes back `dup`, but an
/// unnumbered one would be delivered twice, so each of those goes in a pipeline of its own.
fn pipelines(
    numbered: impl ExactSizeIterator<Item = bool>,
    cluster: bool,
) -> Vec<std::ops::Range<usize>> {
    let count = numbered.len();
    if !cluster {
        return std::iter::once(0..count).collect();
    }
    let mut runs = Vec::new();
    let mut start = 0;
    for (i, n) in numbered.enumerate() {
        if !n {
            if start < i {
                runs.push(start..i);
            }
            runs.push(i..i + 1);
            start = i + 1;
        }
    }
    if start < count {
        runs.push(start..count);
    }
    runs
}

fn is_no_script(reply: &RedisResult<Vec<String>>) -> bool {
    matches!(reply, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

/// What each of `count` deliveries came to: the pipeline's replies in order, or its failure
/// for all of them.
fn outcomes(
    replies: Result<Vec<RedisResult<Vec<String>>>, BusError>,
    count: usize,
) -> Vec<Result<Delivered, BusError>> {
    let replies = match replies {
        Ok(replies) => replies,
        Err(e) => return vec![Err(publish_failure(e)); count],
    };
    let mut outcomes: Vec<_> = replies
        .into_iter()
        .take(count)
        .map(|reply| match reply {
            Ok(reply) => Ok(delivered(&reply)),
            Err(source) if is_out_of_memory(&source) => Err(BusError::OutOfMemory {
                op: "deliver",
                source,
            }),
            Err(source) => Err(publish_failure(BusError::Redis {
                op: "deliver",
                source,
            })),
        })
        .collect();
    // Fewer replies than calls would be a driver bug: whether the rest ran is unknown.
    outcomes.resize_with(count, || {
        Err(BusError::DeliveryUnknown {
            op: "deliver",
            source: None,
        })
    });
    outcomes
}

/// One `DELIVER` reply.
fn delivered(reply: &[String]) -> Delivered {
    match reply.first().map(String::as_str) {
        Some("dup") => Delivered::Duplicate,
        Some("behind") => Delivered::Behind,
        _ => Delivered::Sent,
    }
}

fn overflow_lost(reply: &[String]) -> usize {
    reply
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The adopt script's `{'ok', last seq, n, n frames..., records...}`.
fn adopted(participant: ParticipantInfo, reply: &[String]) -> Adopted {
    let last_seq = reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let n: usize = reply.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let frames = reply.get(3..3 + n).unwrap_or_default();
    let records = reply.get(3 + n..).unwrap_or_default();
    Adopted {
        participant,
        last_seq,
        replay: frames
            .iter()
            .map(|f| Frame::from_json_text(f.clone()))
            .collect(),
        participants: super::sorted(super::parse_infos(records)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cluster_sends_unnumbered_deliveries_in_pipelines_of_their_own() {
        let batch = [true, true, false, true, false, false, true];
        let whole: Vec<_> = std::iter::once(0..7).collect();
        assert_eq!(pipelines(batch.iter().copied(), false), whole);
        assert_eq!(
            pipelines(batch.iter().copied(), true),
            [0..2, 2..3, 3..4, 4..5, 5..6, 6..7]
        );
        assert_eq!(pipelines([true, true].into_iter(), true).len(), 1);
        assert_eq!(pipelines([false].into_iter(), true).len(), 1);
    }

    #[test]
    fn the_adopt_reply_splits_into_seq_replay_and_participants() {
        let me = crate::test_support::participant("b", "i2");
        let other = serde_json::to_string(&crate::test_support::participant("a", "i1")).unwrap();
        let reply: Vec<String> = [
            "ok",
            "7",
            "2",
            "{\"type\":\"offer\"}",
            "{\"type\":\"answer\"}",
            other.as_str(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let a = adopted(me.clone(), &reply);
        assert_eq!(a.last_seq, 7);
        assert_eq!(a.replay.len(), 2);
        assert_eq!(a.replay[1].as_str(), "{\"type\":\"answer\"}");
        assert_eq!(a.participants.len(), 1);
        assert_eq!(a.participants[0].participant_id, "a");
        assert_eq!(a.participant, me);
    }

    #[test]
    fn an_overflow_reply_says_how_many_missed_messages_are_gone() {
        let reply = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(overflow_lost(&reply(&["overflow", "5"])), 5);
        // An overflow lost something even when the reply does not say what.
        assert_eq!(overflow_lost(&reply(&["overflow"])), 1);
        assert_eq!(overflow_lost(&reply(&["overflow", "0"])), 1);
        assert_eq!(overflow_lost(&reply(&["overflow", "x"])), 1);
    }
}
