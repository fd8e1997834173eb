-- heartbeat: renew the lease of entries this consumer still owns (reset their idle time),
-- so a long step is not taken over by another worker. An entry already taken over by
-- someone else is left alone and reported.
--
-- KEYS[1]  task stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (this worker)
-- ARGV[3..] entry ids this worker is running
--
-- Returns the ids another consumer has taken over. (An id no longer pending at all was
-- committed meanwhile: nothing to renew, nothing lost.)
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] then
    if p[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
end
return lost
