-- snapshot.lua — read-only view of one limit: config and counters, live holders, live waiters.
-- KEYS: the fixed five + three for the one limit.
-- ARGV: 1, name, max_items
-- Returns: {4 NOT_FOUND} or {0, config_and_counters (flat HGETALL), used, now_ms,
--           holders {id, raw record, ...}, waiters {id, raw record, score, ...}, n_holders, n_waiters}
-- Raw records are returned as stored (msgpack) so the client decodes them and can report garbage.
-- Writes nothing. Complexity: O(max_items * log N).
local name = NAMES[1]
local max = tonumber(ARGV[A0 + 1])
local L = LIM[name]
if redis.call('EXISTS', L.cfg) == 0 then return {NOT_FOUND} end
local conf = redis.call('HGETALL', L.cfg)
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
return {OK, conf, used(name), NOW, holders, waiters,
  redis.call('ZCARD', L.holders), redis.call('ZCARD', L.queue)}
