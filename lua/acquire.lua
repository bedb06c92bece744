-- acquire.lua — take `occupy` slots (and rate units) of every named limit at once, or join their
-- wait queues.
-- KEYS: the fixed nine + five per limit (see _lib.lua): the requested names, then every template
--       whose prefix matches one of them (a name with no limit of its own is made from the longest).
-- ARGV: n, names..., id, occupy, ttl_ms (0 = limit's ttl, else default), default_ttl_ms, priority,
--       wait (1 enqueue / 0 try once / 2 re-ask about an id sent before: LOST, and the id
--       marked withdrawn, if neither its lease nor its ticket exists any more -- an id is never
--       started anew, so a late grant notification of its lost incarnation can never pass for a
--       grant of a new one, and a late first copy of a re-sent ask is refused),
--       channel, meta (msgpack map), default_slots (-1 = none),
--       units_only (1: rate_limit -- take rate units only, no lease; every limit needs a rate)
-- Returns: {GRANTED, token, expiry_ms, ttl_ms} (token 0 for units only)
--        | {QUEUED, position, ms_until_next_holder_expiry, ms_until_rate_units_due}
--        | {BUSY} | {NOT_FOUND, name} | {OCCUPY_EXCEEDS, name, cap}
--        | {LOST} (a lost lease; a re-ask whose ticket is gone; an id withdrawn before it came)
--        | {REJECTED, reason, name, cap} | {NEED_KEYS, template} | {QUEUE_FULL, name, max}
-- Idempotent on id: a re-sent call returns the same lease (or, units only, finds its batch in the
-- window), or re-examines the same ticket (that is how a waiter told 'r' or 'd' asks again).
-- A key made from a template also removes up to LAZY_REAP (2) of that template's keys idle past
-- its --idle-ttl (reap_lazy in _lib.lua).
-- Complexity: O(n * (log N + purge batch)) for n limits with N holders (or template keys) each.
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
local units_only = ARGV[A0 + 10] == '1'

gc(GC_BATCH)

local lease = load(K_LEASES, id)
if lease then
  if tonumber(lease.e) > NOW then return {GRANTED, lease.t, lease.e, lease.l} end
  return {LOST}
end
-- withdrawn before this ask arrived (it travelled on another connection): nobody waits for it
if was_withdrawn(id) then return {LOST} end

local REQ = {}
for _, name in ipairs(NAMES) do
  if not is_tpl(name) then table.insert(REQ, name) end
end

for _, name in ipairs(REQ) do
  local c = cfg(name)
  if not c and NEEDKEY[name] then return {NEED_KEYS, NEEDKEY[name]} end
  if not c then
    local t = template_for(name)
    if t then
      materialize(name, t)
    elseif default_slots >= 0 and not units_only then
      create_limit(name, default_slots, 0, 1, '')
    else
      emit('reject', id, REQ, occ, meta, 'missing ' .. name)
      return {NOT_FOUND, name}
    end
    c = cfg(name)
    if not c then return {NOT_FOUND, name} end
  end
  if units_only and not c.rate_n then
    emit('reject', id, REQ, occ, meta, 'norate ' .. name)
    return {REJECTED, 'norate', name, 0}
  end
  local cap = exceeds(c, occ, units_only)
  if cap then
    emit('reject', id, REQ, occ, meta, 'exceeds ' .. name)
    return {OCCUPY_EXCEEDS, name, cap}
  end
end

-- idle keys of the templates used here go without a daemon: a few per call (see reap_lazy)
local reaped = {}
for _, name in ipairs(REQ) do
  local tname = cfg(name).tpl
  if tname and not reaped[tname] then
    reaped[tname] = true
    reap_lazy(tname)
  end
end

if units_only then
  -- granted before (a re-sent call, or a grant whose notification was lost)?
  for _, name in ipairs(REQ) do
    if redis.call('ZSCORE', LIM[name].rate, id .. ' ' .. occ) then return {GRANTED, 0, 0, 0} end
  end
end

local EFF = effective(REQ)
if not units_only then
  for _, name in ipairs(EFF) do
    local c = cfg(name)
    if c.template then
      local cap = exceeds(c, occ, false)
      if cap then
        emit('reject', id, REQ, occ, meta, 'exceeds ' .. name)
        return {OCCUPY_EXCEEDS, name, cap}
      end
    end
  end
end
for _, name in ipairs(EFF) do purge_holders(name, PURGE_BATCH) end

local ticket = load(K_TICKETS, id)
if ticket then
  if tonumber(ticket.e) <= NOW then
    drop_ticket(id, ticket)
    return {LOST}
  end
  local st, a, b, cap = try_grant_ticket(id, ticket)
  if st == 'g' then
    -- the next waiter of each rate learns at once when its own units are due ('d' notification)
    for _, name in ipairs(ticket.n) do
      local c = cfg(name)
      if c and c.rate_n and not c.template then grant_pass(name) end
    end
    return {GRANTED, a, b, ticket.l}
  end
  if st == 'x' then
    drop_ticket(id, ticket)
    emit('reject', id, ticket.n, ticket.o, ticket.m, a .. ' ' .. b)
    return {REJECTED, a, b, cap}
  end
  local pos, next_exp, due = queue_info(id, ticket)
  return {QUEUED, pos, next_exp, due}
end

if recheck then
  -- its ticket is gone (expired, or granted and that lease lost), or it never came: a re-sent
  -- ask whose first copy is still on its way. That copy must find the id withdrawn, not queue.
  remember_withdrawn(id)
  return {LOST}
end

if ttl <= 0 then
  for _, name in ipairs(REQ) do
    local t = cfg(name).ttl
    if t > 0 and (ttl <= 0 or t < ttl) then ttl = t end
  end
  if ttl <= 0 then ttl = default_ttl end
end

local ok, w, d = assess(id, EFF, occ, prio, units_only, false)
if ok then
  local token, exp = grant(id, EFF, occ, meta, ttl, 0, units_only)
  return {GRANTED, token, exp, ttl}
end
if not wait then return {BUSY} end

-- backpressure: the request that would be the (max+1)-th waiter of a limit fails at once
for _, name in ipairs(REQ) do
  local c = cfg(name)
  if c.maxw and redis.call('ZCARD', LIM[name].queue) >= c.maxw then
    hincr(LIM[name].cfg, 'c_rejected', 1)
    if c.tpl then hincr(LIM[c.tpl].cfg, 'c_rejected', 1) end
    touch({name})
    emit('reject', id, REQ, occ, meta, 'queue_full ' .. name)
    return {QUEUE_FULL, name, c.maxw}
  end
end

local seq = next_seq()
local score = -prio * 1e12 + seq
local exp = NOW + ttl
local rec = {n = EFF, o = occ, m = meta, p = prio, c = channel, a = NOW, e = exp, l = ttl,
             u = NOW_US, k = units_only and 1 or 0, w = w, d = d}
redis.call('HSET', K_TICKETS, id, cmsgpack.pack(rec))
redis.call('ZADD', K_TICKET_EXP, exp, id)
for _, name in ipairs(EFF) do
  local c = cfg(name)
  -- a template queues only the requests its --total may block (units only: never)
  if not c.template or (c.slots and not units_only) then
    redis.call('ZADD', LIM[name].queue, score, id)
  end
end
touch(REQ)
local pos, next_exp, due = queue_info(id, rec)
return {QUEUED, pos, next_exp, due}
