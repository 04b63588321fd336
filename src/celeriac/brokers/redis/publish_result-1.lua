-- publish_result-1.lua: copy a committed final result from a queue's outbox to its result
-- key and wake its waiters (Cluster: the result key lives in another slot than the queue).
-- Idempotent: publishing the same committed result twice changes nothing.
--
-- KEYS[1]      the task's result key
-- ARGV[1]      the result bytes
-- ARGV[2]      time to live in ms
-- ARGV[3]      the channel that wakes waiters of this task id
-- Returns: 1.
-- The wake-up carries one byte, never the result: a large result would overflow a
-- subscriber's output buffer and Redis would drop the subscriber (and the wake-up).
-- @include notify.lua

redis.call('SET', KEYS[1], 'F' .. ARGV[1], 'PX', ARGV[2])
notify(ARGV[3])
return 1
