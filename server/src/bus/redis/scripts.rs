//! The Lua scripts of the Redis bus. Each touches the keys of exactly one room (one hash
//! slot), so they stay valid on Redis Cluster; cross-room work is a loop in Rust.
//!
//! Presence records are `ParticipantInfo` JSON values in the room's participants HASH; the
//! scripts read their `instance_id` and `user_id` with Redis' bundled `cjson`.
//!
//! # Webhook events
//!
//! Every script that changes presence also records the webhook events of that change, in the
//! same atomic step: appended to the room's stream (`XADD`, one entry per event, fields
//! `type`, `id`, `seq`, `time`, `participant`, `reason`) with the room's next `seq`. So a fact
//! is recorded exactly once, whichever instance saw it and whenever one crashes. These scripts
//! take a common argument block first: `ARGV[1]` a fresh nonce for event ids (empty: webhooks
//! off, nothing is recorded), `ARGV[2]` the time (RFC 3339), `ARGV[3]` how long the room's
//! `seq` counter outlives its last event (seconds), `ARGV[4]` the number of endpoint groups and
//! then their names; the script's own arguments follow (`ARGV[o + 1]`, ...). A missing group is
//! created at the stream's end before the first event: an endpoint sees what was recorded
//! from then on. A missing `seq` counter (the room's first event, or after it expired or Redis
//! lost it) starts at Redis' clock in microseconds, so `seq` keeps increasing across a room's
//! lives and a Redis that lost its data. While a room has participants its stream and counter
//! exist (the stream is emptied, not deleted, once delivered), so the keys a script declares
//! exist together, as a slot being migrated between cluster nodes requires (else `TRYAGAIN`).

/// Lua shared by the scripts that record webhook events: `emit(stream, seq_key, type,
/// participant_json, reason)` and `o`, the offset of the script's own arguments. A macro (not a
/// const) because `concat!` takes literals only.
macro_rules! webhook_fn {
    () => {
        r#"
local o = 4 + tonumber(ARGV[4])
local wh_n = 0
local function emit(stream, seq_key, kind, participant, reason)
  if ARGV[1] == '' then
    return
  end
  if wh_n == 0 then
    for i = 5, o do
      redis.pcall('XGROUP', 'CREATE', stream, ARGV[i], '$', 'MKSTREAM')
    end
  end
  local seq
  if redis.call('EXISTS', seq_key) == 0 then
    local t = redis.call('TIME')
    seq = t[1] .. string.sub('000000' .. t[2], -6)
    redis.call('SET', seq_key, seq)
  else
    seq = redis.call('INCR', seq_key)
  end
  -- Kept while the room lives (its keys then exist together, which a slot migration needs);
  -- forgotten a while after it finished.
  if kind == 'room_finished' then
    redis.call('EXPIRE', seq_key, ARGV[3])
  else
    redis.call('PERSIST', seq_key)
  end
  wh_n = wh_n + 1
  redis.call('XADD', stream, '*', 'type', kind, 'id', 'evt_' .. ARGV[1] .. '-' .. wh_n,
    'seq', seq, 'time', ARGV[2], 'participant', participant, 'reason', reason or '')
end
"#
    };
}

