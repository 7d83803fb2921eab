//! What this instance accepts from Redis pub/sub, in receive order on the subscriber task. A
//! canary must carry a nonce this instance published recently. A room channel message must
//! decode strictly (`wire`: sizes, depth, fields, formats, the channel's room) and then agree
//! with what this instance knows: a relay's sender is a member the hub knows on the instance
//! that published it, and a join or leave agrees with the room's presence hash in Redis (the
//! record of who is in a room; an event is only a prompt to look). What fails is dropped,
//! counted by reason and logged at most once per reason per [`LOG_EVERY`], with how many
//! drops that line stands for. What passes goes to the hub (`remote`).
//!
//! This keeps out what a client of Redis that may PUBLISH but should not speak for a
//! participant could inject: text that is not an envelope, made-up participants, leaves of
//! peers who are present. It cannot tell a forged relay from a real member's (Redis pub/sub
//! carries no sender identity): only Redis ACLs keep others from publishing on the channels.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use super::{wire, Inner};
use crate::bus::{BusError, RemoteEvent, RemoteSender, RoomAction};
use crate::room::{LeaveReason, ParticipantInfo};

/// At most one log line per drop reason in this period.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(10);

/// How much of a dropped message a log line shows.
const SAMPLE_BYTES: usize = 96;

/// How many canaries old a canary that comes back may be. Refused deliveries ask for canaries
/// up to every 50 ms (see `subscriber`), so this is wide: 256 of them are at least 12.8 s, and
/// a subscriber that lags that far is replaced anyway.
const CANARY_WINDOW: u64 = 256;

/// Why a message read from Redis was dropped: the `reason` label of
/// `switchboard_bus_messages_dropped_total` and of the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    /// Not an envelope: no header line, header not the expected JSON, a field not in its format.
    Malformed,
    /// A header version this server does not speak.
    UnsupportedVersion,
    /// Larger than any message this version publishes.
    TooLarge,
    /// A relayed frame nesting deeper than `limits.max_json_depth`.
    TooDeep,
    /// A relayed frame that is not the envelope its header describes.
    InvalidFrame,
    /// The message names another room than the channel it came on.
    RoomMismatch,
    /// A relay whose sender the hub does not know as a member on the publishing instance.
    UnknownSender,
    /// A join or leave that the room's presence hash contradicts.
    PresenceMismatch,
    /// A join or leave that could not be checked because Redis did not answer.
    PresenceUnverified,
    /// A canary this instance did not publish.
    Canary,
}

impl DropReason {
    pub(crate) const ALL: [DropReason; 10] = [
        DropReason::Malformed,
        DropReason::UnsupportedVersion,
        DropReason::TooLarge,
        DropReason::TooDeep,
        DropReason::InvalidFrame,
        DropReason::RoomMismatch,
        DropReason::UnknownSender,
        DropReason::PresenceMismatch,
        DropReason::PresenceUnverified,
        DropReason::Canary,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnsupportedVersion => "unsupported_version",
            DropReason::TooLarge => "too_large",
            DropReason::TooDeep => "too_deep",
            DropReason::InvalidFrame => "invalid_frame",
            DropReason::RoomMismatch => "room_mismatch",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::PresenceMismatch => "presence_mismatch",
            DropReason::PresenceUnverified => "presence_unverified",
            DropReason::Canary => "canary",
        }
    }
}

/// Rate limit of the drop log lines, pure; owned by the subscriber task.
#[derive(Debug, Default)]
pub(super) struct DropLog {
    last: HashMap<DropReason, Logged>,
}

#[derive(Debug)]
struct Logged {
    at: Instant,
    /// Drops of this reason since that line that were not logged.
    suppressed: u64,
}

