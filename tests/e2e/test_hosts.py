"""Modules and hosts (DESIGN.md §11): one process hosting several modules,
each with its own port, database, consumer group and settings.

- `build/ripple NAME...` (or `all`, or RIPPLE_SERVICES) hosts the named
  modules in one loop; `build/<name>` is a host of one (every other e2e
  suite runs those).
- <NAME>_<VAR> wins over <VAR> for that module; a bare PORT or DB_PATH is
  refused in a host of several; an unknown module is refused with the list;
  a module's bad setting names the module and the variable; a module that
  cannot open its database stops the host at start with one line; nothing
  listens unless every module started.
- Each log line names its module; SIGTERM stops every module and leaves
  nothing unpublished.

The saga, orders and Redis-outage suites run in both topologies too (their
`topology` / `stack` parameters); the saga's crash tests kill -9 the whole
host mid burst.
"""

import json
import resource
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import (HOST, MODULE_NAMES, binary, service_env, service_token, stable_port,
                      unique_email, wait_until)

pytestmark = pytest.mark.fresh_redis

FAST = {"CONSUMER_BLOCK_MS": 200, "RECLAIM_IDLE_MS": 2000, "PBKDF2_ITERATIONS": 1000}


def run_host(args, env_extra, tmp_path, timeout=15, preexec_fn=None):
    """Runs build/ripple args expecting it to exit; (returncode, stderr)."""
    env = service_env(None, tmp_path, "ripple", 0, env_extra)
    env.pop("PORT", None)
    env.pop("DB_PATH", None)
    for k, v in env_extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    p = subprocess.run([str(binary("ripple")), *args], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
                       cwd=str(tmp_path), preexec_fn=preexec_fn)
    return p.returncode, p.stderr.decode(errors="replace")


