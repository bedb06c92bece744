-- _lib.lua — shared prelude, prepended by the script registry to every slotkeeper script.
--
-- KEYS layout (every script):
--   KEYS[1] limits      SET   names of every limit in the namespace (own limits and templates)
--   KEYS[2] leases      HASH  lease id  -> msgpack lease record
--   KEYS[3] tickets     HASH  ticket id -> msgpack ticket record (a waiting request)
--   KEYS[4] ticket_exp  ZSET  ticket id -> expiry (ms, server clock)
--   KEYS[5] fence       STRING monotonic counter: fencing tokens and queue arrival order
--   KEYS[6] templates   SET   names of the templates (limits whose name ends in '*')
--   KEYS[7] events      STREAM audit events, capped (see emit below and broker/events.py)
--   KEYS[8] settings    HASH  namespace settings: events (0 off), events_cap
--   KEYS[9] withdrawn   ZSET  request id -> ms until which an ask under that id is refused: a
--                             withdrawn request (cancel.lua: its withdrawal may overtake its
--                             ask), a released lease whose ask was sent twice (release.lua), or
--                             a re-sent ask whose re-check found nothing (acquire.lua)
--   then, for the i-th limit named in ARGV (i = 1..n), five keys:
--   KEYS[9+5i-4] limit:<name>   HASH  config (slots or 'none', ttl, enabled, desc, rate_n, rate_p ms,
--                                     spread, maxw, total, idle ms, created, updated) + counters;
--                                     a key made from a template holds tpl=<template> instead of
--                                     config, and reads the template's config at every call
--   KEYS[9+5i-3] holders:<name> ZSET  lease id (and id#2..id#occupy) -> lease expiry (ms)
--   KEYS[9+5i-2] queue:<name>   ZSET  ticket id -> order score (-priority * 1e12 + arrival seq)
--   KEYS[9+5i-1] rate:<name>    ZSET  grant batch 'id units' -> grant time ms (the sliding window)
--   KEYS[9+5i]   keys:<name>    ZSET  (templates) key made from it -> last activity ms
-- ARGV[1] = n, ARGV[2..n+1] = limit names (aligned with the per-limit keys); script arguments follow,
-- ARGV[A0 + k] being the k-th one. A caller naming a key that may come from a template also names
-- every template whose prefix matches it (the client reads the templates SET); the script picks the
-- longest one. Scripts never build key names, but for one bounded exception: the lazy idle reap
-- (reap_lazy below) derives an idle key's keys from its template's.
--
-- Records (msgpack maps, single-letter fields to keep memory per lease small):
--   lease:  n=names, o=occupy, m=holder meta map, a=acquired ms, r=renewed ms, e=expiry ms,
--           t=fencing token, l=ttl ms
--   ticket: n=names, o=occupy, m=meta, p=priority, c=notify channel, a=arrival ms, e=expiry ms,
--           l=lease ttl ms, u=arrival microseconds (for the wait-time sum; absent in older tickets),
--           k=1 for units only (rate_limit: no lease), w=names that blocked it at its last
--           assessment, d=ms when its rate units are due (0: not blocked by rates only)
-- Usage of a limit is derived, never counted: ZCOUNT of its holders with expiry > now. Rate use is
-- the sum of the units of the batches in rate:<name> within (now - period, now]; r_used in the
-- limit's hash caches that sum (kept exact by the scripts, reset when the window is empty).
-- An expired lease's record is deleted when any of its limits purges its holder entry (the record
-- is garbage once expired; the other limits purge their own entries by score, without it).
-- Every time comes from redis TIME. Status codes (first element of a reply: OK, GRANTED, QUEUED,
-- BUSY, NOT_FOUND, OCCUPY_EXCEEDS, LOST, CANCELLED, EXISTS, HELD, REJECTED, NEED_KEYS, MORE,
-- QUEUE_FULL) are Lua locals declared by a line the script registry generates from
-- slotkeeper.broker.codes.Status and puts before this prelude: scripts return them by name, never
-- as bare numbers.

