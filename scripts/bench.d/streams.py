#!/usr/bin/python3
"""Helpers for scripts/bench: the stream side of the consumer benchmark.

  streams.py preload --port P --count N [--stream users.commands] [--chunk 1000]
      XADDs N user.register entries, data {"name":"Bench i","email":"bench<i>@example.com"}
      (i = 1..N, so every email is unique), pipelined in chunks of --chunk,
      and prints `preload_s=.. xlen=..`.
  streams.py wait --port P (--pid PID --t0 EPOCH | --start-file F [--ready-file R])
                  --count N --deadline S [--events-count M]
                  [--group users] [--commands users.commands] [--events users.events]
      polls every --interval seconds (every millisecond until the group has
      read its first entry), from EPOCH (the wall-clock time the service was
      started) until
        1. the group has read every entry (entries-read = N) with lag 0 and
           pending 0 (XINFO GROUPS): "consumed", then
        2. the events stream holds --events-count entries (default N):
           "published";
      and prints one line of key=value pairs: status (ok, timeout or died),
      first_s (when entries-read was first seen above 0: the first batch
      handed to the consumer), consumed_s, published_s (seconds since EPOCH,
      or nan), first_early=1 when the very first poll already saw entries read
      (then first_s is late), the service's
      CPU seconds (utime+stime from /proc/PID/stat) at each point, its peak
      RSS (VmHWM) and current RSS in KiB, and the last group state seen.
      It never waits past EPOCH + S. With --start-file, it starts polling
      before the service exists: it writes "ready" to R after its first poll
      and reads "PID EPOCH" from F once the caller has started the service
      and written it there (so the first batch is not missed while this
      interpreter starts up); it gives up after 60 s without one.
  streams.py verify --port P --count N [--stream users.events] [--type user.registered]
      reads the events stream and prints entries=, distinct_ids=, distinct_emails=,
      wrong_type=, missing_emails= (emails bench1..benchN not seen).

Needs python3-redis (redis-py). Talks to 127.0.0.1 only.
"""
import argparse
import json
import math
import os
import sys
import time

try:
    import redis
except ImportError:  # scripts/bench checks first; this is for running it by hand
    print("streams.py: python3-redis is not installed (scripts/install-deps installs it)",
          file=sys.stderr)
    sys.exit(2)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def client(port):
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, decode_responses=True)


def cmd_preload(args):
    r = client(args.port)
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    i = 1
    while i <= args.count:
        if time.monotonic() > deadline:
            print(f"preload: deadline passed after {i - 1} entries", file=sys.stderr)
            return 1
        p = r.pipeline(transaction=False)
        end = min(args.count, i + args.chunk - 1)
        for n in range(i, end + 1):
            data = json.dumps({"name": f"Bench {n}", "email": f"bench{n}@example.com"},
                              separators=(",", ":"))
            p.xadd(args.stream, {"type": "user.register", "data": data})
        p.execute()
        i = end + 1
    took = time.monotonic() - t0
    print(f"preload_s={took:.3f} xlen={r.xlen(args.stream)}")
    return 0


