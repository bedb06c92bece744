-- acquire.lua — take `occupy` slots of every named limit at once, or join their wait queues.
-- KEYS: the fixed five + three per limit (see _lib.lua).
-- ARGV: n, names..., id, occupy, ttl_ms (0 = limit's ttl, else default), default_ttl_ms, priority,
--       wait (1 enqueue / 0 try once / 2 re-ask about an id sent before: LOST if neither its
--       lease nor its ticket exists any more -- an id is never started anew, so a late grant
--       notification of its lost incarnation can never pass for a grant of a new one),
--       channel, meta (msgpack map), default_slots (-1 = none)
-- Returns: {GRANTED, token, expiry_ms, ttl_ms} | {QUEUED, position, ms_until_next_holder_expiry}
--        | {BUSY} | {NOT_FOUND, name} | {OCCUPY_EXCEEDS, name, slots} | {LOST}
--        | {REJECTED, reason, name, slots}
-- Idempotent on id: a re-sent call returns the same lease, or re-examines the same ticket (that is
-- how a waiter told 'r' by a grant pass, or its fallback check, asks again).
-- Complexity: O(n * (log N + purge batch)) for n limits with N holders each.
local id = ARGV[A0 + 1]
local occ = tonumber(ARGV[A0 + 2])
local ttl = tonumber(ARGV[A0 + 3])
local default_ttl = tonumber(ARGV[A0 + 4])
local prio = tonumber(ARGV[A0 + 5])
local wait = ARGV[A0 + 6] ~= '0'
local recheck = ARGV[A0 + 6] == '2'
local channel = ARGV[A0 + 7]
local meta = cmsgpack.unpack(ARGV[A0 + 8])
local default_slots = tonumber(ARGV[A0 + 9])

gc(GC_BATCH)

local lease = load(K_LEASES, id)
if lease then
  if tonumber(lease.e) > NOW then return {GRANTED, lease.t, lease.e, lease.l} end
  return {LOST}
end

for _, name in ipairs(NAMES) do
  local c = cfg(name)
  if not c then
    if default_slots < 0 then return {NOT_FOUND, name} end
    create_limit(name, default_slots, 0, 1, '')
    c = cfg(name)
  end
  if c.enabled and occ > c.slots then return {OCCUPY_EXCEEDS, name, c.slots} end
end
for _, name in ipairs(NAMES) do purge_holders(name, PURGE_BATCH) end

local ticket = load(K_TICKETS, id)
if ticket then
  if tonumber(ticket.e) <= NOW then
    drop_ticket(id, ticket)
    return {LOST}
  end
  local st, a, b, c = try_grant_ticket(id, ticket)
  if st == 'g' then return {GRANTED, a, b, ticket.l} end
  if st == 'x' then
    drop_ticket(id, ticket)
    return {REJECTED, a, b, c}
  end
  local pos, next_exp = queue_info(id)
  return {QUEUED, pos, next_exp}
end

if recheck then return {LOST} end  -- its ticket is gone (expired, or granted and that lease lost)

if ttl <= 0 then
  for _, name in ipairs(NAMES) do
    local t = cfg(name).ttl
    if t > 0 and (ttl <= 0 or t < ttl) then ttl = t end
  end
  if ttl <= 0 then ttl = default_ttl end
end

local fits = true
for _, name in ipairs(NAMES) do
  local head, hrec = live_head(name)
  if head and prio <= (tonumber(hrec.p) or 0) then fits = false; break end
  local c = cfg(name)
  if c.enabled and used(name) + occ > c.slots then fits = false; break end
end
if fits then
  local token, exp = make_lease(id, NAMES, occ, meta, ttl, 0)
  return {GRANTED, token, exp, ttl}
end
if not wait then return {BUSY} end

local seq = next_seq()
local score = -prio * 1e12 + seq
local exp = NOW + ttl
redis.call('HSET', K_TICKETS, id, cmsgpack.pack(
  {n = NAMES, o = occ, m = meta, p = prio, c = channel, a = NOW, e = exp, l = ttl, u = NOW_US}))
redis.call('ZADD', K_TICKET_EXP, exp, id)
for _, name in ipairs(NAMES) do redis.call('ZADD', LIM[name].queue, score, id) end
local pos, next_exp = queue_info(id)
return {QUEUED, pos, next_exp}
