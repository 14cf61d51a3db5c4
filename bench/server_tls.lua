-- wrk script for bench/server_tls: the URL's GET, and one machine-readable
-- line at the end.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p99_us=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
