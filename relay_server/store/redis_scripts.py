"""Lua scripts of the Redis store: each one changes a channel's keys atomically.

Every script receives the same channel keys, all with the channel id as
their hash tag so that they live in one cluster slot:

====  ===========  =====================================================
KEYS  name         contents
====  ===========  =====================================================
1     meta         hash: token_hash, created_at, settings, seq counter
2     log          stream: one entry per event, plus replay references
3     ids          hash: event id -> sequence number
4     bodies       hash: event id -> body bytes
5     outcomes     hash: "<group>\\n<event id>" -> outcome JSON
6     attempts     hash: event id -> JSON lines, one per attempt
7     answers      hash: event id -> the sync sender's answer JSON
8     replays      hash: "<group>\\n<event id>" -> reference entry id
9     consumers    sorted set: "<group>/<consumer>" -> expiry (ms, Redis clock)
10    progress     hash: "<group>\\n<event id>" -> attempts reported while
                   the event is pending, handed on to a redelivery
====  ===========  =====================================================

Stream entry ids are ``<seq>-0``: the channel's own counter numbers events,
so an event's sequence number is its stream id and ``MINID`` trims by it.
An event entry has the fields ``id t m p h r s n`` and optionally ``e u v``
(event id, received_at, method, target, headers, remote, scheme, size,
event type, respond_until, verification). A replay reference has ``ref``
(the event's entry id), ``id`` and ``g`` (the one group it is for); other
groups acknowledge it unread.

The scripts that make events claimable (APPEND, REPLAY, RELEASE) publish
the hub's wake-up message themselves. A script runs atomically, so no node
can claim before the script's whole change is made. They take the pub/sub
channel and the message in ARGV, because a pub/sub channel is not a key and
belongs to no hash slot. UPDATE_CHANNEL likewise publishes the message that
makes every node drop its copy of the channel's record.

A consumer is alive while its member in ``consumers`` has an expiry in the
future by Redis's clock (``TIME``), which the relay node that serves it
refreshes. Pending entries of any other consumer are reclaimed by the next
claim of their group.
"""

PRELUDE = r"""
local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- Groups of the channel as {name, last-delivered seq, pending, lag}.
local function groups()
  local found = {}
  if redis.call('EXISTS', KEYS[2]) == 0 then return found end
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    local group = {}
    for i = 1, #info, 2 do group[info[i]] = info[i + 1] end
    table.insert(found, {group['name'], seq_of(group['last-delivered-id']), group['pending'], group['lag']})
  end
  return found
end

local function ensure_group(group)
  -- A group used for the first time starts at the end of the log.
  redis.pcall('XGROUP', 'CREATE', KEYS[2], group, '$', 'MKSTREAM')
end

-- Remove everything kept about one event except its stream entry.
local function forget_event(event_id, all_groups)
  for _, g in ipairs(all_groups) do
    local key = g[1] .. '\n' .. event_id
    redis.call('HDEL', KEYS[5], key)
    redis.call('HDEL', KEYS[10], key)
    local ref = redis.call('HGET', KEYS[8], key)
    if ref then
      redis.call('XACK', KEYS[2], g[1], ref)
      redis.call('HDEL', KEYS[8], key)
    end
  end
  redis.call('HDEL', KEYS[3], event_id)
  redis.call('HDEL', KEYS[4], event_id)
  redis.call('HDEL', KEYS[6], event_id)
  redis.call('HDEL', KEYS[7], event_id)
end

-- Drop entries [first .. last] (already read by XRANGE) from every group's
-- pending list and from the log, with the data of the events among them.
local function drop_entries(entries, all_groups)
  local removed = 0
  for _, entry in ipairs(entries) do
    for _, g in ipairs(all_groups) do
      redis.call('XACK', KEYS[2], g[1], entry[1])
    end
    if not field(entry[2], 'ref') then
      forget_event(field(entry[2], 'id'), all_groups)
      removed = removed + 1
    end
  end
  if #entries > 0 then
    redis.call('XTRIM', KEYS[2], 'MINID', (seq_of(entries[#entries][1]) + 1) .. '-0')
  end
  return removed
end
"""

