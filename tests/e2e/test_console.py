"""The console module (issue 18): its JSON against what Redis and the
services say, its saga view, dead letters and their replay, the page and its
assets. The browser test is test_console_browser.py.

The console runs as build/console (split: it watches the services named in
CONSOLE_SERVICES) or inside the monolith (build/ripple users orders inventory
payments console: it watches the modules beside it). CONSOLE_CACHE_MS=0 so
each request sees a fresh report. Every wait is a deadline poll.

The console is stateless (its /readyz reports database "none"); the tests
wait for /healthz and for its reports.
"""

import json
import os
import re

import pytest

from conftest import (HOST, REPO, assert_error, binary, run_to_exit, service_token, stable_port,
                      unique_email, user_token, wait_until)

pytestmark = pytest.mark.fresh_redis  # counts entries and groups of its own streams

FAST = {"CONSUMER_BLOCK_MS": 200, "RECLAIM_IDLE_MS": 2000, "PBKDF2_ITERATIONS": 1000}
SAGA = ("users", "orders", "inventory", "payments")
FINAL = ("CONFIRMED", "REJECTED", "CANCELLED")
HAPPY_STEPS = ["placed", "reserve_stock", "stock_reserved", "charge_payment",
               "payment_succeeded", "commit_stock", "confirmed"]
CANCELLED_STEPS = ["placed", "reserve_stock", "stock_reserved", "charge_payment",
                   "payment_failed", "release_stock", "cancelled"]
LANES = {  # step -> (from, to) as the saga picture draws it
    "placed": ("orders", "orders"), "reserve_stock": ("orders", "inventory"),
    "stock_reserved": ("inventory", "orders"), "charge_payment": ("orders", "payments"),
    "payment_succeeded": ("payments", "orders"), "payment_failed": ("payments", "orders"),
    "commit_stock": ("orders", "inventory"), "release_stock": ("orders", "inventory"),
    "confirmed": ("orders", "orders"), "cancelled": ("orders", "orders"),
    "stock_committed": ("inventory", "orders"), "stock_released": ("inventory", "orders"),
}


def console(service_factory, services, **env):
    """build/console watching services ({name: Service}), healthy."""
    spec = ",".join(f"{n}={s.base}" for n, s in services.items())
    svc = service_factory("console", CONSOLE_SERVICES=spec, CONSOLE_CACHE_MS=0, **env)
    assert svc.wait_healthy()
    return svc


def report(con, what, status=200):
    r = con.get(f"/api/v1/console/{what}", timeout=20)
    assert r.status == status, f"GET /api/v1/console/{what}: {r}"
    assert r.headers.get("cache-control") == "no-store"
    return r.json()


def stream_of(rep, name):
    for s in rep["items"]:
        if s["name"] == name:
            return s
    return None


def group_of(stream, name):
    return next((g for g in stream["groups"] if g["name"] == name), None) if stream else None


# ---------------------------------------------------------------------------
# Streams: lag, pending, consumers, dead letters
# ---------------------------------------------------------------------------

def test_lag_and_pending_match_xinfo_while_a_consumer_is_stopped(service_factory, r):
    payments = service_factory("payments", **FAST)
    payments.wait_ready()
    con = console(service_factory, {"payments": payments})
    wait_until(lambda: group_of(stream_of(report(con, "streams"), "payments.commands"),
                                "payments"), 15, what="the payments group in the report")
    assert payments.stop() == 0
    for i in range(7):
        r.xadd("payments.commands", {"type": "account.credit", "id": f"credit-{i}",
                                     "data": json.dumps({"user_id": "00000000-0000-4000-8000-"
                                                         f"{i:012d}", "amount_cents": 100})})
    # Three taken by a consumer that never acks: pending 3, lag 4.
    r.xreadgroup("payments", "stuck-consumer", {"payments.commands": ">"}, count=3)
    want = {g["name"]: g for g in r.xinfo_groups("payments.commands")}["payments"]
    assert (want["pending"], want["lag"]) == (3, 4), want

    s = stream_of(report(con, "streams"), "payments.commands")
    g = group_of(s, "payments")
    assert s["length"] == r.xlen("payments.commands")
    assert (g["pending"], g["lag"]) == (want["pending"], want["lag"]), g
    assert g["last_delivered_id"] == want["last-delivered-id"]
    assert g["consumers"] == want["consumers"]
    consumers = {c["name"]: c for c in g["consumer_list"]}
    assert consumers["stuck-consumer"]["pending"] == 3, consumers
    assert isinstance(consumers["stuck-consumer"]["idle_ms"], int)
    # Every stream Redis has is listed, with its length.
    names = {x["name"] for x in report(con, "streams")["items"]}
    assert "payments.commands" in names and "users.events" in names, names


