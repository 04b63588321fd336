-- queue.lua: the state transitions of one queue, shared by the scripts that move messages.
-- Needs entry.lua and wake.lua. Times (now, due, deadlines) are milliseconds of Redis's clock.
--
-- A "queue block" is 15 consecutive KEYS, all under the queue's hash tag:
--   +1..+10  ready lists, priority 0..9 (RPUSH at the tail, LMPOP from the head)
--   +11      delayed: sorted set, score = due time in ms, member = entry
--   +12      held: hash, compact id -> msgpack(token, consumer, entry)
--   +13      leases: sorted set, compact id -> lease deadline in ms
--   +14      seq: counter for fencing tokens and ids of foreign entries
--   +15      wake: short list that blocked fetchers BLPOP on

local BLOCK = 15
-- Entries moved per step, so one call never blocks Redis for long. Also what keeps every
-- unpack() below Lua's limit (~8000 values): a script fails there midway, AFTER its
-- earlier writes, and Redis does not roll a script back.
local BATCH = 1000

local function queue_block(base)
  return {base = base, delayed = KEYS[base + 11], held = KEYS[base + 12],
    leases = KEYS[base + 13], seq = KEYS[base + 14], wake = KEYS[base + 15]}
end

local function ready_key(q, priority)
  return KEYS[q.base + 1 + priority]
end

local function wake(q, count)
  push_wake(q.wake, count)
end

-- Put an entry where it waits: the tail of its ready list, or the delayed set.
local function place(q, entry, priority, due, now)
  if due > now then
    redis.call('ZADD', q.delayed, due, entry)
  else
    redis.call('RPUSH', ready_key(q, priority), entry)
  end
end

-- token, consumer, priority, deliveries, body of a held message; nil if not held.
local function held(q, cid)
  local record = redis.call('HGET', q.held, cid)
  if not record then return nil end
  local token, consumer, entry = cmsgpack.unpack(record)
  local _, priority, deliveries, body = unpack_entry(entry)
  return token, consumer, priority, deliveries, body
end

local function unhold(q, cid)
  redis.call('HDEL', q.held, cid)
  redis.call('ZREM', q.leases, cid)
end

-- Give a held message back, due now: its lease expired or its worker died.
local function release(q, cid, now)
  local token, _, priority, deliveries, body = held(q, cid)
  if not token then
    redis.call('ZREM', q.leases, cid) -- a lease without a message: drop it
    return 0
  end
  unhold(q, cid)
  place(q, pack_entry(cid, priority, deliveries, body), priority, now, now)
  return 1
end

-- Release every message whose lease ran out.
local function reclaim(q, now)
  local released = 0
  repeat
    local expired = redis.call('ZRANGEBYSCORE', q.leases, '-inf', now, 'LIMIT', 0, BATCH)
    for _, cid in ipairs(expired) do released = released + release(q, cid, now) end
  until #expired < BATCH
  return released
end

-- Move every delayed entry that came due to the tail of its ready list, a batch at a
-- time: all of them, so a due high-priority entry is never left behind lower ones.
-- ZREM before RPUSH: a full Redis (maxmemory, noeviction) refuses a script whose first
-- write may grow memory, and a fetch with a due entry was refused until memory was freed;
-- a ZREM first makes the move, which grows nothing, a write Redis lets finish.
local function promote(q, now)
  repeat
    local due = redis.call('ZRANGEBYSCORE', q.delayed, '-inf', now, 'LIMIT', 0, BATCH)
    if #due > 0 then redis.call('ZREM', q.delayed, unpack(due)) end
    for _, entry in ipairs(due) do
      local _, priority = unpack_entry(entry)
      redis.call('RPUSH', ready_key(q, priority or 0), entry)
    end
  until #due < BATCH
end

-- The id of bytes pushed by hand: a zero byte, 'raw-' and a number from the queue's seq.
-- No client id compacts to it: keys.py escapes ids led by a zero byte, and a compact id
-- that starts with one is a UUID of exactly 17 bytes, a length this id never has (spelled
-- with a leading 0 instead). keys.py expands it to the id '\0raw-<n>' and compacts that id
-- back to these bytes, so the worker settles it like any other; send refuses that id.
local function foreign_id(n)
  local cid = '\0raw-' .. string.format('%d', n)
  if #cid == 17 then cid = '\0raw-0' .. string.format('%d', n) end
  return cid
end

