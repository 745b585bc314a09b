#!/usr/bin/python3
"""crash.py -- the saga crash test of tests/e2e/test_saga.py, run against the
container stack (scripts/compose-test calls it; root, local daemon).

    crash.py --project NAME [--map users=users,...] -- COMPOSE_ARGS...

It is run_crash_burst() itself, unchanged: 5 users, a burst of 200 orders
(POST /orders from 4 threads, order.place by XADD from another) while
inventory, payments and orders are each killed once (here `docker kill`,
SIGKILL to the container) at a random moment and started again (`docker
start`: the same container, so the same host name and consumer name, the
same volume), one of them down for longer than SAGA_TIMEOUT_MS; in the
monolith each kill takes the one container, every module, down at once.
Then every order must be final, one order per XADD entry, the list API
agreeing with the database, the invariants of DESIGN.md §8 holding, every
outbox drained, nothing pending, no dead letter. Only what the test asks of
its stack is provided here, for containers:

  - `docker-compose -p NAME COMPOSE_ARGS up -d` with the test's settings
    (SAGA_TIMEOUT_MS, INITIAL_CREDIT_CENTS, the e2e JWT secret) and free
    ports published on 127.0.0.1 (USERS_PORT ..., REDIS_PORT: the compose
    files read them), then every container healthy and every /readyz 200;
  - each service as conftest.Service over its published port, its process
    being its container, its log `docker logs`, and its database read where
    the container's volume lies on this host (hence root and a local
    daemon), read-only and live, as the test reads its SQLite files;
  - kill9/restart as docker kill/docker start.

--map NAME=COMPOSE_SERVICE says which compose service hosts each of users,
orders, inventory, payments and console (default: its own; a topology
hosting several in one container maps them all to it). Then the console
(CONSOLE_PORT, published like the others) must report what Redis says of
every stream -- its length, each group's lag and pending, equal to XLEN and
XINFO GROUPS -- and each of the four services up and ready, hosted in its
own process ("this process") exactly when the map puts it in the console's
container. Afterwards the stack is stopped with SIGTERM (docker-compose
stop) and every container of a module must exit 0. Exit status 0 when
everything held, 1 otherwise; RIPPLE_CHAOS_SEED replays the random choices
as in the test. The caller removes the stack (down -v).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import conftest  # noqa: E402  (after the path)
import test_saga  # noqa: E402

SERVICES = test_saga.SERVICES
MODULES = (*SERVICES, "console")
DATA_DIR = "/var/lib/ripple/data"  # each service's DB_PATH is DATA_DIR/<name>.db
UP_TIMEOUT = 180                   # compose up, then every container healthy
# What docker says when a port it is to publish was bound meanwhile.
PORT_TAKEN = re.compile(r"port is already allocated|address already in use", re.I)


def docker(*args, timeout=60, check=True):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout.strip()


def inspect(cid, fmt):
    return docker("inspect", "-f", fmt, cid)


class Container:
    """What Stack, Service and Chaos ask of a service's process (poll, pid,
    returncode), for the container that hosts it."""

    def __init__(self, cid):
        self.cid = cid

    def _state(self):
        running, code, pid = inspect(self.cid, "{{.State.Running}} {{.State.ExitCode}} "
                                               "{{.State.Pid}}").split()
        return running == "true", int(code), int(pid)

    def poll(self):
        running, code, _ = self._state()
        return None if running else code

    @property
    def returncode(self):
        return self.poll()

    @property
    def pid(self):
        return self._state()[2]

    def __str__(self):
        return self.cid[:12]


class ContainerService(conftest.Service):
    """A service in a container: HTTP on its published port; its database
    file where its container's volume lies on this host. module: the
    container hosts other modules too (its log is theirs as well)."""

    def __init__(self, name, port, container, db_path, module=False):
        super().__init__(name, port, container, None, db_path, {}, module=module)

    def log_text(self):
        r = subprocess.run(["docker", "logs", "--tail", "1000" if self.module else "400",
                            self.proc.cid], capture_output=True, text=True, timeout=30)
        text = r.stdout + r.stderr
        if not self.module:
            return text
        tag = f'"service":"{self.name}"'
        return "".join(ln for ln in text.splitlines(keepends=True) if tag in ln)


class RedisAt:
    """The stack's Redis as the test sees one: a port and client()."""

    def __init__(self, port):
        self.port = port
        self.url = f"redis://{conftest.HOST}:{port}"

    def client(self, **kw):
        import redis
        kw.setdefault("socket_timeout", 10)
        kw.setdefault("socket_connect_timeout", 2)
        return redis.Redis(host=conftest.HOST, port=self.port, decode_responses=True, **kw)


