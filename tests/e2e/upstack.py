"""The whole stack the way `make up` starts it, for the tests of what a new
user runs (test_docs.py, test_newuser.py).

UpStack runs a launcher -- by default scripts/up, the command behind
`make up` -- on free ports (USERS_PORT, ORDERS_PORT, INVENTORY_PORT,
PAYMENTS_PORT, REDIS_PORT) with a data directory of its own (UP_DIR), the
binaries of RIPPLE_BIN and the tests' JWT_SECRET, waits for its "ripple is
up" line, and stops it with SIGTERM (it must exit 0).

Launchers: RIPPLE_UP_LAUNCHERS lists the topologies to run the tests in, as
"name=command args;name=command args" (commands run from the repository's
root); the default is both topologies of DESIGN.md §11, "split=scripts/up;
monolith=env TOPOLOGY=monolith scripts/up". launcher_params() turns them into
pytest params.
"""

import os
import re
import shlex
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import (BIN_DIR, HOST, JWT_SECRET, REPO, STARTUP_TIMEOUT, STOP_TIMEOUT,
                      http_request, stable_port, wait_until)

SERVICES = ("users", "orders", "inventory", "payments")
DEFAULT_PORTS = {"users": 8001, "orders": 8002, "inventory": 8003, "payments": 8004}
PORT_VARS = {"users": "USERS_PORT", "orders": "ORDERS_PORT", "inventory": "INVENTORY_PORT",
             "payments": "PAYMENTS_PORT"}
# Settings of the caller's environment that would change the stack's story.
SCRUB = ("REDIS_URL", "REDIS_PORT", "DB_PATH", "PORT", "HOST", "UP_DIR", "USERS_URL",
         "SAGA_TIMEOUT_MS", "CHAOS_", "HTTP_", "OUTBOX_", "INBOX_", "CONSUMER_", "MAX_DELIVERIES",
         "RECLAIM_IDLE_MS", "STREAM_MAXLEN", "INITIAL_CREDIT_CENTS", "LOG_LEVEL", "JWT_SECRET",
         "USERS_PORT", "ORDERS_PORT", "INVENTORY_PORT", "PAYMENTS_PORT", "TOPOLOGY",
         "RIPPLE_SERVICES", "USERS_", "ORDERS_", "INVENTORY_", "PAYMENTS_")
UP_LINE = "ripple is up"


def launchers():
    spec = (os.environ.get("RIPPLE_UP_LAUNCHERS") or
            "split=scripts/up;monolith=env TOPOLOGY=monolith scripts/up")
    out = []
    for part in spec.split(";"):
        if part.strip():
            name, _, cmd = part.partition("=")
            out.append((name.strip(), shlex.split(cmd)))
    return out


def launcher_params():
    return [pytest.param(cmd, id=name) for name, cmd in launchers()]


def streams_max_qty():
    """STREAMS_MAX_QTY as ripple/streams.h defines it: the one quantity limit."""
    text = (REPO / "include" / "ripple" / "streams.h").read_text()
    m = re.search(r"^#define STREAMS_MAX_QTY (\d+)\s*$", text, re.MULTILINE)
    assert m, "include/ripple/streams.h defines no STREAMS_MAX_QTY"
    return int(m.group(1))


