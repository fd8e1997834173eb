-- cancel: stop a workflow. Its active tasks are deactivated, so any queued, delayed or
-- in-flight task of it is dropped when a worker completes or fails it.
--
-- KEYS[1]  workflow state hash
-- KEYS[2]  workflow history list
-- ARGV[1]  now, ms since the epoch
-- ARGV[2]  retention of a finished workflow, seconds
-- ARGV[3]  pub/sub channel announcing finished workflows
-- ARGV[4]  workflow id
--
-- Returns {code, status}: {0, 'cancelled'}; {3, ''} NOT_FOUND; {5, status} FINISHED (it had
-- already completed, failed or been cancelled: nothing written).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {3, ''}
end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {5, status}
end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 't:' then
    redis.call('HDEL', KEYS[1], field)
  end
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'updated_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {0, 'cancelled'}