def test_dead_letters_are_listed_with_their_reasons(service_factory, r):
    inventory = service_factory("inventory", **FAST)
    inventory.wait_ready()
    con = console(service_factory, {"inventory": inventory}, CONSOLE_DLQ_LETTERS=2)
    r.xadd("inventory.commands", {"type": "stock.bogus", "data": '{"sku":"SKU-1"}',
                                  "trace": "trace-bogus"})
    r.xadd("inventory.commands", {"type": "stock.reserve", "data": "not json"})
    r.xadd("inventory.commands", {"type": "product.restock", "data": '{"sku":"SKU-1"}'})
    wait_until(lambda: r.xlen("inventory.commands.dlq") == 3, 20, what="three dead letters")

    dlq = stream_of(report(con, "streams"), "inventory.commands")["dlq"]
    assert dlq["length"] == 3
    letters = dlq["letters"]
    assert len(letters) == 2, letters  # CONSOLE_DLQ_LETTERS: the last two, newest first
    newest = r.xrevrange("inventory.commands.dlq", count=2)
    assert [x["id"] for x in letters] == [e[0] for e in newest]
    for letter, (_, fields) in zip(letters, newest):
        assert letter["error"] == fields["error"] and letter["error"], letter
        assert letter["group"] == "inventory" and letter["deliveries"] == fields["deliveries"]
        assert letter["type"] == fields["type"]
    assert "not JSON" in letters[1]["error"], letters[1]
    assert letters[0]["type"] == "product.restock"

    one = service_factory("console", CONSOLE_SERVICES=f"inventory={inventory.base}",
                          CONSOLE_CACHE_MS=0)
    every = stream_of(report(one, "streams"), "inventory.commands")["dlq"]["letters"]
    first = next(x for x in every if x["type"] == "stock.bogus")
    assert "unknown type" in first["error"] and first["trace"] == "trace-bogus", first
    assert first["data"] == '{"sku":"SKU-1"}'


# ---------------------------------------------------------------------------
# Services and sagas, in a monolith
# ---------------------------------------------------------------------------

@pytest.fixture
def monolith(host_factory):
    ports = {n: stable_port() for n in SAGA + ("console",)}
    per = {"orders": {"USERS_URL": f"http://{HOST}:{ports['users']}"},
           "console": {"CACHE_MS": 0}}
    views = host_factory(list(SAGA) + ["console"], shared=FAST, per=per, ports=ports)
    for n in SAGA:
        views[n].wait_ready()
    return views


def new_user(views):
    email = unique_email("console")
    user = views["users"].create_user(email=email)
    token = views["users"].login(email)
    wait_until(lambda: views["payments"].get(f"/api/v1/accounts/{user['id']}",
                                             token=service_token()).status == 200,
               15, what="the account opened")
    return user, token


def place(views, token, items):
    r = views["orders"].post("/api/v1/orders", {"items": items}, token=token)
    assert r.status == 202, r
    return r.json()["id"]


def final_saga(con, order_id, last_step):
    def done():
        s = report(con, f"orders/{order_id}")
        steps = [x["step"] for x in s["steps"]]
        published = all(x["entry_id"] for x in s["steps"])
        return s if s["final"] and last_step in steps and published else None
    return wait_until(done, 20, interval=0.05, what=f"the saga of {order_id} with {last_step}")


