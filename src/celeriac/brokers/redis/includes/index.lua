-- index.lua: the id index that makes send idempotent while a message is queued or held.
--
-- Ids live in 1021 small hashes per queue ("buckets", field = compact id, value = ''),
-- which Redis stores as compact listpacks: about 20 bytes an id instead of about 80 in one
-- big set. The client picks a bucket with the same function (keys.py: index_bucket) and
-- passes its key in KEYS; only purge computes buckets here, over keys it was given.

-- The id's bytes read as one big-endian number, modulo the (prime) bucket count.
local function index_bucket(cid, buckets)
  local h = 0
  for i = 1, #cid do h = (h * 256 + string.byte(cid, i)) % buckets end
  return h
end
