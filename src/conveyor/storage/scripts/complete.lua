-- complete: record a step's success and move the workflow on, atomically.
-- Either enqueues the next task or finishes the workflow; always ACKs the entry (trim.lua
-- removes acknowledged entries in bulk later: a per-entry XDEL costs more than all the rest).
--
-- KEYS[1]  source task stream (the entry being completed)
-- KEYS[2]  workflow state hash
-- KEYS[3]  workflow history list
-- KEYS[4]  task stream of the next step's queue (any stream of the partition when finishing)
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  task number being completed
-- ARGV[4]  history record (JSON, appended as is)
-- ARGV[5]  'next' to enqueue ARGV[6] with input ARGV[7]; 'done' to finish with result ARGV[7]
-- ARGV[6]  next step name ('' when done)
-- ARGV[7]  next input, or the workflow result (JSON)
-- ARGV[8]  workflow state (JSON, '' when empty): stored, and carried by the next task
-- ARGV[9]  now, ms since the epoch
-- ARGV[10] retention of a finished workflow, seconds
-- ARGV[11] pub/sub channel announcing finished workflows
-- ARGV[12] workflow id
-- ARGV[13] workflow name
-- ARGV[14] request id ('' when none)
--
-- Returns 0 (OK) or 1 (DUPLICATE: the entry was already acknowledged, or its task is no
-- longer active because it was done, cancelled or expired; the entry was only ACKed).
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
local task = 't:' .. ARGV[3]
if acked == 0 or redis.call('HDEL', KEYS[2], task) == 0 then
  return 1
end
redis.call('RPUSH', KEYS[3], ARGV[4])
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[2], 'state', ARGV[8])
end
if ARGV[5] == 'next' then
  local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  redis.call('HSET', KEYS[2], 't:' .. seq, ARGV[6], 'step', ARGV[6], 'updated_at', ARGV[9])
  local fields = {'workflow_id', ARGV[12], 'workflow', ARGV[13], 'step', ARGV[6],
    'task', tostring(seq), 'attempt', '1', 'input', ARGV[7]}
  if ARGV[8] ~= '' then
    table.insert(fields, 'state'); table.insert(fields, ARGV[8])
  end
  if ARGV[14] ~= '' then
    table.insert(fields, 'request_id'); table.insert(fields, ARGV[14])
  end
  redis.call('XADD', KEYS[4], '*', unpack(fields))
else
  redis.call('HSET', KEYS[2], 'status', 'completed', 'result', ARGV[7],
    'finished_at', ARGV[9], 'updated_at', ARGV[9])
  redis.call('EXPIRE', KEYS[2], ARGV[10])
  redis.call('EXPIRE', KEYS[3], ARGV[10])
  redis.call('PUBLISH', ARGV[11], ARGV[12])
end
return 0
