-- promote: move delayed tasks that are due (server clock) onto their task stream. A member
-- is a task entry as a JSON object (field -> value); 'nonce' only keeps members unique.
--
-- KEYS[1]  delayed set of a queue in one partition (score = due time in ms)
-- KEYS[2]  task stream of that queue in the same partition
-- ARGV[1]  most tasks to move in this call
--
-- Returns {moved, next_due_ms}: how many tasks moved, and the due time of the earliest task
-- still waiting (-1 when the set is empty).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local fields = {}
  for name, value in pairs(cjson.decode(member)) do
    if name ~= 'nonce' then
      fields[#fields + 1] = name
      fields[#fields + 1] = tostring(value)
    end
  end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  redis.call('ZREM', KEYS[1], member)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if head[2] then next_due = tonumber(head[2]) end
return {#due, next_due}
