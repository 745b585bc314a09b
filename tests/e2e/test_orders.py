"""orders service with a real users service and redis-server, black box:
DESIGN.md §4 (http_client: timeout, deadline, retries, breaker, cache), §5
(envelope), §6 (asynchronous handlers, never dead-lettering a command whose
dependency is down) and §8 (orders: POST/GET/list, order.place, the user
check over HTTP).

Every test gets its own redis-server (the session `redis_server` of
conftest.py is overridden at function scope below, as in test_streams.py),
so orders.commands, its group and its pending list are the test's own.
Each test starts users, then orders with USERS_URL pointing at it and small
http_client settings, so failures are quick and bounded:

  HTTP_CLIENT_TIMEOUT_MS 300, ATTEMPTS 3, DEADLINE_MS 1000,
  BREAKER_FAILURES 5 (default), BREAKER_COOLDOWN_MS 500.

"Users down" is SIGTERM (connections refused); "users slow" is SIGSTOP (the
kernel still accepts connections, nobody answers) with SIGCONT in a finally.
"Users back" is a new users process on the same port with the same database
(services here listen on ports below the kernel's ephemeral range, and
start_own() makes sure the process answering is the one the test started:
see there why).

Synchronisation is always a deadline poll (wait_until). Wall-clock bounds are
only the ones the contract names, kept generous: a 503 within the client's
deadline (+ 1.5 s slack), and GETs answered within 0.5 s while a user check
hangs (the loop never waits for users).
"""

import json
import re
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from conftest import (HOST, REPO, TIME_SLACK, TOPOLOGIES, assert_error, is_uuid, raw_request,
                      service_token, stable_port, unique_email, user_token, wait_until)

ORDERS_CMDS = "orders.commands"
ORDERS_EVENTS = "orders.events"
ORDERS_DLQ = "orders.commands.dlq"
INV_CMDS = "inventory.commands"
GROUP = "orders"

TIMEOUT_MS = 300
DEADLINE_MS = 1000
COOLDOWN_MS = 500
CLIENT_ENV = {
    "HTTP_CLIENT_TIMEOUT_MS": TIMEOUT_MS,
    "HTTP_CLIENT_ATTEMPTS": 3,
    "HTTP_CLIENT_DEADLINE_MS": DEADLINE_MS,
    "HTTP_CLIENT_BREAKER_COOLDOWN_MS": COOLDOWN_MS,
    "CONSUMER_BLOCK_MS": 200,
}
SLACK_S = 1.5 * TIME_SLACK     # on top of a deadline, for a loaded CI machine
FAST_GET_S = 0.5 * TIME_SLACK  # "answered quickly": the loop is not waiting for users
RECOVER_S = 20     # users back -> orders works again (breaker cooldown, held-entry backoff)

ITEMS = [{"sku": "SKU-1", "qty": 2}, {"sku": "SKU-2", "qty": 1}]
ENVELOPE_KEYS = {"type", "data", "id", "trace", "traceparent", "source", "ts", "v"}
ORDER_KEYS = {"id", "user_id", "status", "items", "amount_cents", "reason", "created_at",
              "updated_at", "timeline", "traceparent"}
STEP_KEYS = {"step", "event_type", "event_id", "stream", "entry_id", "at"}
ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# ---------------------------------------------------------------------------
# Fixtures: a fresh redis-server per test (redis_server, r); users + orders
# ---------------------------------------------------------------------------

pytestmark = pytest.mark.fresh_redis


def start_own(factory, name, **env):
    """factory(name, **env), made sure to be OUR process on its port.

    conftest's launch takes any /healthz 200 on the port it picked as the
    service it started. When another process on the host (a parallel test
    run, scripts/bench) takes that port first, a stranger answers and the
    test talks to the wrong service (seen: POST /api/v1/orders -> an
    unrouted 404 while the bench ran). So wait until our process logs that
    it listens on its port; if it exited instead (the port was taken), start
    it again on another port. Without a PORT, the port is a stable_port(), so
    the service can come back on it later. With a fixed PORT there is no
    other port: fail clearly."""
    for _ in range(3):
        if "PORT" in env:
            svc = factory(name, **env)
        else:
            try:
                svc = factory(name, PORT=stable_port(), **env)
            except pytest.fail.Exception:
                continue  # taken between our check and its bind: another port
        line = f"listening on http://{HOST}:{svc.port}"

        def state():
            if line in svc.log_text():
                return "ours"
            return None if svc.alive() else "exited"

        if wait_until(state, 20, what=f"{name} to log {line!r}") == "ours":
            svc.wait_ready()  # Redis connects after /healthz first answers
            return svc
        if "PORT" in env:
            pytest.fail(f"{name} could not listen on port {svc.port} again: "
                        f"{svc.log_text()[-1000:]}")
    pytest.fail(f"{name}: another process took its port three times")


class Stack:
    """users + orders wired together, as two processes (split) or as the two
    modules of one host (monolith, DESIGN.md §11: orders still asks users
    over HTTP, on loopback); restart_users() brings users back on the same
    port with the same database (split only)."""

    def __init__(self, factory, orders_env, host_factory=None):
        self.factory = factory
        env = dict(CLIENT_ENV)
        env.update(orders_env)
        if host_factory is not None:
            port = stable_port()
            env["USERS_URL"] = f"http://{HOST}:{port}"
            views = host_factory(["users", "orders"], per={"orders": env},
                                 ports={"users": port})
            self.users, self.orders = views["users"], views["orders"]
            self.users.wait_ready()
            self.orders.wait_ready()
            return
        self.users = start_own(factory, "users")
        env["USERS_URL"] = self.users.base
        self.orders = start_own(factory, "orders", **env)

    def stop_users(self):
        rc = self.users.stop()
        assert rc == 0, f"users exited {rc} after SIGTERM"

    def restart_users(self):
        old = self.users
        assert not old.alive()
        self.users = start_own(self.factory, "users", PORT=old.port, DB_PATH=old.db_path)
        return self.users

    def new_user(self, prefix="buyer"):
        """(user, token) of a new registered user."""
        email = unique_email(prefix)
        u = self.users.create_user(name=prefix.title(), email=email)
        return u, self.users.login(email)


@pytest.fixture(params=TOPOLOGIES)
def stack(request, service_factory, host_factory):
    """users + orders, split and as one monolith: each test using it runs in
    both topologies, unless it stops users alone (split only)."""
    return Stack(service_factory, {}, host_factory if request.param == "monolith" else None)


# users stopped or frozen while orders runs: only in the split topology
split_only = pytest.mark.parametrize("stack", ["split"], indirect=True)


