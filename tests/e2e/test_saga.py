"""The order saga end to end (DESIGN.md §5-§8): real redis-server, the four
services, orders placed over HTTP and by XADD, restocks and credits by XADD,
timeouts, late replies and their compensation, and crash tests (kill -9 of
inventory, payments and orders, a Redis restart with AOF) after which every
order must be final and the invariants of §8 must hold:

  - every order ends CONFIRMED, REJECTED or CANCELLED;
  - per sku: initial + restocks = available + reserved + sold, reserved = 0
    at rest, and sold = the qty of the CONFIRMED orders;
  - per account: initial credit + credits = balance + charged - refunded;
  - nobody is charged twice for an order: one payments row per order, a
    succeeded one exactly for each CONFIRMED order, and charged_cents per user
    = the sum of that user's succeeded and refunded payments.

The invariants are read from the services' SQLite files, opened read-only
(file:...?mode=ro), and cross-checked between services; what the test injected
(restocks, credits) it counts itself.

Every test gets its own redis-server (the `redis_server` fixture is
overridden at function scope; the indirect parameter "aof" gives one with
--appendonly yes --appendfsync always) and its own four services, on ports
outside the kernel's ephemeral range so that a killed service or Redis can
come back on its port (see stable_port). Every wait is a deadline poll
(wait_until); the only sleeps are the crash tests' random pauses (their
chaos) and the observation window in which an order must still be PENDING.

The crash tests are marked `slow`: `pytest tests/e2e` runs them, `-m "not
slow"` skips them. Each prints its seed; RIPPLE_CHAOS_SEED=<n> replays its
random choices (orders, victims, pauses), not the exact timing.
"""

import http.client
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from datetime import datetime

import pytest
import redis

from conftest import HOST, TOPOLOGIES, service_token, stable_port, unique_email, wait_until

# The seeded catalog (services/inventory/schema.sql): sku -> (price_cents, stock).
CATALOG = {
    "SKU-1": (250, 200),
    "SKU-2": (3499, 40),
    "SKU-3": (5000, 10),
    "SKU-4": (1299, 150),
    "SKU-5": (450, 120),
    "SKU-6": (1800, 3),
}
FINAL = ("CONFIRMED", "REJECTED", "CANCELLED")
FAST = {"CONSUMER_BLOCK_MS": 200, "RECLAIM_IDLE_MS": 2000, "PBKDF2_ITERATIONS": 1000}
SERVICES = ("users", "inventory", "payments", "orders")
DEFAULT_CREDIT = 10000  # INITIAL_CREDIT_CENTS's default

HAPPY_STEPS = ["placed", "reserve_stock", "stock_reserved", "charge_payment",
               "payment_succeeded", "commit_stock", "confirmed"]
STEP_EVENTS = {
    "requested": ("order.place", "orders.commands"),
    "placed": ("order.placed", "orders.events"),
    "reserve_stock": ("stock.reserve", "inventory.commands"),
    "stock_reserved": ("stock.reserved", "inventory.events"),
    "stock_rejected": ("stock.rejected", "inventory.events"),
    "charge_payment": ("payment.charge", "payments.commands"),
    "payment_succeeded": ("payment.succeeded", "payments.events"),
    "payment_failed": ("payment.failed", "payments.events"),
    "commit_stock": ("stock.commit", "inventory.commands"),
    "confirmed": ("order.confirmed", "orders.events"),
    "rejected": ("order.rejected", "orders.events"),
    "release_stock": ("stock.release", "inventory.commands"),
    "cancelled": ("order.cancelled", "orders.events"),
    "timed_out": ("order.cancelled", "orders.events"),
    "refund_payment": ("payment.refund", "payments.commands"),
    "late_stock_reserved": ("stock.reserved", "inventory.events"),
    "late_payment_succeeded": ("payment.succeeded", "payments.events"),
    "stock_released": ("stock.released", "inventory.events"),
    "stock_committed": ("stock.committed", "inventory.events"),
    "payment_refunded": ("payment.refunded", "payments.events"),
}
SAGA_STREAMS = ("orders.commands", "inventory.commands", "payments.commands")


# ---------------------------------------------------------------------------
# A redis-server per test; optionally with AOF; stop/start on the same port
# ---------------------------------------------------------------------------

pytestmark = pytest.mark.fresh_redis  # redis_server fresh per test; indirect "aof"


# ---------------------------------------------------------------------------
# The four services
# ---------------------------------------------------------------------------

