"""show.py -- JSON formatting for scripts/demo (standard library only).

    show.py get FILE EXPR          evaluates EXPR with j = the JSON in FILE and
                                   prints the result (strings bare, None as
                                   "null", lists and objects as compact JSON);
                                   prints nothing and exits 1 if FILE is not
                                   JSON or EXPR fails
    show.py catalog FILE           the product list as a table
    show.py product FILE           "available 3, reserved 0, sold 0"
    show.py order FILE             "order 1a2b3c4d  CONFIRMED  amount 17.99"
    show.py final FILE             exits 0 if the order's status is final
    show.py timeline FILE INDENT   the order's saga steps, compact, wrapped
    show.py new-order FILE KNOWN   prints the id of the first order in a
                                   GET /orders answer that is not in KNOWN
                                   (space-separated ids)
    show.py dlq FILE DATA          the newest dead letter (redis-cli --json
                                   XRANGE answer) whose data field is DATA,
                                   as "error\\tgroup\\tdeliveries"
    show.py pending FILE           the entries of a redis-cli --json XPENDING
                                   ... - + N answer, one "id consumer idle
                                   deliveries" a line
    show.py count-events FILE TYPE ORDER_ID
                                   how many entries of a redis-cli --json
                                   XRANGE answer have type TYPE and
                                   data.order_id ORDER_ID
    show.py money CENTS            12.34
"""

import json
import sys
import textwrap

FINAL = ("CONFIRMED", "REJECTED", "CANCELLED")


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def money(cents):
    if not isinstance(cents, int):
        return "-"
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def render(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def fields(flat):
    """[f1, v1, f2, v2, ...] -> {f1: v1, ...} (the first of a repeated field)."""
    out = {}
    for i in range(0, len(flat) - 1, 2):
        out.setdefault(flat[i], flat[i + 1])
    return out


def cmd_get(path, expr):
    j = load(path)
    print(render(eval(expr, {"j": j, "len": len, "sum": sum, "money": money})))  # noqa: S307


def cmd_catalog(path):
    items = load(path)["items"]
    print(f"{'sku':<8} {'name':<22} {'price':>8} {'available':>9} {'reserved':>8} {'sold':>5}")
    for p in items:
        print(f"{p['sku']:<8} {p['name']:<22} {money(p['price_cents']):>8} "
              f"{p['available']:>9} {p['reserved']:>8} {p['sold']:>5}")


def cmd_product(path):
    p = load(path)
    print(f"available {p['available']}, reserved {p['reserved']}, sold {p['sold']}")


def cmd_order(path):
    o = load(path)
    line = f"order {o['id']}  {o['status']}"
    if o.get("amount_cents") is not None:
        line += f"  amount {money(o['amount_cents'])}"
    if o.get("reason"):
        line += f"  reason {o['reason']}"
    print(line)


def cmd_final(path):
    sys.exit(0 if load(path).get("status") in FINAL else 1)


def cmd_timeline(path, indent):
    o = load(path)
    # A no-break space inside each "step (type)" pair: textwrap only breaks
    # at ASCII white space, so a pair is never split across lines.
    steps = [f"{t['step']}\u00a0({t['event_type']})" for t in o.get("timeline") or []]
    pad = " " * int(indent)
    text = " → ".join(steps) if steps else "(no steps)"
    print(textwrap.fill(text, width=100, initial_indent=pad, subsequent_indent=pad + "  ",
                        break_on_hyphens=False))


def cmd_new_order(path, known):
    known = set(known.split())
    for o in load(path).get("items") or []:
        if o["id"] not in known:
            print(o["id"])
            return
    sys.exit(1)


def cmd_dlq(path, data):
    entries = load(path) or []
    for _id, flat in reversed(entries):
        f = fields(flat)
        if f.get("data") == data:
            print(f"{f.get('error', '')}\t{f.get('group', '')}\t{f.get('deliveries', '')}")
            return
    sys.exit(1)


def cmd_pending(path):
    for entry_id, consumer, idle, deliveries in load(path) or []:
        print(entry_id, consumer, idle, deliveries)


def cmd_count_events(path, etype, order_id):
    n = 0
    for _id, flat in load(path) or []:
        f = fields(flat)
        if f.get("type") != etype:
            continue
        try:
            if json.loads(f.get("data", "")).get("order_id") == order_id:
                n += 1
        except (ValueError, AttributeError):
            pass
    print(n)


def main(argv):
    commands = {
        "get": cmd_get, "catalog": cmd_catalog, "product": cmd_product, "order": cmd_order,
        "final": cmd_final, "timeline": cmd_timeline, "new-order": cmd_new_order,
        "dlq": cmd_dlq, "pending": cmd_pending, "count-events": cmd_count_events,
        "money": lambda c: print(money(int(c))),
    }
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(__doc__)
    try:
        commands[argv[1]](*argv[2:])
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001 -- a missing or odd answer: the caller reports it
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv)
