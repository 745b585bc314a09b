"""scripts/bench's saga pieces, quickly and without the services: the wrk
script's pacing and counts, the completion wait, the histogram arithmetic and
the settings the bench refuses. `make bench` itself takes minutes and is not
part of the suite; these check that its scripts parse and do what the tables
say, against small fake servers on 127.0.0.1.
"""
import http.server
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "scripts" / "bench.d"
PY = "/usr/bin/python3"


class FakeServer:
    """A threaded HTTP/1.1 server on a free loopback port; handler(req) ->
    (status, body bytes) for every request, req being the handler object."""

    def __init__(self, handler):
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                status, body = handler(self)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()
        outer.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def test_the_scripts_parse():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "bench")], check=True, timeout=30)
    for py in sorted(HELPERS.glob("*.py")):
        subprocess.run([PY, "-m", "py_compile", str(py)], check=True, timeout=30)


@pytest.mark.parametrize("env, says", [
    ({"BENCH_SAGA_RATE": "2000"}, "BENCH_SAGA_RATES"),
    ({"BENCH_SAGA_RATES": "2000 fast"}, "'fast' is not a positive integer"),
    ({"BENCH_SAGA_RATES": " "}, "names no rate"),
    ({"BENCH_SAGA_DRIVER": "ab"}, "wrk or python"),
    ({"BENCH_SAGA_HOPS": "yes"}, "0 or 1"),
])
def test_bench_refuses_bad_saga_settings_before_starting_anything(env, says):
    full = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    full.update(env, BENCH_PARTS="saga")
    r = subprocess.run([str(ROOT / "scripts" / "bench")], env=full, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and says in r.stderr, (r.returncode, r.stderr)
    assert "redis" not in r.stdout, r.stdout


def test_a_failed_run_keeps_its_logs_and_says_where(tmp_path):
    """A service that dies at start fails the run; its temporary directory
    (the service's log, its database) stays, and the bench says where."""
    fake = tmp_path / "bin"
    fake.mkdir()
    users = fake / "users"
    users.write_text("#!/bin/sh\necho 'users: refusing to start (a test)' >&2\nexit 3\n")
    users.chmod(0o755)
    full = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    full.update(BENCH_PARTS="read", RIPPLE_BIN=str(fake))
    r = subprocess.run([str(ROOT / "scripts" / "bench")], env=full, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0, r.stdout
    m = re.search(r"logs and databases kept in (\S+)", r.stderr)
    assert m, r.stderr
    kept = Path(m.group(1))
    try:
        assert kept.is_dir()
        assert "refusing to start (a test)" in (kept / "users.log").read_text()
    finally:
        shutil.rmtree(kept, ignore_errors=True)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_saga_post_lua_paces_and_counts_errors(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("good\nbad\n")
    seen = []

    def handler(req):
        seen.append((req.command, req.path, req.headers.get("Authorization")))
        return (202, b'{"id":"x"}') if req.headers["Authorization"] == "Bearer good" \
            else (409, b"{}")

    srv = FakeServer(handler)
    try:
        env = dict(os.environ, BENCH_TOKENS=str(tokens), BENCH_SAGA_RATE="200",
                   BENCH_THREADS="1")
        r = subprocess.run(["wrk", "-t1", "-c8", "-d2s", "--timeout", "2s", "-s",
                            str(HELPERS / "saga_post.lua"), srv.url],
                           env=env, capture_output=True, text=True, timeout=60)
    finally:
        srv.close()
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_RESULT "))
    got = dict(kv.split("=", 1) for kv in line.split()[1:])
    n = {k: int(v) for k, v in got.items()}
    # 200/s for wrk's duration (-d2s, a little more in fact): each slot
    # either sent or missed; never more than the rate (a slot of slack at
    # the end), and fewer only by what a busy machine costs wrk's timers
    slots = 200 * n["duration_us"] / 1e6
    assert 0.75 * slots <= n["sent"] + n["missed"] <= slots + 2, got
    assert n["requests"] <= n["sent"], got
    # no response() (it would cost wrk a Lua table per answer): wrk counts
    # the answers of 400 and more itself; the fake answered 409 to "bad"
    bad = sum(1 for _, _, a in seen if a == "Bearer bad")
    assert 0 < n["status"] <= bad < n["requests"], (got, bad)
    assert all(m == "POST" and p == "/api/v1/orders" and a in ("Bearer good", "Bearer bad")
               for m, p, a in seen), seen[:3]


def metrics_text(final, accepted):
    return (f'# TYPE orders_saga_seconds histogram\n'
            f'orders_saga_seconds_bucket{{outcome="confirmed",le="+Inf"}} {final - 1}\n'
            f'orders_saga_seconds_count{{outcome="confirmed"}} {final - 1}\n'
            f'orders_saga_seconds_count{{outcome="cancelled"}} 1\n'
            f'http_requests_total{{route="/api/v1/orders",code="202"}} {accepted}\n'
            f'http_requests_total{{route="/api/v1/orders",code="409"}} 7\n'
            f'http_requests_total{{route="/metrics",code="202"}} 1000\n').encode()


def test_drain_waits_until_every_accepted_order_is_final():
    # baseline 10 final / 10 accepted; then 5 more accepted a scrape, up to
    # 60, each final as soon as it is counted: final and accepted agree in
    # every scrape, but the wait ends only once the 202s stop moving
    state = {"scrapes": 0}
    lock = threading.Lock()

    def handler(req):
        with lock:
            state["scrapes"] += 1
            k = state["scrapes"]
        return 200, metrics_text(10 + min(50, 5 * k), 10 + min(50, 5 * k))

    srv = FakeServer(handler)
    try:
        r = subprocess.run([PY, str(HELPERS / "drain.py"), "--orders-port", str(srv.port),
                            "--final0", "10", "--accepted0", "10", "--deadline", "20",
                            "--interval", "0.01"], capture_output=True, text=True, timeout=60)
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    got = dict(kv.split("=", 1) for kv in r.stdout.split())
    assert got["status"] == "ok" and got["final"] == "60" and got["accepted"] == "60", got
    # 60 on the 10th scrape; the 11th sees the 202s unchanged
    assert int(got["polls"]) == state["scrapes"] == 11, (got, state)


def test_drain_gives_up_at_its_deadline():
    srv = FakeServer(lambda req: (200, metrics_text(12, 60)))
    try:
        r = subprocess.run([PY, str(HELPERS / "drain.py"), "--orders-port", str(srv.port),
                            "--final0", "10", "--accepted0", "10", "--deadline", "0.3",
                            "--interval", "0.02"], capture_output=True, text=True, timeout=60)
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    assert re.match(r"status=timeout final=12 accepted=60 ", r.stdout), r.stdout


def test_metrics_quantiles_sum_the_outcomes_of_orders_saga_seconds(tmp_path):
    def scrape(path, conf, canc):
        lines = []
        for outcome, counts in (("confirmed", conf), ("cancelled", canc)):
            for le, c in zip(("0.01", "0.02", "0.05", "+Inf"), counts):
                lines.append(f'orders_saga_seconds_bucket{{outcome="{outcome}",le="{le}"}} {c}')
            lines.append(f'orders_saga_seconds_sum{{outcome="{outcome}"}} {0.015 * counts[-1]}')
            lines.append(f'orders_saga_seconds_count{{outcome="{outcome}"}} {counts[-1]}')
        path.write_text("\n".join(lines) + "\n")

    pre, post = tmp_path / "pre.prom", tmp_path / "post.prom"
    scrape(pre, (5, 5, 5, 5), (0, 0, 0, 0))
    # +100 observations: 40 <= 10 ms, 50 in (10, 20], 10 in (20, 50]
    scrape(post, (45, 85, 95, 95), (0, 10, 10, 10))
    r = subprocess.run([PY, str(HELPERS / "metrics.py"), "quantiles", str(pre), str(post),
                        "orders_saga_seconds", "--q", "0.5", "--q", "0.99"],
                       capture_output=True, text=True, timeout=30, check=True)
    got = dict(kv.split("=", 1) for kv in r.stdout.split())
    assert got["count"] == "100", got
    # rank 50: 10 of the 50 in (10, 20] ms -> 12 ms; rank 99: 9 of the 10 in (20, 50] -> 47 ms
    assert float(got["p50_us"]) == pytest.approx(12000, abs=1), got
    assert float(got["p99_us"]) == pytest.approx(47000, abs=1), got
    assert got["p50_over"] == got["p99_over"] == "0", got


def test_metrics_codes_diffs_the_answers_of_one_route_by_status(tmp_path):
    """The saga's non-202 answers come from orders' http_requests_total
    (saga_post.lua has no response()): other routes, and codes that did not
    move, are not counted."""
    pre, post = tmp_path / "pre.prom", tmp_path / "post.prom"
    pre.write_text('http_requests_total{route="/api/v1/orders",code="202"} 100\n'
                   'http_requests_total{route="/api/v1/orders",code="409"} 3\n'
                   'http_requests_total{route="/metrics",code="200"} 9\n')
    post.write_text('http_requests_total{route="/api/v1/orders",code="202"} 150\n'
                    'http_requests_total{route="/api/v1/orders",code="409"} 3\n'
                    'http_requests_total{route="/api/v1/orders",code="503"} 4\n'
                    'http_requests_total{route="/metrics",code="200"} 19\n')
    r = subprocess.run([PY, str(HELPERS / "metrics.py"), "codes", str(pre), str(post),
                        "--label", "route=/api/v1/orders", "--ok", "202"],
                       capture_output=True, text=True, timeout=30, check=True)
    assert r.stdout.split() == ["ok=50", "other=4", "statuses=503:4"], r.stdout
