//! The Redis key and channel layout of the Redis bus: pure string building, no I/O.
//!
//! Everything of one cluster starts with the configured key prefix, so clusters sharing one
//! Redis never see each other and an ACL such as `~switchboard:* &switchboard:*` can confine a
//! cluster's user. Everything of one room carries the hash tag `{<room>}` and everything of one
//! instance the hash tag `{<instance>}`, so a Redis Cluster (with sharded pub/sub) can carry
//! them later: every Lua script touches the keys of exactly one room.

use crate::room::RoomId;

/// Longest key prefix we accept; keys stay short and readable.
pub const MAX_PREFIX_LEN: usize = 64;

/// Why a key prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("redis key prefix is empty")]
    Empty,
    #[error("redis key prefix is longer than {MAX_PREFIX_LEN} characters")]
    TooLong,
    #[error("redis key prefix may only contain A-Z, a-z, 0-9, '_', '-', '.' and ':'")]
    InvalidCharacter,
}

/// Builds every key and channel name for one cluster (prefix) and one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// This instance's id as configured (presence records carry it unescaped).
    instance: String,
}

impl Keys {
    /// Validates `prefix` and remembers the (escaped) id of this instance.
    pub fn new(prefix: &str, instance_id: &str) -> Result<Self, PrefixError> {
        validate_prefix(prefix)?;
        Ok(Self {
            prefix: prefix.to_owned(),
            instance: instance_id.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This instance's id as configured; keys carry it escaped.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// HASH participant_id → ParticipantInfo JSON (with `instance_id`): a room's presence.
    pub fn room_participants(&self, room: &RoomId) -> String {
        format!("{}:room:{{{}}}:participants", self.prefix, room.as_str())
    }

    /// STRING: the record of a participant that left, for one presence TTL: a server that
    /// checks the participant's join announcement only after the leave (a join and a leave in
    /// quick succession) finds the join was real and tells its clients both.
    pub fn room_departed(&self, room: &RoomId, participant_id: &str) -> String {
        format!(
            "{}:room:{{{}}}:departed:{participant_id}",
            self.prefix,
            room.as_str()
        )
    }

    /// STRING: when the room's first participant joined (RFC 3339), set by the join script when
    /// the participants hash was empty and deleted by the leave that empties it.
    pub fn room_created(&self, room: &RoomId) -> String {
        format!("{}:room:{{{}}}:created", self.prefix, room.as_str())
    }

    /// STREAM of the room's webhook events, one consumer group per endpoint (see `scripts`).
    pub fn room_webhooks(&self, room: &RoomId) -> String {
        format!("{}:room:{{{}}}:webhooks", self.prefix, room.as_str())
    }

    /// STRING: the room's last webhook `seq`; kept while the room lives and a while after.
    pub fn room_webhook_seq(&self, room: &RoomId) -> String {
        format!("{}:room:{{{}}}:webhook_seq", self.prefix, room.as_str())
    }

    /// SET of rooms that may hold undelivered webhook events, for every instance to find
    /// them. Deliberately global (no hash tag): only ever used by single-key commands
    /// (SADD, SREM, SMEMBERS), never inside a room's script.
    pub fn webhook_rooms(&self) -> String {
        format!("{}:webhook_rooms", self.prefix)
    }

    /// HASH participant_id → the last delivery `seq` given to that participant (resume). Its
    /// field goes with the participant's leave, the key with the room's last leave.
    pub fn room_seqs(&self, room: &RoomId) -> String {
        format!("{}:room:{{{}}}:seqs", self.prefix, room.as_str())
    }

    /// HASH participant_id → `"<highest client seq>:<bitmask of the 32 below>"`: the client
    /// seqs each sender's messages were delivered under, so a re-send is dropped (resume).
    pub fn room_sent(&self, room: &RoomId) -> String {
        format!("{}:room:{{{}}}:sent", self.prefix, room.as_str())
    }

    /// STREAM of the messages delivered to one participant, entry id `<seq>-1`, field `f` the
    /// frame without its seq; capped and with a TTL (resume).
    pub fn inbox(&self, room: &RoomId, participant_id: &str) -> String {
        format!(
            "{}:room:{{{}}}:inbox:{}",
            self.prefix,
            room.as_str(),
            participant_id
        )
    }

    /// Pub/sub channel carrying a room's relayed messages and presence events.
    pub fn room_channel(&self, room: &RoomId) -> String {
        format!("{}:room:{{{}}}:events", self.prefix, room.as_str())
    }

    /// Recovers the room id from a channel name built by [`room_channel`](Self::room_channel).
    pub fn room_from_channel(&self, channel: &str) -> Option<RoomId> {
        let rest = channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":room:{")?;
        let room = rest.strip_suffix("}:events")?;
        RoomId::parse(room).ok()
    }

    /// SET of every instance that registered presence (scanned to find dead ones).
    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    /// Heartbeat string with TTL = presence TTL; gone means the instance is dead.
    pub fn instance_alive(&self, instance: &str) -> String {
        format!(
            "{}:instance:{{{}}}:alive",
            self.prefix,
            escape_instance_id(instance)
        )
    }

    /// SET of the rooms where `instance` has (or had) participants.
    pub fn instance_rooms(&self, instance: &str) -> String {
        format!(
            "{}:instance:{{{}}}:rooms",
            self.prefix,
            escape_instance_id(instance)
        )
    }

    /// `SET NX EX` lock: whoever sets it removes the dead instance's participants.
    pub fn instance_cleanup_lock(&self, instance: &str) -> String {
        format!(
            "{}:instance:{{{}}}:cleanup",
            self.prefix,
            escape_instance_id(instance)
        )
    }

    /// Tombstone left by the cleaner: if the "dead" instance was only cut off and comes back,
    /// it re-announces its participants with `user-joined`.
    pub fn instance_lost(&self, instance: &str) -> String {
        format!(
            "{}:instance:{{{}}}:lost",
            self.prefix,
            escape_instance_id(instance)
        )
    }

    /// Channel this instance publishes its readiness canary to (and only it subscribes).
    pub fn canary_channel(&self) -> String {
        format!(
            "{}:instance:{{{}}}:canary",
            self.prefix,
            escape_instance_id(&self.instance)
        )
    }

    /// Candidate `n` for this instance's canary channel on one shard of a Redis Cluster: the
    /// hash tag varies with `n` so that some candidate lands on each shard (`~` never appears
    /// in an escaped instance id, so no two instances share a candidate).
    pub fn shard_canary_channel(&self, n: u32) -> String {
        format!(
            "{}:instance:{{{}~{n}}}:canary",
            self.prefix,
            escape_instance_id(&self.instance)
        )
    }

    /// Whether `channel` is one of this instance's shard canary channels.
    pub fn is_shard_canary_channel(&self, channel: &str) -> bool {
        let head = format!(
            "{}:instance:{{{}~",
            self.prefix,
            escape_instance_id(&self.instance)
        );
        channel
            .strip_prefix(&head)
            .and_then(|rest| rest.strip_suffix("}:canary"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

fn validate_prefix(prefix: &str) -> Result<(), PrefixError> {
    if prefix.is_empty() {
        return Err(PrefixError::Empty);
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(PrefixError::TooLong);
    }
    // No braces (they would start a hash tag), no glob characters, no spaces.
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(PrefixError::InvalidCharacter);
    }
    Ok(())
}

/// Makes an instance id (hostname-random, or whatever the operator configured) safe inside a
/// hash tag and a glob-free key: bytes outside `[A-Za-z0-9._-]` become `%XX`. Injective, so two
/// different ids never share keys.
pub fn escape_instance_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: &str) -> RoomId {
        RoomId::parse(id).unwrap()
    }

    #[test]
    fn room_keys_share_one_hash_tag_under_the_prefix() {
        let k = Keys::new("switchboard", "pod-1").unwrap();
        assert_eq!(
            k.room_participants(&room("demo")),
            "switchboard:room:{demo}:participants"
        );
        assert_eq!(
            k.room_channel(&room("demo")),
            "switchboard:room:{demo}:events"
        );
        assert_eq!(
            k.instance_alive("pod-1"),
            "switchboard:instance:{pod-1}:alive"
        );
        assert_eq!(
            k.instance_rooms("pod-1"),
            "switchboard:instance:{pod-1}:rooms"
        );
        assert_eq!(
            k.instance_cleanup_lock("pod-1"),
            "switchboard:instance:{pod-1}:cleanup"
        );
        assert_eq!(
            k.instance_lost("pod-1"),
            "switchboard:instance:{pod-1}:lost"
        );
        assert_eq!(k.canary_channel(), "switchboard:instance:{pod-1}:canary");
        assert_eq!(
            k.shard_canary_channel(7),
            "switchboard:instance:{pod-1~7}:canary"
        );
        assert!(k.is_shard_canary_channel(&k.shard_canary_channel(12)));
        assert!(!k.is_shard_canary_channel(&k.canary_channel()));
        assert!(!k.is_shard_canary_channel("switchboard:instance:{pod-1~x}:canary"));
        let other = Keys::new("switchboard", "pod-1~7").unwrap();
        assert!(!k.is_shard_canary_channel(&other.canary_channel()));
        assert_eq!(k.instances(), "switchboard:instances");
        assert_eq!(k.webhook_rooms(), "switchboard:webhook_rooms");
        assert_eq!(
            k.room_webhooks(&room("demo")),
            "switchboard:room:{demo}:webhooks"
        );
    }

    #[test]
    fn hash_tag_is_the_room_id_for_every_room_key() {
        let k = Keys::new("a:b", "i").unwrap();
        for key in [
            k.room_participants(&room("r-1")),
            k.room_created(&room("r-1")),
            k.room_channel(&room("r-1")),
            k.room_webhooks(&room("r-1")),
            k.room_webhook_seq(&room("r-1")),
        ] {
            let open = key.find('{').unwrap();
            let close = key[open..].find('}').unwrap() + open;
            assert_eq!(&key[open + 1..close], "r-1", "{key}");
        }
    }

    #[test]
    fn channel_round_trips_to_room_and_rejects_foreign_channels() {
        let k = Keys::new("switchboard", "pod-1").unwrap();
        let ch = k.room_channel(&room("Room_9"));
        assert_eq!(k.room_from_channel(&ch), Some(room("Room_9")));
        let other = Keys::new("other", "pod-1").unwrap();
        assert_eq!(other.room_from_channel(&ch), None);
        assert_eq!(k.room_from_channel(&k.canary_channel()), None);
        assert_eq!(k.room_from_channel("switchboard:room:{a/b}:events"), None);
    }

    #[test]
    fn prefix_rules() {
        let cases: &[(&str, Result<(), PrefixError>)] = &[
            ("switchboard", Ok(())),
            ("team-a.prod:sb_1", Ok(())),
            ("", Err(PrefixError::Empty)),
            (&"p".repeat(65), Err(PrefixError::TooLong)),
            ("a{b}", Err(PrefixError::InvalidCharacter)),
            ("a*", Err(PrefixError::InvalidCharacter)),
            ("a b", Err(PrefixError::InvalidCharacter)),
        ];
        for (prefix, want) in cases {
            assert_eq!(&validate_prefix(prefix), want, "prefix {prefix:?}");
        }
    }

    #[test]
    fn instance_ids_are_escaped_injectively() {
        assert_eq!(escape_instance_id("host-1.a_b"), "host-1.a_b");
        assert_eq!(escape_instance_id("a{b}"), "a%7Bb%7D");
        assert_eq!(escape_instance_id("a%7B"), "a%257B");
        assert_ne!(escape_instance_id("a{"), escape_instance_id("a%7B"));
        let k = Keys::new("p", "we{ird} id").unwrap();
        assert_eq!(k.instance(), "we{ird} id");
        assert_eq!(k.instance_alive("x}"), "p:instance:{x%7D}:alive");
        assert_eq!(k.canary_channel(), "p:instance:{we%7Bird%7D%20id}:canary");
    }
}