def check_saga(views, saga, expected):
    order = views["orders"].get(f"/api/v1/orders/{saga['order']['id']}",
                                token=service_token()).json()
    steps = saga["steps"]
    # The console's steps are orders' timeline, in its order, numbered.
    assert [s["step"] for s in steps] == [t["step"] for t in order["timeline"]]
    assert [s["n"] for s in steps] == list(range(1, len(steps) + 1))
    assert [s["step"] for s in steps][:len(expected)] == expected, steps
    for s, t in zip(steps, order["timeline"]):
        assert (s["event_type"], s["stream"], s["entry_id"], s["at"]) == \
            (t["event_type"], t["stream"], t["entry_id"], t["at"])
        assert (s["from"], s["to"]) == LANES[s["step"]], s
        assert s["entry_id"], s
    assert steps[0]["since_prev_ms"] is None and steps[0]["since_start_ms"] == 0
    for a, b in zip(steps, steps[1:]):
        assert b["since_prev_ms"] >= 0 and b["since_start_ms"] >= a["since_start_ms"]
    assert saga["total_ms"] == steps[-1]["since_start_ms"]
    assert saga["lanes"][:3] == ["orders", "inventory", "payments"], saga["lanes"]
    # The trace is the one the order carries: its traceparent's trace id.
    tp = order["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", tp), tp
    assert saga["trace"] == {"id": tp[3:35], "traceparent": tp, "source": "traceparent"}


def test_an_orders_saga_step_by_step(monolith):
    con = monolith["console"]
    _, token = new_user(monolith)
    ok = place(monolith, token, [{"sku": "SKU-1", "qty": 2}])
    broke = place(monolith, token, [{"sku": "SKU-3", "qty": 3}])  # 15000 > the 10000 credit
    saga = final_saga(con, ok, "stock_committed")  # the saga's last step
    assert saga["order"]["status"] == "CONFIRMED"
    check_saga(monolith, saga, HAPPY_STEPS)
    saga = final_saga(con, broke, "stock_released")
    assert saga["order"]["status"] == "CANCELLED"
    assert saga["order"]["reason"] == "insufficient_funds"
    check_saga(monolith, saga, CANCELLED_STEPS)

    listed = report(con, "orders?limit=5")["items"]
    assert [o["id"] for o in listed][:2] == [broke, ok]
    assert_error(con.get("/api/v1/console/orders?limit=0"), 422, "invalid")
    assert_error(con.get("/api/v1/console/orders/not-an-id"), 404)
    assert_error(con.get("/api/v1/console/orders/0190c0de-0000-7000-8000-000000000000"), 404)


def test_services_of_a_monolith(monolith):
    con = monolith["console"]
    info = report(con, "info")
    assert info["services"] == ["users", "orders", "inventory", "payments"]
    assert info["writes"] is False and info["orders"] is True
    rep = report(con, "services")
    by = {s["name"]: s for s in rep["items"]}
    assert set(by) == set(SAGA)
    for name, s in by.items():
        assert s["health"] == "up" and s["ready"] is True, s
        assert s["url"] == monolith[name].base and s["hosted"] == "this process"
        # One process: one RSS for all its modules, the host's, from each /metrics.
        assert s["rss"]["source"] == "metrics" and s["rss"]["bytes"] > 1 << 20, s
        assert s["outbox"]["backlog"] == 0, s
    # Rates come from two scrapes; traffic in between shows.
    for _ in range(20):
        monolith["inventory"].get("/api/v1/products")
    monolith["inventory"].get("/api/v1/nothing-here")

    def rates():
        s = {x["name"]: x for x in report(con, "services")["items"]}["inventory"]
        return s if s["http"]["requests_per_s"] and s["http"]["window_s"] else None
    s = wait_until(rates, 15, what="an HTTP rate for inventory")
    assert s["http"]["requests_per_s"] > 0 and s["http"]["errors_per_s"] == 0
    total = sum(float(line.rsplit(" ", 1)[1]) for line in monolith["inventory"].metrics()
                .splitlines() if line.startswith("http_requests_total"))
    assert 22 <= s["http"]["requests_total"] <= total
    # The console's own RSS gauge.
    assert "process_resident_memory_bytes " in con.metrics()


