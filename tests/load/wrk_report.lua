-- wrk_report.lua — used by tests/load/load.sh: at the end of a wrk run, print one machine-readable
-- line with the request count, the duration, the latency percentiles (microseconds) and every
-- error wrk counts: connect/read/write socket errors, timeouts, and responses with status >= 400
-- (wrk's "Non-2xx or 3xx responses").
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "WRK_REPORT requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f max_us=%.0f " ..
        "connect=%d read=%d write=%d timeout=%d status=%d\n",
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        latency.max, e.connect, e.read, e.write, e.timeout, e.status))
end
