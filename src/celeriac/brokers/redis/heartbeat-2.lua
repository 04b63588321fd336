-- heartbeat-2.lua: record that a worker is alive for ttl more milliseconds of Redis time.
--
-- KEYS[1]      workers sorted set: worker id -> expiry in ms
-- KEYS[2]      workers hash: worker id -> description (JSON written by the client)
-- ARGV[1]      worker id
-- ARGV[2]      ttl in ms
-- ARGV[3]      description
-- Returns: 1.
-- A full Redis (maxmemory, noeviction) must not refuse it: the reaper still runs then, and
-- would declare live workers dead and hand their running tasks to others. It overwrites
-- one entry per worker, so it cannot grow memory with the queue.
-- @allow-oom
-- @include clock.lua

redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
