-- purge_dead-2.lua: delete every dead letter of one queue.
--
-- KEYS[1]      the queue's dead-letter hash
-- KEYS[2]      the queue's dead-letter order sorted set
-- Returns: how many were deleted.
--
-- UNLINK, not DEL: DEL frees a queue's letters (raw bytes, reasons, tracebacks) in the
-- call, and a million of them stalled every client of the server for the whole of it.

local count = redis.call('HLEN', KEYS[1])
redis.call('UNLINK', KEYS[1], KEYS[2])
return count
