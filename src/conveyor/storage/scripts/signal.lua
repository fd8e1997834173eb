-- uses lib
-- signal: deliver an outside event to a workflow. If it waits for this signal, its 'then'
-- step is enqueued with the payload (the wait's timer, if any, is then dropped by claim.lua);
-- otherwise the payload is buffered, in order, for a later wait of the same name.
--
-- KEYS[1]  workflow state hash
-- KEYS[2]  buffer list of this signal name
-- KEYS[3]  stream of the waiting step's queue (as read before the call; else = KEYS[1])
-- ARGV[1]  signal name
-- ARGV[2]  payload (JSON)
-- ARGV[3]  now, ms since the epoch
-- ARGV[4]  the wait record as read before the call ('' when none): if it changed
--          meanwhile, nothing is written and the caller reads again
-- ARGV[5]  seconds a buffered signal is kept
-- ARGV[6]  workflow id
--
-- Returns {code, detail}: {0, 'delivered'} or {0, 'buffered'}; {3, ''} NOT_FOUND;
-- {5, status} FINISHED; {6, ''} CHANGED (read the wait again and retry).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {3, ''}
end
local f = redis.call('HMGET', KEYS[1], 'status', 'workflow', 'request_id', 'parent', 'state',
  'w:' .. ARGV[1])
local status = f[1]
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {5, status}
end
if (f[6] or '') ~= ARGV[4] then
  return {6, ''}
end
if not f[6] then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  return {0, 'buffered'}
end
local wait = cjson.decode(f[6])
redis.call('HDEL', KEYS[1], 'w:' .. ARGV[1])
local waiting = false
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'w:' then waiting = true end
end
if not waiting then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
local W = {id = ARGV[6], name = f[2], request_id = f[3] or '',
  parent = f[4] or '', state = f[5] or ''}
enqueue(KEYS[3], W, wait.step, wait.task, ARGV[2], wait.frame)
return {0, 'delivered'}
