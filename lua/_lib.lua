-- _lib.lua — shared prelude, prepended by the script registry to every slotkeeper script.
--
-- KEYS layout (every script):
--   KEYS[1] limits      SET   names of every limit in the namespace
--   KEYS[2] leases      HASH  lease id  -> msgpack lease record
--   KEYS[3] tickets     HASH  ticket id -> msgpack ticket record (a waiting request)
--   KEYS[4] ticket_exp  ZSET  ticket id -> expiry (ms, server clock)
--   KEYS[5] fence       STRING monotonic counter: fencing tokens and queue arrival order
--   then, for the i-th limit named in ARGV (i = 1..n), three keys:
--   KEYS[5+3i-2] limit:<name>   HASH  config (slots, ttl, enabled, desc, created, updated) + counters
--   KEYS[5+3i-1] holders:<name> ZSET  lease id (and id#2..id#occupy) -> lease expiry (ms)
--   KEYS[5+3i]   queue:<name>   ZSET  ticket id -> order score (-priority * 1e12 + arrival seq)
-- ARGV[1] = n, ARGV[2..n+1] = limit names (aligned with the per-limit keys); script arguments follow,
-- ARGV[A0 + k] being the k-th one.
--
-- Records (msgpack maps, single-letter fields to keep memory per lease small):
--   lease:  n=names, o=occupy, m=holder meta map, a=acquired ms, r=renewed ms, e=expiry ms,
--           t=fencing token, l=ttl ms
--   ticket: n=names, o=occupy, m=meta, p=priority, c=notify channel, a=arrival ms, e=expiry ms,
--           l=lease ttl ms, u=arrival microseconds (for the wait-time sum; absent in older tickets)
-- Usage of a limit is derived, never counted: ZCOUNT of its holders with expiry > now.
-- An expired lease's record is deleted when any of its limits purges its holder entry (the record
-- is garbage once expired; the other limits purge their own entries by score, without it).
-- Every time comes from redis TIME. Status codes (first element of a reply: OK, GRANTED, QUEUED,
-- BUSY, NOT_FOUND, OCCUPY_EXCEEDS, LOST, CANCELLED, EXISTS, HELD, REJECTED, NEED_KEYS, MORE) are
-- Lua locals declared by a line the script registry generates from slotkeeper.broker.codes.Status
-- and puts before this prelude: scripts return them by name, never as bare numbers.

local K_LIMITS, K_LEASES = KEYS[1], KEYS[2]
local K_TICKETS, K_TICKET_EXP, K_FENCE = KEYS[3], KEYS[4], KEYS[5]

local _t = redis.call('TIME')
local NOW = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
local NOW_US = tonumber(_t[1]) * 1000000 + tonumber(_t[2])   -- wait times are summed in microseconds

local NAMES, LIM = {}, {}
local NLIM = tonumber(ARGV[1])
for i = 1, NLIM do
  local name = ARGV[1 + i]
  local base = 5 + 3 * (i - 1)
  NAMES[i] = name
  LIM[name] = {cfg = KEYS[base + 1], holders = KEYS[base + 2], queue = KEYS[base + 3]}
end
local A0 = NLIM + 1

-- Wait-time histogram bounds in ms (mirrored in slotkeeper.broker.keys.WAIT_BUCKETS_MS).
local WAIT_BOUNDS = {1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000}

local GC_BATCH = 50       -- expired records collected per call by ordinary scripts
local PURGE_BATCH = 200   -- expired holder entries purged per limit per call
local GRANT_BUDGET = 100  -- tickets examined per grant pass

local function fmt(x) return string.format('%d', x) end

local MAX_OCCUPY = 10000        -- mirrors slotkeeper.broker.client.check_occupy
local MAX_MS = 1e15             -- any time or duration in ms beyond this is garbage

-- A number field of a stored record, or nil if it is not a finite number within [lo, hi].
local function num(v, lo, hi)
  local x = tonumber(v)
  if x == nil or x ~= x or x < lo or x > hi then return nil end
  return math.floor(x)
end

