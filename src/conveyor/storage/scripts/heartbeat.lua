-- heartbeat: renew the lease of entries this consumer still owns (reset their idle time),
-- so a long step is not taken over by another worker. An entry already taken over by
-- someone else is left alone and reported.
--
-- KEYS[1]  task stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (this worker)
-- ARGV[3..] entry ids this worker is running
--
-- Returns the ids this worker no longer owns (taken over, or already acknowledged).
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