def test_services_split_remote_and_down(service_factory):
    inventory = service_factory("inventory", **FAST)
    inventory.wait_ready()
    dead = stable_port()
    con = service_factory("console", CONSOLE_CACHE_MS=0,
                          CONSOLE_SERVICES=f"inventory={inventory.base}/,"
                                           f"payments=http://{HOST}:{dead}")
    by = {s["name"]: s for s in report(con, "services")["items"]}
    assert by["inventory"]["health"] == "up" and by["inventory"]["hosted"] == "remote"
    assert by["inventory"]["url"] == inventory.base  # the trailing slash dropped
    # every module reports process_resident_memory_bytes on its /metrics
    assert by["inventory"]["rss"]["source"] == "metrics", by["inventory"]
    assert by["inventory"]["rss"]["bytes"] > 1 << 20, by["inventory"]
    assert by["inventory"]["outbox"]["publish_latency_ms"]["window"] in ("lifetime", "recent")
    assert by["payments"]["health"] == "down" and by["payments"]["ready"] is None
    assert by["payments"]["outbox"] is None and by["payments"]["error"], by["payments"]
    assert report(con, "info")["orders"] is False
    assert_error(con.get("/api/v1/console/orders"), 404)


@pytest.mark.parametrize("value", ["users", "users=ftp://h:1", "Users=http://h:1",
                                   "a=http://h:1,a=http://h:2", "a=http://h:1/path"])
def test_bad_console_services_stop_it_with_one_line(value, tmp_path):
    rc, err = run_to_exit("console", {"CONSOLE_SERVICES": value}, tmpdir=tmp_path)
    assert rc == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(lines) == 1 and "CONSOLE_SERVICES" in lines[0], err


# ---------------------------------------------------------------------------
# Dead-letter replay
# ---------------------------------------------------------------------------

def dead_letter(service_factory, r, tmp_path):
    """A user.register dead-lettered by a failing users; then a healthy users
    on the same database. Returns (users, dlq entry id, email)."""
    db = str(tmp_path / "users.db")
    failing = service_factory("users", DB_PATH=db, CHAOS_FAIL_TYPES="user.register",
                              MAX_DELIVERIES="2", CONSUMER_BLOCK_MS="100")
    email = unique_email("replay")
    r.xadd("users.commands", {"type": "user.register", "id": "replay-" + email,
                              "data": json.dumps({"name": "Re Play", "email": email})})
    wait_until(lambda: r.xlen("users.commands.dlq") == 1, 20, what="the dead letter")
    assert failing.stop() == 0
    users = service_factory("users", DB_PATH=db, CONSUMER_BLOCK_MS="100")
    users.wait_ready()
    return users, r.xrange("users.commands.dlq")[0][0], email


def replay(con, entry, token=None, stream="users.commands"):
    return con.post(f"/api/v1/console/streams/{stream}/dlq/{entry}/replay", token=token)


def test_writes_are_refused_unless_allowed_and_with_a_service_token(service_factory, r,
                                                                     tmp_path):
    users, entry, _ = dead_letter(service_factory, r, tmp_path)
    ro = console(service_factory, {"users": users})
    assert_error(replay(ro, entry), 401)
    assert_error(replay(ro, entry, service_token()), 403, "forbidden")
    assert report(ro, "info")["writes"] is False

    rw = console(service_factory, {"users": users}, CONSOLE_ALLOW_WRITES=1)
    assert report(rw, "info")["writes"] is True
    assert_error(replay(rw, entry), 401)
    assert_error(replay(rw, entry, user_token("00000000-0000-4000-8000-000000000001")), 403)
    assert_error(replay(rw, "not-an-id", service_token()), 400)
    assert_error(replay(rw, entry, service_token(), stream="bad%20name"), 400)
    assert_error(replay(rw, "1-1", service_token()), 404)
    assert_error(rw.get(f"/api/v1/console/streams/users.commands/dlq/{entry}/replay"), 405)
    assert r.xlen("users.commands.dlq") == 1  # nothing was replayed


