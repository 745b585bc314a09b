#!/usr/bin/python3
"""Helpers for scripts/bench, part "saga": orders through the whole saga.

  saga.py run --orders-port P --redis-port R --tokens FILE --rate N --duration S
              [--connections C] [--drain S] [--warm] [--pid NAME=PID ...]
      An open-loop load generator and a watcher, in two processes:

      watcher  a child process (its own interpreter, so it never waits for
               the driver's GIL) reading orders.events from the start with
               XREAD BLOCK on a connection of its own. For each order it
               keeps the entry id (Redis' ms clock) of its order.placed and,
               for its first final event (order.confirmed, order.rejected,
               order.cancelled), the final status, the reason, the entry id
               and the wall-clock time (time.time()) at which XREAD handed it
               over: "seen".
      driver   asyncio, C keep-alive HTTP/1.1 connections (default 64) to
               orders. A dispatcher puts request i on a queue at its slot
               t0 + i/N (the loop wakes about once a millisecond, so requests
               leave in small bursts, never ahead of their slot); whichever
               connection is free takes it, so a slow answer does not slow the
               offered rate down until all C connections are busy (then
               requests wait in the queue, and the wait shows as "send lag").
               Each request is POST /api/v1/orders with a random user's token
               from FILE and {"items":[{"sku":"SKU-1","qty":1}]}; the driver
               records the slot, the time it wrote the request ("sent"), the
               time of the answer, the status and, for a 202, the order id
               from the body.
      --warm   first posts one order per token (so orders' user cache holds
               every user) and waits (30 s at most) until all of them are
               final, before the measured run.
      After the last slot the driver waits for the answers still in flight,
      then hands the ids of the accepted orders to the watcher, which answers
      once every one of them is final or --drain seconds have passed.

      Prints one line `BENCH_SAGA key=value ...`:
        offered, sent, answered, accepted (202), non202 (+ statuses), sockerr
          (connection errors: no answer), noanswer (still unanswered at the
          end), post_rate (202s per second of the window)
        window_s: the run, first slot to last slot + 1/N
        final_in_window, final_rate: orders of this run seen final inside the
          window, and that per second; overall_rate: all final / (last final
          seen - first slot)
        confirmed, rejected, cancelled, cancelled_timeout, not_final,
          last_final_after_s (the last final seen, after the end of the window)
        e2e_*: sent -> final seen, over confirmed orders (p50, p95, p99, max,
          in microseconds); e2e_all_p99: over every final order;
          e2e_sched_p99: from the slot instead of the send (includes the
          queueing of a saturated client: coordinated omission)
        redis_*: the in-Redis measure, order.placed entry id -> final entry
          id (ms resolution); post_placed_*: sent -> order.placed entry id
          (the POST, its commit and the relay)
        http_*: sent -> answer of the POST; lag_*: slot -> sent
      and one line `BENCH_SAGA_CPU name=cpu_window_pct/us_per_order ...`: each
      --pid's utime+stime over the window as % of one CPU, and from the first
      slot until the last order was final per accepted order; plus the
      driver and the watcher themselves. Then, for the confirmed orders, one line
      `BENCH_SAGA_HOPS step=p50/p99/max ...` (ms, from Redis' entry ids) of each
      step of the saga after the previous one: reserve (stock.reserve after
      order.placed: same commit, the relay's order), reserved (inventory:
      consume + commit + relay), charge (orders), succeeded (payments),
      confirmed (orders).
  saga.py hops --redis-port R --since-ms MS
      the saga's steps of every order placed at or after MS (Redis' ms clock:
      the entry ids), read from the streams after a run (XRANGE, nothing
      during it; used with the wrk driver, which does not know the order
      ids). Prints `BENCH_SAGA_HOPS step=p50/p99/max ... saga=p50/p99/max
      orders=N` (ms, over the confirmed orders): each step after the previous
      one as in `run`, and saga = order.placed -> order.confirmed.
  saga.py stock --json BODY --initial N
      checks a product (GET /api/v1/products/{sku}): available + reserved +
      sold = N and reserved = 0; prints "ok: ..." or "BROKEN: ...".

Standard library plus python3-redis. Talks to 127.0.0.1 only.
"""
import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import sys
import time

try:
    import redis
except ImportError:
    print("saga.py: python3-redis is not installed (scripts/install-deps installs it)",
          file=sys.stderr)
    sys.exit(2)

