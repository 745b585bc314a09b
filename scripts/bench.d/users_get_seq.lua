-- users_get_seq.lua -- wrk script for ONE connection (-t1 -c1): GET
-- /api/v1/users/{random id} with a service token, timing every request itself.
--
-- Why: wrk "corrects" its latency histogram for coordinated omission (each
-- sample longer than the mean interval between requests also records
-- synthetic samples, as if requests had been sent at a constant rate). On a
-- sequential run that answers in ~20 us, one 4 ms scheduling stall becomes
-- 200 samples, and wrk's p99 says more about the machine than about one
-- request. So this script also times each request from request() (called
-- just before wrk writes it) to response() with CLOCK_MONOTONIC (LuaJIT FFI)
-- and reports those quantiles too. Only meaningful with one connection.
--
-- Environment (set by scripts/bench):
--   BENCH_IDS_LUA  a Lua file that returns the table of user ids to pick from
--   BENCH_TOKEN    the bearer token (a service token reads any user)
-- done() prints one machine-readable line:
--   BENCH_RESULT requests=.. duration_us=.. p50_us=.. p99_us=.. raw_n=.. raw_p50_us=..
--                raw_p99_us=.. raw_p999_us=.. raw_max_us=.. raw_mean_us=.. status=..
--                connect=.. read=.. write=.. timeout=..
-- (p50_us/p99_us are wrk's corrected ones; raw_* are per request, in
-- microseconds, 1 us resolution; raw_* are -1 without LuaJIT's FFI.)

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local now_us
do
  local ok, ffi = pcall(require, "ffi")
  if ok then
    pcall(ffi.cdef, [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clk_id, bench_timespec *tp);
    ]])
    local ts = ffi.new("bench_timespec")
    now_us = function()
      ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
    end
  end
end

function init(args)
  ids = dofile(os.getenv("BENCH_IDS_LUA"))
  n = #ids
  headers = { ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN") }
  math.randomseed(os.time())
  hist = {}   -- microseconds -> count
  raw_n, raw_sum, started = 0, 0, nil
end

function request()
  if now_us then
    started = now_us()
  end
  return wrk.format("GET", "/api/v1/users/" .. ids[math.random(n)], headers)
end

function response(status, hdrs, body)
  if started then
    local us = math.floor(now_us() - started + 0.5)
    hist[us] = (hist[us] or 0) + 1
    raw_n = raw_n + 1
    raw_sum = raw_sum + us
    started = nil
  end
end

local function quantiles(h, total, qs)
  local keys = {}
  for k in pairs(h) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local out, seen, qi = {}, 0, 1
  for _, k in ipairs(keys) do
    seen = seen + h[k]
    while qi <= #qs and seen >= qs[qi] * total do
      out[qi] = k
      qi = qi + 1
    end
  end
  return out, keys[#keys]
end

function done(summary, latency, requests)
  local h, total, sum = {}, 0, 0
  for _, t in ipairs(threads) do
    local th = t:get("hist") or {}
    for k, v in pairs(th) do
      h[k] = (h[k] or 0) + v
    end
    total = total + (t:get("raw_n") or 0)
    sum = sum + (t:get("raw_sum") or 0)
  end
  local q, max = { -1, -1, -1 }, -1
  if total > 0 then
    q, max = quantiles(h, total, { 0.5, 0.99, 0.999 })
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d raw_n=%d raw_p50_us=%d raw_p99_us=%d raw_p999_us=%d raw_max_us=%d raw_mean_us=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    total, q[1], q[2], q[3], max, total > 0 and math.floor(sum / total + 0.5) or -1,
    e.status, e.connect, e.read, e.write, e.timeout))
end
