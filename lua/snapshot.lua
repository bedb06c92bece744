-- snapshot.lua — read-only view of one limit: config and counters, live holders, live waiters,
-- rate use.
-- KEYS: the fixed nine + five for the one limit, then five per matching template (see _lib.lua).
-- ARGV: n, name, templates..., max_items
-- Returns: {NOT_FOUND} or {0, config_and_counters (flat HGETALL), used, now_ms,
--           holders {id, raw record, ...}, waiters {id, raw record, score, ...}, n_holders, n_waiters,
--           template name ('' if none), template config (flat HGETALL; {} if none),
--           units in the rate window, ms until the window has room for one unit (0: now),
--           keys made from it (templates)}
-- Raw records are returned as stored (msgpack) so the client decodes them and can report garbage.
-- Writes nothing (rate use is summed, not trimmed). Complexity: O(max_items * log N + window).
local name = NAMES[1]
local max = tonumber(ARGV[A0 + 1])
local L = LIM[name]
if redis.call('EXISTS', L.cfg) == 0 then return {NOT_FOUND} end
local conf = redis.call('HGETALL', L.cfg)
local c = cfg(name)
local tname, tconf = '', {}
if c and c.tpl then
  tname = c.tpl
  tconf = redis.call('HGETALL', LIM[tname].cfg)
elseif not c and NEEDKEY[name] then
  tname = NEEDKEY[name]
end
local holders = {}
local ids = redis.call('ZRANGE', L.holders, '(' .. fmt(NOW), '+inf', 'BYSCORE', 'LIMIT', 0, max)
for _, m in ipairs(ids) do
  if not string.find(m, '#', 1, true) then
    table.insert(holders, m)
    table.insert(holders, redis.call('HGET', K_LEASES, m) or '')
  end
end
local waiters = {}
local q = redis.call('ZRANGE', L.queue, 0, max - 1, 'WITHSCORES')
for j = 1, #q, 2 do
  table.insert(waiters, q[j])
  table.insert(waiters, redis.call('HGET', K_TICKETS, q[j]) or '')
  table.insert(waiters, q[j + 1])
end
local in_window, room = 0, 0
if c and c.rate_n and not c.template then
  local batches = redis.call('ZRANGE', L.rate, '(' .. fmt(NOW - c.rate_p), '+inf', 'BYSCORE',
    'LIMIT', 0, RATE_WALK, 'WITHSCORES')
  local firsts = {}
  for j = 1, #batches, 2 do
    in_window = in_window + units_of(batches[j])
    table.insert(firsts, {units_of(batches[j]), tonumber(batches[j + 1])})
  end
  local excess = in_window + 1 - c.rate_n
  for _, b in ipairs(firsts) do
    if excess <= 0 then break end
    excess = excess - b[1]
    room = b[2] + c.rate_p - NOW
  end
end
return {OK, conf, used(name), NOW, holders, waiters,
  redis.call('ZCARD', L.holders), redis.call('ZCARD', L.queue), tname, tconf, in_window, room,
  redis.call('ZCARD', L.members)}
