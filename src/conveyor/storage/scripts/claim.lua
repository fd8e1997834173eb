-- claim: a wait's timer fired; it resolves the wait only if the wait is still there (a
-- signal may have resolved it first). Exactly one of the two wins, and a timer that won
-- keeps winning: its entry may be delivered again (taken over after a crash, or retried),
-- and each delivery must run the step, not drop it. The win is recorded as 'k:<task>' =
-- the signal name, removed with the task's 't:<task>' when its transition commits.
--
-- KEYS[1]  workflow state hash
-- ARGV[1]  signal name
-- ARGV[2]  the timer's task number (the wait's field is 'w:<signal>:<task>')
--
-- Returns 1 when the timer won (run its step), 0 when it is stale (drop it).
if redis.call('HDEL', KEYS[1], 'w:' .. ARGV[1] .. ':' .. ARGV[2]) == 0 then
  -- resolved already: by this very timer (a redelivery, or a retry of its step) or by a
  -- signal; only the first leaves the mark, and only while the task is active
  if redis.call('HGET', KEYS[1], 'k:' .. ARGV[2]) == ARGV[1]
      and redis.call('HEXISTS', KEYS[1], 't:' .. ARGV[2]) == 1 then
    return 1
  end
  return 0
end
redis.call('HSET', KEYS[1], 'k:' .. ARGV[2], ARGV[1])
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'w:' then return 1 end
end
redis.call('HSET', KEYS[1], 'status', 'running')
return 1
