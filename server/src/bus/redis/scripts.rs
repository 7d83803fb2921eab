//! The Lua scripts of the Redis bus. Each touches the keys of exactly one room (one hash
//! slot), so they stay valid on Redis Cluster; cross-room work is a loop in Rust.
//!
//! Presence records are `ParticipantInfo` JSON values in the room's participants HASH; the
//! scripts read their `instance_id` and `user_id` with Redis' bundled `cjson`.

/// Atomic join with capacity: `KEYS[1]` participants hash, `KEYS[2]` the room's creation time,
/// `ARGV` = participant id, info JSON, max participants, now (RFC 3339), user id, max
/// participants of that user (0 = no limit). Returns `{0}` when the room is full, `{2}` when the
/// user already holds that many of its participants, else `{1, info...}` with every participant
/// now present (self included), read in the same atomic step. The first participant of an empty
/// room records its creation time.
///
/// The user's participants are counted from the records themselves (their `user_id`), so the
/// count cannot drift from what crash cleanup and resyncs remove. A participant already present
/// (a re-registration racing a join) is updated, never refused.
pub const JOIN: &str = r#"
local key = KEYS[1]
if redis.call('HEXISTS', key, ARGV[1]) == 0 then
  if redis.call('HLEN', key) >= tonumber(ARGV[3]) then
    return {'0'}
  end
  local per_user = tonumber(ARGV[6])
  if per_user > 0 then
    local held = 0
    for _, v in ipairs(redis.call('HVALS', key)) do
      local ok, info = pcall(cjson.decode, v)
      if ok and type(info) == 'table' and info['user_id'] == ARGV[5] then
        held = held + 1
      end
    end
    if held >= per_user then
      return {'2'}
    end
  end
end
if redis.call('HLEN', key) == 0 then
  redis.call('SET', KEYS[2], ARGV[4])
end
redis.call('HSET', key, ARGV[1], ARGV[2])
local out = {'1'}
for _, v in ipairs(redis.call('HVALS', key)) do
  out[#out + 1] = v
end
return out
"#;

/// Removes one participant: `KEYS[1]` participants hash, `KEYS[2]` the room's creation time,
/// `ARGV[1]` participant id. The leave that empties the room forgets when it was created.
pub const LEAVE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
end
return 1
"#;

/// Replaces one participant's record only if it is still there (a leave racing a metadata
/// update must not bring it back): `KEYS[1]` participants hash, `ARGV` = participant id, info
/// JSON. Returns 1 when replaced, 0 when the participant is gone.
pub const UPDATE_PRESENT: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Lua shared by the two scripts that drop one instance's entries: removes from the
/// participants hash `KEYS[1]` every entry whose info names instance `ARGV[1]` and whose
/// participant id is not a key of `keep`; returns the removed info JSON values. A macro (not
/// a const) because `concat!` takes literals only.
macro_rules! remove_instance_fn {
    () => {
        r#"
local function remove_instance(keep)
  local removed = {}
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if not keep[all[i]] then
      local ok, info = pcall(cjson.decode, all[i + 1])
      if ok and type(info) == 'table' and info['instance_id'] == ARGV[1] then
        redis.call('HDEL', KEYS[1], all[i])
        removed[#removed + 1] = all[i + 1]
      end
    end
  end
  return removed
end
"#
    };
}

/// Removes every participant of one instance from one room: `KEYS[1]` participants hash,
/// `KEYS[2]` the room's creation time (forgotten when the room is left empty), `ARGV[1]`
/// instance id. Returns the removed info JSON values (to announce `user-left`).
pub const REMOVE_INSTANCE: &str = concat!(
    remove_instance_fn!(),
    r#"
local removed = remove_instance({})
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
end
return removed
"#
);

/// Makes one room's presence of one instance equal to its live local participants (after a
/// Redis restart, an outage, or a lapsed heartbeat): `KEYS[1]` participants hash, `ARGV[1]`
/// instance id, then pairs of participant id and info JSON. Entries of this instance that are
/// not live any more are removed (they left while Redis was unreachable); live ones are
/// written. Returns `{added, removed}`, two lists of info JSON values. No capacity check: these
/// participants were admitted already.
pub const SYNC_INSTANCE: &str = concat!(
    remove_instance_fn!(),
    r#"
local live = {}
for i = 2, #ARGV, 2 do
  live[ARGV[i]] = true
end
local removed = remove_instance(live)
local added = {}
for i = 2, #ARGV, 2 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    added[#added + 1] = ARGV[i + 1]
  end
end
return {added, removed}
"#
);
