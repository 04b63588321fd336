-- rate_admit-1.lua: admit one start if fewer than limit were admitted in the last period
-- (an exact sliding window, on Redis's clock), and record it.
--
-- KEYS[1]      admissions: sorted set, member -> admission time in microseconds
-- ARGV[1]      limit
-- ARGV[2]      period in microseconds
-- Returns: 0 admitted; else microseconds until a start would be admitted (nothing recorded).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - period))
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local oldest = redis.call('ZREVRANGE', KEYS[1], limit - 1, limit - 1, 'WITHSCORES')
  return math.max(math.ceil(tonumber(oldest[2]) + period - now), 1)
end
-- The count keeps members distinct when two admissions share a microsecond.
redis.call('ZADD', KEYS[1], string.format('%.0f', now), string.format('%.0f:%d', now, count))
redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000) + 1000)
return 0
