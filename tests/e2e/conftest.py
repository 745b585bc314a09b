"""Black-box fixtures for ripple's end-to-end tests.

The tests run the real binaries from RIPPLE_BIN (default <repo>/build) against
a real redis-server on a free loopback port, each service with a fresh SQLite
file in a temporary directory. Only the standard library (plus python3-redis,
not needed yet) is used: http.client for ordinary requests, raw sockets where
the wire matters.

Synchronisation is always a poll with a deadline (wait_until), never a bare
sleep.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("RIPPLE_BIN") or REPO / "build").resolve()
HOST = "127.0.0.1"
JWT_SECRET = "e2e-test-secret-0123456789abcdef-0123456789"  # >= 32 bytes
STARTUP_TIMEOUT = float(os.environ.get("RIPPLE_STARTUP_TIMEOUT", "20"))
STOP_TIMEOUT = float(os.environ.get("RIPPLE_STOP_TIMEOUT", "15"))
# Scales the few wall-clock bounds the tests hold (a stop that must be quick,
# a GET that must not queue behind a hash): 1 in `make test`, larger under
# the sanitizers and valgrind, whose builds run several times slower.
TIME_SLACK = float(os.environ.get("RIPPLE_TIME_SLACK", "1"))


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def free_port():
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _ephemeral_range():
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def stable_port():
    """A free TCP port outside the kernel's ephemeral range. A server stopped
    by a test comes back on the same port after a pause; a port from the
    ephemeral range (free_port) could meanwhile become some connection's
    source port, or be handed by free_port to another test's server (other
    sessions run e2e tests on this machine too)."""
    lo, hi = _ephemeral_range()
    pool = (10000, lo - 1) if lo > 12000 else (hi + 1, 65000)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(*pool)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    return free_port()


def wait_until(predicate, timeout, interval=0.02, what="condition"):
    """Polls predicate() until it returns a truthy value or the deadline
    passes; returns that value or raises AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def unique_email(prefix="user"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def is_uuid(s):
    try:
        uuid.UUID(str(s))
    except ValueError:
        return False
    return len(str(s)) == 36


# ---------------------------------------------------------------------------
# JWT (HS256) in pure Python, for service tokens and forgeries
# ---------------------------------------------------------------------------

def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    s = s + "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s.encode())


def jwt_sign(claims, secret=JWT_SECRET, alg="HS256", header=None):
    """Signs claims. alg may be HS256, HS384, HS512 or none (no signature)."""
    hdr = header if header is not None else {"alg": alg, "typ": "JWT"}
    signing_input = (b64url(json.dumps(hdr, separators=(",", ":"))) + "." +
                     b64url(json.dumps(claims, separators=(",", ":"))))
    if alg == "none":
        return signing_input + "."
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    key = secret.encode() if isinstance(secret, str) else secret
    sig = hmac.new(key, signing_input.encode(), digest).digest()
    return signing_input + "." + b64url(sig)


def jwt_decode(token):
    """(header, claims, signature bytes) without verifying."""
    h, c, s = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(c)), b64url_decode(s)


def jwt_verify_hs256(token, secret=JWT_SECRET):
    h, c, s = token.split(".")
    want = hmac.new(secret.encode(), f"{h}.{c}".encode(), hashlib.sha256).digest()
    return hmac.compare_digest(want, b64url_decode(s))


def service_token(sub="service:test", ttl=300, secret=JWT_SECRET, **extra):
    now = int(time.time())
    claims = {"sub": sub, "role": "service", "iat": now, "exp": now + ttl}
    claims.update(extra)
    return jwt_sign(claims, secret)


def user_token(sub, ttl=300, secret=JWT_SECRET, **extra):
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + ttl}
    claims.update(extra)
    return jwt_sign(claims, secret)


# ---------------------------------------------------------------------------
# HTTP over http.client
# ---------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-cased names
        self.body = body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise AssertionError(f"body is not JSON ({exc}): {self.body[:300]!r}") from None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