CLK_TCK = os.sysconf("SC_CLK_TCK")
FINAL = {"order.confirmed": "confirmed", "order.rejected": "rejected",
         "order.cancelled": "cancelled"}
BODY = b'{"items":[{"sku":"SKU-1","qty":1}]}'


# ---------------------------------------------------------------------------
# watcher (child process)
# ---------------------------------------------------------------------------

def watch(port, conn):
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, decode_responses=True)
    last = "0-0"
    placed = {}  # order id -> entry ms of order.placed
    final = {}   # order id -> (status, seen, entry ms, reason)
    dup = 0
    remaining = None
    wait_ids = deadline = None
    try:
        r.ping()
    except redis.RedisError as exc:
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready",))
    parent = os.getppid()
    while True:
        if os.getppid() != parent:
            return  # the driver is gone (killed): do not outlive it
        try:
            res = r.xread({"orders.events": last}, count=4096, block=20)
        except redis.RedisError as exc:
            conn.send(("error", repr(exc)))
            return
        now = time.time()
        for _stream, entries in res or []:
            for eid, f in entries:
                last = eid
                t = f.get("type")
                if t == "order.placed":
                    try:
                        placed[json.loads(f["data"])["order_id"]] = int(eid.split("-", 1)[0])
                    except (KeyError, ValueError):
                        pass
                elif t in FINAL:
                    try:
                        d = json.loads(f["data"])
                        oid = d["order_id"]
                    except (KeyError, ValueError):
                        continue
                    if oid in final:
                        dup += 1
                        continue
                    final[oid] = (FINAL[t], now, int(eid.split("-", 1)[0]), d.get("reason", ""))
                    if remaining is not None:
                        remaining.discard(oid)
        while conn.poll():
            msg = conn.recv()
            if msg[0] == "stop":
                return
            if msg[0] == "wait":
                wait_ids, deadline = msg[1], msg[2]
                remaining = set(i for i in wait_ids if i not in final)
        if remaining is not None and (not remaining or time.time() > deadline):
            conn.send(("result", [final.get(i) for i in wait_ids],
                       [placed.get(i) for i in wait_ids], dup, len(final)))
            remaining = wait_ids = deadline = None


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

async def read_response(reader):
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed")
    status = int(line.split(None, 2)[1])
    clen, close = 0, False
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            clen = int(v)
        elif k == b"connection" and v.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(clen) if clen else b""
    return status, body, close


async def worker(port, queue, rec):
    """Takes (i, slot, token) off the queue until None; rec[i] = [slot, sent,
    answered, status, order id]."""
    conn = None
    while True:
        item = await queue.get()
        if item is None:
            break
        i, slot, token = item
        r = rec[i]
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            req = (b"POST /api/v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: application/json\r\nAuthorization: Bearer " + token +
                   b"\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
            r[1] = time.time()
            writer.write(req)
            status, body, close = await read_response(reader)
            r[2] = time.time()
            r[3] = status
            if status == 202:
                r[4] = json.loads(body)["id"]
            if close:
                writer.close()
                conn = None
        except (OSError, EOFError, ValueError, KeyError, asyncio.IncompleteReadError):
            r[3] = -1  # no answer: a socket error (never retried: a POST is not idempotent)
            if conn is not None:
                conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


async def drive(port, tokens, rate, n, connections, settle, on_start=None):
    """Sends n requests at `rate` per second; returns (records, t0). Waits
    `settle` seconds at most for answers after the last slot."""
    queue = asyncio.Queue()
    rec = [[None, None, None, None, None] for _ in range(n)]
    workers = [asyncio.ensure_future(worker(port, queue, rec)) for _ in range(connections)]
    await asyncio.sleep(0)
    if on_start:
        on_start()
    t0 = time.time() + 0.005
    i = 0
    while i < n:
        now = time.time()
        due = min(n, int((now - t0) * rate) + 1)
        while i < due:
            slot = t0 + i / rate
            rec[i][0] = slot
            queue.put_nowait((i, slot, random.choice(tokens)))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.time()))
    for _ in workers:
        queue.put_nowait(None)
    done, pending = await asyncio.wait(workers, timeout=settle)
    for w in pending:
        w.cancel()
    return rec, t0


def cpu_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return math.nan
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpus(pids):
    return {name: cpu_of(pid) for name, pid in pids.items()}


def q(values, p):
    """Nearest-rank percentile p (0..100) of sorted values, or nan."""
    if not values:
        return math.nan
    k = max(0, min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1))
    return values[k]


