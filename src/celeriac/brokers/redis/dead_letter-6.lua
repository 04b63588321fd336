-- dead_letter-6.lua: move a held message to the dead-letter store (fenced), storing its
-- final result in the same step.
--
-- KEYS[1]      the queue's held hash
-- KEYS[2]      the queue's leases sorted set
-- KEYS[3]      the index bucket of the id
-- KEYS[4]      result target (includes/result.lua)
-- KEYS[5]      the queue's dead-letter hash: compact id -> record
-- KEYS[6]      the queue's dead-letter order: sorted set, compact id -> dead_at in ms
-- ARGV[1]      compact id of the held message
-- ARGV[2]      fencing token
-- ARGV[3..7]   result spec
-- ARGV[8]      compact id of the dead letter
-- ARGV[9]      dead_at in ms (orders the list, newest first)
-- ARGV[10]     the dead-letter record (msgpack written by the client; not read here)
-- Returns: 1 dead-lettered; -1 LEASE_LOST (nothing changed).
-- @include notify.lua
-- @include result.lua
-- @include settle.lua

local code = settle(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
if code ~= 1 then return code end
redis.call('HSET', KEYS[5], ARGV[8], ARGV[10])
redis.call('ZADD', KEYS[6], ARGV[9], ARGV[8])
commit_result(KEYS[4], result_spec(3), ARGV[1])
return 1