APPEND = PRELUDE + r"""
-- ARGV: event id, max events, prune batch, body, dedupe window ms,
-- hub pub/sub channel, wake-up message, then the entry fields (name, value ...).
-- KEYS[11]: the dedupe key of this delivery, or an unused name.
local FIRST_FIELD = 8
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOCHANNEL')
end
local event_id = ARGV[1]
local window = tonumber(ARGV[5])
if window > 0 then
  local earlier = redis.call('GET', KEYS[11])
  if earlier then
    return {'DUPLICATE', earlier}
  end
end

local count = redis.call('HLEN', KEYS[3])
local limit = tonumber(ARGV[2])
if count >= limit then
  -- Events every group is done with make room, oldest first. Nothing a
  -- group still has to read or acknowledge is dropped.
  local all_groups = groups()
  local floor = nil
  for _, g in ipairs(all_groups) do
    local bound = g[2]
    if g[3] > 0 then
      local summary = redis.call('XPENDING', KEYS[2], g[1])
      bound = math.min(bound, seq_of(summary[2]) - 1)
    end
    floor = floor and math.min(floor, bound) or bound
  end
  local replayed = redis.call('HKEYS', KEYS[8])
  for _, key in ipairs(replayed) do
    local seq = redis.call('HGET', KEYS[3], string.match(key, '\n(.*)$'))
    if seq then floor = math.min(floor or 0, tonumber(seq) - 1) end
  end
  if floor and floor >= 1 then
    local entries = redis.call('XRANGE', KEYS[2], '-', floor .. '-0', 'COUNT', ARGV[3])
    count = count - drop_entries(entries, all_groups)
  end
  if count >= limit then
    return redis.error_reply('FULL')
  end
end

local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local fields = {}
for i = FIRST_FIELD, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('XADD', KEYS[2], seq .. '-0', unpack(fields))
redis.call('HSET', KEYS[3], event_id, seq)
redis.call('HSET', KEYS[4], event_id, ARGV[4])
if window > 0 then
  redis.call('SET', KEYS[11], event_id, 'PX', window)
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return seq
"""

CLAIM = PRELUDE + r"""
-- ARGV: group, consumer, count, presence ttl ms
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
ensure_group(group)
-- The node refreshes its consumers every third of the TTL, so the claim
-- writes the expiry only when less than half of the TTL is left: on a first
-- claim, or when a refresh is late. A claim that writes nothing (an empty
-- one) then adds nothing to the AOF, so it causes no sync of its own.
local ttl = tonumber(ARGV[4])
local expiry = redis.call('ZSCORE', KEYS[9], group .. '/' .. consumer)
if not expiry or tonumber(expiry) - now < ttl / 2 then
  redis.call('ZADD', KEYS[9], now + ttl, group .. '/' .. consumer)
end

local out = {}

local function take(id, fields, deliveries)
  local ref = field(fields, 'ref')
  if ref then
    if field(fields, 'g') ~= group then
      redis.call('XACK', KEYS[2], group, id)
      return
    end
    local original = redis.call('XRANGE', KEYS[2], ref, ref)
    if #original == 0 then
      -- The event was deleted or pruned after the replay was queued.
      redis.call('XACK', KEYS[2], group, id)
      redis.call('HDEL', KEYS[8], group .. '\n' .. field(fields, 'id'))
      return
    end
    id, fields = original[1][1], original[1][2]
  end
  local body = redis.call('HGET', KEYS[4], field(fields, 'id'))
  local attempts = 0
  if deliveries > 1 then
    attempts = tonumber(redis.call('HGET', KEYS[10], group .. '\n' .. field(fields, 'id')) or '0')
  end
  table.insert(out, {seq_of(id), deliveries, fields, body or '', attempts})
end

-- 1. Pending entries of consumers that are gone, oldest first.
local summary = redis.call('XPENDING', KEYS[2], group)
local stale = {}
local candidates = {}
if summary[4] then
  for _, pair in ipairs(summary[4]) do
    local name = pair[1]
    local expiry = redis.call('ZSCORE', KEYS[9], group .. '/' .. name)
    if name ~= consumer and (not expiry or tonumber(expiry) < now) then
      stale[name] = true
      for _, row in ipairs(redis.call('XPENDING', KEYS[2], group, '-', '+', count, name)) do
        table.insert(candidates, row)
      end
    end
  end
end
table.sort(candidates, function(a, b) return seq_of(a[1]) < seq_of(b[1]) end)
-- Entries whose event is gone are skipped, so claim in rounds until the
-- count is filled or the candidates run out.
local next_candidate = 1
while #out < count and next_candidate <= #candidates do
  local last = math.min(#candidates, next_candidate + count - #out - 1)
  local deliveries = {}
  local ids = {}
  for i = next_candidate, last do
    deliveries[candidates[i][1]] = candidates[i][4] + 1
    table.insert(ids, candidates[i][1])
  end
  next_candidate = last + 1
  for _, entry in ipairs(redis.call('XCLAIM', KEYS[2], group, consumer, 0, unpack(ids))) do
    if entry and entry[2] then
      take(entry[1], entry[2], deliveries[entry[1]])
    end
  end
end

-- Consumers that are gone and hold nothing more are forgotten.
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now)) do
  local name = string.match(member, '^[^/]*/(.*)$')
  if string.sub(member, 1, #group + 1) == group .. '/' and name ~= consumer then
    stale[name] = true
  end
end
for name, _ in pairs(stale) do
  if #redis.call('XPENDING', KEYS[2], group, '-', '+', 1, name) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[2], group, name)
    redis.call('ZREM', KEYS[9], group .. '/' .. name)
  end
end

-- 2. New entries after the group's position. Replay references of other
-- groups are skipped, so read until the count is filled or the log ends:
-- a claim returns fewer than its count only when nothing more is there,
-- and the session then waits for a wake-up instead of claiming again.
-- Each round moves the group's position on, so the rounds are bounded by
-- the log's length.
while #out < count do
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #out, 'STREAMS', KEYS[2], '>')
  if not reply or #reply[1][2] == 0 then break end
  for _, entry in ipairs(reply[1][2]) do
    -- A replay reference counts as a first delivery too, so a listener
    -- that remembers the event id forwards it again.
    take(entry[1], entry[2], 1)
  end
end
return out
"""

