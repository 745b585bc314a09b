/* test_store.c -- core/store: versioned migrations, transactions, on-commit
 * hooks and the prepared statement cache, on files in a fresh mkdtemp
 * directory per test (removed again in the fini hook). */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>
#include <uv.h>

#include <ripple/store.h>

#include "db_fixture.h"

static char dir[64];
static char db_path[128];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/ripple-store-XXXXXX");
    tmpdir_make(dir);
    /* a missing parent directory (two levels) must be created by store_open */
    cr_assert(snprintf(db_path, sizeof(db_path), "%s/var/data/test.db", dir) <
              (int)sizeof(db_path));
}

static void teardown(void)
{
    tmpdir_remove(dir);
}

TestSuite(store, .init = setup, .fini = teardown);

static const char schema_v1[] = "-- users service schema\n"
                                "\n"
                                "-- migration: 1\n"
                                "CREATE TABLE a (x INTEGER PRIMARY KEY, v TEXT);\n"
                                "INSERT INTO a (x, v) VALUES (1, 'one');\n";

static const char schema_v2[] = "-- users service schema\n"
                                "\n"
                                "-- migration: 1\n"
                                "CREATE TABLE a (x INTEGER PRIMARY KEY, v TEXT);\n"
                                "INSERT INTO a (x, v) VALUES (1, 'one');\n"
                                "-- migration: 2\n"
                                "CREATE TABLE b (y INTEGER REFERENCES a (x));\n"
                                "INSERT INTO a (x, v) VALUES (2, 'two');\n";

/* One integer from a query without parameters, or -1. */
static long query_int(struct store *st, const char *sql)
{
    return db_int(store_db(st), sql);
}

static int table_exists(struct store *st, const char *name)
{
    sqlite3_stmt *stmt = NULL;
    int found;

    cr_assert_eq(sqlite3_prepare_v2(store_db(st), "SELECT 1 FROM sqlite_master WHERE name = ?1", -1,
                                    &stmt, NULL),
                 SQLITE_OK);
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
    found = sqlite3_step(stmt) == SQLITE_ROW;
    sqlite3_finalize(stmt);
    return found;
}

static struct store *open_ok(const char *schema)
{
    struct store *st = NULL;

    cr_assert_eq(store_open(db_path, schema, &st), 0);
    cr_assert_not_null(st);
    return st;
}

Test(store, open_creates_dir_and_sets_pragmas)
{
    struct store *st = open_ok(schema_v1);
    sqlite3_stmt *stmt = NULL;
    struct stat sb;

    cr_assert_eq(stat(db_path, &sb), 0);
    cr_assert_eq(sqlite3_prepare_v2(store_db(st), "PRAGMA journal_mode", -1, &stmt, NULL),
                 SQLITE_OK);
    cr_assert_eq(sqlite3_step(stmt), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(stmt, 0), "wal");
    sqlite3_finalize(stmt);
    cr_assert_eq(query_int(st, "PRAGMA foreign_keys"), 1);
    cr_assert_eq(query_int(st, "PRAGMA synchronous"), 1);   /* NORMAL */
    cr_assert_eq(query_int(st, "PRAGMA secure_delete"), 2); /* FAST */
    cr_assert_eq(query_int(st, "PRAGMA cache_size"), -8192);
    cr_assert_eq(store_ping(st), 0);
    store_close(st);
    store_close(NULL);
}

Test(store, migrations_apply_in_order_and_set_user_version)
{
    struct store *st = open_ok(schema_v2);

    cr_assert_eq(store_schema_version(st), 2);
    cr_assert_eq(query_int(st, "PRAGMA user_version"), 2);
    cr_assert(table_exists(st, "a") && table_exists(st, "b"));
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 2);
    store_close(st);
}

Test(store, reopening_does_not_rerun_migrations)
{
    struct store *st = open_ok(schema_v1);

    store_close(st);
    st = open_ok(schema_v1); /* a re-run would fail on CREATE TABLE a */
    cr_assert_eq(store_schema_version(st), 1);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 1);
    store_close(st);
}

Test(store, later_migration_applies_alone)
{
    struct store *st = open_ok(schema_v1);

    cr_assert_eq(
        sqlite3_exec(store_db(st), "UPDATE a SET v = 'kept' WHERE x = 1", NULL, NULL, NULL),
        SQLITE_OK);
    store_close(st);
    st = open_ok(schema_v2);
    cr_assert_eq(store_schema_version(st), 2);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 2);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a WHERE v = 'kept'"), 1);
    cr_assert(table_exists(st, "b"));
    store_close(st);
}

Test(store, crlf_markers_accepted)
{
    struct store *st = open_ok("-- migration: 1\r\nCREATE TABLE c (z);\r\n-- migration: 2 \r\n");

    cr_assert_eq(store_schema_version(st), 2);
    cr_assert(table_exists(st, "c"));
    store_close(st);
}

