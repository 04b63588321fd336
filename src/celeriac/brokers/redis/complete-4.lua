-- complete-4.lua: acknowledge a held message and store its final result, atomically.
--
-- KEYS[1]      the queue's held hash
-- KEYS[2]      the queue's leases sorted set
-- KEYS[3]      the index bucket of the id
-- KEYS[4]      result target: the result key ('direct') or the queue's outbox ('outbox')
-- ARGV[1]      compact id
-- ARGV[2]      fencing token from the fetch
-- ARGV[3..7]   result spec (includes/result.lua)
-- Returns: 1 committed; -1 LEASE_LOST: the token no longer holds the lease, nothing changed.
-- @include notify.lua
-- @include result.lua
-- @include settle.lua

local code = settle(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
if code == 1 then commit_result(KEYS[4], result_spec(3), ARGV[1]) end
return code
