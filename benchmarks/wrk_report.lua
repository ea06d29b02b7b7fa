-- wrk prints latency percentiles rounded for humans; this prints the exact figures (µs) as one
-- JSON line that benchmarks/load.py reads. Non-2xx/3xx answers count as errors.status.
-- `wrk ... URL -- FILE CONTENT-TYPE` POSTs the bytes of FILE with every request.
init = function(args)
  if args[1] then
    local f = assert(io.open(args[1], "rb"))
    wrk.method = "POST"
    wrk.body = f:read("*a")
    f:close()
    wrk.headers["Content-Type"] = args[2] or "application/octet-stream"
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
