-- reclaim.lua — bounded reclaim for the daemon: expired holders of the named limits, expired and
-- orphaned waiting tickets in their queues, namespace-wide record garbage; then grant passes.
-- KEYS: the fixed six + three per limit (zero limits = record garbage collection only).
-- ARGV: n, names..., batch
-- Returns: {expired_holder_entries, gc_leases, gc_tickets, granted, more (1 if a batch was full)}
-- Complexity: O(batch * log N) per limit; the batch bounds the time of one call.
local batch = tonumber(ARGV[A0 + 1])
local purged, granted, more = 0, 0, 0
local gl, gt = gc(batch)
if gl >= batch or gt >= batch then more = 1 end
for _, name in ipairs(NAMES) do
  if cfg(name) then
    local p = purge_holders(name, batch)
    if p >= batch then more = 1 end
    purged = purged + p
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
return {purged, gl, gt, granted, more}
