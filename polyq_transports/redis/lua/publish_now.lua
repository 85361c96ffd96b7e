-- The common .delay(): one message, no delay. The same writes as publish.lua with
-- n = 1, without the batch loop and the shared prelude (about a third less server time).
-- KEYS: ready, msg, seq, notify, queues
-- ARGV: queue, register (1: add it to the queue list), priority, payload
-- Returns 1. Self-contained (no common.lua).
local seq = redis.call('INCR', KEYS[3])
local member = ARGV[3] .. ':' .. seq
redis.call('HSET', KEYS[2], member, ARGV[4])
local score = (9 - tonumber(ARGV[3])) * 1099511627776 + seq
redis.call('ZADD', KEYS[1], string.format('%.0f', score), member)
if ARGV[2] == '1' then redis.call('SADD', KEYS[5], ARGV[1]) end
if redis.call('LLEN', KEYS[4]) == 0 then redis.call('RPUSH', KEYS[4], '1') end
return 1