static void expect_einval(const char *schema)
{
    static char sentinel;
    struct store *st = (struct store *)(void *)&sentinel; /* must be reset to NULL */

    cr_expect_eq(store_open(db_path, schema, &st), -EINVAL, "schema: %s", schema);
    cr_expect_null(st);
}

Test(store, malformed_schemas_rejected)
{
    expect_einval("-- migration: x\nCREATE TABLE a (x);\n");
    expect_einval("-- migration:\nCREATE TABLE a (x);\n");
    expect_einval("-- migration: 1a\nCREATE TABLE a (x);\n");
    expect_einval("-- migration: -1\nCREATE TABLE a (x);\n");
    expect_einval("-- migration: 0\nCREATE TABLE a (x);\n");
    expect_einval("--migration: 1\nCREATE TABLE a (x);\n");
    expect_einval("-- Migration: 1\nCREATE TABLE a (x);\n");
    expect_einval("  -- migration: 1\nCREATE TABLE a (x);\n");
    expect_einval("-- migration 1\nCREATE TABLE a (x);\n");
    expect_einval("-- migration: 2\nCREATE TABLE a (x);\n");
    expect_einval("-- migration: 1\nCREATE TABLE a (x);\n-- migration: 3\nCREATE TABLE b (y);\n");
    expect_einval("-- migration: 1\nCREATE TABLE a (x);\n-- migration: 1\nCREATE TABLE b (y);\n");
    expect_einval("-- migration: 2\nCREATE TABLE b (y);\n-- migration: 1\nCREATE TABLE a (x);\n");
    expect_einval("CREATE TABLE a (x);\n-- migration: 1\nCREATE TABLE b (y);\n");
    expect_einval("CREATE TABLE a (x);\n");
    expect_einval("");
}

Test(store, prose_mentioning_migrations_is_a_comment)
{
    struct store *st = open_ok("-- migrations are numbered from 1\n-- migration: 1\n"
                               "-- migrations below must not change\nCREATE TABLE a (x);\n");

    cr_assert_eq(store_schema_version(st), 1);
    store_close(st);
}

Test(store, failing_migration_rolls_back)
{
    static const char bad_v2[] = "-- migration: 1\n"
                                 "CREATE TABLE a (x INTEGER PRIMARY KEY, v TEXT);\n"
                                 "INSERT INTO a (x, v) VALUES (1, 'one');\n"
                                 "-- migration: 2\n"
                                 "CREATE TABLE b (y);\n"
                                 "INSERT INTO a (x, v) VALUES (3, 'three');\n"
                                 "INSERT INTO no_such_table VALUES (1);\n";
    struct store *st = open_ok(schema_v1);

    store_close(st);
    st = NULL;
    cr_assert_eq(store_open(db_path, bad_v2, &st), -EIO);
    cr_assert_null(st);
    st = open_ok(schema_v1);
    cr_assert_eq(store_schema_version(st), 1);
    cr_assert_eq(query_int(st, "PRAGMA user_version"), 1);
    cr_assert_not(table_exists(st, "b"), "partial migration left table b");
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 1);
    store_close(st);
}

Test(store, failing_first_migration_leaves_version_zero)
{
    struct store *st = NULL;

    cr_assert_eq(store_open(db_path, "-- migration: 1\nCREATE TABLE a (x);\nSELEC oops;\n", &st),
                 -EIO);
    st = open_ok(NULL);
    cr_assert_eq(store_schema_version(st), 0);
    cr_assert_not(table_exists(st, "a"));
    store_close(st);
}

Test(store, database_newer_than_schema_rejected)
{
    struct store *st = open_ok(schema_v2);

    store_close(st);
    st = NULL;
    cr_assert_eq(store_open(db_path, schema_v1, &st), -EINVAL);
    cr_assert_null(st);
}

static int insert_row(struct store *st, void *data)
{
    sqlite3_stmt *stmt = NULL;
    int rc;

    cr_assert(store_in_txn(st));
    rc = store_prepare(st, "INSERT INTO a (x, v) VALUES (?1, 'txn')", &stmt);
    cr_assert_eq(rc, 0);
    sqlite3_bind_int(stmt, 1, *(int *)data);
    rc = sqlite3_step(stmt) == SQLITE_DONE ? 0 : -EIO;
    store_reset(stmt);
    return rc;
}

static int insert_then_fail(struct store *st, void *data)
{
    cr_assert_eq(insert_row(st, data), 0);
    return -ENOENT;
}

Test(store, txn_commits_on_zero_and_rolls_back_on_error)
{
    struct store *st = open_ok(schema_v1);
    int key = 10;

    cr_assert_eq(store_txn(st, insert_row, &key), 0);
    cr_assert_not(store_in_txn(st));
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a WHERE x = 10"), 1);
    key = 11;
    cr_assert_eq(store_txn(st, insert_then_fail, &key), -ENOENT);
    cr_assert_not(store_in_txn(st));
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a WHERE x = 11"), 0);
    key = 10; /* duplicate key: the step fails, store_txn returns fn's error */
    cr_assert_eq(store_txn(st, insert_row, &key), -EIO);
    cr_assert_not(store_in_txn(st));
    store_close(st);
    /* committed data is durable across a reopen */
    st = open_ok(schema_v1);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 2);
    store_close(st);
}