local K_LIMITS, K_LEASES = KEYS[1], KEYS[2]
local K_TICKETS, K_TICKET_EXP, K_FENCE, K_TEMPLATES = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local K_EVENTS, K_SETTINGS, K_WITHDRAWN = KEYS[7], KEYS[8], KEYS[9]
local NFIXED = 9

local _t = redis.call('TIME')
local NOW = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
local NOW_US = tonumber(_t[1]) * 1000000 + tonumber(_t[2])   -- wait times are summed in microseconds

local NAMES, LIM = {}, {}
local NLIM = tonumber(ARGV[1])
for i = 1, NLIM do
  local name = ARGV[1 + i]
  local base = NFIXED + 5 * (i - 1)
  NAMES[i] = name
  LIM[name] = {cfg = KEYS[base + 1], holders = KEYS[base + 2], queue = KEYS[base + 3],
               rate = KEYS[base + 4], members = KEYS[base + 5]}
end
local A0 = NLIM + 1

-- Wait-time histogram bounds in ms (mirrored in slotkeeper.broker.keys.WAIT_BUCKETS_MS).
local WAIT_BOUNDS = {1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000}

local GC_BATCH = 50       -- expired records collected per call by ordinary scripts
local PURGE_BATCH = 200   -- expired holder entries (and rate batches) purged per limit per call
local GRANT_BUDGET = 100  -- tickets examined per grant pass
local RATE_WALK = 1000    -- rate batches examined to find when a request's units are due
local DEFAULT_IDLE = 3600000

local function fmt(x) return string.format('%d', x) end

local function is_tpl(name) return string.sub(name, -1) == '*' end

local function in_list(list, x)
  if type(list) ~= 'table' then return false end
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

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
  rec.k, rec.d = num(rec.k, 0, 1), num(rec.d, 0, MAX_MS)   -- ticket fields; nil when absent
  if type(rec.w) == 'table' then
    local w = {}
    for _, x in ipairs(rec.w) do if type(x) == 'string' then table.insert(w, x) end end
    rec.w = w
  else
    rec.w = nil
  end
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

-- only plain decimal integers count: garbage ('nan', 'inf', '1e400', '0x10', '-1') is absent
local function digits(v)
  if type(v) ~= 'string' or #v > 15 or not string.match(v, '^%d+$') then return nil end
  return tonumber(v)
end

local FIELDS = {'slots', 'ttl', 'enabled', 'rate_n', 'rate_p', 'spread', 'maxw', 'total', 'idle',
                'tpl'}

-- A config from its raw fields (HMGET FIELDS order), or nil if it is unusable: a limit needs slots
-- (a number) or a rate (slots 'none').
local function parse_settings(raw)
  local slots, rn, rp = digits(raw[1]), digits(raw[4]), digits(raw[5])
  if not rn or rn < 1 or not rp or rp < 1 then rn, rp = nil, nil end
  if not slots and not (raw[1] == 'none' and rn) then return nil end
  return {slots = slots, ttl = digits(raw[2]) or 0, enabled = raw[3] ~= '0', rate_n = rn,
          rate_p = rp, spread = raw[6] == '1', maxw = digits(raw[7]), total = digits(raw[8]),
          idle = digits(raw[9]) or DEFAULT_IDLE}
end

local CFG, NEEDKEY = {}, {}
local RECORDS_DELETED = 0   -- expired lease records deleted by purge_holders in this call

-- The config of a limit, or nil. A template, seen as a limit of its own, has its --total as slots
-- (nil: no cap) and no rate; its per-key settings are c.per. A key made from a template gets the
-- template's per-key settings (c.tpl names the template); if the template's keys were not passed,
-- it is nil and NEEDKEY[name] names the template.
local function cfg(name)
  local c = CFG[name]
  if c ~= nil then return c or nil end
  local raw = redis.call('HMGET', LIM[name].cfg, unpack(FIELDS))
  if is_tpl(name) then
    local t = parse_settings(raw)
    if t then
      c = {slots = t.total, ttl = 0, enabled = t.enabled, template = true, idle = t.idle, per = t}
    end
  elseif not raw[1] and raw[10] then
    local tname = raw[10]
    if not LIM[tname] then
      NEEDKEY[name] = tname
    else
      local t = cfg(tname)
      if t and t.template then
        c = {}
        for k, v in pairs(t.per) do c[k] = v end
        c.total, c.idle, c.tpl = nil, nil, tname
      end
    end
  else
    c = parse_settings(raw)
  end
  CFG[name] = c or false
  return c
