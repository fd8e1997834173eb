-- uses lib
-- start: create a workflow and enqueue (or, with a delay, schedule) its first task, atomically.
--
-- KEYS[1]  workflow state hash     ns:{pN}:wf:<id>
-- KEYS[2]  task stream of the first step's queue   ns:{pN}:q:<queue>
-- KEYS[3]  delayed set of that queue               ns:{pN}:delayed:<queue>
-- KEYS[4]  the partition's index of recent workflows ns:{pN}:recent
-- ARGV[1]  workflow id
-- ARGV[2]  workflow name
-- ARGV[3]  first step name
-- ARGV[4]  encoded input (JSON)
-- ARGV[5]  backlog bound of this partition's stream (entries)
-- ARGV[6]  created_at, ms since the epoch (client clock, informational)
-- ARGV[7]  request id ('' when none)
-- ARGV[8]  max_steps: most tasks the workflow may create (0 = unbounded)
-- ARGV[9]  delay before the first step, ms ('' or 0: none; the server's clock decides)
-- ARGV[10] on_cancel step as '<step>|<queue>' ('' when none)
-- ARGV[11] retention, seconds: index entries older than that are trimmed
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
  'created_at', ARGV[6], 'updated_at', ARGV[6], 'seq', 1, 't:1', ARGV[3],
  'max_steps', ARGV[8])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'request_id', ARGV[7])
end
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'on_cancel', ARGV[10])
end
local created = tonumber(ARGV[6])
redis.call('ZADD', KEYS[4], created, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', created - tonumber(ARGV[11]) * 1000)
local W = {id = ARGV[1], name = ARGV[2], request_id = ARGV[7], parent = '', state = ''}
local delay = tonumber(ARGV[9]) or 0
if delay > 0 then
  schedule(KEYS[3], W, ARGV[3], 1, ARGV[4], '', delay)
  redis.call('HSET', KEYS[1], 'wake_at', server_ms() + delay)
else
  enqueue(KEYS[2], W, ARGV[3], 1, ARGV[4], '')
end
return {0, 'running'}
