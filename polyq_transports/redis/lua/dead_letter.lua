-- Move a leased message to its queue's dead letters (`dead` scored by failure time,
-- the reason in `deadinfo`). Fenced by the delivery count; the payload stays in `msg`.
-- KEYS: ready, delayed, leased, count, dead, deadinfo  ARGV: member, count, reason
-- Returns 1, or 0 when the receipt is stale. Runs after common.lua.
local member = ARGV[1]
if redis.call('HGET', KEYS[4], member) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[3], member)
redis.call('ZREM', KEYS[1], member)
redis.call('ZREM', KEYS[2], member)
redis.call('ZADD', KEYS[5], num(now_ms()), member)
redis.call('HSET', KEYS[6], member, ARGV[3])
return 1
