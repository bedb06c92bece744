-- heartbeat.lua — renew every lease and waiting ticket of one process in one round trip.
-- KEYS: the fixed nine + five per limit held or awaited by any of them (see _lib.lua).
-- ARGV: n, names..., L, then L pairs (lease id, ttl_ms), T, then T pairs (ticket id, ttl_ms)
-- Returns: {lost_lease_ids, lost_ticket_ids, granted_ticket_ids, now_ms, failed_lease_ids}
--   A lease is lost when its record is gone or expired: renew never resurrects it.
--   A ticket reported granted became a lease (its owner missed the notification).
--   A lease that cannot be renewed here (it holds a limit whose keys were not passed, or its record
--   is damaged in a way that makes renewing it fail) is reported in failed_lease_ids and left as
--   it was; the other leases are still renewed.
-- Complexity: O(sum over leases of occupy * names * log N).
local L = tonumber(ARGV[A0 + 1])
local lost, lost_t, granted, failed = {}, {}, {}, {}

local function renew(id, rec, ttl)
  local exp = NOW + ttl
  local zargs = {}
  for j, m in ipairs(members(id, tonumber(rec.o))) do zargs[2 * j - 1] = exp; zargs[2 * j] = m end
  rec.e = exp
  rec.r = NOW
  rec.l = ttl
  local packed = cmsgpack.pack(rec)
  for _, name in ipairs(rec.n) do redis.call('ZADD', LIM[name].holders, 'XX', unpack(zargs)) end
  redis.call('HSET', K_LEASES, id, packed)
end

local i = A0 + 2
for _ = 1, L do
  local id, ttl = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local rec = load(K_LEASES, id)
  if not rec or tonumber(rec.e) <= NOW then
    table.insert(lost, id)
  elseif missing_key(rec.n) or not pcall(renew, id, rec, ttl) then
    table.insert(failed, id)
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
return {lost, lost_t, granted, NOW, failed}