# ---------------------------------------------------------------------------
# Answers seen, for tests/e2e/test_openapi.py: every answer http_request gets
# from a port a module of ours listens on (launch and launch_host note which)
# is kept -- a few per (module, method, path, status) -- and the last test of
# the session validates them against the module's documented schemas.
# ---------------------------------------------------------------------------

PORT_MODULE = {}          # port -> module name, as the services were started
ANSWERS = {}              # (module, method, path, status) -> [Response]
ANSWERS_PER_KEY = 3
ANSWERS_MAX = 50000


def note_module(port, name):
    PORT_MODULE[int(port)] = name


def record_answer(port, method, path, resp):
    name = PORT_MODULE.get(int(port))
    if name is None or len(ANSWERS) >= ANSWERS_MAX:
        return
    seen = ANSWERS.setdefault((name, method, path, resp.status), [])
    if len(seen) < ANSWERS_PER_KEY:
        seen.append(resp)


def http_request(host, port, method, path, body=None, headers=None, token=None, timeout=15,
                 raw_body=None):
    """One request on a fresh connection. body is JSON-encoded; raw_body is sent as is.
    The answer is recorded for test_openapi (see record_answer)."""
    resp = _http_request(host, port, method, path, body, headers, token, timeout, raw_body)
    record_answer(port, method, path, resp)
    return resp


def _http_request(host, port, method, path, body, headers, token, timeout, raw_body):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if raw_body is not None:
            data = raw_body if isinstance(raw_body, bytes) else raw_body.encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def assert_error(resp, status, code=None):
    """Asserts resp is status with the JSON error shape of DESIGN.md §4 and
    returns the inner error object."""
    assert resp.status == status, f"expected {status}, got {resp.status}: {resp.body[:300]!r}"
    ctype = resp.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"error content-type {ctype!r}"
    j = resp.json()
    assert isinstance(j, dict) and isinstance(j.get("error"), dict), f"not an error body: {j!r}"
    err = j["error"]
    assert isinstance(err.get("code"), str) and err["code"], f"error.code missing: {j!r}"
    assert isinstance(err.get("message"), str) and err["message"], f"error.message missing: {j!r}"
    if code is not None:
        assert err["code"] == code, f"expected code {code!r}, got {err['code']!r}: {j!r}"
    return err


# ---------------------------------------------------------------------------
# Raw sockets
# ---------------------------------------------------------------------------

class ConnectionClosed(Exception):
    pass


class RawResponse(Response):
    """A Response read off a RawClient's socket, with its reason phrase;
    headers: lower-cased names -> last value."""

    def __init__(self, status, reason, headers, body):
        super().__init__(status, headers, body)
        self.reason = reason

    def __repr__(self):
        return f"<RawResponse {self.status} {self.body[:200]!r}>"


