"""The open catalog (DESIGN.md §12): every module declares what it emits
and consumes; streams/README.md's catalog is generated from those
declarations and must not drift; a consumer acts only on what its module
declares -- an undeclared type is skipped on an events stream and
dead-lettered on a commands stream."""

import json
import os
import subprocess

import pytest

from conftest import BIN_DIR, REPO, binary, wait_until

pytestmark = pytest.mark.fresh_redis


def test_the_readme_catalog_is_generated_from_the_declarations():
    p = subprocess.run([str(REPO / "scripts" / "catalog"), "--check"], capture_output=True,
                       text=True, env={**os.environ, "RIPPLE_BIN": str(BIN_DIR)})
    assert p.returncode == 0, p.stderr


def test_producers_and_consumers_declare_the_same_payloads():
    p = subprocess.run([str(binary("ripple")), "--catalog"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("| ") and "`" in ln]
    types = [ln.split("|")[2].strip() for ln in rows]
    assert len(types) == len(set(types)), "a type listed twice"
    # a type emitted by one module and consumed by another names both
    reserved = next(ln for ln in rows if "`stock.reserved`" in ln)
    assert "| inventory | orders |" in reserved, reserved


def metric_sum(svc, name, **labels):
    total = 0.0
    for line in svc.metrics().splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_an_undeclared_event_is_skipped_and_an_undeclared_command_dead_lettered(
        service_factory, r):
    payments = service_factory("payments", CONSUMER_BLOCK_MS=200)
    payments.wait_ready()
    users = service_factory("users", CONSUMER_BLOCK_MS=200)
    users.wait_ready()
    # payments consumes users.events but declares only user.registered
    entry = r.xadd("users.events", {"type": "user.renamed", "data": "not even json"})
    wait_until(lambda: metric_sum(payments, "stream_events_total", stream="users.events",
                                  type="user.renamed", result="skipped") >= 1, 15,
               what="the undeclared event skipped")
    assert r.xlen("users.events.dlq") == 0
    wait_until(lambda: all(p["message_id"] != entry for p in
                           r.xpending_range("users.events", "payments", "-", "+", 10)), 10,
               what="the skipped event acked")
    # users.commands: every type users does not declare is malformed
    r.xadd("users.commands", {"type": "user.rename", "data": json.dumps({"name": "x"})})
    letter = wait_until(lambda: r.xrange("users.commands.dlq"), 15, what="the dead letter")
    assert "unknown type \"user.rename\" for stream users.commands" in letter[0][1]["error"], letter


def registered(user_id):
    return {"type": "user.registered",
            "data": json.dumps({"user_id": user_id, "name": "N", "email": "n@example.com"})}


@pytest.mark.parametrize("start, old_account", [("0", True), ("$", False)])
def test_consumer_start_decides_whether_a_new_group_reads_history(service_factory, r, start,
                                                                  old_account):
    """DESIGN.md §12: a new group starts at 0 (default: the history is read)
    or at $ (CONSUMER_START=$, per module: a service added to a live system
    does not replay it)."""
    import uuid
    from conftest import service_token
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    r.xadd("users.events", registered(old))
    payments = service_factory("payments", CONSUMER_BLOCK_MS=200, PAYMENTS_CONSUMER_START=start)
    payments.wait_ready()
    wait_until(lambda: any(g["name"] == "payments" for g in r.xinfo_groups("users.events")), 10,
               what="the group")
    r.xadd("users.events", registered(new))
    tok = service_token()
    wait_until(lambda: payments.get(f"/api/v1/accounts/{new}", token=tok).status == 200, 15,
               what="the account of the user registered after the start")
    got = payments.get(f"/api/v1/accounts/{old}", token=tok).status
    assert got == (200 if old_account else 404), got


def test_a_bad_consumer_start_is_refused(tmp_path):
    from conftest import run_to_exit
    rc, err = run_to_exit("payments", {"CONSUMER_START": "latest"}, tmpdir=tmp_path)
    assert rc == 1 and "CONSUMER_START" in err, err