/// Atomic join with capacity: `KEYS[1]` participants hash, `KEYS[2]` the room's creation time,
/// `KEYS[3]` the room's webhook stream, `KEYS[4]` its `seq` counter; after the webhook block,
/// `ARGV` = participant id, info JSON, max participants, now (RFC 3339), user id, max
/// participants of that user (0 = no limit). Returns `{0}` when the room is full, `{2}` when the
/// user already holds that many of its participants, else `{1, info...}` with every participant
/// now present (self included), read in the same atomic step. The first participant of an empty
/// room records its creation time. A new participant records `participant_joined`, preceded by
/// `room_started` when the room was empty.
///
/// The user's participants are counted from the records themselves (their `user_id`), so the
/// count cannot drift from what crash cleanup and resyncs remove. A participant already present
/// (a re-registration racing a join) is updated, never refused, and records nothing.
pub const JOIN: &str = concat!(
    webhook_fn!(),
    r#"
local key = KEYS[1]
local is_new = redis.call('HEXISTS', key, ARGV[o + 1]) == 0
if is_new then
  if redis.call('HLEN', key) >= tonumber(ARGV[o + 3]) then
    return {'0'}
  end
  local per_user = tonumber(ARGV[o + 6])
  if per_user > 0 then
    local held = 0
    for _, v in ipairs(redis.call('HVALS', key)) do
      local ok, info = pcall(cjson.decode, v)
      if ok and type(info) == 'table' and info['user_id'] == ARGV[o + 5] then
        held = held + 1
      end
    end
    if held >= per_user then
      return {'2'}
    end
  end
end
local empty = redis.call('HLEN', key) == 0
if empty then
  redis.call('SET', KEYS[2], ARGV[o + 4])
end
redis.call('HSET', key, ARGV[o + 1], ARGV[o + 2])
if is_new then
  if empty then
    emit(KEYS[3], KEYS[4], 'room_started', ARGV[o + 2])
  end
  emit(KEYS[3], KEYS[4], 'participant_joined', ARGV[o + 2])
end
local out = {'1'}
for _, v in ipairs(redis.call('HVALS', key)) do
  out[#out + 1] = v
end
return out
"#
);

/// Removes one participant: `KEYS[1]` participants hash, `KEYS[2]` the room's creation time,
/// `KEYS[3]` webhook stream and `KEYS[4]` `seq` counter (with webhooks on), then (with resume
/// on) the participant's delivery seqs, sent seqs and inbox, and last its departed record;
/// after the webhook block, `ARGV` = participant id, leave reason, the leaving instance, whether
/// the resume keys were given (`1`/`0`), and last the departed record's TTL in seconds (the
/// removed record is kept there so a late check of its join announcement finds it real). A
/// record another instance holds (it adopted the participant in a resume) stays
/// and nothing is recorded: returns 0. The leave that empties the room forgets when it was
/// created and the room's seqs. A participant that was present records `participant_left`
/// (with the reason), followed by `room_finished` when the room is left empty.
pub const LEAVE: &str = concat!(
    webhook_fn!(),
    r#"
local info = redis.call('HGET', KEYS[1], ARGV[o + 1])
if info and ARGV[o + 3] ~= '' then
  -- A participant another instance adopted (a resume) is not ours to remove.
  local ok, rec = pcall(cjson.decode, info)
  if ok and type(rec) == 'table' and rec['instance_id'] ~= ARGV[o + 3] then
    return 0
  end
end
local r = 3
if ARGV[1] ~= '' then
  r = 5
end
redis.call('HDEL', KEYS[1], ARGV[o + 1])
if ARGV[o + 4] == '1' then
  redis.call('HDEL', KEYS[r], ARGV[o + 1])
  redis.call('HDEL', KEYS[r + 1], ARGV[o + 1])
  redis.call('DEL', KEYS[r + 2])
end
local empty = redis.call('HLEN', KEYS[1]) == 0
if empty then
  redis.call('DEL', KEYS[2])
  if ARGV[o + 4] == '1' then
    redis.call('DEL', KEYS[r], KEYS[r + 1])
  end
end
if info then
  -- The last key: the departed record, so a join announcement checked after this leave
  -- still finds the join was real (TTL: the last argument).
  redis.call('SET', KEYS[#KEYS], info, 'EX', ARGV[#ARGV])
  emit(KEYS[3], KEYS[4], 'participant_left', info, ARGV[o + 2])
  if empty then
    emit(KEYS[3], KEYS[4], 'room_finished', info)
  end
end
return 1
"#
);

/// Replaces one participant's record only if it is still there (a leave racing a metadata
/// update must not bring it back): `KEYS[1]` participants hash, `KEYS[2]` webhook stream,
/// `KEYS[3]` `seq` counter; after the webhook block, `ARGV` = participant id, info JSON. Returns
/// 1 when replaced (recording `participant_updated`), 0 when the participant is gone.
pub const UPDATE_PRESENT: &str = concat!(
    webhook_fn!(),
    r#"
if redis.call('HEXISTS', KEYS[1], ARGV[o + 1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[o + 1], ARGV[o + 2])
emit(KEYS[2], KEYS[3], 'participant_updated', ARGV[o + 2])
return 1
"#
);

/// Lua shared by the two scripts that drop one instance's entries: removes from the
/// participants hash `KEYS[1]` every entry whose info names instance `inst` and whose
/// participant id is not a key of `keep`; returns the removed info JSON values. A macro (not
/// a const) because `concat!` takes literals only.
macro_rules! remove_instance_fn {
    () => {
        r#"
local function remove_instance(keep, inst)
  local removed = {}
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if not keep[all[i]] then
      local ok, info = pcall(cjson.decode, all[i + 1])
      if ok and type(info) == 'table' and info['instance_id'] == inst then
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
/// `KEYS[2]` the room's creation time (forgotten when the room is left empty), `KEYS[3]`
/// webhook stream, `KEYS[4]` `seq` counter; after the webhook block, `ARGV` = instance id.
/// Returns the removed info JSON values (to announce `user-left`); records `participant_left`
/// (`instance_lost`) for each, and `room_finished` when they were the last.
pub const REMOVE_INSTANCE: &str = concat!(
    webhook_fn!(),
    remove_instance_fn!(),
    r#"
local removed = remove_instance({}, ARGV[o + 1])
for _, info in ipairs(removed) do
  emit(KEYS[3], KEYS[4], 'participant_left', info, 'instance_lost')
end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  if #removed > 0 then
    emit(KEYS[3], KEYS[4], 'room_finished', removed[#removed])
  end
end
return removed
"#
);

/// Makes one room's presence of one instance equal to its live local participants (after a
/// Redis restart, an outage, or a lapsed heartbeat): `KEYS[1]` participants hash, `KEYS[2]`
/// webhook stream, `KEYS[3]` `seq` counter; after the webhook block, `ARGV` = instance id,
/// `1` when the instance had been declared lost (else `0`), the number of recorded leave
/// reasons, pairs of participant id and reason, then pairs of participant id and info JSON of
/// the live participants. Entries of this instance that are not live any more are removed
/// (they left while Redis was unreachable: `participant_left` with their recorded reason, else
/// `instance_lost`); live ones are written. Returns `{added, removed}`, two lists of info JSON
/// values. No capacity check: these participants were admitted already.
///
/// Re-added records are `participant_joined` only when the instance had been declared lost
/// (its participants were announced as gone); otherwise Redis merely lost them and nobody was
/// told they left. `room_finished` / `room_started` follow the count as those events tell it.
pub const SYNC_INSTANCE: &str = concat!(
    webhook_fn!(),
    remove_instance_fn!(),
    r#"
local inst = ARGV[o + 1]
local announce = ARGV[o + 2] == '1'
local p = o + 4
local reasons = {}
for _ = 1, tonumber(ARGV[o + 3]) do
  reasons[ARGV[p]] = ARGV[p + 1]
  p = p + 2
end
local live = {}
for i = p, #ARGV, 2 do
  live[ARGV[i]] = true
end
local removed = remove_instance(live, inst)
for _, info in ipairs(removed) do
  local ok, d = pcall(cjson.decode, info)
  local reason = 'instance_lost'
  if ok and type(d) == 'table' and reasons[d['participant_id']] then
    reason = reasons[d['participant_id']]
  end
  emit(KEYS[2], KEYS[3], 'participant_left', info, reason)
end
-- Records Redis lost are still counted by whoever heard the events.
local silent = 0
if not announce then
  for i = p, #ARGV, 2 do
    if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
      silent = silent + 1
    end
  end
end
local empty = redis.call('HLEN', KEYS[1]) == 0
if #removed > 0 and empty and silent == 0 then
  emit(KEYS[2], KEYS[3], 'room_finished', removed[#removed])
end
local added = {}
for i = p, #ARGV, 2 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    added[#added + 1] = ARGV[i + 1]
    if announce then
      if empty and #added == 1 then
        emit(KEYS[2], KEYS[3], 'room_started', ARGV[i + 1])
      end
      emit(KEYS[2], KEYS[3], 'participant_joined', ARGV[i + 1])
    end
  end
end
return {added, removed}
"#
);

/// Lua shared by the webhook delivery scripts: stream id comparison, a group's state
/// (`pending`, `last-delivered-id`, `lag`) and its first undelivered entry, and the trim that
/// drops what every group has (or what is older than the retry horizon).
macro_rules! stream_fn {
    () => {
        r#"
local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function id_lt(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  return am < bm or (am == bm and as < bs)
end
local function groups_of(stream)
  local out = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #g, 2 do
      info[g[i]] = g[i + 1]
    end
    out[#out + 1] = info
  end
  return out
end
-- The group's first entry not done (pending, else the next after its last delivered).
local function first_undone(stream, g)
  if g['pending'] > 0 then
    local p = redis.call('XPENDING', stream, g['name'], '-', '+', 1)
    return p[1][1], p[1][2], p[1][3]
  end
  local nxt = redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+', 'COUNT', 1)
  if #nxt > 0 then
    return nxt[1][1], nil, nil
  end
  return nil, nil, nil
end
-- Drops what every group has and what is older than the horizon (ms); returns the first id
-- some group still needs, or nil.
local function trim(stream, horizon_ms)
  local min = nil
  for _, g in ipairs(groups_of(stream)) do
    local id = first_undone(stream, g)
    if id and (min == nil or id_lt(id, min)) then
      min = id
    end
  end
  if min == nil then
    redis.call('XTRIM', stream, 'MAXLEN', 0)
  else
    redis.call('XTRIM', stream, 'MINID', min)
  end
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 - tonumber(horizon_ms)
  if cutoff > 0 then
    redis.call('XTRIM', stream, 'MINID', string.format('%d', cutoff))
  end
  return min
end
"#
    };
}

/// What one room holds for each endpoint group: `KEYS[1]` webhook stream; `ARGV` = this
/// consumer, lease (ms), then group names. Returns per group `{depth, oldest_ms (-1 = none),
/// held_elsewhere (0/1)}`; another consumer holds the room when its pending entry was renewed
/// within the lease.
pub const WEBHOOK_STATUS: &str = concat!(
    stream_fn!(),
    r#"
local byname = {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, g in ipairs(groups_of(KEYS[1])) do
    byname[g['name']] = g
  end
end
local out = {}
for i = 3, #ARGV do
  local g = byname[ARGV[i]]
  local depth, oldest, held = 0, -1, 0
  if g then
    local after = g['lag']
    if type(after) ~= 'number' then
      after = #redis.call('XRANGE', KEYS[1], '(' .. g['last-delivered-id'], '+', 'COUNT', 100000)
    end
    depth = g['pending'] + after
    local id, owner, idle = first_undone(KEYS[1], g)
    if id then
      oldest = id_parts(id)
    end
    if owner and owner ~= ARGV[1] and idle < tonumber(ARGV[2]) then
      held = 1
    end
  end
  out[#out + 1] = {depth, oldest, held}
end
return out
"#
);

/// Takes the room's oldest undelivered event for one group: `KEYS[1]` webhook stream; `ARGV`
/// = group, this consumer, lease (ms). The group's pending entry (at most one: entries are
/// taken one at a time) is taken over when it is ours or its holder has not renewed it for a
/// lease; else the next entry is read. Returns `{'event', id, fields}`, `{'busy'}`,
/// `{'empty'}`, or `{'again'}` when the pending entry had been trimmed (it is acknowledged).
pub const WEBHOOK_CLAIM: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'empty'}
end
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1)
if type(p) ~= 'table' or p['err'] then
  return {'empty'}
end
if #p > 0 then
  local id, owner, idle = p[1][1], p[1][2], p[1][3]
  if owner ~= ARGV[2] and idle < tonumber(ARGV[3]) then
    return {'busy'}
  end
  local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
  if #c == 0 or not c[1] then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    return {'again'}
  end
  return {'event', c[1][1], c[1][2]}
end
local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
if not r or #r == 0 or #r[1][2] == 0 then
  return {'empty'}
end
return {'event', r[1][2][1][1], r[1][2][1][2]}
"#;

/// Renews this consumer's hold on an entry: `KEYS[1]` webhook stream; `ARGV` = group, this
/// consumer, entry id. Returns 0 when another consumer holds it now (or it is gone).
pub const WEBHOOK_RENEW: &str = r#"
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if type(p) ~= 'table' or p['err'] or #p == 0 or p[1][2] ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"#;

/// Acknowledges an entry this consumer holds and trims what every group has: `KEYS[1]`
/// webhook stream; `ARGV` = group, this consumer, entry id, retry horizon (ms). Returns 0 when
/// another consumer holds it now.
pub const WEBHOOK_ACK: &str = concat!(
    stream_fn!(),
    r#"
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if type(p) ~= 'table' or p['err'] or #p == 0 or p[1][2] ~= ARGV[2] then
  return 0
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
trim(KEYS[1], ARGV[4])
return 1
"#
);

/// Settles a room whose webhook events every group has: `KEYS[1]` webhook stream, `KEYS[2]`
/// participants hash; `ARGV[1]` retry horizon (ms). Returns 0 while something is undelivered,
/// else 1 — the stream is deleted, unless the room has participants (then it stays, empty).
pub const WEBHOOK_SETTLE: &str = concat!(
    stream_fn!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 1
end
local min = trim(KEYS[1], ARGV[1])
if min ~= nil or redis.call('XLEN', KEYS[1]) > 0 then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
end
return 1
"#
);
/// Numbers and keeps one message for each recipient, then publishes it (resume): `KEYS[1]`
/// delivery seqs, `KEYS[2]` sent seqs, `KEYS[3..]` the recipients' inboxes; `ARGV[1]` the
/// room channel, `ARGV[2]` inbox cap (messages), `ARGV[3]` inbox TTL (ms), `ARGV[4]` the bus
/// header without its closing brace, `ARGV[5]` the frame, `ARGV[6]` sender id, `ARGV[7]` the
/// sender's client seq (0: none), `ARGV[8]` the publish command (`PUBLISH`, or `SPUBLISH` on a
/// cluster: the channel shares the keys' slot), `ARGV[9]` the client seq this one follows
/// (0: none), `ARGV[10..]` recipient ids in the order of their inboxes.
///
/// A client seq the sender used before (or more than 32 below its highest) is a re-send:
/// nothing is delivered and `{'dup'}` returned. A seq that follows one this script has not
/// taken (sent on the same connection before it, still unanswered, and refused or lost) is
/// not delivered either: `{'behind'}`, the client sends both again in order. Otherwise each
/// recipient gets the next seq (`HINCRBY`), the frame goes to its inbox as entry `<seq>-1`,
/// and one message is published: the header with `"seqs":{"<id>":<seq>,...}` added, a
/// newline, the frame. Numbering and publishing in one script keeps every subscriber's view
/// in seq order. Returns `{'ok'}`.
pub const DELIVER: &str = r#"
local sender_seq = tonumber(ARGV[7])
if sender_seq > 0 then
  local max, mask = 0, 0
  local rec = redis.call('HGET', KEYS[2], ARGV[6])
  if rec then
    local a, b = string.match(rec, '^(%d+):(-?%d+)$')
    max, mask = tonumber(a) or 0, tonumber(b) or 0
  end
  -- Taken before: the highest seq, one of the 32 below it with its bit set, or older.
  local function taken(seq)
    if seq > max then return false end
    if seq == max then return true end
    local off = max - 1 - seq
    return off >= 32 or bit.band(mask, bit.lshift(1, off)) ~= 0
  end
  if taken(sender_seq) then
    return {'dup'}
  end
  local follows = tonumber(ARGV[9])
  if follows > 0 and not taken(follows) then
    return {'behind'}
  end
  if sender_seq > max then
    local shift = sender_seq - max
    if shift >= 32 then mask = 0 else mask = bit.lshift(mask, shift) end
    if max > 0 and shift <= 32 then mask = bit.bor(mask, bit.lshift(1, shift - 1)) end
    max = sender_seq
  else
    mask = bit.bor(mask, bit.lshift(1, max - 1 - sender_seq))
  end
  redis.call('HSET', KEYS[2], ARGV[6], max .. ':' .. mask)
end
local seqs = {}
for i = 10, #ARGV do
  local id = ARGV[i]
  local seq = redis.call('HINCRBY', KEYS[1], id, 1)
  local inbox = KEYS[i - 7]
  redis.call('XADD', inbox, 'MAXLEN', '~', ARGV[2], seq .. '-1', 'f', ARGV[5])
  redis.call('PEXPIRE', inbox, ARGV[3])
  seqs[#seqs + 1] = '"' .. id .. '":' .. seq
end
redis.call(ARGV[8], ARGV[1], ARGV[4] .. ',"seqs":{' .. table.concat(seqs, ',') .. '}}\n' .. ARGV[5])
return {'ok'}
"#;

/// Adopts a participant for a resume on this instance: `KEYS[1]` participants hash, `KEYS[2]`
/// delivery seqs, `KEYS[3]` its inbox; `ARGV[1]` participant id, `ARGV[2]` its record as the
/// caller read it, `ARGV[3]` the record naming this instance, `ARGV[4]` the client's last seq,
/// `ARGV[5]` the inbox bound in messages, `ARGV[6]` in bytes. Returns `{'expired'}` when the
/// participant is gone, `{'changed'}` when its record is not the one read (read again),
/// `{'ahead'}` when `last_seq` was never delivered; else writes the new record and returns
/// `{'ok', last seq, n, n frames after last_seq..., every participant record...}`, read in the
/// same atomic step as the seq, so every later delivery has a higher seq.
///
/// The bounds hold exactly here, whatever `DELIVER`'s approximate trim left in the stream: the
/// missed messages (after `last_seq`) must all still be there, consecutive, and within both
/// bounds, as the newest messages an in-memory inbox keeps; a message bigger than the byte
/// bound on its own is not kept either. Otherwise the record is written all the same (the
/// participant's old instance lets go of it, this one removes it) and `{'overflow', lost}`
/// returned: `lost` of the missed messages were no longer kept. Reads at most the message
/// bound of entries, newest first.
pub const ADOPT: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {'expired'} end
if cur ~= ARGV[2] then return {'changed'} end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local want = tonumber(ARGV[4])
if want > last then return {'ahead'} end
local missed = last - want
local frames = {}
if missed > 0 then
  local max_messages, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
  local entries = redis.call('XREVRANGE', KEYS[3], '+', (want + 1) .. '-1', 'COUNT',
    math.min(missed, max_messages))
  local bytes, expect = 0, last
  for _, e in ipairs(entries) do
    local f = e[2][2]
    if e[1] ~= expect .. '-1' or bytes + #f > max_bytes then break end
    bytes = bytes + #f
    expect = expect - 1
    frames[#frames + 1] = f
  end
  if #frames < missed then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
    return {'overflow', tostring(missed - #frames)}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local out = {'ok', tostring(last), tostring(#frames)}
for i = #frames, 1, -1 do
  out[#out + 1] = frames[i]
end
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  out[#out + 1] = v
end
return out
"#;
