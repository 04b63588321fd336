-- renew-2.lua: extend leases that the caller still holds (fenced).
--
-- KEYS[1]      the queue's held hash
-- KEYS[2]      the queue's leases sorted set
-- ARGV[1]      new lease length in ms, from now on Redis's clock
-- ARGV[2..]    pairs: compact id, fencing token
-- Returns: the 1-based numbers of the pairs whose lease is lost (held by another token, or
-- no longer held at all).
-- A full Redis (maxmemory, noeviction) must not refuse it, or leases lapse under live
-- workers and their tasks run twice. It overwrites one entry per held message.
-- @allow-oom
-- @include clock.lua

local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local record = redis.call('HGET', KEYS[1], ARGV[i])
  if record and cmsgpack.unpack(record) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[2], 'XX', deadline, ARGV[i])
  else
    lost[#lost + 1] = i / 2
  end
end
return lost