class ContainerStack(test_saga.Stack):
    """test_saga.Stack over containers: kill9 is docker kill, restart is
    docker start (same container, volume, port and consumer name). Both act
    on the container, so on every module it hosts."""

    def __init__(self, redis_at, services):
        super().__init__(None, redis_at, {}, {})
        for name, svc in services.items():
            self.svc[name] = svc
            self.lives[name].append(svc)

    def beside(self, name):
        """The services in name's container, name included."""
        cid = self.svc[name].proc.cid
        return [n for n, s in self.svc.items() if s.proc.cid == cid]

    def kill9(self, name):
        svc = self.svc[name]
        for other in self.beside(name):
            self.svc[other].expect_exit = None
        docker("kill", svc.proc.cid)
        conftest.wait_until(lambda: svc.proc.poll() is not None, 10,
                            what=f"{name}'s container to stop")

    def restart(self, name, timeout=20):
        svc = self.svc[name]
        docker("start", svc.proc.cid)
        for other in self.beside(name):
            self.wait_ready(other, timeout)
        return svc


def host_path(cid, path):
    """Where path inside container cid lies on this host (a volume or bind
    mount), or raises."""
    mounts = json.loads(inspect(cid, "{{json .Mounts}}"))
    best = max((m for m in mounts if path.startswith(m["Destination"].rstrip("/") + "/")),
               key=lambda m: len(m["Destination"]), default=None)
    if best is None:
        raise AssertionError(f"{path} is on no volume of container {cid[:12]}")
    host = Path(best["Source"]) / os.path.relpath(path, best["Destination"])
    if not os.access(host.parent, os.R_OK | os.X_OK):
        raise AssertionError(f"{host.parent} (the volume holding {path}) is not readable here: "
                             f"the check reads the databases on this host (root, local daemon)")
    return str(host)


class Compose:
    def __init__(self, project, args, mapping):
        self.base = ["docker-compose", "-p", project, *args]
        self.mapping = mapping

    def run(self, *args, env=None, timeout=120):
        r = subprocess.run(self.base + list(args), capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, **(env or {})})
        if r.returncode != 0:
            raise AssertionError(f"{' '.join(self.base + list(args))}: exit {r.returncode}\n"
                                 f"{r.stdout}{r.stderr}")
        return r.stdout

    def container(self, service):
        cid = self.run("ps", "-q", service).strip()
        if not cid:
            raise AssertionError(f"compose service {service} has no container")
        return cid

    def wait_healthy(self, timeout):
        """Every container of the project running and healthy (those with a
        healthcheck); fails at once, with its log, if one exits."""
        def healthy():
            ids = self.run("ps", "-q").split()
            for cid in ids:
                state = inspect(cid, "{{.Name}} {{.State.Status}} "
                                     "{{if .State.Health}}{{.State.Health.Status}}{{end}}").split()
                if state[1] in ("exited", "dead"):
                    raise SystemExit(f"{state[0]} exited at start:\n"
                                     f"{docker('logs', '--tail', '30', cid, check=False)}")
                if state[1] != "running" or state[2:] not in ([], ["healthy"]):
                    return False
            return bool(ids)
        conftest.wait_until(healthy, timeout, interval=0.5, what="every container healthy")


def free_ports(names):
    """A distinct free port for each name (conftest.stable_port: outside the
    kernel's ephemeral range)."""
    ports = {}
    while len(set(ports.values())) < len(names):
        ports = {name: conftest.stable_port() for name in names}
    return ports


def make_factory(compose, published):
    """stack_factory for run_crash_burst: the stack up with the test's
    settings, as a ContainerStack. published gets each module's port and
    redis's."""

    def up(settings):
        """compose up -d with free ports published; again with others (three
        tries) when one was taken meanwhile by something else here."""
        for attempt in range(3):
            ports = free_ports([*MODULES, "redis"])
            env = {f"{name.upper()}_PORT": str(p) for name, p in ports.items()}
            env.update(settings)
            try:
                compose.run("up", "-d", "--no-build", env=env, timeout=UP_TIMEOUT)
                return ports
            except AssertionError as exc:
                if attempt == 2 or not PORT_TAKEN.search(str(exc)):
                    raise
                print("a port to publish was taken meanwhile: again, with other ports",
                      flush=True)

    def start(saga_timeout_ms=None, initial_credit=None, **_env):
        settings = dict(PUBLISH_IP=conftest.HOST, CONSOLE_PUBLISH_IP=conftest.HOST,
                        JWT_SECRET=conftest.JWT_SECRET)
        if saga_timeout_ms is not None:
            settings["SAGA_TIMEOUT_MS"] = str(saga_timeout_ms)
        if initial_credit is not None:
            settings["INITIAL_CREDIT_CENTS"] = str(initial_credit)
        t0 = time.monotonic()
        ports = up(settings)
        published.update(ports)
        redis_port = ports["redis"]
        compose.wait_healthy(max(10, UP_TIMEOUT - (time.monotonic() - t0)))
        services = {}
        for name in SERVICES:
            cid = compose.container(compose.mapping[name])
            db = host_path(cid, f"{DATA_DIR}/{name}.db")
            shared = sum(compose.mapping[n] == compose.mapping[name] for n in MODULES) > 1
            services[name] = ContainerService(name, ports[name], Container(cid), db, shared)
        st = ContainerStack(RedisAt(redis_port), services)
        for name in SERVICES:
            st.wait_ready(name, 60)
        print(f"stack up in {time.monotonic() - t0:.1f}s: " +
              ", ".join(f"{n} {s.proc} :{s.port}" for n, s in services.items()) +
              f", console :{ports['console']}, redis :{redis_port}", flush=True)
        return st
    return start


