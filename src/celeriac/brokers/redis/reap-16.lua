-- reap-16.lua: release what dead workers held and what expired leases held, in one queue;
-- report results parked in the outbox whose copy to their result key may have been lost.
--
-- KEYS[1..15]  the queue block (includes/queue.lua)
-- KEYS[16]     the queue's outbox hash (compact id -> '<ttl ms>:' .. result)
-- ARGV[1..]    ids of workers whose heartbeat expired (consumers whose leases are void)
-- Returns: {released count, then pairs from the outbox: compact id, record} (at most 100
-- pairs; the client copies them to their result keys and removes them).
-- @include clock.lua
-- @include entry.lua
-- @include wake.lua
-- @include queue.lua

local q = queue_block(0)
local now = now_ms()
local released = reclaim(q, now)
if #ARGV > 0 then
  local dead = {}
  for _, worker in ipairs(ARGV) do dead[worker] = true end
  -- Only when a worker died: walk the held hash (in-flight messages, a short list).
  local all = redis.call('HGETALL', q.held)
  for i = 1, #all, 2 do
    local _, consumer = cmsgpack.unpack(all[i + 1])
    if dead[consumer] then released = released + release(q, all[i], now) end
  end
end
wake(q, released)
local reply = {released}
local parked = redis.call('HRANDFIELD', KEYS[16], 100, 'WITHVALUES')
for _, item in ipairs(parked) do reply[#reply + 1] = item end
return reply