def ro_db(path):
    """A read-only connection to a service's SQLite file (WAL: sees what is
    committed)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def db_rows(path, sql, args=()):
    conn = ro_db(path)
    try:
        return [dict(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def parse_ts(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")


# The saga also runs as one host whose modules each have a loop and a
# thread of their own (RIPPLE_THREADS=1): topology "threads".
SAGA_TOPOLOGIES = TOPOLOGIES + ("threads",)


class Stack:
    """users, inventory, payments and orders on one redis-server, as four
    processes (topology "split") or as the four modules of one host process
    (topology "monolith", DESIGN.md §11; "threads": the same host with a loop
    and a thread for each module).

    .svc[name] is the running incarnation; .lives[name] every one (for logs).
    restart(name) starts the service again on the same port and DB file; in
    a monolith, kill9(name) and restart(name) act on the whole host."""

    def __init__(self, start, redis_srv, env, per_service, topology="split", host_start=None):
        self.topology = topology
        self.hosted = topology != "split"  # the four modules in one process
        self._host_start = host_start
        self._start = start
        self.redis = redis_srv
        self.env = dict(env)
        if topology == "threads":
            self.env["RIPPLE_THREADS"] = "1"
        self.per = {name: dict(per_service.get(name, {})) for name in SERVICES}
        self.svc = {}
        self.lives = {name: [] for name in SERVICES}
        self.r = redis_srv.client()
        self.lock = threading.Lock()

    # -- processes ------------------------------------------------------------
    def _env_for(self, name):
        env = dict(self.env)
        env.update(self.per[name])
        if name == "orders":
            env["USERS_URL"] = self.svc["users"].base
        return env

    def _launch_host(self, ports=None, db_paths=None):
        ports = dict(ports or {n: stable_port() for n in SERVICES})
        per = {n: dict(self.per[n]) for n in SERVICES}
        per["orders"]["USERS_URL"] = f"http://{HOST}:{ports['users']}"
        views = self._host_start(SERVICES, shared=self.env, per=per, ports=ports,
                                 db_paths=db_paths)
        with self.lock:
            for name in SERVICES:
                self.svc[name] = views[name]
                self.lives[name].append(views[name])
        return views

    def boot(self):
        if self.hosted:
            self._launch_host()
            for name in SERVICES:
                self.wait_ready(name)
            return self
        for name in SERVICES:
            for attempt in range(3):
                try:
                    self._launch(name, PORT=stable_port())
                    break
                except pytest.fail.Exception as exc:
                    # the port was taken between the check and the bind
                    if attempt == 2 or "already in use" not in str(exc):
                        raise
        for name in SERVICES:
            self.wait_ready(name)
        return self

    def _launch(self, name, **fixed):
        svc = self._start(name, **self._env_for(name), **fixed)
        with self.lock:
            self.svc[name] = svc
            self.lives[name].append(svc)
        return svc

    def restart(self, name, timeout=20):
        """Starts name again on the same port and database file and waits for
        /readyz. The previous incarnation must have exited."""
        old = self.svc[name]
        assert old.proc.poll() is not None, f"{name} is still running"
        if self.hosted:
            self._launch_host(ports={n: self.svc[n].port for n in SERVICES},
                              db_paths={n: self.svc[n].db_path for n in SERVICES})
            for n in SERVICES:
                self.wait_ready(n, timeout)
            return self.svc[name]
        deadline = time.monotonic() + timeout
        while True:
            try:
                svc = self._launch(name, PORT=old.port, DB_PATH=old.db_path)
                break
            except pytest.fail.Exception as exc:
                # The port must stay (the others know it), and another
                # process may hold it for a moment: other test sessions on
                # this machine probe ports in the same range (stable_port).
                if "already in use" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)  # a retry pause, not a synchronisation
        self.wait_ready(name, max(1.0, deadline - time.monotonic()))
        return svc

    def kill9(self, name):
        svc = self.svc[name]
        for other in self.svc.values():
            if other.proc is svc.proc:  # a host's modules die together
                other.expect_exit = None
        svc.proc.kill()
        svc.proc.wait(10)

    def ready(self, name):
        try:
            return self.svc[name].get("/readyz", timeout=2).status == 200
        except (OSError, http.client.HTTPException):
            return False

    def wait_ready(self, name, timeout=20):
        """Polls /readyz until 200; fails at once if the process exits."""
        svc = self.svc[name]
        deadline = time.monotonic() + timeout
        while not self.ready(name):
            if not svc.alive():
                raise AssertionError(f"{name} (pid {svc.proc.pid}) exited with "
                                     f"{svc.proc.returncode} while waiting for /readyz\n"
                                     f"{self.logs()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {name} /readyz "
                                     f"200\n{self.logs()}")
            time.sleep(0.05)

    def unexpected_exits(self):
        """Incarnations that exited though this test neither killed nor
        stopped them."""
        return [f"{name} #{i + 1} pid {svc.proc.pid} exited {svc.proc.returncode}"
                for name in SERVICES for i, svc in enumerate(self.lives[name])
                if not svc.alive() and svc.expect_exit is not None and svc.stopped_rc is None]

    def close(self):
        self.r.close()

    # -- HTTP -----------------------------------------------------------------
    @property
    def users(self):
        return self.svc["users"]

    @property
    def orders(self):
        return self.svc["orders"]

    @property
    def inventory(self):
        return self.svc["inventory"]

    @property
    def payments(self):
        return self.svc["payments"]

    def new_user(self, prefix="saga"):
        """Registers a user, logs in, waits until payments opened the account.
        Returns (user, token)."""
        email = unique_email(prefix)
        user = self.users.create_user(name=prefix, email=email)
        token = self.users.login(email)
        self.wait_account(user["id"])
        return user, token

    def account(self, user_id):
        r = self.payments.get(f"/api/v1/accounts/{user_id}", token=service_token())
        assert r.status == 200, f"GET account {user_id}: {r}"
        return r.json()

    def wait_account(self, user_id, timeout=15):
        return wait_until(
            lambda: (lambda r: r.json() if r.status == 200 else None)(
                self.payments.get(f"/api/v1/accounts/{user_id}", token=service_token())),
            timeout, interval=0.05, what=f"payments opened the account of {user_id}")

    def product(self, sku):
        r = self.inventory.get(f"/api/v1/products/{sku}")
        assert r.status == 200, f"GET product {sku}: {r}"
        return r.json()

    def payment(self, order_id):
        return self.payments.get(f"/api/v1/payments/{order_id}", token=service_token())

    def place(self, token, items, **kw):
        r = self.orders.post("/api/v1/orders", {"items": items}, token=token, **kw)
        assert r.status == 202, f"POST /orders {items}: {r}"
        order = r.json()
        assert order["status"] == "PENDING", order
        return order

    def order(self, order_id):
        r = self.orders.get(f"/api/v1/orders/{order_id}", token=service_token())
        assert r.status == 200, f"GET order {order_id}: {r}"
        return r.json()

    def list_orders(self, user_id=None):
        """Every order (or one user's), through the list API with a service
        token, following the cursor."""
        out, after = [], None
        while True:
            q = "limit=100" + (f"&user_id={user_id}" if user_id else "") + \
                (f"&after={after}" if after else "")
            r = self.orders.get(f"/api/v1/orders?{q}", token=service_token())
            assert r.status == 200, f"GET /orders?{q}: {r}"
            page = r.json()
            out += page["items"]
            after = page["next"]
            if after is None:
                return out

    def wait_final(self, order_id, timeout=20):
        try:
            return wait_until(
                lambda: (lambda o: o if o["status"] in FINAL else None)(self.order(order_id)),
                timeout, interval=0.05, what=f"order {order_id} final")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diag([order_id])}") from None

    def wait_steps(self, order_id, steps, timeout=20):
        """Waits until the order's timeline holds every step of steps."""
        def has_all():
            o = self.order(order_id)
            have = [s["step"] for s in o["timeline"]]
            return o if all(s in have for s in steps) else None
        try:
            return wait_until(has_all, timeout, interval=0.05,
                              what=f"steps {steps} in the timeline of {order_id}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diag([order_id])}") from None

    # -- diagnostics ----------------------------------------------------------
    def logs(self, names=SERVICES, n=15):
        out = [f"!!! exited without being killed or stopped by the test: {x}"
               for x in self.unexpected_exits()]
        for name in names:
            for i, svc in enumerate(self.lives.get(name, [])):
                try:
                    lines = svc.log_lines()[-n:]
                except OSError as exc:
                    lines = [f"(no log: {exc})"]
                state = "running" if svc.alive() else f"exited {svc.proc.returncode}"
                out.append(f"--- {name} #{i + 1} port {svc.port} ({state}), last {n} lines:")
                out += lines
        return "\n".join(out)

    def grep_logs(self, needle, names=SERVICES, n=30):
        out = []
        for name in names:
            for i, svc in enumerate(self.lives.get(name, [])):
                try:
                    hits = [ln for ln in svc.log_lines() if needle in ln]
                except OSError:
                    hits = []
                out += [f"{name}#{i + 1}: {ln}" for ln in hits[-n:]]
        return "\n".join(out)

    def timeline_text(self, order_id):
        try:
            o = self.order(order_id)
        except Exception as exc:  # noqa: BLE001 - diagnostics must not raise
            try:
                o = db_rows(self.orders.db_path, "SELECT * FROM orders WHERE id = ?",
                            (order_id,))[0]
                o["timeline"] = json.loads(o["timeline"])
            except Exception:  # noqa: BLE001
                return f"order {order_id}: cannot read it ({exc!r})"
        head = (f"order {order_id} user={o.get('user_id')} status={o.get('status')} "
                f"reason={o.get('reason')} amount={o.get('amount_cents')} "
                f"items={o.get('items')} created={o.get('created_at')} "
                f"updated={o.get('updated_at')}")
        steps = [f"    {s.get('at')} {s.get('step'):<24} {s.get('event_type'):<18} "
                 f"{s.get('stream')} {s.get('entry_id')} {s.get('event_id')}"
                 for s in o.get("timeline", [])]
        return "\n".join([head] + steps)

    def diag(self, order_ids=(), max_orders=5):
        parts = [self.timeline_text(oid) for oid in list(order_ids)[:max_orders]]
        for oid in list(order_ids)[:2]:
            parts.append(f"log lines with {oid}:\n{self.grep_logs(oid)}")
        parts.append(self.logs())
        return "\n".join(parts)


@pytest.fixture(params=SAGA_TOPOLOGIES)
def stack_factory(request, service_factory, host_factory, redis_server):
    """start(saga_timeout_ms=None, initial_credit=None) -> a booted Stack, in
    each topology: every saga test runs split, as one monolith, and as one
    monolith with a thread for each module."""
    made = []

    def start(saga_timeout_ms=None, initial_credit=None, **env):
        per = {"orders": {}, "payments": {}}
        if saga_timeout_ms is not None:
            per["orders"]["SAGA_TIMEOUT_MS"] = saga_timeout_ms
        if initial_credit is not None:
            per["payments"]["INITIAL_CREDIT_CENTS"] = initial_credit
        st = Stack(service_factory, redis_server, {**FAST, **env}, per, request.param,
                   host_factory)
        made.append(st)
        return st.boot()

    yield start
    for st in made:
        st.close()


# ---------------------------------------------------------------------------
# The invariants, read from the services' databases
# ---------------------------------------------------------------------------

def invariant_problems(stack, initial_credit, restocks=None, credits=None, users=()):
    """Everything that is wrong with the system at rest, as a list of
    strings (empty: every invariant holds). restocks: sku -> qty the test
    injected; credits: user id -> cents the test credited; users: ids whose
    accounts must exist."""
    restocks = restocks or {}
    credits = credits or {}
    problems = []
    orders = db_rows(stack.orders.db_path,
                     "SELECT id, user_id, status, items, amount_cents, reason FROM orders")
    products = {p["sku"]: p for p in db_rows(stack.inventory.db_path, "SELECT * FROM products")}
    reservations = {r["order_id"]: r for r in
                    db_rows(stack.inventory.db_path, "SELECT * FROM reservations")}
    accounts = {a["user_id"]: a for a in db_rows(stack.payments.db_path,
                                                  "SELECT * FROM accounts")}
    payments = {p["order_id"]: p for p in db_rows(stack.payments.db_path,
                                                   "SELECT * FROM payments")}
    by_id = {o["id"]: o for o in orders}

    # Every order final.
    for o in orders:
        if o["status"] not in FINAL:
            problems.append(f"order {o['id']} is {o['status']}, not final")

    # Per sku: the stock equation, reserved 0, sold = the CONFIRMED qty.
    sold = {}
    for o in orders:
        if o["status"] == "CONFIRMED":
            for it in json.loads(o["items"]):
                sold[it["sku"]] = sold.get(it["sku"], 0) + it["qty"]
    for sku, p in products.items():
        seeded = CATALOG.get(sku, (None, 0))[1]
        if p["initial"] != seeded:
            problems.append(f"{sku}: initial {p['initial']}, seeded {seeded}")
        if p["restocked"] != restocks.get(sku, 0):
            problems.append(f"{sku}: restocked {p['restocked']}, injected "
                            f"{restocks.get(sku, 0)}")
        if seeded + restocks.get(sku, 0) != p["available"] + p["reserved"] + p["sold"]:
            problems.append(f"{sku}: initial {seeded} + restocks {restocks.get(sku, 0)} != "
                            f"available {p['available']} + reserved {p['reserved']} + "
                            f"sold {p['sold']}")
        if p["reserved"] != 0:
            problems.append(f"{sku}: reserved {p['reserved']} at rest")
        if p["sold"] != sold.get(sku, 0):
            problems.append(f"{sku}: sold {p['sold']}, but CONFIRMED orders hold "
                            f"{sold.get(sku, 0)}")
    for sku in CATALOG:
        if sku not in products:
            problems.append(f"{sku}: missing from the catalog")

    # Reservations agree with the orders.
    for oid, r in reservations.items():
        o = by_id.get(oid)
        if o is None:
            problems.append(f"reservation {oid} ({r['status']}) for an order orders does not "
                            f"know")
            continue
        if o["status"] == "CONFIRMED":
            if r["status"] != "COMMITTED":
                problems.append(f"order {oid} CONFIRMED, its reservation is {r['status']}")
        elif r["status"] in ("RESERVED", "COMMITTED"):
            problems.append(f"order {oid} {o['status']}, its reservation is {r['status']}")
    for o in orders:
        if o["status"] == "CONFIRMED" and o["id"] not in reservations:
            problems.append(f"order {o['id']} CONFIRMED without a reservation")

    # Payments agree with the orders: one row per order (the primary key);
    # succeeded exactly for CONFIRMED orders, at the order's amount.
    for o in orders:
        pm = payments.get(o["id"])
        if o["status"] == "CONFIRMED":
            want = sum(CATALOG[it["sku"]][0] * it["qty"] for it in json.loads(o["items"])
                       if it["sku"] in CATALOG)
            if o["amount_cents"] != want:
                problems.append(f"order {o['id']} CONFIRMED for {o['amount_cents']} cents, "
                                f"its items cost {want}")
            if pm is None or pm["status"] != "succeeded":
                problems.append(f"order {o['id']} CONFIRMED, payment "
                                f"{pm and pm['status']}")
            elif pm["amount_cents"] != o["amount_cents"] or pm["user_id"] != o["user_id"]:
                problems.append(f"order {o['id']}: paid {pm['amount_cents']} by "
                                f"{pm['user_id']}, order {o['amount_cents']} by {o['user_id']}")
        elif o["status"] == "REJECTED" and pm is not None:
            problems.append(f"order {o['id']} REJECTED ({o['reason']}) has a payment "
                            f"{pm['status']}")
        elif o["status"] == "CANCELLED" and pm is not None and pm["status"] == "succeeded":
            problems.append(f"order {o['id']} CANCELLED ({o['reason']}) but charged "
                            f"{pm['amount_cents']} and not refunded")
    for oid, pm in payments.items():
        if oid not in by_id:
            problems.append(f"payment {oid} ({pm['status']}) for an order orders does not know")

    # Per account: the money equation; charged/refunded = the payments rows.
    charged, refunded = {}, {}
    for pm in payments.values():
        if pm["status"] in ("succeeded", "refunded"):
            charged[pm["user_id"]] = charged.get(pm["user_id"], 0) + pm["amount_cents"]
        if pm["status"] == "refunded":
            refunded[pm["user_id"]] = refunded.get(pm["user_id"], 0) + pm["amount_cents"]
    for uid in users:
        if uid not in accounts:
            problems.append(f"no account for user {uid}")
    for uid, a in accounts.items():
        if a["initial_cents"] != initial_credit:
            problems.append(f"account {uid}: initial {a['initial_cents']}, configured "
                            f"{initial_credit}")
        if a["credited_cents"] != credits.get(uid, 0):
            problems.append(f"account {uid}: credited {a['credited_cents']}, injected "
                            f"{credits.get(uid, 0)}")
        if (initial_credit + credits.get(uid, 0) !=
                a["balance_cents"] + a["charged_cents"] - a["refunded_cents"]):
            problems.append(f"account {uid}: initial {initial_credit} + credits "
                            f"{credits.get(uid, 0)} != balance {a['balance_cents']} + charged "
                            f"{a['charged_cents']} - refunded {a['refunded_cents']}")
        if a["charged_cents"] != charged.get(uid, 0):
            problems.append(f"account {uid}: charged {a['charged_cents']}, but its succeeded "
                            f"and refunded payments sum to {charged.get(uid, 0)} "
                            f"(charged twice?)")
        if a["refunded_cents"] != refunded.get(uid, 0):
            problems.append(f"account {uid}: refunded {a['refunded_cents']}, but its refunded "
                            f"payments sum to {refunded.get(uid, 0)}")
    return problems


def assert_invariants(stack, initial_credit, timeout=20, **kw):
    """Polls until the system is at rest with every invariant holding."""
    last = []

    def ok():
        last[:] = invariant_problems(stack, initial_credit, **kw)
        return not last
    try:
        wait_until(ok, timeout, interval=0.2, what="every invariant at rest")
    except AssertionError as exc:
        bad = [p.split()[1] for p in last if p.startswith("order ")]
        raise AssertionError(f"{exc}\n" + "\n".join(last[:40]) + "\n" +
                             stack.diag(bad)) from None


GROUPS = {  # stream -> the consumer group (service) reading it (DESIGN.md §5)
    "users.commands": "users",
    "orders.commands": "orders",
    "inventory.events": "orders",
    "payments.events": "orders",
    "inventory.commands": "inventory",
    "payments.commands": "payments",
    "users.events": "payments",
}


def assert_quiet(stack, timeout=20):
    """Polls until every outbox row is published and no consumer group has
    a pending (delivered, unacked) entry: dead consumers' entries taken over
    and acked."""
    last = []

    def quiet():
        last.clear()
        for name in SERVICES:
            n = db_rows(stack.svc[name].db_path,
                        "SELECT count(*) AS n FROM outbox_backlog")[0]["n"]
            if n:
                last.append(f"{name}: {n} outbox rows unpublished")
        for stream, group in GROUPS.items():
            try:
                pend = stack.r.xpending(stream, group)
            except redis.ResponseError as exc:
                last.append(f"{stream}/{group}: {exc}")
                continue
            if pend["pending"]:
                last.append(f"{stream}/{group}: {pend['pending']} pending "
                            f"({pend['consumers']})")
        return not last
    try:
        wait_until(quiet, timeout, interval=0.2, what="outboxes drained and nothing pending")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(last) + "\n" + stack.logs()) from None


