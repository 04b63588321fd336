-- stats-13.lua: counts for one queue, on Redis's clock.
--
-- KEYS[1..10]  ready lists, priority 0..9
-- KEYS[11]     delayed sorted set
-- KEYS[12]     held hash
-- KEYS[13]     dead-letter hash
-- Returns: {ready (including delayed ones already due), delayed (not yet due), held, dead}
-- @include clock.lua

local now = now_ms()
local ready = 0
for i = 1, 10 do ready = ready + redis.call('LLEN', KEYS[i]) end
local due = redis.call('ZCOUNT', KEYS[11], '-inf', now)
local delayed = redis.call('ZCARD', KEYS[11]) - due
return {ready + due, delayed, redis.call('HLEN', KEYS[12]), redis.call('HLEN', KEYS[13])}
