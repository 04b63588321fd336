-- requeue-15.lua: put a held message back, due now or after a delay (fenced).
--
-- KEYS[1..15]  the queue block (includes/queue.lua)
-- ARGV[1]      compact id
-- ARGV[2]      fencing token
-- ARGV[3]      delay in ms (0: due now, at the tail of its ready list)
-- ARGV[4]      'count': keep the delivery count (a failure);
--              'uncount': take back this hand-out (shutdown, deferral);
--              'replace': new body in ARGV[5], count reset to 0 (a retry);
--              'rewrite': new body in ARGV[5], this hand-out taken back (a deferral that
--              rewrote the message: a task that crashes its worker must still reach the
--              dead-letter queue, however often a rate limit put it back)
-- ARGV[5]      the new body for 'replace' and 'rewrite', else ''
-- ARGV[6]      optional: '1' puts a message due now at the head of its ready list (given
--              back unstarted: where it was), else at the tail
-- Returns: 1 requeued; -1 LEASE_LOST (nothing changed); -2 BAD_ARGUMENT (unknown mode).
-- @include clock.lua
-- @include entry.lua
-- @include wake.lua
-- @include queue.lua

local q = queue_block(0)
local cid, mode = ARGV[1], ARGV[4]
local token, _, priority, deliveries, body = held(q, cid)
if token ~= ARGV[2] then return -1 end
if mode == 'replace' then
  body, deliveries = ARGV[5], 0
elseif mode == 'rewrite' then
  body, deliveries = ARGV[5], math.max(deliveries - 1, 0)
elseif mode == 'uncount' then
  deliveries = math.max(deliveries - 1, 0)
elseif mode ~= 'count' then
  return -2
end
local now = now_ms()
local due = now + tonumber(ARGV[3])
unhold(q, cid)
if ARGV[6] == '1' and due <= now then
  redis.call('LPUSH', ready_key(q, priority), pack_entry(cid, priority, deliveries, body))
else
  place(q, pack_entry(cid, priority, deliveries, body), priority, due, now)
end
if due <= now then wake(q, 1) end
return 1
