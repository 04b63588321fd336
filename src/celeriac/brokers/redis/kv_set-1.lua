-- kv_set-1.lua: set a small-store key for a while, also when Redis is full.
--
-- KEYS[1]      the key
-- ARGV[1]      the value
-- ARGV[2]      its time to live in ms
-- ARGV[3]      'NX' to set it only while unset, '' to set it whatever it holds
-- Returns: 1 when written, 0 when ARGV[3] is 'NX' and the key was set.
-- A full Redis (maxmemory, noeviction) must not refuse it: the small store keeps what
-- stops a task from running twice (the verdict on a task killed at its hard limit, a beat
-- tick's fence) and the workers' replies to `celeriac ping`, a container's liveness
-- check. Its keys are few (one per reply, killed task, tick, beat entry, or dedupe key of
-- a send, which a full Redis refuses) and every one expires.
-- @allow-oom

local written
if ARGV[3] == 'NX' then
  written = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
else
  written = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if written then
  return 1
end
return 0
