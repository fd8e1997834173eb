-- concurrency: a shared concurrency limit, at most N holders of one key at once (for example
-- two running steps per tenant). Each holder has a lease, so a worker that dies without
-- leaving frees its slot when the lease expires. The server clock is used, so every worker
-- agrees on which leases have expired.
--
-- KEYS[1]  concurrency key: a sorted set, member = holder id, score = lease expiry (server ms);
--          it expires with its longest lease, so an abandoned key vanishes
-- ARGV[1]  mode: 'enter', 'leave' or 'renew'
-- ARGV[2]  holder id
-- ARGV[3]  maximum number of holders (enter only)
-- ARGV[4]  lease, ms (enter, renew)
-- ARGV[5]  largest wait hint returned, ms (enter only)
--
-- Expired holders are removed first, in every mode.
-- enter: Returns {1, 0} granted (a holder already in is renewed and counts once), or
--        {0, wait_ms} refused: wait_ms is a hint, the time until the earliest lease expires
--        (at least 1, at most ARGV[5]); a slot may well free sooner, on a leave.
-- leave: Returns {1, 0} (whether or not the holder was in).
-- renew: Returns {1, 0} when the lease was still held and is extended, {0, 0} when it was not
--        (it expired, or the holder left): nothing is written then.
-- An unknown mode is an error reply.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local holder = ARGV[2]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)

local function hold()
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), holder)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(last[2]) - now))
end

if mode == 'enter' then
  if redis.call('ZSCORE', KEYS[1], holder) or
      redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
    hold()
    return {1, 0}
  end
  local hint = tonumber(ARGV[5])
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then hint = math.min(hint, math.ceil(tonumber(first[2]) - now)) end
  return {0, math.max(hint, 1)}
elseif mode == 'leave' then
  redis.call('ZREM', KEYS[1], holder)
  return {1, 0}
elseif mode == 'renew' then
  if not redis.call('ZSCORE', KEYS[1], holder) then
    return {0, 0}
  end
  hold()
  return {1, 0}
end
return redis.error_reply('ERR concurrency: unknown mode ' .. tostring(mode))
