-- dead_letters-2.lua: the newest dead letters of one queue.
--
-- KEYS[1]      the queue's dead-letter hash
-- KEYS[2]      the queue's dead-letter order sorted set
-- ARGV[1]      how many at most
-- Returns: the records (msgpack written by the client), newest first.

local CHUNK = 1000 -- ids per HMGET: Lua's unpack() fails past ~8000 values
local ids = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
local found = {}
for first = 1, #ids, CHUNK do
  local last = math.min(first + CHUNK - 1, #ids)
  local records = redis.call('HMGET', KEYS[1], unpack(ids, first, last))
  for _, record in ipairs(records) do
    if record then found[#found + 1] = record end
  end
end
return found