def plain_lines(stderr):
    """The lines of stderr that are not JSON log lines: the one-line errors."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("{")]


def listening(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def test_unknown_module_is_refused_with_the_list(tmp_path):
    rc, err = run_host(["users", "shipping"], {}, tmp_path)
    assert rc == 1, err
    lines = plain_lines(err)
    assert len(lines) == 1, err
    assert '"shipping"' in lines[0]
    for name in MODULE_NAMES:
        assert name in lines[0], lines[0]


def test_no_module_named_is_refused(tmp_path):
    rc, err = run_host([], {"RIPPLE_SERVICES": None}, tmp_path)
    assert rc == 1, err
    assert "name the modules" in plain_lines(err)[0], err


@pytest.mark.parametrize("var", ["PORT", "DB_PATH"])
def test_bare_port_or_db_path_refused_with_several_modules(tmp_path, var):
    value = str(stable_port()) if var == "PORT" else str(tmp_path / "shared.db")
    rc, err = run_host(["users", "orders"], {var: value}, tmp_path)
    assert rc == 1, err
    lines = plain_lines(err)
    assert len(lines) == 1, err
    assert var in lines[0] and f"_{var}" in lines[0], lines[0]
    assert not (tmp_path / "shared.db").exists()


def test_a_modules_bad_setting_names_the_module_and_variable(tmp_path):
    ports = {n: stable_port() for n in ("users", "orders")}
    env = {"USERS_PORT": ports["users"], "ORDERS_PORT": ports["orders"],
           "ORDERS_SAGA_TIMEOUT_MS": "soon",
           "USERS_DB_PATH": tmp_path / "u.db", "ORDERS_DB_PATH": tmp_path / "o.db"}
    rc, err = run_host(["users", "orders"], env, tmp_path)
    assert rc == 1, err
    lines = plain_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("orders: ") and "ORDERS_SAGA_TIMEOUT_MS" in lines[0], lines[0]
    assert not listening(ports["users"]) and not listening(ports["orders"])


def test_a_module_that_cannot_open_its_database_stops_the_host(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    ports = {n: stable_port() for n in MODULE_NAMES}
    env = {f"{n.upper()}_PORT": p for n, p in ports.items()}
    env.update({f"{n.upper()}_DB_PATH": tmp_path / f"{n}.db" for n in MODULE_NAMES})
    env["PAYMENTS_DB_PATH"] = blocker / "payments.db"
    rc, err = run_host(["all"], env, tmp_path)
    assert rc == 1, err
    lines = plain_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("payments: ") and "DB_PATH" in lines[0], lines[0]
    assert not any(listening(p) for p in ports.values())


def test_prefixed_settings_win_and_each_module_has_its_own_group(host_factory, r):
    views = host_factory(["users", "payments"], shared={**FAST, "CONSUMER_NAME": "bare-name"},
                         per={"payments": {"CONSUMER_NAME": "payments-own"}})
    for v in views.values():
        v.wait_ready()
    users = views["users"]
    u = users.create_user(email=unique_email("host"))
    # payments opens the account from users.events: its own group, consumer
    # name from PAYMENTS_CONSUMER_NAME; users' consumer keeps the bare name.
    tok = service_token()
    wait_until(lambda: views["payments"].get(f"/api/v1/accounts/{u['id']}",
                                             token=tok).status == 200,
               15, what="the account opened through users.events")
    groups = {g["name"] for g in r.xinfo_groups("users.events")}
    assert groups == {"payments"}, groups
    consumers = {c["name"] for c in r.xinfo_consumers("users.events", "payments")}
    assert consumers == {"payments-own"}, consumers
    consumers = {c["name"] for c in r.xinfo_consumers("users.commands", "users")}
    assert consumers == {"bare-name"}, consumers
    # each module answers only its own routes on its own port
    assert users.get(f"/api/v1/accounts/{u['id']}", token=tok).status == 404
    assert views["payments"].get(f"/api/v1/users/{u['id']}", token=tok).status == 404
    assert Path(users.db_path).exists() and Path(views["payments"].db_path).exists()
    assert users.db_path != views["payments"].db_path


def test_ripple_services_selects_the_modules(redis_server, tmp_path):
    ports = {n: stable_port() for n in ("users", "inventory")}
    env = service_env(redis_server, tmp_path, "ripple", 0, {"RIPPLE_SERVICES": "users,inventory"})
    env.pop("PORT")
    env.pop("DB_PATH")
    for n, p in ports.items():
        env[f"{n.upper()}_PORT"] = str(p)
        env[f"{n.upper()}_DB_PATH"] = str(tmp_path / f"{n}.db")
    err = open(tmp_path / "host.stderr", "wb")
    proc = subprocess.Popen([str(binary("ripple"))], env=env, stdout=subprocess.DEVNULL,
                            stderr=err, stdin=subprocess.DEVNULL, cwd=str(tmp_path))
    err.close()
    try:
        for p in ports.values():
            wait_until(lambda p=p: listening(p), 15, what=f"port {p}")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    text = (tmp_path / "host.stderr").read_text()
    assert "hosting 2 modules" in text, text


def log_records(text):
    out = []
    for ln in text.splitlines():
        if ln.startswith("{"):
            out.append(json.loads(ln))
    return out


def monolith(host_factory, threads=False):
    """The four modules in one host, orders asking the co-hosted users over
    loopback; every module ready. threads: RIPPLE_THREADS=1, a loop and a
    thread for each module."""
    ports = {n: stable_port() for n in MODULE_NAMES}
    views = host_factory(MODULE_NAMES, shared={**FAST, "RIPPLE_THREADS": int(threads)},
                         ports=ports,
                         per={"orders": {"USERS_URL": f"http://{HOST}:{ports['users']}"}})
    for v in views.values():
        v.wait_ready()
    assert len({v.proc.pid for v in views.values()}) == 1
    return views, ports


def order_confirmed(views, tag):
    """A new user's order placed on the host's orders and awaited CONFIRMED;
    its id."""
    users = views["users"]
    token = users.login(users.create_user(email=unique_email(tag))["email"])
    resp = views["orders"].post("/api/v1/orders", {"items": [{"sku": "SKU-1", "qty": 1}]},
                                token=token)
    assert resp.status == 202, resp
    oid = resp.json()["id"]
    wait_until(lambda: views["orders"].get(f"/api/v1/orders/{oid}", token=token).json()["status"]
               == "CONFIRMED", 20, what="the order confirmed")
    return oid


def hosting_line(views):
    """The host's "hosting N modules in one process, ..." log line."""
    recs = log_records(Path(next(iter(views.values())).stderr_path).read_text())
    return next(rec["msg"] for rec in recs if rec["msg"].startswith("hosting "))


def thread_names(pid):
    """The names (comm) of the process's threads."""
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:  # a thread that just ended
            pass
    return names


@pytest.mark.parametrize("threads", [False, True], ids=["one-loop", "threads"])
def test_sigterm_stops_every_module_and_leaves_nothing_unpublished(host_factory, r, threads):
    views, _ = monolith(host_factory, threads)
    line = hosting_line(views)
    if threads:
        assert line == "hosting 4 modules in one process, each on a loop and a thread of its own"
    else:
        assert line == "hosting 4 modules in one process, on one loop"
    stop_and_check(views, r)


def test_with_threads_each_module_runs_on_a_thread_of_its_own(host_factory, r):
    many, _ = monolith(host_factory, threads=True)
    names = thread_names(many["users"].proc.pid)
    for module in MODULE_NAMES:
        assert names.count(module) == 1, names
    # the saga crosses the threads: an order confirmed end to end (the
    # password hashes run on libuv's pool: its threads are not named after
    # whichever module used it first)
    order_confirmed(many, "thr")
    names = thread_names(many["users"].proc.pid)
    for module in MODULE_NAMES:
        assert names.count(module) == 1, names
    # and on one loop, no thread is a module's
    many["users"].stop()
    one, _ = monolith(host_factory)
    assert not set(thread_names(one["users"].proc.pid)) & set(MODULE_NAMES)


