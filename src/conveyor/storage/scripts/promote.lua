-- promote: move delayed tasks that are due (server clock) onto their task stream.
--
-- KEYS[1]  delayed set of a queue in one partition (score = due time in ms)
-- KEYS[2]  task stream of that queue in the same partition
-- ARGV[1]  most tasks to move in this call
--
-- Returns {moved, next_due_ms}: how many tasks moved, and the due time of the earliest task
-- still waiting (-1 when the set is empty).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local task = cjson.decode(member)
  local fields = {'workflow_id', task.workflow_id, 'workflow', task.workflow, 'step', task.step,
    'task', tostring(task.task), 'attempt', tostring(task.attempt), 'input', task.input}
  if task.state then
    table.insert(fields, 'state'); table.insert(fields, task.state)
  end
  if task.request_id then
    table.insert(fields, 'request_id'); table.insert(fields, task.request_id)
  end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  redis.call('ZREM', KEYS[1], member)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if head[2] then next_due = tonumber(head[2]) end
return {#due, next_due}
