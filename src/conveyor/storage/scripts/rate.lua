-- rate: a shared rate limit (GCRA, the generic cell rate algorithm). Take units before a
-- step runs, charge what it really used afterwards, or push the whole limit back when an
-- outside API answered 429. The whole state is one number, the theoretical arrival time (TAT):
-- the server time at which the bucket is full again. The server clock is used, so every
-- worker agrees on "now" whatever its own clock says.
--
-- KEYS[1]  rate key of the limit: a string, TAT in ms since the epoch, expiring when idle
-- ARGV[1]  mode: 'take', 'charge' or 'push'
-- take, charge:
--   ARGV[2]  emission interval, ms per unit (float)
--   ARGV[3]  burst tolerance, ms (burst * interval)
--   ARGV[4]  cost, units (float; charge: negative to refund). A take costing more than the
--            burst is capped to it: it passes when the bucket is full, rather than never.
-- push:
--   ARGV[2]  ms during which nothing passes
--   ARGV[3]  burst tolerance, ms
--   ARGV[4]  emission interval, ms per unit: one unit passes again when ARGV[2] has elapsed
--
-- Returns {1, 0, remaining} when a take is granted (TAT advanced; remaining: units that
-- could still be taken at once), {1, 0} for charge and push (always done); {0, wait_ms, 0}
-- when a take is refused (nothing written): wait_ms is how long until this cost would fit
-- (rounded up). A charge never refuses: it may leave the limit in debt, which later
-- takes wait out; a refund never moves TAT before now. An unknown mode is an error reply.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end

local function store(new_tat)
  if new_tat <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX',
      math.ceil(new_tat - now + 1000))
  end
end

local mode = ARGV[1]
if mode == 'take' then
  local interval = tonumber(ARGV[2])
  local tolerance = tonumber(ARGV[3])
  local increment = math.min(tonumber(ARGV[4]) * interval, tolerance)
  local new_tat = tat + increment
  local allow_at = new_tat - tolerance
  if allow_at > now then
    return {0, math.ceil(allow_at - now), 0}
  end
  store(new_tat)
  -- units a take could still get right now (for RateLimit-Remaining headers)
  return {1, 0, math.floor((tolerance - (new_tat - now)) / interval)}
elseif mode == 'charge' then
  store(tat + tonumber(ARGV[4]) * tonumber(ARGV[2]))
  return {1, 0}
elseif mode == 'push' then
  -- At now + ms the bucket holds exactly one unit (or its whole burst, when under one unit).
  local tolerance = tonumber(ARGV[3])
  local new_tat = now + tonumber(ARGV[2]) + math.max(tolerance - tonumber(ARGV[4]), 0)
  if new_tat > tat then store(new_tat) end
  return {1, 0}
end
return redis.error_reply('ERR rate: unknown mode ' .. tostring(mode))
