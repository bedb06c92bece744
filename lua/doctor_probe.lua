-- doctor_probe.lua — which Redis commands the scripts use may this ACL user run? (slotkeeper doctor)
-- KEYS: the fixed keys (see _lib.lua), then LAST the probe key sk:{ns}:doctor, used as each type in
--       turn and deleted again (nothing else is touched).
-- ARGV: n = 0 (no limits), then a channel of the namespace to PUBLISH one message to (nobody
--       listens on it).
-- Returns: the command names (lower case) refused with NOPERM, each once; {} when all may run.
-- Every command a slotkeeper script calls has a probe here (tests/test_doctor.py checks it).
-- Complexity: O(1).
local K = KEYS[#KEYS]  -- the probe key comes last, after the fixed keys
local CH = ARGV[A0 + 1]
local PROBES = {
  {'del', K}, {'exists', K},
  {'hset', K, 'f', '1'}, {'hget', K, 'f'}, {'hmget', K, 'f'}, {'hgetall', K},
  {'hincrby', K, 'f', 1}, {'hexists', K, 'f'}, {'hdel', K, 'f'}, {'del', K},
  {'zadd', K, 0, 'm'}, {'zrange', K, 0, 0}, {'zcount', K, 0, 0}, {'zrank', K, 'm'},
  {'zcard', K}, {'zscore', K, 'm'}, {'zrem', K, 'm'}, {'del', K},
  {'sadd', K, 'm'}, {'sismember', K, 'm'}, {'srem', K, 'm'}, {'del', K},
  {'incr', K}, {'del', K},
  {'xadd', K, 'MAXLEN', '~', 10, '*', 'k', 'doctor'}, {'del', K},
  {'publish', CH, 'doctor'},
  {'time'},
}
-- An ACL refusal is the only error these well-formed calls can meet (besides OOM, which the memory
-- check reports); Redis >= 7.2 says NOPERM, 6.2 and 7.0 say "... can't run this command ...".
local function refusal(r)
  return type(r) == 'table' and type(r.err) == 'string'
    and (string.sub(r.err, 1, 6) == 'NOPERM' or string.find(r.err, "can't run this command", 1, true))
end
local refused, seen = {}, {}
for _, p in ipairs(PROBES) do
  local r = redis.pcall(unpack(p))
  if refusal(r) and not seen[p[1]] then
    seen[p[1]] = true
    table.insert(refused, p[1])
  end
end
redis.pcall('DEL', K)
return refused
