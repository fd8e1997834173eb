-- wrk script of bench/api.py: POST the JSON body read from the file named after `--`
-- (wrk ... -s bench/wrk_post.lua URL -- BODY_FILE), then print the summary as one line
-- "WRKJSON {...}" for bench/api.py to parse, latencies in microseconds.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

-- wrk calls init in each thread before it formats the request, so the body set here is sent
function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
