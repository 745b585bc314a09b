"""The relay, the Redis connection and the stop deadline under faults, black
box: DESIGN.md §4 (stop within SHUTDOWN_TIMEOUT_MS whatever Redis does), §6
(a wrong-node reply reconnects, re-resolves, not ready meanwhile) and §7 (the
relay marks exactly what Redis accepted, sets aside what it refuses for good,
never re-sends an accepted row), plus the Redis host resolved off the loop.

Every test gets its own redis-server (fresh_redis): they make stream keys
strings, demote the server to a replica, pause it and restart it.

- A stream key of the wrong type: its rows are set aside (outbox_refused_total,
  one log line each), every other stream receives each event exactly once over
  a 10 s window, and after the key is fixed and the rows re-queued with
  scripts/outbox, everything is published in order.
- A mark that fails on a full disk (a small tmpfs: needs root to mount; the
  test is skipped otherwise): the rows Redis accepted are not sent again while
  the mark is retried, and are marked once space is back.
- REPLICAOF another server and back: /readyz goes 503 and stays so while the
  server is a replica, then the service comes back and publishes.
- CLIENT PAUSE, then SIGTERM with SHUTDOWN_TIMEOUT_MS=1000: exit 0 within a
  bound well under the 10 s Redis command timeout; the rows go out at the next
  start.
- A slow resolver (an LD_PRELOAD shim, tests/e2e/slow_dns.c, built with gcc
  here) for the Redis host name: /healthz keeps answering at once while the
  name resolves, at start and at every reconnect; the name is resolved again on
  each reconnect; a failing name is reported and retried; `localhost` connects.

Synchronisation is a deadline poll (wait_until); the only time spent on
purpose is the observation windows in which something must NOT happen (a
re-send, a readiness flap, a stalled /healthz).
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HOST, REPO, TIME_SLACK, start_redis, unique_email, wait_until
from test_streams import metric

pytestmark = pytest.mark.fresh_redis

ORDERS_EVENTS = "orders.events"
INV_CMDS = "inventory.commands"
USERS_EVENTS = "users.events"
ITEMS = [{"sku": "SKU-1", "qty": 1}]
OUTBOX_SCRIPT = REPO / "scripts" / "outbox"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def stream_entries(r, stream):
    """[(entry id, fields)] of a stream; [] when the key is missing."""
    if r.type(stream) != "stream":
        return []
    return r.xrange(stream, "-", "+")


def assert_each_once(entries, what):
    ids = [f.get("id") for _, f in entries]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"{what}: events published more than once: {dupes} in {len(ids)} entries"


def observe(seconds, check, interval=0.2):
    """Runs check() every `interval` for `seconds`: a window in which
    something must not happen (check raises AssertionError if it does)."""
    end = time.monotonic() + seconds
    while True:
        check()
        if time.monotonic() >= end:
            return
        time.sleep(interval)


def traces(entries, type_=None):
    return [f.get("trace") for _, f in entries if type_ is None or f.get("type") == type_]


def outbox_script(*args):
    p = subprocess.run(["/usr/bin/python3", str(OUTBOX_SCRIPT), *map(str, args)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"scripts/outbox {args}: {p.returncode} {p.stdout} {p.stderr}"
    return p.stdout


def readyz_status(svc):
    return svc.get("/readyz", timeout=5).status


# ---------------------------------------------------------------------------
# Issue 20 §2: the relay sets aside what Redis refuses for good
# ---------------------------------------------------------------------------

def test_wrongtype_stream_is_set_aside_and_other_streams_get_each_event_once(
        service_factory, r):
    users = service_factory("users")
    users.wait_ready()
    orders = service_factory("orders", USERS_URL=users.base, SAGA_TIMEOUT_MS=600000)
    orders.wait_ready()
    email = unique_email("relay")
    users.create_user(email=email)
    token = users.login(email)

    # orders.events is made a string: order.placed is refused (WRONGTYPE);
    # stock.reserve, to inventory.commands, must still go out -- once.
    r.set(ORDERS_EVENTS, "not a stream")
    ids = []
    for _ in range(3):
        resp = orders.post("/api/v1/orders", {"items": ITEMS}, token=token)
        assert resp.status == 202, resp
        ids.append(resp.json()["id"])

    wait_until(lambda: len(stream_entries(r, INV_CMDS)) >= 3, 10,
               what="the three stock.reserve commands")

    def only_once():
        entries = stream_entries(r, INV_CMDS)
        assert_each_once(entries, INV_CMDS)
        assert traces(entries) == ids, traces(entries)

    observe(10, only_once)  # before the fix: re-sent at every backoff
    assert metric(orders, "outbox_refused_total") == 3
    assert metric(orders, "outbox_set_aside") == 3
    assert metric(orders, "outbox_backlog") == 0
    assert orders.log_text().count("set aside") == 3, orders.log_text()[-2000:]
    assert r.get(ORDERS_EVENTS) == "not a stream"
    listing = outbox_script("list", orders.db_path)
    assert "3 set-aside row(s)" in listing and listing.count("WRONGTYPE") == 3, listing

    # The operator fixes the key and re-queues: the rows go out in order,
    # and what is committed after them follows.
    r.delete(ORDERS_EVENTS)
    assert "re-queued 3 row(s)" in outbox_script("requeue", orders.db_path, "--all")
    wait_until(lambda: traces(stream_entries(r, ORDERS_EVENTS)) == ids, 10,
               what="the re-queued order.placed events, in order")
    resp = orders.post("/api/v1/orders", {"items": ITEMS}, token=token)
    assert resp.status == 202, resp
    ids.append(resp.json()["id"])
    wait_until(lambda: traces(stream_entries(r, ORDERS_EVENTS)) == ids, 10,
               what="a new order.placed after the re-queued ones")
    wait_until(lambda: traces(stream_entries(r, INV_CMDS)) == ids, 10,
               what="the fourth stock.reserve")
    assert_each_once(stream_entries(r, ORDERS_EVENTS), ORDERS_EVENTS)
    assert_each_once(stream_entries(r, INV_CMDS), INV_CMDS)
    wait_until(lambda: metric(orders, "outbox_set_aside") == 0, 5, what="nothing set aside")
    assert metric(orders, "outbox_backlog") == 0


# ---------------------------------------------------------------------------
# Issue 20 §2: a mark that fails on a full disk re-sends nothing
# ---------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (mount needs root: skipped otherwise), unmounted at
    teardown."""
    disk = tmp_path / "disk"
    disk.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(path):
    """Writes path until the file system is full."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    # the last partial chunk may have left room for a page or two
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


def test_failed_mark_on_full_disk_sends_nothing_twice(service_factory, redis_server, r,
                                                       small_disk):
    users = service_factory("users", DB_PATH=small_disk / "users.db")
    try:
        users.wait_ready()
        redis_server.down()
        made = [users.create_user() for _ in range(3)]  # commit; their events wait
        wait_until(lambda: metric(users, "outbox_backlog") == 3, 10, what="a backlog of 3")
        fill(small_disk / "fill")
        redis_server.up()

        # Redis accepts the three XADDs; recording that fails (disk full).
        wait_until(lambda: len(stream_entries(r, USERS_EVENTS)) >= 3, 15,
                   what="the three user.registered events")

        def only_once():
            entries = stream_entries(r, USERS_EVENTS)
            assert len(entries) == 3, f"{len(entries)} entries: re-sent"
            assert_each_once(entries, USERS_EVENTS)

        observe(8, only_once)  # before the fix: XLEN grew at every backoff
        assert metric(users, "outbox_mark_failures_total") >= 1  # the mark really failed
        assert metric(users, "outbox_backlog") == 3  # not marked yet

        (small_disk / "fill").unlink()
        wait_until(lambda: metric(users, "outbox_backlog") == 0, 15, what="the mark, with space")
        only_once()
        got = sorted(json.loads(f["data"])["user_id"] for _, f in stream_entries(r, USERS_EVENTS))
        assert got == sorted(u["id"] for u in made)
        assert users.stop() == 0
    finally:
        users.stop()  # before the tmpfs goes away


# ---------------------------------------------------------------------------
# Issue 20 §3: READONLY means "wrong node": reconnect, not ready meanwhile
# ---------------------------------------------------------------------------

def test_replicaof_makes_it_unready_and_back_it_recovers(service_factory, r, tmp_path):
    users = service_factory("users", CONSUMER_BLOCK_MS=200)
    users.wait_ready()
    primary = start_redis(tmp_path / "primary")
    try:
        r.replicaof(HOST, primary.port)  # our server is now a read-only replica
        made = users.create_user()  # its XADD is refused: READONLY
        wait_until(lambda: readyz_status(users) == 503, 10, what="/readyz 503 on a replica")
        body = users.get("/readyz").json()
        assert body["checks"]["redis"] == "down", body

        def not_ready():
            assert readyz_status(users) == 503, "ready again while the server is a replica"

        observe(3, not_ready)  # reconnecting finds a replica again: stays down
        log = users.log_text()
        assert "READONLY" in log or "not a primary" in log, log[-2000:]

        r.replicaof("NO", "ONE")
        wait_until(lambda: readyz_status(users) == 200, 20, what="ready on the primary again")

        def published():
            return any(json.loads(f["data"]).get("user_id") == made["id"]
                       for _, f in stream_entries(r, USERS_EVENTS))

        wait_until(published, 15, what="the user.registered refused while a replica")
    finally:
        primary.down()


# ---------------------------------------------------------------------------
# Issue 20 §7: the stop deadline bounds everything
# ---------------------------------------------------------------------------

def test_stop_with_a_paused_redis_meets_shutdown_timeout(service_factory, redis_server, r):
    users = service_factory("users", SHUTDOWN_TIMEOUT_MS=1000, CONSUMER_BLOCK_MS=200)
    users.wait_ready()
    r.execute_command("CLIENT", "PAUSE", "40000", "ALL")
    made = users.create_user()  # commits; its XADD hangs in the paused server
    wait_until(lambda: metric(users, "outbox_backlog") == 1, 10, what="an unpublished row")

    t0 = time.monotonic()
    rc = users.stop(timeout=30)
    took = time.monotonic() - t0
    assert rc == 0, users.log_text()[-2000:]
    bound = 1.0 + 2.5 * TIME_SLACK  # the 1 s deadline, exit and slack; 10 s before the fix
    assert took < bound, f"stopped after {took:.1f} s (bound {bound:.1f} s)"

    # CLIENT PAUSE ALL holds even CLIENT UNPAUSE: restart the server.
    redis_server.down()
    redis_server.up()
    again = service_factory("users", DB_PATH=users.db_path)
    again.wait_ready()

    def published():
        return any(json.loads(f["data"]).get("user_id") == made["id"]
                   for _, f in stream_entries(r, USERS_EVENTS))

    wait_until(published, 15, what="the row left in the outbox, published at the next start")


# ---------------------------------------------------------------------------
# Issue 12: the Redis host is resolved off the loop
# ---------------------------------------------------------------------------

SLOW_NAME = "redis.slow-dns.test"


@pytest.fixture
def slow_dns(tmp_path):
    """env for a service whose getaddrinfo of SLOW_NAME is slow (the shim of
    tests/e2e/slow_dns.c, built here); dict with a 'log' path counting
    lookups."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler for the resolver shim")
    so = tmp_path / "slow_dns.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(so),
                    str(REPO / "tests" / "e2e" / "slow_dns.c"), "-ldl"], check=True)
    log = tmp_path / "lookups.log"
    asan = os.environ.get("ASAN_OPTIONS", "")
    return {
        "LD_PRELOAD": str(so),
        "SLOW_DNS_NAME": SLOW_NAME,
        "SLOW_DNS_LOG": str(log),
        # the sanitizer build wants its runtime first; the shim passes through
        "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0",
        "log": log,
    }


