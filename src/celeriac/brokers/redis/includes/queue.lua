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
local BATCH = 1000 -- entries moved per step, so one call never blocks Redis for long

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

-- Move delayed entries that came due to the tail of their ready lists.
local function promote(q, now)
  local due = redis.call('ZRANGEBYSCORE', q.delayed, '-inf', now, 'LIMIT', 0, BATCH)
  for _, entry in ipairs(due) do
    local _, priority = unpack_entry(entry)
    redis.call('RPUSH', ready_key(q, priority or 0), entry)
  end
  if #due > 0 then redis.call('ZREM', q.delayed, unpack(due)) end
end

-- Hold popped entries (all from one list of queue q) under new leases, with one INCRBY
-- for their fencing tokens, one HSET and one ZADD; append (block, cid, token, deliveries,
-- priority, body) per entry to out.
local function hold(q, index, entries, list_priority, consumer, lease_ms, now, out)
  local last = redis.call('INCRBY', q.seq, #entries)
  local records, deadlines = {}, {}
  for i, entry in ipairs(entries) do
    local cid, priority, deliveries, body = unpack_entry(entry)
    if not cid then
      -- Bytes pushed by hand: deliver them as they are under a fresh id, so the worker can
      -- dead-letter them with their raw bytes instead of the broker choking on them.
      cid, priority, deliveries, body = 'raw-' .. redis.call('INCR', q.seq), list_priority, 0, entry
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
-- LMPOP (Redis 7) pops from the first non-empty list of all of them in one call.
local function take(blocks, consumer, limit, lease_ms, now, out)
  local args, where = {0}, {}
  for priority = 9, 0, -1 do
    for index, q in ipairs(blocks) do
      local key = ready_key(q, priority)
      args[#args + 1] = key
      where[key] = {index, q, priority}
    end
  end
  args[1] = #args - 1
  args[#args + 1] = 'LEFT'
  args[#args + 1] = 'COUNT'
  args[#args + 1] = 0 -- the count, set before each pop
  local taken = 0
  while taken < limit do
    args[#args] = limit - taken
    local popped = redis.call('LMPOP', unpack(args))
    if not popped then break end
    local index, q, priority = unpack(where[popped[1]])
    hold(q, index, popped[2], priority, consumer, lease_ms, now, out)
    taken = taken + #popped[2]
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
