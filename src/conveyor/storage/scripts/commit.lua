-- commit: apply the outcomes of finished tasks, atomically per task. Takes a batch of
-- transitions of one partition (one hash slot), so a worker commits many in one call. Each
-- ACKs its entry (trim.lua deletes acknowledged entries in bulk later) and acts only while
-- its task is active, so a redelivered or cancelled task changes nothing twice.
--
-- ARGV[1]  consumer group
-- ARGV[2]  retention of a finished workflow, seconds
-- ARGV[3]  '1' to record the workflows' event streams (K7), '0' not to
-- Then per transition: its number of keys and of arguments, then the arguments; its keys are
-- the next ones in KEYS. K<i> and A<i> below are its i-th key and argument.
--
-- Keys and arguments of every transition:
--   K1   source task stream
--   K2   workflow state hash
--   K3   workflow history list
--   K4   parent's state hash (child workflows; else = K2)
--   K5   parent's continuation stream (child workflows; else = K1)
--   K6   the partition's stopped set
--   K7   the workflow's event stream
--   A1   action (below)
--   A2   entry id
--   A3   task number
--   A4   history record ('' none)
--   A5   now, ms
--   A6   workflow id
--   A7   workflow name
--   A8   request id ('' none)
--   A9   state JSON ('' unchanged)
--   A10  finished channel
--   A11  frame ('' at the top level)
--   A12  parent ('' none)
--   A13  trace carrier of the tasks it enqueues ('' none)
--
-- Each action, with its own keys (K8..) and arguments (A14..):
-- next: go on with another step
--   K8   stream of the next step
--   A14  step
--   A15  input
-- sleep: go on with another step after a delay
--   K8   delayed set of the next step
--   A14  step
--   A15  input
--   A16  delay, ms
-- return: end a line of work with a value: the workflow at the top level (frame ''), the
-- branch of a fan-out (its join runs after the last one); only recorded in on_cancel
--   K8   join stream
--   K9   branch stream
--   A14  value
-- fan_out: run a step once per item, then the join step with the results in order
--   K8   branch stream
--   K9   join stream
--   A14  branch step
--   A15  join step
--   A16  max parallel (0 = all)
--   A17  '1' to collect errors
--   A18.. items (JSON each)
-- wait: park until a signal, or until its timer
--   K8   signal buffer
--   K9   then stream
--   K10  delayed set of the timer step
--   K11  the partition's waiting set
--   A14  signal
--   A15  then step
--   A16  then queue
--   A17  timeout ms ('' none)
--   A18  timer step
--   A19  timer input (the timeout marker)
-- child: start a child workflow; the then step resumes with its outcome
--   K8   child state hash
--   K9   child's first stream
--   A14  child id
--   A15  child workflow
--   A16  child first step
--   A17  child input
--   A18  then step
--   A19  then queue
--   A20  child max_steps
--   A21  child on_cancel ('' none)
--   A22  child trace carrier ('' none)
-- retry: run the task again later (also a task a limit held back: history '' and the same
-- attempt)
--   K8   delayed set of the step's queue
--   A14  delay ms
--   A15  task as JSON
-- dead: dead-letter the task and fail the workflow (in a collecting fan-out: fill the slot)
--   K8   dead-letter stream
--   K9   join stream
--   K10  branch stream
--   A14  error JSON
--   A15.. dead-letter entry (field, value pairs)
-- ack: only acknowledge the entry (its task is no longer active)
-- poison: dead-letter an entry that names no valid task (of the keys and arguments of every
-- transition only K1, A1, A2 and A5 mean anything; the other keys repeat keys of the same
-- partition, the other arguments are '')
--   K8   dead-letter stream
--   A14.. dead-letter entry (field, value pairs)
--
-- Returns one code per transition: 0 (OK), 1 (DUPLICATE: the entry was already
-- acknowledged, or its task is no longer active; nothing but the ACK was written), or, when
-- the transition ended its workflow, 7 (ENDED_COMPLETED) or 8 (ENDED_FAILED), so workers
-- can measure workflows end to end without reading them back.

--- @include "CANCEL_FRAME"
--- @include "branch_frame"
--- @include "branch_slot"
--- @include "parent_ref"
--- @include "record"
--- @include "server_ms"
--- @include "enqueue"
--- @include "schedule"
--- @include "new_task"
--- @include "failure_marker"
--- @include "finish"
--- @include "fail_budget"
--- @include "branch_return"

local group = ARGV[1]
local retention = ARGV[2]
local events = ARGV[3] == '1'

local function dead_letter(stream, A, from)
  local entry = {}
  for i = from, #A do entry[#entry + 1] = A[i] end
  redis.call('XADD', stream, '*', unpack(entry))
end

local function collects(W, frame)
  local gid = branch_slot(frame)
  local raw = gid and redis.call('HGET', W.key, 'g:' .. gid)
  return raw and cjson.decode(raw).collect == 1
end

local ACTIONS = {next = true, sleep = true, ['return'] = true, fan_out = true, wait = true,
  child = true, retry = true, dead = true, ack = true, poison = true}

