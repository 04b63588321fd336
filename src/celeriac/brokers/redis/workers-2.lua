-- workers-2.lua: live workers and dead ones, by heartbeat expiry on Redis's clock.
--
-- KEYS[1]      workers sorted set: worker id -> expiry in ms
-- KEYS[2]      workers hash: worker id -> description
-- Returns: {{descriptions of live workers}, {ids of workers whose heartbeat expired}}
-- @include clock.lua

local now = now_ms()
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local infos = {}
for first = 1, #live, 1000 do -- 1000 per HMGET: Lua's unpack() fails past ~8000 values
  local last = math.min(first + 999, #live)
  for _, info in ipairs(redis.call('HMGET', KEYS[2], unpack(live, first, last))) do
    if info then infos[#infos + 1] = info end
  end
end
return {infos, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)}
