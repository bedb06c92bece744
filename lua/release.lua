-- release.lua — give a lease's slots back (or revoke it), then grant waiters that now fit.
-- KEYS: the fixed nine + five per limit the lease holds (see _lib.lua).
-- ARGV: n, names..., id, kind ('release' | 'revoke'), mark (1: the lease's ask was sent twice by
--       its client; the id goes to `withdrawn`, so a late copy of that ask is refused, not
--       granted anew to nobody)
-- Returns: {OK} | {LOST} (expired, revoked or unknown: frees nothing)
--        | {NEED_KEYS, name} (the caller did not pass every limit the lease holds; nothing done)
-- Complexity: O(n * (occupy * log N + grant pass)).
local id = ARGV[A0 + 1]
local kind = ARGV[A0 + 2]

gc(GC_BATCH)
if ARGV[A0 + 3] == '1' then remember_withdrawn(id) end
local rec = load(K_LEASES, id)
if not rec or tonumber(rec.e) <= NOW then return {LOST} end
local miss = missing_key(rec.n)
if miss then return {NEED_KEYS, miss} end

redis.call('HDEL', K_LEASES, id)
emit(kind == 'revoke' and 'revoke' or 'release', id, rec.n, rec.o, rec.m,
  'held ' .. fmt(NOW - (tonumber(rec.a) or NOW)) .. ' ms')
local mem = members(id, tonumber(rec.o))
local field = kind == 'revoke' and 'c_revoked' or 'c_released'
for _, name in ipairs(rec.n) do
  redis.call('ZREM', LIM[name].holders, unpack(mem))
  count(name, field, 1)
end
for _, name in ipairs(rec.n) do
  purge_holders(name, PURGE_BATCH)
  grant_pass(name)
end
for _, name in ipairs(rec.n) do cfg(name) end
touch(rec.n)
return {OK}
