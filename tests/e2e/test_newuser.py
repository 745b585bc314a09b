"""What a new user trips over (issue 19), black box, against the stack as
`make up` starts it (scripts/up on free ports with its own data directory:
see upstack.py):

- one rule for a path id that is not a UUID: 404, the same answer as an
  unknown id, on every route with an {id}, for a user and a service token;
- one quantity limit, STREAMS_MAX_QTY, on both ways in: HTTP (422) and
  order.place (a dead letter) give the same bound;
- per-service log files and scripts/logs, which merges one order's lines;
- make up's Redis on the default port, or a loud notice with the line to
  export when that port is taken;
- scripts/dlq: --redis after the subcommand, REDIS_PORT, exit 1 for a
  malformed entry id (naming it), 2 only when Redis fails.

Every wait is a poll with a deadline.
"""

import json
import os
import socket
import subprocess
import uuid

import pytest

from conftest import REPO, assert_error, service_token, unique_email, wait_until
from upstack import (UP_LINE, UpStack, launcher_params, launchers, stack_fixture,
                     streams_max_qty)

MAX_QTY = streams_max_qty()
ORDERS_DLQ = "orders.commands.dlq"


@pytest.fixture(scope="module", params=launcher_params())
def stack(request, tmp_path_factory):
    yield from stack_fixture(request, tmp_path_factory)


def new_user(stack):
    """A registered user: (user id, token)."""
    email = unique_email("newuser")
    r = stack.post("users", "/api/v1/users",
                   {"name": "New User", "email": email, "password": "correct horse battery"})
    assert r.status == 201, r
    uid = r.json()["id"]
    r = stack.post("users", "/api/v1/auth/token",
                   {"email": email, "password": "correct horse battery"})
    assert r.status == 200, r
    return uid, r.json()["access_token"]


@pytest.fixture(scope="module")
def ann(stack):
    return new_user(stack)


