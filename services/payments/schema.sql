-- migration: 1
-- schema.sql -- the payments service's own database (DESIGN.md §8).
-- Each numbered block runs once, in order, inside a transaction that also
-- sets PRAGMA user_version; blocks are append-only: never edit an applied one.
--
-- accounts: one per user, opened on user.registered with the configured
-- initial credit. Amounts are integer cents. Besides the balance, every row
-- keeps the running totals that explain it, and the table CHECK holds every
-- write to the invariant of DESIGN.md §8:
--     initial + credited = balance + charged - refunded
-- (refunded never passes charged: only a succeeded charge is refunded, once).
-- user_id is a lower-case UUID string. Times are ISO-8601 UTC with
-- milliseconds: 2026-11-26T04:24:11.123Z.
CREATE TABLE accounts (
    user_id        TEXT NOT NULL PRIMARY KEY CHECK (length(user_id) = 36),
    balance_cents  INTEGER NOT NULL CHECK (typeof(balance_cents) = 'integer'
                                           AND balance_cents >= 0),
    initial_cents  INTEGER NOT NULL CHECK (typeof(initial_cents) = 'integer'
                                           AND initial_cents >= 0),
    credited_cents INTEGER NOT NULL DEFAULT 0 CHECK (typeof(credited_cents) = 'integer'
                                                     AND credited_cents >= 0),
    charged_cents  INTEGER NOT NULL DEFAULT 0 CHECK (typeof(charged_cents) = 'integer'
                                                     AND charged_cents >= 0),
    refunded_cents INTEGER NOT NULL DEFAULT 0 CHECK (typeof(refunded_cents) = 'integer'
                                                     AND refunded_cents >= 0
                                                     AND refunded_cents <= charged_cents),
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    CHECK (initial_cents + credited_cents = balance_cents + charged_cents - refunded_cents)
) WITHOUT ROWID;

-- payments: at most one per order, whatever is redelivered: the row is the
-- record that the charge for order_id was decided (succeeded: the amount was
-- debited; failed: nothing moved, reason says why; refunded: debited, then
-- given back). user_id and amount_cents are those of the charge command.
-- reason is set exactly when the charge failed.
CREATE TABLE payments (
    order_id     TEXT NOT NULL PRIMARY KEY CHECK (length(order_id) = 36),
    user_id      TEXT NOT NULL CHECK (length(user_id) = 36),
    amount_cents INTEGER NOT NULL CHECK (typeof(amount_cents) = 'integer' AND amount_cents > 0),
    status       TEXT NOT NULL CHECK (status IN ('succeeded', 'failed', 'refunded')),
    reason       TEXT CHECK ((status = 'failed') = (reason IS NOT NULL)),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
) WITHOUT ROWID;
-- A user's payments (support queries; the invariant check sums them).
CREATE INDEX payments_by_user ON payments (user_id, status);

-- migration: 2
-- payments_by_user goes: no query of the service reads payments by user (an
-- account's totals live in accounts; GET reads a payment by its order), yet
-- every charge paid for it, with a leaf of a per-user index to rewrite: in
-- the saga bench 80% of the pages payments' COMMITs wrote to the WAL. A
-- support query by user scans the table instead.
DROP INDEX payments_by_user;
