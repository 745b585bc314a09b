#!/usr/bin/python3
"""Helpers for scripts/bench: seed users over HTTP, sign a service token.

  seed_users.py seed --port P --count N --ids-lua FILE [--threads T]
      registers N users through POST /api/v1/users on T keep-alive
      connections and writes their ids as a Lua table (`return {"id", ...}`).
  seed_users.py token [--ttl S]
      prints an HS256 service token (sub service:bench, role service) signed
      with $JWT_SECRET.

Standard library only. Targets 127.0.0.1.
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


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims, secret):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def seed_range(port, start, end, out, errors, deadline):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    tag = os.getpid()
    for i in range(start, end):
        if time.monotonic() > deadline:
            errors.append("deadline passed")
            return
        body = json.dumps({"name": f"Bench User {i}", "email": f"bench-{tag}-{i}@example.com",
                           "password": "bench-password-123"})
        for attempt in range(3):
            try:
                conn.request("POST", "/api/v1/users", body=body,
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                if attempt == 2:
                    errors.append(f"user {i}: {exc!r}")
                    return
        if r.status != 201:
            errors.append(f"user {i}: HTTP {r.status} {data[:200]!r}")
            return
        out[i] = json.loads(data)["id"]
    conn.close()


def cmd_seed(args):
    out = [None] * args.count
    errors = []
    deadline = time.monotonic() + args.timeout
    per = (args.count + args.threads - 1) // args.threads
    threads = []
    t0 = time.monotonic()
    for t in range(args.threads):
        lo, hi = t * per, min(args.count, (t + 1) * per)
        if lo >= hi:
            continue
        th = threading.Thread(target=seed_range, args=(args.port, lo, hi, out, errors, deadline),
                              daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()) + 5)
    if errors or any(x is None for x in out):
        print(f"seed: failed: {errors[:3] or 'timed out'}", file=sys.stderr)
        return 1
    with open(args.ids_lua, "w") as f:
        f.write("return {\n")
        for uid in out:
            f.write(f'"{uid}",\n')
        f.write("}\n")
    print(f"seed: {args.count} users in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return 0


def cmd_token(args):
    secret = os.environ.get("JWT_SECRET", "")
    if len(secret) < 32:
        print("token: JWT_SECRET must be set (32+ bytes)", file=sys.stderr)
        return 1
    now = int(time.time())
    print(sign({"sub": "service:bench", "role": "service", "iat": now, "exp": now + args.ttl},
               secret))
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, default=10000)
    s.add_argument("--threads", type=int, default=8)
    s.add_argument("--ids-lua", required=True)
    s.add_argument("--timeout", type=float, default=300)
    t = sub.add_parser("token")
    t.add_argument("--ttl", type=int, default=3600)
    args = p.parse_args()
    return cmd_seed(args) if args.cmd == "seed" else cmd_token(args)


if __name__ == "__main__":
    sys.exit(main())
