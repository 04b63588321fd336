-- kv_delete_if-1.lua: unset a small-store key only while it holds a given value (a
-- dedupe key freed by the task that holds it: never one a later send took meanwhile).
--
-- KEYS[1]      the key
-- ARGV[1]      the value it must hold
-- Returns: 1 when the key was deleted, 0 when it held another value or none.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
