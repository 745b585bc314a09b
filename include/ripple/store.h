/* store.h -- the service's own SQLite database.
 *
 * Opens the file in WAL mode (synchronous=NORMAL, foreign keys on, a busy
 * timeout), applies the versioned migrations of the service's schema.sql, and
 * hands out prepared statements that it finalizes at close. schema.sql is
 * split into migrations by lines of the form
 *
 *     -- migration: 1
 *
 * numbered 1, 2, 3... in order; each migration whose number is above
 * PRAGMA user_version runs in its own transaction, which also sets
 * user_version. A changed or missing migration number is an error, never a
 * silent skip. Loop thread only; SQL is always bound, never formatted. */
#ifndef RIPPLE_STORE_H
#define RIPPLE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <ripple/common.h>

struct sqlite3;
struct sqlite3_stmt;
struct uv_loop_s;
struct store; /* opaque */

#define STORE_MAX_STATEMENTS 64

/* Opens (creating it and its parent directory when missing) the database at
 * path and migrates it with schema (the text of schema.sql; borrowed).
 * Returns 0 and sets *out, or a negative errno (-EIO for SQLite errors,
 * -EINVAL for a malformed schema); the reason is logged. */
CORE_MUST_CHECK int store_open(const char *path, const char *schema, struct store **out);
/* Finalizes every statement and closes the database. NULL is a no-op. */
void store_close(struct store *st);

/* WAL pages (32 MiB of 4 KiB pages) that start a background checkpoint,
 * unless store_set_checkpoint_pages says otherwise.
 * Each cycle costs the loop two fdatasyncs (its tail checkpoint), and a
 * checkpoint copies each page once however often the WAL holds it: the
 * hot pages (the outbox's and the indexes' right edges, the rows of orders
 * in flight) repeat, so a longer cycle copies fewer pages per frame. In
 * the saga bench, orders' WAL held 58% distinct pages over 2,000 frames
 * and 41% over 4,000; at 8,000 pages rather than 2,000, orders wrote a
 * third fewer database pages per order and fsynced a third as often. */
#define STORE_CHECKPOINT_PAGES 8000

/* Moves WAL checkpoints off the caller's thread: SQLite's automatic
 * checkpoint (which fsyncs inside COMMIT) is replaced by a PASSIVE
 * checkpoint on a second connection, run on loop's thread pool whenever the
 * WAL passes STORE_CHECKPOINT_PAGES pages. Commits then never fsync on the
 * loop (synchronous=NORMAL). No-op for in-memory databases. The store must
 * be closed only after the loop has run dry. Returns 0 or -EIO. */
CORE_MUST_CHECK int store_offload_checkpoints(struct store *st, struct uv_loop_s *loop);
/* The WAL's size in pages that starts a background checkpoint (tests use
 * small ones). */
void store_set_checkpoint_pages(struct store *st, int pages);
/* Background checkpoints completed so far. */
unsigned long store_checkpoints(const struct store *st);
/* Checkpoints the loop ran itself to finish a background one, so that the
 * WAL starts over instead of growing (see store.c). */
unsigned long store_tail_checkpoints(const struct store *st);

/* The connection, borrowed, for sqlite3_* calls on prepared statements. */
struct sqlite3 *store_db(struct store *st);
/* user_version after migrations. */
int store_schema_version(struct store *st);

/* Prepares sql once; *out stays valid until store_close, which finalizes it.
 * Call sqlite3_reset (or store_reset) after each use. Returns 0 or a negative
 * errno (-EIO, -ENOSPC past STORE_MAX_STATEMENTS, -EINVAL for several
 * statements in one string). */
CORE_MUST_CHECK int store_prepare(struct store *st, const char *sql, struct sqlite3_stmt **out);
/* Prepares every statement of list (n of them): sql into *stmt. Returns 0,
 * or the first failure (logged once) -- nothing to undo: the store
 * finalizes what it prepared. */
struct store_sql {
    const char *sql;
    struct sqlite3_stmt **stmt;
};
CORE_MUST_CHECK int store_prepare_all(struct store *st, const struct store_sql *list, size_t n);