class UpStack:
    """A running stack. Attributes: ports {service: port}, redis_port,
    data_dir, proc, env (what the launcher got); output() is everything it
    printed so far."""

    def __init__(self, launcher, data_dir, env_extra=None, fixed_redis=True):
        self.launcher = list(launcher)
        self.data_dir = Path(data_dir)
        self.env_extra = dict(env_extra or {})
        self.fixed_redis = fixed_redis
        self.ports = {}
        self.redis_port = None
        self.proc = None
        self._lines = []
        self._lock = threading.Lock()
        self._reader = None

    # -- process -------------------------------------------------------------
    def _env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
        env.update({
            "RIPPLE_BIN": str(BIN_DIR),
            "UP_DIR": str(self.data_dir),
            "JWT_SECRET": JWT_SECRET,
            "PBKDF2_ITERATIONS": "1000",
            "LOG_LEVEL": "info",
        })
        for name in SERVICES:
            env[PORT_VARS[name]] = str(self.ports[name])
        if self.redis_port is not None:
            env["REDIS_PORT"] = str(self.redis_port)
        env.update({k: str(v) for k, v in self.env_extra.items()})
        return env

    def _read(self):
        for raw in self.proc.stdout:
            with self._lock:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def output(self):
        with self._lock:
            return "\n".join(self._lines)

    def _spawn(self):
        self.ports = {name: stable_port() for name in SERVICES}
        self.redis_port = stable_port() if self.fixed_redis else None
        self._lines = []
        self.env = self._env()
        self.proc = subprocess.Popen(self.launcher, cwd=str(REPO), env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def start(self):
        """Starts the launcher and waits for its "ripple is up" line. A port
        taken between our pick and its check (other test runs share the
        host) is retried on other ports."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        timeout = 4 * STARTUP_TIMEOUT + 10  # redis, then four services in turn
        for _ in range(3):
            self._spawn()

            def state():
                if UP_LINE in self.output():
                    return "up"
                return None if self.proc.poll() is None else "exited"

            if wait_until(state, timeout, interval=0.05, what="the stack's 'ripple is up'") == "up":
                if self.redis_port is None:
                    m = re.search(r"redis\s+redis://[0-9.]+:(\d+)", self.output())
                    assert m, f"no redis line in the launcher's output:\n{self.output()}"
                    self.redis_port = int(m.group(1))
                return self
            self._reader.join(5)
            if "in use" not in self.output():
                pytest.fail(f"{' '.join(self.launcher)} exited with {self.proc.returncode} "
                            f"before the stack was up:\n{self.output()[-4000:]}")
        pytest.fail(f"{' '.join(self.launcher)}: ports taken three times:\n{self.output()}")

    def stop(self, timeout=4 * STOP_TIMEOUT):
        """SIGTERM; returns the exit status (None after SIGKILL on timeout)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        self._reader.join(5)
        return rc

    # -- talking to it -------------------------------------------------------
    def base(self, name):
        return f"http://{HOST}:{self.ports[name]}"

    def request(self, name, method, path, **kw):
        return http_request(HOST, self.ports[name], method, path, **kw)

    def get(self, name, path, **kw):
        return self.request(name, "GET", path, **kw)

    def post(self, name, path, body=None, **kw):
        return self.request(name, "POST", path, body=body, **kw)

    def redis(self):
        import redis  # redis-py: only the tests that talk to Redis need it
        return redis.Redis(host=HOST, port=self.redis_port, decode_responses=True,
                           socket_timeout=10, socket_connect_timeout=2)

    def order(self, order_id, token):
        r = self.get("orders", f"/api/v1/orders/{order_id}", token=token)
        return r.json() if r.status == 200 else None

    def wait_order(self, order_id, token, statuses=("CONFIRMED", "REJECTED", "CANCELLED"),
                   timeout=30):
        """Polls the order until its status is one of statuses; returns it."""
        def done():
            o = self.order(order_id, token)
            return o if o and o["status"] in statuses else None
        return wait_until(done, timeout, interval=0.05,
                          what=f"order {order_id} to reach {'/'.join(statuses)}")

    def log_files(self):
        return sorted(p.name for p in self.data_dir.glob("*.log"))

    def wait_log(self, needle, timeout=20):
        """Polls the stack's log files for a line containing needle."""
        def found():
            for p in self.data_dir.glob("*.log"):
                if needle in p.read_text(errors="replace"):
                    return True
            return False
        wait_until(found, timeout, what=f"a log line with {needle!r} in {self.data_dir}")


def stack_fixture(request, tmp_path_factory, **kw):
    """Starts an UpStack for request.param (a launcher); yields it; stops it
    and requires exit status 0."""
    stack = UpStack(request.param, tmp_path_factory.mktemp("up"), **kw).start()
    try:
        yield stack
    finally:
        rc = stack.stop()
        assert rc == 0, f"the launcher exited with {rc} after SIGTERM:\n{stack.output()[-3000:]}"


def wait_ready_all(stack, timeout=STARTUP_TIMEOUT):
    for name in SERVICES:
        wait_until(lambda n=name: stack.get(n, "/readyz", timeout=2).status == 200, timeout,
                   what=f"{name} /readyz")