def steps_of(order):
    return [s["step"] for s in order["timeline"]]


def xadd_order(r, user_id, items, **fields):
    return r.xadd("orders.commands", {"type": "order.place",
                                      "data": json.dumps({"user_id": user_id, "items": items}),
                                      **fields})


def orders_by_entry(stack):
    """orders.commands entry id -> [order ids] from the orders database (the
    step "requested" records the entry an order came from)."""
    out = {}
    for row in db_rows(stack.orders.db_path,
                       "SELECT o.id AS order_id, s.value ->> '$.entry_id' AS entry_id "
                       "FROM orders o, json_each(o.timeline) s "
                       "WHERE s.value ->> '$.step' = 'requested'"):
        out.setdefault(row["entry_id"], []).append(row["order_id"])
    return out


def saga_seconds(stack):
    """{outcome: {"count", "sum", "buckets": [(le, cumulative)]}} of orders'
    orders_saga_seconds histogram (created -> final by the saga)."""
    out = {}
    for line in stack.orders.metrics().splitlines():
        if not line.startswith("orders_saga_seconds"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        lb = dict(kv.split("=", 1) for kv in labels.rstrip("}").split(",") if kv)
        lb = {k: v.strip('"') for k, v in lb.items()}
        h = out.setdefault(lb["outcome"], {"count": 0, "sum": 0.0, "buckets": []})
        if name == "orders_saga_seconds_count":
            h["count"] = int(float(value))
        elif name == "orders_saga_seconds_sum":
            h["sum"] = float(value)
        elif name == "orders_saga_seconds_bucket":
            le = float("inf") if lb["le"] == "+Inf" else float(lb["le"])
            h["buckets"].append((le, int(float(value))))
    return out


def check_timeline_entries(stack, order):
    """Every step's (stream, entry_id) is a real entry of that type whose
    event id is the step's."""
    for s in order["timeline"]:
        assert s["entry_id"], f"step {s} has no entry id"
        want_type, want_stream = STEP_EVENTS[s["step"]]
        assert (s["event_type"], s["stream"]) == (want_type, want_stream), s
        got = stack.r.xrange(s["stream"], s["entry_id"], s["entry_id"])
        assert len(got) == 1, f"step {s}: no such entry in {s['stream']}"
        fields = got[0][1]
        assert fields["type"] == s["event_type"], (s, fields)
        assert fields.get("id", f"{s['stream']}:{s['entry_id']}") == s["event_id"], (s, fields)


# ---------------------------------------------------------------------------
# 1. the happy path
# ---------------------------------------------------------------------------

def test_happy_path_confirmed(stack_factory):
    st = stack_factory()
    user, token = st.new_user("happy")
    assert st.account(user["id"])["balance_cents"] == DEFAULT_CREDIT
    before = {sku: st.product(sku) for sku in ("SKU-1", "SKU-4")}
    assert before["SKU-1"]["available"] == 200 and before["SKU-4"]["available"] == 150, before

    items = [{"sku": "SKU-1", "qty": 3}, {"sku": "SKU-4", "qty": 2}]
    amount = 3 * 250 + 2 * 1299
    placed = st.place(token, items)
    assert placed["user_id"] == user["id"] and placed["items"] == items, placed
    assert steps_of(placed)[:2] == ["placed", "reserve_stock"], placed

    order = st.wait_final(placed["id"])
    assert order["status"] == "CONFIRMED", st.diag([placed["id"]])
    assert order["amount_cents"] == amount and order["reason"] is None, order
    order = st.wait_steps(placed["id"], ["stock_committed"])
    assert steps_of(order) == HAPPY_STEPS + ["stock_committed"], st.diag([placed["id"]])
    ats = [parse_ts(s["at"]) for s in order["timeline"]]
    assert ats == sorted(ats), order["timeline"]
    # The timeline names real stream entries, with their event ids.
    order = wait_until(lambda: (lambda o: o if all(s["entry_id"] for s in o["timeline"])
                                else None)(st.order(placed["id"])), 10,
                       what="every step's entry id")
    check_timeline_entries(st, order)

    # The owner sees it too; the numbers moved exactly once.
    r = st.orders.get(f"/api/v1/orders/{placed['id']}", token=token)
    assert r.status == 200 and r.json()["status"] == "CONFIRMED", r
    p1, p4 = st.product("SKU-1"), st.product("SKU-4")
    assert (p1["available"], p1["reserved"], p1["sold"]) == (197, 0, 3), p1
    assert (p4["available"], p4["reserved"], p4["sold"]) == (148, 0, 2), p4
    assert st.account(user["id"])["balance_cents"] == DEFAULT_CREDIT - amount
    pm = st.payment(placed["id"])
    assert pm.status == 200, pm
    pm = pm.json()
    assert (pm["status"], pm["amount_cents"], pm["user_id"]) == \
        ("succeeded", amount, user["id"]), pm
    assert_invariants(st, DEFAULT_CREDIT, users=[user["id"]])


# ---------------------------------------------------------------------------
# 2. out of stock -> REJECTED, nothing charged
# ---------------------------------------------------------------------------

def test_out_of_stock_rejected_nothing_charged(stack_factory):
    st = stack_factory()
    user, token = st.new_user("oos")
    assert st.product("SKU-6")["available"] == 3

    placed = st.place(token, [{"sku": "SKU-6", "qty": 4}])
    order = st.wait_final(placed["id"])
    assert (order["status"], order["reason"]) == ("REJECTED", "out_of_stock"), \
        st.diag([placed["id"]])
    assert steps_of(order) == ["placed", "reserve_stock", "stock_rejected", "rejected"], \
        st.diag([placed["id"]])
    assert order.get("amount_cents") is None, order

    r = st.payment(placed["id"])
    assert r.status == 404, f"a rejected order has a payment: {r}"
    assert st.account(user["id"])["balance_cents"] == DEFAULT_CREDIT
    p6 = st.product("SKU-6")
    assert (p6["available"], p6["reserved"], p6["sold"]) == (3, 0, 0), p6
    assert db_rows(st.payments.db_path, "SELECT * FROM payments") == []
    assert_invariants(st, DEFAULT_CREDIT, users=[user["id"]])


# ---------------------------------------------------------------------------
# 3. insufficient funds -> CANCELLED, stock released
# ---------------------------------------------------------------------------

def test_insufficient_funds_cancelled_stock_released(stack_factory):
    st = stack_factory(initial_credit=1000)
    user, token = st.new_user("poor")
    assert st.account(user["id"])["balance_cents"] == 1000

    placed = st.place(token, [{"sku": "SKU-2", "qty": 1}])  # 3499 > 1000
    order = st.wait_final(placed["id"])
    assert (order["status"], order["reason"]) == ("CANCELLED", "insufficient_funds"), \
        st.diag([placed["id"]])
    order = st.wait_steps(placed["id"], ["stock_released"])
    assert steps_of(order) == ["placed", "reserve_stock", "stock_reserved", "charge_payment",
                               "payment_failed", "release_stock", "cancelled",
                               "stock_released"], st.diag([placed["id"]])

    p2 = st.product("SKU-2")
    assert (p2["available"], p2["reserved"], p2["sold"]) == (40, 0, 0), p2
    assert st.account(user["id"])["balance_cents"] == 1000
    pm = st.payment(placed["id"])
    assert pm.status == 200, pm
    assert (pm.json()["status"], pm.json()["reason"]) == ("failed", "insufficient_funds"), pm
    res = db_rows(st.inventory.db_path, "SELECT status FROM reservations WHERE order_id = ?",
                  (placed["id"],))
    assert res == [{"status": "RELEASED"}], res
    assert_invariants(st, 1000, users=[user["id"]])


# ---------------------------------------------------------------------------
# 4. orders placed by XADD order.place
# ---------------------------------------------------------------------------

def test_orders_placed_by_xadd_reach_final_states(stack_factory):
    t_start = time.monotonic()
    st = stack_factory(initial_credit=5000)
    user, _ = st.new_user("xadd")
    ghost = str(uuid.uuid4())  # no such user
    r = st.r

    e_ok = xadd_order(r, user["id"], [{"sku": "SKU-5", "qty": 2}])           # 900
    e_oos = xadd_order(r, user["id"], [{"sku": "SKU-6", "qty": 4}])          # 3 in stock
    e_poor = xadd_order(r, user["id"], [{"sku": "SKU-3", "qty": 1}])         # 5000 > 4100
    e_ghost = xadd_order(r, ghost, [{"sku": "SKU-1", "qty": 1}])
    # An explicit event id sent twice is one command (the inbox de-duplicates).
    eid = str(uuid.uuid4())
    e_dup1 = xadd_order(r, user["id"].upper(), [{"sku": "SKU-1", "qty": 1}], id=eid,
                        trace="xadd-dup")
    e_dup2 = xadd_order(r, user["id"], [{"sku": "SKU-1", "qty": 1}], id=eid, trace="xadd-dup")
    # By redis-cli, as a user types it (DESIGN.md §5).
    out = subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(st.redis.port), "XADD", "orders.commands", "*",
         "type", "order.place", "data",
         json.dumps({"user_id": user["id"], "items": [{"sku": "SKU-4", "qty": 1}]})],
        capture_output=True, text=True, timeout=10, check=True)
    e_cli = out.stdout.strip()
    entries = [e_ok, e_oos, e_poor, e_ghost, e_dup1, e_dup2, e_cli]

    def all_there():
        m = orders_by_entry(st)
        return m if all(e in m for e in (e_ok, e_oos, e_poor, e_ghost, e_dup1, e_cli)) else None
    by_entry = wait_until(all_there, 20, interval=0.1,
                          what=f"an order for each of {entries}\n{st.logs(['orders'])}")
    assert e_dup2 not in by_entry, f"a duplicate event id made a second order: {by_entry}"
    assert all(len(v) == 1 for v in by_entry.values()), by_entry

    final = {e: st.wait_final(by_entry[e][0]) for e in by_entry}
    want = {
        e_ok: ("CONFIRMED", None),
        e_oos: ("REJECTED", "out_of_stock"),
        e_poor: ("CANCELLED", "insufficient_funds"),
        e_ghost: ("REJECTED", "unknown_user"),
        e_dup1: ("CONFIRMED", None),
        e_cli: ("CONFIRMED", None),
    }
    for e, (status, reason) in want.items():
        o = final[e]
        assert (o["status"], o["reason"]) == (status, reason), st.diag([o["id"]])
        assert o["timeline"][0]["step"] == "requested", o["timeline"]
        assert o["timeline"][0]["entry_id"] == e, o["timeline"]
    assert final[e_dup1]["user_id"] == user["id"], "user ids are stored lower-cased"
    assert final[e_dup1]["timeline"][0]["event_id"] == eid
    assert final[e_ok]["timeline"][0]["event_id"] == f"orders.commands:{e_ok}"
    assert steps_of(final[e_ghost]) == ["requested", "rejected"], final[e_ghost]
    assert final[e_ghost]["user_id"] == ghost
    # Nothing went to inventory for the unknown user's order.
    assert db_rows(st.inventory.db_path, "SELECT * FROM reservations WHERE order_id = ?",
                   (final[e_ghost]["id"],)) == []

    # The list API finds them too (the unknown user's by its user_id).
    mine = {o["id"] for o in st.list_orders(user["id"])}
    assert mine == {final[e]["id"] for e in want if e != e_ghost}, mine
    assert [o["id"] for o in st.list_orders(ghost)] == [final[e_ghost]["id"]]
    spent = 900 + 250 + 1299
    assert st.account(user["id"])["balance_cents"] == 5000 - spent
    assert st.r.xlen("orders.commands.dlq") == 0, st.r.xrange("orders.commands.dlq")
    assert_invariants(st, 5000, users=[user["id"]])

    # orders_saga_seconds: one observation per order the saga made final, by
    # outcome (the unknown user's order was rejected at creation: no saga),
    # each between 0 and the test's own duration.
    h = saga_seconds(st)
    counts = {k: v["count"] for k, v in h.items()}
    assert counts == {"confirmed": 3, "rejected": 1, "cancelled": 1}, h
    for outcome, v in h.items():
        les = [le for le, _ in v["buckets"]]
        cum = [c for _, c in v["buckets"]]
        assert les == sorted(les) and les[-1] == float("inf") and les[0] <= 0.001, v
        assert cum == sorted(cum) and cum[-1] == v["count"], (outcome, v)
        assert 0 <= v["sum"] <= v["count"] * (time.monotonic() - t_start), (outcome, v)