ACK = PRELUDE + r"""
-- ARGV: group, then per result: event id, outcome JSON, attempt line or ''
local group = ARGV[1]
local removed = 0
for i = 2, #ARGV, 3 do
  local event_id = ARGV[i]
  local seq = redis.call('HGET', KEYS[3], event_id)
  if seq then
    local key = group .. '\n' .. event_id
    local acked = redis.call('XACK', KEYS[2], group, seq .. '-0')
    local ref = redis.call('HGET', KEYS[8], key)
    if ref then
      acked = acked + redis.call('XACK', KEYS[2], group, ref)
      redis.call('HDEL', KEYS[8], key)
    end
    if acked > 0 then removed = removed + 1 end
    redis.call('HDEL', KEYS[10], key)
    redis.call('HSET', KEYS[5], key, ARGV[i + 1])
    -- An ack for an event that is no longer pending repeats a report
    -- already kept, so it adds no attempt.
    if acked > 0 and ARGV[i + 2] ~= '' then
      redis.call('HSET', KEYS[6], event_id, (redis.call('HGET', KEYS[6], event_id) or '') .. ARGV[i + 2])
    end
  end
end
return removed
"""

RECORD = PRELUDE + r"""
-- ARGV: kind ('attempt' or 'answer'), event id, value; for an attempt also
-- the group and the attempt number, which a redelivery hands on.
local event_id = ARGV[2]
if redis.call('HEXISTS', KEYS[3], event_id) == 0 then return 0 end
if ARGV[1] == 'attempt' then
  redis.call('HSET', KEYS[6], event_id, (redis.call('HGET', KEYS[6], event_id) or '') .. ARGV[3])
  local key = ARGV[4] .. '\n' .. event_id
  local earlier = tonumber(redis.call('HGET', KEYS[10], key) or '0')
  redis.call('HSET', KEYS[10], key, math.max(earlier, tonumber(ARGV[5])))
else
  redis.call('HSET', KEYS[7], event_id, ARGV[3])
end
return 1
"""

RELEASE = PRELUDE + r"""
-- ARGV: group, consumer, hub pub/sub channel, wake-up message
local group, consumer = ARGV[1], ARGV[2]
redis.call('ZREM', KEYS[9], group .. '/' .. consumer)
local ok, summary = pcall(redis.call, 'XPENDING', KEYS[2], group)
if not ok or not summary[4] then return 0 end
for _, pair in ipairs(summary[4]) do
  if pair[1] == consumer then
    -- The released events go to the next claim of the group, on any node.
    redis.call('PUBLISH', ARGV[3], ARGV[4])
    return tonumber(pair[2])
  end
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[2], group, consumer)
return 0
"""

BACKLOG = PRELUDE + r"""
-- ARGV: group
for _, g in ipairs(groups()) do
  if g[1] == ARGV[1] then
    local unread = g[4]
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
    if #first == 0 then
      unread = 0
    elseif seq_of(first[1][1]) > g[2] then
      -- Retention trimmed entries the group had not read, which the lag
      -- still counts: every entry left is unread.
      unread = redis.call('XLEN', KEYS[2])
    elseif not unread then
      -- Redis cannot tell the lag after deletions inside the unread range:
      -- count the entries after the group's position instead.
      unread = 0
      local start = '(' .. g[2] .. '-0'
      for round = 1, 1000 do
        local entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', 1000)
        unread = unread + #entries
        if #entries < 1000 then break end
        start = '(' .. entries[#entries][1]
      end
    end
    return g[3] + unread
  end
end
return 0
"""

