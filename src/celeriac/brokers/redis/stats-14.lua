-- stats-14.lua: counts for one queue, on Redis's clock.
--
-- KEYS[1..10]  ready lists, priority 0..9
-- KEYS[11]     delayed sorted set
-- KEYS[12]     held hash
-- KEYS[13]     dead-letter hash
-- KEYS[14]     lease deadlines (sorted set, one member per held message)
-- ARGV[1]      '1': also return what tells how long the oldest ready message has waited
-- ARGV[2..11]  with ARGV[1] '1': per ready list (priority 0..9), the fingerprint of the
--              head whose body the caller already read ('' for none)
-- Returns: {ready, delayed (not yet due), in flight (held under a lease still running),
--           dead}. Ready includes the delayed messages already due and the held ones whose
--           lease ran out: the next fetch hands both out (promote, reclaim). Counted in
--           flight, the work of a worker killed with -9 read "in flight" for as long as no
--           worker was left to fetch it, though nothing ran it.
--           With ARGV[1] '1', then: now (ms), the oldest due time among the delayed
--           messages already due (ms, or -1), the oldest deadline among the lapsed leases
--           of messages still held (ms, or -1), then four values per ready list whose
--           first elements hold an entry: its priority, the fingerprint of that entry
--           (compact id, deliveries, size), and the entry's compact id and body when the
--           fingerprint differs from ARGV's, else '' and ''. An entry keeps no
--           time (it stays small), so the client reads the message; its fingerprint lets
--           a client that asks again (an exporter, every scrape) skip a head it has read.
--           Bytes that are not an entry (pushed by hand) are passed over: a fetch
--           dead-letters them; only the first HEAD_SCAN elements of a list are looked at.
-- @include clock.lua
-- @include entry.lua

local HEAD_SCAN = 10 -- list elements looked at for the first entry
local LEASE_SCAN = 100 -- lapsed leases looked at for one whose message is still held

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

local first_due = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
reply[#reply + 1] = now
reply[#reply + 1] = first_due[2] or '-1'
local oldest_lease = '-1'
if lapsed > 0 then
  local leases = redis.call('ZRANGEBYSCORE', KEYS[14], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
    LEASE_SCAN)
  for i = 1, #leases, 2 do
    if redis.call('HEXISTS', KEYS[12], leases[i]) == 1 then
      oldest_lease = leases[i + 1]
      break
    end
  end
end
reply[#reply + 1] = oldest_lease

-- The first entry among a list's first elements: its raw bytes, or nil.
local function first_entry(key)
  local head = redis.call('LINDEX', key, 0)
  if not head or entry_header(head) then return head end
  for _, raw in ipairs(redis.call('LRANGE', key, 1, HEAD_SCAN - 1)) do
    if entry_header(raw) then return raw end
  end
  return nil
end

for priority = 0, 9 do
  local raw = first_entry(KEYS[priority + 1])
  if raw then
    -- The header only: a head of 200 KB copied out of its entry at every scrape cost
    -- Redis more than sending it did.
    local cid, _, deliveries = entry_header(raw)
    local fingerprint = cid .. '/' .. deliveries .. '/' .. #raw
    reply[#reply + 1] = priority
    reply[#reply + 1] = fingerprint
    if fingerprint == ARGV[2 + priority] then
      reply[#reply + 1] = ''
      reply[#reply + 1] = ''
    else
      reply[#reply + 1] = cid
      reply[#reply + 1] = string.sub(raw, 8 + #cid)
    end
  end
end
return reply