struct hook_state {
    int calls;
    long rows_seen;
    int in_txn_seen;
};

static void on_commit(struct store *st, void *data)
{
    struct hook_state *hs = data;

    hs->calls++;
    hs->in_txn_seen = store_in_txn(st);
    hs->rows_seen = query_int(st, "SELECT count(*) FROM a");
}

Test(store, on_commit_hook_fires_after_commit_only)
{
    struct store *st = open_ok(schema_v1);
    struct hook_state hs = {0};
    int key = 20;

    cr_assert_eq(store_on_commit(st, on_commit, &hs), 0);
    cr_assert_eq(store_txn(st, insert_row, &key), 0);
    cr_assert_eq(hs.calls, 1);
    cr_assert_eq(hs.in_txn_seen, 0, "hook ran inside the transaction");
    cr_assert_eq(hs.rows_seen, 2);
    key = 21;
    cr_assert_eq(store_txn(st, insert_then_fail, &key), -ENOENT);
    cr_assert_eq(hs.calls, 1, "hook ran after a rollback");
    cr_assert_eq(store_begin(st), 0);
    store_rollback(st);
    cr_assert_eq(hs.calls, 1);
    cr_assert_eq(store_begin(st), 0);
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(hs.calls, 2);
    store_close(st);
}

static void noop_hook(struct store *st, void *data)
{
    (void)st;
    (void)data;
}

Test(store, hooks_are_bounded)
{
    struct store *st = open_ok(schema_v1);
    int i, rc = 0;

    for (i = 0; i < 100 && (rc = store_on_commit(st, noop_hook, NULL)) == 0; i++)
        ;
    cr_assert_eq(rc, -ENOSPC);
    cr_assert(i >= 1 && i < 100);
    store_close(st);
}

Test(store, nested_begin_refused)
{
    struct store *st = open_ok(schema_v1);

    cr_assert_eq(store_begin(st), 0);
    cr_assert(store_in_txn(st));
    cr_assert_lt(store_begin(st), 0);
    cr_assert(store_in_txn(st), "the outer transaction survives");
    store_rollback(st);
    cr_assert_not(store_in_txn(st));
    cr_assert_lt(store_commit(st), 0);
    store_close(st);
}

Test(store, prepared_statements_are_reused)
{
    struct store *st = open_ok(schema_v1);
    static const char sql[] = "SELECT v FROM a WHERE x = ?1";
    char copy[sizeof(sql)];
    sqlite3_stmt *s1 = NULL, *s2 = NULL, *s3 = NULL, *s4 = NULL;

    cr_assert_eq(store_prepare(st, sql, &s1), 0);
    cr_assert_eq(store_prepare(st, sql, &s2), 0);
    cr_assert_eq(s1, s2);
    memcpy(copy, sql, sizeof(sql));
    cr_assert_eq(store_prepare(st, copy, &s3), 0);
    cr_assert_eq(s1, s3, "same text in another buffer must hit the cache");
    /* a reused buffer holding other text must not alias the old statement */
    snprintf(copy, sizeof(copy), "SELECT x FROM a");
    cr_assert_eq(store_prepare(st, copy, &s4), 0);
    cr_assert_neq(s1, s4);
    sqlite3_bind_int(s1, 1, 1);
    cr_assert_eq(sqlite3_step(s1), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(s1, 0), "one");
    store_reset(s1);
    cr_assert_eq(sqlite3_step(s1), SQLITE_DONE, "bindings were not cleared");
    store_reset(s1);
    store_close(st);
}

Test(store, prepare_errors)
{
    struct store *st = open_ok(schema_v1);
    sqlite3_stmt *stmt = NULL;
    char sql[64];
    int rc = 0, i;

    cr_assert_eq(store_prepare(st, "SELEC nothing", &stmt), -EIO);
    cr_assert_null(stmt);
    cr_assert_lt(store_prepare(st, "SELECT 1; SELECT 2", &stmt), 0);
    cr_assert_eq(store_prepare(st, "SELECT 1;", &stmt), 0);
    for (i = 0; i < STORE_MAX_STATEMENTS + 1; i++) {
        snprintf(sql, sizeof(sql), "SELECT %d", i + 100);
        rc = store_prepare(st, sql, &stmt);
        if (rc < 0)
            break;
    }
    cr_assert_lt(rc, 0, "the cache is bounded");
    cr_assert_eq(i, STORE_MAX_STATEMENTS - 1);
    store_close(st);
}

/* n commits of one blob each, with an idle loop after each: a checkpoint
 * in flight finishes. */
