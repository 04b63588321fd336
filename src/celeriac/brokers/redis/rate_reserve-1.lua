-- rate_reserve-1.lua: reserve the next slot of a GCRA rate limiter, on Redis's clock.
--
-- KEYS[1]      the limiter: the theoretical arrival time of the next slot, in microseconds
-- ARGV[1]      slot interval in microseconds (1 / rate)
-- ARGV[2]      burst: how many slots may be taken at once
-- Returns: microseconds until the reserved slot (0: now). The reservation is final.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local slot = math.max(now, tat - (burst - 1) * interval)
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
  'PX', math.ceil((next_tat - now) / 1000) + 1000)
return math.floor(slot - now)
