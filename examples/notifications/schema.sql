-- migration: 1
-- schema.sql -- the notifications service's own database. Each numbered
-- block runs once, in order (ripple/store.h); never edit an applied one.
--
-- One row per notification: per order and kind, so an event delivered
-- twice (or sent again with a new id) notifies once. seq is the cursor of
-- GET /api/v1/notifications; ids are lower-case UUIDs; times ISO-8601 UTC.
CREATE TABLE notifications (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    user_id    TEXT NOT NULL,
    order_id   TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('confirmed', 'cancelled', 'rejected')),
    message    TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (order_id, kind)
);
CREATE INDEX notifications_by_user ON notifications (user_id, seq);
