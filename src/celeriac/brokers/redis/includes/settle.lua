-- settle.lua: the fenced end of a hand-out (complete, complete_fetch, dead_letter).

local LEASE_LOST = -1 -- ErrorCode.LEASE_LOST in scripts.py

-- Remove a held message if token still holds its lease; 1, or LEASE_LOST (nothing changed).
-- held, leases: the queue's hashes; bucket: the index bucket of cid.
local function settle(held_key, leases_key, bucket_key, cid, token)
  local record = redis.call('HGET', held_key, cid)
  if not record then return LEASE_LOST end
  local holder_token = cmsgpack.unpack(record)
  if holder_token ~= token then return LEASE_LOST end
  redis.call('HDEL', held_key, cid)
  redis.call('ZREM', leases_key, cid)
  redis.call('HDEL', bucket_key, cid)
  return 1
end

-- Settle many at once, described in ARGV from index first, stride values each: the KEYS
-- indexes of the held hash, leases set and index bucket, then the compact id and token.
-- Items sharing a held hash are checked with one HMGET and removed with one HDEL and one
-- ZREM per SETTLE_CHUNK items: Lua's unpack() fails past ~8000 values, and a failure here
-- would come after earlier groups were already settled, before any result was stored.
-- Returns one code per item, in order: 1, or LEASE_LOST (that item unchanged).
local SETTLE_CHUNK = 1000

local function settle_many(first, stride)
  local codes, groups, order = {}, {}, {}
  for i = first, #ARGV, stride do
    local held = ARGV[i]
    local group = groups[held]
    if not group then
      group = {}
      groups[held] = group
      order[#order + 1] = held
    end
    group[#group + 1] = i
  end
  for _, held in ipairs(order) do
    local group, cids = groups[held], {}
    for j, i in ipairs(group) do cids[j] = ARGV[i + 3] end
    local held_key = KEYS[tonumber(held)]
    local leases_key = KEYS[tonumber(ARGV[group[1] + 1])]
    for start = 1, #group, SETTLE_CHUNK do
      local stop = math.min(start + SETTLE_CHUNK - 1, #group)
      local records = redis.call('HMGET', held_key, unpack(cids, start, stop))
      local won = {}
      for j = start, stop do
        local i = group[j]
        local record = records[j - start + 1]
        local item = (i - first) / stride + 1
        if record and cmsgpack.unpack(record) == ARGV[i + 4] then
          codes[item] = 1
          won[#won + 1] = cids[j]
          redis.call('HDEL', KEYS[tonumber(ARGV[i + 2])], cids[j])
        else
          codes[item] = LEASE_LOST
        end
      end
      if #won > 0 then
        redis.call('HDEL', held_key, unpack(won))
        redis.call('ZREM', leases_key, unpack(won))
      end
    end
  end
  return codes
end
