-- limit_delete.lua — delete one limit that nobody holds; its waiters are told it is gone.
-- KEYS: the fixed five + three for the one limit.
-- ARGV: 1, name, batch
-- Returns: {0 OK} | {4 NOT_FOUND} | {9 HELD, used} | {12 MORE} (a batch of waiters was rejected;
--          call again — keeps every call bounded)
local name = NAMES[1]
local batch = tonumber(ARGV[A0 + 1])
local L = LIM[name]
if redis.call('EXISTS', L.cfg) == 0 and redis.call('SISMEMBER', K_LIMITS, name) == 0 then
  return {NOT_FOUND}   -- (a limit whose config is garbage can still be deleted)
end
if purge_holders(name, batch) >= batch then return {MORE} end   -- expired records first, bounded
local u = used(name)
if u > 0 then return {HELD, u} end
local ids = redis.call('ZRANGE', L.queue, 0, batch - 1)
for _, id in ipairs(ids) do
  local rec = load(K_TICKETS, id)
  if rec then
    drop_ticket(id, rec)
    notify(rec, id, 'x missing ' .. name)
  end
  redis.call('ZREM', L.queue, id)
end
if #ids >= batch then return {MORE} end
redis.call('DEL', L.cfg, L.holders, L.queue)
redis.call('SREM', K_LIMITS, name)
return {OK}
