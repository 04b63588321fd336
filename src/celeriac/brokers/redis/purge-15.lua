-- purge-15.lua: delete waiting messages (ready and delayed) of one queue, never held ones,
-- and forget their ids in the index. Called repeatedly until it returns less than the limit.
--
-- KEYS[1..15]  the queue block (includes/queue.lua)
-- KEYS[16..]   every index bucket of the queue, in bucket order (1021 keys)
-- ARGV[1]      how many entries to delete at most in this call
-- Returns: the number of entries deleted.
-- @include entry.lua
-- @include index.lua
-- @include wake.lua
-- @include queue.lua

local q = queue_block(0)
local limit = tonumber(ARGV[1])
local buckets = #KEYS - BLOCK
local deleted = 0

local function forget(entries)
  for _, entry in ipairs(entries) do
    local cid = unpack_entry(entry)
    if cid then redis.call('HDEL', KEYS[BLOCK + 1 + index_bucket(cid, buckets)], cid) end
  end
  deleted = deleted + #entries
end

for priority = 0, 9 do
  if deleted >= limit then break end
  local entries = redis.call('LPOP', ready_key(q, priority), limit - deleted)
  if entries then forget(entries) end
end
if deleted < limit then
  local popped = redis.call('ZPOPMIN', q.delayed, limit - deleted)
  local entries = {}
  for i = 1, #popped, 2 do entries[#entries + 1] = popped[i] end
  forget(entries)
end
return deleted
