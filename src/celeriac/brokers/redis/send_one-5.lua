-- send_one-5.lua: store one new message on a standalone Redis (one delay()); ignore an id
-- already queued, held or finished. What send-2.lua does for a batch of one, in direct
-- mode, with none of a batch's work: no argument loop, no tables, no EXISTS before the
-- result check. Redis 7.0 spends ~3 µs on every redis.call and on every table a script
-- builds; send-2 cost Redis ~26 µs per delay() and this ~18.5 (docs/benchmarks.md,
-- "One delay(), its own script"). tests/redis/test_send_one.py holds the two equal.
--
-- KEYS[1]  the queue's wake list (includes/queue.lua)
-- KEYS[2]  the queue's delayed set
-- KEYS[3]  the ready list of the message's priority
-- KEYS[4]  the message's index bucket
-- KEYS[5]  the task's result key
-- ARGV[1]  due time in ms (0: now)
-- ARGV[2]  the entry (includes/entry.lua), packed by the client; the compact id is read from it
-- Returns: 1 when the message was stored, 0 when its id was already known.
-- @include clock.lua
-- @include wake.lua

local entry = ARGV[2]
local l1, l2 = string.byte(entry, 6, 7) -- the entry's id length
local cid = string.sub(entry, 8, 7 + l1 * 256 + l2)
if redis.call('HSETNX', KEYS[4], cid, '') == 0 then return 0 end -- queued or held
if redis.call('GETRANGE', KEYS[5], 0, 0) == 'F' then -- finished: leave the index as it was
  redis.call('HDEL', KEYS[4], cid)
  return 0
end
local due = tonumber(ARGV[1])
if due > 0 and due > now_ms() then
  redis.call('ZADD', KEYS[2], due, entry)
  return 1
end
-- A short list may have idle fetchers blocked on it; a long one already woke them.
if redis.call('RPUSH', KEYS[3], entry) <= WAKE_CAP then push_wake(KEYS[1], 1) end
return 1
