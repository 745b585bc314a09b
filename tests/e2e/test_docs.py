"""The documentation, executed: every shell block of README.md and
streams/README.md marked with an HTML comment `<!-- doc-test: NAME -->`
(invisible when the Markdown is rendered) runs, in the order the two files
give, in ONE bash session under `set -e -o pipefail`, against the stack as
`make up` starts it -- scripts/up (or each launcher of RIPPLE_UP_LAUNCHERS,
see upstack.py) on free ports with a data directory of its own.

The session is set up the way the README tells a user to: at the
repository's root, with `export REDIS_PORT=<port>` (what make up prints when
Redis is not on 6379) and `export UP_DIR=<dir>` (the same, for a data
directory other than var/up). The only change made to a block is its
service ports: `localhost:8001` ... `localhost:8004` become the stack's.

After each block, its check (CHECKS, by name) holds it to what the text
around it promises: the JSON answers and their statuses, the variables it
sets, an order reaching its final state, an event on a stream, a dead
letter with its reason. Asynchronous effects are polled with deadlines, as
a reader would wait a moment before the next block. Every marked block must
have a check and every check a block, so the two cannot drift apart.
"""

import json
import os
import queue
import re
import subprocess
import threading
import time
import uuid

import pytest

from conftest import REPO, is_uuid, service_token, wait_until
from upstack import DEFAULT_PORTS, launcher_params, stack_fixture, streams_max_qty

DOCS = [REPO / "README.md", REPO / "streams" / "README.md"]
BLOCK_RE = re.compile(r"^<!-- doc-test: ([a-z0-9-]+) -->\n```sh\n(.*?)^```$", re.M | re.S)
ENTRY_ID_RE = re.compile(r"^\d+-\d+$")
BLOCK_TIMEOUT = 60
WAIT = 30  # seconds for an asynchronous effect (a saga, a consumer) to show
MAX_QTY = streams_max_qty()
INITIAL_CREDIT = 10000  # INITIAL_CREDIT_CENTS' default: make up does not set it


def doc_blocks():
    """[(file name, block name, text)] in reading order."""
    out = []
    for path in DOCS:
        for m in BLOCK_RE.finditer(path.read_text()):
            out.append((path.relative_to(REPO).as_posix(), m.group(1), m.group(2)))
    return out


# ---------------------------------------------------------------------------
# One bash session, fed block by block
# ---------------------------------------------------------------------------

class Bash:
    """bash reading commands from a pipe, stdout and stderr merged. run()
    sources a block from a file and returns what it printed; if bash exits
    (set -e: a command failed), run() fails the test with the output."""

    def __init__(self, env, cwd, scratch):
        self.scratch = scratch
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], env=env, cwd=str(cwd),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.lines = queue.Queue()
        self.n = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)  # EOF: bash is gone

    def run(self, text, what, timeout=BLOCK_TIMEOUT):
        self.n += 1
        script = self.scratch / f"block{self.n:02d}.sh"
        script.write_text(text)
        marker = f"__doc_test_done_{uuid.uuid4().hex}__"
        self.proc.stdin.write(f"source {script}\nprintf '\\n%s\\n' {marker}\n".encode())
        self.proc.stdin.flush()
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{what} did not finish within {timeout}s; it printed:\n"
                            + "\n".join(out))
            if line is None:
                rc = self.proc.wait(10)
                pytest.fail(f"{what} failed (bash exited with {rc} under set -e); it printed:\n"
                            + "\n".join(out))
            if line == marker:
                return "\n".join(out[:-1] if out and out[-1] == "" else out)
            out.append(line)

    def var(self, name):
        return self.run(f'printf "%s\\n" "${{{name}}}"\n', f"reading ${name}").strip()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------
# What the checks look at
# ---------------------------------------------------------------------------

