#!/usr/bin/python3
"""Helpers for scripts/bench, part "orders": users to order for, and warming.

  orders.py seed --port P --count N --tokens FILE --ids FILE [--threads T]
      registers N users through POST /api/v1/users (users must run with a
      cheap PBKDF2_ITERATIONS) and logs each in (POST /api/v1/auth/token):
      the tokens are the ones users issues. Writes the tokens, one per line,
      to --tokens and the user ids, one per line, to --ids.
  orders.py import --redis-port P --count N --tokens FILE --ids FILE [--deadline S]
      the quick way to many users: XADDs N user.register commands (the import
      path of DESIGN.md §8: no password travels, so these users exist for
      other services but cannot log in), waits until users has published a
      user.registered for every one of them, and signs for each a user token
      locally with $JWT_SECRET carrying the claims users puts in its own
      (sub = the user id, iat, exp; HS256), which orders accepts exactly as
      one users issued. Same output files as seed.
  orders.py warm --port P --tokens FILE [--threads T]
      POSTs one order per token to orders (so that orders' user cache holds
      every user); fails unless each is answered 202.
  orders.py ids-lua --ids FILE --out FILE
      writes the ids as a Lua table for bench.d/users_get.lua.

Standard library plus python3-redis (import only). Talks to 127.0.0.1 only.
"""
import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import sys
import threading
import time

ORDER_BODY = json.dumps({"items": [{"sku": "SKU-1", "qty": 1}]})


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signer(secret):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    key = secret.encode()

    def sign(claims):
        body = b64url(json.dumps(claims, separators=(",", ":")).encode())
        sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64url(sig)}"

    return sign


def secret_or_die():
    secret = os.environ.get("JWT_SECRET", "")
    if len(secret) < 32:
        sys.exit("orders.py: JWT_SECRET must be set (32+ bytes)")
    return secret


def write_lines(path, lines):
    with open(path, "w") as f:
        for x in lines:
            f.write(x + "\n")


def read_lines(path):
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip()]


class Conn:
    """A keep-alive connection that reconnects once on a transport error."""

    def __init__(self, port):
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method, path, body=None, headers=None):
        for attempt in range(2):
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        self.c.close()


def run_threads(n_items, threads, work, deadline):
    """Runs work(conn_index, lo, hi, errors) over [0, n_items) split in
    `threads` slices; returns the error list."""
    errors = []
    per = (n_items + threads - 1) // threads
    ts = []
    for t in range(threads):
        lo, hi = t * per, min(n_items, (t + 1) * per)
        if lo >= hi:
            continue
        th = threading.Thread(target=work, args=(lo, hi, errors), daemon=True)
        th.start()
        ts.append(th)
    for th in ts:
        th.join(max(0.0, deadline - time.monotonic()) + 5)
    if any(th.is_alive() for th in ts):
        errors.append("deadline passed")
    return errors


def cmd_seed(args):
    ids, tokens = [None] * args.count, [None] * args.count
    tag = f"{os.getpid()}-{int(time.time())}"
    deadline = time.monotonic() + args.timeout
    t0 = time.monotonic()

    def work(lo, hi, errors):
        c = Conn(args.port)
        hdr = {"Content-Type": "application/json"}
        try:
            for i in range(lo, hi):
                if time.monotonic() > deadline or errors:
                    errors.append("deadline passed")
                    return
                email = f"order-bench-{tag}-{i}@example.com"
                st, data = c.request("POST", "/api/v1/users", json.dumps(
                    {"name": f"Order Bench {i}", "email": email,
                     "password": "bench-password-123"}), hdr)
                if st != 201:
                    errors.append(f"register {i}: HTTP {st} {data[:200]!r}")
                    return
                ids[i] = json.loads(data)["id"]
                st, data = c.request("POST", "/api/v1/auth/token", json.dumps(
                    {"email": email, "password": "bench-password-123"}), hdr)
                if st != 200:
                    errors.append(f"login {i}: HTTP {st} {data[:200]!r}")
                    return
                tokens[i] = json.loads(data)["access_token"]
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{exc!r}")
        finally:
            c.close()

    errors = run_threads(args.count, args.threads, work, deadline)
    if errors or None in ids or None in tokens:
        print(f"orders.py seed: failed: {errors[:3] or 'incomplete'}", file=sys.stderr)
        return 1
    write_lines(args.tokens, tokens)
    write_lines(args.ids, ids)
    print(f"seed: {args.count} users registered and logged in over HTTP in "
          f"{time.monotonic() - t0:.1f}s", file=sys.stderr)
    return 0