def us(x):
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else str(int(round(x)))


def wait_final(conn, ids, secs):
    conn.send(("wait", ids, time.time() + secs))
    while True:
        if not conn.poll(secs + 30):
            raise RuntimeError("the watcher did not answer")
        msg = conn.recv()
        if msg[0] == "error":
            raise RuntimeError(f"watcher: {msg[1]}")
        if msg[0] == "result":
            return msg[1], msg[2], msg[3], msg[4]


# The saga's steps as they appear in Redis, in order: (label, stream, type).
HOPS = [
    ("placed", "orders.events", "order.placed"),
    ("reserve", "inventory.commands", "stock.reserve"),
    ("reserved", "inventory.events", "stock.reserved"),
    ("charge", "payments.commands", "payment.charge"),
    ("succeeded", "payments.events", "payment.succeeded"),
    ("confirmed", "orders.events", "order.confirmed"),
]


def hop_times(port, ids):
    """{label: [ms between the previous step's entry id and this one's, per
    order of ids that has both]} from the entry ids (Redis' ms clock)."""
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, decode_responses=True)
    want = set(ids)
    at = {}
    for stream in sorted(set(h[1] for h in HOPS)):
        types = {h[2]: h[0] for h in HOPS if h[1] == stream}
        start = "-"
        while True:
            batch = r.xrange(stream, start, "+", count=10000)
            if not batch:
                break
            for eid, f in batch:
                label = types.get(f.get("type"))
                if label is None:
                    continue
                try:
                    oid = json.loads(f["data"])["order_id"]
                except (KeyError, ValueError):
                    continue
                if oid in want:
                    at.setdefault((label, oid), int(eid.split("-", 1)[0]))
            start = "(" + batch[-1][0]
    out = {}
    for (prev, _s, _t), (label, _s2, _t2) in zip(HOPS, HOPS[1:]):
        out[label] = sorted(at[(label, i)] - at[(prev, i)] for i in ids
                            if (label, i) in at and (prev, i) in at)
    return out


def cmd_hops(args):
    r = redis.Redis(host="127.0.0.1", port=args.redis_port, socket_timeout=30,
                    decode_responses=True)
    at = {}
    for stream in sorted(set(h[1] for h in HOPS)):
        types = {h[2]: h[0] for h in HOPS if h[1] == stream}
        start = f"{args.since_ms}-0"
        while True:
            batch = r.xrange(stream, start, "+", count=10000)
            if not batch:
                break
            for eid, f in batch:
                label = types.get(f.get("type"))
                if label is None:
                    continue
                try:
                    oid = json.loads(f["data"])["order_id"]
                except (KeyError, ValueError, TypeError):
                    continue
                at.setdefault((label, oid), int(eid.split("-", 1)[0]))
            start = "(" + batch[-1][0]
    ids = [oid for (label, oid) in at if label == "placed" and ("confirmed", oid) in at]
    out = {}
    for (prev, _s, _t), (label, _s2, _t2) in zip(HOPS, HOPS[1:]):
        out[label] = sorted(at[(label, i)] - at[(prev, i)] for i in ids
                            if (label, i) in at and (prev, i) in at)
    out["saga"] = sorted(at[("confirmed", i)] - at[("placed", i)] for i in ids)
    print("BENCH_SAGA_HOPS " + " ".join(
        f"{k}={us(q(v, 50))}/{us(q(v, 99))}/{us(q(v, 100))}" for k, v in out.items()) +
        f" orders={len(ids)}")
    return 0


