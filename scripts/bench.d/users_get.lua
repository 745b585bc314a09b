-- users_get.lua -- wrk script: GET /api/v1/users/{random id} with a service token.
--
-- Environment (set by scripts/bench):
--   BENCH_IDS_LUA  a Lua file that returns the table of user ids to pick from
--   BENCH_TOKEN    the bearer token (a service token reads any user)
-- done() prints one machine-readable line that scripts/bench parses:
--   BENCH_RESULT requests=.. duration_us=.. p50_us=.. p99_us=.. status=.. connect=.. read=.. write=.. timeout=..

local ids = dofile(os.getenv("BENCH_IDS_LUA"))
local token = os.getenv("BENCH_TOKEN")
local n = #ids
local next_thread = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  math.randomseed(os.time() + (tid or 0) * 7919)
  headers = { ["Authorization"] = "Bearer " .. token }
end

function request()
  return wrk.format("GET", "/api/v1/users/" .. ids[math.random(n)], headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
