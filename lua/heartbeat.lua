-- heartbeat.lua — renew every lease and waiting ticket of one process in one round trip.
-- KEYS: the fixed five + three per limit held or awaited by any of them (see _lib.lua).
-- ARGV: n, names..., L, then L pairs (lease id, ttl_ms), T, then T pairs (ticket id, ttl_ms)
-- Returns: {lost_lease_ids, lost_ticket_ids, granted_ticket_ids, now_ms}
--   A lease is lost when its record is gone or expired: renew never resurrects it.
--   A ticket reported granted became a lease (its owner missed the notification).
-- A lease whose record names a limit whose keys were not passed is reported lost (its record was
-- rewritten by someone else: renewing it would desync scores).
-- Complexity: O(sum over leases of occupy * names * log N).
local L = tonumber(ARGV[A0 + 1])
local lost, lost_t, granted = {}, {}, {}
local i = A0 + 2
for _ = 1, L do
  local id, ttl = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local rec = load(K_LEASES, id)
  if not rec or tonumber(rec.e) <= NOW then
    table.insert(lost, id)
  else
    local miss = missing_key(rec.n)
    if miss then  -- a record rewritten by someone else (the SDK passes every name it holds)
      table.insert(lost, id)
    else
      local exp = NOW + ttl
      rec.e = exp
      rec.r = NOW
      rec.l = ttl
      redis.call('HSET', K_LEASES, id, cmsgpack.pack(rec))
      local zargs = {}
      for j, m in ipairs(members(id, rec.o)) do zargs[2 * j - 1] = exp; zargs[2 * j] = m end
      for _, name in ipairs(rec.n) do redis.call('ZADD', LIM[name].holders, 'XX', unpack(zargs)) end
    end
  end
end
local T = tonumber(ARGV[i])
i = i + 1
for _ = 1, T do
  local id, ttl = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local rec = load(K_TICKETS, id)
  if not rec or tonumber(rec.e) <= NOW then
    local lease = load(K_LEASES, id)
    if lease and tonumber(lease.e) > NOW then table.insert(granted, id) else table.insert(lost_t, id) end
  else
    rec.e = NOW + ttl
    redis.call('HSET', K_TICKETS, id, cmsgpack.pack(rec))
    redis.call('ZADD', K_TICKET_EXP, rec.e, id)
  end
end
return {lost, lost_t, granted, NOW}
