/* test_store_wal.c -- core/store_wal: a commit's WAL frames go out in one
 * write, are in the file when the commit returns, in pieces the unix VFS
 * takes, and a write that fails fails the commit and nothing else.
 *
 * The unix VFS's pwrite is replaced (xSetSystemCall) by a spy that counts
 * and sizes the writes to the -wal file and can fail them; the stores are
 * files in a fresh mkdtemp directory per test. Criterion runs each test in
 * a process of its own, so the replacement does not outlive the test. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include <ripple/store.h>

#include "db_fixture.h"

#include "store_wal.h"

static char dir[64];
static char db_path[128];
static char wal_path[136];

/* What the spy saw of the writes to the -wal file. */
static struct {
    int writes;
    size_t largest;
    int fail_errno; /* non-zero: every write to the -wal file fails so */
} wal;

static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);

static int is_wal_fd(int fd)
{
    char link[64], target[PATH_MAX];
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof(target) - 1);
    if (n < 4)
        return 0;
    target[n] = '\0';
    return strcmp(target + n - 4, "-wal") == 0;
}

static ssize_t spy_pwrite(int fd, const void *buf, size_t n, off_t at)
{
    if (is_wal_fd(fd)) {
        if (wal.fail_errno != 0) {
            errno = wal.fail_errno;
            return -1;
        }
        wal.writes++;
        if (n > wal.largest)
            wal.largest = n;
    }
    return real_pwrite(fd, buf, n, at);
}

static void setup(void)
{
    sqlite3_vfs *unix_vfs = sqlite3_vfs_find("unix");

    snprintf(dir, sizeof(dir), "/tmp/ripple-wal-XXXXXX");
    tmpdir_make(dir);
    snprintf(db_path, sizeof(db_path), "%s/test.db", dir);
    snprintf(wal_path, sizeof(wal_path), "%s-wal", db_path);
    cr_assert_not_null(unix_vfs);
    /* The build decides which of the two the VFS writes with. */
    for (const char **name = (const char *[]){"pwrite64", "pwrite", NULL}; *name; name++) {
        real_pwrite =
            (ssize_t(*)(int, const void *, size_t, off_t))unix_vfs->xGetSystemCall(unix_vfs, *name);
        if (real_pwrite != NULL) {
            cr_assert_eq(unix_vfs->xSetSystemCall(unix_vfs, *name, (sqlite3_syscall_ptr)spy_pwrite),
                         SQLITE_OK);
            break;
        }
    }
    cr_assert_not_null(real_pwrite, "this SQLite's unix VFS writes with neither pwrite");
    memset(&wal, 0, sizeof(wal));
}

static void teardown(void)
{
    tmpdir_remove(dir);
}

TestSuite(store_wal, .init = setup, .fini = teardown);

static const char schema[] = "-- migration: 1\n"
                             "CREATE TABLE a (x INTEGER PRIMARY KEY, v BLOB);\n";

static struct store *open_ok(void)
{
    struct store *st = NULL;

    cr_assert_eq(store_open(db_path, schema, &st), 0);
    return st;
}

static void exec_ok(struct store *st, const char *sql)
{
    cr_assert_eq(sqlite3_exec(store_db(st), sql, NULL, NULL, NULL), SQLITE_OK, "%s: %s", sql,
                 store_errmsg(st));
}

/* Inserts n rows of size bytes from x = first on, in one transaction. */
static int insert_rows(struct store *st, int first, int n, int size)
{
    char sql[200];
    int rc;

    if ((rc = store_begin(st)) < 0)
        return rc;
    snprintf(sql, sizeof(sql),
             "WITH RECURSIVE c(i) AS (SELECT %d UNION ALL SELECT i + 1 FROM c WHERE i < %d) "
             "INSERT INTO a (x, v) SELECT i, randomblob(%d) FROM c",
             first, first + n - 1, size);
    if (sqlite3_exec(store_db(st), sql, NULL, NULL, NULL) != SQLITE_OK) {
        (void)store_check_fault(st);
        store_rollback(st);
        return -EIO;
    }
    return store_commit(st);
}

