-- reap_idle.lua — remove keys made from a template that have been idle for the template's
-- --idle-ttl: no live holder, no waiter, an empty rate window (so no rate state is lost); the
-- check is reap_key in _lib.lua, which acquire.lua's bounded lazy reap shares.
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
  local r = reap_key(tname, t, NAMES[i])
  if r == 'removed' then removed = removed + 1 elseif r == 'busy' then busy = busy + 1 end
end
return {removed, busy}