def cmd_run(args):
    with open(args.tokens) as f:
        tokens = [ln.strip().encode() for ln in f if ln.strip()]
    pids = {}
    for spec in args.pid:
        name, _, pid = spec.partition("=")
        pids[name] = int(pid)

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    watcher = ctx.Process(target=watch, args=(args.redis_port, child), daemon=True)
    watcher.start()
    if not parent.poll(10):
        print("saga.py: the watcher did not start", file=sys.stderr)
        return 1
    msg = parent.recv()
    if msg[0] != "ready":
        print(f"saga.py: watcher: {msg}", file=sys.stderr)
        return 1
    pids["watcher"] = watcher.pid
    pids["driver"] = os.getpid()

    try:
        if args.warm:
            tw = time.time()
            loop = asyncio.new_event_loop()
            warm_rec = [[None] * 5 for _ in tokens]

            async def warm():
                queue = asyncio.Queue()
                ws = [asyncio.ensure_future(worker(args.orders_port, queue, warm_rec))
                      for _ in range(min(16, args.connections))]
                for i, t in enumerate(tokens):
                    queue.put_nowait((i, time.time(), t))
                for _ in ws:
                    queue.put_nowait(None)
                await asyncio.wait(ws, timeout=60)

            loop.run_until_complete(warm())
            loop.close()
            bad = [r[3] for r in warm_rec if r[3] != 202]
            if bad:
                print(f"saga.py: warming: {len(bad)} of {len(tokens)} orders not accepted "
                      f"(statuses {sorted(set(bad))[:5]})", file=sys.stderr)
                return 1
            fin, _pl, _dup, _ = wait_final(parent, [r[4] for r in warm_rec], 30)
            nf = sum(1 for x in fin if x is None)
            if nf:
                print(f"saga.py: warming: {nf} of {len(tokens)} orders not final after 30 s",
                      file=sys.stderr)
                return 1
            statuses = {}
            for x in fin:
                statuses[x[0]] = statuses.get(x[0], 0) + 1
            print(f"saga.py: warm: {len(tokens)} orders (one per user) final in "
                  f"{time.time() - tw:.1f}s: {statuses}", file=sys.stderr)

        n = int(round(args.rate * args.duration))
        window = n / args.rate
        marks = {}

        def on_start():
            marks["cpu0"] = cpus(pids)

        loop = asyncio.new_event_loop()
        rec, t0 = loop.run_until_complete(
            drive(args.orders_port, tokens, args.rate, n, args.connections, args.settle, on_start))
        loop.close()
        t1 = t0 + window
        cpu1 = cpus(pids)  # answers all in: close to the end of the window
        t_cpu1 = time.time()
        ids = [r[4] for r in rec if r[4] is not None]
        fin, pl, dup, total_final = wait_final(parent, ids, args.drain)
        cpu2 = cpus(pids)
        t_cpu2 = time.time()
    finally:
        try:
            parent.send(("stop",))
        except OSError:
            pass
        watcher.join(5)
        if watcher.is_alive():
            watcher.kill()

    sent = sum(1 for r in rec if r[1] is not None)
    answered = sum(1 for r in rec if r[3] is not None and r[3] > 0)
    accepted = len(ids)
    sockerr = sum(1 for r in rec if r[3] == -1)
    noanswer = sum(1 for r in rec if r[1] is not None and r[3] is None)
    others = {}
    for r in rec:
        if r[3] is not None and r[3] > 0 and r[3] != 202:
            others[r[3]] = others.get(r[3], 0) + 1
    sent_of = {r[4]: r for r in rec if r[4] is not None}

    counts = {"confirmed": 0, "rejected": 0, "cancelled": 0}
    timeouts = not_final = 0
    e2e_conf, e2e_all, e2e_sched, redis_ms, post_placed = [], [], [], [], []
    in_window = 0
    last_seen = None
    for oid, f, p in zip(ids, fin, pl):
        r = sent_of[oid]
        if p is not None:
            post_placed.append(p * 1e3 - r[1] * 1e6)
        if f is None:
            not_final += 1
            continue
        status, seen, ems, reason = f
        counts[status] += 1
        if status == "cancelled" and reason == "timeout":
            timeouts += 1
        lat = (seen - r[1]) * 1e6
        e2e_all.append(lat)
        e2e_sched.append((seen - r[0]) * 1e6)
        if status == "confirmed":
            e2e_conf.append(lat)
        if p is not None:
            redis_ms.append(ems - p)
        if t0 <= seen <= t1:
            in_window += 1
        last_seen = seen if last_seen is None else max(last_seen, seen)
    for v in (e2e_conf, e2e_all, e2e_sched, redis_ms, post_placed):
        v.sort()
    http = sorted((r[2] - r[1]) * 1e6 for r in rec if r[2] is not None)
    lag = sorted((r[1] - r[0]) * 1e6 for r in rec if r[1] is not None)
    final_n = accepted - not_final
    overall = final_n / (last_seen - t0) if last_seen and last_seen > t0 else math.nan

    out = {
        "offered": n, "rate": args.rate, "window_s": f"{window:.3f}", "sent": sent,
        "answered": answered, "accepted": accepted,
        "non202": sum(others.values()),
        "non202_statuses": ",".join(f"{k}:{v}" for k, v in sorted(others.items())) or "-",
        "sockerr": sockerr, "noanswer": noanswer,
        "post_rate": f"{accepted / window:.0f}",
        "final_in_window": in_window, "final_rate": f"{in_window / window:.0f}",
        "overall_rate": "nan" if math.isnan(overall) else f"{overall:.0f}",
        "confirmed": counts["confirmed"], "rejected": counts["rejected"],
        "cancelled": counts["cancelled"], "cancelled_timeout": timeouts,
        "not_final": not_final, "dup_final": dup, "drain_s": args.drain,
        "last_final_after_s": "nan" if last_seen is None else f"{last_seen - t1:.3f}",
        "e2e_p50_us": us(q(e2e_conf, 50)), "e2e_p95_us": us(q(e2e_conf, 95)),
        "e2e_p99_us": us(q(e2e_conf, 99)), "e2e_max_us": us(q(e2e_conf, 100)),
        "e2e_all_p99_us": us(q(e2e_all, 99)), "e2e_sched_p99_us": us(q(e2e_sched, 99)),
        "redis_p50_ms": us(q(redis_ms, 50)), "redis_p99_ms": us(q(redis_ms, 99)),
        "post_placed_p50_us": us(q(post_placed, 50)),
        "post_placed_p99_us": us(q(post_placed, 99)),
        "http_p50_us": us(q(http, 50)), "http_p99_us": us(q(http, 99)),
        "http_max_us": us(q(http, 100)),
        "lag_p50_us": us(q(lag, 50)), "lag_p99_us": us(q(lag, 99)), "lag_max_us": us(q(lag, 100)),
    }
    print("BENCH_SAGA " + " ".join(f"{k}={v}" for k, v in out.items()))
    cpu0 = marks.get("cpu0", {})
    parts = []
    for name in pids:
        a, b, c = cpu0.get(name, math.nan), cpu1.get(name, math.nan), cpu2.get(name, math.nan)
        pct = (b - a) / (t_cpu1 - t0) * 100 if t_cpu1 > t0 else math.nan
        per = (c - a) * 1e6 / accepted if accepted else math.nan
        parts.append(f"{name}={'nan' if math.isnan(pct) else f'{pct:.0f}'}/"
                     f"{'nan' if math.isnan(per) else f'{per:.0f}'}")
    print("BENCH_SAGA_CPU " + " ".join(parts) + f" window_s={t_cpu1 - t0:.2f}"
          f" total_s={t_cpu2 - t0:.2f}")
    try:
        hops = hop_times(args.redis_port, [oid for oid, f in zip(ids, fin)
                                           if f is not None and f[0] == "confirmed"])
        print("BENCH_SAGA_HOPS " + " ".join(
            f"{k}={us(q(v, 50))}/{us(q(v, 99))}/{us(q(v, 100))}" for k, v in hops.items()))
    except redis.RedisError as exc:
        print(f"saga.py: reading the saga's streams: {exc}", file=sys.stderr)
    return 0


