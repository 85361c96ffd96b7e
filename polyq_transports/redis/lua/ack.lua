-- Delete acknowledged messages. The count each receipt carries must still be the
-- message's: a holder whose lease ran out, and whose message went to someone else,
-- deletes nothing.
-- KEYS: ready, delayed, leased, msg, count  ARGV: (member, count)*
-- Returns how many were deleted. Self-contained (no common.lua).
local n = 0
for i = 1, #ARGV, 2 do
  local member = ARGV[i]
  if redis.call('HGET', KEYS[5], member) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[3], member)
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    redis.call('HDEL', KEYS[4], member)
    redis.call('HDEL', KEYS[5], member)
    n = n + 1
  end
end
return n
