-- Push held leases to `lease ms` from now (server clock). Fenced by the delivery count.
-- KEYS: ready, leased, count  ARGV: lease ms, (member, count)*
-- Returns how many leases were extended. Runs after common.lua.
local deadline = num(now_ms() + tonumber(ARGV[1]))
local n = 0
for i = 2, #ARGV, 2 do
  local member = ARGV[i]
  if redis.call('HGET', KEYS[3], member) == ARGV[i + 1] then
    -- a lease that lapsed but was not handed out again is taken back
    if redis.call('ZSCORE', KEYS[2], member) or redis.call('ZREM', KEYS[1], member) == 1 then
      redis.call('ZADD', KEYS[2], deadline, member)
      n = n + 1
    end
  end
end
return n