static void write_blobs(struct store *st, struct sqlite3_stmt *ins, uv_loop_t *loop,
                        const char *payload, size_t len, int n)
{
    for (int i = 0; i < n; i++) {
        cr_assert_eq(store_begin(st), 0);
        sqlite3_bind_blob(ins, 1, payload, (int)len, SQLITE_STATIC);
        cr_assert_eq(sqlite3_step(ins), SQLITE_DONE);
        store_reset(ins);
        cr_assert_eq(store_commit(st), 0);
        uv_run(loop, UV_RUN_DEFAULT);
    }
}

/* Background checkpoints really checkpoint: after many commits with the
 * loop running, the WAL has been reset and reused instead of growing with
 * every page ever written (the checkpoint connection must have read the
 * database once, or SQLite's checkpoint silently does nothing). */
Test(store, background_checkpoints_keep_the_wal_small)
{
    static const char schema[] = "-- migration: 1\nCREATE TABLE blob_rows (b BLOB);\n";
    char wal[160], payload[40960];
    struct sqlite3_stmt *ins;
    struct store *st;
    struct stat sb;
    uv_loop_t loop;

    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(store_open(db_path, schema, &st), 0);
    cr_assert_eq(store_offload_checkpoints(st, &loop), 0);
    store_set_checkpoint_pages(st, 2000); /* 8 MiB: the test writes twice that */
    cr_assert_eq(store_prepare(st, "INSERT INTO blob_rows (b) VALUES (?)", &ins), 0);
    memset(payload, 'x', sizeof(payload));
    /* 400 commits of ~10 pages each: 16 MB through the WAL */
    write_blobs(st, ins, &loop, payload, sizeof(payload), 400);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_gt(store_checkpoints(st), 0, "no background checkpoint ran");
    snprintf(wal, sizeof(wal), "%s-wal", db_path);
    cr_assert_eq(stat(wal, &sb), 0);
    cr_assert_lt(sb.st_size, 8 * 1024 * 1024, "the WAL grew to %lld bytes: checkpoints do nothing",
                 (long long)sb.st_size);
    store_close(st);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* By default a checkpoint waits for STORE_CHECKPOINT_PAGES pages: a WAL of
 * half that is left alone (each cycle copies a hot page once, however
 * often the WAL holds it). */
Test(store, no_checkpoint_before_the_default_wal_size)
{
    static const char schema[] = "-- migration: 1\nCREATE TABLE blob_rows (b BLOB);\n";
    static char payload[40960];
    struct sqlite3_stmt *ins;
    struct store *st;
    uv_loop_t loop;

    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(store_open(db_path, schema, &st), 0);
    cr_assert_eq(store_offload_checkpoints(st, &loop), 0);
    cr_assert_eq(store_prepare(st, "INSERT INTO blob_rows (b) VALUES (?)", &ins), 0);
    memset(payload, 'z', sizeof(payload));
    /* ~10 pages a commit: half of STORE_CHECKPOINT_PAGES */
    write_blobs(st, ins, &loop, payload, sizeof(payload), STORE_CHECKPOINT_PAGES / 20);
    cr_expect_eq(store_checkpoints(st), 0, "a checkpoint ran before the WAL's default size");
    store_close(st);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* Under a steady stream of writes -- a commit every millisecond from a
 * timer on the loop, as a busy service makes them, so every background
 * checkpoint races new commits -- the WAL still starts over: the loop
 * copies what the thread left behind right after a COMMIT. */
struct steady {
    struct store *st;
    struct sqlite3_stmt *ins;
    char wal[160];
    char payload[40960];
    int left;
    off_t most; /* the WAL's largest size seen */
};

static void on_steady(uv_timer_t *t)
{
    struct steady *w = t->data;
    struct stat sb;

    cr_assert_eq(store_begin(w->st), 0);
    sqlite3_bind_blob(w->ins, 1, w->payload, sizeof(w->payload), SQLITE_STATIC);
    cr_assert_eq(sqlite3_step(w->ins), SQLITE_DONE);
    store_reset(w->ins);
    cr_assert_eq(store_commit(w->st), 0);
    if (stat(w->wal, &sb) == 0 && sb.st_size > w->most)
        w->most = sb.st_size;
    if (--w->left == 0)
        uv_timer_stop(t);
}

Test(store, the_wal_starts_over_under_a_steady_stream_of_writes)
{
    static const char schema[] = "-- migration: 1\nCREATE TABLE blob_rows (b BLOB);\n";
    static struct steady w;
    uv_timer_t timer;
    uv_loop_t loop;

    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(store_open(db_path, schema, &w.st), 0);
    cr_assert_eq(store_offload_checkpoints(w.st, &loop), 0);
    store_set_checkpoint_pages(w.st, 2000); /* 8 MiB: the test writes 60 MB */
    cr_assert_eq(store_prepare(w.st, "INSERT INTO blob_rows (b) VALUES (?)", &w.ins), 0);
    memset(w.payload, 'y', sizeof(w.payload));
    snprintf(w.wal, sizeof(w.wal), "%s-wal", db_path);
    w.left = 1500; /* ~10 pages each: 60 MB through the WAL */
    cr_assert_eq(uv_timer_init(&loop, &timer), 0);
    timer.data = &w;
    cr_assert_eq(uv_timer_start(&timer, on_steady, 1, 1), 0);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    uv_close((uv_handle_t *)&timer, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_gt(store_checkpoints(w.st), 0, "no background checkpoint ran");
    cr_assert_lt(w.most, 24 * 1024 * 1024, "the WAL grew to %lld bytes", (long long)w.most);
    cr_assert_gt(store_tail_checkpoints(w.st), 0, "the loop never finished a checkpoint");
    store_close(w.st);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* ---------------------------------------------------------- store faults */

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

Test(store, faults_are_told_from_errors_of_the_data)
{
    cr_assert(store_code_is_fault(SQLITE_FULL));
    cr_assert(store_code_is_fault(SQLITE_BUSY));
    cr_assert(store_code_is_fault(SQLITE_IOERR_WRITE));
    cr_assert(store_code_is_fault(SQLITE_IOERR_FSYNC));
    cr_assert(store_code_is_fault(SQLITE_LOCKED));
    cr_assert(store_code_is_fault(SQLITE_READONLY));
    cr_assert(store_code_is_fault(SQLITE_CANTOPEN));
    cr_assert_not(store_code_is_fault(SQLITE_CONSTRAINT_UNIQUE));
    cr_assert_not(store_code_is_fault(SQLITE_ERROR));
    cr_assert_not(store_code_is_fault(SQLITE_MISMATCH));
    cr_assert_not(store_code_is_fault(SQLITE_OK));
    cr_assert_not(store_code_is_fault(SQLITE_DONE));
}

/* A write lock held by another connection: BEGIN fails in milliseconds (the
 * loop is not stalled for seconds), the store says it cannot write, and it
 * says so no more once the lock is gone. */
Test(store, a_held_write_lock_fails_fast_and_marks_the_store)
{
    struct store *st = open_ok(schema_v1);
    sqlite3 *other = NULL;
    uint64_t t0, deadline;

    cr_assert(store_writable(st));
    cr_assert_eq(sqlite3_open(db_path, &other), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    t0 = now_ms();
    cr_assert_eq(store_begin(st), -EIO);
    cr_assert_lt(now_ms() - t0, 1000, "BEGIN waited %llu ms for the lock",
                 (unsigned long long)(now_ms() - t0));
    cr_assert_eq(store_fault(st) & 0xff, SQLITE_BUSY);
    cr_assert_not(store_writable(st), "writable while another connection holds the lock");
    cr_assert_eq(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    /* the probe runs at most once a second: poll it */
    deadline = now_ms() + 5000;
    while (!store_writable(st) && now_ms() < deadline)
        uv_sleep(50);
    cr_assert(store_writable(st), "not writable again after the lock was released");
    cr_assert_eq(store_fault(st), 0);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM store_probe"), 1);
    sqlite3_close(other);
    store_close(st);
}

/* A statement that fails on a full database is a store fault, told apart
 * from a constraint; a commit clears the mark. */
Test(store, a_full_database_is_a_fault_and_a_constraint_is_not)
{
    struct store *st = open_ok(schema_v1);
    char sql[160];
    long pages;

    cr_assert_eq(store_begin(st), 0);
    cr_assert_neq(
        sqlite3_exec(store_db(st), "INSERT INTO a (x, v) VALUES (1, 'dup')", NULL, NULL, NULL),
        SQLITE_OK);
    cr_assert_eq(store_check_fault(st), 0, "a UNIQUE constraint is not the store's fault");
    cr_assert(store_writable(st));
    store_rollback(st);

    pages = query_int(st, "PRAGMA page_count");
    snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %ld", pages);
    cr_assert_eq(sqlite3_exec(store_db(st), sql, NULL, NULL, NULL), SQLITE_OK);
    cr_assert_eq(store_begin(st), 0);
    cr_assert_neq(sqlite3_exec(store_db(st),
                               "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
                               "WHERE i < 200) INSERT INTO a (x, v) "
                               "SELECT i + 10, hex(randomblob(1000)) FROM c",
                               NULL, NULL, NULL),
                  SQLITE_OK);
    cr_assert_eq(store_check_fault(st), 1);
    cr_assert_eq(store_fault(st) & 0xff, SQLITE_FULL);
    store_rollback(st);
    cr_assert_eq(sqlite3_exec(store_db(st), "PRAGMA max_page_count = 1000000", NULL, NULL, NULL),
                 SQLITE_OK);
    cr_assert_eq(store_begin(st), 0);
    cr_assert_eq(
        sqlite3_exec(store_db(st), "INSERT INTO a (x, v) VALUES (5, 'fits')", NULL, NULL, NULL),
        SQLITE_OK);
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(store_fault(st), 0, "a commit did not clear the mark");
    cr_assert(store_writable(st));
    store_close(st);
}

/* ---------------------------------------------------------- group commit */

struct durable_seen {
    int calls;
    int ok;
};

static void on_durable(void *data, int ok)
{
    struct durable_seen *d = data;

    d->calls++;
    d->ok = ok;
}

static void count_hook(struct store *st, void *data)
{
    (void)st;
    (*(int *)data)++;
}

/* One integer from sql, as another connection (read-only) sees it. */
static long seen_elsewhere(const char *sql)
{
    return db_int_at(db_path, sql);
}

static void exec_ok(struct store *st, const char *sql)
{
    cr_assert_eq(sqlite3_exec(store_db(st), sql, NULL, NULL, NULL), SQLITE_OK, "%s: %s", sql,
                 store_errmsg(st));
}

static void group_close(struct store *st, uv_loop_t *loop)
{
    store_group_end(st);
    uv_run(loop, UV_RUN_DEFAULT); /* the handles' closes */
    store_close(st);
    cr_assert_eq(uv_loop_close(loop), 0);
}

Test(store, group_commit_shares_one_commit_per_loop_iteration)
{
    struct store *st = open_ok(schema_v1);
    struct durable_seen d = {0}, late = {0};
    uint64_t commits0, txns0, commits, txns;
    uv_loop_t loop;
    int hooks = 0;

    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(store_group_commit(st, &loop, NULL), 0);
    cr_assert_eq(store_on_commit(st, count_hook, &hooks), 0);
    cr_assert_eq(store_when_durable(st, on_durable, &d), 1, "nothing pending yet");
    store_commit_counts(st, &commits0, &txns0);

    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO a (x, v) VALUES (10, 'ten')");
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(store_in_txn(st), 0);
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO a (x, v) VALUES (11, 'eleven')");
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO a (x, v) VALUES (12, 'undone')");
    store_rollback(st); /* undoes its own writes only */
    cr_assert_eq(store_begin(st), 0);
    cr_assert_eq(store_begin(st), -EINVAL, "nested inside a group's transaction");
    store_rollback(st);

    cr_assert_eq(store_group_pending(st), 1);
    cr_assert_eq(store_when_durable(st, on_durable, &d), 0);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a WHERE x >= 10"), 2,
                 "the group's own connection sees its writes");
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a WHERE x >= 10"), 0,
                 "another connection saw the group before its COMMIT");
    cr_assert_eq(hooks, 0, "a hook ran before the COMMIT");
    cr_assert_eq(d.calls, 0);

    cr_assert_eq(uv_run(&loop, UV_RUN_NOWAIT), 0); /* the iteration ends: one COMMIT */
    cr_assert_eq(d.calls, 1);
    cr_assert_eq(d.ok, 1);
    cr_assert_eq(hooks, 1);
    cr_assert_eq(store_group_pending(st), 0);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a WHERE x IN (10, 11)"), 2);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a WHERE x = 12"), 0);
    store_commit_counts(st, &commits, &txns);
    cr_assert_eq(commits - commits0, 1);
    cr_assert_eq(txns - txns0, 2);

    /* the next iteration's writes are the next group; a waiter cancelled
     * (its owner went away) is not called */
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO a (x, v) VALUES (13, 'thirteen')");
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(store_when_durable(st, on_durable, &late), 0);
    store_cancel_durable(st, on_durable, &late);
    group_close(st, &loop); /* store_group_end commits what is pending */
    cr_assert_eq(late.calls, 0);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a WHERE x = 13"), 1);
}

/* Open files of ours that SQLite made as temporary files (etilqs_*). */
static int sqlite_temp_files(void)
{
    char path[320], target[512];
    struct dirent *d;
    DIR *fds = opendir("/proc/self/fd");
    int n = 0;

    cr_assert_not_null(fds);
    while ((d = readdir(fds)) != NULL) {
        ssize_t len;

        snprintf(path, sizeof(path), "/proc/self/fd/%s", d->d_name);
        len = readlink(path, target, sizeof(target) - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        n += strstr(target, "etilqs_") != NULL;
    }
    closedir(fds);
    return n;
}

/* Many transactions in one group change the same pages: each savepoint's
 * sub-journal holds them, ~400 KiB here, and it stays in memory instead of
 * spilling to a temporary file that is created, written and deleted for
 * every group. */
Test(store, savepoints_of_a_group_never_spill_to_a_temporary_file)
{
    static const char schema[] =
        "-- migration: 1\nCREATE TABLE wide (k INTEGER PRIMARY KEY, v BLOB);\n";
    char blob[2000];
    struct store *st;
    uv_loop_t loop;

    memset(blob, 'z', sizeof(blob));
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(store_open(db_path, schema, &st), 0);
    exec_ok(st, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
                "INSERT INTO wide (k, v) SELECT i, zeroblob(2000) FROM n");
    cr_assert_eq(store_group_commit(st, &loop, NULL), 0);
    for (int t = 0; t < 4; t++) {
        struct sqlite3_stmt *up;

        cr_assert_eq(store_begin(st), 0);
        cr_assert_eq(store_prepare(st, "UPDATE wide SET v = ?", &up), 0);
        blob[0] = (char)('a' + t);
        sqlite3_bind_blob(up, 1, blob, sizeof(blob), SQLITE_STATIC);
        cr_assert_eq(sqlite3_step(up), SQLITE_DONE, "%s", store_errmsg(st));
        store_reset(up);
        cr_assert_eq(store_commit(st), 0);
    }
    cr_assert_eq(store_group_pending(st), 1);
    cr_assert_eq(sqlite_temp_files(), 0, "a savepoint's journal went to a temporary file");
    group_close(st, &loop);
}

Test(store, a_failed_group_commit_rolls_back_every_transaction_and_tells_its_waiters)
{
    static const char schema[] =
        "-- migration: 1\n"
        "CREATE TABLE p (id INTEGER PRIMARY KEY);\n"
        "CREATE TABLE c (pid INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED);\n";
    struct durable_seen d = {0}, next = {0};
    struct store *st = open_ok(schema);
    uv_loop_t loop;
    int hooks = 0;

    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(store_group_commit(st, &loop, NULL), 0);
    cr_assert_eq(store_on_commit(st, count_hook, &hooks), 0);
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO p (id) VALUES (1)");
    cr_assert_eq(store_commit(st), 0);
    /* a deferred foreign key fails only at COMMIT: the whole group fails */
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO c (pid) VALUES (99)");
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(store_when_durable(st, on_durable, &d), 0);
    cr_assert_eq(uv_run(&loop, UV_RUN_NOWAIT), 0);
    cr_assert_eq(d.calls, 1);
    cr_assert_eq(d.ok, 0, "told durable although the COMMIT failed");
    cr_assert_eq(hooks, 0, "a hook ran after a failed COMMIT");
    cr_assert_eq(store_group_pending(st), 0);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM p"), 0, "the group's first write survived");

    /* the store goes on: the next group commits */
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO p (id) VALUES (2)");
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(store_when_durable(st, on_durable, &next), 0);
    cr_assert_eq(uv_run(&loop, UV_RUN_NOWAIT), 0);
    cr_assert_eq(next.ok, 1);
    cr_assert_eq(hooks, 1);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM p"), 1);
    group_close(st, &loop);
}

/* SQLite can roll a whole group back on its own (a full disk, an I/O error
 * inside one of its transactions): the next store_begin opens a group with
 * a new number, and the old group's waiters hear it failed. The outbox
 * trusts its planned watermark only within the group it was written in. */
Test(store, a_group_rolled_back_by_sqlite_is_followed_by_a_new_number)
{
    static const char schema[] = "-- migration: 1\n"
                                 "CREATE TABLE p (id INTEGER PRIMARY KEY);\n";
    struct durable_seen lost = {0}, next = {0};
    struct store *st = open_ok(schema);
    uv_loop_t loop;
    uint64_t g1;

    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(store_group_gen(st), 0, "no group yet");
    cr_assert_eq(store_group_commit(st, &loop, NULL), 0);
    exec_ok(st, "CREATE TEMP TRIGGER io_error BEFORE INSERT ON main.p WHEN NEW.id = 66 "
                "BEGIN SELECT RAISE(ROLLBACK, 'disk I/O error'); END");
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO p (id) VALUES (1)");
    cr_assert_eq(store_commit(st), 0);
    g1 = store_group_gen(st);
    cr_assert_neq(g1, 0);
    cr_assert_eq(store_when_durable(st, on_durable, &lost), 0);
    /* another transaction of the same iteration: SQLite ends the group */
    cr_assert_eq(store_begin(st), 0);
    cr_assert_eq(store_group_gen(st), g1, "one group per iteration");
    cr_assert_neq(sqlite3_exec(store_db(st), "INSERT INTO p (id) VALUES (66)", NULL, NULL, NULL),
                  SQLITE_OK);
    store_rollback(st);
    cr_assert_eq(store_begin(st), 0);
    cr_assert_gt(store_group_gen(st), g1, "the rolled-back group's number went on");
    exec_ok(st, "INSERT INTO p (id) VALUES (2)");
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(store_when_durable(st, on_durable, &next), 0);
    cr_assert_eq(uv_run(&loop, UV_RUN_NOWAIT), 0);
    cr_assert_eq(lost.calls, 1);
    cr_assert_eq(lost.ok, 0, "told durable although SQLite rolled its group back");
    cr_assert_eq(next.ok, 1);
    cr_assert_eq(seen_elsewhere("SELECT group_concat(id) FROM p"), 2);
    cr_assert_eq(store_group_gen(st), 0, "no group open after the flush");
    group_close(st, &loop);
}

static void exec_other(sqlite3 *db, const char *sql)
{
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
}

/* The reads of one loop iteration share one read transaction (one WAL read
 * lock taken and released instead of one per read): one snapshot, which the
 * end of the iteration ends, or a write, which needs the write lock. */
Test(store, the_reads_of_an_iteration_share_one_read_transaction)
{
    struct store *st = open_ok(schema_v1);
    sqlite3 *other = NULL;
    uv_loop_t loop;

    cr_assert_eq(store_read_begin(st), 0);
    cr_assert_eq(sqlite3_get_autocommit(store_db(st)), 1, "without groups every read is its own");
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(store_group_commit(st, &loop, NULL), 0);
    cr_assert_eq(sqlite3_open_v2(db_path, &other, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_busy_timeout(other, 2000), SQLITE_OK);

    cr_assert_eq(store_read_begin(st), 0);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 1);
    exec_other(other, "INSERT INTO a (x, v) VALUES (20, 'elsewhere')");
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 1, "two snapshots in one iteration");
    cr_assert_eq(sqlite3_get_autocommit(store_db(st)), 0);
    cr_assert_eq(store_in_txn(st), 0, "a read transaction is not a write's");
    cr_assert_eq(store_group_pending(st), 0, "nothing to wait for");
    cr_assert_eq(uv_run(&loop, UV_RUN_NOWAIT), 0);
    cr_assert_eq(sqlite3_get_autocommit(store_db(st)), 1, "the iteration did not end the read");
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 2);

    /* a write after reads, another connection having committed since they
     * began: upgrading the read transaction would fail; the write's own
     * transaction sees that commit */
    cr_assert_eq(store_read_begin(st), 0);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 2);
    exec_other(other, "INSERT INTO a (x, v) VALUES (21, 'elsewhere')");
    cr_assert_eq(store_begin(st), 0, "%s", store_errmsg(st));
    exec_ok(st, "INSERT INTO a (x, v) VALUES (22, 'here')");
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a WHERE x IN (21, 22)"), 2);
    cr_assert_eq(store_group_pending(st), 1);
    cr_assert_eq(uv_run(&loop, UV_RUN_NOWAIT), 0);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a WHERE x = 22"), 1);

    /* readiness' probe of an unwritable store runs from inside a read */
    exec_other(other, "BEGIN IMMEDIATE");
    cr_assert_eq(store_begin(st), -EIO, "the write lock is held elsewhere");
    cr_assert_neq(store_fault(st), 0);
    exec_other(other, "COMMIT");
    cr_assert_eq(store_read_begin(st), 0);
    cr_assert_eq(query_int(st, "SELECT count(*) FROM a"), 4);
    cr_assert_eq(store_writable(st), 1, "the probe did not run inside a read transaction");
    cr_assert_eq(store_fault(st), 0);

    sqlite3_close(other);
    group_close(st, &loop);
}

