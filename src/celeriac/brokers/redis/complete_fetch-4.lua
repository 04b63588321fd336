-- complete_fetch-4.lua: complete one message and take the next ones in the same call, so a
-- busy worker pays one round trip per task (like BullMQ's moveToFinished).
--
-- KEYS[1..4]   as complete-4.lua: held, leases, index bucket, result target
-- KEYS[5..]    one queue block of 15 keys per queue to fetch from (as fetch-15.lua)
-- ARGV[1]      compact id
-- ARGV[2]      fencing token
-- ARGV[3..7]   result spec (includes/result.lua)
-- ARGV[8]      consumer
-- ARGV[9]      limit
-- ARGV[10]     lease length in ms
-- Returns: {1 committed or -1 LEASE_LOST, then the reply of fetch-15.lua}. The fetch
-- happens either way: a worker that lost one lease can still take new work.
-- @include clock.lua
-- @include entry.lua
-- @include result.lua
-- @include settle.lua
-- @include queue.lua

local code = settle(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
if code == 1 then commit_result(KEYS[4], result_spec(3), ARGV[1]) end
local reply = fetch_blocks(4, ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), now_ms())
table.insert(reply, 1, code)
return reply
