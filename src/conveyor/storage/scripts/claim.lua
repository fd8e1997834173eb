-- claim: a wait's timer fired; it resolves the wait only if the wait is still the one the
-- timer belongs to (a signal may have resolved it first). Exactly one of the two wins.
--
-- KEYS[1]  workflow state hash
-- ARGV[1]  signal name
-- ARGV[2]  the timer's task number
--
-- Returns 1 when the timer won (run its step), 0 when it is stale (drop it).
local raw = redis.call('HGET', KEYS[1], 'w:' .. ARGV[1])
if not raw or cjson.decode(raw).task ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('HDEL', KEYS[1], 'w:' .. ARGV[1])
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'w:' then return 1 end
end
redis.call('HSET', KEYS[1], 'status', 'running')
return 1
