-- stats-14.lua: counts for one queue, on Redis's clock.
--
-- KEYS[1..10]  ready lists, priority 0..9
-- KEYS[11]     delayed sorted set
-- KEYS[12]     held hash
-- KEYS[13]     dead-letter hash
-- KEYS[14]     lease deadlines (sorted set, one member per held message)
-- ARGV[1]      '1': also return what tells how long the oldest ready message has waited
-- Returns: {ready, delayed (not yet due), in flight (held under a lease still running),
--           dead}. Ready includes the delayed messages already due and the held ones whose
--           lease ran out: the next fetch hands both out (promote, reclaim). Counted in
--           flight, the work of a worker killed with -9 read "in flight" for as long as no
--           worker was left to fetch it, though nothing ran it.
--           With ARGV[1] '1', then: now (ms), the oldest due time among the delayed
--           messages already due (ms, or -1), the oldest deadline among the lapsed leases
--           (ms, or -1), then the compact id and the body of each ready list's head. An
--           entry keeps no time (it stays small), so the client reads the head's message.
--           Bytes that are not an entry are skipped: a fetch dead-letters them.
-- @include clock.lua
-- @include entry.lua

local now = now_ms()
local ready = 0
for i = 1, 10 do ready = ready + redis.call('LLEN', KEYS[i]) end
local due = redis.call('ZCOUNT', KEYS[11], '-inf', now)
local delayed = redis.call('ZCARD', KEYS[11]) - due
local held = redis.call('HLEN', KEYS[12])
-- At most one per held message: a lease left without its message is no message at all.
local lapsed = math.min(redis.call('ZCOUNT', KEYS[14], '-inf', now), held)
local reply = {ready + due + lapsed, delayed, held - lapsed, redis.call('HLEN', KEYS[13])}
if ARGV[1] ~= '1' then return reply end

-- The smallest score at or before now (whole ms, as text), or '-1'.
local function oldest(key)
  local first = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
  if first[2] then return first[2] end
  return '-1'
end
reply[#reply + 1] = now
reply[#reply + 1] = oldest(KEYS[11])
reply[#reply + 1] = lapsed > 0 and oldest(KEYS[14]) or '-1'
for i = 1, 10 do
  local head = redis.call('LINDEX', KEYS[i], 0)
  local cid, _, _, body = nil, nil, nil, nil
  if head then cid, _, _, body = unpack_entry(head) end
  if cid then
    reply[#reply + 1] = cid
    reply[#reply + 1] = body
  end
end
return reply