/* sqlite3_reset + sqlite3_clear_bindings. */
void store_reset(struct sqlite3_stmt *stmt);

/* Statements with their arguments, always bound (never formatted). fmt
 * has one letter per parameter, in order: 's' a const char * (NULL binds
 * NULL); 'S' a const char * and its size_t length (NULL binds NULL); 'b' a
 * const void * and
 * its size_t length (a blob); 'i' an int; 'I' an int64_t; 'n' NULL (no
 * argument) -- the letters of jansson's json_pack where they meet.
 * Strings and blobs are bound SQLITE_STATIC: they must live until the
 * statement is reset. Returns 0, or -EINVAL for a bad letter or a failed
 * bind (a bug). */
CORE_MUST_CHECK int store_bind(struct sqlite3_stmt *stmt, const char *fmt, ...);

/* Runs a statement that returns no row (INSERT, UPDATE, DELETE) with fmt's
 * arguments, then resets it. Returns 0; -EEXIST when a UNIQUE or PRIMARY
 * KEY constraint refused it (not logged: the caller decides); or -EIO,
 * logged once as "<what>: <SQLite's message>", a store fault noted
 * (store_check_fault). */
CORE_MUST_CHECK int store_exec(struct store *st, struct sqlite3_stmt *stmt, const char *what,
                               const char *fmt, ...);

/* Runs a query with fmt's arguments and steps once. Returns 1 with the
 * statement on its first row (read the columns, then store_reset it), 0
 * when there is no row, or -EIO (logged as store_exec's); on 0 and -EIO it
 * is reset already. */
CORE_MUST_CHECK int store_query(struct store *st, struct sqlite3_stmt *stmt, const char *what,
                                const char *fmt, ...);

/* Copies column col of stmt's current row into buf (len bytes),
 * NUL-terminated. Returns 0, -ENOENT for a NULL value, or -ENOSPC when it
 * does not fit (buf then holds ""). */
int store_column_text(struct sqlite3_stmt *stmt, int col, char *buf, size_t len);

/* Transactions. store_begin opens BEGIN IMMEDIATE (one writer: SQLite's, so
 * commit order is seq order for the outbox); a write lock held by another
 * process makes it fail after a few milliseconds (a store fault), never
 * block the loop for long. Nesting is not allowed. store_commit runs the
 * on-commit hooks after a successful COMMIT, in the same loop iteration; a
 * failed COMMIT is rolled back. All return 0 or a negative errno (-EIO;
 * -EINVAL for a nested BEGIN or a COMMIT without a transaction). */
CORE_MUST_CHECK int store_begin(struct store *st);
CORE_MUST_CHECK int store_commit(struct store *st);
void store_rollback(struct store *st);
int store_in_txn(const struct store *st);

/* Group commit. After store_group_commit, the transactions of one loop
 * iteration share one SQLite transaction: the first store_begin of an
 * iteration opens BEGIN IMMEDIATE, each store_begin/store_commit pair is a
 * savepoint inside it (store_rollback undoes only its own), and the real
 * COMMIT runs once, at the end of the iteration (a uv_prepare before the
 * loop would block, a uv_check after I/O). The on-commit hooks run after
 * that COMMIT. So store_commit returning 0 means "will be committed with
 * the group", not "durable": whatever tells the outside world -- an HTTP
 * answer, an XACK, a relay's mark -- waits for store_when_durable. If the
 * group's COMMIT fails, every transaction in it is rolled back and the
 * waiters hear ok = 0. Statements run outside store_begin while a group is
 * open (reads, pruning) run inside the group.
 *
 * store_group_commit returns 0 or a libuv error; log_scope (log.h; borrowed,
 * static, may be NULL) names the module whose lines the flush writes. store_group_end commits
 * what is pending and closes the loop handles (the store itself is closed
 * later, after the loop ran dry); the store then commits each transaction
 * on its own again. */
CORE_MUST_CHECK int store_group_commit(struct store *st, struct uv_loop_s *loop,
                                       const char *log_scope);
