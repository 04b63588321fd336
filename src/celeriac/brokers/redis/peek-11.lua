-- peek-11.lua: read the messages waiting in one queue, without taking them.
--
-- KEYS[1..10]  ready lists, priority 0..9
-- KEYS[11]     delayed sorted set
-- ARGV[1]      the most messages to return
-- Returns: five values per message, the ready ones first in the order a fetch takes them
--          (priority 9 down to 0, each list from its head), then the delayed ones by due
--          time: compact id ('' for bytes that are not an entry: pushed by hand), priority,
--          deliveries, body (the whole bytes when not an entry), due time in ms as text
--          ('-1' for a ready one).
-- Reads at most ARGV[1] elements: LRANGE and ZRANGEBYSCORE with LIMIT, never a whole list.
-- @include entry.lua

local limit = tonumber(ARGV[1])
local reply = {}
local count = 0

local function add(raw, list_priority, due)
  local cid, priority, deliveries, body = unpack_entry(raw)
  if cid then
    reply[#reply + 1] = cid
    reply[#reply + 1] = priority
    reply[#reply + 1] = deliveries
    reply[#reply + 1] = body
  else
    reply[#reply + 1] = ''
    reply[#reply + 1] = list_priority
    reply[#reply + 1] = 0
    reply[#reply + 1] = raw
  end
  reply[#reply + 1] = due
  count = count + 1
end

for priority = 9, 0, -1 do
  if count >= limit then break end
  for _, raw in ipairs(redis.call('LRANGE', KEYS[priority + 1], 0, limit - count - 1)) do
    add(raw, priority, '-1')
  end
end
if count < limit then
  local later = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0,
    limit - count)
  for i = 1, #later, 2 do add(later[i], 0, later[i + 1]) end
end
return reply