def raw_request(method, path, body=None, headers=None, token=None, host="127.0.0.1"):
    """Bytes of one HTTP/1.1 request. body: bytes/str sent as is, dict -> JSON."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + (body or b"")


class RawClient:
    """A TCP connection with an HTTP/1.1 response parser on top."""

    def __init__(self, port, host=HOST, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self):
        """Closes with an RST (SO_LINGER 0)."""
        import struct
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self, deadline):
        if self.eof:
            raise ConnectionClosed("connection closed by peer")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed waiting for data")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("deadline passed waiting for data") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            self.eof = True
            raise ConnectionClosed(f"connection reset: {exc}") from None
        if not chunk:
            self.eof = True
            raise ConnectionClosed("connection closed by peer")
        self.buf += chunk

    def _read_until(self, sep, deadline):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + len(sep)]
                return out
            self._fill(deadline)

    def _read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, timeout=10, method="GET"):
        deadline = time.monotonic() + timeout
        head = self._read_until(b"\r\n\r\n", deadline).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        assert parts[0].startswith("HTTP/1."), f"bad status line {lines[0]!r}"
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self._read_until(b"\r\n", deadline).split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n", deadline)  # no trailers expected
                    break
                body += self._read_exact(size, deadline)
                self._read_exact(2, deadline)
            body = bytes(body)
        elif "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]), deadline)
        else:  # until close
            while True:
                try:
                    self._fill(deadline)
                except ConnectionClosed:
                    break
            body = bytes(self.buf)
            self.buf.clear()
        return RawResponse(status, reason, headers, body)

    def request(self, method, path, timeout=10, **kw):
        self.send(raw_request(method, path, **kw))
        return self.read_response(timeout=timeout, method=method)

    def wait_closed(self, timeout=5):
        """True when the peer closes (FIN or RST) within timeout; data that
        arrives meanwhile is kept in self.buf."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(deadline)
            except ConnectionClosed:
                return True
            except TimeoutError:
                return False

    def is_open(self):
        """Non-blocking check: False if the peer has closed."""
        if self.eof:
            return False
        self.sock.setblocking(False)
        try:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
                return False
            self.buf += chunk
            return True
        except BlockingIOError:
            return True
        except (ConnectionResetError, BrokenPipeError):
            self.eof = True
            return False
        finally:
            self.sock.setblocking(True)


# ---------------------------------------------------------------------------
# redis-server
# ---------------------------------------------------------------------------