# ---------------------------------------------------------------------------
# 5. restock and credit by XADD, then an order that needs both
# ---------------------------------------------------------------------------

def test_restock_and_credit_by_xadd_enable_an_order(stack_factory):
    st = stack_factory(initial_credit=1000)
    user, token = st.new_user("restock")
    items = [{"sku": "SKU-6", "qty": 5}]  # 5 x 1800 = 9000; 3 in stock, 1000 of credit

    first = st.wait_final(st.place(token, items)["id"])
    assert (first["status"], first["reason"]) == ("REJECTED", "out_of_stock"), \
        st.diag([first["id"]])

    # Restock by redis-cli, as DESIGN.md §5 shows it.
    subprocess.run(["redis-cli", "-h", HOST, "-p", str(st.redis.port), "XADD",
                    "inventory.commands", "*", "type", "product.restock", "data",
                    '{"sku":"SKU-6","qty":2}'], capture_output=True, timeout=10, check=True)
    p6 = wait_until(lambda: (lambda p: p if p["available"] == 5 else None)(st.product("SKU-6")),
                    10, interval=0.05, what="SKU-6 restocked to 5 over HTTP")
    assert (p6["reserved"], p6["sold"]) == (0, 0), p6
    # And a new product by restock.
    st.r.xadd("inventory.commands", {"type": "product.restock", "data": json.dumps(
        {"sku": "SKU-NEW", "qty": 7, "name": "New mug", "price_cents": 1299})})
    new = wait_until(lambda: (lambda r: r.json() if r.status == 200 else None)(
        st.inventory.get("/api/v1/products/SKU-NEW")), 10, interval=0.05, what="SKU-NEW")
    assert (new["name"], new["price_cents"], new["available"]) == ("New mug", 1299, 7), new

    second = st.wait_final(st.place(token, items)["id"])
    assert (second["status"], second["reason"]) == ("CANCELLED", "insufficient_funds"), \
        st.diag([second["id"]])
    wait_until(lambda: st.product("SKU-6")["available"] == 5, 10, interval=0.05,
               what="SKU-6 released after the failed payment")

    st.r.xadd("payments.commands", {"type": "account.credit", "data": json.dumps(
        {"user_id": user["id"], "amount_cents": 8000})})
    acct = wait_until(
        lambda: (lambda a: a if a["balance_cents"] == 9000 else None)(st.account(user["id"])),
        10, interval=0.05, what="the credit visible over HTTP")
    assert acct["user_id"] == user["id"], acct

    third = st.wait_final(st.place(token, items)["id"])
    assert third["status"] == "CONFIRMED", st.diag([third["id"]])
    assert third["amount_cents"] == 9000, third
    wait_until(lambda: st.product("SKU-6")["sold"] == 5, 10, interval=0.05,
               what="SKU-6 sold 5")
    p6 = st.product("SKU-6")
    assert (p6["available"], p6["reserved"], p6["sold"]) == (0, 0, 5), p6
    assert st.account(user["id"])["balance_cents"] == 0
    assert st.r.xlen("inventory.commands.dlq") == 0
    assert st.r.xlen("payments.commands.dlq") == 0
    assert_invariants(st, 1000, restocks={"SKU-6": 2, "SKU-NEW": 7},
                      credits={user["id"]: 8000}, users=[user["id"]])


