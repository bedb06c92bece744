-- settle.lua — correct the units a granted request took from the rate windows of its limits,
-- after the fact (reserve 1000 tokens, used 730): its batch keeps its grant time, only its size
-- changes. Fewer units may let waiters in at once (grant pass); more only delay later grants.
-- KEYS: the fixed nine + five per limit of the request (see _lib.lua).
-- ARGV: n, names..., id, units_taken (what the batch holds now), units_true
-- Returns: {OK, settled} (limits whose window still held the batch) | {LOST} (no batch in
--          any window any more: it left the window, or was never granted)
-- Complexity: O(n * (log N + grant pass)).
local id = ARGV[A0 + 1]
local old = tonumber(ARGV[A0 + 2])
local new = tonumber(ARGV[A0 + 3])
local settled = 0
for _, name in ipairs(NAMES) do
  local c = cfg(name)
  if c and c.rate_n and not c.template then
    local k = LIM[name]
    local m = id .. ' ' .. old
    local at = tonumber(redis.call('ZSCORE', k.rate, m))
    if at and at > NOW - c.rate_p then
      local u = rate_used(name, c) + new - old
      redis.call('ZREM', k.rate, m)
      redis.call('ZADD', k.rate, at, id .. ' ' .. new)
      if u < 0 then u = 0 end
      redis.call('HSET', k.cfg, 'r_used', u)
      c.r_used = u
      hincr(k.cfg, 'c_units', new - old)
      if c.tpl and LIM[c.tpl] then hincr(LIM[c.tpl].cfg, 'c_units', new - old) end
      settled = settled + 1
      if new < old then grant_pass(name) end
    end
  end
end
if settled == 0 then return {LOST} end
return {OK, settled}
