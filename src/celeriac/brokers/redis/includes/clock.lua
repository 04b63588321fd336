-- clock.lua: Redis's own clock. Leases and due times are computed here, never from a
-- worker's clock, so a worker with a skewed clock cannot shorten or stretch a lease.

-- Milliseconds since the Unix epoch, as this Redis server sees them.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