def proc_cpu_s(pid):
    """utime+stime of pid in seconds, and its state letter; (nan, None) if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return math.nan, None
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, fields[0]


def proc_status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_state(r, stream, group):
    """(entries_read, lag, pending) of group on stream, or None before it exists."""
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError:
        return None  # no such stream (yet)
    for g in groups:
        if g.get("name") == group:
            return g.get("entries-read"), g.get("lag"), g.get("pending")
    return None


def read_start_file(path):
    """(pid, t0) from a file holding "PID EPOCH", or None while it is empty."""
    try:
        with open(path) as f:
            parts = f.read().split()
        return int(parts[0]), float(parts[1].replace(",", "."))
    except (OSError, ValueError, IndexError):
        return None


def cmd_wait(args):
    r = client(args.port)
    pid, t0 = args.pid, args.t0
    if args.start_file is None and (pid is None or t0 is None):
        sys.exit("streams.py wait: give --pid and --t0, or --start-file")
    first_abs = consumed_abs = published_abs = math.nan
    cpu_consumed = cpu_published = cpu_first = math.nan
    first_early = 0  # the first poll after the start already saw entries read
    want_events = args.count if args.events_count is None else args.events_count
    status, state, events = "timeout", None, 0
    hwm = 0
    polls = 0
    wait_start = time.time() + 60  # at most this long for the start file
    while True:
        now = time.time()
        if pid is None:
            got = read_start_file(args.start_file)
            if got is not None:
                pid, t0 = got
            elif now > wait_start:
                status = "no_start"
                break
        cpu, pstate = (proc_cpu_s(pid) if pid is not None else (math.nan, "R"))
        if pid is not None:
            hwm = max(hwm, proc_status_kb(pid, "VmHWM"))
        if pstate is None or pstate in ("Z", "X"):
            status = "died"
            break
        try:
            state = group_state(r, args.commands, args.group)
            events = r.xlen(args.events)
        except redis.RedisError as exc:
            print(f"wait: redis: {exc}", file=sys.stderr)
            status = "redis_error"
            break
        polls += 1
        if polls == 1 and args.ready_file:
            with open(args.ready_file, "w") as f:
                f.write("ready\n")
        if math.isnan(first_abs) and state is not None and (state[0] or 0) > 0:
            first_abs, cpu_first = now, cpu
            first_early = int(polls == 1 or (state[0] or 0) >= args.count)
        if math.isnan(consumed_abs) and state is not None:
            entries_read, lag, pending = state
            if entries_read == args.count and lag == 0 and pending == 0:
                consumed_abs, cpu_consumed = now, cpu
        if not math.isnan(consumed_abs) and events >= want_events:
            published_abs, cpu_published = now, cpu
            status = "ok"
            break
        if t0 is not None and now >= t0 + args.deadline:
            break
        time.sleep(args.interval if not math.isnan(first_abs) else min(args.interval, 0.001))
    entries_read, lag, pending = state if state is not None else ("none", "none", "none")
    rel = (lambda x: math.nan) if t0 is None else (lambda x: x - t0)
    print(f"status={status} first_s={rel(first_abs):.4f} first_early={first_early} "
          f"cpu_first_s={cpu_first:.2f} "
          f"consumed_s={rel(consumed_abs):.3f} published_s={rel(published_abs):.3f} "
          f"cpu_consumed_s={cpu_consumed:.2f} cpu_published_s={cpu_published:.2f} "
          f"cpu_now_s={proc_cpu_s(pid)[0] if pid is not None else math.nan:.2f} hwm_kb={hwm} "
          f"rss_kb={proc_status_kb(pid, 'VmRSS') if pid is not None else 0} "
          f"entries_read={entries_read} lag={lag} pending={pending} events={events}")
    return 0 if status == "ok" else 1


def cmd_verify(args):
    r = client(args.port)
    ids, emails = set(), set()
    entries = wrong = 0
    start = "-"
    while True:
        batch = r.xrange(args.stream, start, "+", count=10000)
        if not batch:
            break
        for entry_id, fields in batch:
            entries += 1
            if fields.get("type") != args.type:
                wrong += 1
            ids.add(fields.get("id"))
            try:
                emails.add(json.loads(fields.get("data", "{}")).get("email"))
            except ValueError:
                pass
        start = "(" + batch[-1][0]
    missing = sum(1 for n in range(1, args.count + 1) if f"bench{n}@example.com" not in emails)
    print(f"entries={entries} distinct_ids={len(ids)} distinct_emails={len(emails)} "
          f"wrong_type={wrong} missing_emails={missing}")
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("preload")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--stream", default="users.commands")
    a.add_argument("--chunk", type=int, default=1000)
    a.add_argument("--timeout", type=float, default=300)
    w = sub.add_parser("wait")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--pid", type=int)
    w.add_argument("--t0", type=float)
    w.add_argument("--start-file")
    w.add_argument("--ready-file")
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--deadline", type=float, default=180)
    w.add_argument("--interval", type=float, default=0.01)
    w.add_argument("--group", default="users")
    w.add_argument("--commands", default="users.commands")
    w.add_argument("--events", default="users.events")
    w.add_argument("--events-count", type=int, default=None)
    v = sub.add_parser("verify")
    v.add_argument("--port", type=int, required=True)
    v.add_argument("--count", type=int, required=True)
    v.add_argument("--stream", default="users.events")
    v.add_argument("--type", default="user.registered")
    args = p.parse_args()
    return {"preload": cmd_preload, "wait": cmd_wait, "verify": cmd_verify}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
