-- claim: a wait's timer fired; it resolves the wait only if the wait is still there (a
-- signal may have resolved it first). Exactly one of the two wins.
--
-- KEYS[1]  workflow state hash
-- ARGV[1]  signal name
-- ARGV[2]  the timer's task number (the wait's field is 'w:<signal>:<task>')
--
-- Returns 1 when the timer won (run its step), 0 when it is stale (drop it).
if redis.call('HDEL', KEYS[1], 'w:' .. ARGV[1] .. ':' .. ARGV[2]) == 0 then
  return 0
end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'w:' then return 1 end
end
redis.call('HSET', KEYS[1], 'status', 'running')
return 1
