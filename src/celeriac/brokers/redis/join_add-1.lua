-- join_add-1.lua: record a member of a join once and count the members (chord joins).
--
-- KEYS[1]      the join hash: member -> value
-- ARGV[1]      member
-- ARGV[2]      value (the first one added is kept)
-- ARGV[3]      time to live of the whole join in ms, renewed on every add
-- Returns: how many distinct members the join holds now.

redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('HLEN', KEYS[1])