void store_group_end(struct store *st);
/* Reads of one iteration in one read transaction (group mode only; a no-op
 * otherwise, or when a transaction is open): opens a deferred BEGIN that
 * the end of the iteration (or the next store_begin, which needs the write
 * lock) ends. The reads after it see one snapshot: what was committed when
 * the first of them ran, and the iteration's own writes. The service calls
 * it before a GET's handler. Returns 0 or -EIO. */
int store_read_begin(struct store *st);
/* 1 while a group transaction is open: what was committed into it is not
 * durable yet. */
int store_group_pending(const struct store *st);
/* The open group's number (they count up from 1), 0 when none is open or
 * the store does not group: what was written in group g is durable, or
 * gone, once the number moves on. SQLite can roll a group back on its own
 * (a full disk): the next store_begin opens a new one. */
uint64_t store_group_gen(const struct store *st);
/* 1 between store_group_commit and store_group_end. The on-commit hooks of
 * a grouped store run from the loop's prepare or check phase, once per
 * iteration: a hook should do its work there, not start a uv_check (that
 * would wait for the next iteration's I/O). */
int store_grouped(const struct store *st);
/* Calls fn(data, ok) once the open group's COMMIT is done: ok 1 when it
 * committed, 0 when it was rolled back. Returns 0 when queued; 1 when no
 * group is open (nothing is waiting: go on now, fn is not called); -ENOMEM.
 * fn may write again (that opens the next group). */
typedef void (*store_durable_cb)(void *data, int ok);
CORE_MUST_CHECK int store_when_durable(struct store *st, store_durable_cb fn, void *data);
/* Forgets a queued fn(data) (its owner is going away). */
void store_cancel_durable(struct store *st, store_durable_cb fn, const void *data);
/* Real COMMITs so far, and the transactions (store_commit) they carried. */
void store_commit_counts(const struct store *st, uint64_t *commits, uint64_t *txns);
/* Bytes the store's connection has written to its write-ahead log so far:
 * every COMMIT's frames (a 24-byte header and a whole page each, however
 * little of the page changed) and the WAL's own headers. The write volume
 * of the database's commits, before checkpoints copy the newest frame of
 * each page into the database file. 0 for a database not in WAL mode. */
uint64_t store_wal_bytes(struct store *st);

/* fn runs inside BEGIN IMMEDIATE; 0 from fn commits, anything else rolls
 * back and is returned. A failed COMMIT rolls back and returns -EIO. */
typedef int (*store_txn_cb)(struct store *st, void *data);
CORE_MUST_CHECK int store_txn(struct store *st, store_txn_cb fn, void *data);

/* Registers fn to run after every successful commit (e.g. to wake the outbox
 * relay). At most a few hooks; returns 0 or -ENOSPC. */
typedef void (*store_commit_cb)(struct store *st, void *data);
CORE_MUST_CHECK int store_on_commit(struct store *st, store_commit_cb fn, void *data);

/* Removes the hook registered with exactly fn and data, if any. */
void store_off_commit(struct store *st, store_commit_cb fn, const void *data);

/* Store faults: a failure of the database itself -- disk full, a lock held
 * elsewhere, an I/O error, a read-only or vanished file, no memory -- as
 * opposed to a failure of what was written (a constraint, a bad statement).
 * 1 when SQLite's (extended) result code is one. */
int store_code_is_fault(int sqlite_code);

/* Classifies the connection's last error (call it right after the failing
 * statement, before the next one): 1 when it is a store fault, which marks
 * the store unwritable as a failed BEGIN or COMMIT does; 0 otherwise. */
int store_check_fault(struct store *st);

/* The extended SQLite code of the fault that marked the store unwritable,
 * or 0 while it is writable (the mark clears on the next commit). */
int store_fault(const struct store *st);

/* For readiness: 1 while writable. While marked unwritable and outside a
 * transaction, probes with a one-row write (table store_probe) at most once
 * a second, so a store that recovered while nothing else wrote is seen. */
int store_writable(struct store *st);

/* Runs a quick query (SELECT 1) for readiness. Returns 0 or -EIO. */
int store_ping(struct store *st);

/* sqlite3_errmsg of the connection (borrowed, valid until the next call). */
const char *store_errmsg(struct store *st);

#endif
