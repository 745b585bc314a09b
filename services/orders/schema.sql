-- migration: 1
-- schema.sql -- the orders service's own database (DESIGN.md §8).
-- Each numbered block runs once, in order, inside a transaction that also
-- sets PRAGMA user_version; blocks are append-only: never edit an applied one.
--
-- orders: one row per order. seq is the insertion order: lists page on it,
-- newest first (the cursor "next" is a seq). id and user_id are lower-case
-- UUID strings. items is the canonical JSON [{"sku":..,"qty":..}] the input
-- rules produced. amount_cents is NULL until inventory prices the order;
-- reason is NULL unless the order was rejected or cancelled. Times are
-- ISO-8601 UTC with milliseconds: 2026-11-26T04:24:11.123Z.
CREATE TABLE orders (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE CHECK (length(id) = 36),
    user_id      TEXT NOT NULL CHECK (length(user_id) = 36),
    status       TEXT NOT NULL CHECK (status IN ('PENDING', 'AWAITING_PAYMENT', 'CONFIRMED',
                                                 'REJECTED', 'CANCELLED')),
    items        TEXT NOT NULL CHECK (json_valid(items) AND json_type(items) = 'array'),
    amount_cents INTEGER CHECK (amount_cents IS NULL OR amount_cents > 0),
    reason       TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
-- A user's orders, newest first.
CREATE INDEX orders_by_user ON orders (user_id, seq);

-- order_steps: the saga timeline, one row per event that moved an order on,
-- numbered n = 1, 2, ... per order in the transaction that made the step.
-- An event the order sent (order.placed, stock.reserve, ...) gets its stream
-- entry_id once the outbox relay has published it (NULL until then); an
-- event it received (order.place, stock.reserved, ...) has it from the start.
CREATE TABLE order_steps (
    order_id   TEXT NOT NULL REFERENCES orders (id),
    n          INTEGER NOT NULL CHECK (n > 0),
    step       TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    stream     TEXT NOT NULL,
    entry_id   TEXT,
    at         TEXT NOT NULL,
    PRIMARY KEY (order_id, n)
) WITHOUT ROWID;

-- migration: 2
-- The saga's deadline: when the order's current step must have had its
-- reply (ms since the epoch), NULL once the order is final. A sweep cancels
-- orders past it, so deadlines survive restarts.
ALTER TABLE orders ADD COLUMN deadline_ms INTEGER;
CREATE INDEX orders_by_deadline ON orders (deadline_ms) WHERE deadline_ms IS NOT NULL;

-- migration: 3
-- A client's Idempotency-Key on POST /api/v1/orders, scoped to the user:
-- a retried POST with the same key gets the order it already made, never a
-- second one. NULL for orders placed without a key or over the stream.
ALTER TABLE orders ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX orders_by_idempotency_key ON orders (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- migration: 4
-- The W3C trace context of the request or command that placed the order
-- (ripple/trace.h): the saga's later steps, timeouts included, continue it.
ALTER TABLE orders ADD COLUMN traceparent TEXT;

-- migration: 5
-- The saga timeline moves into its order's row: timeline is the JSON array
-- of its steps, as GET shows them ({step, event_type, event_id, stream,
-- entry_id, at}, oldest first). A transition appends its steps with the
-- same UPDATE that moves the order on -- one row written per transition,
-- not a row per step besides the order's. entry_id is null for an event
-- the order sent until a read finds it published (the outbox) and stores
-- it back. No CHECK (json_valid): it would parse the whole timeline on
-- every transition; only the service writes it, from json_out or jansson.
ALTER TABLE orders ADD COLUMN timeline TEXT NOT NULL DEFAULT '[]';
UPDATE orders SET timeline = (
    SELECT json_group_array(json_object('step', step, 'event_type', event_type,
                                        'event_id', event_id, 'stream', stream,
                                        'entry_id', entry_id, 'at', at))
    FROM (SELECT * FROM order_steps s WHERE s.order_id = orders.id ORDER BY s.n))
WHERE id IN (SELECT order_id FROM order_steps);
DROP TABLE order_steps;
