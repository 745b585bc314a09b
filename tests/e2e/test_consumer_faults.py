"""The consumer's data-loss windows (issue 20 §1, §4, §5, §6; issue 12's
dead letter), black box: real binaries, a real redis-server per test.

  - a dead letter Redis refuses (WRONGTYPE) leaves the entry pending, the
    service healthy, and is written once the key is fixed;
  - a database that cannot write -- disk full on a small tmpfs, a write lock
    held by another process -- dead-letters nothing, keeps the loop fast,
    answers /readyz 503, and processes everything once it recovers; in the
    saga, a customer is never charged for a cancelled order;
  - entries trimmed by MAXLEN before the group read them are counted
    (stream_trimmed_unread_total) and logged, once;
  - a consumer stopped (SIGSTOP) past RECLAIM_IDLE_MS does not apply an
    entry another consumer took over;
  - a group lost and recreated resumes where the service settled last, so
    history older than the inbox is not replayed.

The disk-full tests mount a tmpfs (root; CI runs them as root) and fail,
never skip, when they cannot. Every wait is a deadline poll.
"""

import errno
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import uuid

import pytest
import redis

from conftest import TIME_SLACK, run_to_exit, service_token, unique_email, wait_until
from test_saga import FINAL, Stack, db_rows

pytestmark = pytest.mark.fresh_redis  # a redis-server of its own per test

