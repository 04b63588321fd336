-- replay-4.lua: send dead letters back to their queue with a fresh delivery count.
--
-- KEYS[1]      the queue's ready list of priority 0
-- KEYS[2]      the queue's dead-letter hash
-- KEYS[3]      the queue's dead-letter order sorted set
-- KEYS[4]      the queue's wake list
-- KEYS[5..]    index buckets, referred to by position from ARGV
-- ARGV         three per letter: compact id, KEYS index of its index bucket, body
-- A letter whose id is queued or held again (sent anew meanwhile) leaves the dead-letter
-- store without a second copy being queued.
-- Returns: the number of letters taken out of the dead-letter store.
-- @include entry.lua

local replayed, queued = 0, 0
for i = 1, #ARGV, 3 do
  local cid, bucket = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if redis.call('HDEL', KEYS[2], cid) == 1 then
    redis.call('ZREM', KEYS[3], cid)
    replayed = replayed + 1
    if redis.call('HSETNX', bucket, cid, '') == 1 then
      redis.call('RPUSH', KEYS[1], pack_entry(cid, 0, 0, ARGV[i + 2]))
      queued = queued + 1
    end
  end
end
if queued > 0 then
  redis.call('LPUSH', KEYS[4], '1')
  redis.call('LTRIM', KEYS[4], 0, 15)
end
return replayed