-- A lease or ticket record with every field checked and coerced to its type where it is read
-- (a string "1" becomes 1), or nil: garbage written by someone else is treated as absent, so it can
-- never make a comparison throw halfway through a script. Same rules: broker/records.py.
local function load(hkey, id)
  local raw = redis.call('HGET', hkey, id)
  if not raw then return nil end
  local ok, rec = pcall(cmsgpack.unpack, raw)
  if not ok or type(rec) ~= 'table' or type(rec.n) ~= 'table' or #rec.n == 0 then return nil end
  for _, x in ipairs(rec.n) do if type(x) ~= 'string' then return nil end end
  rec.o, rec.e = num(rec.o, 1, MAX_OCCUPY), num(rec.e, 0, MAX_MS)
  rec.l = num(rec.l, 1, MAX_MS)
  if not (rec.o and rec.e and rec.l) then return nil end
  rec.a, rec.r = num(rec.a, 0, MAX_MS) or NOW, num(rec.r, 0, MAX_MS) or NOW
  rec.t, rec.p = num(rec.t, 0, MAX_MS) or 0, num(rec.p, -MAX_MS, MAX_MS) or 0
  if type(rec.m) ~= 'table' then rec.m = {} end
  if type(rec.c) ~= 'string' then rec.c = nil end
  return rec
end

-- Next value of the namespace's monotonic counter; a counter overwritten with garbage restarts.
local function next_seq()
  local r = redis.pcall('INCR', K_FENCE)
  if type(r) == 'table' and r.err then
    redis.call('DEL', K_FENCE)
    return redis.call('INCR', K_FENCE)
  end
  return r
end

local function members(id, occ)
  local m = {id}
  for j = 2, occ do m[j] = id .. '#' .. j end
  return m
end

local CFG = {}
local RECORDS_DELETED = 0   -- expired lease records deleted by purge_holders in this call
local function cfg(name)
  local c = CFG[name]
  if c ~= nil then return c or nil end
  local raw = redis.call('HMGET', LIM[name].cfg, 'slots', 'ttl', 'enabled')
  -- only plain decimal integers count: garbage ('nan', 'inf', '1e400', '0x10', '-1') is absent
  if not raw[1] or #raw[1] > 10 or not string.match(raw[1], '^%d+$') then
    CFG[name] = false
    return nil
  end
  local ttl = raw[2] and #raw[2] <= 10 and string.match(raw[2], '^%d+$') and tonumber(raw[2]) or 0
  c = {slots = tonumber(raw[1]), ttl = ttl, enabled = raw[3] ~= '0'}
  CFG[name] = c
  return c
end

local function create_limit(name, slots, ttl, enabled, desc)
  redis.call('HSET', LIM[name].cfg, 'slots', slots, 'ttl', ttl, 'enabled', enabled,
    'desc', desc, 'created', NOW, 'updated', NOW)
  redis.call('SADD', K_LIMITS, name)
  CFG[name] = nil
end

local function used(name)
  return redis.call('ZCOUNT', LIM[name].holders, '(' .. fmt(NOW), '+inf')
end

-- HINCRBY that survives a counter another client overwrote with a non-integer: it restarts.
local function hincr(key, field, by)
  local r = redis.pcall('HINCRBY', key, field, by)
  if type(r) == 'table' and r.err then redis.call('HSET', key, field, by) end
end

local function count(name, field, by)
  if cfg(name) then hincr(LIM[name].cfg, field, by) end
end

local function notify(rec, id, msg)
  if type(rec.c) == 'string' and rec.c ~= '' then redis.call('PUBLISH', rec.c, id .. ' ' .. msg) end
end