end

local function create_limit(name, slots, ttl, enabled, desc)
  redis.call('HSET', LIM[name].cfg, 'slots', slots, 'ttl', ttl, 'enabled', enabled,
    'desc', desc, 'created', NOW, 'updated', NOW)
  redis.call('SADD', K_LIMITS, name)
  CFG[name] = nil
end

-- The longest template passed whose prefix matches `name` (and that exists), or nil.
local function template_for(name)
  local best
  for _, t in ipairs(NAMES) do
    if is_tpl(t) and #t - 1 <= #name and string.sub(name, 1, #t - 1) == string.sub(t, 1, -2)
        and cfg(t) and (not best or #t > #best) then
      best = t
    end
  end
  return best
end

-- Make key `name` from template `t` (atomically, inside the acquire that first uses it).
local function materialize(name, t)
  redis.call('HSET', LIM[name].cfg, 'tpl', t, 'created', NOW)
  redis.call('ZADD', LIM[t].members, NOW, name)
  CFG[name] = nil
  NEEDKEY[name] = nil
end

-- Record activity on keys made from templates (what idle removal looks at).
local function touch(names)
  for _, name in ipairs(names) do
    local c = CFG[name]
    if c and c.tpl and LIM[c.tpl] then redis.call('ZADD', LIM[c.tpl].members, NOW, name) end
  end
end

-- Names a request holds: the named limits, then the templates their keys were made from.
local function effective(names)
  local out, seen = {}, {}
  for _, name in ipairs(names) do
    if not seen[name] then table.insert(out, name); seen[name] = true end
  end
  for _, name in ipairs(names) do
    local c = cfg(name)
    if c and c.tpl and not seen[c.tpl] then table.insert(out, c.tpl); seen[c.tpl] = true end
  end
  return out
end

-- Does a lease hold slot entries in this limit? (A rate-only limit holds none; a template holds
-- its keys' entries when it caps a total or its keys have slots.)
local function holds_slots(c)
  if c.template then return c.slots ~= nil or c.per.slots ~= nil end
  return c.slots ~= nil
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

-- Audit events: one entry of the namespace's capped stream per grant, release, expiry, revoke,
-- timeout, cancel, rejection and limit change, written by the script that makes it happen.
-- Fields: k kind, i lease/ticket id, n names (newline-joined), o occupy, m holder meta (msgpack),
-- x detail. Recording is on unless settings.events is '0'; the stream keeps about events_cap
-- entries (XADD MAXLEN ~). Settings are read once per script call, and only if something happens.
local EVENTS_CAP = 10000   -- default cap (slotkeeper.broker.events.DEFAULT_CAP)
local EV_ON, EV_CAP = nil, EVENTS_CAP
local function emit(kind, id, names, occ, meta, detail)
  if EV_ON == nil then
    local st = redis.call('HMGET', K_SETTINGS, 'events', 'events_cap')
    EV_ON = st[1] ~= '0'
    local cap = tonumber(st[2])
    if cap and cap >= 1 then EV_CAP = math.floor(cap) end
  end
  if not EV_ON then return end
  local m = ''
  if type(meta) == 'table' then m = cmsgpack.pack(meta) end
  redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EV_CAP, '*', 'k', kind, 'i', id or '',
    'n', table.concat(names or {}, '\n'), 'o', occ or 0, 'm', m, 'x', detail or '')
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
    for _, lid in ipairs(ids) do   -- one event per lease: its record goes with the first purge
      local rec = load(K_LEASES, lid)
      if rec then
        emit('expire', lid, rec.n, rec.o, rec.m, 'expired ' .. fmt(NOW - tonumber(rec.e)) .. ' ms ago')
      end
    end
    RECORDS_DELETED = RECORDS_DELETED + redis.call('HDEL', K_LEASES, unpack(ids))
  end
  return #dead
end

-- ---- rate: a sliding window of rate_p ms holds at most rate_n units ------------------------------

local function units_of(m) return tonumber(string.match(m, ' (%d+)$')) or 0 end

-- Units granted within (NOW - period, NOW]; drops batches that left the window (bounded: if more
-- remain, the sum over-counts, which only delays grants).
local function rate_used(name, c)
  if c.r_used then return c.r_used end
  local k = LIM[name]
  local u = tonumber(redis.call('HGET', k.cfg, 'r_used')) or 0
  local old = redis.call('ZRANGE', k.rate, '-inf', fmt(NOW - c.rate_p), 'BYSCORE', 'LIMIT', 0,
    PURGE_BATCH)
  local changed = false
  if #old > 0 then
    for _, m in ipairs(old) do u = u - units_of(m) end
    redis.call('ZREM', k.rate, unpack(old))
    changed = true
  end
  if u ~= 0 and (u < 0 or redis.call('ZCARD', k.rate) == 0) then u = 0; changed = true end
  if changed then redis.call('HSET', k.cfg, 'r_used', u) end
  c.r_used = u
  return u
end

-- When (ms) `occ` units of this limit's rate can be granted: <= NOW means now.
local function rate_due(name, c, occ)
  local u = rate_used(name, c)
  local due = NOW
  local excess = u + occ - c.rate_n
  if excess > 0 then
    local acc, last, start = 0, nil, 0
    due = nil
    while not due and start < RATE_WALK do
      local ms = redis.call('ZRANGE', LIM[name].rate, start, start + 99, 'WITHSCORES')
      for j = 1, #ms, 2 do
        acc = acc + units_of(ms[j])
        last = tonumber(ms[j + 1])
        if acc >= excess then due = last + c.rate_p; break end
      end
      if #ms < 200 then break end
      start = start + 100
    end
    -- not found within the walk: look again when the last batch seen leaves the window
    if not due then due = (last or NOW) + c.rate_p end
  end
  if c.spread then
    local nx = tonumber(redis.call('HGET', LIM[name].cfg, 'r_next')) or 0
    nx = math.ceil(nx)
    if nx > due then due = nx end
  end
  return due
end

-- Take `occ` units of this limit's rate for request `id`.
local function rate_take(name, c, id, occ)
  local k = LIM[name]
  local u = rate_used(name, c) + occ
  redis.call('ZADD', k.rate, NOW, id .. ' ' .. occ)
  redis.call('HSET', k.cfg, 'r_used', u)
  c.r_used = u
  if c.spread then
    local nx = tonumber(redis.call('HGET', k.cfg, 'r_next')) or 0
    if nx < NOW then nx = NOW end
    redis.call('HSET', k.cfg, 'r_next', string.format('%.3f', nx + occ * c.rate_p / c.rate_n))
  end
  hincr(k.cfg, 'c_units', occ)
  if c.tpl and LIM[c.tpl] then hincr(LIM[c.tpl].cfg, 'c_units', occ) end   -- aggregated
end

-- ---- tickets and queues ----------------------------------------------------------------------

-- ---- idle keys made from templates: removed after the template's --idle-ttl ----------------------

local LAZY_REAP = 2   -- idle keys of a template one acquire of one of its keys removes, at most

-- Is key `name` (config c) empty enough to remove: no live holder, no waiter, an empty rate window
-- (so no rate state is lost)? Purges its expired holder entries and old rate batches first.
-- The one definition of "idle" (reap_idle.lua and the lazy reap below).
local function key_empty(name, c)
  local L = LIM[name]
  purge_holders(name, PURGE_BATCH)
  local empty = used(name) == 0 and redis.call('ZCARD', L.holders) == 0
    and redis.call('ZCARD', L.queue) == 0
  if empty and c.rate_n then rate_used(name, c) end   -- drops batches that left the window
  if empty then empty = redis.call('ZCARD', L.rate) == 0 end
  return empty
end

-- Remove key `name` made from template `tname` (config t) if its last activity is older than the
-- template's --idle-ttl and it is empty. Returns 'removed', 'busy' (idle long enough, but in use)
-- or nil (not idle, or made from another template).
local function reap_key(tname, t, name)
  local L = LIM[name]
  local last = tonumber(redis.call('ZSCORE', LIM[tname].members, name))
  local c = cfg(name)
  if last and c and c.tpl == tname and last <= NOW - t.idle then
    if not key_empty(name, c) then return 'busy' end
    redis.call('DEL', L.cfg, L.holders, L.queue, L.rate)
    redis.call('ZREM', LIM[tname].members, name)
    CFG[name] = false
    emit('limit', '', {name}, 0, nil, 'idle key removed (template ' .. tname .. ')')
    return 'removed'
  elseif last and not c and not NEEDKEY[name] and redis.call('EXISTS', L.cfg) == 0 then
    redis.call('ZREM', LIM[tname].members, name)   -- gone already
    return 'removed'
  end
  return nil
end

-- The keys of `name`, a key made from template `tname`, derived from the template's own keys (the
-- one place a script names keys it was not passed: same namespace prefix, so the same hash slot;
-- see the key table in broker/keys.py). Nil if the template's config key has another shape.
local function key_layout(tname, name)
  local tcfg = LIM[tname].cfg
  local tail = 'limit:' .. tname
  if string.sub(tcfg, -#tail) ~= tail then return nil end
  local base = string.sub(tcfg, 1, #tcfg - #tail)
  return {cfg = base .. 'limit:' .. name, holders = base .. 'holders:' .. name,
          queue = base .. 'queue:' .. name, rate = base .. 'rate:' .. name,
          members = base .. 'keys:' .. name}
end

-- Lazy idle removal (no daemon needed): a call using a key made from template `tname` also
-- removes up to LAZY_REAP of its keys idle past --idle-ttl, least recently active first. Names
-- this call was passed are never candidates. A candidate not removed (still in use) counts as
-- active now, so the next call looks past it. Cost: one ZRANGE BYSCORE LIMIT on keys:<template>
-- (O(log N)) and at most LAZY_REAP checks (each O(purge batch)). Returns the number removed.
local function reap_lazy(tname)
  local t = cfg(tname)
  if not t or not t.template then return 0 end
  local removed = 0
  local cands = redis.call('ZRANGE', LIM[tname].members, '-inf', fmt(NOW - t.idle), 'BYSCORE',
    'LIMIT', 0, LAZY_REAP)
  for _, name in ipairs(cands) do
    local L = not LIM[name] and key_layout(tname, name)
    if L then
      LIM[name] = L
      local r = reap_key(tname, t, name)
      if r == 'removed' then
        removed = removed + 1
      else   -- in use (or not this template's to judge): looked at now, so the next call looks on
        redis.call('ZADD', LIM[tname].members, NOW, name)
      end
      LIM[name], CFG[name], NEEDKEY[name] = nil, nil, nil
    end
  end
  return removed
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

-- Does a waiting ticket stand aside in the queue of `name`? A request blocked only by rates holds
-- no place in its other limits' queues until its units are due; in a template's queue (the
-- --total) a ticket stands aside unless the total is what blocks it.
local function deferred(rec, name)
  local d = tonumber(rec.d) or 0
  if d > NOW and not in_list(rec.w, name) then return true end
  return is_tpl(name) and type(rec.w) == 'table' and not in_list(rec.w, name)
end

-- First live ticket of a limit's queue that does not stand aside (or `self`, if reached first);
-- dead entries are dropped on the way (bounded: past the budget, '?' stands for "someone").
local function eff_head(name, self)
  local q = LIM[name].queue
  local idx = 0
  for _ = 1, GRANT_BUDGET do
    local head = redis.call('ZRANGE', q, idx, idx)[1]
    if not head then return nil end
    local rec = load(K_TICKETS, head)
    if rec and tonumber(rec.e) > NOW then
      if head == self or not deferred(rec, name) then return head, rec end
      idx = idx + 1
    else
      redis.call('ZREM', q, head)
      drop_ticket(head, rec)   -- an unreadable record (garbage) goes too
    end
  end
  return '?', {p = 1e9}
end

local function wait_bucket(ms)
  for i, b in ipairs(WAIT_BOUNDS) do if ms <= b then return i end end
  return #WAIT_BOUNDS + 1
end

-- Can a request be granted now? Returns true, or false, the names that block it, and when its
-- rate units are due (0: not waiting for a rate). A request waiting for rate units is judged by
-- them alone until they are due: it names only its rate-blocked limits (and stands aside in the
-- others' queues, see deferred), whatever their slots look like meanwhile. `queued`: it is a
-- waiting ticket (else a newcomer, which passes a head only with a higher priority).
local function assess(id, names, occ, prio, units_only, queued)
  local rate_w, other_w, due = {}, {}, 0
  for _, name in ipairs(names) do
    local c = cfg(name)
    if c.enabled and not (units_only and c.template) then
      local rd, other = 0, false
      local h, hrec = eff_head(name, id)
      if h and h ~= id and (queued or prio <= (tonumber(hrec.p) or 0)) then
        local hd = tonumber(hrec.d) or 0
        if hd > NOW and in_list(hrec.w, name) then rd = hd else other = true end
      end
      if not units_only and c.slots and used(name) + occ > c.slots then other = true end
      if c.rate_n and not c.template then
        local dd = rate_due(name, c, occ)
        if dd > NOW and dd > rd then rd = dd end
      end
      if rd > 0 then
        table.insert(rate_w, name)
        if rd > due then due = rd end
      elseif other then
        table.insert(other_w, name)
      end
    end
  end
  if #rate_w > 0 then return false, rate_w, due end
  if #other_w > 0 then return false, other_w, 0 end
  return true
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
    if holds_slots(cfg(name)) then redis.call('ZADD', LIM[name].holders, unpack(zargs)) end
    hincr(k, 'c_acquired', 1)
    hincr(k, bucket, 1)
    if waited_us > 0 then hincr(k, 'w_sum_us', waited_us) end
  end
  return token, exp
end

-- Grant a request that assess() admitted: take the rate units of every limit with a rate, then
-- (unless units only) the lease. Returns token, expiry (0, 0 for units only).
local function grant(id, names, occ, meta, ttl, waited_us, units_only)
  for _, name in ipairs(names) do
    local c = cfg(name)
    if c.rate_n and not c.template then rate_take(name, c, id, occ) end
  end
  touch(names)
  emit('grant', id, names, occ, meta,
    (units_only and 'units ' or '') .. 'waited ' .. fmt(math.floor(waited_us / 1000)) .. ' ms')
  if units_only then return 0, 0 end
  return make_lease(id, names, occ, meta, ttl, waited_us)
end

-- Is `occ` more than a limit could ever grant? Returns the cap exceeded, or nil.
local function exceeds(c, occ, units_only)
  if not c.enabled then return nil end
  if not units_only and c.slots and occ > c.slots then return c.slots end
  if c.rate_n and not c.template and occ > c.rate_n then return c.rate_n end
  return nil
end

-- Can this waiting ticket be granted now? 'g' (granted: token, expiry; ttl is rec.l), 'w' (keep waiting),
-- 'r' (needs limits whose keys were not passed: its owner must retry), 'x' (rejected: reason, name,
-- the cap it exceeds or 0).
local function try_grant_ticket(id, rec)
  for _, name in ipairs(rec.n) do
    if not LIM[name] then return 'r' end
  end
  local units_only = rec.k == 1
  for _, name in ipairs(rec.n) do
    local c = cfg(name)
    if not c then
      if NEEDKEY[name] then return 'r' end
      return 'x', 'missing', name, 0
    end
    local cap = not (units_only and c.template) and exceeds(c, rec.o, units_only)
    if cap then return 'x', 'exceeds', name, cap end
  end
  local ok, w, d = assess(id, rec.n, rec.o, tonumber(rec.p) or 0, units_only, true)
  if not ok then
    local old_d = tonumber(rec.d) or 0
    if d ~= old_d or table.concat(w, '\n') ~= table.concat(type(rec.w) == 'table' and rec.w or {}, '\n') then
      rec.w, rec.d = w, d
      redis.call('HSET', K_TICKETS, id, cmsgpack.pack(rec))
      -- tell the waiter when to ask again (pushed, so nobody polls for a rate)
      if d > NOW and d ~= old_d then notify(rec, id, 'd ' .. fmt(d - NOW)) end
    end
    return 'w'
  end
  drop_ticket(id, rec)
  local token, exp = grant(id, rec.n, rec.o, rec.m, rec.l,
                           NOW_US - (tonumber(rec.u) or rec.a * 1000), units_only)
  return 'g', token, exp
end

-- Grant the tickets of a limit's queue that now fit, in order, notifying their processes at once.
-- A ticket that stands aside in this queue (see deferred) is passed over, not waited for.
local function grant_pass(name)
  local q = LIM[name].queue
  local granted, idx = 0, 0
  for _ = 1, GRANT_BUDGET do
    local id = redis.call('ZRANGE', q, idx, idx)[1]
    if not id then break end
    local rec = load(K_TICKETS, id)
    if not rec or tonumber(rec.e) <= NOW then
      redis.call('ZREM', q, id)
      drop_ticket(id, rec)   -- an unreadable record (garbage) goes too
    elseif deferred(rec, name) then
      idx = idx + 1
    else
      local st, a, b, cap = try_grant_ticket(id, rec)
      if st == 'g' then
        notify(rec, id, 'g ' .. fmt(a) .. ' ' .. fmt(b) .. ' ' .. fmt(rec.l))
        granted = granted + 1
      elseif st == 'x' then
        drop_ticket(id, rec)
        emit('reject', id, rec.n, rec.o, rec.m, a .. ' ' .. b)
        notify(rec, id, 'x ' .. a .. ' ' .. fmt(cap) .. ' ' .. b)   -- x <reason> <cap> <name>
      elseif st == 'r' then
        notify(rec, id, 'r')
        break
      elseif deferred(rec, name) then
        idx = idx + 1
      else
        break
      end
    end
  end
  return granted
end

-- Position (1-based) of a ticket in the first of its queues, the ms until the earliest live holder
-- expiry across its limits (when a waiter with no daemon around should look again; 0: none), and
-- the ms until its rate units are due (0: not waiting for a rate): the waiter asks again then.
local function queue_info(id, rec)
  local pos = redis.call('ZRANK', LIM[NAMES[1]].queue, id)
  local next_exp = 0
  for _, name in ipairs(NAMES) do
    local e = redis.call('ZRANGE', LIM[name].holders, '(' .. fmt(NOW), '+inf', 'BYSCORE',
      'LIMIT', 0, 1, 'WITHSCORES')[2]
    if e and (next_exp == 0 or tonumber(e) < next_exp) then next_exp = tonumber(e) end
  end
  if next_exp > 0 then next_exp = next_exp - NOW end
  local due = rec and tonumber(rec.d) or 0
  due = due > NOW and due - NOW or 0
  return (pos or -1) + 1, next_exp, due
end

-- Remember a request id no ask may start again (withdrawn, re-checked and not found, or released
-- after its ask was sent twice): a late copy of its ask is refused. Drops the entries whose time
-- is up (bounded).
local WITHDRAWN_MS = 120000
local function remember_withdrawn(id)
  local old = redis.call('ZRANGE', K_WITHDRAWN, '-inf', fmt(NOW), 'BYSCORE', 'LIMIT', 0, GC_BATCH)
  if #old > 0 then redis.call('ZREM', K_WITHDRAWN, unpack(old)) end
  redis.call('ZADD', K_WITHDRAWN, NOW + WITHDRAWN_MS, id)
end

local function was_withdrawn(id)
  local until_ms = tonumber(redis.call('ZSCORE', K_WITHDRAWN, id))
  return until_ms ~= nil and until_ms > NOW
end

local function missing_key(names)
  for _, name in ipairs(names) do
    if not LIM[name] then return name end
  end
  return nil
end
