#!/usr/bin/python3
"""Helpers for scripts/bench, part "credit": account.credit through payments.

  credit.py register --port P --count K --ids FILE
      XADDs K user.registered events into users.events (data {user_id, name,
      email}, fresh lower-case UUIDs), as users would publish them: payments
      opens an account for each. Writes the user ids, one per line, to FILE.
  credit.py accounts --http-port P --ids FILE [--deadline S]
      polls GET /api/v1/accounts/{id} (a service token signed with
      $JWT_SECRET) until every account answers 200, or the deadline passes;
      prints `accounts=K balances=B1,B2,..` (balance_cents, in FILE's order).
      Exits 1 on a timeout.
  credit.py preload --port P --ids FILE --count N [--amount A] [--chunk 1000]
      XADDs N account.credit commands into payments.commands, data
      {"user_id": U, "amount_cents": A} with U taken round-robin from FILE,
      pipelined in chunks; prints `preload_s=.. xlen=..`.
  credit.py verify --port P --ids FILE --count N [--amount A]
      reads payments.events and checks the account.credited events: prints
      `credited=.. opened=.. other=.. distinct_ids=.. per_user=c1,c2,..
      last_balance=b1,b2,.. amount_ok=0|1` (per user in FILE's order: how many
      credits, and the balance_cents of the last one).

Standard library plus python3-redis. Talks to 127.0.0.1 only.
"""
import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import sys
import time
import uuid

try:
    import redis
except ImportError:
    print("credit.py: python3-redis is not installed (scripts/install-deps installs it)",
          file=sys.stderr)
    sys.exit(2)


def client(port):
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, decode_responses=True)


def read_ids(path):
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip()]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_token(ttl=3600):
    secret = os.environ.get("JWT_SECRET", "")
    if len(secret) < 32:
        sys.exit("credit.py: JWT_SECRET must be set (32+ bytes)")
    now = int(time.time())
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps({"sub": "service:bench", "role": "service", "iat": now,
                              "exp": now + ttl}, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def cmd_register(args):
    r = client(args.port)
    ids = [str(uuid.uuid4()) for _ in range(args.count)]
    p = r.pipeline(transaction=False)
    for i, uid in enumerate(ids):
        data = json.dumps({"user_id": uid, "name": f"Credit Bench {i}",
                           "email": f"credit-bench-{i}-{uid[:8]}@example.com"},
                          separators=(",", ":"))
        p.xadd("users.events", {"type": "user.registered", "data": data, "source": "bench"})
    p.execute()
    with open(args.ids, "w") as f:
        for uid in ids:
            f.write(uid + "\n")
    return 0


def cmd_accounts(args):
    ids = read_ids(args.ids)
    hdr = {"Authorization": f"Bearer {service_token()}"}
    deadline = time.monotonic() + args.deadline
    balances = {}
    conn = http.client.HTTPConnection("127.0.0.1", args.http_port, timeout=5)
    while len(balances) < len(ids):
        for uid in ids:
            if uid in balances:
                continue
            try:
                conn.request("GET", f"/api/v1/accounts/{uid}", headers=hdr)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", args.http_port, timeout=5)
                continue
            if resp.status == 200:
                balances[uid] = json.loads(body)["balance_cents"]
            elif resp.status != 404:
                print(f"credit.py accounts: GET /api/v1/accounts/{uid}: HTTP {resp.status} "
                      f"{body[:200]!r}", file=sys.stderr)
                return 1
        if len(balances) < len(ids):
            if time.monotonic() > deadline:
                print(f"credit.py accounts: {len(balances)} of {len(ids)} accounts after "
                      f"{args.deadline}s", file=sys.stderr)
                return 1
            time.sleep(0.05)
    conn.close()
    print(f"accounts={len(ids)} balances={','.join(str(balances[u]) for u in ids)}")
    return 0


def cmd_preload(args):
    ids = read_ids(args.ids)
    r = client(args.port)
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    datas = [json.dumps({"user_id": uid, "amount_cents": args.amount}, separators=(",", ":"))
             for uid in ids]
    i = 0
    while i < args.count:
        if time.monotonic() > deadline:
            print(f"credit.py preload: deadline passed after {i} entries", file=sys.stderr)
            return 1
        p = r.pipeline(transaction=False)
        end = min(args.count, i + args.chunk)
        for n in range(i, end):
            p.xadd("payments.commands", {"type": "account.credit", "data": datas[n % len(ids)]})
        p.execute()
        i = end
    print(f"preload_s={time.monotonic() - t0:.3f} xlen={r.xlen('payments.commands')}")
    return 0


def cmd_verify(args):
    ids = read_ids(args.ids)
    index = {u: k for k, u in enumerate(ids)}
    r = client(args.port)
    per_user = [0] * len(ids)
    last_balance = [None] * len(ids)
    credited = opened = other = 0
    amount_ok = 1
    event_ids = set()
    start = "-"
    while True:
        batch = r.xrange("payments.events", start, "+", count=10000)
        if not batch:
            break
        for _eid, f in batch:
            t = f.get("type")
            if t == "account.opened":
                opened += 1
                continue
            if t != "account.credited":
                other += 1
                continue
            credited += 1
            event_ids.add(f.get("id"))
            d = json.loads(f.get("data", "{}"))
            k = index.get(d.get("user_id"))
            if k is None:
                other += 1
                continue
            per_user[k] += 1
            if d.get("amount_cents") != args.amount:
                amount_ok = 0
            b = d.get("balance_cents")
            if last_balance[k] is None or b > last_balance[k]:
                last_balance[k] = b
        start = "(" + batch[-1][0]
    print(f"credited={credited} opened={opened} other={other} distinct_ids={len(event_ids)} "
          f"per_user={','.join(map(str, per_user))} "
          f"last_balance={','.join(str(b) for b in last_balance)} amount_ok={amount_ok}")
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("register")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--ids", required=True)
    a = sub.add_parser("accounts")
    a.add_argument("--http-port", type=int, required=True)
    a.add_argument("--ids", required=True)
    a.add_argument("--deadline", type=float, default=30)
    a = sub.add_parser("preload")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--ids", required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--amount", type=int, default=1)
    a.add_argument("--chunk", type=int, default=1000)
    a.add_argument("--timeout", type=float, default=300)
    a = sub.add_parser("verify")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--ids", required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--amount", type=int, default=1)
    args = p.parse_args()
    return {"register": cmd_register, "accounts": cmd_accounts, "preload": cmd_preload,
            "verify": cmd_verify}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
