-- store_result-1.lua: store a non-final state (STARTED, RETRY, progress) unless a final
-- result exists; a late progress update never hides a task's outcome.
--
-- KEYS[1]      the task's result key ('F' + bytes: final, 'P' + bytes: not final)
-- ARGV[1]      the result bytes
-- ARGV[2]      time to live in ms
-- Returns: 1 stored; 0 a final result exists (left as it is).

if redis.call('GETRANGE', KEYS[1], 0, 0) == 'F' then return 0 end
redis.call('SET', KEYS[1], 'P' .. ARGV[1], 'PX', ARGV[2])
return 1
