-- wake.lua: the wake list that idle fetchers block on (BLPOP), one token per fetcher to wake.

local WAKE_CAP = 16 -- tokens kept at most; enough to wake every fetcher of one host

-- Push up to count wake tokens; trim only when tokens piled up with nobody blocked.
local function push_wake(key, count)
  if count <= 0 then return end
  local tokens = {}
  for i = 1, math.min(count, WAKE_CAP) do tokens[i] = '1' end
  if redis.call('LPUSH', key, unpack(tokens)) > WAKE_CAP then
    redis.call('LTRIM', key, 0, WAKE_CAP - 1)
  end
end
