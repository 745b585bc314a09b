-- orders_post.lua -- wrk script: POST /api/v1/orders with user tokens, a fixed small body.
--
-- Environment (set by scripts/bench):
--   BENCH_TOKENS        a file of bearer tokens, one per line
--   BENCH_ORDERS_MODE   "random": each request picks a token at random (the
--                       users were warmed into orders' cache before the run);
--                       "once": each token is used at most once -- the pool is
--                       split into one slice per thread and each thread walks
--                       its slice in order, so every request is for a user
--                       orders has never seen (a cold cache by construction).
--                       A thread that runs out of tokens stops (wrk.thread:stop);
--                       requests it still had to send reuse its last token and
--                       are counted as "reused" (scripts/bench reports them,
--                       and orders' cache_hit counter shows what they cost).
--   BENCH_THREADS       wrk's -t, to split the pool (default 1)
--   BENCH_ORDER_BODY    the body (default {"items":[{"sku":"SKU-1","qty":1}]})
-- Tokens are read with io.lines (a Lua table literal of 100k strings would pass
-- LuaJIT's limit on constants per chunk).
-- done() prints one machine-readable line that scripts/bench parses:
--   BENCH_RESULT requests=.. duration_us=.. p50_us=.. p99_us=.. accepted=.. other=..
--                reused=.. exhausted=.. status=.. connect=.. read=.. write=.. timeout=..
-- accepted counts 202 answers, other any other status; exhausted the threads
-- that ran out of tokens.

local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

function init(args)
  tid = tid or 0
  accepted, other, reused, exhausted = 0, 0, 0, 0
  mode = os.getenv("BENCH_ORDERS_MODE") or "random"
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  local all = {}
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    if #line > 0 then
      all[#all + 1] = line
    end
  end
  if mode == "once" then
    -- keep only this thread's slice
    local per = math.floor(#all / nthreads)
    tokens = {}
    for i = tid * per + 1, (tid + 1) * per do
      tokens[#tokens + 1] = all[i]
    end
  else
    tokens = all
  end
  all = nil
  collectgarbage()
  n = #tokens
  pos = 1
  math.randomseed(os.time() + tid * 7919)
  body = os.getenv("BENCH_ORDER_BODY") or '{"items":[{"sku":"SKU-1","qty":1}]}'
end

function request()
  local t
  if mode == "once" then
    if pos > n then
      reused = reused + 1
      if exhausted == 0 then
        exhausted = 1
        wrk.thread:stop()
      end
      t = tokens[n]
    else
      t = tokens[pos]
      pos = pos + 1
    end
  else
    t = tokens[math.random(n)]
  end
  return wrk.format("POST", "/api/v1/orders",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. t }, body)
end

function response(status, hdrs, b)
  if status == 202 then
    accepted = accepted + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local a, o, r, x = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + (t:get("accepted") or 0)
    o = o + (t:get("other") or 0)
    r = r + (t:get("reused") or 0)
    x = x + (t:get("exhausted") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d accepted=%d other=%d reused=%d exhausted=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    a, o, r, x, e.status, e.connect, e.read, e.write, e.timeout))
end