static long file_size(const char *path)
{
    struct stat sb;

    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* One integer as another connection sees it, through SQLite's own VFS. */
static long seen_elsewhere(const char *sql)
{
    return db_int_at(db_path, sql);
}

static void integrity_ok(void)
{
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM pragma_integrity_check "
                                "WHERE integrity_check != 'ok'"),
                 0);
}

Test(store_wal, the_store_opens_its_database_through_the_vfs)
{
    struct store *st = open_ok();
    sqlite3_vfs *vfs = NULL;

    cr_assert_eq(sqlite3_file_control(store_db(st), "main", SQLITE_FCNTL_VFS_POINTER, &vfs),
                 SQLITE_OK);
    cr_assert_not_null(vfs);
    cr_assert_str_eq(vfs->zName, STORE_WAL_VFS);
    cr_assert_eq(sqlite3_vfs_find(NULL), sqlite3_vfs_find("unix"), "the default is unchanged");
    store_close(st);
}

Test(store_wal, a_commit_writes_its_frames_in_one_write)
{
    struct store *st = open_ok();
    long before, frames;

    cr_assert_eq(insert_rows(st, 1, 1, 10), 0); /* the WAL exists, its header written */
    before = file_size(wal_path);
    wal.writes = 0;
    /* Six rows of 3000 bytes: a page each, and the table's root. */
    cr_assert_eq(insert_rows(st, 100, 6, 3000), 0);
    frames = (file_size(wal_path) - before) / (4096 + 24);
    cr_assert_geq(frames, 6, "the commit wrote %ld frames", frames);
    cr_assert_eq(wal.writes, 1, "%d writes for a commit of %ld frames (two each without the VFS)",
                 wal.writes, frames);
    store_close(st);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a"), 7);
}

Test(store_wal, the_store_counts_the_bytes_its_commits_write_to_the_wal)
{
    struct store *st = open_ok();
    uint64_t before, frames;
    long size0;

    cr_assert_eq(insert_rows(st, 1, 1, 10), 0);
    before = store_wal_bytes(st);
    cr_assert_geq(before, 32 + 4096 + 24, "the WAL's header and a frame at least: %llu",
                  (unsigned long long)before);
    size0 = file_size(wal_path);
    /* Appends only: what the count grows by is what the file grows by. */
    cr_assert_eq(insert_rows(st, 100, 6, 3000), 0);
    frames = store_wal_bytes(st) - before;
    cr_assert_eq(frames, (uint64_t)(file_size(wal_path) - size0), "%llu bytes counted",
                 (unsigned long long)frames);
    cr_assert_eq(frames % (4096 + 24), 0, "whole frames: %llu", (unsigned long long)frames);
    cr_assert_geq(frames / (4096 + 24), 6);
    /* A transaction that changed nothing writes nothing. */
    before = store_wal_bytes(st);
    cr_assert_eq(store_begin(st), 0);
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(store_wal_bytes(st), before);
    store_close(st);
}

Test(store_wal, a_store_in_memory_writes_no_wal)
{
    struct store *st = NULL;

    cr_assert_eq(store_open(":memory:", schema, &st), 0);
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "INSERT INTO a (x, v) VALUES (1, randomblob(3000))");
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(store_wal_bytes(st), 0);
    store_close(st);
}

Test(store_wal, a_commit_is_in_the_file_when_it_returns)
{
    pid_t pid = fork();
    int status;

    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct store *st = NULL;

        if (store_open(db_path, schema, &st) != 0 || insert_rows(st, 1, 5, 3000) != 0)
            _exit(1);
        /* Seen by another connection while this one holds the file open... */
        if (seen_elsewhere("SELECT count(*) FROM a") != 5)
            _exit(2);
        _exit(0); /* ...and after a death that closes nothing */
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: %d", status);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a"), 5);
    integrity_ok();
}

