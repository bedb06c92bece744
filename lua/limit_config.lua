-- limit_config.lua — create, update or upsert one limit's configuration, then grant waiters that
-- now fit (slots raised, limit enabled).
-- KEYS: the fixed five + three for the one limit.
-- ARGV: 1, name, mode ('create' | 'update' | 'upsert'), then field/value pairs among
--       slots, ttl (ms), enabled (1/0), desc
-- Returns: {0 OK, created (1/0), changed field names...} | {8 EXISTS, name} | {4 NOT_FOUND, name}
-- Lowering slots never evicts holders; new acquires wait until use < slots.
local name = NAMES[1]
local mode = ARGV[A0 + 1]
local key = LIM[name].cfg
local exists = cfg(name) ~= nil
if mode == 'create' and exists then return {EXISTS, name} end
if mode == 'update' and not exists then return {NOT_FOUND, name} end
local created = 0
if not exists then
  create_limit(name, 0, 0, 1, '')
  created = 1
end
local changed = {}
for i = A0 + 2, #ARGV, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', key, f) ~= v then
    redis.call('HSET', key, f, v)
    table.insert(changed, f)
  end
end
if #changed > 0 then redis.call('HSET', key, 'updated', NOW) end
CFG[name] = nil
purge_holders(name, PURGE_BATCH)
grant_pass(name)
return {OK, created, unpack(changed)}
