-- send-15.lua: store new messages in one queue; ignore ids already queued, held or finished.
--
-- KEYS[1..15]  the queue block (see includes/queue.lua)
-- KEYS[16..]   index buckets and result targets, referred to by position from ARGV
-- ARGV[1]      result mode: 'direct' (targets are result keys) or 'outbox' (the target is
--              the queue's outbox hash; Cluster)
-- ARGV[2..]    six per message:
--                compact id, KEYS index of its index bucket, KEYS index of its result
--                target, priority (0..9), due time in ms (0: now), body
-- Returns: an array with 1 for each message stored, 0 for each id that was already known.
-- @include clock.lua
-- @include entry.lua
-- @include result.lua
-- @include queue.lua

local q = queue_block(0)
local mode = ARGV[1]
local now = nil -- Redis's clock, read only when a message has a due time
local created, woken = {}, 0
for i = 2, #ARGV, 6 do
  local cid, bucket, target = ARGV[i], KEYS[tonumber(ARGV[i + 1])], KEYS[tonumber(ARGV[i + 2])]
  if redis.call('HSETNX', bucket, cid, '') == 0 then
    created[#created + 1] = 0 -- queued or held
  elseif has_final(target, mode, cid) then
    redis.call('HDEL', bucket, cid) -- finished: leave the index as it was
    created[#created + 1] = 0
  else
    local priority, due = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    local entry = pack_entry(cid, priority, 0, ARGV[i + 5])
    if due > 0 then now = now or now_ms() end
    if due > 0 and due > now then
      redis.call('ZADD', q.delayed, due, entry)
    elseif redis.call('RPUSH', ready_key(q, priority), entry) <= WAKE_CAP then
      -- A short list may have idle fetchers blocked on it; a long one already woke them.
      woken = woken + 1
    end
    created[#created + 1] = 1
  end
end
wake(q, woken)
return created
