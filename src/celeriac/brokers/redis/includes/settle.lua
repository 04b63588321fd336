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