-- Hold popped entries (all from one list of queue q, at most BATCH of them) under new
-- leases, with one INCRBY for their fencing tokens, one HSET and one ZADD; append (block,
-- cid, token, deliveries, priority, body) per entry to out.
local function hold(q, index, entries, list_priority, consumer, lease_ms, now, out)
  local last = redis.call('INCRBY', q.seq, #entries)
  local records, deadlines = {}, {}
  for i, entry in ipairs(entries) do
    local cid, priority, deliveries, body = unpack_entry(entry)
    if not cid then
      -- Bytes pushed by hand: deliver them as they are under a fresh id, so the worker can
      -- dead-letter them with their raw bytes instead of the broker choking on them.
      cid, priority, deliveries = foreign_id(redis.call('INCR', q.seq)), list_priority, 0
      body = entry
    end
    deliveries = deliveries + 1
    local token = tostring(last - #entries + i)
    local n = #records
    records[n + 1] = cid
    records[n + 2] = cmsgpack.pack(token, consumer, pack_entry(cid, priority, deliveries, body))
    n = #deadlines
    deadlines[n + 1], deadlines[n + 2] = now + lease_ms, cid
    n = #out
    out[n + 1], out[n + 2], out[n + 3] = index, cid, token
    out[n + 4], out[n + 5], out[n + 6] = deliveries, priority, body
  end
  redis.call('HSET', q.held, unpack(records))
  redis.call('ZADD', q.leases, unpack(deadlines))
end

-- Take up to limit ready entries from the blocks: higher priority first, then the order of
-- the blocks, then list order (send order, or the time the message became due again).
-- LMPOP (Redis 7) pops from the first non-empty list of all of them in one call; with more
-- than BATCH lists (over 100 queues) from a slice of them at a time, in that same order: a
-- slice found empty stays empty, as nothing in this script pushes to a ready list. Each pop
-- takes at most BATCH entries, the most hold() can unpack.
local function take(blocks, consumer, limit, lease_ms, now, out)
  local lists, where = {}, {}
  for priority = 9, 0, -1 do
    for index, q in ipairs(blocks) do
      local key = ready_key(q, priority)
      lists[#lists + 1] = key
      where[key] = {index, q, priority}
    end
  end
  local slices = {} -- LMPOP arguments: numkeys, up to BATCH lists, LEFT COUNT <count>
  for first = 1, #lists, BATCH do
    local args = {0}
    for i = first, math.min(first + BATCH - 1, #lists) do args[#args + 1] = lists[i] end
    args[1] = #args - 1
    args[#args + 1] = 'LEFT'
    args[#args + 1] = 'COUNT'
    args[#args + 1] = 0 -- the count, set before each pop
    slices[#slices + 1] = args
  end
  local taken, slice = 0, 1
  while taken < limit and slice <= #slices do
    local args = slices[slice]
    args[#args] = math.min(limit - taken, BATCH)
    local popped = redis.call('LMPOP', unpack(args))
    if popped then
      local index, q, priority = unpack(where[popped[1]])
      hold(q, index, popped[2], priority, consumer, lease_ms, now, out)
      taken = taken + #popped[2]
    else
      slice = slice + 1
    end
  end
  return taken
end

-- Milliseconds until something may become fetchable (a delayed entry comes due or a lease
-- runs out), or -1 when nothing is scheduled.
local function wait_hint(blocks, now)
  local soonest = -1
  for _, q in ipairs(blocks) do
    for _, key in ipairs({q.delayed, q.leases}) do
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if first[2] then
        local wait = math.max(tonumber(first[2]) - now, 1)
        if soonest < 0 or wait < soonest then soonest = wait end
      end
    end
  end
  return soonest
end

-- The highest priority with a ready entry in any block, or -1.
local function best_priority(blocks)
  for priority = 9, 0, -1 do
    for _, q in ipairs(blocks) do
      if redis.call('LLEN', ready_key(q, priority)) > 0 then return priority end
    end
  end
  return -1
end

-- The fetch step shared by fetch and complete_fetch: reclaim, promote, take.
-- Returns {wait hint, best priority (peek only), deliveries...}.
local function fetch_blocks(first_key, consumer, limit, lease_ms, now)
  local blocks = {}
  for base = first_key, #KEYS - BLOCK, BLOCK do
    local q = queue_block(base)
    reclaim(q, now)
    promote(q, now)
    blocks[#blocks + 1] = q
  end
  local out = {-1, -1}
  local taken = take(blocks, consumer, limit, lease_ms, now, out)
  if taken == 0 then out[1] = wait_hint(blocks, now) end
  if limit == 0 then out[2] = best_priority(blocks) end
  return out
end