class Ctx:
    def __init__(self, stack, sh):
        self.stack = stack
        self.sh = sh
        self.r = stack.redis()
        self.svc = service_token()
        self.out = ""

    def json_lines(self):
        """The JSON objects the block printed, one per line, in order."""
        out = []
        for line in self.out.splitlines():
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def entry_ids(self):
        return [ln.strip() for ln in self.out.splitlines() if ENTRY_ID_RE.match(ln.strip())]

    def var(self, name):
        return self.sh.var(name)

    def events(self, stream, type_=None):
        """[(entry id, fields, data)] of stream, of one type if given."""
        out = []
        for eid, fields in self.r.xrange(stream):
            if type_ is None or fields.get("type") == type_:
                try:
                    data = json.loads(fields.get("data", ""))
                except ValueError:
                    data = None
                out.append((eid, fields, data))
        return out

    def wait_event(self, stream, type_, pred, what):
        def found():
            return [e for e in self.events(stream, type_) if e[2] is not None and pred(e[2])]
        return wait_until(found, WAIT, interval=0.05, what=what)

    def letters(self, stream):
        return [fields for _, fields in self.r.xrange(f"{stream}.dlq")]

    def wait_letter(self, stream, pred, what):
        def found():
            return [f for f in self.letters(stream) if pred(f)]
        return wait_until(found, WAIT, interval=0.05, what=what)

    def order(self, oid):
        return self.stack.order(oid, self.svc)

    def wait_order(self, oid, statuses=("CONFIRMED", "REJECTED", "CANCELLED")):
        return self.stack.wait_order(oid, self.svc, statuses, timeout=WAIT)

    def get(self, name, path):
        r = self.stack.get(name, path, token=self.svc)
        assert r.status == 200, r
        return r.json()

    def user_orders(self, uid):
        return self.get("orders", f"/api/v1/orders?limit=100&user_id={uid}")["items"]


# ---------------------------------------------------------------------------
# The checks, one per block
# ---------------------------------------------------------------------------

def check_users(c):
    created, read = c.json_lines()
    uid = c.var("USER_ID")
    assert is_uuid(uid), uid
    assert c.var("TOKEN").count(".") == 2
    assert (created["id"], created["email"], created["name"]) == (uid, "ann@example.com", "Ann")
    assert read == created  # 200: Ann reads herself


def check_orders(c):
    placed, read, listed = c.json_lines()
    oid = c.var("ORDER_ID")
    assert is_uuid(oid) and uuid.UUID(oid).version == 7, oid  # order ids are v7
    assert (placed["id"], placed["status"]) == (oid, "PENDING"), placed
    assert placed["items"] == [{"sku": "SKU-1", "qty": 2}]
    assert read["id"] == oid and read["timeline"]
    assert oid in [o["id"] for o in listed["items"]]
    o = c.wait_order(oid)
    assert (o["status"], o["amount_cents"]) == ("CONFIRMED", 500), o


def check_orders_idempotency(c):
    first, again = c.json_lines()
    assert re.search(r"^HTTP/1\.1 202", c.out, re.M), c.out
    assert re.search(r"^idempotent-replayed: true\s*$", c.out, re.M | re.I), c.out
    assert again["id"] == first["id"] and again["items"] == first["items"]  # the same order
    assert c.wait_order(first["id"])["status"] == "CONFIRMED"


def check_orders_unknown_sku(c):
    (placed,) = c.json_lines()
    assert placed["status"] == "PENDING" and placed["items"] == [{"sku": "SKU-404", "qty": 1}]
    o = c.wait_order(placed["id"])
    assert (o["status"], o["reason"]) == ("REJECTED", "unknown_sku"), o


def check_inventory(c):
    catalog, sku1 = c.json_lines()
    skus = [p["sku"] for p in catalog["items"]]
    assert {f"SKU-{i}" for i in range(1, 7)} <= set(skus), skus
    assert sku1["sku"] == "SKU-1" and sku1["sold"] == 4, sku1  # two CONFIRMED orders of 2
    assert sku1["available"] + sku1["reserved"] + sku1["sold"] == 200


def check_payments(c):
    account, payment = c.json_lines()
    uid, oid = c.var("USER_ID"), c.var("ORDER_ID")
    assert account["user_id"] == uid
    assert account["balance_cents"] == INITIAL_CREDIT - 1000, account  # two orders of 5.00
    assert (payment["order_id"], payment["status"], payment["amount_cents"]) == \
        (oid, "succeeded", 500), payment


def check_errors(c):
    invalid, no_order, no_account = c.json_lines()
    assert invalid["error"]["code"] == "invalid"
    assert invalid["error"]["fields"] == {
        "items[0].qty": f"must be an integer from 1 to {MAX_QTY}"}
    assert no_order["error"] == {"code": "not_found", "message": "no such order"}
    assert no_account["error"] == {"code": "not_found", "message": "no such account"}


