-- signal: deliver an outside event to a workflow. If it waits for this signal, the oldest
-- such wait resumes: its 'then' step is enqueued with the payload (the wait's timer, if any,
-- is then dropped by claim.lua). Otherwise the payload is buffered, in order, for a later
-- wait of the same name.
--
-- KEYS[1]  workflow state hash
-- KEYS[2]  buffer list of this signal name
-- KEYS[3]  stream of the queue of the waiting step, as the caller expects it (else KEYS[1])
-- ARGV[1]  signal name
-- ARGV[2]  payload (JSON)
-- ARGV[3]  now, ms since the epoch
-- ARGV[4]  the queue the caller expects the oldest wait's step on ('' when none): if it
--          is another, nothing is written and that queue is returned, to call again with
-- ARGV[5]  seconds a buffered signal is kept
-- ARGV[6]  workflow id
--
-- Returns {code, detail}: {0, 'delivered'} or {0, 'buffered'}; {3, ''} NOT_FOUND;
-- {5, status} FINISHED; {6, queue} CHANGED (call again with that queue's stream).

--- @include "enqueue"

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {3, ''}
end
local f = redis.call('HMGET', KEYS[1], 'status', 'workflow', 'request_id', 'parent', 'state',
  'trace')
local status = f[1]
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {5, status}
end
local prefix = 'w:' .. ARGV[1] .. ':'
local oldest, oldest_task, waiting = nil, nil, 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'w:' then
    waiting = waiting + 1
    if string.sub(field, 1, #prefix) == prefix then
      local task = tonumber(string.sub(field, #prefix + 1))
      if oldest_task == nil or task < oldest_task then
        oldest, oldest_task = field, task
      end
    end
  end
end
if oldest == nil then
  if ARGV[4] ~= '' then
    return {6, ''}
  end
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  return {0, 'buffered'}
end
local wait = cjson.decode(redis.call('HGET', KEYS[1], oldest))
if wait.queue ~= ARGV[4] then
  return {6, wait.queue}
end
redis.call('HDEL', KEYS[1], oldest)
if waiting == 1 then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
if wait.frame == '' then
  redis.call('HSET', KEYS[1], 'step', wait.step)
end
local W = {id = ARGV[6], name = f[2], request_id = f[3] or '', parent = f[4] or '',
  state = f[5] or '', trace = f[6] or ''}
enqueue(KEYS[3], W, wait.step, wait.task, ARGV[2], wait.frame)
return {0, 'delivered'}