def lookups(env):
    try:
        return Path(env["log"]).read_text().count("\n")
    except OSError:
        return 0


def worst_healthz(svc, seconds):
    """The slowest /healthz answer over a window of `seconds`, on one
    keep-alive connection: a new connection per probe would also time the
    kernel's handshake, and on a loaded host a lost SYN costs a 1 s
    retransmission that says nothing about the loop."""
    worst = 0.0
    end = time.monotonic() + seconds
    with svc.raw(timeout=30) as c:
        while time.monotonic() < end:
            t0 = time.monotonic()
            assert c.request("GET", "/healthz", timeout=30).status == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.05)  # probe pacing inside the window
    return worst


def test_slow_resolver_never_stalls_the_loop(service_factory, redis_server, slow_dns):
    delay = 2.0 * TIME_SLACK  # each lookup of the name; a stalled loop shows as much
    env = {k: v for k, v in slow_dns.items() if k != "log"}
    users = service_factory("users", SLOW_DNS_MS=int(delay * 1000),
                            REDIS_URL=f"redis://{SLOW_NAME}:{redis_server.port}", **env)
    # at start: the command connection, then the consumer's, resolve the name
    worst = worst_healthz(users, 1.5 * delay)
    print(f"slowest /healthz while the name resolved at start: {worst:.3f} s")
    assert worst < delay / 2, f"/healthz took {worst:.2f} s while the name resolved"
    users.wait_ready(timeout=10 * delay)
    # one lookup per connection: the consumer's starts once the command one is up
    wait_until(lambda: lookups(slow_dns) >= 2, 10 * delay, what="the consumer's lookup")
    before = lookups(slow_dns)

    # a lost connection resolves the name again, on every attempt, off the loop
    redis_server.down()
    worst = worst_healthz(users, 1.5 * delay)  # reconnects at once, then backs off
    print(f"slowest /healthz while reconnecting: {worst:.3f} s")
    assert worst < delay / 2, f"/healthz took {worst:.2f} s while reconnecting"
    redis_server.up()
    users.wait_ready(timeout=10 * delay)
    assert lookups(slow_dns) > before
    users.create_user()  # and it works through the name


def test_unresolvable_redis_host_is_reported_and_keeps_serving(service_factory, slow_dns):
    env = {k: v for k, v in slow_dns.items() if k != "log"}
    users = service_factory("users", SLOW_DNS_MS=200, SLOW_DNS_ADDR="fail",
                            REDIS_URL=f"redis://{SLOW_NAME}:6379", **env)
    wait_until(lambda: "cannot resolve" in users.log_text(), 10, what="the resolver failure logged")
    assert users.get("/healthz").status == 200
    assert readyz_status(users) == 503
    n = lookups(slow_dns)
    wait_until(lambda: lookups(slow_dns) > n, 15, what="another attempt")
    assert users.log_text().count("cannot resolve") == 1  # once per outage


def test_localhost_connects(service_factory, redis_server, r):
    users = service_factory("users", REDIS_URL=f"redis://localhost:{redis_server.port}")
    users.wait_ready()
    made = users.create_user()
    wait_until(lambda: any(json.loads(f["data"]).get("user_id") == made["id"]
                           for _, f in stream_entries(r, USERS_EVENTS)), 10,
               what="the event, through localhost")