/* What a hook saw: whether it ran inside a transaction, and a count. */
struct hook_reads {
    struct store *st;
    int calls, in_txn;
    long seen;
    int write; /* and then writes a row */
};

static void reading_hook(struct store *st, void *data)
{
    struct hook_reads *h = data;

    h->calls++;
    h->in_txn += !sqlite3_get_autocommit(store_db(st));
    h->seen = query_int(st, "SELECT count(*) FROM a");
    if (h->write) {
        h->write = 0;
        cr_assert_eq(store_begin(st), 0, "a hook's write after its reads");
        exec_ok(st, "INSERT INTO a (x, v) VALUES (99, 'from a hook')");
        cr_assert_eq(store_commit(st), 0);
    }
}

/* The hooks after a group's COMMIT read in one read transaction (one WAL
 * read lock for all of them), which ends before the loop waits, or when a
 * hook writes. */
Test(store, the_hooks_after_a_group_commit_share_one_read_transaction)
{
    struct store *st = open_ok(schema_v1);
    struct hook_reads h1 = {.st = st}, h2 = {.st = st};
    uv_loop_t loop;

    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(store_group_commit(st, &loop, NULL), 0);
    cr_assert_eq(store_on_commit(st, reading_hook, &h1), 0);
    cr_assert_eq(store_on_commit(st, reading_hook, &h2), 0);
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO a (x, v) VALUES (10, 'ten')");
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(uv_run(&loop, UV_RUN_NOWAIT), 0);
    cr_assert_eq(h1.calls, 1);
    cr_assert_eq(h2.calls, 1);
    cr_assert_eq(h1.in_txn + h2.in_txn, 2, "the hooks read outside a transaction");
    cr_assert_eq(h1.seen, 2, "the hook did not see the commit");
    cr_assert(sqlite3_get_autocommit(store_db(st)), "the read transaction outlived the flush");

    /* the first hook writes: its group commits at the next iteration's end */
    h1.write = 1;
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO a (x, v) VALUES (11, 'eleven')");
    cr_assert_eq(store_commit(st), 0);
    (void)uv_run(&loop, UV_RUN_NOWAIT); /* the hook's group may be pending still */
    cr_assert_eq(h2.seen, 4, "the second hook sees the first one's row in its group");
    group_close(st, &loop);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a WHERE x = 99"), 1);
}
