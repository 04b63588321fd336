-- mark_revoked-1.lua: record a revoke in the task's result key at once, so the task reads
-- REVOKED before any worker takes its message; never over a final result.
--
-- A mark ('R' + bytes) is final for readers (get, wait) and for store_result-1.lua, but
-- not for send-2.lua's finished-id check (a revoked id sent later is still queued, and
-- the worker settles it REVOKED so that its workflow carries on), and a settle replaces
-- it with the outcome the task really had ('F' + bytes).
--
-- KEYS[1]      the task's result key ('F' + bytes: final, 'R': revoke mark, 'P': not final)
-- ARGV[1]      the REVOKED record bytes
-- ARGV[2]      time to live in ms
-- ARGV[3]      the pub/sub channel that wakes waiters of this task id
-- Returns: 1 marked; 0 a final result or a mark exists (left as it is).
-- @include notify.lua

local head = redis.call('GETRANGE', KEYS[1], 0, 0)
if head == 'F' or head == 'R' then return 0 end
redis.call('SET', KEYS[1], 'R' .. ARGV[1], 'PX', ARGV[2])
notify(ARGV[3])
return 1
