-- Lease up to ARGV[2] messages from the queues, in the order given. For each queue,
-- first the delayed-message promotion: due delayed messages and lapsed leases move
-- back to `ready` (their count is raised when they are delivered again); then pop
-- the highest priority, oldest first, lease each popped message (score: now + lease)
-- and raise its delivery count. The notify token stays while `ready` is not empty,
-- so the next consumer wakes in turn. The reply carries the next due time of a
-- delayed message or lease, which bounds how long the consumer blocks on BLPOP.
-- KEYS: (ready, delayed, leased, msg, count, notify) per queue
-- ARGV: queue count, max messages, lease ms
-- Returns {next due ms or -1, now ms, (queue index, member, count, payload)*}.
-- Runs after common.lua.
local nq, want, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {-1, now}
local next_due = -1
for q = 0, nq - 1 do
  local ready, delayed, leased = KEYS[q * 6 + 1], KEYS[q * 6 + 2], KEYS[q * 6 + 3]
  local msg, count, notify = KEYS[q * 6 + 4], KEYS[q * 6 + 5], KEYS[q * 6 + 6]
  -- due delayed messages and lapsed leases become ready (bounded work per call)
  for _, source in ipairs({delayed, leased}) do
    local due = redis.call('ZRANGEBYSCORE', source, '-inf', num(now), 'LIMIT', 0, 1000)
    for _, member in ipairs(due) do
      redis.call('ZREM', source, member)
      redis.call('ZADD', ready, ready_score(member), member)
    end
  end
  if want > 0 then
    local popped = redis.call('ZPOPMIN', ready, want)
    for i = 1, #popped, 2 do
      local member = popped[i]
      local payload = redis.call('HGET', msg, member)
      if payload then
        redis.call('ZADD', leased, num(now + lease), member)
        local c = redis.call('HINCRBY', count, member, 1)
        out[#out + 1] = q
        out[#out + 1] = member
        out[#out + 1] = c
        out[#out + 1] = payload
        want = want - 1
      end
    end
  end
  if redis.call('ZCARD', ready) > 0 then
    if redis.call('LLEN', notify) == 0 then redis.call('RPUSH', notify, '1') end
  else
    redis.call('DEL', notify)
  end
  for _, source in ipairs({delayed, leased}) do
    local head = redis.call('ZRANGE', source, 0, 0, 'WITHSCORES')
    if head[2] then
      local due = tonumber(head[2])
      if next_due < 0 or due < next_due then next_due = due end
    end
  end
end
out[1] = next_due
return out