class RedisServer:
    """A redis-server a test runs on 127.0.0.1: .port, .url, .workdir,
    .proc; down() (SIGTERM: with AOF on, it writes its file first), up()
    (the same port and dir, loading the AOF if on). The port is a
    stable_port(), so nothing else takes it while the server is down."""

    def __init__(self, workdir, aof=False):
        self.workdir = Path(workdir)
        self.aof = aof
        self.port = None
        self.proc = None

    @property
    def url(self):
        return f"redis://{HOST}:{self.port}"

    def args(self):
        persist = (["--appendonly", "yes", "--appendfsync", "always"] if self.aof
                   else ["--appendonly", "no"])
        return [shutil.which("redis-server"), "--port", str(self.port), "--bind", HOST,
                "--save", "", *persist, "--daemonize", "no", "--dir", str(self.workdir)]

    def log_tail(self, n=2000):
        try:
            return (self.workdir / "redis.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def ping(self):
        with socket.create_connection((HOST, self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def _spawn(self, timeout):
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.ping():
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return False

    def start(self):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (scripts/install-deps installs it)")
        for _ in range(3):
            self.port = stable_port()
            if self._spawn(10):
                return self
        pytest.fail(f"redis-server did not start: {self.log_tail()}")

    def down(self, timeout=15):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def up(self, timeout=15):
        """Starts again on the same port and dir (loading the AOF, if on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._spawn(max(0.5, deadline - time.monotonic())):
                return self
        raise AssertionError(f"redis-server did not restart on port {self.port}: "
                             f"{self.log_tail()}")

    def client(self, **kw):
        import redis  # redis-py: only the tests that talk to Redis need it
        kw.setdefault("socket_timeout", 10)
        kw.setdefault("socket_connect_timeout", 2)
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, **kw)


def start_redis(workdir, aof=False):
    """A new RedisServer in workdir, running (fails the test if it cannot)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return RedisServer(workdir, aof).start()


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory):
    srv = start_redis(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.down()


@pytest.fixture
def redis_server(request, session_redis, tmp_path):
    """The session's redis-server; in a module marked fresh_redis (its tests
    stop, restart or FLUSHALL Redis, or count every entry of a stream), a
    fresh one per test, with AOF on for the indirect parameter "aof"."""
    if request.node.get_closest_marker("fresh_redis") is None:
        yield session_redis
        return
    srv = start_redis(tmp_path / "redis", aof=getattr(request, "param", None) == "aof")
    yield srv
    srv.down()


@pytest.fixture
def r(redis_server):
    """A redis-py client (str values) on the test's server."""
    c = redis_server.client()
    yield c
    c.close()


# ---------------------------------------------------------------------------
# Service processes
# ---------------------------------------------------------------------------

def binary(name):
    path = BIN_DIR / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make` first (or set RIPPLE_BIN)")
    return path


class Service:
    """A running service binary, or one module of a host (module=True: proc
    is the host's, shared with its other modules, and the log is the host's
    lines of this module). Attributes: name, host, port, base, proc,
    stderr_path, db_path, env."""

    def __init__(self, name, port, proc, stderr_path, db_path, env, module=False):
        self.name = name
        self.module = module
        self.host = HOST
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.proc = proc
        self.stderr_path = stderr_path
        self.db_path = db_path
        self.env = env
        self.expect_exit = 0  # asserted at teardown after SIGTERM; None: don't check
        self.stopped_rc = None

    # -- HTTP ---------------------------------------------------------------
    def request(self, method, path, **kw):
        return http_request(self.host, self.port, method, path, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def raw(self, timeout=10):
        return RawClient(self.port, timeout=timeout)

    # -- users API helpers --------------------------------------------------
    def create_user(self, name="Test User", email=None, password="correct horse battery",
                    timeout=15):
        email = email or unique_email()
        r = self.post("/api/v1/users", {"name": name, "email": email, "password": password},
                      timeout=timeout)
        assert r.status == 201, f"create user: {r.status} {r.body[:300]!r}"
        return r.json()

    def login(self, email, password="correct horse battery"):
        r = self.post("/api/v1/auth/token", {"email": email, "password": password})
        assert r.status == 200, f"login: {r.status} {r.body[:300]!r}"
        return r.json()["access_token"]

    # -- process ------------------------------------------------------------
    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        text = Path(self.stderr_path).read_text(errors="replace")
        if not self.module:
            return text
        tag = f'"service":"{self.name}"'
        return "".join(ln for ln in text.splitlines(keepends=True) if tag in ln)

    def log_lines(self):
        return [ln for ln in self.log_text().splitlines() if ln.strip()]

    def metrics(self):
        r = self.get("/metrics")
        assert r.status == 200, r
        return r.text

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends sig and waits for the exit; returns the exit status (killed
        with SIGKILL and returns None after timeout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.stopped_rc = None
                return None
        self.stopped_rc = self.proc.returncode
        return self.stopped_rc

    def wait_ready(self, timeout=STARTUP_TIMEOUT):
        """Polls /readyz until 200 (the database open and Redis connected:
        the connection is made asynchronously after /healthz first answers).
        Fails the test with the last answer and the stderr tail on timeout."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before /readyz "
                            f"answered 200; stderr tail:\n{self.log_text()[-2000:]}")
            try:
                last = self.get("/readyz", timeout=2)
                if last.status == 200:
                    return last
            except OSError as e:
                last = e
            time.sleep(0.02)
        pytest.fail(f"{self.name} /readyz not 200 within {timeout}s (last: {last}); "
                    f"stderr tail:\n{self.log_text()[-2000:]}")

    def listening(self):
        """True once this process logged that it listens: a /healthz answer
        before that may come from another process on the port (other test
        sessions on the machine take ports too; ours then exits with
        "cannot listen ... address already in use")."""
        if self.env.get("LOG_LEVEL", "info") not in ("debug", "info"):
            return True  # the line is not logged at this level
        return any("listening on http://" in ln and f':{self.port}"' in ln
                   for ln in self.log_lines())

    def wait_healthy(self, timeout=STARTUP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if not self.listening():
                time.sleep(0.02)
                continue
            try:
                if self.get("/healthz", timeout=2).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False


MODULE_NAMES = ("users", "orders", "inventory", "payments")
MODULE_PREFIXES = tuple(m.upper() + "_" for m in MODULE_NAMES)
TOPOLOGIES = ("split", "monolith")


def service_env(redis, tmpdir, name, port, extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HTTP_", "PBKDF2", "JWT_", "DB_PATH", "REDIS_URL", "LOG_LEVEL",
                                "SHUTDOWN_", "PORT", "HOST", "RIPPLE_SERVICES") + MODULE_PREFIXES)}
    env.update({
        "PORT": str(port),
        "HOST": HOST,
        "DB_PATH": str(Path(tmpdir) / f"{name}.db"),
        "JWT_SECRET": JWT_SECRET,
        "LOG_LEVEL": "info",
        "PBKDF2_ITERATIONS": "1000",
        "REDIS_URL": redis.url if redis else "redis://127.0.0.1:1",
    })
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def valgrind_prefix(name):
    """RIPPLE_VALGRIND="users" (a comma-separated list) runs those services
    under valgrind (make check-valgrind): any error, or a definite or
    indirect leak at exit, makes the exit status 99, which the teardown's
    exit-0 check reports."""
    wanted = [n for n in os.environ.get("RIPPLE_VALGRIND", "").split(",") if n]
    if name not in wanted:
        return []
    return ["valgrind", "--quiet", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99", "--trace-children=no"]


def launch(name, redis, tmpdir, env_extra=None, wait=True, exe=None):
    """Starts build/<name> (or the binary exe); retries on a port race.
    Returns a Service."""
    exe = exe or binary(name)
    env_extra = dict(env_extra or {})
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = int(env_extra["PORT"]) if "PORT" in env_extra else free_port()
        env = service_env(redis, tmpdir, name, port, env_extra)
        stderr_path = tmpdir / f"{name}-{port}.stderr"
        err = open(stderr_path, "wb")
        proc = subprocess.Popen(valgrind_prefix(name) + [str(exe)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err,
                                stdin=subprocess.DEVNULL, cwd=str(tmpdir))
        err.close()
        svc = Service(name, port, proc, stderr_path, env["DB_PATH"], env)
        note_module(port, name)
        if not wait or svc.wait_healthy():
            return svc
        log = svc.log_text()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail(f"{name} did not answer /healthz within {STARTUP_TIMEOUT}s; "
                        f"stderr:\n{log[-3000:]}")
        if "PORT" not in env_extra and ("in use" in log.lower() or "EADDRINUSE" in log):
            continue
        pytest.fail(f"{name} exited with {proc.returncode} at start; stderr:\n{log[-3000:]}")
    pytest.fail(f"{name}: no free port after 3 attempts")


@pytest.fixture
def service_factory(redis_server, tmp_path):
    """start(name="users", **env) -> Service. Every service started is sent
    SIGTERM at teardown and must exit 0 (unless svc.expect_exit is None or
    the test stopped it itself)."""
    started = []
    counter = [0]

    def start(name="users", wait=True, exe=None, **env):
        counter[0] += 1
        svc = launch(name, redis_server, tmp_path / f"{name}{counter[0]}", env, wait=wait, exe=exe)
        started.append(svc)
        return svc

    yield start

    problems = []
    for svc in started:
        if svc.proc.poll() is None:
            rc = svc.stop()
            if svc.expect_exit is not None and rc != svc.expect_exit:
                problems.append(f"{svc.name} on port {svc.port}: exit status {rc} after "
                                f"SIGTERM, expected {svc.expect_exit}; stderr tail:\n"
                                f"{svc.log_text()[-2000:]}")
    if problems:
        pytest.fail("\n".join(problems))


def launch_host(names, redis, tmpdir, shared=None, per=None, ports=None, db_paths=None,
                wait=True, exe=None):
    """Starts ONE build/ripple process (or the host binary exe) hosting the
    modules names (DESIGN.md §11): shared settings as they are, per[name]
    settings with the module's prefix (ORDERS_SAGA_TIMEOUT_MS), each module
    on its own port (ports[name] or a stable_port()) and database. Returns
    {name: Service} views that share the process."""
    exe = exe or binary("ripple")
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    per, ports, db_paths = per or {}, dict(ports or {}), dict(db_paths or {})
    env = service_env(redis, tmpdir, "ripple", 0, dict(shared or {}))
    env.pop("PORT", None)
    env.pop("DB_PATH", None)
    for n in names:
        pre = n.upper().replace("-", "_") + "_"
        ports.setdefault(n, stable_port())
        db_paths.setdefault(n, str(tmpdir / f"{n}.db"))
        env[pre + "PORT"] = str(ports[n])
        env[pre + "DB_PATH"] = db_paths[n]
        for k, v in per.get(n, {}).items():
            if v is None:
                env.pop(pre + k, None)
            else:
                env[pre + k] = str(v)
    stderr_path = tmpdir / f"ripple-{ports[names[0]]}-{time.monotonic_ns()}.stderr"
    err = open(stderr_path, "wb")
    proc = subprocess.Popen([str(exe), *names], env=env, stdout=subprocess.DEVNULL, stderr=err,
                            stdin=subprocess.DEVNULL, cwd=str(tmpdir))
    err.close()
    views = {n: Service(n, ports[n], proc, stderr_path, db_paths[n], env, module=True)
             for n in names}
    for n in names:
        note_module(ports[n], n)
    if wait:
        for n in names:
            if not views[n].wait_healthy():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                pytest.fail(f"host of {names}: {n} did not answer /healthz; stderr:\n"
                            f"{Path(stderr_path).read_text(errors='replace')[-3000:]}")
    return views


@pytest.fixture
def host_factory(redis_server, tmp_path):
    """start(names, shared={}, per={}, ports={}, db_paths={}) -> {name:
    Service} of one host process. Every host started is sent SIGTERM at
    teardown and must exit 0 (unless a view's expect_exit is None)."""
    started = []
    counter = [0]

    def start(names, **kw):
        counter[0] += 1
        views = launch_host(list(names), redis_server, tmp_path / f"host{counter[0]}", **kw)
        started.append(views)
        return views

    yield start

    problems = []
    for views in started:
        first = next(iter(views.values()))
        if first.proc.poll() is None:
            rc = first.stop()
            if all(v.expect_exit is not None for v in views.values()) and rc != 0:
                problems.append(f"host of {list(views)}: exit status {rc} after SIGTERM; "
                                f"stderr tail:\n"
                                f"{Path(first.stderr_path).read_text(errors='replace')[-2000:]}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def users(service_factory):
    """A users service with defaults (PBKDF2_ITERATIONS=1000), ready: its
    database open and Redis connected."""
    svc = service_factory("users")
    svc.wait_ready()
    return svc


def run_to_exit(name, env_extra, redis=None, tmpdir=None, timeout=10):
    """Runs build/<name> expecting it to exit on its own (config errors).
    Returns (returncode, stderr text)."""
    exe = binary(name)
    tmpdir = Path(tmpdir)
    env = service_env(redis, tmpdir, name, env_extra.pop("PORT", free_port()), env_extra)
    try:
        p = subprocess.run([str(exe)], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=timeout, cwd=str(tmpdir))
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{name} did not exit within {timeout}s with env {env_extra}; "
                             f"stderr: {exc.stderr!r}") from None
    return p.returncode, p.stderr.decode(errors="replace")


def pytest_collection_modifyitems(session, config, items):
    """Tests marked last run after every other (test_openapi's check of the
    answers the whole session saw)."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "last: runs after every other test of the session (sorted there)")
    config.addinivalue_line(
        "markers", "slow: long crash/chaos tests; they run by default, -m 'not slow' skips them")
    config.addinivalue_line(
        "markers", "fresh_redis: a redis-server of its own for each test (see redis_server)")
