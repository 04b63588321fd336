-- heartbeat-2.lua: record that a worker is alive for ttl more milliseconds of Redis time.
--
-- KEYS[1]      workers sorted set: worker id -> expiry in ms
-- KEYS[2]      workers hash: worker id -> description (JSON written by the client)
-- ARGV[1]      worker id
-- ARGV[2]      ttl in ms
-- ARGV[3]      description
-- Returns: 1.
-- @include clock.lua

redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
