-- drop_workers-2.lua: forget workers whose heartbeat is still expired (the reaper has
-- released what they held); a worker that beat again meanwhile stays.
--
-- KEYS[1]      workers sorted set: worker id -> expiry in ms
-- KEYS[2]      workers hash: worker id -> description
-- ARGV[1..]    worker ids
-- Returns: how many were forgotten.
-- @include clock.lua

local now = now_ms()
local dropped = 0
for _, worker in ipairs(ARGV) do
  local expiry = redis.call('ZSCORE', KEYS[1], worker)
  if expiry and tonumber(expiry) <= now then
    redis.call('ZREM', KEYS[1], worker)
    redis.call('HDEL', KEYS[2], worker)
    dropped = dropped + 1
  end
end
return dropped
