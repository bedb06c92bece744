-- limit_delete.lua — delete one limit that nobody holds; its waiters are told it is gone.
-- KEYS: the fixed nine + five for the one limit.
-- A template is deleted only once no key made from it is left ({HELD, keys}); a key made from a
-- template cannot be deleted (it goes by itself after the template's --idle-ttl): {NOT_FOUND}.
-- ARGV: 1, name, batch
-- Returns: {OK} | {NOT_FOUND} | {HELD, used} | {MORE} (a batch of waiters was rejected;
--          call again — keeps every call bounded)
local name = NAMES[1]
local batch = tonumber(ARGV[A0 + 1])
local L = LIM[name]
if redis.call('SISMEMBER', K_LIMITS, name) == 0 and (redis.call('EXISTS', L.cfg) == 0
    or redis.call('HEXISTS', L.cfg, 'tpl') == 1) then
  return {NOT_FOUND}   -- (a limit whose config is garbage can still be deleted)
end
if is_tpl(name) then
  local nk = redis.call('ZCARD', L.members)
  if nk > 0 then return {HELD, nk} end
end
if purge_holders(name, batch) >= batch then return {MORE} end   -- expired records first, bounded
local u = used(name)
if u > 0 then return {HELD, u} end
local ids = redis.call('ZRANGE', L.queue, 0, batch - 1)
for _, id in ipairs(ids) do
  local rec = load(K_TICKETS, id)
  if rec then
    drop_ticket(id, rec)
    emit('reject', id, rec.n, rec.o, rec.m, 'missing ' .. name)
    notify(rec, id, 'x missing ' .. name)
  end
  redis.call('ZREM', L.queue, id)
end
if #ids >= batch then return {MORE} end
redis.call('DEL', L.cfg, L.holders, L.queue, L.rate, L.members)
redis.call('SREM', K_LIMITS, name)
redis.call('SREM', K_TEMPLATES, name)
emit('limit', '', {name}, 0, nil, 'delete')
return {OK}
