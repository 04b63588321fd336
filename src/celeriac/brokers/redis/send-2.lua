-- send-2.lua: store new messages in one queue; ignore ids already queued, held or finished.
--
-- KEYS[1]      the queue's wake list (includes/queue.lua)
-- KEYS[2]      the queue's delayed set
-- KEYS[3..]    the ready lists of priorities ARGV[2] to the highest among the messages, in
--              priority order; then index buckets and result targets, each passed once
--              and referred to by position from ARGV (a message names only the keys it needs)
-- ARGV[1]      result mode: 'direct' (targets are result keys) or 'outbox' (the target is
--              the queue's outbox hash; Cluster)
-- ARGV[2]      the lowest priority among the messages (its ready list is KEYS[3])
-- ARGV[3..]    four per message:
--                KEYS index of its index bucket, KEYS index of its result target, due time
--                in ms (0: now), the entry (includes/entry.lua), packed by the client; the
--                compact id and the priority (which picks the ready list) are read from it
-- Returns: an array with 1 for each message stored, 0 for each id that was already known.
-- In direct mode, one EXISTS over every result key first: a batch of fresh ids (none has
-- a result key) then checks no message's result on its own (a GETRANGE per message).
-- Messages for one ready list are pushed with one variadic RPUSH, in ARGV order.
-- @include clock.lua
-- @include notify.lua
-- @include result.lua
-- @include wake.lua

local CHUNK = 1000 -- keys per EXISTS, entries per RPUSH (Lua's unpack has a limit)
local mode = ARGV[1]
local first_ready = 3 - tonumber(ARGV[2]) -- KEYS index of the ready list of priority 0
local now = nil -- Redis's clock, read only when a message has a due time
local created, pending, order = {}, {}, {}

-- Whether any message may have a final result: false when none of the result keys exists.
-- Nothing below writes a result key, so the answer holds for the whole script.
local function any_result_key()
  if mode ~= 'direct' then return true end -- the outbox hash: asked per id (HEXISTS)
  local targets = {}
  for i = 3, #ARGV, 4 do targets[#targets + 1] = KEYS[tonumber(ARGV[i + 1])] end
  for first = 1, #targets, CHUNK do
    local last = math.min(first + CHUNK - 1, #targets)
    if redis.call('EXISTS', unpack(targets, first, last)) > 0 then return true end
  end
  return false
end

local maybe_final = any_result_key()
for i = 3, #ARGV, 4 do
  local entry = ARGV[i + 3]
  -- The entry's header (includes/entry.lua): priority at byte 3, id length at bytes 6-7.
  local priority, l1, l2 = string.byte(entry, 3), string.byte(entry, 6, 7)
  local cid, bucket = string.sub(entry, 8, 7 + l1 * 256 + l2), KEYS[tonumber(ARGV[i])]
  if redis.call('HSETNX', bucket, cid, '') == 0 then
    created[#created + 1] = 0 -- queued or held
  elseif maybe_final and has_final(KEYS[tonumber(ARGV[i + 1])], mode, cid) then
    redis.call('HDEL', bucket, cid) -- finished: leave the index as it was
    created[#created + 1] = 0
  else
    local due = tonumber(ARGV[i + 2])
    if due > 0 then now = now or now_ms() end
    if due > 0 and due > now then
      redis.call('ZADD', KEYS[2], due, entry)
    else
      local ready = KEYS[first_ready + priority]
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
