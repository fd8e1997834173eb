-- start: create a workflow and enqueue its first task, atomically.
--
-- KEYS[1]  workflow state hash     ns:{pN}:wf:<id>
-- KEYS[2]  task stream of the first step's queue   ns:{pN}:q:<queue>
-- ARGV[1]  workflow id
-- ARGV[2]  workflow name
-- ARGV[3]  first step name
-- ARGV[4]  encoded input (JSON)
-- ARGV[5]  backlog bound of this partition's stream (entries)
-- ARGV[6]  created_at, ms since the epoch (client clock, informational)
-- ARGV[7]  request id ('' when none)
--
-- Returns {code, status}:
--   {0, 'running'}   created and enqueued
--   {1, <status>}    DUPLICATE: a workflow with this id exists (idempotent repeat); nothing written
--   {2, <length>}    BACKPRESSURE: the stream holds ARGV[5] entries or more; nothing written
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {1, redis.call('HGET', KEYS[1], 'status') or ''}
end
local backlog = redis.call('XLEN', KEYS[2])
if backlog >= tonumber(ARGV[5]) then
  return {2, tostring(backlog)}
end
redis.call('HSET', KEYS[1],
  'workflow', ARGV[2], 'status', 'running', 'step', ARGV[3], 'input', ARGV[4],
  'created_at', ARGV[6], 'updated_at', ARGV[6], 'seq', 1, 't:1', ARGV[3])
local fields = {'workflow_id', ARGV[1], 'workflow', ARGV[2], 'step', ARGV[3],
  'task', '1', 'attempt', '1', 'input', ARGV[4]}
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'request_id', ARGV[7])
  table.insert(fields, 'request_id'); table.insert(fields, ARGV[7])
end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return {0, 'running'}