Test(store_wal, a_large_transaction_goes_out_in_pieces_the_unix_vfs_takes)
{
    struct store *st = open_ok();

    /* A small page cache: the transaction's pages spill into the WAL before
     * its commit and are read back from it while it goes on. */
    exec_ok(st, "PRAGMA cache_size = 20");
    cr_assert_eq(insert_rows(st, 1, 400, 3000), 0); /* ~1.6 MB, 6 buffers' worth */
    cr_assert_eq(insert_rows(st, 1000, 3, 3000), 0);
    exec_ok(st, "UPDATE a SET v = randomblob(2000) WHERE x % 7 = 0");
    cr_assert_gt(wal.writes, 1);
    cr_assert_leq(wal.largest, STORE_WAL_WRITE_MAX, "a write of %zu bytes", wal.largest);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a"), 403);
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a WHERE length(v) = 2000"), 58);
    store_close(st);
    integrity_ok();
}

Test(store_wal, a_failed_write_fails_its_commit_and_nothing_else)
{
    struct store *st = open_ok();

    cr_assert_eq(insert_rows(st, 1, 3, 3000), 0);
    wal.fail_errno = ENOSPC;
    cr_assert_lt(insert_rows(st, 10, 3, 3000), 0, "a commit whose frames were not written");
    cr_assert_eq(store_fault(st) & 0xff, SQLITE_FULL, "fault %d", store_fault(st));
    wal.fail_errno = EIO;
    cr_assert_lt(insert_rows(st, 20, 3, 3000), 0);
    cr_assert_eq(store_fault(st) & 0xff, SQLITE_IOERR, "fault %d", store_fault(st));
    wal.fail_errno = 0;
    cr_assert_eq(insert_rows(st, 30, 3, 3000), 0, "the store writes again: %s", store_errmsg(st));
    cr_assert_eq(store_fault(st), 0);
    store_close(st);
    st = open_ok();
    {
        sqlite3_stmt *stmt = NULL;
        char got[64] = "";

        cr_assert_eq(sqlite3_prepare_v2(store_db(st),
                                        "SELECT group_concat(x) FROM (SELECT x FROM a ORDER BY x)",
                                        -1, &stmt, NULL),
                     SQLITE_OK);
        cr_assert_eq(sqlite3_step(stmt), SQLITE_ROW);
        snprintf(got, sizeof(got), "%s", (const char *)sqlite3_column_text(stmt, 0));
        sqlite3_finalize(stmt);
        cr_assert_str_eq(got, "1,2,3,30,31,32");
    }
    store_close(st);
    integrity_ok();
}

/* Copies the database and its WAL as they are in the file system now --
 * what a process killed at this point leaves -- and opens the copy with
 * SQLite's own VFS, which recovers it from the WAL. */
static sqlite3 *open_crash_copy(void)
{
    char cmd[600], copy[160];
    sqlite3 *db = NULL;

    snprintf(copy, sizeof(copy), "%s/crash", dir);
    cr_assert_lt(snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && cp '%s' '%s' '%s/'", copy, db_path,
                          wal_path, copy),
                 (int)sizeof(cmd));
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    cr_assert_lt(strlen(copy) + sizeof("/test.db"), sizeof(copy));
    strcat(copy, "/test.db");
    cr_assert_eq(sqlite3_open_v2(copy, &db, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
    return db;
}

/* A transaction larger than the page cache spills pages into the WAL and
 * then changes them again: SQLite overwrites those frames and rewrites
 * the checksums of every frame after them, the commit frame's last. All
 * of it is in the file when the commit returns -- with or without a
 * checkpoint by another connection meanwhile (which would copy a torn
 * transaction into the database if the last header were still held). */
static void rewritten_transaction_survives(int checkpoint)
{
    struct store *st = open_ok();
    sqlite3 *db;

    exec_ok(st, "PRAGMA cache_size = 10");
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000) "
                "INSERT INTO a (x, v) SELECT i, 'v1' || hex(randomblob(150)) FROM c");
    exec_ok(st, "UPDATE a SET v = 'v2' || substr(v, 3)");
    cr_assert_eq(store_commit(st), 0);
    if (checkpoint) {
        sqlite3 *other = NULL;
        int log = -1, done = -1;

        cr_assert_eq(sqlite3_open_v2(db_path, &other, SQLITE_OPEN_READWRITE, STORE_WAL_VFS),
                     SQLITE_OK);
        /* (a connection that never read the database has not opened its WAL) */
        cr_assert_eq(db_int(other, "SELECT count(*) FROM sqlite_master"), 1);
        cr_assert_eq(sqlite3_wal_checkpoint_v2(other, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done),
                     SQLITE_OK);
        cr_assert_gt(done, 0, "the checkpoint copied nothing (log %d)", log);
        sqlite3_close(other);
    }
    db = open_crash_copy();
    cr_assert_eq(db_int(db, "SELECT count(*) FROM a WHERE substr(v, 1, 2) = 'v2'"), 2000);
    cr_assert_eq(db_int(db, "SELECT count(*) FROM a"), 2000);
    cr_assert_eq(db_int(db, "SELECT count(*) FROM pragma_integrity_check WHERE "
                            "integrity_check != 'ok'"),
                 0);
    sqlite3_close(db);
    store_close(st);
}

