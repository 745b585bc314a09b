"""Operating ripple: the compose files (compose.yaml, the split stack;
compose.monolith.yaml, one container of every module) and the Dockerfile
stay valid and in step with the services, and scripts/dlq round-trips a dead
letter through a real service."""
import os
import re
import shutil
import subprocess

import pytest
import redis as redislib
import yaml

from conftest import REPO, stable_port, wait_until

SERVICES = {"users": 8001, "orders": 8002, "inventory": 8003, "payments": 8004}
CONSOLE_PORT = 8000


def compose(*args, file="compose.yaml"):
    return subprocess.run(["docker-compose", "-f", str(REPO / file), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("file", ["compose.yaml", "compose.monolith.yaml"])
def test_compose_file_is_valid(file):
    assert shutil.which("docker-compose"), "scripts/install-deps installs docker-compose"
    r = compose("config", "-q", file=file)
    assert r.returncode == 0, r.stderr
    r = compose("--profile", "demo", "config", "-q", file=file)
    assert r.returncode == 0, r.stderr


def test_compose_runs_every_service_with_its_port_and_healthcheck():
    r = compose("config")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    services = compose("--profile", "demo", "config", "--services").stdout.split()
    assert set(services) == set(SERVICES) | {"redis", "demo", "console"}
    for name, port in {**SERVICES, "console": CONSOLE_PORT}.items():
        assert f"http://127.0.0.1:{port}/healthz" in text, name
        assert re.search(rf"PORT: '{port}'|PORT: \"{port}\"|PORT: {port}", text), name
        assert re.search(rf":{port}/tcp|target: {port}|:{port}$", text, re.M), name
    assert "CONSOLE_SERVICES: users=http://users:8001,orders=http://orders:8002," in text
    assert "service_healthy" in text
    assert "appendonly" in text, "redis keeps an AOF on its volume"
    for vol in ["redis-data", "users-data", "orders-data", "inventory-data", "payments-data"]:
        assert vol in text


def test_the_monolith_is_one_container_of_every_module_on_the_same_ports():
    r = compose("--profile", "demo", "config", file="compose.monolith.yaml")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert set(cfg["services"]) == {"redis", "ripple", "demo"}
    ripple = cfg["services"]["ripple"]
    assert ripple["command"] == ["ripple", *SERVICES, "console"]
    env = ripple["environment"]
    assert "PORT" not in env and "DB_PATH" not in env, "a host of several refuses them"
    published = {int(p["target"]) if isinstance(p, dict)
                 else int(str(p).rsplit(":", 1)[1].split("/")[0]) for p in ripple["ports"]}
    assert published == {*SERVICES.values(), CONSOLE_PORT}
    for name, port in SERVICES.items():
        assert env[f"{name.upper()}_PORT"] == str(port)
        assert env[f"{name.upper()}_DB_PATH"] == f"/var/lib/ripple/data/{name}.db"
        assert f"http://127.0.0.1:{port}/healthz" in ripple["healthcheck"]["test"]
    assert env["CONSOLE_PORT"] == str(CONSOLE_PORT)
    assert env["ORDERS_USERS_URL"] == "http://127.0.0.1:8001"
    assert [v.split(":")[1] for v in ripple["volumes"]] == ["/var/lib/ripple/data"]
    assert "appendonly" in r.stdout, "redis as in compose.yaml: an AOF on its volume"
    demo = cfg["services"]["demo"]["environment"]
    for name, port in SERVICES.items():
        assert demo[f"DEMO_{name.upper()}_URL"] == f"http://ripple:{port}"


def test_every_built_service_is_in_compose():
    built = {d for d in os.listdir(os.path.join(REPO, "services"))
             if os.path.exists(os.path.join(REPO, "services", d, "schema.sql"))}
    assert built == set(SERVICES)


def test_the_images_healthcheck_needs_every_url_to_answer_200(service_factory):
    """ripple-healthcheck (scripts/compose.d/healthcheck): a monolith's
    container is healthy only when every module's /healthz answers 200."""
    probe = str(REPO / "scripts" / "compose.d" / "healthcheck")
    svc = service_factory("inventory")
    up = f"{svc.base}/healthz"
    refused = f"http://{svc.host}:{stable_port()}/healthz"

    def run(*urls, **env):
        return subprocess.run([probe, *urls], capture_output=True, text=True, timeout=30,
                              env={**os.environ, **env}).returncode
    assert run(up) == 0
    assert run(up, up, up) == 0
    assert run(up, refused) == 1, "the second URL is probed too"
    assert run(refused, up) == 1
    assert run(up, f"{svc.base}/no-such-path") == 1, "only a 200 counts"
    assert run(PORT=str(svc.port)) == 0, "no URL: /healthz on $PORT"
    assert run("ftp://example.com/") == 2


def test_dockerfile_copies_only_paths_that_exist():
    with open(os.path.join(REPO, "Dockerfile")) as f:
        lines = f.read().replace("\\\n", " ").splitlines()
    copies = [l.split()[1:] for l in lines if l.strip().startswith("COPY ")]
    assert copies, "the Dockerfile copies the sources in"
    checked = 0
    for words in copies:
        if any(w.startswith("--from") for w in words):
            continue
        for src in words[:-1]:
            assert os.path.exists(os.path.join(REPO, src)), f"Dockerfile copies missing {src}"
            checked += 1
    assert checked >= 4
    text = "\n".join(lines)
    assert "USER ripple" in text, "the runtime runs as a non-root user"
    assert "FROM debian:bookworm AS build" in text and "bookworm-slim" in text
    for name in [*SERVICES, "console", "ripple"]:
        assert f"/src/build/{name}" in text


def test_dlq_replay_round_trip(redis_server, service_factory, tmp_path):
    """A command dead-lettered by a failing handler is replayed with
    scripts/dlq once the handler works, and takes effect exactly once."""
    r = redislib.Redis.from_url(redis_server.url, decode_responses=True)
    db = str(tmp_path / "users.db")
    failing = service_factory("users", DB_PATH=db, CHAOS_FAIL_TYPES="user.register",
                              MAX_DELIVERIES="2", CONSUMER_BLOCK_MS="100")
    email = "replay-me@example.com"
    r.xadd("users.commands", {"type": "user.register", "id": "replay-1",
                              "data": '{"name":"Re Play","email":"%s"}' % email})
    wait_until(lambda: r.xlen("users.commands.dlq") == 1, timeout=20,
               what="the failing command to be dead-lettered")
    failing.stop()

    service_factory("users", DB_PATH=db, CONSUMER_BLOCK_MS="100")
    dlq = os.path.join(REPO, "scripts", "dlq")
    env = dict(os.environ, REDIS_URL=redis_server.url)
    out = subprocess.run([dlq, "list", "users.commands"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "handler failed" in out.stdout, out.stdout + out.stderr
    entry = r.xrange("users.commands.dlq")[0][0]
    out = subprocess.run([dlq, "show", "users.commands", entry], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "failures: 2" in out.stdout, out.stdout
    out = subprocess.run([dlq, "replay", "users.commands", entry], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert r.xlen("users.commands.dlq") == 0

    def registered():
        return [e for _, e in r.xrange("users.events") if email in e.get("data", "")]

    wait_until(lambda: len(registered()) == 1, timeout=20, what="the replayed user")
    replayed = r.xrange("users.commands")[-1][1]
    # Exactly the original fields: none of the four the dead letter added
    # (a kept "failures" would be dead-lettered again next to a new one).
    assert replayed == {"type": "user.register", "id": "replay-1",
                        "data": '{"name":"Re Play","email":"%s"}' % email}, replayed
    out = subprocess.run([dlq, "replay", "users.commands", entry], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "no entry" in out.stderr
