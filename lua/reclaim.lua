-- reclaim.lua — bounded reclaim for the daemon: expired holders of the named limits (and their
-- lease records), expired and orphaned waiting tickets in their queues, namespace-wide ticket
-- garbage, holder entries with no lease record (written by someone else); then grant passes.
-- Rate windows (rate:<name>) and template key sets (keys:<name>) are not holder entries: untouched.
-- KEYS: the fixed nine + five per limit (zero limits = ticket garbage collection only).
-- ARGV: n, names..., batch
-- Returns: {expired_holder_entries, lease_records_deleted, gc_tickets, granted,
--           more (1 if a batch was full), orphaned_holder_entries_removed}
-- Complexity: O(batch * log N) per limit; the batch bounds the time of one call.
local batch = tonumber(ARGV[A0 + 1])

-- Live holder entries of a limit with no live lease record naming that limit: written by someone
-- else (a lease's record and its entries are only ever created and removed together). Looks at a
-- bounded window at a rotating offset, so every entry is looked at eventually; removes them.
local function sweep_orphans(name, n)
  local h, low = LIM[name].holders, '(' .. fmt(NOW)
  local live = redis.call('ZCOUNT', h, low, '+inf')
  if live == 0 then return 0 end
  local start = live > n and NOW % (live - n + 1) or 0
  local bad, recs = {}, {}
  for _, m in ipairs(redis.call('ZRANGE', h, low, '+inf', 'BYSCORE', 'LIMIT', start, n)) do
    local id = string.match(m, '^(.*)#%d+$') or m
    if recs[id] == nil then
      recs[id] = load(K_LEASES, id) or false
      if not recs[id] then redis.call('HDEL', K_LEASES, id) end  -- unreadable: garbage
    end
    local rec, mine = recs[id], false
    if rec and rec.e > NOW then
      for _, x in ipairs(rec.n) do if x == name then mine = true end end
    end
    if not mine then table.insert(bad, m) end
  end
  if #bad > 0 then redis.call('ZREM', h, unpack(bad)) end
  return #bad
end

local purged, granted, more, orphans = 0, 0, 0, 0
local gt = gc(batch)
if gt >= batch then more = 1 end
for _, name in ipairs(NAMES) do
  local p = purge_holders(name, batch)   -- even when the config is garbage: slots come back
  if p >= batch then more = 1 else orphans = orphans + sweep_orphans(name, math.min(batch, 100)) end
  purged = purged + p
  if cfg(name) then
    -- queue entries whose ticket record is gone or expired (owner died, or cleaned elsewhere)
    local q = LIM[name].queue
    local ids = redis.call('ZRANGE', q, 0, batch - 1)
    local dead = {}
    for _, id in ipairs(ids) do
      local rec = load(K_TICKETS, id)
      if not rec or tonumber(rec.e) <= NOW then table.insert(dead, id) end
    end
    if #dead > 0 then
      redis.call('ZREM', q, unpack(dead))
      for _, id in ipairs(dead) do
        local rec = load(K_TICKETS, id)
        if rec then drop_ticket(id, rec) end
      end
      gt = gt + #dead
    end
    granted = granted + grant_pass(name)
  end
end
return {purged, RECORDS_DELETED, gt, granted, more, orphans}
