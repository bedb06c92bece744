-- reclaim.lua — bounded reclaim for the daemon: expired holders of the named limits (and their
-- lease records), expired and orphaned waiting tickets in their queues, namespace-wide ticket
-- garbage; then grant passes.
-- KEYS: the fixed eight + five per limit (zero limits = ticket garbage collection only).
-- ARGV: n, names..., batch
-- Returns: {expired_holder_entries, lease_records_deleted, gc_tickets, granted,
--           more (1 if a batch was full)}
-- Complexity: O(batch * log N) per limit; the batch bounds the time of one call.
local batch = tonumber(ARGV[A0 + 1])
local purged, granted, more = 0, 0, 0
local gt = gc(batch)
if gt >= batch then more = 1 end
for _, name in ipairs(NAMES) do
  local p = purge_holders(name, batch)   -- even when the config is garbage: slots come back
  if p >= batch then more = 1 end
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
return {purged, RECORDS_DELETED, gt, granted, more}
