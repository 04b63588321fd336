-- dead_letters-2.lua: the newest dead letters of one queue.
--
-- KEYS[1]      the queue's dead-letter hash
-- KEYS[2]      the queue's dead-letter order sorted set
-- ARGV[1]      how many at most
-- Returns: the records (msgpack written by the client), newest first.

local ids = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then return {} end
local records = redis.call('HMGET', KEYS[1], unpack(ids))
local found = {}
for _, record in ipairs(records) do
  if record then found[#found + 1] = record end
end
return found
