"""The console in a real browser (issue 18): Debian's headless chromium,
driven by playwright-core (tests/browser/, pinned, installed by
tests/browser/setup), loads the page against a monolith (build/ripple users
orders inventory payments console, on free ports) with orders in flight, and
tests/browser/console.mjs reports what the DOM shows. This test checks it:
the streams listed with their numbers, dead letters with their reasons, the
saga diagram of a confirmed and of a cancelled order; no request left
127.0.0.1 and the page logged no JavaScript error. Screenshots are saved in
the test's tmp directory (and copied into RIPPLE_CONSOLE_SCREENSHOT, a
directory, when set: `make console-screenshot` regenerates docs/console.png
that way).

Without chromium or the npm packages the test is skipped, unless
RIPPLE_REQUIRE_BROWSER=1 (`make e2e` sets it after installing both), when it
fails.
"""

import json
import os
import shutil
import subprocess
import threading

import pytest

from conftest import HOST, REPO, service_token, stable_port, unique_email, wait_until

pytestmark = pytest.mark.fresh_redis

BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FAST = {"CONSUMER_BLOCK_MS": 200, "RECLAIM_IDLE_MS": 2000, "PBKDF2_ITERATIONS": 1000}
SAGA = ("users", "orders", "inventory", "payments")


def browser_ready():
    missing = [what for what, ok in (
        (CHROMIUM, os.access(CHROMIUM, os.X_OK)),
        ("node", shutil.which("node") is not None),
        ("tests/browser/node_modules", (BROWSER_DIR / "node_modules" / "playwright-core").is_dir()),
    ) if not ok]
    if not missing:
        return
    why = f"missing {', '.join(missing)}: run `make browser-deps`"
    if os.environ.get("RIPPLE_REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    pytest.skip(why)


class Traffic:
    """Orders placed one after another in a thread until stopped (at most
    max_orders), so the page is loaded with orders in flight."""

    def __init__(self, orders, token, max_orders=60):
        self.orders, self.token, self.max = orders, token, max_orders
        self.stop_flag = threading.Event()
        self.placed = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_flag.is_set() and len(self.placed) < self.max:
            try:
                r = self.orders.post("/api/v1/orders", {"items": [{"sku": "SKU-4", "qty": 1}]},
                                     token=self.token, timeout=5)
                if r.status == 202:
                    self.placed.append(r.json()["id"])
            except OSError:
                pass
            self.stop_flag.wait(0.15)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(10)


def final(orders, order_id, last_step):
    def done():
        o = orders.get(f"/api/v1/orders/{order_id}", token=service_token()).json()
        steps = [t["step"] for t in o["timeline"]]
        return o if last_step in steps and all(t["entry_id"] for t in o["timeline"]) else None
    return wait_until(done, 20, interval=0.05, what=f"order {order_id} at {last_step}")


def number(text):
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else None


def test_the_console_in_a_browser(host_factory, r, tmp_path):
    browser_ready()
    ports = {n: stable_port() for n in SAGA + ("console",)}
    views = host_factory(list(SAGA) + ["console"], shared=FAST, ports=ports,
                         per={"orders": {"USERS_URL": f"http://{HOST}:{ports['users']}"},
                              "console": {"REFRESH_MS": 500}})
    for n in SAGA:
        views[n].wait_ready()
    users, orders = views["users"], views["orders"]
    email = unique_email("browser")
    user = users.create_user(email=email)
    token = users.login(email)
    wait_until(lambda: views["payments"].get(f"/api/v1/accounts/{user['id']}",
                                             token=service_token()).status == 200,
               15, what="the account")
    ok = orders.post("/api/v1/orders", {"items": [{"sku": "SKU-1", "qty": 2}]}, token=token)
    broke = orders.post("/api/v1/orders", {"items": [{"sku": "SKU-3", "qty": 3}]}, token=token)
    ok, broke = ok.json()["id"], broke.json()["id"]
    trace_of = {oid: orders.get(f"/api/v1/orders/{oid}", token=token).json()["traceparent"][3:35]
                for oid in (ok, broke)}
    final(orders, ok, "stock_committed")
    final(orders, broke, "stock_released")
    r.xadd("inventory.commands", {"type": "stock.bogus", "data": '{"sku":"SKU-1"}'})
    wait_until(lambda: r.xlen("inventory.commands.dlq") == 1, 20, what="a dead letter")

    out = tmp_path / "browser"
    out.mkdir()
    with Traffic(orders, token) as traffic:
        wait_until(lambda: traffic.placed, 10, what="orders in flight")
        run = subprocess.run(
            ["node", str(BROWSER_DIR / "console.mjs"), "--url", views["console"].base,
             "--confirmed", ok, "--cancelled", broke, "--out", str(out),
             "--deadline-ms", "100000"],
            cwd=str(BROWSER_DIR), capture_output=True, text=True, timeout=150,
            env=dict(os.environ, CHROMIUM=CHROMIUM))
    assert run.returncode == 0, f"console.mjs failed:\n{run.stderr[-4000:]}"
    rep = json.loads(run.stdout.strip().splitlines()[-1])

    assert rep["offhost"] == [], f"requests left 127.0.0.1: {rep['offhost']}"
    assert rep["errors"] == [], f"the page logged errors: {rep['errors']}"
    assert rep["requests"] > 5

    page = rep["overview"]
    assert "updated" in page["status"], page["status"]
    assert {s["name"] for s in page["services"]} == set(SAGA)
    for s in page["services"]:
        assert "up" in s["cells"][1] and "ready" in s["cells"][2], s
    rows = {(s["stream"], s["group"]): s["cells"] for s in page["streams"]}
    for stream, group in (("inventory.commands", "inventory"), ("orders.events", ""),
                          ("payments.commands", "payments"), ("inventory.events", "orders")):
        cells = rows[(stream, group)]
        assert number(cells[1]) is not None and number(cells[1]) > 0, (stream, cells)
        if group:
            assert number(cells[3]) is not None and number(cells[4]) is not None, (stream, cells)
    dlq_cells = rows[("inventory.commands", "inventory")]
    assert number(dlq_cells[6]) == 1, dlq_cells
    assert any("unknown type" in x["text"] and "stock.bogus" in x["text"]
               for x in page["letters"]), page["letters"]
    assert len(page["orders"]) >= 2, page["orders"]

    for saga, status, expect in ((rep["confirmed"], "CONFIRMED", "payment.succeeded"),
                                 (rep["cancelled"], "CANCELLED", "payment.failed")):
        assert saga["status"] == status, saga
        assert saga["lanes"] == ["orders", "inventory", "payments"], saga["lanes"]
        types = [s["type"] for s in saga["steps"]]
        assert types[:4] == ["order.placed", "stock.reserve", "stock.reserved", "payment.charge"]
        assert expect in types and saga["rows"] == len(saga["steps"]), saga
        charge = next(s for s in saga["steps"] if s["type"] == "payment.charge")
        assert (charge["from"], charge["to"]) == ("orders", "payments")
        assert "payments.commands" in charge["text"], charge
    assert rep["confirmed"]["trace"] == trace_of[ok], rep["confirmed"]
    assert rep["cancelled"]["trace"] == trace_of[broke], rep["cancelled"]

    for name in ("console.png", "saga-confirmed.png", "saga-cancelled.png"):
        assert (out / name).stat().st_size > 10000, name
    dest = os.environ.get("RIPPLE_CONSOLE_SCREENSHOT")
    if dest:
        shutil.copy(out / "console.png", os.path.join(dest, "console.png"))
        shutil.copy(out / "saga-cancelled.png", os.path.join(dest, "console-saga.png"))
