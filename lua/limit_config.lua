-- limit_config.lua — create, update or upsert one limit's (or template's) configuration, then grant
-- waiters that now fit (slots raised, rate raised, limit enabled).
-- KEYS: the fixed nine + five for the one limit.
-- ARGV: 1, name, mode ('create' | 'update' | 'upsert'), then field/value pairs among
--       slots (a number, or 'none' with a rate), ttl (ms), enabled (1/0), desc, rate_n, rate_p (ms;
--       '' removes the rate), spread (1/0), maxw ('' = no cap), total ('' = none; templates),
--       idle (ms; templates)
-- Returns: {OK, created (1/0), changed field names...} | {EXISTS, name} | {NOT_FOUND, name}
--        | {REJECTED, 'invalid', name, 0} (the result would have neither slots nor a rate: nothing
--          written)
-- Lowering slots or a rate never evicts holders nor forgets granted units; new acquires wait.
-- Changing a template changes every key made from it (keys read the template's config).
local name = NAMES[1]
local mode = ARGV[A0 + 1]
local key = LIM[name].cfg
local c0 = cfg(name)
local exists = c0 ~= nil and not c0.tpl   -- a key made from a template becomes a limit of its own
if mode == 'create' and exists then return {EXISTS, name} end
if mode == 'update' and not exists then return {NOT_FOUND, name} end
-- the config as it would be after the change must be usable
local cur = redis.call('HMGET', key, unpack(FIELDS))
local merged = {}
for i, f in ipairs(FIELDS) do merged[f] = cur[i] end
if not exists then merged.slots, merged.tpl = 'none', false end   -- created: no slots unless given
for i = A0 + 2, #ARGV, 2 do merged[ARGV[i]] = ARGV[i + 1] end
local view = {}
for i, f in ipairs(FIELDS) do view[i] = merged[f] end
view[10] = nil
if not parse_settings(view) then return {REJECTED, 'invalid', name, 0} end
local created = 0
if not exists then
  if c0 and c0.tpl then
    redis.call('HDEL', key, 'tpl')   -- keeps its counters and rate window
    redis.call('ZREM', LIM[c0.tpl].members, name)
  else
    redis.call('DEL', key)   -- unreadable garbage: replaced
  end
  redis.call('HSET', key, 'slots', 'none', 'enabled', 1, 'desc', '', 'ttl', 0, 'created', NOW,
    'updated', NOW)
  redis.call('SADD', K_LIMITS, name)
  if is_tpl(name) then redis.call('SADD', K_TEMPLATES, name) end
  created = 1
end
local changed = {}
for i = A0 + 2, #ARGV, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  local was = redis.call('HGET', key, f)
  if (was or '') ~= v then
    if v == '' then redis.call('HDEL', key, f) else redis.call('HSET', key, f, v) end
    table.insert(changed, f)
  end
end
if #changed > 0 then redis.call('HSET', key, 'updated', NOW) end
if #changed > 0 or created == 1 then
  local what = {created == 1 and 'create' or 'update'}
  for i = A0 + 2, #ARGV, 2 do
    if in_list(changed, ARGV[i]) then table.insert(what, ARGV[i] .. '=' .. ARGV[i + 1]) end
  end
  emit('limit', '', {name}, 0, nil, table.concat(what, ' '))
end
CFG[name] = nil
purge_holders(name, PURGE_BATCH)
grant_pass(name)
return {OK, created, unpack(changed)}