@pytest.mark.parametrize("threads", ["0", "1"], ids=["one-loop", "threads"])
def test_a_port_taken_stops_every_module_cleanly(tmp_path, redis_server, threads):
    """orders cannot listen (its port is taken): users, which listened
    already, stops again; exit status 1 with the reason, and no module is
    left listening."""
    ports = {n: stable_port() for n in ("users", "orders")}
    env = {"USERS_PORT": ports["users"], "ORDERS_PORT": ports["orders"],
           "USERS_DB_PATH": tmp_path / "u.db", "ORDERS_DB_PATH": tmp_path / "o.db",
           "REDIS_URL": redis_server.url, "RIPPLE_THREADS": threads}
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((HOST, ports["orders"]))
        taken.listen(1)
        rc, err = run_host(["users", "orders"], env, tmp_path, timeout=30)
    assert rc == 1, err
    recs = log_records(err)
    assert any(rec["msg"] == "orders could not start: stopping every module" for rec in recs), err
    assert {rec["service"] for rec in recs if rec["msg"] == "stopped"} == {"users", "orders"}, err
    assert not listening(ports["users"])


def limit_open_files(n):
    def apply():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


@pytest.mark.parametrize("max_conns,warned", [(None, True), (100, False)])
def test_too_few_open_files_for_the_connections_is_said(tmp_path, redis_server, max_conns,
                                                        warned):
    """With `ulimit -n` 1024, two modules' 4096 connections each cannot all
    be open: the host says so, with the way out; with 100 each it can, and
    says nothing. (orders' port is taken, so the host stops right after.)"""
    port = stable_port()
    env = {"USERS_PORT": stable_port(), "ORDERS_PORT": port,
           "USERS_DB_PATH": tmp_path / "u.db", "ORDERS_DB_PATH": tmp_path / "o.db",
           "REDIS_URL": redis_server.url}
    if max_conns is not None:
        env.update(USERS_HTTP_MAX_CONNECTIONS=max_conns, ORDERS_HTTP_MAX_CONNECTIONS=max_conns)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((HOST, port))
        taken.listen(1)
        rc, err = run_host(["users", "orders"], env, tmp_path, timeout=30,
                           preexec_fn=limit_open_files(1024))
    assert rc == 1, err
    said = [rec["msg"] for rec in log_records(err) if rec["msg"].startswith("open files")]
    if warned:
        assert len(said) == 1 and "limited to 1024" in said[0] and "8320" in said[0] \
            and "ulimit -n" in said[0], err
    else:
        assert said == [], err


def test_a_bad_ripple_threads_is_refused(tmp_path):
    rc, err = run_host(["users", "orders"], {"RIPPLE_THREADS": "yes"}, tmp_path)
    assert rc == 1, err
    lines = plain_lines(err)
    assert len(lines) == 1 and "RIPPLE_THREADS" in lines[0], err


def stop_and_check(views, r):
    users = views["users"]
    u = users.create_user(email=unique_email("stop"))
    token = users.login(u["email"])
    placed = []
    for _ in range(5):
        resp = views["orders"].post("/api/v1/orders", {"items": [{"sku": "SKU-1", "qty": 1}]},
                                    token=token)
        assert resp.status in (202, 503), resp
        if resp.status == 202:
            placed.append(resp.json()["id"])
    rc = users.stop()
    assert rc == 0, users.log_text()[-2000:]
    for name, v in views.items():
        db = sqlite3.connect(f"file:{v.db_path}?mode=ro", uri=True)
        try:
            left = db.execute("SELECT count(*) FROM outbox_backlog").fetchone()
        finally:
            db.close()
        assert left == (0,), f"{name}: {left[0]} outbox rows unpublished after SIGTERM"
    text = Path(users.stderr_path).read_text()
    recs = log_records(text)
    stopped = {rec["service"] for rec in recs if rec["msg"] == "stopped"}
    assert stopped == set(views), stopped


def test_each_log_line_names_its_module(host_factory, r):
    views, ports = monolith(host_factory)
    users = views["users"]
    order_confirmed(views, "logs")
    assert users.stop() == 0
    recs = log_records(Path(users.stderr_path).read_text())
    assert {rec["service"] for rec in recs} <= set(MODULE_NAMES) | {"ripple"}
    # the port each module listens on is in its own line
    for rec in recs:
        if rec["msg"].startswith("listening on http://"):
            port = int(rec["msg"].rsplit(":", 1)[1])
            assert ports[rec["service"]] == port, rec
    # each consumer's Redis connection is its module's
    owner = {"users.commands": "users", "orders.commands": "orders",
             "inventory.events": "orders", "payments.events": "orders",
             "inventory.commands": "inventory", "payments.commands": "payments",
             "users.events": "payments"}
    seen = set()
    for rec in recs:
        for stream, module in owner.items():
            if rec["msg"].startswith(f"redis {stream}: "):
                assert rec["service"] == module, rec
                seen.add(stream)
    assert seen == set(owner), seen
    assert {rec["service"] for rec in recs if rec["msg"] == "stopped"} == set(MODULE_NAMES)
    assert any(rec["service"] == "ripple" and rec["msg"] == "received SIGTERM" for rec in recs)
