-- fetch-15.lua: take due messages under a lease, atomically (the atomic fetch invariant).
--
-- KEYS[1..15]  the queue block (includes/queue.lua) of the first queue asked for; each
--              further queue adds a block of 15 (KEYS[16..30], ...), in the caller's order.
--              Several blocks only where one script may touch them all (standalone Redis)
-- ARGV[1]      consumer (worker id) that holds the leases
-- ARGV[2]      limit: messages to take at most; 0 only peeks
-- ARGV[3]      lease length in ms
-- Before taking, each queue's expired leases are released and its due delayed messages
-- promoted, all on Redis's clock.
-- Returns: {wait hint in ms (-1: nothing scheduled, or something was taken),
--           best ready priority when peeking (else -1),
--           then six per message: block number (1-based), compact id, token, deliveries,
--           priority, body}
-- @include clock.lua
-- @include entry.lua
-- @include wake.lua
-- @include queue.lua

return fetch_blocks(0, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), now_ms())
