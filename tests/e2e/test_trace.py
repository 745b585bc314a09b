"""W3C trace context (issue 18; ripple/trace.h): a request's traceparent is
kept by the service that takes it, written with each outbox row, copied by
the relay into each stream entry's `traceparent` field beside `trace`,
continued by every consumer into the events it emits, and its trace id is
in every log line of the work -- across the whole saga, in both
topologies."""

import json
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import (HOST, MODULE_NAMES, TOPOLOGIES, stable_port, unique_email, wait_until)

pytestmark = pytest.mark.fresh_redis

FAST = {"CONSUMER_BLOCK_MS": 200, "RECLAIM_IDLE_MS": 2000, "PBKDF2_ITERATIONS": 1000}
TP_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
STREAMS = ("orders.events", "inventory.commands", "inventory.events", "payments.commands",
           "payments.events")


@pytest.fixture(params=TOPOLOGIES)
def stack(request, service_factory, host_factory):
    ports = {n: stable_port() for n in MODULE_NAMES}
    per = {"orders": {"USERS_URL": f"http://{HOST}:{ports['users']}"}}
    if request.param == "monolith":
        views = host_factory(MODULE_NAMES, shared=FAST, per=per, ports=ports)
    else:
        views = {n: service_factory(n, PORT=ports[n], **FAST, **per.get(n, {}))
                 for n in MODULE_NAMES}
    for v in views.values():
        v.wait_ready()
    return views


def place(stack, headers=None):
    users = stack["users"]
    u = users.create_user(email=unique_email("trace"))
    token = users.login(u["email"])
    r = stack["orders"].post("/api/v1/orders", {"items": [{"sku": "SKU-1", "qty": 1}]},
                             token=token, headers=headers or {})
    assert r.status == 202, r
    oid = r.json()["id"]
    order = wait_until(lambda: (lambda o: o if o["status"] == "CONFIRMED" and len(
        o["timeline"]) >= 8 else None)(stack["orders"].get(f"/api/v1/orders/{oid}",
                                                            token=token).json()),
        20, what="the order confirmed and its stock committed")
    return oid, order


def entries_of(r, oid):
    out = []
    for stream in STREAMS:
        for entry_id, f in r.xrange(stream):
            if json.loads(f["data"]).get("order_id") == oid:
                out.append((stream, f))
    return out


def test_a_requests_trace_id_is_in_every_row_entry_and_line_it_caused(stack, r):
    tid, pid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    oid, order = place(stack, {"traceparent": f"00-{tid}-{pid}-01"})
    # the order keeps the trace it was placed in, as a span of its own
    m = TP_RE.match(order["traceparent"] or "")
    assert m and m.group(1) == tid and m.group(2) != pid, order["traceparent"]

    found = entries_of(r, oid)
    assert {s for s, _ in found} == set(STREAMS), found
    spans = set()
    for stream, f in found:
        assert f.get("trace") == oid, (stream, f)
        m = TP_RE.match(f.get("traceparent", ""))
        assert m and m.group(1) == tid, (stream, f)
        spans.add(m.group(2))
    assert pid not in spans and len(spans) >= 4, spans  # each service's work a span of its own

    for name in ("orders", "inventory", "payments"):
        db = sqlite3.connect(f"file:{stack[name].db_path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT traceparent FROM outbox WHERE trace = ?", (oid,)).fetchall()
        finally:
            db.close()
        assert rows, name
        assert all(TP_RE.match(tp or "") and tp[3:35] == tid for (tp,) in rows), (name, rows)

    # every log line about the order carries the trace id
    for name in ("orders", "inventory", "payments"):
        lines = [json.loads(ln) for ln in stack[name].log_lines() if ln.startswith("{")]
        about = [ln for ln in lines if ln.get("trace") == oid]
        assert about, name
        assert all(ln.get("trace_id") == tid for ln in about), (name, about)


def test_without_a_traceparent_a_new_trace_starts_and_is_carried(stack, r):
    oid, order = place(stack, {"traceparent": "not-a-traceparent"})
    m = TP_RE.match(order["traceparent"] or "")
    assert m, order
    tid = m.group(1)
    assert all(f.get("traceparent", "")[3:35] == tid for _, f in entries_of(r, oid))


def test_an_injected_entrys_traceparent_is_continued(stack, r):
    users = stack["users"]
    u = users.create_user(email=unique_email("inj"))
    tid = "0af7651916cd43dd8448eb211c80319c"
    r.xadd("orders.commands", {"type": "order.place", "traceparent": f"00-{tid}-b7ad6b7169203331-01",
                               "data": json.dumps({"user_id": u["id"],
                                                   "items": [{"sku": "SKU-2", "qty": 1}]})})

    def placed():
        for _, f in r.xrange("orders.events"):
            if f["type"] == "order.placed" and json.loads(f["data"])["user_id"] == u["id"]:
                return f
        return None
    f = wait_until(placed, 20, what="order.placed of the injected command")
    assert f["traceparent"][3:35] == tid, f
