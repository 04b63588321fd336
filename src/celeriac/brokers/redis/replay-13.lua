-- replay-13.lua: send dead letters back to their queue with a fresh delivery count.
--
-- KEYS[1..10]  the queue's ready lists, priority 0..9
-- KEYS[11]     the queue's dead-letter hash
-- KEYS[12]     the queue's dead-letter order sorted set
-- KEYS[13]     the queue's wake list
-- KEYS[14..]   index buckets, referred to by position from ARGV
-- ARGV         four per letter: compact id, KEYS index of its index bucket, priority
--              (0..9: the message's own, read by the client), body (the client may have
--              renewed it: a fresh expiry and retries)
-- A letter whose id is queued or held again (sent anew meanwhile) leaves the dead-letter
-- store without a second copy being queued.
-- Returns: the number of letters taken out of the dead-letter store.
-- @include entry.lua

local replayed, queued = 0, 0
for i = 1, #ARGV, 4 do
  local cid, bucket = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if redis.call('HDEL', KEYS[11], cid) == 1 then
    redis.call('ZREM', KEYS[12], cid)
    replayed = replayed + 1
    if redis.call('HSETNX', bucket, cid, '') == 1 then
      local priority = tonumber(ARGV[i + 2])
      redis.call('RPUSH', KEYS[1 + priority], pack_entry(cid, priority, 0, ARGV[i + 3]))
      queued = queued + 1
    end
  end
end
if queued > 0 then
  redis.call('LPUSH', KEYS[13], '1')
  redis.call('LTRIM', KEYS[13], 0, 15)
end
return replayed
