-- fail: record a failed attempt, then schedule a retry or dead-letter the task, atomically.
-- Always ACKs the entry (trim.lua removes acknowledged entries later).
--
-- KEYS[1]  source task stream (the entry that failed)
-- KEYS[2]  workflow state hash
-- KEYS[3]  workflow history list
-- KEYS[4]  delayed set of the step's queue (retry target)
-- KEYS[5]  dead-letter stream of the partition
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  task number ('' for a poison entry that names no task: it is only dead-lettered)
-- ARGV[4]  history record (JSON, appended as is)
-- ARGV[5]  'retry' or 'dead'
-- ARGV[6]  retry delay, ms (retry only)
-- ARGV[7]  retry member: the next attempt's task as JSON (retry only)
-- ARGV[8]  workflow error (JSON), stored on the workflow when it fails (dead only)
-- ARGV[9]  now, ms since the epoch
-- ARGV[10] retention of a finished workflow, seconds
-- ARGV[11] pub/sub channel announcing finished workflows
-- ARGV[12] workflow id
-- ARGV[13..] dead-letter entry: field, value pairs (dead only)
--
-- Returns 0 (OK) or 1 (DUPLICATE: the entry was already acknowledged, or its task is no
-- longer active; nothing but the ACK was written).
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 then
  return 1
end
local function dead_letter()
  local entry = {}
  for i = 13, #ARGV do entry[#entry + 1] = ARGV[i] end
  redis.call('XADD', KEYS[5], '*', unpack(entry))
end
if ARGV[3] == '' then
  dead_letter()
  return 0
end
local task = 't:' .. ARGV[3]
if redis.call('HEXISTS', KEYS[2], task) == 0 then
  return 1
end
redis.call('RPUSH', KEYS[3], ARGV[4])
if ARGV[5] == 'retry' then
  local t = redis.call('TIME')
  local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[6])
  redis.call('ZADD', KEYS[4], due, ARGV[7])
  redis.call('HSET', KEYS[2], 'updated_at', ARGV[9])
  return 0
end
dead_letter()
redis.call('HDEL', KEYS[2], task)
redis.call('HSET', KEYS[2], 'status', 'failed', 'error', ARGV[8],
  'finished_at', ARGV[9], 'updated_at', ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[10])
redis.call('EXPIRE', KEYS[3], ARGV[10])
redis.call('PUBLISH', ARGV[11], ARGV[12])
return 0
