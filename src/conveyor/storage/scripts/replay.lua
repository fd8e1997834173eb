-- replay: re-run the failed step of a dead-lettered workflow, atomically.
--
-- KEYS[1]  dead-letter stream of the partition
-- KEYS[2]  workflow state hash
-- KEYS[3]  workflow history list
-- KEYS[4]  task stream of the failed step's queue
-- KEYS[5]  the partition's set of workflows that stopped early (it leaves it, and workers
--          are told on the channel of the same name)
-- ARGV[1]  dead-letter entry id
-- ARGV[2]  now, ms since the epoch
--
-- Returns {code, detail}:
--   {0, workflow id}  re-enqueued as attempt 1; the workflow is running again, without TTL
--   {3, 'entry'}      NOT_FOUND: no such dead-letter entry
--   {3, 'workflow'}   NOT_FOUND: the workflow's state is gone (expired); the entry is kept
--   {4, status}       NOT_FAILED: the workflow is not failed (already replayed?); entry kept
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return {3, 'entry'}
end
local raw = found[1][2]
local e = {}
for i = 1, #raw, 2 do e[raw[i]] = raw[i + 1] end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {3, 'workflow'}
end
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'failed' then
  return {4, status or ''}
end
redis.call('HSET', KEYS[2], 'status', 'running', 'step', e.step, 't:' .. e.task, e.step,
  'updated_at', ARGV[2])
redis.call('HDEL', KEYS[2], 'error', 'finished_at')
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
local fields = {'workflow_id', e.workflow_id, 'workflow', e.workflow, 'step', e.step,
  'task', e.task, 'attempt', '1', 'input', e.input}
if e.state and e.state ~= '' then
  table.insert(fields, 'state'); table.insert(fields, e.state)
end
for _, name in ipairs({'request_id', 'parent', 'frame', 'trace'}) do
  if e[name] and e[name] ~= '' then
    table.insert(fields, name); table.insert(fields, e[name])
  end
end
redis.call('XADD', KEYS[4], '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[5], e.workflow_id)
redis.call('PUBLISH', KEYS[5], 'resume ' .. e.workflow_id)
return {0, e.workflow_id}