# ---------------------------------------------------------------------------
# 6. a late payment.succeeded for a cancelled order is refunded
# ---------------------------------------------------------------------------

# One service frozen or stopped while the others run: split topology only.
@pytest.mark.parametrize("stack_factory", ["split"], indirect=True)
def test_late_payment_after_timeout_is_refunded(stack_factory):
    timeout_ms = 5000
    st = stack_factory(saga_timeout_ms=timeout_ms)
    user, token = st.new_user("late")
    items = [{"sku": "SKU-1", "qty": 2}]
    pay = st.payments
    pay.send_signal(signal.SIGSTOP)
    try:
        placed = st.place(token, items)
        order = st.wait_final(placed["id"], timeout=timeout_ms / 1000 + 10)
        assert (order["status"], order["reason"]) == ("CANCELLED", "timeout"), \
            st.diag([placed["id"]])
        # (stock_released may follow already: inventory is running.)
        assert steps_of(order)[:6] == ["placed", "reserve_stock", "stock_reserved",
                                       "charge_payment", "release_stock", "timed_out"], \
            st.diag([placed["id"]])
        assert set(steps_of(order)[6:]) <= {"stock_released"}, st.diag([placed["id"]])
        # The stock comes back while payments is still frozen.
        wait_until(lambda: (lambda p: p["reserved"] == 0 and p["available"] == 200)(
            st.product("SKU-1")), 10, interval=0.05, what="SKU-1 released after the timeout")
        assert db_rows(pay.db_path, "SELECT * FROM payments") == []
    finally:
        pay.send_signal(signal.SIGCONT)

    order = st.wait_steps(placed["id"], ["late_payment_succeeded", "refund_payment",
                                         "payment_refunded"])
    steps = steps_of(order)
    assert steps[:6] == ["placed", "reserve_stock", "stock_reserved", "charge_payment",
                         "release_stock", "timed_out"], st.diag([placed["id"]])
    assert steps.index("late_payment_succeeded") < steps.index("refund_payment") < \
        steps.index("payment_refunded"), st.diag([placed["id"]])
    assert steps.count("late_payment_succeeded") == 1, st.diag([placed["id"]])
    assert (order["status"], order["reason"]) == ("CANCELLED", "timeout"), order

    pm = st.payment(placed["id"])
    assert pm.status == 200, pm
    assert (pm.json()["status"], pm.json()["amount_cents"]) == ("refunded", 500), pm
    assert st.account(user["id"])["balance_cents"] == DEFAULT_CREDIT
    acct = db_rows(pay.db_path, "SELECT * FROM accounts WHERE user_id = ?", (user["id"],))[0]
    assert (acct["charged_cents"], acct["refunded_cents"]) == (500, 500), acct
    p1 = st.product("SKU-1")
    assert (p1["available"], p1["reserved"], p1["sold"]) == (200, 0, 0), p1
    assert_invariants(st, DEFAULT_CREDIT, users=[user["id"]])