impl DropLog {
    /// Records one drop at `now`. `Some(n)` when it is to be logged — the first of its reason,
    /// or the first [`LOG_EVERY`] after the last line — with the `n` drops not logged since.
    pub(super) fn record(&mut self, reason: DropReason, now: Instant) -> Option<u64> {
        match self.last.get_mut(&reason) {
            Some(logged) if now.saturating_duration_since(logged.at) < LOG_EVERY => {
                logged.suppressed += 1;
                None
            }
            Some(logged) => {
                logged.at = now;
                Some(std::mem::take(&mut logged.suppressed))
            }
            None => {
                self.last.insert(
                    reason,
                    Logged {
                        at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// The start of a dropped message for its log line: lossy UTF-8, cut at [`SAMPLE_BYTES`]
/// (the log formatter escapes control characters and quotes).
pub(super) fn sample(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(SAMPLE_BYTES)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if payload.len() > SAMPLE_BYTES {
        text.push_str("...");
    }
    text
}

/// Whether a canary is one this instance published lately: `next` is the nonce it will
/// publish next (nonces start at a random value, so they are not guessable from outside).
pub(super) fn canary_is_ours(payload: &[u8], next: u64) -> bool {
    let Some(nonce) = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return false;
    };
    (1..=CANARY_WINDOW).contains(&next.wrapping_sub(nonce))
}

/// What the presence hash says about a join or leave, pure. `stored` is the hash's record of
/// the event's participant (`None`: not in the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Agrees,
    Disagrees,
    /// A leave of a participant still in the hash: true only if the instance holding it is dead
    /// (its records are about to be cleaned up), i.e. its heartbeat is gone.
    AgreesIfDead(String),
    /// A join of a participant no longer in the hash: true only if it left since, i.e. its
    /// departed record (written by the leave) is the one announced. Its leave follows.
    AgreesIfDeparted,
}

pub(super) fn judge(event: &RemoteEvent, stored: Option<&ParticipantInfo>) -> Verdict {
    match (event, stored) {
        // A join is written to the hash before it is announced, exactly as announced.
        (RemoteEvent::Joined { participant, .. }, Some(stored)) if stored == participant => {
            Verdict::Agrees
        }
        (RemoteEvent::Joined { .. }, None) => Verdict::AgreesIfDeparted,
        (RemoteEvent::Joined { .. }, Some(_)) => Verdict::Disagrees,
        // A leave is removed from the hash before it is announced.
        (RemoteEvent::Left { .. }, None) => Verdict::Agrees,
        (RemoteEvent::Left { .. }, Some(stored)) => {
            Verdict::AgreesIfDead(stored.instance_id.clone())
        }
        // A metadata update is written to the hash before it is announced, exactly as
        // announced (a later update or a leave since makes the hash newer: that one counts).
        (RemoteEvent::Action(RoomAction::Updated { participant, .. }), Some(stored))
            if stored == participant =>
        {
            Verdict::Agrees
        }
        (RemoteEvent::Action(RoomAction::Updated { .. }), _) => Verdict::Disagrees,
        // Like relays, the other server API actions carry nothing Redis could confirm: only
        // Redis ACLs keep others from publishing them.
        (RemoteEvent::Relay(_) | RemoteEvent::Action(_), _) => Verdict::Agrees,
    }
}

impl Inner {
    /// Handles one message from the subscriber connection, in receive order.
    pub(super) async fn on_message(&self, log: &mut DropLog, channel: &str, payload: &[u8]) {
        match self.accept(channel, payload).await {
            Ok(Some(event)) => self.deliver(event),
            Ok(None) => {}
            Err(reason) => {
                self.metrics.bus_message_dropped(reason);
                if let Some(suppressed) = log.record(reason, Instant::now()) {
                    tracing::warn!(
                        reason = %reason.as_str(),
                        channel,
                        bytes = payload.len(),
                        suppressed,
                        sample = %sample(payload),
                        "dropping a bus message that fails validation"
                    );
                }
            }
        }
    }

    /// The event to hand to the hub, `None` for what needs no delivery (a canary, our own
    /// echo, a relay for a room without local participants), or why the message is dropped.
    async fn accept(
        &self,
        channel: &str,
        payload: &[u8],
    ) -> Result<Option<RemoteEvent>, DropReason> {
        // The suffix first: building the canary channel's name allocates.
        if channel.ends_with(":canary") && channel == self.keys.canary_channel() {
            if !canary_is_ours(payload, self.subscriber.next_canary()) {
                return Err(DropReason::Canary);
            }
            self.link().last_canary = Some(Instant::now());
            return Ok(None);
        }
        let room = self
            .keys
            .room_from_channel(channel)
            .ok_or(DropReason::RoomMismatch)?;
        // Half of what a room channel carries is this instance's own publishes.
        // Numbered relays are delivered from here by every instance, the sender's too.
        if !self.numbers_deliveries && wire::is_own_echo(payload, self.instance()) {
            return Ok(None);
        }
        let envelope = wire::decode(payload, &room, &self.input_limits).map_err(|e| e.reason())?;
        // Local recipients were served directly by the sender's instance, except for
        // numbered relays, which every instance (the sender's too) delivers from here.
        if envelope.origin == self.instance() {
            return Ok(match envelope.event {
                RemoteEvent::Relay(m) if m.seqs.is_some() => Some(RemoteEvent::Relay(m)),
                _ => None,
            });
        }
        if let RemoteEvent::Relay(m) = &envelope.event {
            match self
                .hub
                .relay_sender(&m.room_id, &m.sender_id, &envelope.origin)
            {
                RemoteSender::Member => {}
                RemoteSender::NoLocalRoom => return Ok(None),
                RemoteSender::Unknown => return Err(DropReason::UnknownSender),
            }
        } else {
            match self.presence_agrees(&envelope.event).await {
                Ok(true) => {}
                Ok(false) => return Err(DropReason::PresenceMismatch),
                Err(e) => {
                    tracing::debug!(
                        error = &e as &dyn std::error::Error,
                        "cannot check a presence event against redis"
                    );
                    // The hub may now miss a change: compare it with Redis once it answers.
                    self.reconcile.request();
                    return Err(DropReason::PresenceUnverified);
                }
            }
        }
        if self.own_loss_of_a_live_participant(&envelope.event) {
            return Ok(None);
        }
        self.forget_if_moved_away(&envelope.event);
        Ok(Some(envelope.event))
    }

    /// A `Joined` naming another instance for a participant registered here: a resume moved
    /// it there (its record already says so), so this instance lets go of it without a leave.
    fn forget_if_moved_away(&self, event: &RemoteEvent) {
        let RemoteEvent::Joined {
            room_id,
            participant,
        } = event
        else {
            return;
        };
        if participant.instance_id == self.instance() {
            return;
        }
        let mut local = self.presence.local();
        if local.remove(room_id, &participant.participant_id) {
            local.moved_away.push(room_id.clone());
            tracing::info!(
                parent: &self.span,
                room = %room_id,
                participant = %participant.participant_id,
                to = %participant.instance_id,
                "participant resumed on another instance"
            );
        }
    }

    /// Whether the room's presence hash agrees with a join or leave (see [`judge`]).
    async fn presence_agrees(&self, event: &RemoteEvent) -> Result<bool, BusError> {
        let (RemoteEvent::Joined {
            room_id,
            participant,
        }
        | RemoteEvent::Left {
            room_id,
            participant,
            ..
        }
        | RemoteEvent::Action(RoomAction::Updated {
            room_id,
            participant,
        })) = event
        else {
            return Ok(true);
        };
        let mut conn = self.conn.clone();
        let key = self.keys.room_participants(room_id);
        let id = participant.participant_id.clone();
        let stored: Option<String> = self
            .redis("check presence", async move { conn.hget(key, id).await })
            .await?;
        let stored = stored.and_then(|j| serde_json::from_str::<ParticipantInfo>(&j).ok());
        match judge(event, stored.as_ref()) {
            Verdict::Agrees => Ok(true),
            Verdict::Disagrees => Ok(false),
            Verdict::AgreesIfDeparted => {
                let mut conn = self.conn.clone();
                let key = self
                    .keys
                    .room_departed(room_id, &participant.participant_id);
                let departed: Option<String> = self
                    .redis("check departed", async move { conn.get(key).await })
                    .await?;
                let departed =
                    departed.and_then(|j| serde_json::from_str::<ParticipantInfo>(&j).ok());
                Ok(departed.as_ref() == Some(participant))
            }
            Verdict::AgreesIfDead(instance) => {
                let mut conn = self.conn.clone();
                let alive_key = self.keys.instance_alive(&instance);
                let alive: bool = self
                    .redis(
                        "check heartbeat",
                        async move { conn.exists(alive_key).await },
                    )
                    .await?;
                Ok(!alive)
            }
        }
    }

    /// Whether `event` is another instance announcing one of our live participants lost: it
    /// believed us dead (our heartbeat lapsed, e.g. a stall or a slow restart with the same
    /// id) and removed every record carrying our id. Any loss of ours asks for a resync.
    fn own_loss_of_a_live_participant(&self, event: &RemoteEvent) -> bool {
        let RemoteEvent::Left {
            room_id,
            participant,
            reason: LeaveReason::InstanceLost,
        } = event
        else {
            return false;
        };
        if participant.instance_id != self.instance() {
            return false;
        }
        let live = {
            let mut local = self.presence.local();
            local.needs_sync = true;
            local.is_live(room_id, &participant.participant_id)
        };
        if live {
            // Alive here: the resync puts it back and re-announces it.
            tracing::warn!("our presence was cleaned up by another instance; re-registering");
        } else {
            // A record of an earlier incarnation of this instance: that participant really is
            // gone, and our local participants may have it in their room-state. (A participant
            // whose join is still under way is not in `local` yet; the hub ignores a leave of a
            // local participant, and the resync re-registers it.)
            tracing::info!("a past incarnation's participant was cleaned up by another instance");
        }
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::RoomId;

    fn p(id: &str, instance: &str) -> ParticipantInfo {
        ParticipantInfo {
            participant_id: id.into(),
            user_id: "u".into(),
            username: "U".into(),
            joined_at: "2026-01-01T00:00:00.000Z".into(),
            instance_id: instance.into(),
            metadata: None,
        }
    }

    fn joined(p: ParticipantInfo) -> RemoteEvent {
        RemoteEvent::Joined {
            room_id: RoomId::parse("r").unwrap(),
            participant: p,
        }
    }

    fn left(p: ParticipantInfo) -> RemoteEvent {
        RemoteEvent::Left {
            room_id: RoomId::parse("r").unwrap(),
            participant: p,
            reason: LeaveReason::Closed,
        }
    }

    #[test]
    fn drops_are_logged_once_per_reason_per_period_with_the_count_in_between() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = DropLog::default();
        assert_eq!(log.record(DropReason::Malformed, at(0)), Some(0));
        assert_eq!(log.record(DropReason::Malformed, at(1)), None);
        assert_eq!(log.record(DropReason::Malformed, at(9_999)), None);
        // Another reason has its own budget.
        assert_eq!(log.record(DropReason::UnknownSender, at(5)), Some(0));
        assert_eq!(log.record(DropReason::Malformed, at(10_000)), Some(2));
        assert_eq!(log.record(DropReason::Malformed, at(10_001)), None);
        assert_eq!(log.record(DropReason::Malformed, at(25_000)), Some(1));
        assert_eq!(log.record(DropReason::Malformed, at(40_000)), Some(0));
    }

    #[test]
    fn samples_are_short_and_lossy() {
        assert_eq!(sample(b"hello\n"), "hello\n");
        let long = sample(&[b'x'; 500]);
        assert_eq!(long.len(), SAMPLE_BYTES + 3);
        assert!(long.ends_with("..."));
        assert_eq!(sample(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn only_recent_canaries_of_ours_count() {
        let next = 1_000;
        assert!(canary_is_ours(b"999", next));
        assert!(canary_is_ours(b"744", next));
        assert!(!canary_is_ours(b"743", next), "too old");
        assert!(!canary_is_ours(b"1000", next), "not published yet");
        assert!(!canary_is_ours(b"5", next));
        assert!(!canary_is_ours(b"x", next));
        // Nonces start anywhere and wrap.
        assert!(canary_is_ours(u64::MAX.to_string().as_bytes(), 0));
    }

    #[test]
    fn presence_events_are_judged_by_the_hash() {
        let real = p("a", "i1");
        assert_eq!(judge(&joined(real.clone()), Some(&real)), Verdict::Agrees);
        // Gone from the hash: real only if its departed record says so.
        assert_eq!(
            judge(&joined(real.clone()), None),
            Verdict::AgreesIfDeparted
        );
        let renamed = ParticipantInfo {
            username: "forged".into(),
            ..real.clone()
        };
        assert_eq!(
            judge(&joined(renamed), Some(&real)),
            Verdict::Disagrees,
            "a join must match the record exactly"
        );
        assert_eq!(judge(&left(real.clone()), None), Verdict::Agrees);
        assert_eq!(
            judge(&left(real.clone()), Some(&real)),
            Verdict::AgreesIfDead("i1".into())
        );
    }

    #[test]
    fn a_metadata_update_must_match_the_hash_and_other_actions_pass() {
        let mut updated = p("a", "i1");
        updated.metadata = Some(crate::room::Metadata::from_iter([(
            "k".to_string(),
            serde_json::json!(1),
        )]));
        let event = |participant: ParticipantInfo| {
            RemoteEvent::Action(RoomAction::Updated {
                room_id: RoomId::parse("r").unwrap(),
                participant,
            })
        };
        assert_eq!(
            judge(&event(updated.clone()), Some(&updated)),
            Verdict::Agrees
        );
        assert_eq!(
            judge(&event(updated.clone()), Some(&p("a", "i1"))),
            Verdict::Disagrees,
            "the hash holds another record"
        );
        assert_eq!(judge(&event(updated), None), Verdict::Disagrees, "it left");
        let close = RemoteEvent::Action(RoomAction::Close {
            room_id: RoomId::parse("r").unwrap(),
        });
        assert_eq!(judge(&close, None), Verdict::Agrees);
    }

    #[test]
    fn reason_labels_are_distinct() {
        let mut labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
