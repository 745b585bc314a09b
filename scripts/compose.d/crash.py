#!/usr/bin/python3
"""crash.py -- the saga crash test of tests/e2e/test_saga.py, run against the
container stack (scripts/compose-test calls it; root, local daemon).

    crash.py --project NAME [--map users=users,...] -- COMPOSE_ARGS...

It is run_crash_burst() itself, unchanged: 5 users, a burst of 200 orders
(POST /orders from 4 threads, order.place by XADD from another) while
inventory, payments and orders are each killed once (here `docker kill`,
SIGKILL to the container) at a random moment and started again (`docker
start`: the same container, so the same host name and consumer name, the
same volume), one of them down for longer than SAGA_TIMEOUT_MS. Then every
order must be final, one order per XADD entry, the list API agreeing with
the database, the invariants of DESIGN.md §8 holding, every outbox drained,
nothing pending, no dead letter. Only what the test asks of its stack is
provided here, for containers:

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
orders, inventory and payments (default: its own; a topology hosting several
in one container maps them all to it). Afterwards the stack is stopped with
SIGTERM (docker-compose stop) and every service container must exit 0.
Exit status 0 when everything held, 1 otherwise; RIPPLE_CHAOS_SEED replays
the random choices as in the test. The caller removes the stack (down -v).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import conftest  # noqa: E402  (after the path)
import test_saga  # noqa: E402

SERVICES = test_saga.SERVICES
DATA_DIR = "/var/lib/ripple/data"  # each service's DB_PATH is DATA_DIR/<name>.db
UP_TIMEOUT = 180                   # compose up, then every container healthy


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
    file where its container's volume lies on this host."""

    def __init__(self, name, port, container, db_path):
        super().__init__(name, port, container, None, db_path, {})

    def log_text(self):
        r = subprocess.run(["docker", "logs", "--tail", "400", self.proc.cid],
                           capture_output=True, text=True, timeout=30)
        return r.stdout + r.stderr


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
    docker start (same container, volume, port and consumer name)."""

    def __init__(self, redis_at, services):
        super().__init__(None, redis_at, {}, {})
        for name, svc in services.items():
            self.svc[name] = svc
            self.lives[name].append(svc)

    def kill9(self, name):
        svc = self.svc[name]
        svc.expect_exit = None
        docker("kill", svc.proc.cid)
        conftest.wait_until(lambda: svc.proc.poll() is not None, 10,
                            what=f"{name}'s container to stop")

    def restart(self, name, timeout=20):
        svc = self.svc[name]
        docker("start", svc.proc.cid)
        self.wait_ready(name, timeout)
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


def make_factory(compose):
    """stack_factory for run_crash_burst: the stack up with the test's
    settings, as a ContainerStack."""

    def start(saga_timeout_ms=None, initial_credit=None, **_env):
        ports = {name: conftest.stable_port() for name in SERVICES}
        redis_port = conftest.stable_port()
        env = {f"{name.upper()}_PORT": str(p) for name, p in ports.items()}
        env.update(REDIS_PORT=str(redis_port), PUBLISH_IP=conftest.HOST,
                   JWT_SECRET=conftest.JWT_SECRET)
        if saga_timeout_ms is not None:
            env["SAGA_TIMEOUT_MS"] = str(saga_timeout_ms)
        if initial_credit is not None:
            env["INITIAL_CREDIT_CENTS"] = str(initial_credit)
        t0 = time.monotonic()
        compose.run("up", "-d", "--no-build", env=env, timeout=UP_TIMEOUT)
        compose.wait_healthy(max(10, UP_TIMEOUT - (time.monotonic() - t0)))
        services = {}
        for name in SERVICES:
            cid = compose.container(compose.mapping[name])
            db = host_path(cid, f"{DATA_DIR}/{name}.db")
            services[name] = ContainerService(name, ports[name], Container(cid), db)
        st = ContainerStack(RedisAt(redis_port), services)
        for name in SERVICES:
            st.wait_ready(name, 60)
        print(f"stack up in {time.monotonic() - t0:.1f}s: " +
              ", ".join(f"{n} {s.proc} :{s.port}" for n, s in services.items()) +
              f", redis :{redis_port}", flush=True)
        return st
    return start


def stop_cleanly(compose):
    """SIGTERM to every service (docker-compose stop): each must exit 0."""
    t0 = time.monotonic()
    compose.run("stop", "-t", "30", timeout=180)
    bad = []
    for cid in {compose.container(compose.mapping[name]) for name in SERVICES}:
        name, code = inspect(cid, "{{.Name}} {{.State.ExitCode}}").split()
        if code != "0":
            bad.append(f"{name} exited {code} after SIGTERM")
    if bad:
        raise AssertionError("; ".join(bad))
    print(f"stopped with SIGTERM in {time.monotonic() - t0:.1f}s: every service exited 0")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project")
    ap.add_argument("--map", default="", help="users=SVC,orders=SVC,... (default: its own)")
    ap.add_argument("compose_args", nargs="*")
    a = ap.parse_args()
    if not a.project:
        ap.error("--project is required")
    mapping = {name: name for name in SERVICES}
    for pair in filter(None, a.map.split(",")):
        name, _, svc = pair.partition("=")
        mapping[name] = svc
    compose = Compose(a.project, a.compose_args, mapping)
    try:
        test_saga.run_crash_burst(make_factory(compose), redis_restart=False)
        stop_cleanly(compose)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        print(f"crash test FAILED: {exc}", file=sys.stderr)
        return 1
    print("crash test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