def run_script(name, *args, env_extra=None, timeout=30):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_PORT", "UP_DIR")}
    env.update(env_extra or {})
    return subprocess.run([str(REPO / "scripts" / name), *args], env=env, cwd=str(REPO),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------------
# One rule for malformed path ids
# ---------------------------------------------------------------------------

ID_ROUTES = [  # (service, path with {}, the 404 code of an id that names nothing)
    ("users", "/api/v1/users/{}", "user_not_found"),
    ("orders", "/api/v1/orders/{}", "not_found"),
    ("payments", "/api/v1/accounts/{}", "not_found"),
    ("payments", "/api/v1/payments/{}", "not_found"),
]
BAD_IDS = ["not-a-uuid", "123", "x" * 200, "00000000-0000-0000-0000-00000000000g",
           uuid.uuid4().hex, "%00"]


@pytest.mark.parametrize("svc,path,code", ID_ROUTES, ids=[p for _, p, _ in ID_ROUTES])
def test_malformed_path_id_is_404_like_an_unknown_one(stack, ann, svc, path, code):
    _, user_tok = ann
    for who, tok in (("user", user_tok), ("service", service_token())):
        unknown = stack.get(svc, path.format(uuid.uuid4()), token=tok)
        if who == "service":  # a user asking for an unknown user or account is 403
            assert_error(unknown, 404, code)
        for bad in BAD_IDS:
            r = stack.get(svc, path.format(bad), token=tok)
            err = assert_error(r, 404, code)
            assert "no such" in err["message"], (who, bad, err)


def test_own_records_still_readable(stack, ann):
    """The rule changes nothing for a well-formed id: the user reads their
    own record and account, in upper case too."""
    uid, tok = ann
    assert stack.get("users", f"/api/v1/users/{uid}", token=tok).status == 200
    wait_until(lambda: stack.get("payments", f"/api/v1/accounts/{uid.upper()}",
                                 token=tok).status == 200, 20, what="Ann's account")
    other, _ = new_user(stack)
    assert_error(stack.get("users", f"/api/v1/users/{other}", token=tok), 403, "forbidden")


# ---------------------------------------------------------------------------
# One quantity limit
# ---------------------------------------------------------------------------

def test_qty_limit_over_http(stack, ann):
    _, tok = ann
    r = stack.post("orders", "/api/v1/orders", {"items": [{"sku": "SKU-1", "qty": MAX_QTY}]},
                   token=tok)
    assert r.status == 202, r
    placed = r.json()
    assert placed["items"] == [{"sku": "SKU-1", "qty": MAX_QTY}]
    r = stack.post("orders", "/api/v1/orders",
                   {"items": [{"sku": "SKU-1", "qty": MAX_QTY + 1}]}, token=tok)
    err = assert_error(r, 422, "invalid")
    assert err["fields"] == {"items[0].qty": f"must be an integer from 1 to {MAX_QTY}"}
    # accepted, then refused by inventory: there are not a million cups
    o = stack.wait_order(placed["id"], tok)
    assert (o["status"], o["reason"]) == ("REJECTED", "out_of_stock"), o


def test_qty_limit_over_order_place(stack, ann):
    uid, tok = ann
    r = stack.redis()
    over = json.dumps({"user_id": uid, "items": [{"sku": "SKU-2", "qty": MAX_QTY + 1}]})
    at = json.dumps({"user_id": uid, "items": [{"sku": "SKU-3", "qty": MAX_QTY}]})
    over_id = r.xadd("orders.commands", {"type": "order.place", "data": over})
    at_id = r.xadd("orders.commands", {"type": "order.place", "data": at})

    def letter():
        for _, fields in r.xrange(ORDERS_DLQ):
            if fields.get("data") == over:
                return fields
        return None

    fields = wait_until(letter, 20, what="the dead letter of the qty past the limit")
    assert fields["error"] == f"malformed: data.items[0].qty: must be at most {MAX_QTY}", fields

    def placed():
        listed = stack.get("orders", "/api/v1/orders?limit=100", token=tok).json()["items"]
        return [o for o in listed if o["items"] == [{"sku": "SKU-3", "qty": MAX_QTY}]]

    orders = wait_until(placed, 20, what="the order.place at the limit to become an order")
    assert len(orders) == 1
    o = stack.wait_order(orders[0]["id"], tok)
    assert o["timeline"][0]["entry_id"] == at_id
    assert (o["status"], o["reason"]) == ("REJECTED", "out_of_stock"), o
    assert not any(f.get("data") == at for _, f in r.xrange(ORDERS_DLQ))
    assert over_id != at_id


# ---------------------------------------------------------------------------
# Logs: a file per service, merged for one order by scripts/logs
# ---------------------------------------------------------------------------

def test_logs_of_one_order_merged_by_time(stack, ann):
    _, tok = ann
    r = stack.post("orders", "/api/v1/orders", {"items": [{"sku": "SKU-4", "qty": 1}]}, token=tok)
    assert r.status == 202, r
    oid = r.json()["id"]
    assert stack.wait_order(oid, tok)["status"] == "CONFIRMED"
    stack.wait_log("order confirmed", timeout=20)
    assert {"users.log", "orders.log", "inventory.log", "payments.log", "redis.log"} <= \
        set(stack.log_files())

    def merged():
        p = run_script("logs", oid, env_extra={"UP_DIR": str(stack.data_dir)})
        return p if p.returncode == 0 and "order confirmed" in p.stdout else None

    p = wait_until(merged, 20, what="scripts/logs to show the confirmation")
    lines = p.stdout.splitlines()
    services = [ln.split()[1] for ln in lines]
    assert {"orders", "inventory", "payments"} <= set(services), p.stdout
    stamps = [ln.split()[0] for ln in lines]
    assert stamps == sorted(stamps), p.stdout
    placed = [ln for ln in lines if "order placed" in ln]
    assert len(placed) == 1 and placed[0].split()[0] == stamps[0], p.stdout  # ms: ties happen

    p = run_script("logs", "--json", "--dir", str(stack.data_dir), oid.upper())
    assert p.returncode == 0, p.stderr
    recs = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert recs and all(oid in json.dumps(rec) for rec in recs)
    assert [rec["ts"] for rec in recs] == sorted(rec["ts"] for rec in recs)


def test_logs_says_when_nothing_matches(stack, tmp_path):
    p = run_script("logs", str(uuid.uuid4()), env_extra={"UP_DIR": str(stack.data_dir)})
    assert p.returncode == 1 and "no line mentions" in p.stderr, p
    p = run_script("logs", "--dir", str(tmp_path), str(uuid.uuid4()))
    assert p.returncode == 1 and "no *.log files" in p.stderr, p
    p = run_script("logs", "", env_extra={"UP_DIR": str(stack.data_dir)})
    assert p.returncode == 1 and "empty" in p.stderr, p


# ---------------------------------------------------------------------------
# make up's Redis port
# ---------------------------------------------------------------------------

def test_up_moves_redis_off_a_taken_default_port(tmp_path):
    """With REDIS_PORT unset, up puts Redis on 6379; when 6379 is taken (we
    hold it here, if nobody else does) it picks a free port and says so,
    with the export line the examples need. The previous run's logs move to
    <name>.log.1."""
    holder = socket.socket()
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 6379))
        holder.listen(1)
    except OSError:
        pass  # taken already: what this test needs
    data = tmp_path / "up"
    data.mkdir()
    (data / "users.log").write_text("a line of the previous run\n")
    stack = UpStack(launchers()[0][1], data, fixed_redis=False)
    try:
        stack.start()
        assert stack.redis_port != 6379
        # the notice follows the "ripple is up" banner the start waits for
        out = wait_until(lambda: (lambda o: o if f"export UP_DIR={data}" in o else None)(
            stack.output()), 10, what="up's notice about the port and the data directory")
        assert "NOTE: port 6379 is taken" in out, out
        assert f"export REDIS_PORT={stack.redis_port}" in out, out
        assert f"export UP_DIR={data}" in out, out
        assert stack.redis().ping()
        assert (data / "users.log.1").read_text() == "a line of the previous run\n"
        assert "a line of the previous run" not in (data / "users.log").read_text()
    finally:
        rc = stack.stop()
        holder.close()
    assert rc == 0, stack.output()[-3000:]
    assert UP_LINE in stack.output()


