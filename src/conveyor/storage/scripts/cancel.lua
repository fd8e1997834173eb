-- cancel: stop a workflow wherever it is. Every task and wait of it is deactivated, so a
-- queued, delayed or in-flight task is dropped when a worker meets it (an in-flight step's
-- result is discarded); a parent waiting on it resumes with a cancellation error; its
-- on_cancel step, if it has one, is enqueued once. lib.lua's finish records it in the
-- stopped set and announces it, so workers flag its running steps (ctx.cancelled) and drop
-- its queued tasks unrun. Child workflows are returned for the caller to cancel in turn.
--
-- KEYS[1]  workflow state hash
-- KEYS[2]  workflow history list
-- KEYS[3]  stream of the on_cancel step's queue (else = KEYS[1])
-- KEYS[4]  parent's state hash (a child workflow; else = KEYS[1])
-- KEYS[5]  parent's continuation stream (else = KEYS[1])
-- KEYS[6]  the partition's set of workflows that stopped early (workers drop their tasks)
-- KEYS[7]  the workflow's event stream
-- ARGV[1]  now, ms since the epoch
-- ARGV[2]  retention of a finished workflow, seconds
-- ARGV[3]  pub/sub channel announcing finished workflows
-- ARGV[4]  workflow id
-- ARGV[5]  reason
--
-- Returns {code, status, child ids...}: {0, 'cancelled', ...}; {3, ''} NOT_FOUND;
-- {5, status} FINISHED (it had already completed, failed or been cancelled: nothing written).

--- @include "CANCEL_FRAME"
--- @include "on_cancel_step"
--- @include "enqueue"
--- @include "finish"

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {3, ''}
end
local f = redis.call('HMGET', KEYS[1], 'status', 'workflow', 'request_id', 'parent',
  'on_cancel', 'step', 'state', 'trace')
local status = f[1]
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {5, status}
end
local W = {key = KEYS[1], history = KEYS[2], pkey = KEYS[4], pstream = KEYS[5],
  stopped = KEYS[6], events = KEYS[7], id = ARGV[4],
  name = f[2], request_id = f[3] or '', parent = f[4] or '', state = f[7] or '',
  trace = f[8] or '',
  now = ARGV[1], channel = ARGV[3], retention = ARGV[2]}
local out = {0, 'cancelled'}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'c:' then out[#out + 1] = string.sub(field, 3) end
end
finish(W, 'cancelled', 'cancel_reason', ARGV[5])
if f[5] then
  local step = on_cancel_step(f[5])
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('HSET', KEYS[1], 't:' .. seq, step)
  local info = cjson.encode({workflow_id = ARGV[4], step = f[6] or '', reason = ARGV[5]})
  enqueue(KEYS[3], W, step, seq, info, CANCEL_FRAME)
end
return out