FAST = {"CONSUMER_BLOCK_MS": 200}
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def metric(svc, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`; None when
    the service renders no such series at all."""
    total, found = 0.0, False
    for line in svc.metrics().splitlines():
        m = SAMPLE_RE.match(line)
        if not m or line.startswith("#") or m.group(1) != name:
            continue
        have = dict(LABEL_RE.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    return total if found else None


def metric_at_least(svc, n, name, **labels):
    v = metric(svc, name, **labels)
    return v is not None and v >= n


def register_cmd(r, email, name="Fault User", **extra):
    fields = {"type": "user.register", "data": json.dumps({"name": name, "email": email})}
    fields.update(extra)
    return r.xadd("users.commands", fields)


def registered(r, email=None):
    out = []
    for _, f in r.xrange("users.events"):
        if f.get("type") != "user.registered":
            continue
        data = json.loads(f["data"])
        if email is None or data["email"] == email.lower():
            out.append(data)
    return out


def pending(r, stream, group):
    try:
        return r.xpending(stream, group)["pending"]
    except redis.ResponseError:
        return 0


def readyz(svc):
    resp = svc.get("/readyz", timeout=5)
    return resp.status, resp.json()


def unwritable(svc):
    status, body = readyz(svc)
    return status == 503 and body["checks"]["database"] == "unwritable"


def timed_healthz(svc):
    t0 = time.monotonic()
    resp = svc.get("/healthz", timeout=30)
    took = time.monotonic() - t0
    assert resp.status == 200, resp
    return took


class SmallFs:
    """A tmpfs of its own: fill() takes every free byte, free() gives them
    back."""

    def __init__(self, path):
        self.path = path
        self.filler = path / "filler"

    def fill(self):
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (1 << 16, 4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        st = os.statvfs(self.path)
        assert st.f_bavail == 0, f"{self.path} still has {st.f_bavail} free blocks"

    def free(self):
        self.filler.unlink()


@pytest.fixture
def small_fs(tmp_path):
    """A 8 MiB tmpfs mounted for the test (set up before the services, torn
    down after them). Needs root; fails with a clear message, never skips."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mnt} ({out.stderr.strip() or out.returncode}): "
                    f"the disk-full tests need root (CI runs them as root)")
    yield SmallFs(mnt)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---------------------------------------------------------------------------
# 1. a dead letter Redis refuses: the entry stays pending (issue 12)
# ---------------------------------------------------------------------------

def test_refused_dead_letter_keeps_the_entry_pending(service_factory, r):
    svc = service_factory("users", **FAST)
    svc.wait_ready()
    r.set("users.commands.dlq", "not a stream")
    bad = r.xadd("users.commands", {"type": "user.register", "data": "{not json"})

    # Retried with a backoff, logged once, counted; the entry stays pending.
    # (Read first: before the consumer reads it, nothing is pending either.)
    wait_until(lambda: metric_at_least(svc, 1, "stream_dead_letter_failures_total",
                                       stream="users.commands"), 20,
               what="the first refused attempt to dead-letter")
    wait_until(lambda: pending(r, "users.commands", "users") == 0 or metric_at_least(
        svc, 3, "stream_dead_letter_failures_total", stream="users.commands"), 20,
        what="three refused attempts to dead-letter")
    assert pending(r, "users.commands", "users") == 1, "acked without a dead letter: lost"
    assert r.xpending_range("users.commands", "users", "-", "+", 10)[0]["message_id"] == bad
    refused = [ln for ln in svc.log_lines() if "could not dead-letter" in ln]
    assert len(refused) == 1 and "WRONGTYPE" in refused[0], refused
    assert svc.get("/healthz").status == 200
    assert readyz(svc)[0] == 200

    # The stream waits behind it (order), and nothing is lost once fixed.
    email = unique_email("after-refused")
    register_cmd(r, email)
    r.delete("users.commands.dlq")
    letters = wait_until(lambda: r.xrange("users.commands.dlq"), 20,
                         what="the dead letter written once the key is fixed")
    assert len(letters) == 1, letters
    d = letters[0][1]
    assert d["data"] == "{not json" and d["error"].startswith("malformed: "), d
    wait_until(lambda: registered(r, email), 20, what="the entry behind it processed")
    wait_until(lambda: pending(r, "users.commands", "users") == 0, 10, what="nothing pending")
    assert len(r.xrange("users.commands.dlq")) == 1
    assert svc.alive()


# ---------------------------------------------------------------------------
# 2. the database cannot write: nothing counts against the entries
# ---------------------------------------------------------------------------

def test_disk_full_dead_letters_nothing_and_recovers(small_fs, service_factory, r):
    svc = service_factory("users", DB_PATH=str(small_fs.path / "users.db"), **FAST)
    svc.wait_ready()
    warm = unique_email("warm")
    register_cmd(r, warm)  # the consumer works on this file system
    wait_until(lambda: registered(r, warm), 10, what="an entry before the disk fills")

    small_fs.fill()
    emails = [unique_email("full") for _ in range(3)]
    for e in emails:
        register_cmd(r, e)
    # Past several backoffs (the old consumer dead-lettered these after five
    # re-reads, ~3 s): six failed attempts take 3-6 s.
    wait_until(lambda: r.xlen("users.commands.dlq") > 0 or
               metric_at_least(svc, 6, "stream_store_failures_total", stream="users.commands"),
               30, interval=0.1, what="six attempts on the full disk")
    assert r.xrange("users.commands.dlq") == [], "entries dead-lettered for a full disk"
    wait_until(lambda: unwritable(svc), 10, what="/readyz 503 database unwritable")
    assert pending(r, "users.commands", "users") >= 1  # in hand; the rest waits behind it
    # (the relay may publish the first user's event again meanwhile: it cannot
    # mark it published on a full disk -- issue 20 §2, not the consumer's)
    assert {e["user_id"] for e in registered(r)} == {registered(r, warm)[0]["user_id"]}
    assert svc.get("/healthz").status == 200

    small_fs.free()
    wait_until(lambda: all(registered(r, e) for e in emails), 20, interval=0.1,
               what="the three entries processed once the disk has room")
    wait_until(lambda: readyz(svc)[0] == 200, 10, what="/readyz 200 again")
    wait_until(lambda: pending(r, "users.commands", "users") == 0, 10, what="nothing pending")
    assert r.xrange("users.commands.dlq") == []
    assert len({e["user_id"] for e in registered(r)}) == 4
    assert all(len({ev["user_id"] for ev in registered(r, em)}) == 1 for em in emails)
    assert any("the database writes again" in ln for ln in svc.log_lines())


def test_write_lock_held_elsewhere_never_stalls_the_loop(service_factory, r):
    svc = service_factory("users", **FAST)
    svc.wait_ready()
    holder = sqlite3.connect(svc.db_path, timeout=10, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        emails = [unique_email("locked") for _ in range(2)]
        for e in emails:
            register_cmd(r, e)
        bound = 1.0 * TIME_SLACK
        took = []

        def tried_enough():
            took.append(timed_healthz(svc))
            return sum(t >= bound for t in took) > 1 or r.xlen("users.commands.dlq") > 0 or \
                metric_at_least(svc, 6, "stream_store_failures_total", stream="users.commands")
        wait_until(tried_enough, 40, interval=0.05, what="six attempts on the locked database")
        # Waiting 5 s on the lock at each attempt made nearly every /healthz
        # slow; a single slow one is the scheduler of a busy machine.
        slow = sorted(t for t in took if t >= bound)
        assert len(slow) <= 1, f"/healthz took {slow} s while locked ({len(took)} requests)"
        assert r.xrange("users.commands.dlq") == [], "entries dead-lettered for a lock"
        wait_until(lambda: unwritable(svc), 10, what="/readyz 503 database unwritable")
        assert registered(r) == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_until(lambda: all(registered(r, e) for e in emails), 20, interval=0.1,
               what="the entries processed once the lock is released")
    wait_until(lambda: readyz(svc)[0] == 200, 10, what="/readyz 200 again")
    assert r.xrange("users.commands.dlq") == []


def test_saga_orders_disk_full_never_charges_a_cancelled_order(small_fs, service_factory,
                                                                redis_server):
    """orders' database fills while an order is AWAITING_PAYMENT and
    payments charges meanwhile: the order ends CONFIRMED, or CANCELLED and
    refunded -- never charged and cancelled (issue 20 §1)."""
    st = Stack(service_factory, redis_server, {"RECLAIM_IDLE_MS": 2000, **FAST},
               {"orders": {"DB_PATH": str(small_fs.path / "orders.db"),
                           "SAGA_TIMEOUT_MS": 5000}}).boot()
    try:
        user, token = st.new_user("fullsaga")
        assert st.payments.stop() == 0, st.logs(["payments"])
        placed = st.place(token, [{"sku": "SKU-1", "qty": 2}])
        st.wait_steps(placed["id"], ["charge_payment"])
        assert st.order(placed["id"])["status"] == "AWAITING_PAYMENT"

        small_fs.fill()
        st.restart("payments")
        pay = wait_until(lambda: (lambda p: p.json() if p.status == 200 else None)(
            st.payment(placed["id"])), 15, what="payments charged the order")
        assert pay["status"] == "succeeded", pay
        wait_until(lambda: st.r.xlen("payments.events.dlq") > 0 or metric_at_least(
            st.orders, 6, "stream_store_failures_total", stream="payments.events"),
            30, interval=0.1, what="orders retrying payment.succeeded on the full disk")
        assert st.r.xrange("payments.events.dlq") == [], "payment.succeeded dead-lettered"
        wait_until(lambda: unwritable(st.orders), 10, what="orders /readyz 503 unwritable")

        small_fs.free()
        order = st.wait_final(placed["id"], timeout=30)
        if order["status"] == "CANCELLED":
            wait_until(lambda: st.payment(placed["id"]).json()["status"] == "refunded", 20,
                       what="the cancelled order's payment refunded")
        else:
            assert order["status"] == "CONFIRMED", st.diag([placed["id"]])
        pay = st.payment(placed["id"]).json()
        balance = st.account(user["id"])["balance_cents"]
        charged = pay["status"] == "succeeded"
        assert charged == (order["status"] == "CONFIRMED"), (order["status"], pay)
        assert balance == 10000 - (pay["amount_cents"] if charged else 0), (balance, pay)
        for k in st.r.scan_iter("*.dlq"):
            assert st.r.xrange(k) == [], f"dead letters in {k}: {st.r.xrange(k)}"
        assert order["status"] in FINAL
    finally:
        st.close()


# ---------------------------------------------------------------------------
# 2b. redeliveries alone (restarts, takeovers) dead-letter nothing below the
#     crash-loop guard (issue 20 §8)
# ---------------------------------------------------------------------------

def test_redeliveries_count_only_against_the_crash_loop_guard(service_factory, r):
    r.xgroup_create("users.commands", "users", id="0", mkstream=True)
    healthy, looping = unique_email("redelivered"), unique_email("crashloop")
    ok_id = register_cmd(r, healthy)
    loop_id = register_cmd(r, looping)
    r.xreadgroup("users", "gone", {"users.commands": ">"})
    # As if read again after 9 restarts, and after 60 crashes on it.
    r.xclaim("users.commands", "users", "svc", 0, [ok_id], retrycount=9)
    r.xclaim("users.commands", "users", "svc", 0, [loop_id], retrycount=60)
    svc = service_factory("users", CONSUMER_NAME="svc", MAX_DELIVERIES_GUARD=50, **FAST)
    wait_until(lambda: registered(r, healthy) or r.xlen("users.commands.dlq") > 1, 15,
               what="the redelivered entry processed")
    assert registered(r, healthy), f"dead-lettered: {r.xrange('users.commands.dlq')}"
    letters = wait_until(lambda: r.xrange("users.commands.dlq"), 10, what="the crash loop's letter")
    assert len(letters) == 1, letters
    d = letters[0][1]
    assert json.loads(d["data"])["email"] == looping, d
    assert "MAX_DELIVERIES_GUARD 50" in d["error"] and d["failures"] == "0", d
    assert int(d["deliveries"]) > 50, d
    assert registered(r, looping) == []
    wait_until(lambda: pending(r, "users.commands", "users") == 0, 10, what="both acked")
    assert svc.alive()


# ---------------------------------------------------------------------------
# 3. entries trimmed before the group read them are reported (issue 20 §4)
# ---------------------------------------------------------------------------

def user_registered(r, maxlen=None):
    uid = str(uuid.uuid4())
    data = {"user_id": uid, "name": "Trimmed", "email": f"{uid}@example.com"}
    fields = {"type": "user.registered", "data": json.dumps(data), "id": str(uuid.uuid4())}
    if maxlen is None:
        r.xadd("users.events", fields)
    else:
        r.xadd("users.events", fields, maxlen=maxlen, approximate=True)
    return uid


def accounts(svc):
    return db_rows(svc.db_path, "SELECT user_id FROM accounts")


def test_entries_trimmed_before_the_group_read_them_are_reported(service_factory, r, tmp_path):
    db = str(tmp_path / "payments.db")
    pay = service_factory("payments", DB_PATH=db, CONSUMER_NAME="p", **FAST)
    pay.wait_ready()
    wait_until(lambda: any(g["name"] == "payments" for g in r.xinfo_groups("users.events")), 10,
               what="the payments group on users.events")
    assert pay.stop() == 0

    for _ in range(350):  # what users' relay does with STREAM_MAXLEN=10
        user_registered(r, maxlen=10)
    kept = r.xlen("users.events")
    assert kept < 350
    lost = 350 - kept

    pay = service_factory("payments", DB_PATH=db, CONSUMER_NAME="p", **FAST)
    wait_until(lambda: len(accounts(pay)) == kept, 20, what=f"{kept} accounts opened")
    wait_until(lambda: metric(pay, "stream_trimmed_unread_total", stream="users.events") == lost,
               20, what=f"stream_trimmed_unread_total == {lost}")
    errors = [ln for ln in pay.log_lines() if '"level":"error"' in ln and "trimmed" in ln]
    assert len(errors) == 1 and f"{lost} entries were trimmed" in errors[0], errors
    # lag counts what is really left to read, not the lost entries
    wait_until(lambda: metric(pay, "stream_lag", stream="users.events") == 0, 20,
               what="stream_lag 0 once the survivors are read")
    assert pay.stop() == 0

    # Counted once: a restart does not report the same loss again.
    pay = service_factory("payments", DB_PATH=db, CONSUMER_NAME="p", **FAST)
    pay.wait_ready()
    uid = user_registered(r)
    wait_until(lambda: any(a["user_id"] == uid for a in accounts(pay)), 20,
               what="a new entry consumed after the restart")
    assert metric(pay, "stream_trimmed_unread_total", stream="users.events") == 0
    assert not [ln for ln in pay.log_lines() if "trimmed" in ln and '"level":"error"' in ln]


# ---------------------------------------------------------------------------
# 4. a consumer stopped past RECLAIM_IDLE_MS applies nothing taken over
#    (issue 20 §5)
# ---------------------------------------------------------------------------

def test_stopped_consumer_does_not_apply_an_entry_taken_over(service_factory, r):
    a = service_factory("users", CONSUMER_NAME="a", CHAOS_DELAY_TYPES="user.register",
                        CHAOS_DELAY_MS=2000, RECLAIM_IDLE_MS=1000, **FAST)
    a.wait_ready()
    email = unique_email("stopped")
    register_cmd(r, email, name="Stopped")
    wait_until(lambda: [p for p in r.xpending_range("users.commands", "users", "-", "+", 10)
                        if p["consumer"] == "a"], 10, interval=0.01,
               what="the entry in A's hands")
    a.send_signal(signal.SIGSTOP)
    try:
        b = service_factory("users", CONSUMER_NAME="b", RECLAIM_IDLE_MS=1000, **FAST)
        wait_until(lambda: registered(r, email), 20, what="B takes the entry over and imports it")
        wait_until(lambda: pending(r, "users.commands", "users") == 0, 10, what="B acked it")
    finally:
        a.send_signal(signal.SIGCONT)
    # A's delay is long over: it resumes, and must find the entry is not its own.
    wait_until(lambda: len(registered(r, email)) > 1 or metric_at_least(
        a, 1, "stream_events_total", stream="users.commands", result="taken_over"), 20,
        what="A resumed and settled what it held")
    assert len(registered(r, email)) == 1, registered(r, email)
    assert db_rows(a.db_path, "SELECT id FROM users WHERE email = ?", (email.lower(),)) == []
    uid = registered(r, email)[0]["user_id"]
    assert b.get(f"/api/v1/users/{uid}", token=service_token()).status == 200
    assert r.xrange("users.commands.dlq") == []
    assert pending(r, "users.commands", "users") == 0


# ---------------------------------------------------------------------------
# 5. a recreated group resumes at the position settled last (issue 20 §6)
# ---------------------------------------------------------------------------

def test_recreated_group_does_not_replay_history(service_factory, r):
    pay = service_factory("payments", INBOX_RETENTION_MS=1000, RECLAIM_IDLE_MS=1000, **FAST)
    pay.wait_ready()
    uid = user_registered(r)
    wait_until(lambda: any(a["user_id"] == uid for a in accounts(pay)), 15,
               what="the account opened")
    r.xadd("payments.commands", {"type": "account.credit",
                                 "data": json.dumps({"user_id": uid, "amount_cents": 500})})

    def balance():
        return db_rows(pay.db_path, "SELECT balance_cents FROM accounts WHERE user_id = ?",
                       (uid,))[0]["balance_cents"]
    wait_until(lambda: balance() == 10500, 15, what="the credit applied")
    # The inbox forgets the credit's event id (pruned after INBOX_RETENTION_MS).
    wait_until(lambda: db_rows(pay.db_path, "SELECT count(*) AS n FROM inbox "
                               "WHERE stream = 'payments.commands'")[0]["n"] == 0,
               90, interval=0.2, what="the inbox row pruned")

    assert r.xgroup_destroy("payments.commands", "payments") == 1
    # A marker behind the credit: once it is applied, the group was
    # recreated and has read everything it was going to read.
    marker = user_registered(r)
    wait_until(lambda: any(a["user_id"] == marker for a in accounts(pay)), 15,
               what="the marker account opened")
    r.xadd("payments.commands", {"type": "account.credit",
                                 "data": json.dumps({"user_id": marker, "amount_cents": 1})})
    wait_until(lambda: db_rows(pay.db_path, "SELECT balance_cents FROM accounts WHERE user_id = ?",
                               (marker,))[0]["balance_cents"] == 10001, 20,
               what="the marker credit applied by the recreated group")
    assert balance() == 10500, "the credit was applied twice"
    assert any(g["name"] == "payments" for g in r.xinfo_groups("payments.commands"))


def test_inbox_retention_below_reclaim_idle_is_refused(tmp_path):
    rc, err = run_to_exit("payments", {"INBOX_RETENTION_MS": "1000", "RECLAIM_IDLE_MS": "2000"},
                          tmpdir=tmp_path)
    assert rc == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "INBOX_RETENTION_MS" in lines[0] and \
        "RECLAIM_IDLE_MS" in lines[0], err


# ---------------------------------------------------------------------------
# A batch larger than one transaction's share (SC_CHUNK, 64 entries)
# ---------------------------------------------------------------------------

def test_a_large_batch_goes_on_after_each_transaction(service_factory, r):
    """A read of 300 entries runs in transactions of 16 at most (nested
    savepoints cost in proportion to the transaction); the rest of the
    batch goes on after each commit: every entry is applied once and acked,
    none waits for a backoff or a restart."""
    n = 300
    svc = service_factory("payments", CONSUMER_BATCH=512, GROUP_COMMIT=0, **FAST)
    svc.wait_ready()
    wait_until(lambda: r.exists("users.events"), 10, what="the group created")
    commits0 = metric(svc, "store_commits_total") or 0
    uids = []
    with r.pipeline(transaction=True) as p:  # one EXEC: the blocked read gets all
        for _ in range(n):
            uid = str(uuid.uuid4())
            data = {"user_id": uid, "name": "Batch", "email": f"{uid}@example.com"}
            p.xadd("users.events", {"type": "user.registered", "data": json.dumps(data),
                                    "id": str(uuid.uuid4())})
            uids.append(uid)
        p.execute()
    got = wait_until(lambda: (lambda a: a if len(a) == n else None)(accounts(svc)), 20,
                     what=f"{n} accounts opened")
    assert sorted(row["user_id"] for row in got) == sorted(uids)
    wait_until(lambda: pending(r, "users.events", "payments") == 0, 10, what="all acked")
    assert metric(svc, "stream_events_total", stream="users.events") == n
    # GROUP_COMMIT=0: a COMMIT per transaction; the batch took 19 at least
    commits = metric(svc, "store_commits_total") - commits0
    assert commits >= (n + 15) // 16, commits
    assert svc.alive()