# ---------------------------------------------------------------------------
# scripts/dlq
# ---------------------------------------------------------------------------

def test_dlq_redis_option_before_or_after_the_subcommand(stack):
    url = f"redis://127.0.0.1:{stack.redis_port}"
    for args in (["list", "orders.commands", "--redis", url],
                 ["--redis", url, "list", "orders.commands"],
                 ["list", "--redis", url, "orders.commands", "--count", "5"]):
        p = run_script("dlq", *args)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        assert "orders.commands.dlq" in p.stdout
    # REDIS_PORT alone (the line make up prints when Redis is not on 6379)
    p = run_script("dlq", "list", "orders.commands",
                   env_extra={"REDIS_PORT": str(stack.redis_port)})
    assert p.returncode == 0 and "orders.commands.dlq" in p.stdout, (p.stdout, p.stderr)


@pytest.mark.parametrize("args,named", [
    (["show", "orders.commands", "not-an-id"], "not-an-id"),
    (["show", "orders.commands", "1-2-3"], "1-2-3"),
    (["replay", "orders.commands", "1-0", "bogus"], "bogus"),
    (["replay", "orders.commands", "99999999999999999999-0"], "99999999999999999999-0"),
])
def test_dlq_malformed_id_exits_1_naming_it(stack, args, named):
    r = stack.redis()
    before = r.xlen("orders.commands")
    p = run_script("dlq", "--redis", f"redis://127.0.0.1:{stack.redis_port}", *args)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert named in p.stderr and "not a stream entry id" in p.stderr, p.stderr
    assert r.xlen("orders.commands") == before  # nothing was replayed


def test_dlq_missing_entry_exits_1_and_redis_down_exits_2(stack):
    p = run_script("dlq", "--redis", f"redis://127.0.0.1:{stack.redis_port}", "show",
                   "orders.commands", "1-1")
    assert p.returncode == 1 and "no entry 1-1" in p.stderr, (p.stdout, p.stderr)
    p = run_script("dlq", "show", "orders.commands", "1-1", "--redis", "redis://127.0.0.1:1")
    assert p.returncode == 2 and "Redis at redis://127.0.0.1:1" in p.stderr, p.stderr


def test_dlq_usage_error_exits_1(stack):
    p = run_script("dlq", "--redis", f"redis://127.0.0.1:{stack.redis_port}", "show",
                   "orders.commands")
    assert p.returncode == 1 and "required" in p.stderr, (p.stdout, p.stderr)