def cmd_import(args):
    try:
        import redis
    except ImportError:
        sys.exit("orders.py: python3-redis is not installed (scripts/install-deps installs it)")
    sign = signer(secret_or_die())
    r = redis.Redis(host="127.0.0.1", port=args.redis_port, socket_timeout=30,
                    decode_responses=True)
    tag = f"imp{os.getpid()}x{int(time.time())}"
    t0 = time.monotonic()
    deadline = t0 + args.deadline
    for lo in range(0, args.count, 1000):
        p = r.pipeline(transaction=False)
        for i in range(lo, min(args.count, lo + 1000)):
            data = json.dumps({"name": f"Imported {i}", "email": f"{tag}-{i}@example.com"},
                              separators=(",", ":"))
            p.xadd("users.commands", {"type": "user.register", "data": data})
        p.execute()
    queued = time.monotonic() - t0
    prefix = f"{tag}-"
    ids = {}
    cursor = "0-0"  # the whole stream: only events of this batch (by email) count
    while len(ids) < args.count:
        if time.monotonic() > deadline:
            print(f"orders.py import: only {len(ids)} of {args.count} users registered after "
                  f"{args.deadline}s", file=sys.stderr)
            return 1
        got = r.xread({"users.events": cursor}, count=10000, block=200)
        for _stream, entries in got or []:
            for eid, f in entries:
                cursor = eid
                if f.get("type") != "user.registered":
                    continue
                d = json.loads(f["data"])
                email = d.get("email", "")
                if email.startswith(prefix):
                    ids[int(email[len(prefix):].split("@")[0])] = d["user_id"]
    took = time.monotonic() - t0
    now = int(time.time())
    order = [ids[i] for i in range(args.count)]
    write_lines(args.ids, order)
    write_lines(args.tokens, [sign({"sub": uid, "iat": now, "exp": now + args.ttl})
                              for uid in order])
    dlq = r.xlen("users.commands.dlq")
    print(f"import: {args.count} user.register XADDed in {queued:.1f}s, all registered after "
          f"{took:.1f}s ({args.count / took:.0f}/s); users.commands.dlq {dlq}", file=sys.stderr)
    return 0


def cmd_warm(args):
    tokens = read_lines(args.tokens)
    deadline = time.monotonic() + args.timeout
    t0 = time.monotonic()

    def work(lo, hi, errors):
        c = Conn(args.port)
        try:
            for i in range(lo, hi):
                if time.monotonic() > deadline or errors:
                    errors.append("deadline passed")
                    return
                st, data = c.request("POST", "/api/v1/orders", ORDER_BODY, {
                    "Content-Type": "application/json", "Authorization": f"Bearer {tokens[i]}"})
                if st != 202:
                    errors.append(f"order {i}: HTTP {st} {data[:200]!r}")
                    return
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{exc!r}")
        finally:
            c.close()

    errors = run_threads(len(tokens), args.threads, work, deadline)
    if errors:
        print(f"orders.py warm: failed: {errors[:3]}", file=sys.stderr)
        return 1
    print(f"warm: {len(tokens)} orders, one per user, in {time.monotonic() - t0:.1f}s",
          file=sys.stderr)
    return 0


def cmd_ids_lua(args):
    with open(args.out, "w") as f:
        f.write("return {\n")
        for uid in read_lines(args.ids):
            f.write(f'"{uid}",\n')
        f.write("}\n")
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, default=200)
    s.add_argument("--threads", type=int, default=8)
    s.add_argument("--tokens", required=True)
    s.add_argument("--ids", required=True)
    s.add_argument("--timeout", type=float, default=120)
    i = sub.add_parser("import")
    i.add_argument("--redis-port", type=int, required=True)
    i.add_argument("--count", type=int, required=True)
    i.add_argument("--tokens", required=True)
    i.add_argument("--ids", required=True)
    i.add_argument("--deadline", type=float, default=120)
    i.add_argument("--ttl", type=int, default=3600)
    w = sub.add_parser("warm")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--tokens", required=True)
    w.add_argument("--threads", type=int, default=8)
    w.add_argument("--timeout", type=float, default=120)
    lua = sub.add_parser("ids-lua")
    lua.add_argument("--ids", required=True)
    lua.add_argument("--out", required=True)
    args = p.parse_args()
    return {"seed": cmd_seed, "import": cmd_import, "warm": cmd_warm,
            "ids-lua": cmd_ids_lua}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
