-- reap_idle.lua — remove keys made from a template that have been idle for the template's
-- --idle-ttl: no live holder, no waiter, an empty rate window (so no rate state is lost).
-- KEYS: the fixed nine + five for the template, then five per candidate key (see _lib.lua).
-- ARGV: n, template, keys..., (no further arguments)
-- Returns: {removed, still_busy}
-- The caller picks candidates from keys:<template> by last activity; each is checked again here.
-- Complexity: O(k * purge batch) for k candidate keys.
local tname = NAMES[1]
local t = cfg(tname)
local removed, busy = 0, 0
if not t or not t.template then return {removed, busy} end
for i = 2, #NAMES do
  local name = NAMES[i]
  local L = LIM[name]
  local last = tonumber(redis.call('ZSCORE', LIM[tname].members, name))
  local c = cfg(name)
  if last and c and c.tpl == tname and last <= NOW - t.idle then
    purge_holders(name, PURGE_BATCH)
    local empty = used(name) == 0 and redis.call('ZCARD', L.holders) == 0
      and redis.call('ZCARD', L.queue) == 0
    if empty and c.rate_n then rate_used(name, c) end   -- drops batches that left the window
    if empty then empty = redis.call('ZCARD', L.rate) == 0 end
    if empty then
      redis.call('DEL', L.cfg, L.holders, L.queue, L.rate)
      redis.call('ZREM', LIM[tname].members, name)
      emit('limit', '', {name}, 0, nil, 'idle key removed (template ' .. tname .. ')')
      removed = removed + 1
    else
      busy = busy + 1
    end
  elseif last and not c and redis.call('EXISTS', L.cfg) == 0 then
    redis.call('ZREM', LIM[tname].members, name)   -- gone already
    removed = removed + 1
  end
end
return {removed, busy}
