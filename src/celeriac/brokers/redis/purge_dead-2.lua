-- purge_dead-2.lua: delete every dead letter of one queue.
--
-- KEYS[1]      the queue's dead-letter hash
-- KEYS[2]      the queue's dead-letter order sorted set
-- Returns: how many were deleted.

local count = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return count
