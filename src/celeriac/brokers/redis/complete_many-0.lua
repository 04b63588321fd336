-- complete_many-0.lua: complete several held messages (each fenced, each with its final
-- result) and take the next ones, in one call: a worker running short tasks pays one round
-- trip per batch instead of one per task (as BullMQ's moveToFinished, for many at once).
--
-- KEYS[1..m]   the keys of the completions (held hashes, leases sets, index buckets,
--              result targets), each passed once, referred to by position from ARGV
-- KEYS[m+1..]  one queue block of 15 keys per queue to fetch from (as fetch-15.lua); none
--              when nothing is to be fetched
-- ARGV[1]      m: how many KEYS belong to the completions
-- ARGV[2]      consumer
-- ARGV[3]      limit: messages to take at most
-- ARGV[4]      lease length in ms
-- ARGV[5]      KEYS index of the result waiters' set (keys.py: waiting): a wake-up is
--              published only while it is not empty; 0: always publish (Cluster: the
--              client publishes after copying the result)
-- ARGV[6..]    eleven per completion: KEYS index of its held hash, of its leases set, of
--              its index bucket; compact id; fencing token; KEYS index of its result
--              target; result spec (five, includes/result.lua)
-- Returns: {one code per completion (1 committed, -1 LEASE_LOST), then the reply of
-- fetch-15.lua} when there are queue blocks, else the codes alone. Every completion is
-- tried: a lost lease on one never holds back the others.
-- @include clock.lua
-- @include entry.lua
-- @include notify.lua
-- @include result.lua
-- @include settle.lua
-- @include wake.lua
-- @include queue.lua

local reply = settle_many(6, 11)
local waiting = tonumber(ARGV[5])
-- Publishing costs Redis ~5 us per result even with nobody subscribed: skip it when no
-- waiter is registered (waiters register before they look at the result key).
local publish = waiting == 0 or redis.call('ZCARD', KEYS[waiting]) > 0
for n, code in ipairs(reply) do
  if code == 1 then
    local i = 6 + (n - 1) * 11
    commit_result_at(KEYS[tonumber(ARGV[i + 5])], i + 6, ARGV[i + 3], publish)
  end
end
local first_block = tonumber(ARGV[1])
if #KEYS > first_block then
  local fetched = fetch_blocks(first_block, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), now_ms())
  for _, value in ipairs(fetched) do reply[#reply + 1] = value end
end
return reply
