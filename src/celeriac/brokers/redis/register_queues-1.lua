-- register_queues-1.lua: add queue names to the set of known queues (what `celeriac
-- status`, `dlq list` and the reaper walk).
--
-- KEYS[1]      the set of queue names (keys.py: queues)
-- ARGV[1..]    queue names to add
-- Returns: 1.
-- A plain SADD is refused by a full Redis (maxmemory, noeviction): a worker started then
-- could never fetch. One small entry per queue cannot grow memory with the queue.
-- @allow-oom

redis.call('SADD', KEYS[1], unpack(ARGV))
return 1
