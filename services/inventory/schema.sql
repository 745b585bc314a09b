-- migration: 1
-- schema.sql -- the inventory service's own database (DESIGN.md §8).
-- Each numbered block runs once, in order, inside a transaction that also
-- sets PRAGMA user_version; blocks are append-only: never edit an applied one.
-- Tables are STRICT: a value of the wrong type is an error, never a silent
-- conversion. Times are ISO-8601 UTC with milliseconds: 2026-11-26T04:24:11.123Z.
--
-- products: one row per sku (^[A-Za-z0-9._-]{1,64}$, compared byte for byte,
-- so ORDER BY sku is the byte order lists page in). Stock moves between
-- available (free to reserve), reserved (held for an order that has not paid
-- yet) and sold (committed); initial is the seeded stock, restocked the sum of
-- every restock. The table CHECK holds every writer to the stock invariant
-- (DESIGN.md §8): initial + restocked = available + reserved + sold.
CREATE TABLE products (
    sku         TEXT NOT NULL PRIMARY KEY CHECK (length(sku) BETWEEN 1 AND 64),
    name        TEXT NOT NULL CHECK (length(name) > 0),
    price_cents INTEGER NOT NULL CHECK (price_cents > 0),
    available   INTEGER NOT NULL CHECK (available >= 0),
    reserved    INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold        INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0),
    initial     INTEGER NOT NULL DEFAULT 0 CHECK (initial >= 0),
    restocked   INTEGER NOT NULL DEFAULT 0 CHECK (restocked >= 0),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CHECK (initial + restocked = available + reserved + sold)
) WITHOUT ROWID, STRICT;

-- reservations: the outcome of the first stock.reserve (or stock.release) for
-- an order; a repeated command replays it instead of touching stock again.
--   RESERVED   the items are held (reservation_items); amount_cents is the
--              order's total at the prices of the time
--   COMMITTED  the held items were sold (stock.commit)
--   RELEASED   the held items went back (stock.release), or a tombstone: a
--              release that came first, so a later reserve is refused and
--              changes nothing (amount_cents NULL then)
--   REJECTED   refused with reason (unknown_sku, out_of_stock, ...); no items
-- order_id is a lower-case UUID string.
CREATE TABLE reservations (
    order_id     TEXT NOT NULL PRIMARY KEY CHECK (length(order_id) = 36),
    status       TEXT NOT NULL CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED',
                                                 'COMMITTED')),
    reason       TEXT CHECK ((status = 'REJECTED') = (reason IS NOT NULL)),
    amount_cents INTEGER CHECK (amount_cents IS NULL OR amount_cents > 0),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    CHECK (status NOT IN ('RESERVED', 'COMMITTED') OR amount_cents IS NOT NULL)
) WITHOUT ROWID, STRICT;

-- reservation_items: what a RESERVED order holds, kept after it is committed
-- or released (the record of what moved).
CREATE TABLE reservation_items (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    sku      TEXT NOT NULL REFERENCES products (sku),
    qty      INTEGER NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, sku)
) WITHOUT ROWID, STRICT;

-- migration: 2
-- The seed catalog, inserted once, on the first start (this block runs when
-- user_version is below 2). SKU-6 has little stock, for out-of-stock cases.
INSERT INTO products (sku, name, price_cents, available, initial, created_at, updated_at)
VALUES
    ('SKU-1', 'Espresso cup', 250, 200, 200,
     strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ('SKU-2', 'Pour-over kettle', 3499, 40, 40,
     strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ('SKU-3', 'Burr grinder', 5000, 10, 10,
     strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ('SKU-4', 'Coffee beans 250 g', 1299, 150, 150,
     strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ('SKU-5', 'Paper filters x100', 450, 120, 120,
     strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ('SKU-6', 'Limited edition mug', 1800, 3, 3,
     strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