def test_replay_works_when_allowed(service_factory, r, tmp_path):
    users, entry, email = dead_letter(service_factory, r, tmp_path)
    con = console(service_factory, {"users": users}, CONSOLE_ALLOW_WRITES=1)
    before = r.xlen("users.commands")
    res = replay(con, entry, service_token(sub="service:operator"), stream="users.commands.dlq")
    assert res.status == 200, res
    body = res.json()
    assert body["dlq"] == "users.commands.dlq" and body["dlq_id"] == entry
    assert body["stream"] == "users.commands"
    assert r.xlen("users.commands.dlq") == 0 and r.xlen("users.commands") == before + 1
    added = r.xrange("users.commands", body["new_id"], body["new_id"])[0][1]
    assert added["id"] == "replay-" + email and added["type"] == "user.register"
    assert not {"error", "group", "deliveries", "failures"} & set(added), added

    def registered():
        return [e for _, e in r.xrange("users.events") if email in e.get("data", "")]
    wait_until(lambda: len(registered()) == 1, 20, what="the replayed user registered")
    assert_error(replay(con, entry, service_token()), 404)  # gone
    log = "\n".join(ln for ln in con.log_lines() if "replayed" in ln)
    assert "service:operator" in log and entry in log, log
    assert stream_of(report(con, "streams"), "users.commands")["dlq"]["length"] == 0


def test_scripts_dlq_and_the_console_run_the_same_replay():
    """One replay: scripts/dlq loads scripts/dlq.d/replay.lua, and the console
    binary carries that file's text exactly (embedded by the Makefile's
    assets rule), which it runs with EVAL."""
    with open(os.path.join(REPO, "scripts", "dlq.d", "replay.lua"), "rb") as f:
        text = f.read()
    assert b"redis.call('XDEL'" in text
    with open(os.path.join(REPO, "scripts", "dlq")) as f:
        dlq = f.read()
    assert '"dlq.d", "replay.lua"' in dlq and "r.eval(" in dlq
    for exe in ("console", "ripple"):
        with open(binary(exe), "rb") as f:
            assert text in f.read(), f"build/{exe} does not carry scripts/dlq.d/replay.lua"


# ---------------------------------------------------------------------------
# The page and its assets
# ---------------------------------------------------------------------------

def test_the_page_and_its_assets_are_served_from_the_binary(service_factory, tmp_path):
    con = service_factory("console", CONSOLE_SERVICES=f"orders=http://{HOST}:{stable_port()}")
    for path in ("/", "/orders/01a24d01-e3a2-7193-8cf6-a5c0fd4e1b48"):
        r = con.get(path)
        assert r.status == 200 and r.headers["content-type"].startswith("text/html"), r
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert b'src="/assets/app.js"' in r.body and b"http" not in r.body.replace(
            b'http-equiv', b'')
    for name, ctype in (("app.js", "text/javascript"), ("saga.js", "text/javascript"),
                        ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        r = con.get("/assets/" + name)
        assert r.status == 200 and r.headers["content-type"].startswith(ctype), (name, r)
        assert r.headers["x-content-type-options"] == "nosniff"
        src = os.path.join(REPO, "services", "console", "assets", name)
        assert r.body == open(src, "rb").read(), f"{name} differs from its source"
    for name in ("streams.lua", "replay.lua", "nothing.js", "..%2Fconsole.c"):
        assert_error(con.get("/assets/" + name), 404)


# ---------------------------------------------------------------------------
# Stopping with a report in flight
# ---------------------------------------------------------------------------

def test_sigterm_with_a_report_in_flight_answers_it_and_exits_0(service_factory):
    """A service that accepts and never answers holds the console's scrape;
    SIGTERM cancels it (the HTTP client closes), the waiting request still
    gets an answer, and the console exits 0 with nothing leaked (ASan in
    make check-san)."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(8)
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    con = service_factory("console", CONSOLE_SERVICES=f"silent=http://{HOST}:"
                                                      f"{silent.getsockname()[1]}")
    answers = []
    t = threading.Thread(target=lambda: answers.append(
        con.get("/api/v1/console/services", timeout=20)), daemon=True)
    t.start()
    try:
        wait_until(lambda: accepted, 10, what="the console's scrape to connect")
        assert con.stop() == 0
        t.join(20)
        assert answers and answers[0].status in (200, 503), answers
    finally:
        silent.close()
        for conn, _ in accepted:
            conn.close()
