-- stats-14.lua: counts for one queue, on Redis's clock.
--
-- KEYS[1..10]  ready lists, priority 0..9
-- KEYS[11]     delayed sorted set
-- KEYS[12]     held hash
-- KEYS[13]     dead-letter hash
-- KEYS[14]     lease deadlines (sorted set, one member per held message)
-- Returns: {ready, delayed (not yet due), in flight (held under a lease still running),
--           dead}. Ready includes the delayed messages already due and the held ones whose
--           lease ran out: the next fetch hands both out (promote, reclaim). Counted in
--           flight, the work of a worker killed with -9 read "in flight" for as long as no
--           worker was left to fetch it, though nothing ran it.
-- @include clock.lua

local now = now_ms()
local ready = 0
for i = 1, 10 do ready = ready + redis.call('LLEN', KEYS[i]) end
local due = redis.call('ZCOUNT', KEYS[11], '-inf', now)
local delayed = redis.call('ZCARD', KEYS[11]) - due
local held = redis.call('HLEN', KEYS[12])
-- At most one per held message: a lease left without its message is no message at all.
local lapsed = math.min(redis.call('ZCOUNT', KEYS[14], '-inf', now), held)
return {ready + due + lapsed, delayed, held - lapsed, redis.call('HLEN', KEYS[13])}
