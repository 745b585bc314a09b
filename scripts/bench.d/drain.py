#!/usr/bin/python3
"""The completion wait of scripts/bench's saga part (wrk driver).

  drain.py --orders-port P --final0 F --accepted0 A [--deadline S] [--interval S]
      scrapes orders' /metrics on one keep-alive connection every --interval
      seconds (default 0.02) and sums the observations of orders_saga_seconds
      (every outcome: orders that the saga made final) and the 202s of
      POST /api/v1/orders (http_requests_total). Done when final - F >=
      accepted - A (every order accepted since the baseline -- F final and A
      accepted then -- is final) in two scrapes in a row with the same 202
      count (so an answer still in flight when wrk stopped is waited for), or
      after --deadline seconds (default 60). Prints one line
        status=ok|timeout final=.. accepted=.. t_final=EPOCH polls=..
      t_final = the time of the first scrape of the run of agreeing ones that
      ended the wait (the last order became final before it); final and
      accepted are absolute (-1 when no scrape answered).

Standard library only, and as little of it as will do: it runs while the
services finish the last orders, so its own CPU competes with theirs and is
reported as the bench's. Talks to 127.0.0.1 only.
"""
import argparse
import http.client
import sys
import time


def counts(conn):
    """(observations of orders_saga_seconds, 202s of POST /api/v1/orders)."""
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise OSError(f"GET /metrics: {resp.status}")
    fin = acc = 0
    for line in body.split(b"\n"):
        if line.startswith(b"orders_saga_seconds_count"):
            fin += int(float(line.rsplit(b" ", 1)[1]))
        elif (line.startswith(b"http_requests_total{") and b'route="/api/v1/orders"' in line
              and b'code="202"' in line):
            acc += int(float(line.rsplit(b" ", 1)[1]))
    return fin, acc


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--orders-port", type=int, required=True)
    p.add_argument("--final0", type=int, required=True)
    p.add_argument("--accepted0", type=int, required=True)
    p.add_argument("--deadline", type=float, default=60)
    p.add_argument("--interval", type=float, default=0.02)
    args = p.parse_args()

    def connect():
        return http.client.HTTPConnection("127.0.0.1", args.orders_port, timeout=10)

    conn = connect()
    deadline = time.time() + args.deadline
    polls, prev, t_final, status = 0, None, None, "timeout"
    fin = acc = -1
    while True:
        try:
            fin, acc = counts(conn)
        except (OSError, http.client.HTTPException, ValueError, IndexError):
            conn.close()
            conn = connect()
            fin = acc = -1
        now = time.time()
        polls += 1
        if fin >= 0 and fin - args.final0 >= acc - args.accepted0:
            if t_final is None:
                t_final = now
            if acc == prev:
                status = "ok"
                break
        else:
            t_final = None
        prev = acc
        if now >= deadline:
            break
        time.sleep(args.interval)
    conn.close()
    print(f"status={status} final={fin} accepted={acc} "
          f"t_final={t_final if t_final is not None else time.time():.6f} polls={polls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
