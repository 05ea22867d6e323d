-- wrk script of the HTTP benchmarks (bench/_common.py's wrk() runs it): POSTs to the URL's
-- path, cycling through many bodies, and prints one JSON line when the run is done.
--
--   wrk -t1 -c64 -d10s --timeout 10s --latency -s bench/wrk/post.lua URL -- BODIES RATE [HEADER...]
--
-- With WRK_METHOD=GET in the environment it sends GETs instead, one a line of BODIES, without
-- the line (bench/console.py).
--
-- BODIES: a file with one request body a line (JSON without newlines). RATE: requests/s this
-- wrk thread offers, or 0 for a closed loop (each connection sends its next request as soon as
-- the answer to the last one arrived). HEADER: "Name: value", as many as needed.
--
-- Open loop (RATE > 0): Debian's wrk has no -R (that is wrk2), so delay() paces the requests
-- itself: request k of the thread is due at start + k / RATE, whichever connection is free to
-- send it. A connection that becomes free claims the next due time and waits for it; when no
-- connection was free at a due time the request goes out late, and the lateness is counted
-- (late_sends, max_lag_ms). wrk measures latency from the moment a request is written, so
-- late sends are where coordinated omission would hide; with many more connections than
-- RATE x latency there are none, and the JSON line says so.
--
-- The JSON line starts with "ONRAMP_WRK " so the runner finds it among wrk's own output.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } onramp_timespec;
  int clock_gettime(int clk_id, onramp_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("onramp_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

-- -- setup and done: wrk's separate environment, which sees every thread ---------------------

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads - 1)
end

-- -- running: one environment per wrk thread ------------------------------------------------

-- globals, so that done() can read them through thread:get()
statuses = {}    -- HTTP status -> answers
late_sends = 0   -- requests written more than 1 ms after their due time (open loop)
max_lag_ms = 0   -- the latest of them

local requests = {}
local next_request = 0

function init(args)
  local bodies, rate = args[1], tonumber(args[2])
  local method = os.getenv("WRK_METHOD") or "POST"
  local headers = {}
  for i = 3, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    headers[name] = value
  end
  -- every request pre-formatted once: request() only picks the next one
  for body in io.lines(bodies) do
    if #body > 0 then
      if method == "GET" then
        table.insert(requests, wrk.format("GET", nil, headers))
      else
        table.insert(requests, wrk.format("POST", nil, headers, body))
      end
    end
  end
  assert(#requests > 0, "no request bodies in " .. bodies)
  -- threads start at different bodies, so that two threads do not send the same one at once
  next_request = (thread_index or 0) * 7919 % #requests

  if rate and rate > 0 then
    local interval = 1000 / rate
    local due = nil
    -- wrk calls delay() before every request when the global exists after init()
    function delay()
      local now = now_ms()
      due = due or now
      local mine = due
      due = due + interval
      local wait = mine - now
      if wait >= 0 then
        return wait -- wrk waits whole milliseconds: up to 1 ms early, never drifting
      end
      local lag = -wait
      if lag > 1 then
        late_sends = late_sends + 1
      end
      if lag > max_lag_ms then
        max_lag_ms = lag
      end
      return 0
    end
  end
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- -- done -------------------------------------------------------------------------------------

function done(summary, latency, _)
  local counts, late, lag = {}, 0, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
    late = late + thread:get("late_sends")
    lag = math.max(lag, thread:get("max_lag_ms"))
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  local function ms(p)
    return latency:percentile(p) / 1000
  end
  io.write(string.format(
    'ONRAMP_WRK {"requests":%d,"duration_s":%.3f,"statuses":{%s},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_ms":{"p50":%.3f,"p90":%.3f,"p99":%.3f,"p99.9":%.3f,"mean":%.3f,"max":%.3f},'
      .. '"late_sends":%d,"max_lag_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    ms(50), ms(90), ms(99), ms(99.9), latency.mean / 1000, latency.max / 1000,
    late, lag
  ))
end