def check_console(compose, port, redis_at):
    """The console, after the burst (everything quiet): its streams report
    is what Redis says, its services report every service up and ready,
    hosted in its process exactly when it shares the console's container."""
    con = conftest.Service("console", port, None, None, None, {})
    r = redis_at.client()
    got = {}

    def report(what):
        res = con.get(f"/api/v1/console/{what}", timeout=10)
        assert res.status == 200, f"GET /api/v1/console/{what}: {res.status} {res.body[:300]!r}"
        return res.json()["items"]

    def streams_match():
        want = {}
        for key in sorted(r.scan_iter(_type="stream")):
            groups = {g["name"]: (g["pending"], g["lag"]) for g in r.xinfo_groups(key)}
            want[key] = (r.xlen(key), groups)
        have = {s["name"]: (s["length"], {g["name"]: (g["pending"], g["lag"])
                                          for g in s["groups"]}) for s in report("streams")}
        got.update(want=want, have=have)
        return want == have
    try:
        conftest.wait_until(streams_match, 15, interval=0.25,
                            what="the console's streams report to equal XLEN and XINFO GROUPS")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nredis:   {got.get('want')}\nconsole: {got.get('have')}")
    want = got["want"]
    for key in ("orders.commands", "inventory.commands", "payments.commands", "users.events"):
        assert key in want and want[key][1], f"{key} with its groups is not in {want}"

    home = compose.mapping["console"]
    hosted = {n: "this process" if compose.mapping[n] == home else "remote" for n in SERVICES}

    def services_up():
        by = {s["name"]: s for s in report("services")}
        got["services"] = {n: (s["health"], s["ready"], s["hosted"]) for n, s in by.items()}
        return got["services"] == {n: ("up", True, hosted[n]) for n in SERVICES}
    try:
        conftest.wait_until(services_up, 15, interval=0.25,
                            what="the console's services report: each up, ready, "
                                 "hosted where the topology puts it")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {got.get('services')}")
    r.close()
    total = sum(n for n, _ in want.values())
    print(f"console: {len(want)} streams ({total} entries) as XINFO says; "
          f"services: " + ", ".join(f"{n} {hosted[n]}" for n in SERVICES))


def stop_cleanly(compose):
    """SIGTERM to every module (docker-compose stop): each container of a
    module must exit 0."""
    t0 = time.monotonic()
    compose.run("stop", "-t", "30", timeout=180)
    bad = []
    for cid in {compose.container(compose.mapping[name]) for name in MODULES}:
        name, code = inspect(cid, "{{.Name}} {{.State.ExitCode}}").split()
        if code != "0":
            bad.append(f"{name} exited {code} after SIGTERM")
    if bad:
        raise AssertionError("; ".join(bad))
    print(f"stopped with SIGTERM in {time.monotonic() - t0:.1f}s: every module exited 0")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project")
    ap.add_argument("--map", default="", help="users=SVC,...,console=SVC (default: its own)")
    ap.add_argument("compose_args", nargs="*")
    a = ap.parse_args()
    if not a.project:
        ap.error("--project is required")
    mapping = {name: name for name in MODULES}
    for pair in filter(None, a.map.split(",")):
        name, _, svc = pair.partition("=")
        if name not in mapping or not svc:
            ap.error(f"--map: {pair!r} is not NAME=COMPOSE_SERVICE with NAME one of {MODULES}")
        mapping[name] = svc
    compose = Compose(a.project, a.compose_args, mapping)
    published = {}
    try:
        test_saga.run_crash_burst(make_factory(compose, published), redis_restart=False)
        check_console(compose, published["console"], RedisAt(published["redis"]))
        stop_cleanly(compose)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        print(f"crash test FAILED: {exc}", file=sys.stderr)
        return 1
    print("crash test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
