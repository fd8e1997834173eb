-- lib: helpers shared by the transition scripts, one named section each: a section opens
-- with '--- @helper <name>' and lists the helpers it calls as '--- @include "<name>"' lines.
-- A script lists the helpers it calls the same way; ScriptRegistry (storage/scripts.py)
-- prepends exactly those, with what they include in turn, in this file's order (a helper
-- comes after the ones it calls), so each script stays one atomic EVALSHA that ships no
-- helper it does not call. This preamble is not shipped.
--
-- W, the workflow a transition acts on, is a table:
--   key, history   its state hash and history list
--   id, name       workflow id and name
--   request_id, parent, state   carried by every task it enqueues ('' when none)
--   trace          the trace carrier every task it enqueues gets: '<workflow start ms>' and
--                  the W3C traceparent of the span that caused the task (observability/
--                  tracing.py); opaque here, '' when none
--   now            ms since the epoch (the caller's clock: informational timestamps)
--   channel        pub/sub channel announcing finished workflows
--   retention      seconds a finished workflow is kept
--   pkey, pstream  the parent's state hash and the stream its continuation goes to (children)
--   events         the workflow's event stream (SSE): step records, emits, its end; nil
--                  when events are off
--   stopped        the partition's set of workflows that stopped early (failed, cancelled);
--                  also the name of the channel announcing them to workers (ctx.cancelled)
--
-- Task numbers: 'seq' counts every task a workflow ever created; 't:<n>' marks task n active.
-- A transition only acts on a task while its 't:<n>' exists, so a redelivered, cancelled or
-- superseded task is dropped instead of run twice. 'max_steps' bounds 'seq' (a runaway loop).

-- Frames, parents and on_cancel steps: the pipe-delimited strings tasks and workflows carry,
-- built and parsed only by these helpers (storage/frames.py is their Python side):
--   frame      '' at the top level, CANCEL_FRAME for the on_cancel step, or
--              '<group>|<index>|<branch step>|<join step>' in a fan-out branch
--   parent     '<parent id>|<parent task>|<then step>|<then queue>|<parent frame>'
--   on_cancel  '<step>|<queue>'

--- @helper CANCEL_FRAME
local CANCEL_FRAME = '!cancel'

--- @helper STEP_BUDGET_EXCEEDED
-- the error type of a workflow failed by its step budget (errors.STEP_BUDGET_EXCEEDED)
local STEP_BUDGET_EXCEEDED = 'StepBudgetExceeded'

--- @helper branch_frame
local function branch_frame(gid, index, step, join)
  return gid .. '|' .. index .. '|' .. step .. '|' .. join
end

--- @helper branch_slot
-- group and index of a branch frame (both nil outside a branch)
local function branch_slot(frame)
  return string.match(frame, '^(%d+)|(%d+)|')
end

--- @helper parent_ref
local function parent_ref(id, task, step, queue, frame)
  return id .. '|' .. task .. '|' .. step .. '|' .. queue .. '|' .. frame
end

--- @helper parse_parent
-- parent id, parent task, then step, parent frame
local function parse_parent(parent)
  return string.match(parent, '^([^|]+)|(%d+)|([^|]+)|[^|]*|(.*)$')
end

--- @helper on_cancel_step
local function on_cancel_step(ref)
  return string.match(ref, '^([^|]+)|')
end

--- @helper record
-- Append a step attempt's record to the history list and to the event stream.
local function record(W, rec)
  redis.call('RPUSH', W.history, rec)
  if W.events then
    redis.call('XADD', W.events, '*', 'type', 'step', 'data', rec)
  end
end

--- @helper server_ms
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

--- @helper push
local function push(list, name, value)
  if value ~= nil and value ~= '' then
    list[#list + 1] = name
    list[#list + 1] = value
  end
end

--- @helper task_fields
--- @include "push"
-- The fields of a task entry (a stream entry, or a delayed-set member as a JSON object).
local function task_fields(W, step, seq, input, frame, extra)
  local f = {'workflow_id', W.id, 'workflow', W.name, 'step', step, 'task', tostring(seq),
    'attempt', '1', 'input', input}
  push(f, 'state', W.state)
  push(f, 'request_id', W.request_id)
  push(f, 'trace', W.trace)
  push(f, 'parent', W.parent)
  push(f, 'frame', frame)
  if extra then
    for i = 1, #extra, 2 do push(f, extra[i], extra[i + 1]) end
  end
  return f
end

--- @helper enqueue
--- @include "task_fields"
local function enqueue(stream, W, step, seq, input, frame, extra)
  redis.call('XADD', stream, '*', unpack(task_fields(W, step, seq, input, frame, extra)))
end

--- @helper schedule
--- @include "task_fields"
--- @include "server_ms"
-- Put a task in a delayed set, due after delay_ms by the server's clock (promote.lua moves it).
local function schedule(delayed, W, step, seq, input, frame, delay_ms, extra)
  local f = task_fields(W, step, seq, input, frame, extra)
  local member = {}
  for i = 1, #f, 2 do member[f[i]] = f[i + 1] end
  redis.call('ZADD', delayed, server_ms() + tonumber(delay_ms), cjson.encode(member))
end

--- @helper hmget_all
-- Chunked HMGET/HDEL: unpack() of thousands of values overflows Lua's C stack.
local function hmget_all(key, fields)
  local out = {}
  for i = 1, #fields, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #fields) do chunk[#chunk + 1] = fields[j] end
    local values = redis.call('HMGET', key, unpack(chunk))
    for _, v in ipairs(values) do out[#out + 1] = v end
  end
  return out
end

--- @helper hdel_all
local function hdel_all(key, fields)
  for i = 1, #fields, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #fields) do chunk[#chunk + 1] = fields[j] end
    redis.call('HDEL', key, unpack(chunk))
  end
end

--- @helper new_task
-- Allocate and activate the next task number, or nil when the step budget is spent.
-- `fields` (optional): more field, value pairs written by the same HSET.
local function new_task(W, step, fields)
  local seq = redis.call('HINCRBY', W.key, 'seq', 1)
  if W.max_steps == nil then
    W.max_steps = tonumber(redis.call('HGET', W.key, 'max_steps') or '0') or 0
  end
  if W.max_steps > 0 and seq > W.max_steps then
    W.refused = step  -- named in the budget error
    return nil
  end
  if fields then
    redis.call('HSET', W.key, 't:' .. seq, step, unpack(fields))
  else
    redis.call('HSET', W.key, 't:' .. seq, step)
  end
  return seq
end

--- @helper error_json
local function error_json(kind, message)
  return cjson.encode({type = kind, message = message})
end

--- @helper failure_marker
local function failure_marker(err, workflow_id)
  if workflow_id then
    return '{"$error":' .. err .. ',"workflow_id":' .. cjson.encode(workflow_id) .. '}'
  end
  return '{"$error":' .. err .. '}'
end

--- @helper resume_parent
--- @include "parse_parent"
--- @include "failure_marker"
--- @include "error_json"
--- @include "enqueue"
-- Hand a finished child's outcome to its parent: enqueue the parent's continuation task
-- (registered when the child started), unless the parent stopped meanwhile. Only once: a
-- child that ends again after a replay is no longer registered ('c:<id>'), and its parent
-- already has its outcome.
local function resume_parent(W, status, value)
  if W.parent == nil or W.parent == '' then
    return
  end
  local pid, n, step, frame = parse_parent(W.parent)
  if redis.call('HDEL', W.pkey, 'c:' .. W.id) == 0
      or redis.call('HEXISTS', W.pkey, 't:' .. n) == 0 then
    return
  end
  local input = value
  if status == 'failed' then
    input = failure_marker(value, W.id)
  elseif status == 'cancelled' then
    input = failure_marker(error_json('WorkflowCancelled',
      'child workflow ' .. W.id .. ' was cancelled'), W.id)
  end
  local p = redis.call('HMGET', W.pkey, 'workflow', 'request_id', 'parent', 'state', 'trace')
  -- the continuation hangs under the child's last span, timed from the parent's start
  local started = string.match(p[5] or '', '^(%d+)')
  local via = string.match(W.trace or '', '^%d+ (.+)$')
  local P = {id = pid, name = p[1], request_id = p[2] or '', parent = p[3] or '',
    state = p[4] or '', trace = (started and via) and (started .. ' ' .. via) or (p[5] or '')}
  redis.call('HSET', W.pkey, 'updated_at', W.now)
  if frame == '' then
    redis.call('HSET', W.pkey, 'step', step)
  end
  enqueue(W.pstream, P, step, n, input, frame)
end

--- @helper finish
--- @include "hdel_all"
--- @include "resume_parent"
-- End a workflow: deactivate every task and wait, record the outcome, start the retention
-- clock, announce it, and resume the parent of a child workflow.
local function finish(W, status, field, value)
  W.ended = status
  if status ~= 'completed' then
    -- a workflow completes only from its top level, with nothing else active (branches
    -- join first, a wait or child resumes it); stopping early may leave tasks and waits
    local drop = {}
    for _, f in ipairs(redis.call('HKEYS', W.key)) do
      local p = string.sub(f, 1, 2)
      if p == 't:' or p == 'w:' or p == 'k:' then drop[#drop + 1] = f end
    end
    hdel_all(W.key, drop)
  end
  redis.call('HSET', W.key, 'status', status, field, value, 'finished_at', W.now,
    'updated_at', W.now)
  redis.call('EXPIRE', W.key, W.retention)
  redis.call('EXPIRE', W.history, W.retention)
  if W.events then
    redis.call('XADD', W.events, '*', 'type', 'end', 'status', status)
    redis.call('EXPIRE', W.events, W.retention)
  end
  redis.call('PUBLISH', W.channel, W.id)
  if status ~= 'completed' then
    -- tasks of it may still be queued (fan-out branches, a cancelled step): workers mirror
    -- this set and drop them unrun; entries older than the retention are forgotten
    local now = tonumber(W.now)
    redis.call('ZADD', W.stopped, now, W.id)
    redis.call('ZREMRANGEBYSCORE', W.stopped, '-inf', now - tonumber(W.retention) * 1000)
    redis.call('PUBLISH', W.stopped, 'stop ' .. W.id)  -- a channel named like the set
  end
  resume_parent(W, status, value)
end

--- @helper fail_budget
--- @include "STEP_BUDGET_EXCEEDED"
--- @include "finish"
local function fail_budget(W)
  local max = W.max_steps or 0
  finish(W, 'failed', 'error', cjson.encode({type = STEP_BUDGET_EXCEEDED, step = W.refused,
    message = 'workflow ' .. W.name .. ' ' .. W.id .. ' reached its budget of ' .. max ..
    ' steps (max_steps) before step ' .. tostring(W.refused) .. '; is a loop running away?'}))
end

--- @helper branch_return
--- @include "branch_slot"
--- @include "new_task"
--- @include "fail_budget"
--- @include "enqueue"
--- @include "branch_frame"
--- @include "hmget_all"
--- @include "hdel_all"
-- A branch of fan-out group <gid> returned `value` (frame '<gid>|<i>|<step>|<join>'): store
-- it in its slot, launch the next waiting item (max_parallel), and when it was the last
-- branch, enqueue the join step with every result in item order, in the group's own frame.
local function branch_return(W, frame, value, join_stream, branch_stream)
  local gid, idx = branch_slot(frame)
  local gkey = 'g:' .. gid
  local raw = redis.call('HGET', W.key, gkey)
  if not raw then
    return
  end
  local g = cjson.decode(raw)
  redis.call('HSET', W.key, 'r:' .. gid .. ':' .. idx, value)
  g.left = g.left - 1
  if g.launched < g.n then
    g.launched = g.launched + 1
    local field = 'i:' .. gid .. ':' .. g.launched
    local item = redis.call('HGET', W.key, field)
    redis.call('HDEL', W.key, field)
    local seq = new_task(W, g.step)
    if not seq then
      return fail_budget(W)
    end
    enqueue(branch_stream, W, g.step, seq, item, branch_frame(gid, g.launched, g.step, g.join))
  end
  if g.left > 0 then
    redis.call('HSET', W.key, gkey, cjson.encode(g))
    return
  end
  local fields = {}
  for i = 1, g.n do fields[i] = 'r:' .. gid .. ':' .. i end
  local results = hmget_all(W.key, fields)
  for i = 1, g.n do
    if not results[i] then results[i] = 'null' end
  end
  fields[#fields + 1] = gkey
  hdel_all(W.key, fields)
  local seq = new_task(W, g.join, g.frame == '' and {'step', g.join} or nil)
  if not seq then
    return fail_budget(W)
  end
  enqueue(join_stream, W, g.join, seq, '[' .. table.concat(results, ',') .. ']', g.frame)
end
