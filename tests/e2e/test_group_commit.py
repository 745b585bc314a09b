"""Group commit (issue 15): the writes of one loop iteration share one SQLite
COMMIT, and nothing is told to the outside world -- an HTTP answer, an XACK,
the relay's mark -- before the COMMIT that carries it.

- Concurrent writes share COMMITs (store_transactions_total grows faster
  than store_commits_total), and every answer a client gets is already
  visible to another connection of the database: it was committed first.
- A group COMMIT that fails (a full disk: the WAL cannot grow) answers the
  requests it carried 503 "unavailable" with Retry-After, and saved none of
  them; the service goes on and saves the retry once there is room.
- GROUP_COMMIT=0 commits each transaction on its own (one COMMIT each).
- store_wal_bytes_total counts what the COMMITs wrote to the WAL: a whole
  frame (a page and its header) at least for each of them.

Every wait is a deadline poll; the disk-full test mounts a tmpfs (root, as
CI runs; it fails with a clear message, never skips).
"""

import sqlite3
import threading

from conftest import service_token, unique_email, wait_until
from test_consumer_faults import small_fs  # noqa: F401 (a fixture)

ROUND = 24        # concurrent registrations per round
ROUNDS_MAX = 20   # rounds before giving up on seeing a shared COMMIT


def readable_elsewhere(db_path, user_id):
    """Whether a separate read-only connection sees the user's row."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT count(*) FROM users WHERE id = ?", (user_id,)).fetchone()[0]
    finally:
        db.close()


def register_round(svc, n, prefix):
    """n POST /api/v1/users at once; their answers, in any order."""
    out, lock = [], threading.Lock()

    def one(i):
        email = unique_email(f"{prefix}{i}")
        resp = svc.post("/api/v1/users", {"name": f"G {i}", "email": email,
                                          "password": "correct horse battery"})
        # Checked the moment the answer is in: the row must already be
        # committed, visible from another connection.
        seen = readable_elsewhere(svc.db_path, resp.json()["id"]) if resp.status == 201 else None
        with lock:
            out.append((email, resp, seen))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == n, f"{n - len(out)} requests never answered"
    return out


FRAME = 4096 + 24  # a WAL frame: its header and a page


def counts(svc, wal=False):
    """(COMMITs, transactions), and the WAL's bytes when wal, from one scrape
    of /metrics."""
    got = {}
    for line in svc.metrics().splitlines():
        name, _, value = line.partition(" ")
        if name in ("store_commits_total", "store_transactions_total", "store_wal_bytes_total"):
            got[name] = float(value)
    out = (got.get("store_commits_total", 0), got.get("store_transactions_total", 0))
    return out + (got.get("store_wal_bytes_total", 0),) if wal else out


def test_concurrent_writes_share_commits_and_answers_follow_them(service_factory):
    svc = service_factory("users")
    svc.wait_ready()
    commits0, txns0 = counts(svc)
    made = 0
    for rnd in range(ROUNDS_MAX):
        for email, resp, seen in register_round(svc, ROUND, f"g{rnd}-"):
            assert resp.status == 201, resp
            assert seen == 1, f"{email}: answered 201 before its row was committed"
            made += 1
        commits, txns = counts(svc)
        if txns - txns0 > commits - commits0:
            break
    commits, txns = counts(svc)
    # every registration is one transaction (user row + user.registered in
    # the outbox); the relay's marks are transactions too
    assert txns - txns0 >= made, (txns - txns0, made)
    assert txns - txns0 > commits - commits0, \
        f"{made} concurrent writes never shared a COMMIT ({commits - commits0} commits)"


def test_the_wal_bytes_follow_the_commits(service_factory):
    svc = service_factory("users")
    svc.wait_ready()
    # a first write, counted: the baseline is past the WAL's own header
    for email, resp, seen in register_round(svc, 1, "wal-warm-"):
        assert resp.status == 201, (email, resp)
    commits0, _, wal0 = wait_until(
        lambda: (lambda c: c if c[0] > 0 else None)(counts(svc, wal=True)), 10,
        what="the first commit counted")
    for email, resp, seen in register_round(svc, 6, "wal-"):
        assert resp.status == 201 and seen == 1, (email, resp)
    commits, _, wal = wait_until(
        lambda: (lambda c: c if c[0] > commits0 else None)(counts(svc, wal=True)), 10,
        what="the registrations' commits counted")
    assert wal - wal0 >= (commits - commits0) * FRAME, \
        f"{commits - commits0} COMMITs wrote {wal - wal0} bytes: less than a frame each"
    # (a WAL that a checkpoint emptied starts over with a 32-byte header)
    assert (wal - wal0) % FRAME in (0, 32), f"{wal - wal0} bytes: not whole frames"


def test_without_group_commit_each_transaction_commits_alone(service_factory):
    svc = service_factory("users", GROUP_COMMIT=0)
    svc.wait_ready()
    assert any("GROUP_COMMIT=0" in ln for ln in svc.log_lines())
    for email, resp, seen in register_round(svc, 8, "solo-"):
        assert resp.status == 201 and seen == 1, (email, resp)
    commits, txns = wait_until(lambda: (lambda c: c if c[1] >= 8 else None)(counts(svc)), 10,
                               what="the eight registrations counted")
    assert commits == txns, (commits, txns)


def test_a_failed_group_commit_answers_503_and_saves_nothing(small_fs, service_factory):
    svc = service_factory("users", DB_PATH=str(small_fs.path / "users.db"))
    svc.wait_ready()
    warm = svc.post("/api/v1/users", {"name": "Warm", "email": unique_email("warm"),
                                      "password": "correct horse battery"})
    assert warm.status == 201, warm

    small_fs.fill()
    email = unique_email("full")
    body = {"name": "Full Disk", "email": email, "password": "correct horse battery"}
    resp = svc.post("/api/v1/users", body)
    assert resp.status == 503, resp
    err = resp.json()["error"]
    assert err["code"] == "unavailable" and "nothing was saved" in err["message"], err
    assert resp.headers.get("retry-after") == "1", resp.headers
    assert any("the group commit failed" in ln for ln in svc.log_lines())
    assert svc.get("/healthz").status == 200

    small_fs.free()
    again = wait_until(lambda: (lambda x: x if x.status != 503 else None)(
        svc.post("/api/v1/users", body)), 20, interval=0.2, what="the retry saved")
    assert again.status == 201, f"the failed attempt left something behind: {again}"
    got = svc.get(f"/api/v1/users/{again.json()['id']}", token=service_token())
    assert got.status == 200 and got.json()["email"] == email.lower(), got
    db = sqlite3.connect(f"file:{svc.db_path}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT count(*) FROM users WHERE email = ?",
                          (email.lower(),)).fetchone()[0] == 1
    finally:
        db.close()