# ---------------------------------------------------------------------------
# 7. no reply: cancelled after SAGA_TIMEOUT_MS, compensated when the
#    service comes back
# ---------------------------------------------------------------------------

# One service frozen or stopped while the others run: split topology only.
@pytest.mark.parametrize("stack_factory", ["split"], indirect=True)
def test_no_reply_times_out_and_is_compensated(stack_factory):
    timeout_ms = 3000
    st = stack_factory(saga_timeout_ms=timeout_ms)
    user, token = st.new_user("noreply")
    before = st.product("SKU-1")
    assert st.inventory.stop() == 0, st.logs(["inventory"])

    t0 = time.monotonic()
    placed = st.place(token, [{"sku": "SKU-1", "qty": 3}])
    # Not before its time: PENDING all through the first half of the timeout.
    while time.monotonic() - t0 < timeout_ms / 2000:
        o = st.order(placed["id"])
        assert o["status"] == "PENDING", \
            f"{o['status']} after {time.monotonic() - t0:.2f}s\n{st.diag([placed['id']])}"
        time.sleep(0.1)  # observation window pacing
    order = st.wait_final(placed["id"], timeout=timeout_ms / 1000 + 10)
    assert (order["status"], order["reason"]) == ("CANCELLED", "timeout"), \
        st.diag([placed["id"]])
    waited = (parse_ts(order["updated_at"]) - parse_ts(order["created_at"])).total_seconds()
    assert waited >= timeout_ms / 1000 - 0.002, \
        f"cancelled {waited:.3f}s after creation, SAGA_TIMEOUT_MS={timeout_ms}"
    assert steps_of(order) == ["placed", "reserve_stock", "release_stock", "timed_out"], \
        st.diag([placed["id"]])

    # Both commands wait in inventory.commands, the reserve first (the relay
    # publishes the release just after the cancel commits).
    def commands():
        return [f["type"] for _, f in st.r.xrange("inventory.commands")
                if json.loads(f["data"]).get("order_id") == placed["id"]]
    wait_until(lambda: len(commands()) >= 2, 10, interval=0.05,
               what=f"stock.reserve and stock.release published: {commands()}")
    assert commands() == ["stock.reserve", "stock.release"], commands()

    st.restart("inventory")
    order = st.wait_steps(placed["id"], ["stock_released"])
    wait_until(lambda: (lambda p: p["reserved"] == 0 and p["available"] == before["available"]
                        and p["sold"] == 0)(st.product("SKU-1")),
               10, interval=0.05, what="SKU-1 back where it was")
    res = db_rows(st.inventory.db_path, "SELECT status FROM reservations WHERE order_id = ?",
                  (placed["id"],))
    assert res == [{"status": "RELEASED"}], res
    # inventory answered the reserve and the release, in that order.
    answers = [f["type"] for _, f in st.r.xrange("inventory.events")
               if json.loads(f["data"]).get("order_id") == placed["id"]]
    assert answers[:2] in (["stock.reserved", "stock.released"],
                           ["stock.rejected", "stock.released"]), answers
    order = st.order(placed["id"])
    assert (order["status"], order["reason"]) == ("CANCELLED", "timeout"), order
    if answers[0] == "stock.reserved":
        # A late stock.reserved for a finished saga is answered by a release.
        order = st.wait_steps(placed["id"], ["late_stock_reserved"])
        steps = steps_of(order)
        assert steps.index("late_stock_reserved") < len(steps) - 1 and \
            steps[steps.index("late_stock_reserved") + 1] == "release_stock", steps
    assert db_rows(st.payments.db_path, "SELECT * FROM payments") == []
    assert st.account(user["id"])["balance_cents"] == DEFAULT_CREDIT
    assert_invariants(st, DEFAULT_CREDIT, users=[user["id"]])