Test(store_wal, a_transaction_that_rewrites_its_spilled_frames_is_whole_after_a_crash)
{
    rewritten_transaction_survives(0);
}

Test(store_wal, a_checkpoint_after_a_rewritten_transaction_copies_it_whole)
{
    rewritten_transaction_survives(1);
}

/* synchronous = FULL on a device without powersafe overwrite: SQLite pads
 * a commit to a sector boundary with copies of its last frame and syncs in
 * the middle of one; what follows the sync is in the file when the commit
 * returns, so another connection reads every commit. */
Test(store_wal, commits_padded_to_a_sector_are_readable_at_once)
{
    char uri[200];
    sqlite3 *writer = NULL;

    cr_assert_eq(store_wal_register(), 0);
    snprintf(uri, sizeof(uri), "file:%s?psow=0", db_path);
    cr_assert_eq(sqlite3_open_v2(uri, &writer,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                                 STORE_WAL_VFS),
                 SQLITE_OK);
    cr_assert_eq(sqlite3_exec(writer,
                              "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; "
                              "CREATE TABLE a (x INTEGER PRIMARY KEY, v BLOB)",
                              NULL, NULL, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(writer));
    for (int i = 1; i <= 20; i++) {
        char sql[100];

        snprintf(sql, sizeof(sql), "INSERT INTO a (x, v) VALUES (%d, randomblob(%d))", i, 100 * i);
        cr_assert_eq(sqlite3_exec(writer, sql, NULL, NULL, NULL), SQLITE_OK, "%s",
                     sqlite3_errmsg(writer));
        cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a"), i, "after commit %d", i);
    }
    sqlite3_close(writer);
    integrity_ok();
}

/* Frames spilled before the commit that cannot be written (the disk
 * fills up in the middle of a large transaction): whichever call finds
 * out -- a write, or a read of a spilled page -- the transaction fails
 * whole, and the store writes again once the disk has room. */
Test(store_wal, a_large_transaction_that_cannot_spill_fails_whole)
{
    struct store *st = open_ok();
    int rc;

    exec_ok(st, "PRAGMA cache_size = 10");
    cr_assert_eq(insert_rows(st, 1, 2, 100), 0);
    cr_assert_eq(store_begin(st), 0);
    exec_ok(st, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300) "
                "INSERT INTO a (x, v) SELECT 100 + i, randomblob(3000) FROM c");
    wal.fail_errno = ENOSPC;
    rc = sqlite3_exec(
        store_db(st),
        "UPDATE a SET v = randomblob(2000) WHERE x > 100;"
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300) "
        "INSERT INTO a (x, v) SELECT 1000 + i, randomblob(3000) FROM c",
        NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        cr_assert_lt(store_commit(st), 0, "a commit whose spilled frames were lost");
    else
        store_rollback(st);
    (void)store_check_fault(st);
    cr_assert_neq(store_fault(st), 0, "the failure was not a store fault");
    wal.fail_errno = 0;
    cr_assert_eq(insert_rows(st, 50, 1, 100), 0, "the store writes again: %s", store_errmsg(st));
    cr_assert_eq(seen_elsewhere("SELECT count(*) FROM a"), 3, "a part of the failed transaction");
    store_close(st);
    integrity_ok();
}
