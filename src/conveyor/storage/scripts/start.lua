-- start: create workflows and enqueue (or, with a delay, schedule) their first tasks, each
-- atomically. Takes a batch of starts of one partition (one hash slot): one call for many
-- amortises the script's own cost. For start i, k = 4 * (i - 1) and a = 12 * (i - 1):
--
-- KEYS[k+1]  workflow state hash     ns:{pN}:wf:<id>
-- KEYS[k+2]  task stream of the first step's queue   ns:{pN}:q:<queue>
-- KEYS[k+3]  delayed set of that queue               ns:{pN}:delayed:<queue>
-- KEYS[k+4]  the partition's index of recent workflows ns:{pN}:recent
-- ARGV[a+1]  workflow id
-- ARGV[a+2]  workflow name
-- ARGV[a+3]  first step name
-- ARGV[a+4]  encoded input (JSON)
-- ARGV[a+5]  backlog bound of this partition's stream (entries)
-- ARGV[a+6]  created_at, ms since the epoch (client clock, informational)
-- ARGV[a+7]  request id ('' when none)
-- ARGV[a+8]  max_steps: most tasks the workflow may create (0 = unbounded)
-- ARGV[a+9]  delay before the first step, ms ('' or 0: none; the server's clock decides)
-- ARGV[a+10] on_cancel step as '<step>|<queue>' ('' when none)
-- ARGV[a+11] retention, seconds: index entries older than that are trimmed
-- ARGV[a+12] trace carrier ('' when none), kept in the hash and carried by its tasks
--
-- Returns one {code, status} per start:
--   {0, 'running'}   created and enqueued
--   {1, <status>}    DUPLICATE: a workflow with this id exists (idempotent repeat); nothing written
--   {2, <length>}    BACKPRESSURE: the stream holds ARGV[a+5] entries or more; nothing written

--- @include "server_ms"
--- @include "push"
--- @include "enqueue"
--- @include "schedule"

local function start(K, A)
  if redis.call('EXISTS', K[1]) == 1 then
    return {1, redis.call('HGET', K[1], 'status') or ''}
  end
  local backlog = redis.call('XLEN', K[2])
  if backlog >= tonumber(A[5]) then
    return {2, tostring(backlog)}
  end
  local fields = {'workflow', A[2], 'status', 'running', 'step', A[3], 'input', A[4],
    'created_at', A[6], 'updated_at', A[6], 'seq', 1, 't:1', A[3], 'max_steps', A[8]}
  push(fields, 'request_id', A[7])
  push(fields, 'on_cancel', A[10])
  push(fields, 'trace', A[12])
  redis.call('HSET', K[1], unpack(fields))
  local created = tonumber(A[6])
  redis.call('ZADD', K[4], created, A[1])
  redis.call('ZREMRANGEBYSCORE', K[4], '-inf', created - tonumber(A[11]) * 1000)
  local W = {id = A[1], name = A[2], request_id = A[7], parent = '', state = '', trace = A[12]}
  local delay = tonumber(A[9]) or 0
  if delay > 0 then
    schedule(K[3], W, A[3], 1, A[4], '', delay)
    redis.call('HSET', K[1], 'wake_at', server_ms() + delay)
  else
    enqueue(K[2], W, A[3], 1, A[4], '')
  end
  return {0, 'running'}
end

local out = {}
for i = 0, #KEYS / 4 - 1 do
  out[i + 1] = start({unpack(KEYS, 4 * i + 1, 4 * i + 4)},
    {unpack(ARGV, 12 * i + 1, 12 * i + 12)})
end
return out
