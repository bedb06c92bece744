-- cancel.lua — withdraw a waiting ticket (on timeout or by the caller).
-- KEYS: the fixed nine + five per limit of the ticket (see _lib.lua).
-- ARGV: n, names..., id, timed_out (1 counts a timeout on each limit), occupy (units-only
--       requests: finds a grant of their units made in the meantime; 0 otherwise)
-- Returns: {GRANTED, token, expiry_ms, ttl_ms} if the ticket was granted in the meantime (the caller now
--          holds the lease, or its units were taken: token 0) | {CANCELLED}
--        | {LOST} (no such ticket or lease)
--        | {NEED_KEYS, name}
-- Removing a head ticket may let the tickets behind it fit, so each queue gets a grant pass.
-- A withdrawn id is remembered in `withdrawn` for WITHDRAWN_MS: an ask that was sent before the
-- withdrawal on another connection (abandoned at its deadline, or retried) can reach Redis after
-- it; acquire.lua refuses it (LOST) instead of queueing or granting a request nobody waits for.
local id = ARGV[A0 + 1]
local timed_out = ARGV[A0 + 2] == '1'
local occ = tonumber(ARGV[A0 + 3]) or 0

local lease = load(K_LEASES, id)
if lease and tonumber(lease.e) > NOW then return {GRANTED, lease.t, lease.e, lease.l} end
local rec = load(K_TICKETS, id)
if not rec then
  redis.call('ZREM', K_TICKET_EXP, id)
  for _, name in ipairs(NAMES) do redis.call('ZREM', LIM[name].queue, id) end
  if occ > 0 then
    for _, name in ipairs(NAMES) do
      if redis.call('ZSCORE', LIM[name].rate, id .. ' ' .. occ) then return {GRANTED, 0, 0, 0} end
    end
  end
  remember_withdrawn(id)
  return {LOST}
end
local miss = missing_key(rec.n)
if miss then return {NEED_KEYS, miss} end
drop_ticket(id, rec)
remember_withdrawn(id)
emit(timed_out and 'timeout' or 'cancel', id, rec.n, rec.o, rec.m,
  'waited ' .. fmt(NOW - (tonumber(rec.a) or NOW)) .. ' ms')
for _, name in ipairs(rec.n) do
  if timed_out then count(name, 'c_timed_out', 1) end
  purge_holders(name, PURGE_BATCH)
  grant_pass(name)
end
return {CANCELLED}
