-- saga_post.lua -- wrk script: POST /api/v1/orders at a fixed offered rate, a random
-- warm user's token per request, for the saga part of scripts/bench.
--
-- Environment (set by scripts/bench):
--   BENCH_TOKENS       a file of bearer tokens, one per line (bench.d/orders.py seed)
--   BENCH_SAGA_RATE    offered requests per second over all threads (default 2000)
--   BENCH_THREADS      wrk's -t, so that each thread takes its share (default 1)
--   BENCH_ORDER_BODY   the body (default {"items":[{"sku":"SKU-1","qty":1}]})
-- Every request is built once per token in init() (wrk.format), so request()
-- is a table lookup: the driver's CPU per order stays a few microseconds.
--
-- Pacing (an open-ish loop): wrk calls delay() before every request of every
-- connection. Each thread keeps one schedule of send slots 1/(rate/threads)
-- apart and hands each request the next slot, whichever connection asks, so
-- the offered rate does not depend on the answer time -- as long as a
-- connection is free: a connection sends its next request only after the
-- answer to the previous one (HTTP/1.1, no pipelining), so with C connections
-- the loop is open only while answers take less than C/rate on average
-- (scripts/bench's 128 connections at 5,000/s: 25.6 ms; with 64, answers
-- at 22 ms p99 left slots unsent even in a fast run). Beyond that the service's slowness slows
-- the offer down (coordinated omission). A slot that passes while no
-- connection was free is not sent late in a burst: it is dropped and counted
-- as "missed", so sent + missed = the slots of the run, and scripts/bench
-- reports both. The clock is CLOCK_MONOTONIC through LuaJIT's FFI; wrk's
-- timers have 1 ms resolution, so requests leave in small bunches on the ms,
-- never ahead of their slot.
--
-- There is no response(): defining one makes wrk keep every answer's headers
-- and body and build a Lua table of them, a few microseconds an answer that
-- count against the driver's budget. wrk itself counts the answers with a
-- status of 400 or more (summary.errors.status); scripts/bench takes the
-- 202s and the others by status from orders' own http_requests_total.
--
-- done() prints one machine-readable line that scripts/bench parses:
--   BENCH_RESULT requests=.. sent=.. missed=.. duration_us=.. p50_us=.. p99_us=..
--                status=.. connect=.. read=.. write=.. timeout=..
-- requests = answers wrk read; sent = requests written (answers still in
-- flight when wrk stops are not read, but the service makes their orders);
-- status = answers with a status >= 400. p50/p99 = wrk's latency (request
-- written -> answer read).

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
  else
    error("saga_post.lua needs LuaJIT's ffi (wrk is built with LuaJIT)")
  end
end

function init(args)
  tid = tid or 0
  sent, missed = 0, 0
  local rate = tonumber(os.getenv("BENCH_SAGA_RATE") or "2000")
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  interval = 1000 * nthreads / rate -- ms between this thread's slots
  next_slot = nil
  local body = os.getenv("BENCH_ORDER_BODY") or '{"items":[{"sku":"SKU-1","qty":1}]}'
  reqs = {}
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format("POST", "/api/v1/orders",
        { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. line }, body)
    end
  end
  n = #reqs
  if n == 0 then
    error("saga_post.lua: no tokens in " .. tostring(os.getenv("BENCH_TOKENS")))
  end
  math.randomseed(os.time() + tid * 7919)
end

function delay()
  local now = now_ms()
  if next_slot == nil then
    next_slot = now
  elseif next_slot < now - interval then
    -- behind: every connection was busy while these slots passed
    local late = math.floor((now - next_slot) / interval)
    missed = missed + late
    next_slot = next_slot + late * interval
  end
  local wait = next_slot - now
  next_slot = next_slot + interval
  if wait <= 0 then
    return 0
  end
  return math.floor(wait + 0.5)
end

function request()
  sent = sent + 1
  return reqs[math.random(n)]
end

function done(summary, latency, requests)
  local s, m = 0, 0
  for _, t in ipairs(threads) do
    s = s + (t:get("sent") or 0)
    m = m + (t:get("missed") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d sent=%d missed=%d duration_us=%d p50_us=%d p99_us=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, s, m, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
