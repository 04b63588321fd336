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

-- Settle many at once: items = {{held=, leases=, bucket=, cid=, token=}, ...}. Items that
-- share a held hash are checked with one HMGET and removed with one HDEL and one ZREM.
-- Returns one code per item, in order: 1, or LEASE_LOST (that item unchanged).
local function settle_many(items)
  local codes, groups, order = {}, {}, {}
  for i, item in ipairs(items) do
    local group = groups[item.held]
    if not group then
      group = {leases = item.leases, at = {}}
      groups[item.held] = group
      order[#order + 1] = item.held
    end
    group.at[#group.at + 1] = i
  end
  for _, held_key in ipairs(order) do
    local group, cids = groups[held_key], {}
    for j, i in ipairs(group.at) do cids[j] = items[i].cid end
    local records = redis.call('HMGET', held_key, unpack(cids))
    local won = {}
    for j, i in ipairs(group.at) do
      local record = records[j]
      if record and cmsgpack.unpack(record) == items[i].token then
        codes[i] = 1
        won[#won + 1] = items[i].cid
        redis.call('HDEL', items[i].bucket, items[i].cid)
      else
        codes[i] = LEASE_LOST
      end
    end
    if #won > 0 then
      redis.call('HDEL', held_key, unpack(won))
      redis.call('ZREM', group.leases, unpack(won))
    end
  end
  return codes
end
