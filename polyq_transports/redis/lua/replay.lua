-- Put dead letters back in `ready` with a fresh delivery count.
-- KEYS: ready, count, dead, deadinfo, notify  ARGV: members
-- Returns how many were replayed. Runs after common.lua.
local n = 0
for _, member in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[3], member) == 1 then
    redis.call('HDEL', KEYS[4], member)
    redis.call('HSET', KEYS[2], member, 0)
    redis.call('ZADD', KEYS[1], ready_score(member), member)
    n = n + 1
  end
end
if n > 0 and redis.call('LLEN', KEYS[5]) == 0 then redis.call('RPUSH', KEYS[5], '1') end
return n
