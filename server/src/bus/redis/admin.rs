//! What the server API reads from the Redis bus: rooms and their participants, straight from
//! the presence records every instance writes, so any instance answers for the whole cluster.
//! The room list is the union of the instances' room sets (one key per instance, never a
//! cross-slot command), each room read with its participants hash and creation time (same
//! `{room}` slot, one pipeline). Server API actions travel on the room's channel, so they
//! reach exactly the instances with participants there (`remote` hands them to the hub); a
//! metadata update also rewrites the participant's presence record, if it is still there.

use std::collections::BTreeSet;

use redis::{AsyncCommands, Script};

use super::{parse_infos, scripts, sorted, Inner};
use crate::bus::{BusError, RemoteEvent, RoomAction, RoomRecord};
use crate::room::{Metadata, ParticipantInfo, RoomId};

/// The record of a room read from Redis, or `None` when nobody is in it. A room re-registered
/// after Redis lost its data has no creation time any more: its earliest join stands in.
pub(super) fn room_record(
    room: &RoomId,
    created: Option<String>,
    participants: Vec<ParticipantInfo>,
) -> Option<RoomRecord> {
    let participants = sorted(participants);
    let first_join = participants.first()?.joined_at.clone();
    Some(RoomRecord {
        room_id: room.clone(),
        created_at: created.unwrap_or(first_join),
        participants,
    })
}

impl Inner {
    /// [`Bus::room`](crate::bus::Bus::room).
    pub(super) async fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>, BusError> {
        let mut conn = self.conn.clone();
        let participants_key = self.keys.room_participants(room);
        let created_key = self.keys.room_created(room);
        let (values, created): (Vec<String>, Option<String>) = self
            .redis("read room", async move {
                redis::pipe()
                    .hvals(participants_key)
                    .get(created_key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(room_record(room, created, parse_infos(&values)))
    }

    /// [`Bus::rooms`](crate::bus::Bus::rooms): every room some instance registered, read one
    /// by one; rooms that emptied meanwhile are left out.
    pub(super) async fn rooms(&self) -> Result<Vec<RoomRecord>, BusError> {
        let mut room_ids = BTreeSet::new();
        for instance in self.instances().await? {
            let mut conn = self.conn.clone();
            let key = self.keys.instance_rooms(&instance);
            let rooms: Vec<String> = self
                .redis("list rooms", async move { conn.smembers(key).await })
                .await?;
            room_ids.extend(rooms.iter().filter_map(|r| RoomId::parse(r).ok()));
        }
        let mut records = Vec::with_capacity(room_ids.len());
        for room in &room_ids {
            if let Some(record) = self.room(room).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// [`Bus::act`](crate::bus::Bus::act): published on the room's channel (our own echo is
    /// dropped on receipt; the caller applied the action locally).
    pub(super) async fn act(&self, action: RoomAction) -> Result<(), BusError> {
        let room = action.room_id().clone();
        self.publish_event(&room, &RemoteEvent::Action(action))
            .await
    }

    /// [`Bus::update_metadata`](crate::bus::Bus::update_metadata).
    pub(super) async fn update_metadata(
        &self,
        room: &RoomId,
        participant_id: &str,
        metadata: Option<Metadata>,
    ) -> Result<Option<ParticipantInfo>, BusError> {
        let mut conn = self.conn.clone();
        let key = self.keys.room_participants(room);
        let id = participant_id.to_owned();
        let current: Option<String> = self
            .redis("read participant", async move { conn.hget(key, id).await })
            .await?;
        let Some(mut info) = current.and_then(|j| serde_json::from_str::<ParticipantInfo>(&j).ok())
        else {
            return Ok(None);
        };
        info.metadata = metadata;
        // Rare enough that hashing the script per call costs nothing.
        let script = Script::new(scripts::UPDATE_PRESENT);
        let mut invocation = script.key(self.keys.room_participants(room));
        self.webhook_keys(&mut invocation, room);
        self.webhook_args(&mut invocation);
        invocation
            .arg(participant_id)
            .arg(serde_json::to_string(&info).unwrap_or_default());
        let mut conn = self.conn.clone();
        let replaced: i64 = self
            .redis("update participant", async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if replaced == 0 {
            return Ok(None);
        }
        self.webhook_recorded(room).await;
        self.presence.local().update(room, &info);
        Ok(Some(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, at: &str) -> ParticipantInfo {
        ParticipantInfo {
            participant_id: id.into(),
            joined_at: at.into(),
            ..ParticipantInfo::default()
        }
    }

    #[test]
    fn a_room_without_participants_is_no_room_and_the_creation_time_is_kept() {
        let r = RoomId::parse("r").unwrap();
        assert_eq!(
            room_record(&r, Some("2026-01-01T00:00:00.000Z".into()), vec![]),
            None
        );
        let record = room_record(
            &r,
            Some("2026-01-01T00:00:00.000Z".into()),
            vec![
                p("b", "2026-01-01T00:00:02.000Z"),
                p("a", "2026-01-01T00:00:01.000Z"),
            ],
        )
        .unwrap();
        assert_eq!(record.created_at, "2026-01-01T00:00:00.000Z");
        let ids: Vec<&str> = record
            .participants
            .iter()
            .map(|p| p.participant_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn a_lost_creation_time_falls_back_to_the_earliest_join() {
        let r = RoomId::parse("r").unwrap();
        let record = room_record(
            &r,
            None,
            vec![
                p("b", "2026-01-01T00:00:02.000Z"),
                p("a", "2026-01-01T00:00:01.000Z"),
            ],
        )
        .unwrap();
        assert_eq!(record.created_at, "2026-01-01T00:00:01.000Z");
    }
}
