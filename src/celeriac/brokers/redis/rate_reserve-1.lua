-- rate_reserve-1.lua: reserve the next slot of a GCRA rate limiter, on Redis's clock.
--
-- KEYS[1]      the limiter: the theoretical arrival time of the next slot, in microseconds
-- ARGV[1]      slot interval in microseconds (1 / rate)
-- ARGV[2]      burst: how many slots may be taken at once
-- ARGV[3]      optional: the longest wait to reserve, in microseconds. A slot further
--              ahead is not reserved (the limiter is left as it was); absent: no limit,
--              as for callers that send two arguments
-- Returns: microseconds until the next slot (0: now); reserved, and final, unless over
-- ARGV[3].

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local slot = math.max(now, tat - (burst - 1) * interval)
local wait = math.floor(slot - now)
if max_wait ~= nil and wait > max_wait then
  return wait
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
  'PX', math.ceil((next_tat - now) / 1000) + 1000)
return wait