def check_streams(c):
    uid = c.var("USER_ID")
    assert all(ENTRY_ID_RE.match(ln) for ln in c.out.splitlines()[:5]), c.out  # the XADDs
    c.wait_event("inventory.events", "product.restocked",
                 lambda d: d["sku"] == "SKU-1" and d["qty"] == 50, "SKU-1 restocked by 50")
    c.wait_event("payments.events", "account.credited",
                 lambda d: d["user_id"] == uid and d["amount_cents"] == 5000, "Ann credited 50.00")
    c.wait_event("users.events", "user.registered", lambda d: d["email"] == "bo@example.com",
                 "Bo registered")
    placed = wait_until(lambda: [o for o in c.user_orders(uid)
                                 if o["items"] == [{"sku": "SKU-2", "qty": 1}]],
                        WAIT, what="the order.place of SKU-2 to become an order")
    o = c.wait_order(placed[0]["id"])
    assert o["status"] == "CONFIRMED" and o["timeline"][0]["step"] == "requested", o
    (letter,) = c.wait_letter("inventory.commands", lambda f: f.get("data") == "not json",
                              "the dead letter of 'not json'")
    assert letter["error"].startswith("malformed: data: not JSON"), letter
    assert (letter["group"], letter["deliveries"]) == ("inventory", "1")


def check_logs(c):
    lines = c.out.splitlines()
    assert len(lines) >= 5, c.out
    stamps = [ln.split()[0] for ln in lines]
    assert stamps == sorted(stamps), c.out
    placed = [ln for ln in lines if "order placed" in ln]
    assert len(placed) == 1 and placed[0].split()[0] == stamps[0], c.out  # ms: ties happen
    assert "order confirmed" in c.out, c.out
    assert {ln.split()[1] for ln in lines} >= {"orders", "inventory", "payments"}


def check_dlq(c):
    dlq_id = c.var("DLQ_ID")
    assert ENTRY_ID_RE.match(dlq_id), dlq_id
    assert "inventory.commands.dlq: 1 dead letter(s)" in c.out, c.out
    assert "error=malformed: data: not JSON" in c.out, c.out
    assert f"replayed inventory.commands.dlq {dlq_id} -> inventory.commands " in c.out, c.out
    # consumed again and, still malformed, dead-lettered again under a new id
    wait_until(lambda: [e for e, f in c.r.xrange("inventory.commands.dlq")
                        if f.get("data") == "not json" and e != dlq_id],
               WAIT, what="the replayed entry's new dead letter")
    assert dlq_id not in [e for e, _ in c.r.xrange("inventory.commands.dlq")]


def check_streams_read(c):
    assert c.out.splitlines()[-1].strip().isdigit(), c.out  # XLEN


def check_streams_users(c):
    assert len(c.entry_ids()) == 1
    c.wait_event("users.events", "user.registered", lambda d: d["email"] == "cy@example.com",
                 "Cy registered")
    c.wait_event("payments.events", "account.opened", lambda d: True, "an account opened")


def check_streams_orders(c):
    uid = c.var("USER_ID")
    (entry,) = c.entry_ids()
    placed = wait_until(lambda: [o for o in c.user_orders(uid)
                                 if o["items"] == [{"sku": "SKU-4", "qty": 1}]],
                        WAIT, what="the order.place of SKU-4 to become an order")
    o = c.wait_order(placed[0]["id"])
    assert o["status"] == "CONFIRMED", o
    assert (o["timeline"][0]["step"], o["timeline"][0]["entry_id"]) == ("requested", entry)


def check_streams_inventory(c):
    a, b = c.var("ORDER_A"), c.var("ORDER_B")
    assert is_uuid(a) and is_uuid(b) and a != b
    assert len(c.entry_ids()) == 6
    for order_id, type_ in ((a, "stock.reserved"), (a, "stock.released"),
                            (b, "stock.reserved"), (b, "stock.committed")):
        c.wait_event("inventory.events", type_, lambda d, o=order_id: d["order_id"] == o,
                     f"{type_} for {order_id}")
    c.wait_event("inventory.events", "product.restocked", lambda d: d["sku"] == "SKU-NEW",
                 "SKU-NEW created")
    assert not [f for f in c.letters("inventory.commands") if a in f.get("data", "") or b in f.get("data", "")]
    assert c.order(a) is None and c.order(b) is None  # orders runs no saga for them
    assert c.get("inventory", "/api/v1/products/SKU-NEW")["available"] == 10


def check_streams_payments(c):
    b, oid = c.var("ORDER_B"), c.var("ORDER_ID")
    assert len(c.entry_ids()) == 4

    def payment(order_id, status):
        r = c.stack.get("payments", f"/api/v1/payments/{order_id}", token=c.svc)
        return r.status == 200 and r.json()["status"] == status and r.json()

    wait_until(lambda: payment(b, "refunded"), WAIT, what="ORDER_B's payment refunded")
    refunded = wait_until(lambda: payment(oid, "refunded"), WAIT,
                          what="ORDER_ID's payment refunded")
    assert refunded["amount_cents"] == 500
    o = wait_until(lambda: (lambda o: o if "payment_refunded" in
                            [t["step"] for t in o["timeline"]] else None)(c.order(oid)),
                   WAIT, what="the refund in ORDER_ID's timeline")
    assert o["status"] == "CONFIRMED", o  # a refund by hand does not change the status
    assert not [f for f in c.letters("payments.commands") if b in f.get("data", "") or oid in f.get("data", "")]


