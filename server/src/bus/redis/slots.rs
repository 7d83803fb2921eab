//! Redis Cluster slot arithmetic, pure: a key's hash slot (CRC16/XMODEM of its hash tag,
//! modulo 16384, exactly as `CLUSTER KEYSLOT` computes it), the slot map read from
//! `CLUSTER SLOTS` ([`Topology`]: which master serves which slots), and the search for a
//! channel name that lands on a given shard (the per-shard readiness canary). No I/O: the
//! `shards` module asks Redis and acts on what these functions say.

use std::collections::BTreeSet;

use redis::Value;

/// Number of hash slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16384;

/// A cluster node's address as `CLUSTER SLOTS` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct NodeAddr {
    pub(super) host: String,
    pub(super) port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The part of a key Redis hashes: the text between the first `{` and the next `}` when
/// that is not empty, else the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The hash slot of a key or sharded channel, as `CLUSTER KEYSLOT` computes it.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key)) % SLOTS
}

/// Which master serves which slots, from one `CLUSTER SLOTS` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Topology {
    /// Inclusive slot ranges, sorted by start, each with its master.
    ranges: Vec<(u16, u16, NodeAddr)>,
}

/// Why a `CLUSTER SLOTS` reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected CLUSTER SLOTS reply: {0}")]
pub(super) struct TopologyError(&'static str);

impl Topology {
    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...], replicas...], ...]`.
    /// An empty host (a node that does not know its own address) is `fallback_host`.
    pub(super) fn parse(reply: &Value, fallback_host: &str) -> Result<Self, TopologyError> {
        let Value::Array(entries) = reply else {
            return Err(TopologyError("not an array"));
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return Err(TopologyError("an entry is not an array"));
            };
            let (Some(start), Some(end), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(TopologyError("an entry lacks its range or master"));
            };
            let (start, end) = (slot_number(start)?, slot_number(end)?);
            if start > end {
                return Err(TopologyError("a range ends before it starts"));
            }
            let host = match master.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => return Err(TopologyError("a master has no host")),
            };
            let port = match master.get(1) {
                Some(Value::Int(p)) => {
                    u16::try_from(*p).map_err(|_| TopologyError("a port is out of range"))?
                }
                _ => return Err(TopologyError("a master has no port")),
            };
            let host = if host.is_empty() {
                fallback_host.to_owned()
            } else {
                host
            };
            ranges.push((start, end, NodeAddr { host, port }));
        }
        ranges.sort_by_key(|r| r.0);
        Ok(Topology { ranges })
    }

    /// The master serving `slot`, if any does (a slot without a master is a cluster that is
    /// failing over or not fully set up).
    pub(super) fn owner(&self, slot: u16) -> Option<&NodeAddr> {
        let i = self.ranges.partition_point(|r| r.0 <= slot);
        let (start, end, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*start <= slot && slot <= *end).then_some(node)
    }

    /// Every master that serves at least one slot, sorted.
    pub(super) fn masters(&self) -> BTreeSet<NodeAddr> {
        self.ranges.iter().map(|r| r.2.clone()).collect()
    }

    /// Whether every one of the 16384 slots has a master.
    pub(super) fn covers_all_slots(&self) -> bool {
        let mut next = 0u32;
        for (start, end, _) in &self.ranges {
            if u32::from(*start) > next {
                return false;
            }
            next = next.max(u32::from(*end) + 1);
        }
        next >= u32::from(SLOTS)
    }
}

fn slot_number(v: &Value) -> Result<u16, TopologyError> {
    match v {
        Value::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n < SLOTS)
            .ok_or(TopologyError("a slot is out of range")),
        _ => Err(TopologyError("a slot is not an integer")),
    }
}

/// The first `n` for which `channel(n)` hashes to a slot `node` serves, searching at most
/// `limit` candidates (a master serving a single slot needs about 16384 on average).
pub(super) fn find_channel_on(
    topology: &Topology,
    node: &NodeAddr,
    limit: u32,
    channel: impl Fn(u32) -> String,
) -> Option<(u32, String)> {
    (0..limit).find_map(|n| {
        let name = channel(n);
        (topology.owner(key_slot(name.as_bytes())) == Some(node)).then_some((n, name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> NodeAddr {
        NodeAddr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn int(n: i64) -> Value {
        Value::Int(n)
    }

    fn master(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn three_shards() -> Value {
        Value::Array(vec![
            Value::Array(vec![int(5461), int(10922), master("127.0.0.1", 7001)]),
            Value::Array(vec![
                int(0),
                int(5460),
                master("127.0.0.1", 7000),
                master("127.0.0.1", 7003),
            ]),
            Value::Array(vec![int(10923), int(16383), master("", 7002)]),
        ])
    }

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}bar"), key_slot(b"foo{}bar"));
        assert_ne!(key_slot(b"foo{}bar"), key_slot(b""));
        // Only the first tag counts.
        assert_eq!(key_slot(b"a{x}b{y}"), key_slot(b"x"));
        // A room's keys and channel share the room's slot whatever the prefix.
        assert_eq!(
            key_slot(b"switchboard:room:{demo}:participants"),
            key_slot(b"tenant-b:room:{demo}:events")
        );
    }

    #[test]
    fn the_slot_map_names_one_master_per_slot() {
        let t = Topology::parse(&three_shards(), "10.0.0.9").unwrap();
        assert_eq!(t.owner(0), Some(&node(7000)));
        assert_eq!(t.owner(5460), Some(&node(7000)));
        assert_eq!(t.owner(5461), Some(&node(7001)));
        assert_eq!(
            t.owner(16383).map(|n| n.host.as_str()),
            Some("10.0.0.9"),
            "an empty host is the node asked"
        );
        assert!(t.covers_all_slots());
        assert_eq!(t.masters().len(), 3);
    }

    #[test]
    fn gaps_and_garbage_are_told_apart() {
        let gap = Value::Array(vec![Value::Array(vec![int(0), int(100), master("h", 1)])]);
        let t = Topology::parse(&gap, "h").unwrap();
        assert_eq!(t.owner(101), None);
        assert!(!t.covers_all_slots());
        assert!(Topology::parse(&Value::Nil, "h").is_err());
        let reversed = Value::Array(vec![Value::Array(vec![int(9), int(3), master("h", 1)])]);
        assert!(Topology::parse(&reversed, "h").is_err());
        let no_port = Value::Array(vec![Value::Array(vec![
            int(0),
            int(1),
            Value::Array(vec![Value::BulkString(b"h".to_vec())]),
        ])]);
        assert!(Topology::parse(&no_port, "h").is_err());
        assert_eq!(Topology::default().owner(0), None);
    }

    #[test]
    fn a_channel_is_found_on_every_shard() {
        let t = Topology::parse(&three_shards(), "127.0.0.1").unwrap();
        for master in t.masters() {
            let (_, name) = find_channel_on(&t, &master, 100_000, |n| format!("p:{{i~{n}}}:c"))
                .expect("some candidate lands on each shard");
            assert_eq!(t.owner(key_slot(name.as_bytes())), Some(&master));
        }
        assert_eq!(
            find_channel_on(&t, &node(9999), 1000, |n| n.to_string()),
            None
        );
    }
}