DETAIL = PRELUDE + r"""
-- ARGV: event id. Returns {seq, fields, body, {group, outcome JSON ...}, attempt lines, answer JSON}
local event_id = ARGV[1]
local seq = redis.call('HGET', KEYS[3], event_id)
if not seq then return false end
local entry = redis.call('XRANGE', KEYS[2], seq .. '-0', seq .. '-0')
if #entry == 0 then return false end
local outcomes = {}
for _, g in ipairs(groups()) do
  local outcome = redis.call('HGET', KEYS[5], g[1] .. '\n' .. event_id)
  if outcome then
    table.insert(outcomes, g[1])
    table.insert(outcomes, outcome)
  end
end
return {
  tonumber(seq),
  entry[1][2],
  redis.call('HGET', KEYS[4], event_id) or '',
  outcomes,
  redis.call('HGET', KEYS[6], event_id) or '',
  redis.call('HGET', KEYS[7], event_id) or '',
}
"""

DELETE = PRELUDE + r"""
-- ARGV: event id
local seq = redis.call('HGET', KEYS[3], ARGV[1])
if not seq then return 0 end
local entry = redis.call('XRANGE', KEYS[2], seq .. '-0', seq .. '-0')
local all_groups = groups()
for _, g in ipairs(all_groups) do
  redis.call('XACK', KEYS[2], g[1], seq .. '-0')
end
forget_event(ARGV[1], all_groups)
redis.call('XDEL', KEYS[2], seq .. '-0')
return 1
"""

REPLAY = PRELUDE + r"""
-- ARGV: event id, group, hub pub/sub channel, wake-up message
-- Returns 0 for an unknown event, 2 when a live consumer of the group is
-- delivering it now, 1 when it is queued.
local event_id, group = ARGV[1], ARGV[2]
local seq = redis.call('HGET', KEYS[3], event_id)
if not seq then return 0 end
ensure_group(group)
local key = group .. '\n' .. event_id

-- A replay of an event in flight would merge into that delivery, so it is
-- refused. The event's own entry and a replay reference may be pending.
local now = now_ms()
for _, id in ipairs({seq .. '-0', redis.call('HGET', KEYS[8], key)}) do
  if id then
    local entry = redis.call('XPENDING', KEYS[2], group, id, id, 1)[1]
    if entry then
      local expiry = redis.call('ZSCORE', KEYS[9], group .. '/' .. entry[2])
      if expiry and tonumber(expiry) >= now then return 2 end
    end
  end
end

-- Every path below leaves the event claimable by the group. The script runs
-- atomically, so no node claims before the whole change is made.
redis.call('PUBLISH', ARGV[3], ARGV[4])
local position = 0
for _, g in ipairs(groups()) do
  if g[1] == group then position = g[2] end
end
-- The replayed delivery gets a fresh --max-attempts budget.
redis.call('HDEL', KEYS[10], key)
if tonumber(seq) > position then
  -- The group has not read the event yet: it arrives anyway.
  return 1
end
redis.call('HDEL', KEYS[5], key)
if redis.call('HEXISTS', KEYS[8], key) == 1 then
  return 1
end
-- A reference entry at the end of the log brings the event back to this
-- group with its own id; acknowledging the event acknowledges both.
local ref_seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], ref_seq .. '-0', 'ref', seq .. '-0', 'id', event_id, 'g', group)
redis.call('HSET', KEYS[8], key, ref_seq .. '-0')
return 1
"""

PRUNE_AGE = PRELUDE + r"""
-- ARGV: cutoff (Unix time), max entries. Entries are scanned from the
-- oldest and the scan stops at the first event received at or after the
-- cutoff, so an event that arrived late through a node with a slow clock
-- keeps the ones behind it.
local cutoff, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local expired = {}
local start = '-'
while #expired < budget do
  local entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', 100)
  if #entries == 0 then break end
  local young = false
  for _, entry in ipairs(entries) do
    local received = field(entry[2], 't')
    if received and tonumber(received) >= cutoff then
      young = true
      break
    end
    table.insert(expired, entry)
    if #expired >= budget then break end
  end
  if young or #entries < 100 then break end
  start = '(' .. entries[#entries][1]
end
return drop_entries(expired, groups())
"""

REFRESH = r"""
-- ARGV: presence ttl ms, members... Returns the consumers that expired, as group/consumer.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[9], now + tonumber(ARGV[1]), ARGV[i])
end
return redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now)
"""

UPDATE_CHANNEL = r"""
-- ARGV: hub pub/sub channel, invalidation message, then field, value pairs
-- of the meta hash. The message makes every node drop its copy of the
-- channel's record, and it is published in the same atomic step as the change.
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""