def cmd_stock(args):
    try:
        p = json.loads(args.json)
        a, r, s = p["available"], p["reserved"], p["sold"]
    except (ValueError, KeyError, TypeError):
        print(f"unreadable: {args.json[:200]}")
        return 0
    total = args.initial
    ok = a + r + s == total and r == 0
    print(f"{'ok' if ok else 'BROKEN'}: available {a} + reserved {r} + sold {s} = {a + r + s} "
          f"(initial + restock = {total})")
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("stock")
    a.add_argument("--json", required=True)
    a.add_argument("--initial", type=int, required=True)
    a = sub.add_parser("hops")
    a.add_argument("--redis-port", type=int, required=True)
    a.add_argument("--since-ms", type=int, required=True)
    a = sub.add_parser("run")
    a.add_argument("--orders-port", type=int, required=True)
    a.add_argument("--redis-port", type=int, required=True)
    a.add_argument("--tokens", required=True)
    a.add_argument("--rate", type=float, required=True)
    a.add_argument("--duration", type=float, required=True)
    a.add_argument("--connections", type=int, default=64)
    a.add_argument("--settle", type=float, default=15,
                   help="seconds to wait for answers after the last slot")
    a.add_argument("--drain", type=float, default=60)
    a.add_argument("--warm", action="store_true")
    a.add_argument("--pid", action="append", default=[])
    args = p.parse_args()
    return {"stock": cmd_stock, "hops": cmd_hops, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