@pytest.fixture
def stack_factory(service_factory):
    return lambda **orders_env: Stack(service_factory, orders_env)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(svc, name):
    """[(labels dict, value)] of metric `name`."""
    out = []
    for line in svc.metrics().splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if m and m.group(1) == name:
            out.append((dict(LABEL_RE.findall(m.group(2) or "")), float(m.group(3))))
    return out


def metric(svc, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`; None if none."""
    found = [v for have, v in samples(svc, name)
             if all(have.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


def client_count(orders, result):
    return metric(orders, "http_client_requests_total", target="users", result=result) or 0


def circuit(orders):
    return metric(orders, "circuit_state", target="users")


def place(orders, token, items=None, **extra):
    body = {"items": ITEMS if items is None else items}
    body.update(extra)
    return orders.post("/api/v1/orders", body, token=token)


def place_ok(orders, token, items=None, **extra):
    resp = place(orders, token, items, **extra)
    assert resp.status == 202, resp
    return resp.json()


def connections_to(port):
    """Established TCP connections (client side) to 127.0.0.1:port, from
    /proc/net/tcp: how many requests orders has open to users."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            rem, state = parts[2], parts[3]
            if state == "01" and rem == f"0100007F:{port:04X}":
                n += 1
    return n


def timed(fn, *a, **kw):
    t0 = time.monotonic()
    out = fn(*a, **kw)
    return out, time.monotonic() - t0


def entries(r, stream, trace=None, type_=None):
    """[(entry id, fields with data parsed)] of a stream, filtered."""
    out = []
    for eid, f in r.xrange(stream, "-", "+"):
        if trace is not None and f.get("trace") != trace:
            continue
        if type_ is not None and f.get("type") != type_:
            continue
        f = dict(f)
        try:
            f["data"] = json.loads(f.get("data", "null"))
        except ValueError:
            pass
        out.append((eid, f))
    return out


def pending(r):
    try:
        return r.xpending(ORDERS_CMDS, GROUP)["pending"]
    except redis.ResponseError:  # no group yet
        return 0


def orders_of(orders, user_id):
    """Every order of user_id (service token), newest first."""
    resp = orders.get(f"/api/v1/orders?user_id={user_id}&limit=100", token=service_token())
    assert resp.status == 200, resp
    return resp.json()["items"]


def orders_of_secret(orders, user_id, secret):
    """orders_of for a service that signs with another JWT_SECRET."""
    resp = orders.get(f"/api/v1/orders?user_id={user_id}", token=service_token(secret=secret))
    assert resp.status == 200, resp
    return resp.json()["items"]


def get_order(orders, order_id, token=None):
    return orders.get(f"/api/v1/orders/{order_id}", token=token or service_token())


def assert_healthy(orders, order_id=None, token=None):
    for path in ("/healthz", "/readyz"):
        resp = orders.get(path, timeout=5)
        assert resp.status == 200, (path, resp)
    if order_id is not None:
        resp = get_order(orders, order_id, token)
        assert resp.status == 200, resp


def assert_unavailable(resp):
    err = assert_error(resp, 503, "unavailable")
    assert "users" in err["message"], err
    assert resp.headers.get("retry-after", "").strip().isdigit(), resp.headers
    return err


def check_envelope(f, trace, type_, before, after):
    assert set(f) == ENVELOPE_KEYS, sorted(f)
    assert f["type"] == type_, f
    assert f["trace"] == trace, f
    assert f["source"] == "orders", f
    assert f["v"] == "1", f
    assert is_uuid(f["id"]) and f["id"] != trace, f
    assert re.fullmatch(r"\d+", f["ts"]), f
    assert before - 2 <= int(f["ts"]) / 1000.0 <= after + 2, (before, f["ts"], after)


# ---------------------------------------------------------------------------
# POST /api/v1/orders: the happy path, its events and its timeline
# ---------------------------------------------------------------------------

def test_order_for_real_user_202_pending_with_events(stack, r):
    u, tok = stack.new_user()
    before = time.time()
    resp = place(stack.orders, tok)
    after = time.time()
    assert resp.status == 202, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    o = resp.json()
    assert set(o) == ORDER_KEYS, sorted(o)
    assert is_uuid(o["id"]), o
    assert resp.headers.get("location") == f"/api/v1/orders/{o['id']}", resp.headers
    assert o["user_id"] == u["id"], o
    assert o["status"] == "PENDING", o
    assert o["items"] == ITEMS, o
    assert o["amount_cents"] is None and o["reason"] is None, o
    assert ISO_RE.fullmatch(o["created_at"]) and o["updated_at"] == o["created_at"], o
    assert [s["step"] for s in o["timeline"]] == ["placed", "reserve_stock"], o["timeline"]

    # order.placed in orders.events and stock.reserve in inventory.commands,
    # both traced with the order id
    placed = wait_until(lambda: entries(r, ORDERS_EVENTS, o["id"]), 10, what="order.placed")
    reserve = wait_until(lambda: entries(r, INV_CMDS, o["id"]), 10, what="stock.reserve")
    assert len(placed) == 1 and len(reserve) == 1, (placed, reserve)
    placed_id, pf = placed[0]
    reserve_id, rf = reserve[0]
    check_envelope(pf, o["id"], "order.placed", before, after)
    check_envelope(rf, o["id"], "stock.reserve", before, after)
    assert pf["data"] == {"order_id": o["id"], "user_id": u["id"], "items": ITEMS}, pf
    assert rf["data"] == {"order_id": o["id"], "items": ITEMS}, rf
    assert pf["id"] != rf["id"]

    # the timeline names those events, and their entry ids once published
    def timeline_published():
        g = get_order(stack.orders, o["id"], tok)
        assert g.status == 200, g
        tl = g.json()["timeline"]
        return tl if all(s["entry_id"] for s in tl) else None

    tl = wait_until(timeline_published, 10, what="timeline entry ids")
    # the 202 is built from what was written, not read back: it says what a
    # GET of the same moment says (but the entry ids, not yet known then)
    g = get_order(stack.orders, o["id"], tok).json()
    for k in ("id", "user_id", "items", "created_at", "traceparent"):
        assert o[k] == g[k], (k, o, g)
    assert [dict(s, entry_id=None) for s in g["timeline"][:2]] == o["timeline"], (o, g)
    for s in tl:
        assert set(s) == STEP_KEYS, s
        assert ISO_RE.fullmatch(s["at"]), s
    assert [(s["step"], s["event_type"], s["event_id"], s["stream"], s["entry_id"])
            for s in tl] == [
        ("placed", "order.placed", pf["id"], ORDERS_EVENTS, placed_id),
        ("reserve_stock", "stock.reserve", rf["id"], INV_CMDS, reserve_id),
    ], tl
    # the user check went over HTTP to users and succeeded
    assert client_count(stack.orders, "2xx") >= 1


def test_the_largest_order_is_answered_whole_as_get_shows_it(stack):
    """The 202 of the largest valid order (100 items of a 64-byte SKU) is
    written on orders' stack (ORDERS_CREATED_MAX): whole, valid JSON, and
    what a GET says but the entry ids not yet known."""
    _, tok = stack.new_user()
    many = [{"sku": f"{i:03d}-" + "x" * 60, "qty": 1000000 - i} for i in range(100)]
    resp = place(stack.orders, tok, many)
    assert resp.status == 202, resp
    o = resp.json()
    assert o["items"] == many and set(o) == ORDER_KEYS, o
    g = get_order(stack.orders, o["id"], tok).json()
    for k in ("id", "user_id", "items", "created_at", "traceparent"):
        assert o[k] == g[k], k
    assert [dict(s, entry_id=None) for s in g["timeline"][:2]] == o["timeline"], (o, g)


def test_order_items_at_the_limits_accepted(stack):
    _, tok = stack.new_user()
    many = [{"sku": f"SKU-{i}", "qty": 1} for i in range(100)]
    o = place_ok(stack.orders, tok, many)
    assert o["items"] == many and o["status"] == "PENDING"
    long_sku = "a-Z_0.9" + "x" * 57  # 64 characters, every allowed kind
    o = place_ok(stack.orders, tok, [{"sku": long_sku, "qty": 1000000}])  # STREAMS_MAX_QTY
    assert o["items"] == [{"sku": long_sku, "qty": 1000000}]


def test_service_token_orders_for_a_named_user(stack):
    u, tok = stack.new_user()
    o = place_ok(stack.orders, service_token(), user_id=u["id"].upper())
    assert o["user_id"] == u["id"], o
    assert get_order(stack.orders, o["id"], tok).status == 200
    resp = place(stack.orders, service_token())
    err = assert_error(resp, 422, "invalid")
    assert set(err["fields"]) == {"user_id"}, err


def test_unknown_user_422(stack, r):
    ghost = str(uuid.uuid4())
    resp = place(stack.orders, user_token(ghost))
    err = assert_error(resp, 422, "invalid")
    assert err.get("fields") == {"user_id": "no such user"}, err
    resp = place(stack.orders, service_token(), user_id=ghost)
    err = assert_error(resp, 422, "invalid")
    assert set(err["fields"]) == {"user_id"}, err
    assert orders_of(stack.orders, ghost) == []
    assert client_count(stack.orders, "4xx") + client_count(stack.orders, "cache_hit") >= 2
    assert r.xlen(INV_CMDS) == 0 and r.xlen(ORDERS_EVENTS) == 0


# ---------------------------------------------------------------------------
# users down, users slow, users back
# ---------------------------------------------------------------------------

@split_only
def test_users_down_503_within_deadline_then_recovers(stack):
    a, tok_a = stack.new_user("cached")
    b, tok_b = stack.new_user("fresh")
    first = place_ok(stack.orders, tok_a)  # a's check is now cached
    assert circuit(stack.orders) == 0

    stack.stop_users()
    # b was never checked: no answer to fall back on -> 503 within the deadline
    for _ in range(3):  # also trips the breaker (5 consecutive failures)
        resp, took = timed(place, stack.orders, tok_b)
        assert_unavailable(resp)
        assert took < DEADLINE_MS / 1000 + SLACK_S, f"503 took {took:.2f}s"
    assert client_count(stack.orders, "connect_error") >= 1
    assert circuit(stack.orders) in (1, 2), "breaker still closed after failures"
    # breaker open: still 503, still within the deadline
    resp, took = timed(place, stack.orders, tok_b)
    assert_unavailable(resp)
    assert took < DEADLINE_MS / 1000 + SLACK_S, f"503 took {took:.2f}s"
    assert orders_of(stack.orders, b["id"]) == []

    # orders itself stays healthy: health, readiness, reads
    assert_healthy(stack.orders, first["id"], tok_a)
    assert get_order(stack.orders, first["id"]).status == 200
    listed = stack.orders.get("/api/v1/orders", token=tok_a)
    assert listed.status == 200 and [o["id"] for o in listed.json()["items"]] == [first["id"]]

    # users back, same port and database: b can order again once the
    # breaker's cooldown lets a probe through
    stack.restart_users()

    def ordered():
        resp = place(stack.orders, tok_b)
        if resp.status == 503:
            return None
        assert resp.status == 202, resp
        return resp.json()

    o = wait_until(ordered, RECOVER_S, interval=0.1, what="an order after users came back")
    assert o["user_id"] == b["id"] and o["status"] == "PENDING"
    assert circuit(stack.orders) == 0
    assert len(orders_of(stack.orders, b["id"])) == 1, "a 503 left an order behind"


@split_only
def test_cached_user_orders_while_users_down(stack):
    a, tok = stack.new_user()
    place_ok(stack.orders, tok)
    hits = client_count(stack.orders, "cache_hit")
    stack.stop_users()
    o, took = timed(place_ok, stack.orders, tok)
    assert o["user_id"] == a["id"] and o["status"] == "PENDING", o
    assert client_count(stack.orders, "cache_hit") == hits + 1, "not answered from the cache"
    assert took < DEADLINE_MS / 1000 + SLACK_S
    assert len(orders_of(stack.orders, a["id"])) == 2


def test_users_slow_loop_keeps_serving(stack_factory):
    """users SIGSTOPped: orders' user check hangs until its per-attempt
    timeout, and meanwhile orders answers GETs at once."""
    st = stack_factory(HTTP_CLIENT_TIMEOUT_MS=3000, HTTP_CLIENT_DEADLINE_MS=6000)
    a, tok_a = st.new_user("owner")
    _, tok_b = st.new_user("waiting")
    existing = place_ok(st.orders, tok_a)
    result = {}

    def post():
        result["resp"], result["took"] = timed(place, st.orders, tok_b)

    t = threading.Thread(target=post, daemon=True)
    st.users.send_signal(signal.SIGSTOP)
    try:
        t.start()
        slowest = 0.0
        measured = 0
        paths = ("/healthz", "/readyz", f"/api/v1/orders/{existing['id']}",
                 "/api/v1/orders?limit=5")
        for k in range(40):  # while the check hangs (its deadline ends the loop)
            resp, took = timed(st.orders.get, paths[k % 4], token=tok_a, timeout=5)
            assert resp.status == 200, (paths[k % 4], resp)
            if not t.is_alive():
                break
            slowest = max(slowest, took)
            measured += 1
        assert measured >= 4, ("the POST finished before four GETs did: nothing was measured "
                               f"while a check hung ({result})")
        assert slowest < FAST_GET_S, f"a GET took {slowest:.3f}s while a user check hung"
        t.join(6000 / 1000 + SLACK_S + 5)
        assert not t.is_alive(), "POST still unanswered long after the client's deadline"
        assert_unavailable(result["resp"])
        assert result["took"] < 6000 / 1000 + SLACK_S, result["took"]
        assert client_count(st.orders, "timeout") >= 1
    finally:
        st.users.send_signal(signal.SIGCONT)
    # users answers again: the waiting user can order
    wait_until(lambda: place(st.orders, tok_b).status == 202, RECOVER_S, interval=0.1,
               what="an order after SIGCONT")


# ---------------------------------------------------------------------------
# order.place over orders.commands
# ---------------------------------------------------------------------------

def xadd_place(r, user_id, items=None, **fields):
    f = {"type": "order.place",
         "data": json.dumps({"user_id": user_id, "items": ITEMS if items is None else items})}
    f.update(fields)
    return r.xadd(ORDERS_CMDS, f)


def test_order_place_over_stream_known_and_unknown_user(stack, r):
    u, tok = stack.new_user()
    ghost = str(uuid.uuid4())
    known_entry = xadd_place(r, u["id"])
    ghost_entry = xadd_place(r, ghost)
    event_id = str(uuid.uuid4())
    dup1 = xadd_place(r, u["id"], [{"sku": "SKU-9", "qty": 3}], id=event_id)
    dup2 = xadd_place(r, u["id"], [{"sku": "SKU-9", "qty": 3}], id=event_id)

    mine = wait_until(lambda: (lambda l: l if len(l) >= 2 else None)(orders_of(stack.orders,
                                                                               u["id"])),
                      10, what="two orders for the known user")
    rejected = wait_until(lambda: orders_of(stack.orders, ghost), 10, what="the rejected order")
    wait_until(lambda: pending(r) == 0 and
               r.xinfo_groups(ORDERS_CMDS)[0]["last-delivered-id"] == dup2, 10,
               what="every command read and acked")
    assert r.xlen(ORDERS_DLQ) == 0, entries(r, ORDERS_DLQ)
    assert len(orders_of(stack.orders, u["id"])) == 2, "a duplicate event id took effect twice"

    # known user: PENDING, as over HTTP, its first step the command itself
    by_items = {json.dumps(o["items"]): o for o in mine}
    placed = by_items[json.dumps(ITEMS)]
    g = get_order(stack.orders, placed["id"], tok)
    assert g.status == 200, g
    o = g.json()
    assert o["status"] == "PENDING" and o["user_id"] == u["id"] and o["reason"] is None, o
    assert [s["step"] for s in o["timeline"]] == ["requested", "placed", "reserve_stock"], o
    req = o["timeline"][0]
    assert (req["event_type"], req["event_id"], req["stream"], req["entry_id"]) == (
        "order.place", f"{ORDERS_CMDS}:{known_entry}", ORDERS_CMDS, known_entry), req
    wait_until(lambda: entries(r, ORDERS_EVENTS, o["id"], "order.placed") and
               entries(r, INV_CMDS, o["id"], "stock.reserve"), 10, what="placed + reserve")
    dup = by_items[json.dumps([{"sku": "SKU-9", "qty": 3}])]
    dup_req = get_order(stack.orders, dup["id"]).json()["timeline"][0]
    assert dup_req["event_id"] == event_id and dup_req["entry_id"] == dup1, dup_req

    # unknown user: REJECTED unknown_user with order.rejected, no stock.reserve
    assert len(rejected) == 1, rejected
    o = get_order(stack.orders, rejected[0]["id"]).json()
    assert o["status"] == "REJECTED" and o["reason"] == "unknown_user", o
    assert [s["step"] for s in o["timeline"]] == ["requested", "rejected"], o
    assert o["timeline"][0]["entry_id"] == ghost_entry
    ev = wait_until(lambda: entries(r, ORDERS_EVENTS, o["id"]), 10, what="order.rejected")
    assert [f["type"] for _, f in ev] == ["order.rejected"], ev
    assert ev[0][1]["data"] == {"order_id": o["id"], "user_id": ghost,
                                "reason": "unknown_user"}, ev
    assert entries(r, INV_CMDS, o["id"]) == []


def test_users_url_naming_another_service_is_503_not_unknown_user(service_factory, r):
    """USERS_URL that reaches a ripple service without the users route: its
    404 is the router's not_found, not users' user_not_found. Taken as "no
    such user" it would reject every order; it is 503 over HTTP, and an
    order.place waits in the stream instead of ending REJECTED."""
    users = start_own(service_factory, "users")
    u = users.create_user(name="Misrouted", email=unique_email("misrouted"))
    tok = users.login(u["email"])
    env = dict(CLIENT_ENV, USERS_URL=users.base + "/elsewhere")
    orders = start_own(service_factory, "orders", **env)
    err = assert_unavailable(place(orders, tok))
    assert "USERS_URL" in err["message"], err
    assert orders_of(orders, u["id"]) == []
    entry = xadd_place(r, u["id"])
    wait_until(lambda: orders.log_text().count("is USERS_URL the users service?") >= 2, 10,
               what="the stream's check logged as a misconfiguration")
    assert orders_of(orders, u["id"]) == [], "an order.place was decided on a route's 404"
    pend = r.xpending_range(ORDERS_CMDS, GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pend] == [entry], pend
    assert r.xlen(ORDERS_DLQ) == 0
    orders.expect_exit = 0


def test_order_place_while_users_down_waits_then_completes(stack_factory, r):
    # MAX_DELIVERIES=2: were a wait counted as a failed delivery, the entry
    # would be dead-lettered after the second try
    st = stack_factory(MAX_DELIVERIES=2, RECLAIM_IDLE_MS=1000)
    u, tok = st.new_user()  # never checked by orders: nothing cached
    st.stop_users()
    entry = xadd_place(r, u["id"])
    wait_until(lambda: pending(r) == 1, 10, what="the entry read and held")

    def retries():
        return metric(st.orders, "stream_events_total", stream=ORDERS_CMDS, result="retry") or 0

    # five retries (backoff 100 ms doubling): held for well over RECLAIM_IDLE_MS,
    # so a held entry that were not kept leased would be reclaimed meanwhile
    wait_until(lambda: retries() >= 5, 15, what="five retries of the held entry")
    assert pending(r) == 1, "the entry left the pending list while users was down"
    held = r.xpending_range(ORDERS_CMDS, GROUP, min="-", max="+", count=10)
    assert [(p["message_id"], p["times_delivered"]) for p in held] == [(entry, 1)], held
    assert r.xlen(ORDERS_DLQ) == 0, entries(r, ORDERS_DLQ)
    assert orders_of(st.orders, u["id"]) == []
    assert_healthy(st.orders)

    st.restart_users()
    got = wait_until(lambda: orders_of(st.orders, u["id"]), RECOVER_S, interval=0.05,
                     what="the held order.place to complete after users came back")
    assert len(got) == 1 and got[0]["status"] == "PENDING", got
    wait_until(lambda: pending(r) == 0, 10, what="the entry acked")
    assert r.xlen(ORDERS_DLQ) == 0, entries(r, ORDERS_DLQ)
    tl = get_order(st.orders, got[0]["id"], tok).json()["timeline"]
    assert tl[0]["step"] == "requested" and tl[0]["entry_id"] == entry, tl
    wait_until(lambda: entries(r, ORDERS_EVENTS, got[0]["id"], "order.placed"), 10,
               what="order.placed")


def test_client_gone_before_the_check_answers_gets_no_order(stack_factory):
    """api.c: a client that went away before the user check answered gets no
    order (it never saw one accepted, so its retry cannot make a duplicate)."""
    st = stack_factory(HTTP_CLIENT_TIMEOUT_MS=3000, HTTP_CLIENT_DEADLINE_MS=5000)
    u, tok = st.new_user()
    before = client_count(st.orders, "2xx")
    st.users.send_signal(signal.SIGSTOP)
    try:
        c = st.orders.raw()
        c.send(raw_request("POST", "/api/v1/orders", body={"items": ITEMS}, token=tok))
        wait_until(lambda: connections_to(st.users.port) >= 1, 10,
                   what="the user check in flight")
        c.reset()
        # orders has seen the reset when only our own /metrics request is open
        wait_until(lambda: metric(st.orders, "http_connections") == 1, 10,
                   what="orders to close the reset connection")
    finally:
        st.users.send_signal(signal.SIGCONT)
    # users answers the check (200) after the client has gone
    wait_until(lambda: client_count(st.orders, "2xx") > before, 10, what="the check answered")
    assert orders_of(st.orders, u["id"]) == [], "an order was made for a client that left"
    assert_healthy(st.orders)
    assert place_ok(st.orders, tok)["user_id"] == u["id"]  # and the user can order now


# ---------------------------------------------------------------------------
# Idempotency-Key
# ---------------------------------------------------------------------------

def place_keyed(orders, token, key, items=None, **extra):
    body = {"items": ITEMS if items is None else items}
    body.update(extra)
    return orders.post("/api/v1/orders", body, token=token, headers={"Idempotency-Key": key})


def test_idempotency_key_retry_gets_the_same_order(stack, r):
    u, tok = stack.new_user()
    key = f"retry-{uuid.uuid4()}"
    first = place_keyed(stack.orders, tok, key)
    assert first.status == 202, first
    assert first.headers.get("idempotent-replayed") is None, first.headers
    order = first.json()
    again = place_keyed(stack.orders, tok, key)
    assert again.status == 202, again
    assert again.headers.get("idempotent-replayed") == "true", again.headers
    assert again.headers.get("location") == f"/api/v1/orders/{order['id']}", again.headers
    assert again.json()["id"] == order["id"] and again.json()["items"] == order["items"]
    assert [o["id"] for o in orders_of(stack.orders, u["id"])] == [order["id"]]
    # the same items in the same canonical form, however the JSON spelled them
    spelled = place_keyed(stack.orders, tok, key, items=[{"qty": 2, "sku": "SKU-1"},
                                                         {"qty": 1, "sku": "SKU-2"}])
    assert spelled.status == 202 and spelled.json()["id"] == order["id"], spelled
    # other items under the same key: refused, naming the header; no order
    other = place_keyed(stack.orders, tok, key, items=[{"sku": "SKU-3", "qty": 1}])
    err = assert_error(other, 422)
    assert set(err["fields"]) == {"Idempotency-Key"}, err
    # a new key is a new order; no key at all is always a new order
    assert place_keyed(stack.orders, tok, f"other-{uuid.uuid4()}").json()["id"] != order["id"]
    assert place_ok(stack.orders, tok)["id"] != order["id"]
    assert len(orders_of(stack.orders, u["id"])) == 3
    # one order.placed for the keyed order, however often it was posted
    wait_until(lambda: entries(r, ORDERS_EVENTS, order["id"], "order.placed"), 10,
               what="order.placed")
    assert len(entries(r, ORDERS_EVENTS, order["id"], "order.placed")) == 1


def test_idempotency_key_is_per_user(stack):
    a, tok_a = stack.new_user("a")
    b, tok_b = stack.new_user("b")
    key = f"shared-{uuid.uuid4()}"
    oa = place_keyed(stack.orders, tok_a, key)
    ob = place_keyed(stack.orders, tok_b, key)
    assert oa.status == 202 and ob.status == 202, (oa, ob)
    assert oa.json()["id"] != ob.json()["id"]
    assert ob.headers.get("idempotent-replayed") is None
    assert oa.json()["user_id"] == a["id"] and ob.json()["user_id"] == b["id"]
    # a service token ordering for a user shares that user's keys
    sv = place_keyed(stack.orders, service_token(), key, user_id=a["id"])
    assert sv.status == 202 and sv.json()["id"] == oa.json()["id"], sv
    assert sv.headers.get("idempotent-replayed") == "true"


@pytest.mark.parametrize("key", ["", "x" * 256, "bad\tkey", "caf\u00e9"],
                         ids=["empty", "too_long", "control", "non_ascii"])
def test_idempotency_key_malformed_400(stack, key):
    u, tok = stack.new_user()
    with stack.orders.raw() as c:
        resp = c.request("POST", "/api/v1/orders", body={"items": ITEMS}, token=tok,
                         headers={"Idempotency-Key": key})
    err = assert_error(resp, 400)
    assert "Idempotency-Key" in err["message"], err
    assert orders_of(stack.orders, u["id"]) == []
    assert place_keyed(stack.orders, tok, "x" * 255).status == 202  # the longest allowed


@split_only
def test_idempotency_key_replay_needs_no_user_check(stack):
    u, tok = stack.new_user()
    key = f"down-{uuid.uuid4()}"
    order = place_keyed(stack.orders, tok, key).json()
    checks = client_count(stack.orders, "2xx") + client_count(stack.orders, "cache_hit")
    stack.stop_users()
    again = place_keyed(stack.orders, tok, key)
    assert again.status == 202 and again.json()["id"] == order["id"], again
    assert again.headers.get("idempotent-replayed") == "true"
    assert client_count(stack.orders, "2xx") + client_count(stack.orders, "cache_hit") == checks


def test_idempotency_key_racing_posts_make_one_order(stack_factory):
    """Two POSTs with one key, both past the replay lookup while users is
    stopped: the unique index lets one commit; the other answers with it."""
    st = stack_factory(HTTP_CLIENT_TIMEOUT_MS=5000, HTTP_CLIENT_DEADLINE_MS=8000)
    u, tok = st.new_user()
    key = f"race-{uuid.uuid4()}"
    st.users.send_signal(signal.SIGSTOP)
    conns = []
    try:
        for _ in range(2):
            c = st.orders.raw(timeout=30)
            c.send(raw_request("POST", "/api/v1/orders", body={"items": ITEMS}, token=tok,
                               headers={"Idempotency-Key": key}))
            conns.append(c)
        wait_until(lambda: connections_to(st.users.port) >= 1, 10,
                   what="the user check in flight")
        # both POSTs read (and waiting on their checks): answered /metrics
        # comes after them on the loop, and counts itself as the third
        wait_until(lambda: metric(st.orders, "http_connections") == 3, 10,
                   what="both POSTs with orders")
    finally:
        st.users.send_signal(signal.SIGCONT)
    try:
        answers = [c.read_response(timeout=30, method="POST") for c in conns]
    finally:
        for c in conns:
            c.close()
    assert [a.status for a in answers] == [202, 202], answers
    assert answers[0].json()["id"] == answers[1].json()["id"], answers
    replayed = sorted(a.headers.get("idempotent-replayed") or "" for a in answers)
    assert replayed == ["", "true"], replayed
    assert [o["id"] for o in orders_of(st.orders, u["id"])] == [answers[0].json()["id"]]
    assert "a concurrent POST with this Idempotency-Key won" in st.orders.log_text(), \
        "the second POST did not reach the insert: the race was not exercised"


def test_users_refusing_our_service_token_is_503(service_factory):
    """orders and users with different JWT_SECRETs: users answers 401 to the
    service token, which no retry fixes: 503 (not 422), and not a breaker
    failure."""
    other = "another-secret-for-orders-only-0123456789"
    users = start_own(service_factory, "users")
    env = dict(CLIENT_ENV, USERS_URL=users.base, JWT_SECRET=other)
    orders = start_own(service_factory, "orders", **env)
    u = users.create_user()
    tok = user_token(u["id"], secret=other)
    for _ in range(6):
        assert_unavailable(place(orders, tok))
    assert client_count(orders, "4xx") >= 6
    assert circuit(orders) == 0, "a 401 opened the breaker: users is up, we are misconfigured"
    assert orders_of_secret(orders, u["id"], other) == []
    assert "JWT_SECRET" in orders.log_text()


def test_sigterm_with_user_checks_in_flight(stack_factory, service_factory, r):
    """users hangs (SIGSTOP) while orders checks a user for a POST and for an
    order.place entry; SIGTERM to orders: it answers the POST, exits 0 within
    the client's deadline, and leaves the entry pending (not acked, not
    dead-lettered) for its next start, which completes it."""
    deadline_ms = 4000
    env = {"HTTP_CLIENT_TIMEOUT_MS": 2000, "HTTP_CLIENT_DEADLINE_MS": deadline_ms,
           "CONSUMER_NAME": "orders-e2e"}
    st = stack_factory(**env)
    _, tok = st.new_user("http")
    queued, _ = st.new_user("stream")
    result = {}

    def post():
        try:
            result["resp"] = place(st.orders, tok)
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    t = threading.Thread(target=post, daemon=True)
    st.users.send_signal(signal.SIGSTOP)
    try:
        entry = xadd_place(r, queued["id"])
        t.start()
        wait_until(lambda: pending(r) == 1, 10, what="the entry read")
        # both checks in flight: orders holds two connections to the stopped users
        wait_until(lambda: connections_to(st.users.port) >= 2, 10,
                   what="two connections from orders to users")
        stop_rc, took = timed(st.orders.stop)
        t.join(10)
        assert stop_rc == 0, f"orders exited {stop_rc}: {st.orders.log_text()[-1500:]}"
        assert took < deadline_ms / 1000 + SLACK_S, f"stop took {took:.2f}s"
        assert "error" not in result, f"the POST in hand got no answer: {result['error']!r}"
        assert_error(result["resp"], 503)
        assert pending(r) == 1, "the entry in check was acked at stop"
        assert r.xlen(ORDERS_DLQ) == 0, entries(r, ORDERS_DLQ)
    finally:
        st.users.send_signal(signal.SIGCONT)
    # the next start (same database, same consumer name) finishes the entry
    env.update(CLIENT_ENV, USERS_URL=st.users.base, DB_PATH=st.orders.db_path,
               HTTP_CLIENT_TIMEOUT_MS=2000, HTTP_CLIENT_DEADLINE_MS=deadline_ms)
    again = start_own(service_factory, "orders", **env)
    got = wait_until(lambda: orders_of(again, queued["id"]), RECOVER_S, interval=0.05,
                     what="the pending order.place completed after the restart")
    assert len(got) == 1 and got[0]["status"] == "PENDING", got
    wait_until(lambda: pending(r) == 0, 10, what="the entry acked")
    tl = get_order(again, got[0]["id"]).json()["timeline"]
    assert tl[0]["entry_id"] == entry, tl


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

OK = {"sku": "SKU-1", "qty": 1}
INVALID = [
    ({}, {"items"}),
    ({"items": None}, {"items"}),
    ({"items": "SKU-1"}, {"items"}),
    ({"items": {"sku": "SKU-1", "qty": 1}}, {"items"}),
    ({"items": []}, {"items"}),
    ({"items": [{"sku": f"S{i}", "qty": 1} for i in range(101)]}, {"items"}),
    ({"items": [1]}, {"items[0]"}),
    ({"items": [{"sku": "SKU-1"}]}, {"items[0].qty"}),
    ({"items": [{"qty": 1}]}, {"items[0].sku"}),
    ({"items": [{"sku": "SKU-1", "qty": 0}]}, {"items[0].qty"}),
    ({"items": [{"sku": "SKU-1", "qty": -1}]}, {"items[0].qty"}),
    ({"items": [{"sku": "SKU-1", "qty": 1000001}]}, {"items[0].qty"}),  # STREAMS_MAX_QTY + 1
    ({"items": [{"sku": "SKU-1", "qty": "2"}]}, {"items[0].qty"}),
    ({"items": [{"sku": "SKU-1", "qty": 1.5}]}, {"items[0].qty"}),
    ({"items": [{"sku": "SKU-1", "qty": True}]}, {"items[0].qty"}),
    ({"items": [{"sku": "SKU-1", "qty": None}]}, {"items[0].qty"}),
    ({"items": [{"sku": "", "qty": 1}]}, {"items[0].sku"}),
    ({"items": [{"sku": "has space", "qty": 1}]}, {"items[0].sku"}),
    ({"items": [{"sku": 7, "qty": 1}]}, {"items[0].sku"}),
    ({"items": [{"sku": "x" * 65, "qty": 1}]}, {"items[0].sku"}),
    ({"items": [OK, {"sku": "SKU-2", "qty": 1}, {"sku": "SKU-1", "qty": 5}]}, {"items[2].sku"}),
    ({"items": [{"sku": "SKU-1", "qty": 1, "color": "red"}]}, {"items[0].color"}),
    ({"items": [OK], "coupon": "FREE"}, {"coupon"}),
    ({"items": [OK, {"sku": "", "qty": 0}]}, {"items[1].sku", "items[1].qty"}),
    ({"items": [], "coupon": 1}, {"items", "coupon"}),
    ({"items": [OK], "user_id": "not-a-uuid"}, {"user_id"}),
    ({"items": [OK], "user_id": 42}, {"user_id"}),
    ({"items": [OK], "user_id": "OTHER"}, {"user_id"}),  # another user's id
]


@split_only
def test_validation_422_names_the_field(stack, r):
    u, tok = stack.new_user()
    other = str(uuid.uuid4())
    problems = []

    def check_all():
        for body, want in INVALID:
            if body.get("user_id") == "OTHER":
                body = dict(body, user_id=other)
            resp = stack.orders.post("/api/v1/orders", body, token=tok)
            try:
                err = assert_error(resp, 422, "invalid")
                fields = err.get("fields")
                assert isinstance(fields, dict) and set(fields) == want, fields
                assert all(isinstance(m, str) and m for m in fields.values()), fields
            except AssertionError as exc:
                problems.append(f"{json.dumps(body)[:120]}: {exc}")

    check_all()
    for raw in (b"[]", b"\"x\"", b"{bad json", b"", b'{"items": [], "items": []}'):
        resp = stack.orders.post("/api/v1/orders", raw_body=raw, token=tok)
        if resp.status != 400:
            problems.append(f"{raw!r}: {resp}")
    resp = stack.orders.post("/api/v1/orders", {"items": ITEMS})
    assert_error(resp, 401, "unauthorized")

    # the body is checked before the user: same answers with users down
    stack.stop_users()
    check_all()
    assert not problems, "\n".join(problems)
    assert orders_of(stack.orders, u["id"]) == []
    assert r.xlen(ORDERS_EVENTS) == 0 and r.xlen(INV_CMDS) == 0


# ---------------------------------------------------------------------------
# GET /api/v1/orders/{id} and the list
# ---------------------------------------------------------------------------

def test_get_order_permissions(stack):
    a, tok_a = stack.new_user("owner")
    _, tok_b = stack.new_user("other")
    o = place_ok(stack.orders, tok_a)
    path = f"/api/v1/orders/{o['id']}"

    resp = stack.orders.get(path, token=tok_a)
    assert resp.status == 200, resp
    got = resp.json()
    assert {k: got[k] for k in ORDER_KEYS - {"timeline"}} == \
        {k: o[k] for k in ORDER_KEYS - {"timeline"}}, (got, o)
    assert stack.orders.get(path.upper().replace("/API/V1/ORDERS/", "/api/v1/orders/"),
                            token=tok_a).status == 200, "ids are case-insensitive UUIDs"
    assert stack.orders.get(path, token=service_token()).status == 200
    assert_error(stack.orders.get(path, token=tok_b), 404, "not_found")
    assert_error(stack.orders.get(path), 401, "unauthorized")
    for bad in ("not-a-uuid", str(uuid.uuid4()), o["id"] + "0", "%00"):
        assert_error(stack.orders.get(f"/api/v1/orders/{bad}", token=tok_a), 404, "not_found")
        assert_error(stack.orders.get(f"/api/v1/orders/{bad}", token=service_token()), 404,
                     "not_found")
    # a token whose subject is neither a user id nor a service
    assert_error(stack.orders.get(path, token=user_token("someone")), 404, "not_found")


def test_list_pagination(stack):
    a, tok_a = stack.new_user("pager")
    b, tok_b = stack.new_user("neighbour")
    made = [place_ok(stack.orders, tok_a, [{"sku": f"SKU-{i}", "qty": i + 1}])["id"]
            for i in range(5)]
    theirs = place_ok(stack.orders, tok_b)["id"]

    pages, seen, cursor = [], [], None
    for _ in range(10):
        q = "/api/v1/orders?limit=2" + (f"&after={cursor}" if cursor else "")
        resp = stack.orders.get(q, token=tok_a)
        assert resp.status == 200, resp
        page = resp.json()
        assert set(page) == {"items", "next"}, page
        assert all("timeline" not in o for o in page["items"]), page
        assert all(o["user_id"] == a["id"] for o in page["items"]), page
        pages.append(len(page["items"]))
        seen += [o["id"] for o in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor, page
    assert pages == [2, 2, 1], pages
    assert seen == made[::-1], "not newest first, or duplicates/gaps across pages"

    resp = stack.orders.get("/api/v1/orders", token=tok_a)
    assert [o["id"] for o in resp.json()["items"]] == made[::-1]
    assert resp.json()["next"] is None
    resp = stack.orders.get("/api/v1/orders?limit=5", token=tok_a)
    assert len(resp.json()["items"]) == 5 and resp.json()["next"] is None, resp.json()
    resp = stack.orders.get("/api/v1/orders", token=tok_b)
    assert [o["id"] for o in resp.json()["items"]] == [theirs]

    # service token: everyone's, or one user's
    resp = stack.orders.get("/api/v1/orders?limit=100", token=service_token())
    assert [o["id"] for o in resp.json()["items"]] == [theirs] + made[::-1]
    assert [o["id"] for o in orders_of(stack.orders, a["id"])] == made[::-1]
    assert_error(stack.orders.get(f"/api/v1/orders?user_id={b['id']}", token=tok_a), 403,
                 "forbidden")
    assert_error(stack.orders.get("/api/v1/orders"), 401, "unauthorized")

    for q, field in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=abc", "limit"),
                     ("limit=-1", "limit"), ("limit=", "limit"), ("limit=2.5", "limit"),
                     ("after=xyz", "after"), ("after=0", "after"), ("after=-3", "after"),
                     ("user_id=nope", "user_id")):
        err = assert_error(stack.orders.get(f"/api/v1/orders?{q}", token=service_token()),
                           422, "invalid")
        assert field in err.get("fields", {}), (q, err)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

def test_http_client_metrics(stack):
    _, tok = stack.new_user()
    place_ok(stack.orders, tok)
    place_ok(stack.orders, tok)  # from the cache
    assert_error(place(stack.orders, user_token(str(uuid.uuid4()))), 422, "invalid")

    results = {lab.get("result"): v for lab, v in samples(stack.orders,
                                                            "http_client_requests_total")
               if lab.get("target") == "users"}
    assert results.get("2xx", 0) >= 1, results
    assert results.get("cache_hit", 0) >= 1, results
    assert results.get("4xx", 0) >= 1, results
    assert circuit(stack.orders) == 0
    text = stack.orders.metrics()
    assert "# TYPE http_client_requests_total counter" in text
    assert "# TYPE circuit_state gauge" in text
    assert re.search(r'^http_requests_total\{[^}]*route="/api/v1/orders"[^}]*code="202"',
                     text, re.M), text[:3000]


# ---------------------------------------------------------------------------
# Schema migrations
# ---------------------------------------------------------------------------

def schema_blocks(path):
    """{N: sql} of a schema.sql, split on its "-- migration: N" lines."""
    blocks, n = {}, None
    for line in Path(path).read_text().splitlines(keepends=True):
        m = re.match(r"-- migration: (\d+)\s*$", line)
        if m:
            n = int(m.group(1))
            blocks[n] = ""
        elif n is not None:
            blocks[n] += line
    return blocks


def test_orders_from_before_the_timeline_column_keep_their_timelines(service_factory, r,
                                                                     tmp_path):
    """Migration 5 moves each order's order_steps rows, in n order, into its
    timeline column: an orders.db written by the version before it answers
    GET with the same timeline, and the saga appends to it."""
    blocks = schema_blocks(REPO / "services" / "orders" / "schema.sql")
    assert 5 in blocks and "order_steps" in blocks[1]
    db = tmp_path / "old-orders.db"
    conn = sqlite3.connect(db)
    for n in range(1, 5):
        conn.executescript(f"BEGIN; {blocks[n]}; PRAGMA user_version = {n}; COMMIT;")
    oid, bare, user = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    at = "2026-11-30T10:00:00.000Z"
    for o in (oid, bare):
        conn.execute("INSERT INTO orders (id, user_id, status, items, amount_cents, created_at, "
                     "updated_at) VALUES (?, ?, 'CONFIRMED', ?, 700, ?, ?)",
                     (o, user, json.dumps([{"sku": "SKU-1", "qty": 1}]), at, at))
    steps = [  # (n, step, event_type, stream, entry_id), stored out of order
        (3, "confirmed", "order.confirmed", "orders.events", None),
        (1, "placed", "order.placed", "orders.events", "1764496800000-0"),
        (2, "stock_reserved", "stock.reserved", "inventory.events", "1764496800001-0"),
    ]
    want = []
    for n, step, etype, stream, entry in steps:
        eid = str(uuid.uuid4())
        conn.execute("INSERT INTO order_steps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (oid, n, step, etype, eid, stream, entry, f"2026-11-30T10:00:0{n}.000Z"))
        want.append((n, {"step": step, "event_type": etype, "event_id": eid, "stream": stream,
                         "entry_id": entry, "at": f"2026-11-30T10:00:0{n}.000Z"}))
    conn.commit()
    conn.close()
    want = [s for _, s in sorted(want, key=lambda x: x[0])]

    orders = service_factory("orders", DB_PATH=str(db), USERS_URL="http://127.0.0.1:1",
                             CONSUMER_BLOCK_MS=100)
    tok = service_token()
    got = orders.get(f"/api/v1/orders/{oid}", token=tok)
    assert got.status == 200, got
    assert got.json()["timeline"] == want
    assert orders.get(f"/api/v1/orders/{bare}", token=tok).json()["timeline"] == []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 5
        assert conn.execute("SELECT count(*) FROM sqlite_master "
                            "WHERE name = 'order_steps'").fetchone()[0] == 0
    finally:
        conn.close()

    # The saga appends to a migrated timeline: an acknowledgement is a step.
    entry = r.xadd("inventory.events", {"type": "stock.committed",
                                        "data": json.dumps({"order_id": oid})})

    def appended():
        tl = orders.get(f"/api/v1/orders/{oid}", token=tok).json()["timeline"]
        return tl if len(tl) == 4 else None

    tl = wait_until(appended, 15, what="the stock.committed step")
    assert tl[:3] == want
    assert tl[3]["step"] == "stock_committed" and tl[3]["entry_id"] == entry
    assert orders.alive()


def test_a_flood_of_acknowledgements_cannot_grow_a_timeline_without_bound(stack_factory, r):
    """Replies that neither move an order on nor send anything (here:
    stock.released, each a distinct event) are recorded until the timeline
    holds 64 KiB; past that they are acked and logged, not stored, so a flood
    cannot make every write of the row ever larger. A reply that moves the
    order, and a late one that sends a compensation, are still recorded."""
    st = stack_factory()
    _, tok = st.new_user()
    order = place_ok(st.orders, tok)
    oid = order["id"]
    flood = 450  # ~190 bytes a step: well past 64 KiB
    pipe = r.pipeline(transaction=False)
    for _ in range(flood):
        pipe.xadd("inventory.events", {"type": "stock.released",
                                       "data": json.dumps({"order_id": oid})})
    pipe.execute()

    def consumed():
        for g in r.xinfo_groups("inventory.events"):
            if g["name"] in ("orders", b"orders"):
                return g["pending"] == 0 and g["entries-read"] >= flood
        return False

    def order_now():
        got = get_order(st.orders, oid, tok)
        assert got.status == 200, got
        return got.json()

    wait_until(consumed, 30, what="orders to consume the flood")
    tl = order_now()["timeline"]
    size = len(json.dumps(tl, separators=(",", ":")))
    released = sum(1 for s in tl if s["step"] == "stock_released")
    assert 0 < released < flood, released
    # filled up to the cap, not past it: the cap holds for the text the saga
    # stores, and GET then fills in the entry ids of the two steps orders
    # sent before the flood (null -> "<ms>-<seq>": a few bytes each)
    assert 65536 - 1024 < size <= 65536 + 64, size
    assert "its timeline is full" in st.orders.log_text()

    # A move is recorded past the cap ...
    r.xadd("inventory.events", {"type": "stock.rejected",
                                "data": json.dumps({"order_id": oid, "reason": "out_of_stock"})})
    o = wait_until(lambda: (lambda o: o if o["status"] == "REJECTED" else None)(order_now()), 15,
                   what="the order to be rejected")
    assert [s["step"] for s in o["timeline"][-2:]] == ["stock_rejected", "rejected"]

    # ... and so is a late reply that sends a compensation.
    r.xadd("inventory.events", {"type": "stock.reserved",
                                "data": json.dumps({"order_id": oid, "amount_cents": 700})})

    def compensated():
        tl = order_now()["timeline"]
        return tl if tl[-1]["step"] == "release_stock" else None

    tl = wait_until(compensated, 15, what="the late stock.reserved to be compensated")
    assert [s["step"] for s in tl[-2:]] == ["late_stock_reserved", "release_stock"]
    assert any(json.loads(f[b"data"] if b"data" in f else f["data"]).get("order_id") == oid
               for _, f in r.xrange("inventory.commands")
               if (f.get(b"type") or f.get("type")) in (b"stock.release", "stock.release"))
    assert st.orders.alive()
