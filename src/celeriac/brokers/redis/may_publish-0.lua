-- may_publish-0.lua: whether the calling ACL user may PUBLISH to one of the broker's
-- channels. The start-up check asks: the settle scripts skip a refused wake-up
-- (includes/notify.lua), so nothing else would say that waiters are not woken.
--
-- KEYS[]       none
-- ARGV[1]      a result channel (keys.py: channel)
-- Returns: 1 allowed, 0 refused.

if redis.acl_check_cmd('PUBLISH', ARGV[1], '1') then return 1 end
return 0
