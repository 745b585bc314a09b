"""payments' schema over time: a database written by an older version
opens with every migration since applied, and keeps its rows.

- Migration 2 drops payments_by_user: no query of the service read
  payments by user, and every charge rewrote a leaf of that index (80% of
  the pages payments' COMMITs wrote to the WAL under the saga bench).
"""

import sqlite3

from conftest import REPO
from test_orders import schema_blocks


def test_a_version_1_database_loses_the_unused_user_index_and_keeps_its_rows(
        service_factory, tmp_path):
    blocks = schema_blocks(REPO / "services" / "payments" / "schema.sql")
    assert "payments_by_user" in blocks[1] and 2 in blocks
    db = tmp_path / "old-payments.db"
    conn = sqlite3.connect(db)
    conn.executescript(f"BEGIN; {blocks[1]}; PRAGMA user_version = 1; COMMIT;")
    at = "2026-12-01T10:00:00.000Z"
    conn.execute("INSERT INTO payments (order_id, user_id, amount_cents, status, created_at, "
                 "updated_at) VALUES (?, ?, 700, 'succeeded', ?, ?)",
                 ("01a25180-cdbe-7633-aa61-3b516a5a492f",
                  "c2887db8-032b-4875-8873-5a54b94cd002", at, at))
    conn.commit()
    conn.close()

    svc = service_factory("payments", DB_PATH=str(db))
    svc.wait_ready()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 2
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                            "name = 'payments_by_user'").fetchall() == []
        assert conn.execute("SELECT count(*), sum(amount_cents) FROM payments "
                            "WHERE user_id = 'c2887db8-032b-4875-8873-5a54b94cd002'"
                            ).fetchone() == (1, 700)
    finally:
        conn.close()
