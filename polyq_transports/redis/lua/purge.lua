-- Empty sorted sets (ready and delayed, or dead) and delete their members' entries
-- from the hashes (msg, count, and deadinfo for dead letters).
-- KEYS: hash keys to clean (msg, count[, deadinfo]), then the sorted sets to empty
-- ARGV: number of hash keys
-- Returns how many messages were deleted. Self-contained (no common.lua).
local nh = tonumber(ARGV[1])
local n = 0
for z = nh + 1, #KEYS do
  local members = redis.call('ZRANGE', KEYS[z], 0, -1)
  for _, member in ipairs(members) do
    for h = 1, nh do redis.call('HDEL', KEYS[h], member) end
  end
  n = n + #members
  redis.call('DEL', KEYS[z])
end
return n
