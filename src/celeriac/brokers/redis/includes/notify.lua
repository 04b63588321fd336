-- notify.lua: wake the result waiters of a task id.
--
-- The PUBLISH is a wake-up only: waiters read the result key, and read it again once a
-- second anyway. So a refused PUBLISH (an ACL user without the channel, which Redis 7
-- gives no new user by default) must not fail the script: it comes after the script's
-- writes, which Redis never rolls back, and a settle that raised there had acked every
-- task of its batch but stored the results of those before it only. redis.pcall returns
-- the refusal instead of raising it; the start-up check warns of it (startup.py).
local function notify(channel)
  redis.pcall('PUBLISH', channel, '1')
end
