-- Publish a batch of messages to one queue (the transport splits bigger batches).
-- A message without delay goes to `ready`, scored by priority then sequence; one with
-- a delay goes to `delayed`, scored by its due time on the server's clock. The notify
-- token is pushed when something became ready or the next due time moved forward, so
-- a consumer blocked on BLPOP wakes for a short delay sent after a long one.
-- KEYS: ready, delayed, msg, seq, notify, queues
-- ARGV: queue, register (1: add it to the queue list), n, (priority, delay ms, payload)*n
-- Returns n. Runs after common.lua.
local n = tonumber(ARGV[3])
local first = redis.call('INCRBY', KEYS[4], n) - n
local now = nil
local wake = false
for i = 1, n do
  local p = tonumber(ARGV[1 + i * 3])
  local delay = tonumber(ARGV[2 + i * 3])
  local seq = first + i
  local member = p .. ':' .. seq
  redis.call('HSET', KEYS[3], member, ARGV[3 + i * 3])
  if delay > 0 then
    now = now or now_ms()
    local due = now + delay
    local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    if head[2] == nil or due < tonumber(head[2]) then wake = true end
    redis.call('ZADD', KEYS[2], num(due), member)
  else
    redis.call('ZADD', KEYS[1], num((9 - p) * 1099511627776 + seq), member)
    wake = true
  end
end
if ARGV[2] == '1' then redis.call('SADD', KEYS[6], ARGV[1]) end
if wake and redis.call('LLEN', KEYS[5]) == 0 then redis.call('RPUSH', KEYS[5], '1') end
return n
