-- store_result-1.lua: store a non-final state (STARTED, RETRY, progress) unless a final
-- result or a revoke mark exists; a late progress update never hides a task's outcome,
-- nor a revoke.
--
-- KEYS[1]      the task's result key ('F' + bytes: final, 'R' + bytes: revoke mark, see
--              mark_revoked-1.lua; 'P' + bytes: not final)
-- ARGV[1]      the result bytes
-- ARGV[2]      time to live in ms
-- Returns: 1 stored; 0 a final result or a revoke mark exists (left as it is).

local head = redis.call('GETRANGE', KEYS[1], 0, 0)
if head == 'F' or head == 'R' then return 0 end
redis.call('SET', KEYS[1], 'P' .. ARGV[1], 'PX', ARGV[2])
return 1