# ---------------------------------------------------------------------------
# 8. crash tests: a burst of orders while services are killed (and Redis
#    restarted); afterwards every order is final and every invariant holds
# ---------------------------------------------------------------------------

CRASH_TIMEOUT_MS = 5000
CRASH_CREDIT = 50000
CRASH_USERS = 5
CRASH_ORDERS = 200
HTTP_THREADS = 4
HTTP_SHARE = 0.7
BIG_SKUS = ("SKU-1", "SKU-4", "SKU-5")


def chaos_seed():
    seed = os.environ.get("RIPPLE_CHAOS_SEED")
    seed = int(seed) if seed else random.SystemRandom().randrange(2 ** 32)
    print(f"chaos seed: {seed} (RIPPLE_CHAOS_SEED={seed} replays the choices)")
    return seed


def order_specs(rng, user_ids, n):
    """n orders as (user id, items, "http" | "xadd"): skus with plenty of
    stock, and SKU-6 (3 in stock) now and then for rejections."""
    specs = []
    for _ in range(n):
        if rng.random() < 0.12:
            items = [{"sku": "SKU-6", "qty": rng.randint(1, 2)}]
        else:
            items = [{"sku": s, "qty": rng.randint(1, 3)}
                     for s in rng.sample(BIG_SKUS, rng.randint(1, 2))]
        specs.append((rng.choice(user_ids), items,
                      "http" if rng.random() < HTTP_SHARE else "xadd"))
    return specs


class Burst:
    """Fires the orders from HTTP_THREADS threads (POST) and one XADD thread,
    each pacing itself with random pauses, and records what was accepted."""

    def __init__(self, stack, specs, tokens, seed):
        self.st = stack
        self.port = stack.orders.port  # restarts keep it
        self.tokens = tokens
        self.seed = seed
        self.lock = threading.Lock()
        self.accepted = []    # order ids answered 202
        self.refused = []     # POSTs that never got an answer (orders down)
        self.shed = []        # 503 answers
        self.unexpected = []  # any other answer
        self.xadded = []      # orders.commands entry ids
        self.xadd_failed = []
        http = [s for s in specs if s[2] == "http"]
        self.http_parts = [http[i::HTTP_THREADS] for i in range(HTTP_THREADS)]
        self.xadd_part = [s for s in specs if s[2] == "xadd"]

    def _post(self, part, k):
        rng = random.Random(self.seed * 31 + k)
        for uid, items, _ in part:
            time.sleep(rng.uniform(0, 0.2))  # pacing: spreads the burst over the chaos
            try:
                r = http_request_post(self.port, {"items": items}, self.tokens[uid])
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.refused.append(repr(exc))
                continue
            with self.lock:
                if r[0] == 202:
                    self.accepted.append(r[1]["id"])
                elif r[0] == 503:
                    self.shed.append(r[1])
                else:
                    self.unexpected.append(r)

    def _xadd(self, part):
        rng = random.Random(self.seed * 31 + 99)
        c = self.st.redis.client(socket_timeout=5)
        try:
            for uid, items, _ in part:
                time.sleep(rng.uniform(0, 0.12))
                try:
                    e = xadd_order(c, uid, items)
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    with self.lock:
                        self.xadd_failed.append(repr(exc))
                    continue
                with self.lock:
                    self.xadded.append(e)
        finally:
            c.close()

    def threads(self):
        ts = [threading.Thread(target=self._post, args=(p, k), daemon=True)
              for k, p in enumerate(self.http_parts)]
        ts.append(threading.Thread(target=self._xadd, args=(self.xadd_part,), daemon=True))
        return ts

    def summary(self):
        return (f"POST 202: {len(self.accepted)}, no answer: {len(self.refused)}, "
                f"503: {len(self.shed)}, other: {len(self.unexpected)}; "
                f"XADD ok: {len(self.xadded)}, failed: {len(self.xadd_failed)}")


def http_request_post(port, body, token):
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", "/api/v1/orders", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw[:300]
    finally:
        conn.close()


class Chaos(threading.Thread):
    """Kills each victim once (kill -9; Redis: SIGTERM, it writes its AOF) at
    a random moment and starts it again on the same port and files after a
    random pause, waiting for /readyz each time. The pause of `long_one`
    outlasts SAGA_TIMEOUT_MS, so sagas waiting on it time out and are
    compensated, and its late replies are compensated in turn."""

    def __init__(self, stack, rng, victims, t0, long_one=None):
        super().__init__(daemon=True)
        self.st, self.rng, self.victims, self.t0 = stack, rng, victims, t0
        self.long_one = long_one
        self.log = []
        self.error = None

    def note(self, what):
        self.log.append(f"{time.monotonic() - self.t0:6.2f}s {what}")

    def run(self):
        try:
            for v in self.victims:
                time.sleep(self.rng.uniform(0.3, 1.2))  # chaos: a random moment
                if v == "redis":
                    self.st.redis.down()
                    self.note("redis SIGTERM (AOF written), down")
                    time.sleep(self.rng.uniform(0.5, 1.5))
                    self.st.redis.up()
                    self.note(f"redis up again on port {self.st.redis.port}")
                    for name in SERVICES:
                        self.st.wait_ready(name, 30)
                    self.note("every service ready again")
                else:
                    pid = self.st.svc[v].proc.pid
                    self.st.kill9(v)
                    self.note(f"{v} (pid {pid}) kill -9")
                    if v == self.long_one:
                        time.sleep(self.rng.uniform(CRASH_TIMEOUT_MS / 1000 + 0.5,
                                                    CRASH_TIMEOUT_MS / 1000 + 2.5))
                    else:
                        time.sleep(self.rng.uniform(0.1, 1.0))
                    self.st.restart(v, timeout=20)
                    self.note(f"{v} restarted (pid {self.st.svc[v].proc.pid}), ready")
        except BaseException as exc:  # noqa: BLE001 - pytest.fail raises Failed
            self.error = exc
            self.note(f"chaos failed: {exc!r}")


