-- stream_append-1.lua: append items to a bounded stream, one entry each, then trim it.
--
-- One script call per batch of items (task events, revokes, control commands): a pipeline
-- of one XADD per item cost every item a command of its own to pack, parse and answer.
--
-- KEYS[1]      the stream
-- ARGV[1]      the length to trim the stream to (exactly, as XADD MAXLEN without ~)
-- ARGV[2..n]   the items, in order: each is the field "i" of a new entry (id *: Redis
--              time, always growing)
-- Returns: the number of items appended.
-- Only the last XADD trims: one trim per batch instead of one per item, same result.
-- A full Redis (maxmemory, noeviction) must not refuse it: `celeriac ping` (a container's
-- liveness check), `inspect` and `shutdown` reach the workers through the control stream,
-- and refused, every worker's probe failed and the fleet was restarted while it drained
-- the queues. Every stream is trimmed to an exact length (control commands 1,000, revokes
-- 10,000, task events `Events.max_length`), so none grows with the queue.
-- @allow-oom

local last = #ARGV
for i = 2, last - 1 do
    redis.call('XADD', KEYS[1], '*', 'i', ARGV[i])
end
if last >= 2 then
    redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'i', ARGV[last])
end
return last - 1
