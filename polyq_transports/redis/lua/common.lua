-- The prelude put in front of the scripts that need it (scripts.py says which):
-- helpers defined anew on every call, so a script that needs none (publish_now, ack,
-- purge) runs without it.
-- Numbers are written with %.0f: Redis turns a Lua number into a string with 14
-- significant digits, which would round scores and times.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(x) return string.format('%.0f', x) end
local function ready_score(member)
  local sep = string.find(member, ':', 1, true)
  local p = tonumber(string.sub(member, 1, sep - 1))
  return num((9 - p) * 1099511627776 + tonumber(string.sub(member, sep + 1)))
end
