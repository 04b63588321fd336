-- result.lua: committing a final result together with the settling of its message.
--
-- Needs notify.lua included before it.
--
-- A "result spec" is five ARGV entries starting at index i:
--   i+0  mode: 'direct' (standalone Redis: the target is the result key itself) or
--        'outbox' (Cluster: the target is the queue's outbox hash; the client copies the
--        result to its key and the reaper finishes the copy if that client died)
--   i+1  '1' when there is a result to store, '0' when the task ignores its result
--   i+2  the result bytes
--   i+3  time to live in milliseconds
--   i+4  the pub/sub channel that wakes waiters of this task id

local function result_spec(i)
  return {mode = ARGV[i], present = ARGV[i + 1] == '1', body = ARGV[i + 2],
    ttl = ARGV[i + 3], channel = ARGV[i + 4]}
end

-- Store a final result ('F' + bytes) and wake every waiter, or park it in the outbox.
local function commit_result(target, spec, cid)
  if not spec.present then return end
  if spec.mode == 'direct' then
    redis.call('SET', target, 'F' .. spec.body, 'PX', spec.ttl)
    notify(spec.channel)
  else
    redis.call('HSET', target, cid, spec.ttl .. ':' .. spec.body)
  end
end

-- commit_result with the spec read in place from ARGV[i..i+4] (no table: runs per task);
-- the wake-up only when publish is true.
local function commit_result_at(target, i, cid, publish)
  if ARGV[i + 1] ~= '1' then return end
  if ARGV[i] == 'direct' then
    redis.call('SET', target, 'F' .. ARGV[i + 2], 'PX', ARGV[i + 3])
    if publish then notify(ARGV[i + 4]) end
  else
    redis.call('HSET', target, cid, ARGV[i + 3] .. ':' .. ARGV[i + 2])
  end
end

-- True when a final result is stored for the id (or parked in the outbox).
local function has_final(target, mode, cid)
  if mode == 'direct' then
    return redis.call('GETRANGE', target, 0, 0) == 'F'
  end
  return redis.call('HEXISTS', target, cid) == 1
end