local current  -- the workflow of the transition being applied (finish() marks it ended)
local ENDED = {completed = 7, failed = 8}

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
    dead_letter(K[8], A, 14)
    return 0
  end
  local W = {key = K[2], history = K[3], pkey = K[4], pstream = K[5], stopped = K[6],
    events = events and K[7] or nil,
    id = A[6], name = A[7],
    request_id = A[8], state = A[9], channel = A[10], parent = A[12], trace = A[13],
    now = A[5],
    retention = retention}
  current = W
  local task, frame = 't:' .. A[3], A[11]
  if action == 'retry' then
    if redis.call('HEXISTS', W.key, task) == 0 then
      return 1
    end
    if A[4] ~= '' then
      record(W, A[4])
    end
    redis.call('ZADD', K[8], server_ms() + tonumber(A[14]), A[15])
    redis.call('HSET', W.key, 'updated_at', W.now)
    return 0
  end
  -- the task and its timer's win mark (claim.lua) go together: the mark exists only while
  -- the task does, so the count is 0 exactly when the task was not active
  if redis.call('HDEL', W.key, task, 'k:' .. A[3]) == 0 then
    return 1
  end
  if A[4] ~= '' then
    record(W, A[4])
  end
  if action == 'dead' then
    local err = A[14]
    if frame ~= '' and frame ~= CANCEL_FRAME and collects(W, frame) then
      branch_return(W, frame, failure_marker(err), K[9], K[10])
      return 0
    end
    dead_letter(K[8], A, 15)
    if frame ~= CANCEL_FRAME then
      finish(W, 'failed', 'error', err)
    end
    return 0
  end
  if W.state ~= '' then
    redis.call('HSET', W.key, 'state', W.state)
  end
  if frame == CANCEL_FRAME then
    return 0  -- the on_cancel step: recorded; the workflow stays cancelled
  end
  if action == 'return' then
    if frame == '' then
      finish(W, 'completed', 'result', A[14])
    else
      branch_return(W, frame, A[14], K[8], K[9])
    end
    return 0
  end
  if action == 'next' or action == 'sleep' then
    local step = A[14]
    -- the hot path: one HSET registers the task and records where the workflow is
    local seq = new_task(W, step, frame == '' and {'step', step, 'updated_at', W.now}
      or {'updated_at', W.now})
    if not seq then
      fail_budget(W); return 0
    end
    if action == 'next' then
      enqueue(K[8], W, step, seq, A[15], frame)
    else
      schedule(K[8], W, step, seq, A[15], frame, A[16])
    end
    return 0
  end
  redis.call('HSET', W.key, 'updated_at', W.now)
  if action == 'fan_out' then
    local n = #A - 17
    local gid = redis.call('HINCRBY', W.key, 'groups', 1)
    if n == 0 then
      local seq = new_task(W, A[15])
      if not seq then
        fail_budget(W); return 0
      end
      enqueue(K[9], W, A[15], seq, '[]', frame)
      return 0
    end
    local width = tonumber(A[16])
    if width <= 0 or width > n then width = n end
    redis.call('HSET', W.key, 'g:' .. gid, cjson.encode({step = A[14], join = A[15],
      frame = frame, n = n, left = n, launched = width, collect = tonumber(A[17])}))
    for i = 1, n do
      if i <= width then
        local seq = new_task(W, A[14])
        if not seq then
          fail_budget(W); return 0
        end
        enqueue(K[8], W, A[14], seq, A[17 + i], branch_frame(gid, i, A[14], A[15]))
      else
        redis.call('HSET', W.key, 'i:' .. gid .. ':' .. i, A[17 + i])
      end
    end
  elseif action == 'wait' then
    local name, step = A[14], A[15]
    local seq = new_task(W, step)
    if not seq then
      fail_budget(W); return 0
    end
    local buffered = redis.call('LPOP', K[8])
    if buffered then  -- the signal came first: go on at once
      enqueue(K[9], W, step, seq, buffered, frame)
      return 0
    end
    local wait = {task = seq, step = step, queue = A[16], frame = frame, since = tonumber(W.now)}
    if A[17] ~= '' then
      wait.deadline = tonumber(W.now) + tonumber(A[17])
      schedule(K[10], W, A[18], seq, A[19], frame, A[17], {'wait', name})
    end
    -- one field per wait ('w:<signal>:<task>'): parallel branches may wait for the same signal
    redis.call('HSET', W.key, 'w:' .. name .. ':' .. seq, cjson.encode(wait),
      'status', 'waiting')
    redis.call('ZADD', K[11], 'NX', W.now, W.id)
  elseif action == 'child' then
    local child_id, step = A[14], A[18]
    local seq = new_task(W, step)
    if not seq then
      fail_budget(W); return 0
    end
    if redis.call('EXISTS', K[8]) == 1 then
      -- cannot happen (task numbers are unique and a task commits once): never overwrite
      return 0
    end
    local parent = parent_ref(W.id, seq, step, A[19], frame)
    redis.call('HSET', W.key, 'c:' .. child_id, '1')
    redis.call('HSET', K[8], 'workflow', A[15], 'status', 'running', 'step', A[16],
      'input', A[17], 'created_at', W.now, 'updated_at', W.now, 'seq', 1, 't:1', A[16],
      'max_steps', A[20], 'parent', parent)
    if A[21] ~= '' then
      redis.call('HSET', K[8], 'on_cancel', A[21])
    end
    if W.request_id ~= '' then
      redis.call('HSET', K[8], 'request_id', W.request_id)
    end
    if A[22] ~= '' then
      redis.call('HSET', K[8], 'trace', A[22])
    end
    local C = {id = child_id, name = A[15], request_id = W.request_id, parent = parent,
      state = '', trace = A[22]}
    enqueue(K[9], C, A[16], 1, A[17], '')
  end
  return 0
end

local codes = {}
local k, a = 0, 3
while a < #ARGV do
  local nk, na = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local K, A = {unpack(KEYS, k + 1, k + nk)}, {unpack(ARGV, a + 3, a + 2 + na)}
  current = nil
  local code = apply(K, A)
  if code == 0 and current and current.ended then
    code = ENDED[current.ended] or 0
  end
  codes[#codes + 1] = code
  k, a = k + nk, a + 2 + na
end
return codes