-- Remove expired holder entries of one limit (bounded); counts each expired lease once and
-- deletes its (now garbage) record.
local function purge_holders(name, batch)
  local h = LIM[name].holders
  local dead = redis.call('ZRANGE', h, '-inf', fmt(NOW), 'BYSCORE', 'LIMIT', 0, batch)
  if #dead == 0 then return 0 end
  redis.call('ZREM', h, unpack(dead))
  local ids = {}
  for _, m in ipairs(dead) do
    if not string.find(m, '#', 1, true) then table.insert(ids, m) end
  end
  if #ids > 0 then
    count(name, 'c_expired', #ids)
    RECORDS_DELETED = RECORDS_DELETED + redis.call('HDEL', K_LEASES, unpack(ids))
  end
  return #dead
end

-- Remove a ticket everywhere we can (queues whose keys were passed; others clean lazily).
local function drop_ticket(id, rec)
  redis.call('HDEL', K_TICKETS, id)
  redis.call('ZREM', K_TICKET_EXP, id)
  if rec then
    for _, name in ipairs(rec.n) do
      if LIM[name] then redis.call('ZREM', LIM[name].queue, id) end
    end
  end
end

-- Collect expired ticket records namespace-wide (bounded). (Expired lease records go with their
-- holder entries: see purge_holders.)
local function gc(batch)
  local tdead = redis.call('ZRANGE', K_TICKET_EXP, '-inf', fmt(NOW), 'BYSCORE', 'LIMIT', 0, batch)
  for _, id in ipairs(tdead) do drop_ticket(id, load(K_TICKETS, id)) end
  if #tdead > 0 then redis.call('ZREM', K_TICKET_EXP, unpack(tdead)) end
  return #tdead
end

-- First live ticket of a limit's queue; dead entries at the head are dropped (bounded).
local function live_head(name)
  local q = LIM[name].queue
  for _ = 1, GRANT_BUDGET do
    local head = redis.call('ZRANGE', q, 0, 0)[1]
    if not head then return nil end
    local rec = load(K_TICKETS, head)
    if rec and tonumber(rec.e) > NOW then return head, rec end
    redis.call('ZREM', q, head)
    if rec then drop_ticket(head, rec) else drop_ticket(head, nil) end
  end
  return nil
end

local function wait_bucket(ms)
  for i, b in ipairs(WAIT_BOUNDS) do if ms <= b then return i end end
  return #WAIT_BOUNDS + 1
end

-- Create a lease record and its holder entries; returns token, expiry. waited_us: time queued.
local function make_lease(id, names, occ, meta, ttl, waited_us)
  local token = next_seq()
  local exp = NOW + ttl
  redis.call('HSET', K_LEASES, id, cmsgpack.pack(
    {n = names, o = occ, m = meta, a = NOW, r = NOW, e = exp, t = token, l = ttl}))
  local zargs = {}
  for j, m in ipairs(members(id, occ)) do zargs[2 * j - 1] = exp; zargs[2 * j] = m end
  local bucket = 'w' .. wait_bucket(waited_us / 1000)
  for _, name in ipairs(names) do
    local k = LIM[name].cfg
    redis.call('ZADD', LIM[name].holders, unpack(zargs))
    hincr(k, 'c_acquired', 1)
    hincr(k, bucket, 1)
    if waited_us > 0 then hincr(k, 'w_sum_us', waited_us) end
  end
  return token, exp
end

-- Can this waiting ticket be granted now? 'g' (granted: token, expiry; ttl is rec.l), 'w' (keep waiting),
-- 'r' (needs limits whose keys were not passed: its owner must retry), 'x' (rejected: reason, name,
-- slots).
local function try_grant_ticket(id, rec)
  for _, name in ipairs(rec.n) do
    if not LIM[name] then return 'r' end
  end
  for _, name in ipairs(rec.n) do
    local c = cfg(name)
    if not c then return 'x', 'missing', name, 0 end
    if c.enabled and rec.o > c.slots then return 'x', 'exceeds', name, c.slots end
  end
  for _, name in ipairs(rec.n) do
    local head = live_head(name)
    if head ~= id then return 'w' end
    local c = cfg(name)
    if c.enabled and used(name) + rec.o > c.slots then return 'w' end
  end
  drop_ticket(id, rec)
  local token, exp = make_lease(id, rec.n, rec.o, rec.m, rec.l,
                                    NOW_US - (tonumber(rec.u) or rec.a * 1000))
  return 'g', token, exp
end

-- Grant the head tickets of a limit's queue that now fit, notifying their processes at once.
local function grant_pass(name)
  local granted = 0
  for _ = 1, GRANT_BUDGET do
    local id, rec = live_head(name)
    if not id then break end
    local st, a, b, c = try_grant_ticket(id, rec)
    if st == 'g' then
      notify(rec, id, 'g ' .. fmt(a) .. ' ' .. fmt(b) .. ' ' .. fmt(rec.l))
      granted = granted + 1
    elseif st == 'x' then
      drop_ticket(id, rec)
      notify(rec, id, 'x ' .. a .. ' ' .. fmt(c) .. ' ' .. b)   -- x <reason> <slots> <name>
    else
      if st == 'r' then notify(rec, id, 'r') end
      break
    end
  end
  return granted
end

-- Position (1-based) of a ticket in the first of its queues, and the ms until the earliest live
-- holder expiry across its limits (when a waiter with no daemon around should look again; 0: none).
local function queue_info(id)
  local pos = redis.call('ZRANK', LIM[NAMES[1]].queue, id)
  local next_exp = 0
  for _, name in ipairs(NAMES) do
    local e = redis.call('ZRANGE', LIM[name].holders, '(' .. fmt(NOW), '+inf', 'BYSCORE',
      'LIMIT', 0, 1, 'WITHSCORES')[2]
    if e and (next_exp == 0 or tonumber(e) < next_exp) then next_exp = tonumber(e) end
  end
  if next_exp > 0 then next_exp = next_exp - NOW end
  return (pos or -1) + 1, next_exp
end

local function missing_key(names)
  for _, name in ipairs(names) do
    if not LIM[name] then return name end
  end
  return nil
end
