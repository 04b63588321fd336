-- peek-13.lua: read the messages waiting in one queue, without taking them or moving any.
--
-- KEYS[1..10]  ready lists, priority 0..9
-- KEYS[11]     delayed sorted set
-- KEYS[12]     held hash
-- KEYS[13]     lease deadlines
-- ARGV[1]      the most messages to return
-- ARGV[2]      the most bytes of bodies to return: reading stops at the message that passes
--              it (one message is always returned), so a queue of 200 KB bodies does not
--              hold Redis, and the reply, for seconds
-- Returns: five values per message, in the order the next fetches take them: for each
--          priority from 9 down to 0, its ready list from the head, then what a fetch
--          first moves to that list's tail (the held messages whose lease ran out, by
--          deadline; then the delayed ones that came due, by due time); after all
--          priorities, the delayed messages not yet due, by due time. Each: compact id
--          ('' for bytes that are not an entry: pushed by hand), priority, deliveries,
--          body (the whole bytes when not an entry), due time in ms as text ('-1' for
--          one on a ready list or under a lapsed lease).
-- Reads at most ARGV[1] elements of each kind: LRANGE in slices and ZRANGEBYSCORE with
-- LIMIT, never a whole list.
-- @include clock.lua
-- @include entry.lua

local SLICE = 100 -- list elements read at a time, so the byte budget is checked often
local limit, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local reply, count, bytes = {}, 0, 0

local function full()
  return count >= limit or (count > 0 and bytes >= budget)
end

local function add(cid, priority, deliveries, body, due)
  reply[#reply + 1] = cid
  reply[#reply + 1] = priority
  reply[#reply + 1] = deliveries
  reply[#reply + 1] = body
  reply[#reply + 1] = due
  count = count + 1
  bytes = bytes + #body
end

local function add_raw(raw, list_priority, due)
  local cid, priority, deliveries, body = unpack_entry(raw)
  if cid then
    add(cid, priority, deliveries, body, due)
  else
    add('', list_priority, 0, raw, due)
  end
end

-- What the next fetch moves to each list's tail before taking: reclaim, then promote.
local tails = {}
for priority = 0, 9 do tails[priority] = {} end
for _, cid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[13], '-inf', now, 'LIMIT', 0, limit)) do
  local record = redis.call('HGET', KEYS[12], cid)
  if record then -- a lease without its message is dropped by the reclaim
    local _, _, entry = cmsgpack.unpack(record)
    local _, priority = unpack_entry(entry)
    table.insert(tails[priority or 0], {entry, '-1'})
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do
  local _, priority = unpack_entry(due[i])
  table.insert(tails[priority or 0], {due[i], due[i + 1]})
end

for priority = 9, 0, -1 do
  local start = 0
  while not full() do
    local slice = redis.call('LRANGE', KEYS[priority + 1], start,
      start + math.min(SLICE, limit - count) - 1)
    for _, raw in ipairs(slice) do
      if full() then break end
      add_raw(raw, priority, '-1')
    end
    if #slice < SLICE then break end
    start = start + #slice
  end
  for _, moved in ipairs(tails[priority]) do
    if full() then break end
    add_raw(moved[1], priority, moved[2])
  end
end
if not full() then
  local later = redis.call('ZRANGEBYSCORE', KEYS[11], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT',
    0, limit - count)
  for i = 1, #later, 2 do
    if full() then break end
    add_raw(later[i], 0, later[i + 1])
  end
end
return reply
