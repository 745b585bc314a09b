-- migration: 1
-- schema.sql -- the users service's own database (DESIGN.md §8).
-- Each numbered block above runs once, in order, inside a transaction that also
-- sets PRAGMA user_version; blocks are append-only: never edit an applied one.
--
-- users: one row per account. id is a lower-case UUID string. email is stored
-- trimmed and lower-cased (the CHECK holds every writer, HTTP and stream
-- import alike, to that) and is unique without regard to ASCII case.
-- pw_hash/pw_salt/pw_iterations are PBKDF2-HMAC-SHA256 parameters, all NULL for
-- a user imported over a stream (such a user cannot obtain a token).
-- created_at is ISO-8601 UTC with milliseconds: 2026-11-26T04:24:11.123Z.
-- WITHOUT ROWID: GET /users/{id}, the hot read, is one b-tree lookup.
CREATE TABLE users (
    id            TEXT NOT NULL PRIMARY KEY CHECK (length(id) = 36),
    name          TEXT NOT NULL CHECK (length(name) > 0),
    email         TEXT NOT NULL UNIQUE COLLATE NOCASE CHECK (email = lower(trim(email))),
    pw_hash       BLOB,
    pw_salt       BLOB,
    pw_iterations INTEGER,
    created_at    TEXT NOT NULL,
    CHECK ((pw_hash IS NULL) = (pw_salt IS NULL)
           AND (pw_hash IS NULL) = (pw_iterations IS NULL))
) WITHOUT ROWID;
