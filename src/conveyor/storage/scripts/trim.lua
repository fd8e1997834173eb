-- trim: delete the entries of a task stream that can never be needed again, in bulk.
-- An entry may go once it was delivered and acknowledged. Every entry older than the oldest
-- pending one (or, with none pending, up to the group's last delivered id) is both, so
-- XTRIM MINID at that point never drops a pending or an undelivered entry (unlike MAXLEN).
--
-- KEYS[1]  task stream
-- ARGV[1]  consumer group
--
-- Returns the number of entries deleted (0 when the stream or the group does not exist).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local floor = nil
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if pending['err'] then
  return 0  -- no such group (yet)
end
if pending[1] > 0 then
  floor = pending[2]  -- the oldest pending entry: keep it and everything after it
else
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local g = {}
    for i = 1, #group, 2 do g[group[i]] = group[i + 1] end
    if g['name'] == ARGV[1] then
      -- nothing pending: everything up to the last delivered entry was acknowledged
      local ms, seq = string.match(g['last-delivered-id'], '^(%d+)-(%d+)$')
      floor = ms .. '-' .. tostring(tonumber(seq) + 1)
    end
  end
end
if floor == nil then
  return 0
end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
