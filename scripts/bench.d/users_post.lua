-- users_post.lua -- wrk script: POST /api/v1/users, a new user per request, at a fixed rate.
--
-- Environment (set by scripts/bench):
--   BENCH_POST_RATE  target requests per second over all threads (default 1000)
--   BENCH_RUN_TAG    makes the emails unique across runs (default: os.time())
-- Emails are post-<tag>-t<thread>-<counter>@example.com, so every request
-- registers a user nobody registered before.
--
-- Pacing: delay() is called before each request of each connection. Each
-- thread keeps a schedule of send slots BENCH_POST_RATE/threads per second
-- apart and hands every request the next free slot, so the rate does not
-- depend on the service's answer time (with enough connections); a thread
-- that falls behind drops the missed slots instead of bursting. The clock is
-- CLOCK_MONOTONIC through LuaJIT's FFI; without FFI each connection waits a
-- fixed connections/rate after each answer (then the rate is a bit lower).
--
-- done() prints one machine-readable line that scripts/bench parses:
--   BENCH_RESULT requests=.. duration_us=.. p50_us=.. p99_us=.. created=.. non2xx=..
--                status=.. connect=.. read=.. write=.. timeout=..
-- created counts 201 answers, non2xx answers outside 200..299 (wrk's own
-- status count, errors.status, only counts 400 and up).

local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local now_ms
do
  local ok, ffi = pcall(require, "ffi")
  if ok then
    pcall(ffi.cdef, [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clk_id, bench_timespec *tp);
    ]])
    local ts = ffi.new("bench_timespec")
    now_ms = function()
      ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
    end
  end
end

function init(args)
  tid = tid or 0
  created, non2xx, counter = 0, 0, 0
  tag = os.getenv("BENCH_RUN_TAG") or tostring(os.time())
  local rate = tonumber(os.getenv("BENCH_POST_RATE") or "1000")
  -- wrk.thread is not visible here; scripts/bench passes the thread and
  -- connection counts so that each thread takes its share of the rate
  local nthreads = tonumber(os.getenv("BENCH_POST_THREADS") or "1")
  local nconns = tonumber(os.getenv("BENCH_POST_CONNECTIONS") or "4")
  interval = 1000 * nthreads / rate                 -- ms between this thread's sends
  fixed_delay = math.floor(1000 * nconns / rate + 0.5) -- fallback, per connection
  next_slot = nil
  headers = { ["Content-Type"] = "application/json" }
end

function delay()
  if not now_ms then
    return fixed_delay
  end
  local now = now_ms()
  if next_slot == nil or next_slot < now - interval then
    next_slot = now -- the start, or behind: no catch-up burst
  end
  local wait = next_slot - now
  next_slot = next_slot + interval
  if wait <= 0 then
    return 0
  end
  return math.floor(wait + 0.5)
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"name":"Bench Post %d","email":"post-%s-t%d-%d@example.com","password":"bench-password-123"}',
    counter, tag, tid, counter)
  return wrk.format("POST", "/api/v1/users", headers, body)
end

function response(status, hdrs, body)
  if status == 201 then
    created = created + 1
  elseif status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do
    c = c + (t:get("created") or 0)
    o = o + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d created=%d non2xx=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    c, o, e.status, e.connect, e.read, e.write, e.timeout))
end