def run_crash_burst(stack_factory, redis_restart):
    t_start = time.monotonic()
    seed = chaos_seed()
    rng = random.Random(seed)
    st = stack_factory(saga_timeout_ms=CRASH_TIMEOUT_MS, initial_credit=CRASH_CREDIT)
    users = [st.new_user(f"crash{i}") for i in range(CRASH_USERS)]
    tokens = {u["id"]: tok for u, tok in users}
    uids = [u["id"] for u, _ in users]
    specs = order_specs(rng, uids, CRASH_ORDERS)
    victims = rng.sample(["inventory", "payments", "orders"], 3)
    # One of the repliers stays down past SAGA_TIMEOUT_MS: the sagas waiting
    # on it time out and are compensated, its late replies too.
    long_one = rng.choice(["inventory", "payments"])
    if redis_restart:
        victims.insert(rng.randint(0, 3), "redis")
    print(f"victims in order: {victims}, down longer than the saga timeout: {long_one}")

    burst = Burst(st, specs, tokens, seed)
    t0 = time.monotonic()
    chaos = Chaos(st, rng, victims, t0, long_one)
    workers = burst.threads()
    for t in workers:
        t.start()
    chaos.start()
    deadline = time.monotonic() + 120
    for t in workers + [chaos]:
        t.join(max(0.1, deadline - time.monotonic()))
    context = (f"seed {seed}, victims {victims}, long outage {long_one}\nchaos:\n  " +
               "\n  ".join(chaos.log) + f"\nburst: {burst.summary()}")
    print(context)
    assert not any(t.is_alive() for t in workers + [chaos]), f"stuck threads\n{context}"
    if chaos.error is not None:
        raise AssertionError(f"chaos: {chaos.error}\n{context}\n{st.logs()}")
    assert not burst.unexpected, f"unexpected answers: {burst.unexpected[:5]}\n{context}"
    assert burst.accepted and burst.xadded, context
    for name in SERVICES:
        st.wait_ready(name, 30)

    # An order answered 202 was committed: it is in orders' database.
    known = {r["id"] for r in db_rows(st.orders.db_path, "SELECT id FROM orders")}
    lost = [oid for oid in burst.accepted if oid not in known]
    assert not lost, f"orders answered 202 but not stored: {lost[:5]}\n{context}"

    # Within a bound, every order is final: the 202 ones, one per XADD
    # entry, and whatever else got in (a POST whose answer was lost).
    last = {}

    def everything_final():
        by_entry = orders_by_entry(st)
        rows = db_rows(st.orders.db_path, "SELECT id, status FROM orders")
        last["missing"] = [e for e in burst.xadded if e not in by_entry]
        last["open"] = [r["id"] for r in rows if r["status"] not in FINAL]
        return (by_entry, rows) if not last["missing"] and not last["open"] else None
    try:
        by_entry, rows = wait_until(everything_final, 60, interval=0.25,
                                    what="every order final")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: {len(last.get('open', []))} orders not final, "
            f"{len(last.get('missing', []))} XADD entries without an order "
            f"{last.get('missing', [])[:5]}\n{context}\n"
            f"{st.diag(last.get('open', []))}") from None

    # Exactly one order per command entry, never two.
    dups = {e: ids for e, ids in by_entry.items() if len(ids) != 1}
    assert not dups, f"order.place entries that made several orders: {dups}\n{context}"
    strays = [e for e in by_entry if e not in burst.xadded]
    assert len(strays) <= len(burst.xadd_failed), \
        f"orders from entries the test did not write: {strays}\n{context}"

    # The list API with a service token sees the same orders, all final.
    listed = st.list_orders()
    assert {o["id"] for o in listed} == {r["id"] for r in rows}, context
    assert all(o["status"] in FINAL for o in listed), context
    for oid in burst.accepted:
        assert oid in {o["id"] for o in listed}

    assert_invariants(st, CRASH_CREDIT, users=uids, timeout=30)
    assert_quiet(st)

    # Each order made exactly one final transition, the one its status says.
    final_step = {"confirmed": "CONFIRMED", "rejected": "REJECTED", "cancelled": "CANCELLED",
                  "timed_out": "CANCELLED"}
    steps = {}
    for row in db_rows(st.orders.db_path,
                       "SELECT o.id AS order_id, s.value ->> '$.step' AS step "
                       "FROM orders o, json_each(o.timeline) s ORDER BY o.id, s.key"):
        if row["step"] in final_step:
            steps.setdefault(row["order_id"], []).append(row["step"])
    odd = []
    for o in db_rows(st.orders.db_path, "SELECT id, status, reason FROM orders"):
        got = steps.get(o["id"], [])
        want = "timed_out" if o["reason"] == "timeout" else \
            {"CONFIRMED": "confirmed", "REJECTED": "rejected"}.get(o["status"], "cancelled")
        if got != [want]:
            odd.append(o["id"])
    assert not odd, f"orders whose final steps disagree with their status:\n" \
        f"{st.diag(odd)}\n{context}"

    # Nothing dead-lettered: a refused saga command would be a lost effect.
    dead = {k: st.r.xrange(k, count=3) for k in st.r.scan_iter("*.dlq")}
    dead = {k: v for k, v in dead.items() if v}
    assert not dead, f"dead letters: {dead}\n{context}"

    statuses = {}
    for o in listed:
        key = (o["status"], o["reason"])
        statuses[key] = statuses.get(key, 0) + 1
    print(f"{len(listed)} orders: " +
          ", ".join(f"{s}/{r}: {n}" for (s, r), n in sorted(statuses.items(), key=str)))
    pays = db_rows(st.payments.db_path,
                   "SELECT status, count(*) AS n FROM payments GROUP BY status")
    late = db_rows(st.orders.db_path,
                   "SELECT s.value ->> '$.step' AS step, count(*) AS n "
                   "FROM orders o, json_each(o.timeline) s "
                   "WHERE s.value ->> '$.step' LIKE 'late_%' GROUP BY 1")
    print("payments: " + ", ".join(f"{p['status']}: {p['n']}" for p in pays) +
          "; late replies compensated: " + ", ".join(f"{r['step']}: {r['n']}" for r in late))
    print(f"runtime {time.monotonic() - t_start:.1f}s")
    assert any(s == "CONFIRMED" for s, _ in statuses), statuses


@pytest.mark.slow
def test_crash_kill9_services_mid_burst(stack_factory):
    run_crash_burst(stack_factory, redis_restart=False)


@pytest.mark.slow
@pytest.mark.parametrize("redis_server", ["aof"], indirect=True, scope="function")
def test_crash_kill9_and_redis_restart_mid_burst(stack_factory, redis_server):
    run_crash_burst(stack_factory, redis_restart=True)
