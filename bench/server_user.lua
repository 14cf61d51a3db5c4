-- wrk script for bench/server_user: GET /user/{id} with random ids over
-- the 10,000 rows, and one machine-readable line at the end.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

function request()
  return wrk.format("GET", "/user/" .. math.random(1, 10000))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p99_us=%d p50_us=%d requests=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99),
    latency:percentile(50), summary.requests,
    e.connect + e.read + e.write + e.timeout, e.status))
end