def check_streams_explicit_id(c):
    first, second = c.entry_ids()

    def both_consumed():
        for g in c.r.xinfo_groups("payments.commands"):
            if g["name"] == "payments":
                last = tuple(map(int, g["last-delivered-id"].split("-")))
                return last >= tuple(map(int, second.split("-"))) and g["pending"] == 0
        return False

    wait_until(both_consumed, WAIT, what="payments to consume both credits")
    credited = [f for _, f, _ in c.events("payments.events", "account.credited")
                if f.get("trace") == "manual-credit-1"]
    assert len(credited) == 1, credited  # the second XADD was a duplicate
    assert first != second


def check_streams_malformed(c):
    assert all(ENTRY_ID_RE.match(ln) for ln in c.out.splitlines()[:2]), c.out  # the XADDs
    c.wait_letter("inventory.commands",
                  lambda f: f.get("data") == '{"sku":"SKU-1","qty":"50"}' and
                  f["error"] == "malformed: data.qty: expected a positive integer",
                  "the restock with a string qty dead-lettered")
    c.wait_letter("orders.commands",
                  lambda f: f["error"] == f"malformed: data.items[0].qty: must be at most {MAX_QTY}",
                  "the order.place past the quantity limit dead-lettered")


CHECKS = {
    "users": check_users,
    "orders": check_orders,
    "orders-idempotency": check_orders_idempotency,
    "orders-unknown-sku": check_orders_unknown_sku,
    "inventory": check_inventory,
    "payments": check_payments,
    "errors": check_errors,
    "streams": check_streams,
    "logs": check_logs,
    "dlq": check_dlq,
    "streams-read": check_streams_read,
    "streams-users": check_streams_users,
    "streams-orders": check_streams_orders,
    "streams-inventory": check_streams_inventory,
    "streams-payments": check_streams_payments,
    "streams-explicit-id": check_streams_explicit_id,
    "streams-malformed": check_streams_malformed,
}


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------

def test_every_marked_block_has_a_check_and_every_check_a_block():
    names = [name for _, name, _ in doc_blocks()]
    assert len(names) == len(set(names)), f"a block name is used twice: {names}"
    assert set(names) == set(CHECKS), (set(names) ^ set(CHECKS))


def test_both_readmes_state_the_quantity_limit():
    for path in DOCS:
        text = path.read_text()
        assert re.search(rf"{MAX_QTY:,}\W+`STREAMS_MAX_QTY`", text), \
            f"{path} does not say that the quantity limit, STREAMS_MAX_QTY, is {MAX_QTY:,}"


def test_no_link_leaves_the_repository():
    for path in [*DOCS, *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)]+)\)", path.read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            file_part = target.split("#")[0]
            resolved = (path.parent / file_part).resolve()
            assert resolved.is_relative_to(REPO) and resolved.exists(), \
                f"{path.relative_to(REPO)} links to {target}, which is not in the repository"


@pytest.fixture(params=launcher_params())
def stack(request, tmp_path_factory):
    yield from stack_fixture(request, tmp_path_factory)


def rewrite_ports(text, stack):
    for name, port in DEFAULT_PORTS.items():
        text = text.replace(f"localhost:{port}", f"localhost:{stack.ports[name]}")
    assert not re.search(r"localhost:800\d", text), text
    return text


def test_the_examples_run_as_printed(stack, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "REDIS_PORT", "UP_DIR", "BASH_ENV", "ENV")}
    env["REDIS_PORT"] = str(stack.redis_port)  # as make up asks when Redis is not on 6379
    env["UP_DIR"] = str(stack.data_dir)        # as make up asks for another data directory
    blocks = doc_blocks()
    assert blocks and {name for _, name, _ in blocks} == set(CHECKS)
    sh = Bash(env, REPO, tmp_path)
    try:
        sh.run("set -e -o pipefail\n", "set -e")
        c = Ctx(stack, sh)
        for doc, name, text in blocks:
            what = f"{doc} block {name!r}"
            try:
                c.out = sh.run(rewrite_ports(text, stack), what)
            except pytest.fail.Exception as exc:  # what the services said, for the diagnosis
                pytest.fail(f"{exc}\nthe stack's last lines:\n{stack.output()[-3000:]}")
            try:
                CHECKS[name](c)
            except AssertionError as exc:
                raise AssertionError(f"{what}: {exc}\nit printed:\n{c.out}") from None
    finally:
        sh.close()
