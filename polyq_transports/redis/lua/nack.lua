-- Give a leased message back: to `ready`, or to `delayed` for ARGV[3] ms. Fenced by
-- the delivery count like ack.lua.
-- KEYS: ready, delayed, leased, count, notify  ARGV: member, count, delay ms
-- Returns 1, or 0 when the receipt is stale. Runs after common.lua.
local member, delay = ARGV[1], tonumber(ARGV[3])
if redis.call('HGET', KEYS[4], member) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[3], member)
redis.call('ZREM', KEYS[1], member)
redis.call('ZREM', KEYS[2], member)
if delay > 0 then
  redis.call('ZADD', KEYS[2], num(now_ms() + delay), member)
else
  redis.call('ZADD', KEYS[1], ready_score(member), member)
end
if redis.call('LLEN', KEYS[5]) == 0 then redis.call('RPUSH', KEYS[5], '1') end
return 1
