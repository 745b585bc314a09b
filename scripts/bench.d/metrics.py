#!/usr/bin/python3
"""Helpers for scripts/bench: read Prometheus text scraped from /metrics.

  metrics.py quantiles BEFORE AFTER NAME [--q 0.5 --q 0.99] [--label k=v ...]
      diffs the cumulative bucket counts of histogram NAME between two scrapes
      and prints, on one line,
        count=N mean_us=.. p50_us=.. p50_over=0|1 p99_us=.. p99_over=0|1
      A quantile is interpolated linearly within its bucket (lower bound of
      the first bucket: 0), as Prometheus' histogram_quantile does; one that
      falls in the +Inf bucket is reported as the largest finite bound with
      pXX_over=1 (meaning "more than"). With no observations: count=0 and
      the quantiles as "nan".
  metrics.py value FILE NAME [--label k=v ...] [--default X]
      prints the value of the sample NAME whose labels include the given ones
      (the sum when several match), or X (default 0) when none does.
  metrics.py codes BEFORE AFTER [--label k=v ...] [--ok 202]
      diffs http_requests_total (whose labels include the given ones) between
      two scrapes, by its code label, and prints, on one line,
        ok=N other=N statuses=CODE:N,..
      ok = answers with the --ok code, other = every other code, statuses =
      those other codes with their counts ("-" when none).

Standard library only.
"""
import argparse
import math
import re
import sys

LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse(path):
    """[(name, {labels}, value)] for every sample line of a scrape."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "{" in line:
                name, rest = line.split("{", 1)
                body, _, tail = rest.rpartition("}")
                labels = {}
                pos = 0
                while pos < len(body):
                    m = LABEL.match(body, pos)
                    if not m:
                        raise ValueError(f"{path}: cannot parse labels in {line!r}")
                    labels[m.group(1)] = m.group(2)
                    pos = m.end()
                value = tail.split()[0]
            else:
                parts = line.split()
                name, value = parts[0], parts[1]
                labels = {}
            out.append((name, labels, float(value)))
    return out


def matches(labels, want):
    return all(labels.get(k) == v for k, v in want.items())


def select(samples, name, want):
    return [(labels, v) for n, labels, v in samples if n == name and matches(labels, want)]


def buckets(samples, name, want):
    """{upper bound: cumulative count} of histogram name."""
    out = {}
    for labels, v in select(samples, name + "_bucket", want):
        le = labels.get("le")
        if le is None:
            continue
        bound = math.inf if le in ("+Inf", "Inf", "inf") else float(le)
        out[bound] = out.get(bound, 0.0) + v
    return out


def quantile(q, bounds, cum):
    """histogram_quantile over sorted bounds and cumulative counts: (value, over)."""
    total = cum[-1]
    rank = q * total
    for i, (upper, c) in enumerate(zip(bounds, cum)):
        if c >= rank and c > 0:
            lower = bounds[i - 1] if i > 0 else 0.0
            below = cum[i - 1] if i > 0 else 0.0
            if math.isinf(upper):
                return lower, 1
            if c == below:
                return upper, 0
            return lower + (upper - lower) * (rank - below) / (c - below), 0
    return math.nan, 0


def parse_labels(items):
    want = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"metrics.py: --label wants k=v, not {item!r}")
        want[k] = v
    return want


def cmd_quantiles(args):
    want = parse_labels(args.label)
    before, after = parse(args.before), parse(args.after)
    b0, b1 = buckets(before, args.name, want), buckets(after, args.name, want)
    if not b1:
        print(f"metrics.py: no histogram {args.name} in {args.after}", file=sys.stderr)
        return 1
    if b0 and set(b0) != set(b1):
        print(f"metrics.py: {args.name} changed its buckets between the scrapes", file=sys.stderr)
        return 1
    bounds = sorted(b1)
    if not math.isinf(bounds[-1]):
        print(f"metrics.py: {args.name} has no +Inf bucket", file=sys.stderr)
        return 1
    cum = [b1[x] - b0.get(x, 0.0) for x in bounds]
    if any(c < 0 for c in cum) or any(a > b for a, b in zip(cum, cum[1:])):
        print(f"metrics.py: {args.name} went backwards (did the service restart?)",
              file=sys.stderr)
        return 1
    total = cum[-1]

    def one(path, suffix):
        return sum(v for _, v in select(parse(path) if path else [], args.name + suffix, want))

    s = one(args.after, "_sum") - one(args.before, "_sum")
    fields = [f"count={int(total)}", f"mean_us={s / total * 1e6:.1f}" if total else "mean_us=nan"]
    for q in args.q or [0.5, 0.99]:
        tag = f"p{q * 100:g}".replace(".", "_")
        if total == 0:
            fields += [f"{tag}_us=nan", f"{tag}_over=0"]
            continue
        v, over = quantile(q, bounds, cum)
        fields += [f"{tag}_us={v * 1e6:.1f}", f"{tag}_over={over}"]
    print(" ".join(fields))
    return 0


def cmd_value(args):
    want = parse_labels(args.label)
    found = select(parse(args.file), args.name, want)
    if not found:
        print(args.default)
        return 0
    v = sum(x for _, x in found)
    print(int(v) if v == int(v) else v)
    return 0


def cmd_codes(args):
    want = parse_labels(args.label)

    def by_code(path):
        out = {}
        for labels, v in select(parse(path), "http_requests_total", want):
            code = labels.get("code", "?")
            out[code] = out.get(code, 0) + v
        return out

    before, after = by_code(args.before), by_code(args.after)
    delta = {c: int(after[c] - before.get(c, 0)) for c in after}
    ok = delta.pop(args.ok, 0)
    others = sorted((c, n) for c, n in delta.items() if n > 0)
    statuses = ",".join(f"{c}:{n}" for c, n in others) or "-"
    print(f"ok={ok} other={sum(n for _, n in others)} statuses={statuses}")
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantiles")
    q.add_argument("before")
    q.add_argument("after")
    q.add_argument("name")
    q.add_argument("--q", type=float, action="append")
    q.add_argument("--label", action="append")
    v = sub.add_parser("value")
    v.add_argument("file")
    v.add_argument("name")
    v.add_argument("--label", action="append")
    v.add_argument("--default", default="0")
    c = sub.add_parser("codes")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--label", action="append")
    c.add_argument("--ok", default="202")
    args = p.parse_args()
    return {"quantiles": cmd_quantiles, "value": cmd_value, "codes": cmd_codes}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
