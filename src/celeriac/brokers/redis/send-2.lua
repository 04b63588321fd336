-- send-2.lua: store new messages in one queue; ignore ids already queued, held or finished.
--
-- KEYS[1]      the queue's wake list (includes/queue.lua)
-- KEYS[2]      the queue's delayed set
-- KEYS[3..]    ready lists, index buckets and result targets, each passed once and
--              referred to by position from ARGV (a message names only the keys it needs)
-- ARGV[1]      result mode: 'direct' (targets are result keys) or 'outbox' (the target is
--              the queue's outbox hash; Cluster)
-- ARGV[2..]    six per message:
--                compact id, KEYS index of its ready list (the one of its priority), KEYS
--                index of its index bucket, KEYS index of its result target, due time in
--                ms (0: now), the entry (includes/entry.lua), packed by the client
-- Returns: an array with 1 for each message stored, 0 for each id that was already known.
-- Messages for one ready list are pushed with one variadic RPUSH, in ARGV order.
-- @include clock.lua
-- @include result.lua
-- @include wake.lua

local CHUNK = 1000 -- entries per RPUSH (Lua's unpack has a limit)
local mode = ARGV[1]
local now = nil -- Redis's clock, read only when a message has a due time
local created, pending, order = {}, {}, {}
for i = 2, #ARGV, 6 do
  local cid, bucket, target = ARGV[i], KEYS[tonumber(ARGV[i + 2])], KEYS[tonumber(ARGV[i + 3])]
  if redis.call('HSETNX', bucket, cid, '') == 0 then
    created[#created + 1] = 0 -- queued or held
  elseif has_final(target, mode, cid) then
    redis.call('HDEL', bucket, cid) -- finished: leave the index as it was
    created[#created + 1] = 0
  else
    local due, entry = tonumber(ARGV[i + 4]), ARGV[i + 5]
    if due > 0 then now = now or now_ms() end
    if due > 0 and due > now then
      redis.call('ZADD', KEYS[2], due, entry)
    else
      local ready = KEYS[tonumber(ARGV[i + 1])]
      local list = pending[ready]
      if not list then
        list = {}
        pending[ready] = list
        order[#order + 1] = ready
      end
      list[#list + 1] = entry
    end
    created[#created + 1] = 1
  end
end
local woken = 0
for _, ready in ipairs(order) do
  local list = pending[ready]
  for first = 1, #list, CHUNK do
    local last = math.min(first + CHUNK - 1, #list)
    local length = redis.call('RPUSH', ready, unpack(list, first, last))
    -- A short list may have idle fetchers blocked on it; a long one already woke them.
    local before = length - (last - first + 1)
    if before < WAKE_CAP then woken = woken + math.min(length, WAKE_CAP) - before end
  end
end
push_wake(KEYS[1], woken)
return created
