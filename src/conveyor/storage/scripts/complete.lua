-- complete: record steps' successes and move their workflows on, atomically per workflow.
-- Takes a batch of completions of one partition (one hash slot), so a worker commits many in
-- one call. Each either enqueues its next task or finishes its workflow, and always ACKs its
-- entry (trim.lua removes acknowledged entries in bulk later: a per-entry XDEL cost more
-- than all the rest).
--
-- KEYS, 4 per completion i (k = 4 * (i - 1)):
-- KEYS[k+1]  source task stream (the entry being completed)
-- KEYS[k+2]  workflow state hash
-- KEYS[k+3]  workflow history list
-- KEYS[k+4]  task stream of the next step's queue (any stream of the partition when finishing)
-- ARGV[1]    consumer group
-- ARGV[2]    retention of a finished workflow, seconds
-- ARGV, 12 per completion i (a = 2 + 12 * (i - 1)):
-- ARGV[a+1]  entry id
-- ARGV[a+2]  task number being completed
-- ARGV[a+3]  history record (JSON, appended as is)
-- ARGV[a+4]  'next' to enqueue ARGV[a+5] with input ARGV[a+6]; 'done' to finish with it
-- ARGV[a+5]  next step name ('' when done)
-- ARGV[a+6]  next input, or the workflow result (JSON)
-- ARGV[a+7]  workflow state (JSON, '' when empty): stored, and carried by the next task
-- ARGV[a+8]  now, ms since the epoch
-- ARGV[a+9]  pub/sub channel announcing finished workflows
-- ARGV[a+10] workflow id
-- ARGV[a+11] workflow name
-- ARGV[a+12] request id ('' when none)
--
-- Returns one code per completion: 0 (OK) or 1 (DUPLICATE: the entry was already
-- acknowledged, or its task is no longer active because it was done, cancelled or expired;
-- the entry was only ACKed).
local group, retention = ARGV[1], ARGV[2]

local function complete(k, a)
  local stream, wf, history, next_stream = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  if redis.call('XACK', stream, group, ARGV[a + 1]) == 0
      or redis.call('HDEL', wf, 't:' .. ARGV[a + 2]) == 0 then
    return 1
  end
  redis.call('RPUSH', history, ARGV[a + 3])
  local state, now = ARGV[a + 7], ARGV[a + 8]
  if state ~= '' then
    redis.call('HSET', wf, 'state', state)
  end
  if ARGV[a + 4] == 'next' then
    local step = ARGV[a + 5]
    local seq = redis.call('HINCRBY', wf, 'seq', 1)
    redis.call('HSET', wf, 't:' .. seq, step, 'step', step, 'updated_at', now)
    local fields = {'workflow_id', ARGV[a + 10], 'workflow', ARGV[a + 11], 'step', step,
      'task', tostring(seq), 'attempt', '1', 'input', ARGV[a + 6]}
    if state ~= '' then
      table.insert(fields, 'state'); table.insert(fields, state)
    end
    if ARGV[a + 12] ~= '' then
      table.insert(fields, 'request_id'); table.insert(fields, ARGV[a + 12])
    end
    redis.call('XADD', next_stream, '*', unpack(fields))
  else
    redis.call('HSET', wf, 'status', 'completed', 'result', ARGV[a + 6],
      'finished_at', now, 'updated_at', now)
    redis.call('EXPIRE', wf, retention)
    redis.call('EXPIRE', history, retention)
    redis.call('PUBLISH', ARGV[a + 9], ARGV[a + 10])
  end
  return 0
end

local codes = {}
for i = 1, #KEYS / 4 do
  codes[i] = complete(4 * (i - 1), 2 + 12 * (i - 1))
end
return codes
