-- uses lib
-- commit: apply the outcomes of finished tasks, atomically per task. Takes a batch of
-- transitions of one partition (one hash slot), so a worker commits many in one call. Each
-- ACKs its entry (trim.lua deletes acknowledged entries in bulk later) and acts only while
-- its task is active, so a redelivered or cancelled task changes nothing twice.
--
-- ARGV[1]  consumer group
-- ARGV[2]  retention of a finished workflow, seconds
-- ARGV[3]  '1' to record the workflows' event streams (key 7), '0' not to
-- Then per transition: its number of keys and of arguments, then the arguments; its keys are
-- the next ones in KEYS.
--
-- Keys of every transition:           Arguments of every transition:
--   1 source task stream                1 action (below)       7 workflow name
--   2 workflow state hash               2 entry id             8 request id ('' none)
--   3 workflow history list             3 task number          9 state JSON ('' unchanged)
--   4 parent's state hash (child        4 history record      10 finished channel
--     workflows; else = key 2)            ('' none)           11 frame ('' = top level)
--   5 parent's continuation stream      5 now, ms             12 parent ('' none)
--     (else = key 1)                    6 workflow id
--   6 the partition's stopped set
--   7 the workflow's event stream
--
-- Actions, with their extra keys (7..) and arguments (13..):
--   next     K8 stream of the next step           A13 step, A14 input
--   sleep    K8 delayed set of the next step      A13 step, A14 input, A15 delay ms
--   return   K8 join stream, K9 branch stream      A13 value: ends the workflow at the top
--            (frame ''), feeds the fan-out join in a branch, is only recorded in on_cancel
--   fan_out  K8 branch stream, K9 join stream      A13 branch step, A14 join step,
--            A15 max parallel (0 = all), A16 '1' to collect errors, A17.. items (JSON each)
--   wait     K8 signal buffer, K9 then stream,     A13 signal, A14 then step, A15 its queue,
--            K10 delayed set of the timer step,     A16 timeout ms ('' none), A17 timer step,
--            K11 the partition's waiting set
--                                                  A18 timer input (the timeout marker)
--   child    K8 child hash, K9 child's stream      A13 child id, A14 child workflow,
--                                                  A15 its first step, A16 input,
--                                                  A17 then step, A18 its queue,
--                                                  A19 child max_steps, A20 child on_cancel
--   retry    K8 delayed set of the step's queue    A13 delay ms, A14 the task as JSON
--            (also a limited task put back: history '' and the same attempt)
--   dead     K8 dead-letter stream, K9 join        A13 error JSON, A14.. dead-letter entry
--            stream, K10 branch stream              (field, value pairs)
--   ack      -                                     (drop an inactive task's entry)
--   poison   K8 dead-letter stream                 A13.. dead-letter entry
--
-- Returns one code per transition: 0 (OK) or 1 (DUPLICATE: the entry was already
-- acknowledged, or its task is no longer active; nothing but the ACK was written).
local group = ARGV[1]
local retention = ARGV[2]
local events = ARGV[3] == '1'

local function dead_letter(stream, A, from)
  local entry = {}
  for i = from, #A do entry[#entry + 1] = A[i] end
  redis.call('XADD', stream, '*', unpack(entry))
end

local function collects(W, frame)
  local gid = string.match(frame, '^(%d+)|')
  local raw = gid and redis.call('HGET', W.key, 'g:' .. gid)
  return raw and cjson.decode(raw).collect == 1
end

local ACTIONS = {next = true, sleep = true, ['return'] = true, fan_out = true, wait = true,
  child = true, retry = true, dead = true, ack = true, poison = true}

local function apply(K, A)
  local action = A[1]
  if not ACTIONS[action] then
    error('commit: unknown action ' .. tostring(action))  -- before any write
  end
  local acked = redis.call('XACK', K[1], group, A[2])
  if action == 'ack' then
    return 0
  end
  if acked == 0 then
    return 1
  end
  if action == 'poison' then
    dead_letter(K[8], A, 13)
    return 0
  end
  local W = {key = K[2], history = K[3], pkey = K[4], pstream = K[5], stopped = K[6],
    events = events and K[7] or nil,
    id = A[6], name = A[7],
    request_id = A[8], state = A[9], channel = A[10], parent = A[12], now = A[5],
    retention = retention}
  local task, frame = 't:' .. A[3], A[11]
  if action == 'retry' then
    if redis.call('HEXISTS', W.key, task) == 0 then
      return 1
    end
    if A[4] ~= '' then
      record(W, A[4])
    end
    redis.call('ZADD', K[8], server_ms() + tonumber(A[13]), A[14])
    redis.call('HSET', W.key, 'updated_at', W.now)
    return 0
  end
  if redis.call('HDEL', W.key, task) == 0 then
    return 1
  end
  if A[4] ~= '' then
    record(W, A[4])
  end
  if action == 'dead' then
    local err = A[13]
    if frame ~= '' and frame ~= '!cancel' and collects(W, frame) then
      branch_return(W, frame, failure_marker(err), K[9], K[10])
      return 0
    end
    dead_letter(K[8], A, 14)
    if frame ~= '!cancel' then
      finish(W, 'failed', 'error', err)
    end
    return 0
  end
  if W.state ~= '' then
    redis.call('HSET', W.key, 'state', W.state)
  end
  if frame == '!cancel' then
    return 0  -- the on_cancel step: recorded; the workflow stays cancelled
  end
  if action == 'return' then
    if frame == '' then
      finish(W, 'completed', 'result', A[13])
    else
      branch_return(W, frame, A[13], K[8], K[9])
    end
    return 0
  end
  if action == 'next' or action == 'sleep' then
    local step = A[13]
    -- the hot path: one HSET registers the task and records where the workflow is
    local seq = new_task(W, step, frame == '' and {'step', step, 'updated_at', W.now}
      or {'updated_at', W.now})
    if not seq then
      fail_budget(W); return 0
    end
    if action == 'next' then
      enqueue(K[8], W, step, seq, A[14], frame)
    else
      schedule(K[8], W, step, seq, A[14], frame, A[15])
    end
    return 0
  end
  redis.call('HSET', W.key, 'updated_at', W.now)
  if action == 'fan_out' then
    local n = #A - 16
    local gid = redis.call('HINCRBY', W.key, 'groups', 1)
    if n == 0 then
      local seq = new_task(W, A[14])
      if not seq then
        fail_budget(W); return 0
      end
      enqueue(K[9], W, A[14], seq, '[]', frame)
      return 0
    end
    local width = tonumber(A[15])
    if width <= 0 or width > n then width = n end
    redis.call('HSET', W.key, 'g:' .. gid, cjson.encode({step = A[13], join = A[14],
      frame = frame, n = n, left = n, launched = width, collect = tonumber(A[16])}))
    for i = 1, n do
      if i <= width then
        local seq = new_task(W, A[13])
        if not seq then
          fail_budget(W); return 0
        end
        enqueue(K[8], W, A[13], seq, A[16 + i], gid .. '|' .. i .. '|' .. A[13] .. '|' .. A[14])
      else
        redis.call('HSET', W.key, 'i:' .. gid .. ':' .. i, A[16 + i])
      end
    end
  elseif action == 'wait' then
    local name, step = A[13], A[14]
    local seq = new_task(W, step)
    if not seq then
      fail_budget(W); return 0
    end
    local buffered = redis.call('LPOP', K[8])
    if buffered then  -- the signal came first: go on at once
      enqueue(K[9], W, step, seq, buffered, frame)
      return 0
    end
    local wait = {task = seq, step = step, queue = A[15], frame = frame, since = tonumber(W.now)}
    if A[16] ~= '' then
      wait.deadline = tonumber(W.now) + tonumber(A[16])
      schedule(K[10], W, A[17], seq, A[18], frame, A[16], {'wait', name})
    end
    -- one field per wait ('w:<signal>:<task>'): parallel branches may wait for the same signal
    redis.call('HSET', W.key, 'w:' .. name .. ':' .. seq, cjson.encode(wait),
      'status', 'waiting')
    redis.call('ZADD', K[11], 'NX', W.now, W.id)
  elseif action == 'child' then
    local child_id, step = A[13], A[17]
    local seq = new_task(W, step)
    if not seq then
      fail_budget(W); return 0
    end
    if redis.call('EXISTS', K[8]) == 1 then
      -- cannot happen (task numbers are unique and a task commits once): never overwrite
      return 0
    end
    local parent = W.id .. '|' .. seq .. '|' .. step .. '|' .. A[18] .. '|' .. frame
    redis.call('HSET', W.key, 'c:' .. child_id, '1')
    redis.call('HSET', K[8], 'workflow', A[14], 'status', 'running', 'step', A[15],
      'input', A[16], 'created_at', W.now, 'updated_at', W.now, 'seq', 1, 't:1', A[15],
      'max_steps', A[19], 'parent', parent)
    if A[20] ~= '' then
      redis.call('HSET', K[8], 'on_cancel', A[20])
    end
    if W.request_id ~= '' then
      redis.call('HSET', K[8], 'request_id', W.request_id)
    end
    local C = {id = child_id, name = A[14], request_id = W.request_id, parent = parent,
      state = ''}
    enqueue(K[9], C, A[15], 1, A[16], '')
  end
  return 0
end

local codes = {}
local k, a = 0, 3
while a < #ARGV do
  local nk, na = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local K, A = {unpack(KEYS, k + 1, k + nk)}, {unpack(ARGV, a + 3, a + 2 + na)}
  codes[#codes + 1] = apply(K, A)
  k, a = k + nk, a + 2 + na
end
return codes
