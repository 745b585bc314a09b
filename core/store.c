/* store.c -- the service's SQLite database: open, migrate, prepared statements
 * and transactions. See store.h.
 *
 * Owns the connection, a cache of at most STORE_MAX_STATEMENTS prepared
 * statements (SQLITE_PREPARE_PERSISTENT, finalized in store_close), four
 * internal statements (BEGIN IMMEDIATE, COMMIT, ROLLBACK, SELECT 1) and the
 * on-commit hooks. The migrations come from the service's schema.sql, split
 * on `-- migration: N` lines; each pending one runs with sqlite3_exec (trusted
 * schema text, never user input) inside BEGIN IMMEDIATE together with
 * `PRAGMA user_version = N`, so a failing migration leaves no trace. Whether a
 * transaction is open is asked of SQLite (sqlite3_get_autocommit), which also
 * knows about the rollbacks it does on its own. Errors are logged once, here,
 * where they are detected.
 *
 * Store faults (store_code_is_fault: disk full, a write lock held by another
 * process, an I/O error, ...) mark the store unwritable until a commit
 * succeeds; readiness asks store_writable, which while marked probes with a
 * one-row write (table store_probe) at most once per STORE_PROBE_MS, so a
 * store that recovers while nothing else writes is seen writable again. The
 * busy timeout is short (STORE_BUSY_TIMEOUT_MS): a lock held elsewhere makes
 * BEGIN fail in milliseconds instead of stalling the loop; the caller retries
 * later. Loop thread only. */
#include <ripple/store.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <sqlite3.h>
#include <uv.h>

#include <ripple/log.h>

#include "store_wal.h"

#define STORE_MAX_HOOKS 4
/* How long BEGIN IMMEDIATE waits for a write lock held by another process
 * (the loop blocks meanwhile): short, a held lock is a store fault. */
#define STORE_BUSY_TIMEOUT_MS 20
#define STORE_CKPT_BUSY_TIMEOUT_MS 5000 /* the checkpoint connection: a pool thread */
#define STORE_PROBE_MS 1000             /* at most one writability probe per second */
#define STORE_MAX_MIGRATIONS 1000
/* What a background checkpoint left behind, at most, for the loop to finish
 * itself so that the WAL starts over (see on_wal); more, and another
 * background pass copies it, leaving less behind. */
#define STORE_CHECKPOINT_TAIL 250

struct store_hook {
    store_commit_cb fn;
    void *data; /* borrowed */
};

/* Someone waiting for a group's COMMIT (store_when_durable). */
struct store_waiter {
    store_durable_cb fn; /* NULL once called or cancelled */
    void *data;
    uint64_t gen; /* the group it waits for */
};

struct store {
    sqlite3 *db;
    int version; /* user_version after migrations */
    sqlite3_stmt *begin, *commit, *rollback, *ping;
    sqlite3_stmt *begin_read;                      /* BEGIN (deferred): store_read_begin */
    sqlite3_stmt *sp_begin, *sp_release, *sp_undo; /* a transaction inside a group */
    sqlite3_stmt *stmts[STORE_MAX_STATEMENTS];     /* the cache; finalized at close */
    char *stmt_sql[STORE_MAX_STATEMENTS];          /* owned copies: the cache key */
    size_t nstmts;
    struct store_hook hooks[STORE_MAX_HOOKS];
    size_t nhooks;

    /* Checkpoints off the loop (store_offload_checkpoints): a second
     * connection used only by a thread-pool worker, one job at a time. */
    char *path;
    uv_loop_t *loop;
    sqlite3 *ckpt_db;
    uv_work_t ckpt_work;
    int ckpt_inflight, ckpt_rc;
    int ckpt_frames;   /* the WAL's frames ... */
    int ckpt_backfill; /* ... and those copied, when the last one finished */
    int ckpt_tail;     /* it finished: the loop copies what it left behind */
    int ckpt_pages;    /* the WAL's size that starts one (STORE_CHECKPOINT_PAGES) */
    unsigned long checkpoints, tail_checkpoints;

    /* Writability: the extended code of the store fault that last failed a
     * write (0: none since the last commit), and the last probe. */
    int fault;
    uint64_t probe_ns; /* uv_hrtime() of the last probe */

    /* Group commit (store_group_commit): one SQLite transaction per loop
     * iteration, committed by whichever of the two handles runs first. */
    uv_prepare_t group_prepare;
    uv_check_t group_check;
    int group_on; /* the handles are initialized: groups are in use */
    const char *log_scope;
    int group_open;    /* BEGIN IMMEDIATE of group number gen is open */
    int read_open;     /* store_read_begin's read transaction is open */
    int in_write;      /* between store_begin and store_commit/rollback */
    uint64_t gen;      /* groups opened so far */
    size_t group_txns; /* transactions committed into the open group */
    struct store_waiter *waiters;
    size_t nwaiters, cap_waiters;
    struct store_waiter *running; /* the list being called back, for cancels */
    size_t nrunning;
    uint64_t commits, txns; /* store_commit_counts */
    /* store_wal_bytes: what earlier WAL handles wrote, and what the open
     * one had written when last asked (a new handle starts from 0). */
    uint64_t wal_base, wal_seen;
};

static int step_internal(struct store *st, sqlite3_stmt *stmt);
static int read_begin(struct store *st);
static void read_end(struct store *st);

/* One migration: a span of the schema text (borrowed). */
struct migration {
    unsigned number;
    const char *sql;
    size_t len;
};

/* ------------------------------------------------------------- open/close */

/* mkdir -p of path's parent directory. */
static int make_parent_dir(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    size_t n;
    int err;

    if (slash == NULL || slash == path)
        return 0;
    n = (size_t)(slash - path);
    if (n >= sizeof(dir)) {
        log_error("store: database path too long");
        return -ENAMETOOLONG;
    }
    memcpy(dir, path, n);
    dir[n] = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            goto out_error;
        *p = '/';
    }
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        goto out_error;
    return 0;
out_error:
    err = errno;
    log_error("store: cannot create directory %s: %s", dir, strerror(err));
    return -err;
}

static int prepare_internal(struct store *st, const char *sql, sqlite3_stmt **out)
{
    if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL) != SQLITE_OK) {
        log_error("store: prepare \"%s\": %s", sql, sqlite3_errmsg(st->db));
        return -EIO;
    }
    return 0;
}

/* Runs a PRAGMA (no user input: fixed text) and, when want is not NULL,
 * checks that its one-row answer is want (case-insensitive). */
static int run_pragma(struct store *st, const char *sql, const char *want)
{
    sqlite3_stmt *stmt = NULL;
    const char *got;
    int rc = -EIO, step;

    if (sqlite3_prepare_v2(st->db, sql, -1, &stmt, NULL) != SQLITE_OK) {
        log_error("store: %s: %s", sql, sqlite3_errmsg(st->db));
        return -EIO;
    }
    step = sqlite3_step(stmt);
    if (step == SQLITE_ROW && want != NULL) {
        got = (const char *)sqlite3_column_text(stmt, 0);
        if (got != NULL && strcasecmp(got, want) == 0)
            rc = 0;
        else
            log_error("store: %s answered \"%s\", wanted \"%s\"", sql, got ? got : "", want);
    } else if (step == SQLITE_ROW || step == SQLITE_DONE) {
        rc = want == NULL ? 0 : -EIO;
        if (rc < 0)
            log_error("store: %s gave no answer", sql);
    } else {
        log_error("store: %s: %s", sql, sqlite3_errmsg(st->db));
    }
    sqlite3_finalize(stmt);
    return rc;
}

static int is_memory_path(const char *path)
{
    return *path == '\0' || strcmp(path, ":memory:") == 0;
}

static int configure(struct store *st, const char *path)
{
    int rc;

    sqlite3_extended_result_codes(st->db, 1);
    if (sqlite3_busy_timeout(st->db, STORE_BUSY_TIMEOUT_MS) != SQLITE_OK)
        return -EIO;
    /* An in-memory database answers "memory": WAL is for files only. */
    rc = run_pragma(st, "PRAGMA journal_mode = WAL", is_memory_path(path) ? NULL : "wal");
    if (rc == 0)
        rc = run_pragma(st, "PRAGMA synchronous = NORMAL", NULL);
    if (rc == 0)
        rc = run_pragma(st, "PRAGMA foreign_keys = ON", NULL);
    /* The savepoint of every transaction in a group keeps the pages it
     * changes in a sub-journal, which SQLite spills past 64 KiB to a
     * temporary file: created, written, unlinked and closed for every
     * group. In memory it is a copy (and bounded by the group), in 1 KiB
     * chunks. (SQLITE_CONFIG_STMTJRNL_SPILL would make the chunks as large
     * as the spill threshold, but a journal that spills then writes a whole
     * chunk at once, and the unix VFS takes less than 128 KiB per write:
     * past that the write comes out short, reported as SQLITE_FULL; see
     * STORE_WAL_WRITE_MAX.) */
    if (rc == 0)
        rc = run_pragma(st, "PRAGMA temp_store = MEMORY", NULL);
    /* Debian builds SQLite with SECURE_DELETE: every deleted row's bytes
     * zeroed, and every page freed written once more. FAST zeroes what is
     * on pages being written anyway, and writes no page for it. */
    if (rc == 0)
        rc = run_pragma(st, "PRAGMA secure_delete = FAST", NULL);
    /* The page cache, at most 8 MiB (SQLite's default is 2 MiB, which the
     * inbox and outbox indexes of a busy service outgrow: a pread per miss). */
    if (rc == 0)
        rc = run_pragma(st, "PRAGMA cache_size = -8192", NULL);
    if (rc == 0)
        rc = prepare_internal(st, "BEGIN IMMEDIATE", &st->begin);
    if (rc == 0)
        rc = prepare_internal(st, "BEGIN", &st->begin_read);
    if (rc == 0)
        rc = prepare_internal(st, "COMMIT", &st->commit);
    if (rc == 0)
        rc = prepare_internal(st, "ROLLBACK", &st->rollback);
    if (rc == 0)
        rc = prepare_internal(st, "SELECT 1", &st->ping);
    if (rc == 0)
        rc = prepare_internal(st, "SAVEPOINT ripple_txn", &st->sp_begin);
    if (rc == 0)
        rc = prepare_internal(st, "RELEASE ripple_txn", &st->sp_release);
    if (rc == 0)
        rc = prepare_internal(st, "ROLLBACK TO ripple_txn", &st->sp_undo);
    return rc;
}

static int migrate(struct store *st, const char *schema);

/* Once per process, before SQLite initializes itself (later calls are
 * refused with SQLITE_MISUSE, harmlessly: a host that used SQLite first
 * keeps its settings). Debian's SQLite counts every allocation under a
 * global mutex (MEMSTATUS), and it has no lookaside, so every small
 * allocation pays it; nothing here reads those counts. */
static void configure_library_once(void)
{
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    /* A commit's WAL frames in one write (store_wal.h); without it, SQLite's
     * own VFS (vfs_name() says which). */
    if (store_wal_register() < 0)
        log_error("store: cannot register the %s VFS: writing the WAL frame by frame",
                  STORE_WAL_VFS);
}

static void configure_library(void)
{
    static uv_once_t once = UV_ONCE_INIT;

    uv_once(&once, configure_library_once); /* stores may open on several threads */
}

static const char *vfs_name(void)
{
    return sqlite3_vfs_find(STORE_WAL_VFS) != NULL ? STORE_WAL_VFS : NULL;
}

int store_open(const char *path, const char *schema, struct store **out)
{
    struct store *st;
    int rc;

    *out = NULL;
    configure_library();
    if (path == NULL) {
        log_error("store: no database path");
        return -EINVAL;
    }
    if (!is_memory_path(path) && (rc = make_parent_dir(path)) < 0)
        return rc;
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        log_error("store: out of memory");
        return -ENOMEM;
    }
    rc = sqlite3_open_v2(path, &st->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                         vfs_name());
    if (rc != SQLITE_OK) {
        log_error("store: open %s: %s", path,
                  st->db != NULL ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
        rc = -EIO;
        goto out_close;
    }
    st->ckpt_pages = STORE_CHECKPOINT_PAGES;
    st->path = strdup(path);
    rc = st->path == NULL ? -ENOMEM : configure(st, path);
    if (rc == 0)
        rc = migrate(st, schema);
    if (rc < 0)
        goto out_close;
    *out = st;
    return 0;
out_close:
    store_close(st);
    return rc;
}

void store_close(struct store *st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < st->nstmts; i++) {
        sqlite3_finalize(st->stmts[i]);
        free(st->stmt_sql[i]);
    }
    read_end(st);
    sqlite3_finalize(st->begin);
    sqlite3_finalize(st->begin_read);
    sqlite3_finalize(st->commit);
    sqlite3_finalize(st->rollback);
    sqlite3_finalize(st->ping);
    if (st->group_open && !sqlite3_get_autocommit(st->db)) {
        /* store_group_end was not called: nobody hears of it, but it is kept */
        log_error("store: closed with a group transaction open (store_group_end missing)");
        (void)step_internal(st, st->commit);
    }
    sqlite3_finalize(st->sp_begin);
    sqlite3_finalize(st->sp_release);
    sqlite3_finalize(st->sp_undo);
    free(st->waiters);
    if (st->ckpt_db != NULL)
        sqlite3_close_v2(st->ckpt_db);
    free(st->path);
    /* close_v2: statements someone prepared behind our back cannot leak it */
    if (sqlite3_close_v2(st->db) != SQLITE_OK)
        log_error("store: close: %s", sqlite3_errmsg(st->db));
    free(st);
}

/* ------------------------------------------------------------ checkpoints */

/* The WAL starts over from its first frame only when a write transaction
 * begins with every frame copied into the database. Under a steady stream
 * of writes the background checkpoint never gets there: the loop appends
 * while it copies, and the WAL grows without end (76 MB in a minute of the
 * saga bench), every append into fresh blocks the file system must zero
 * and every read searching a larger WAL index. So the work is split: the
 * pool thread copies the bulk, and when it is done the loop copies the few
 * frames appended meanwhile itself, right after a COMMIT (no transaction
 * open), so the next transaction restarts the WAL. That costs the loop a
 * short PASSIVE checkpoint (its two fsyncs included) once per
 * STORE_CHECKPOINT_PAGES pages written. */
static void on_checkpoint_work(uv_work_t *w)
{
    struct store *st = w->data;

    /* PASSIVE: copies what it can without blocking the loop's connection,
     * which keeps reading and writing meanwhile. */
    st->ckpt_rc = sqlite3_wal_checkpoint_v2(st->ckpt_db, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                            &st->ckpt_frames, &st->ckpt_backfill);
}

static void on_checkpoint_done(uv_work_t *w, int status)
{
    struct store *st = w->data;

    st->ckpt_inflight = 0;
    st->checkpoints++;
    if (status == 0 && st->ckpt_rc == SQLITE_OK)
        st->ckpt_tail = 1;
    else if (status == 0 && st->ckpt_rc != SQLITE_BUSY)
        log_warn("store: background checkpoint failed: %s", sqlite3_errstr(st->ckpt_rc));
}

/* After every COMMIT on the loop's connection, with the WAL's size. */
static int on_wal(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct store *st = arg;
    int frames, done;

    (void)name;
    if (st->ckpt_tail && !st->ckpt_inflight && pages >= st->ckpt_backfill &&
        pages - st->ckpt_backfill <= STORE_CHECKPOINT_TAIL) {
        int rc;

        st->ckpt_tail = 0;
        st->tail_checkpoints++;
        rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames, &done);
        if (rc == SQLITE_OK)
            return SQLITE_OK;
        if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED)
            log_warn("store: checkpoint failed: %s", sqlite3_errstr(rc));
    }
    st->ckpt_tail = 0;
    if (pages < st->ckpt_pages || st->ckpt_inflight)
        return SQLITE_OK;
    st->ckpt_work.data = st;
    if (uv_queue_work(st->loop, &st->ckpt_work, on_checkpoint_work, on_checkpoint_done) == 0)
        st->ckpt_inflight = 1;
    return SQLITE_OK;
}

int store_offload_checkpoints(struct store *st, uv_loop_t *loop)
{
    if (is_memory_path(st->path) || st->ckpt_db != NULL)
        return 0;
    if (sqlite3_open_v2(st->path, &st->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        vfs_name()) != SQLITE_OK ||
        sqlite3_busy_timeout(st->ckpt_db, STORE_CKPT_BUSY_TIMEOUT_MS) != SQLITE_OK) {
        log_error("store: cannot open the checkpoint connection: %s",
                  st->ckpt_db ? sqlite3_errmsg(st->ckpt_db) : "out of memory");
        sqlite3_close_v2(st->ckpt_db);
        st->ckpt_db = NULL;
        return -EIO;
    }
    /* A connection that has never read the database has not opened its
     * WAL index, and its checkpoints silently do nothing: read once. */
    if (sqlite3_exec(st->ckpt_db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL) !=
        SQLITE_OK) {
        log_error("store: the checkpoint connection cannot read: %s", sqlite3_errmsg(st->ckpt_db));
        sqlite3_close_v2(st->ckpt_db);
        st->ckpt_db = NULL;
        return -EIO;
    }
    st->loop = loop;
    /* No more checkpoints inside COMMIT on the loop: the hook replaces
     * SQLite's auto-checkpoint and hands the work to the thread pool. */
    sqlite3_wal_hook(st->db, on_wal, st);
    return 0;
}

void store_set_checkpoint_pages(struct store *st, int pages)
{
    st->ckpt_pages = pages > STORE_CHECKPOINT_TAIL ? pages : STORE_CHECKPOINT_TAIL + 1;
}

unsigned long store_checkpoints(const struct store *st)
{
    return st->checkpoints;
}

unsigned long store_tail_checkpoints(const struct store *st)
{
    return st->tail_checkpoints;
}

struct sqlite3 *store_db(struct store *st)
{
    return st->db;
}

int store_schema_version(struct store *st)
{
    return st->version;
}

const char *store_errmsg(struct store *st)
{
    return sqlite3_errmsg(st->db);
}

/* ------------------------------------------------------------- migrations */

/* Parses the digits after "migration:"; trailing blanks (and \r) allowed. */
static int parse_marker_number(const char *p, const char *end, unsigned *out)
{
    unsigned long n = 0;
    const char *digits;

    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    digits = p;
    while (p < end && *p >= '0' && *p <= '9' && n <= STORE_MAX_MIGRATIONS)
        n = n * 10 + (unsigned long)(*p++ - '0');
    if (p == digits || n == 0 || n > STORE_MAX_MIGRATIONS)
        return -EINVAL;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    if (p != end)
        return -EINVAL;
    *out = (unsigned)n;
    return 0;
}

/* Classifies the line [p, end): 0 = ordinary, 1 = a marker (*number set),
 * -EINVAL = something that tries to be a marker and is malformed (a
 * misspelt marker must not turn its migration into a silent comment). */
static int classify_line(const char *p, const char *end, unsigned *number)
{
    static const char exact[] = "-- migration:";
    const char *q = p;

    while (q < end && (*q == ' ' || *q == '\t'))
        q++;
    /* cppcheck-suppress knownConditionTrueFalse ; q may have reached end */
    if (end - q < 2 || q[0] != '-' || q[1] != '-')
        return 0;
    q += 2;
    while (q < end && (*q == ' ' || *q == '\t'))
        q++;
    /* cppcheck-suppress knownConditionTrueFalse ; q may have reached end */
    if (end - q < 9 || strncasecmp(q, "migration", 9) != 0)
        return 0;
    q += 9;
    while (q < end && (*q == ' ' || *q == '\t'))
        q++;
    if (q == end || (*q != ':' && !(*q >= '0' && *q <= '9')))
        return 0; /* "-- migrations are ...": prose, not a marker */
    if ((size_t)(end - p) < sizeof(exact) - 1 || memcmp(p, exact, sizeof(exact) - 1) != 0)
        return -EINVAL;
    if (parse_marker_number(p + sizeof(exact) - 1, end, number) < 0)
        return -EINVAL;
    return 1;
}

/* Text before the first marker may only be blank lines and -- comments. */
static int is_blank_or_comment(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    return p == end || (end - p >= 2 && p[0] == '-' && p[1] == '-');
}

static int schema_error(const char *what, unsigned line)
{
    log_error("store: schema.sql line %u: %s", line, what);
    return -EINVAL;
}

struct schema_parse {
    struct migration *list; /* grows by one per marker */
    size_t n;
    unsigned lineno;
};

/* Handles the line [p, end), whose successor starts at next. */
static int parse_line(struct schema_parse *sp, const char *p, const char *end, const char *next)
{
    struct migration *list;
    unsigned number = 0;
    int kind = classify_line(p, end, &number);

    if (kind < 0)
        return schema_error("malformed migration marker", sp->lineno);
    if (kind == 0) {
        if (sp->n == 0 && !is_blank_or_comment(p, end))
            return schema_error("SQL before the first migration marker", sp->lineno);
        if (sp->n > 0)
            sp->list[sp->n - 1].len = (size_t)(next - sp->list[sp->n - 1].sql);
        return 0;
    }
    if (number != sp->n + 1)
        return schema_error("migration numbers must be 1, 2, 3... in order", sp->lineno);
    list = realloc(sp->list, (sp->n + 1) * sizeof(*list));
    if (list == NULL) {
        log_error("store: out of memory");
        return -ENOMEM;
    }
    sp->list = list;
    list[sp->n++] = (struct migration){.number = number, .sql = next, .len = 0};
    return 0;
}

/* Splits schema into migrations: *out is new (free() it), *count of them. */
static int parse_schema(const char *schema, struct migration **out, size_t *count)
{
    struct schema_parse sp = {0};
    int rc = 0;

    for (const char *p = schema; *p != '\0' && rc == 0;) {
        const char *nl = strchr(p, '\n');
        const char *end = nl != NULL ? nl : p + strlen(p);
        const char *next = nl != NULL ? nl + 1 : end;

        sp.lineno++;
        rc = parse_line(&sp, p, end, next);
        p = next;
    }
    if (rc == 0 && sp.n == 0) {
        log_error("store: schema.sql has no \"-- migration: 1\" marker");
        rc = -EINVAL;
    }
    if (rc < 0) {
        free(sp.list);
        return rc;
    }
    *out = sp.list;
    *count = sp.n;
    return 0;
}

static int read_user_version(struct store *st, int *out)
{
    sqlite3_stmt *stmt = NULL;
    int rc = -EIO;

    if (sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
        *out = sqlite3_column_int(stmt, 0);
        rc = 0;
    } else {
        log_error("store: PRAGMA user_version: %s", sqlite3_errmsg(st->db));
    }
    sqlite3_finalize(stmt);
    return rc;
}

/* Runs one migration and sets user_version in one transaction. */
static int apply_migration(struct store *st, const struct migration *mig)
{
    char pragma[64], *sql;
    char *errmsg = NULL;
    int rc;

    if (snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %u", mig->number) >=
        (int)sizeof(pragma))
        return -EINVAL;
    sql = strndup(mig->sql, mig->len); /* sqlite3_exec wants a NUL-terminated string */
    if (sql == NULL) {
        log_error("store: out of memory");
        return -ENOMEM;
    }
    rc = store_begin(st);
    if (rc < 0)
        goto out_free_sql;
    if (sqlite3_exec(st->db, sql, NULL, NULL, &errmsg) != SQLITE_OK ||
        sqlite3_exec(st->db, pragma, NULL, NULL, &errmsg) != SQLITE_OK) {
        log_error("store: migration %u failed: %s", mig->number,
                  errmsg != NULL ? errmsg : sqlite3_errmsg(st->db));
        rc = -EIO;
    } else if (!store_in_txn(st)) {
        /* the migration ended our transaction itself: we cannot vouch for it */
        log_error("store: migration %u must not BEGIN/COMMIT/ROLLBACK", mig->number);
        rc = -EINVAL;
    } else {
        rc = store_commit(st);
    }
    if (rc < 0)
        store_rollback(st);
    sqlite3_free(errmsg);
out_free_sql:
    free(sql);
    return rc;
}

static int migrate(struct store *st, const char *schema)
{
    struct migration *list = NULL;
    size_t count = 0;
    int rc, from;

    rc = read_user_version(st, &st->version);
    if (rc < 0 || schema == NULL) /* NULL schema: nothing to migrate */
        return rc;
    rc = parse_schema(schema, &list, &count);
    if (rc < 0)
        return rc;
    if (st->version < 0 || (size_t)st->version > count) {
        log_error("store: database is at schema version %d, this build knows %zu", st->version,
                  count);
        rc = -EINVAL;
    }
    from = st->version;
    for (size_t i = (size_t)st->version; rc == 0 && i < count; i++) {
        rc = apply_migration(st, &list[i]);
        if (rc == 0)
            st->version = (int)list[i].number;
    }
    if (rc == 0 && st->version > from)
        log_info("store: migrated schema from version %d to %d", from, st->version);
    free(list);
    return rc;
}

/* ------------------------------------------------------------- statements */

int store_prepare(struct store *st, const char *sql, struct sqlite3_stmt **out)
{
    sqlite3_stmt *stmt = NULL;
    const char *tail = NULL;
    char *copy;

    *out = NULL;
    /* Keyed by the text, not the pointer: a reused buffer must not alias. */
    for (size_t i = 0; i < st->nstmts; i++) {
        if (strcmp(st->stmt_sql[i], sql) == 0) {
            *out = st->stmts[i];
            return 0;
        }
    }
    if (st->nstmts == STORE_MAX_STATEMENTS) {
        log_error("store: more than %d prepared statements", STORE_MAX_STATEMENTS);
        return -ENOSPC;
    }
    if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, &tail) != SQLITE_OK ||
        stmt == NULL) {
        log_error("store: prepare \"%.120s\": %s", sql, sqlite3_errmsg(st->db));
        sqlite3_finalize(stmt);
        return -EIO;
    }
    if (tail != NULL && tail[strspn(tail, " \t\r\n;")] != '\0') {
        log_error("store: prepare \"%.120s\": more than one statement", sql);
        sqlite3_finalize(stmt);
        return -EINVAL;
    }
    copy = strdup(sql);
    if (copy == NULL) {
        log_error("store: out of memory");
        sqlite3_finalize(stmt);
        return -ENOMEM;
    }
    st->stmts[st->nstmts] = stmt;
    st->stmt_sql[st->nstmts] = copy;
    st->nstmts++;
    *out = stmt;
    return 0;
}

int store_prepare_all(struct store *st, const struct store_sql *list, size_t n)
{
    int rc = 0;

    for (size_t i = 0; i < n && rc == 0; i++)
        rc = store_prepare(st, list[i].sql, list[i].stmt);
    return rc;
}

void store_reset(struct sqlite3_stmt *stmt)
{
    if (stmt == NULL)
        return;
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
}

/* One argument of fmt's letter c, bound at index i. */
static int bind_one(sqlite3_stmt *stmt, int i, char c, va_list *ap)
{
    const void *p;
    size_t n;

    switch (c) {
    case 's':
        p = va_arg(*ap, const char *);
        return p != NULL ? sqlite3_bind_text(stmt, i, p, -1, SQLITE_STATIC)
                         : sqlite3_bind_null(stmt, i);
    case 'S':
        p = va_arg(*ap, const char *);
        n = va_arg(*ap, size_t);
        return n > INT_MAX ? SQLITE_TOOBIG : sqlite3_bind_text(stmt, i, p, (int)n, SQLITE_STATIC);
    case 'b':
        p = va_arg(*ap, const void *);
        n = va_arg(*ap, size_t);
        return n > INT_MAX ? SQLITE_TOOBIG : sqlite3_bind_blob(stmt, i, p, (int)n, SQLITE_STATIC);
    case 'i':
        return sqlite3_bind_int(stmt, i, va_arg(*ap, int));
    case 'I':
        return sqlite3_bind_int64(stmt, i, (sqlite3_int64)va_arg(*ap, int64_t));
    case 'n':
        return sqlite3_bind_null(stmt, i);
    default:
        return SQLITE_MISUSE;
    }
}

static int vbind(sqlite3_stmt *stmt, const char *fmt, va_list *ap)
{
    for (int i = 0; fmt[i] != '\0'; i++) {
        if (bind_one(stmt, i + 1, fmt[i], ap) != SQLITE_OK) {
            log_error("store: binding parameter %d (%c) of \"%.80s\" failed", i + 1, fmt[i],
                      sqlite3_sql(stmt));
            return -EINVAL;
        }
    }
    return 0;
}

int store_bind(struct sqlite3_stmt *stmt, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = vbind(stmt, fmt, &ap);
    va_end(ap);
    return rc;
}

/* The failure of a step: -EEXIST for a key constraint, else -EIO, logged. */
static int step_failed(struct store *st, sqlite3_stmt *stmt, const char *what)
{
    int code = sqlite3_extended_errcode(st->db);

    if (code == SQLITE_CONSTRAINT_UNIQUE || code == SQLITE_CONSTRAINT_PRIMARYKEY) {
        store_reset(stmt);
        return -EEXIST;
    }
    store_check_fault(st);
    log_error("%s: %s", what, sqlite3_errmsg(st->db));
    store_reset(stmt);
    return -EIO;
}

int store_exec(struct store *st, struct sqlite3_stmt *stmt, const char *what, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = vbind(stmt, fmt, &ap);
    va_end(ap);
    if (rc < 0) {
        store_reset(stmt);
        return -EIO;
    }
    rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return step_failed(st, stmt, what);
    store_reset(stmt);
    return 0;
}

int store_query(struct store *st, struct sqlite3_stmt *stmt, const char *what, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = vbind(stmt, fmt, &ap);
    va_end(ap);
    if (rc < 0) {
        store_reset(stmt);
        return -EIO;
    }
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE) {
        store_reset(stmt);
        return 0;
    }
    rc = step_failed(st, stmt, what);
    return rc == -EEXIST ? -EIO : rc;
}

int store_column_text(struct sqlite3_stmt *stmt, int col, char *buf, size_t len)
{
    const unsigned char *s = sqlite3_column_text(stmt, col);
    size_t n = (size_t)sqlite3_column_bytes(stmt, col);

    if (len > 0)
        buf[0] = '\0';
    if (s == NULL)
        return -ENOENT;
    if (n >= len)
        return -ENOSPC;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

/* ----------------------------------------------------------- transactions */

int store_code_is_fault(int code)
{
    switch (code & 0xff) {
    case SQLITE_FULL:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
    case SQLITE_NOMEM:
        return 1;
    default:
        return 0;
    }
}

/* Marks the store unwritable after a fault (logged when it starts). */
static void note_fault(struct store *st, int code)
{
    if (st->fault == 0)
        log_error("store: cannot write: %s (%s, code %d); writes are refused until it recovers",
                  sqlite3_errmsg(st->db), sqlite3_errstr(code), code);
    st->fault = code;
}

static void note_written(struct store *st)
{
    if (st->fault != 0)
        log_info("store: writable again");
    st->fault = 0;
}

/* Steps one of the internal statements. Returns 0 or -EIO: a store fault
 * marks the store unwritable (logged when that starts), anything else is
 * logged here. */
static int step_internal(struct store *st, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);

    if (rc != SQLITE_DONE && rc != SQLITE_ROW) { /* before reset touches the message */
        int code = sqlite3_extended_errcode(st->db);

        if (store_code_is_fault(code))
            note_fault(st, code);
        else
            log_error("store: %s: %s", sqlite3_sql(stmt), sqlite3_errmsg(st->db));
    }
    sqlite3_reset(stmt);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -EIO;
}

int store_in_txn(const struct store *st)
{
    /* Asked of SQLite, which also knows the rollbacks it does on its own. */
    if (sqlite3_get_autocommit(st->db))
        return 0;
    return st->group_on ? st->in_write : 1;
}

/* ------------------------------------------------------------ group commit
 *
 * A group is numbered (gen); each waiter remembers the group it waits for.
 * The group's COMMIT (group_flush) tells its own waiters whether it held,
 * and tells waiters of any earlier group -- one SQLite rolled back on its
 * own, noticed when the next store_begin opened a new group -- that it did
 * not. Waiters are called only from group_flush (the loop's prepare and
 * check phases, or store_group_end), never from inside someone's
 * transaction. */

static void group_stop_handles(struct store *st)
{
    uv_prepare_stop(&st->group_prepare);
    uv_check_stop(&st->group_check);
}

/* Calls every waiter: ok when it waited for group number committed. */
static void run_waiters(struct store *st, uint64_t committed)
{
    struct store_waiter *list = st->waiters;
    size_t n = st->nwaiters;

    if (n == 0)
        return;
    st->waiters = NULL;
    st->nwaiters = st->cap_waiters = 0;
    st->running = list;
    st->nrunning = n;
    for (size_t i = 0; i < n; i++) {
        store_durable_cb fn = list[i].fn;

        list[i].fn = NULL;
        if (fn != NULL)
            fn(list[i].data, committed != 0 && list[i].gen == committed);
    }
    st->running = NULL;
    st->nrunning = 0;
    free(list);
}

/* Ends the open group: COMMIT, or ROLLBACK when that fails; then the
 * waiters and, after a COMMIT, the hooks. */
static void group_flush(struct store *st)
{
    uint64_t committed = 0;
    size_t txns = st->group_txns;

    if (st->in_write) /* a transaction spans loop iterations: a caller's bug */
        return;
    read_end(st);
    if (st->group_open) {
        st->group_open = 0;
        st->group_txns = 0;
        if (sqlite3_get_autocommit(st->db)) {
            log_error("store: SQLite rolled back the group of %zu transactions on its own", txns);
        } else if (step_internal(st, st->commit) == 0) {
            committed = st->gen;
            st->commits++;
            st->txns += txns;
        } else {
            if (!sqlite3_get_autocommit(st->db))
                (void)step_internal(st, st->rollback);
            log_error("store: the group commit failed: its %zu transactions are rolled back", txns);
        }
    }
    group_stop_handles(st);
    if (committed != 0)
        note_written(st);
    run_waiters(st, committed);
    if (committed != 0 && st->nhooks > 0) {
        /* The hooks read what was just committed (the outbox: its highest
         * seq, then the rows to relay): in one read transaction, so one WAL
         * read lock (two fcntl calls) for all of them instead of one per
         * statement. A hook that writes ends it (group_begin); it ends here
         * otherwise, before the loop waits. */
        (void)read_begin(st);
        for (size_t i = 0; i < st->nhooks; i++)
            st->hooks[i].fn(st, st->hooks[i].data);
        read_end(st);
    }
}

static void on_group_prepare(uv_prepare_t *h)
{
    struct store *st = h->data;

    if (st->log_scope != NULL)
        log_scope(st->log_scope);
    group_flush(st);
}

static void on_group_check(uv_check_t *h)
{
    struct store *st = h->data;

    if (st->log_scope != NULL)
        log_scope(st->log_scope);
    group_flush(st);
}

int store_group_commit(struct store *st, uv_loop_t *loop, const char *log_scope)
{
    int rc;

    if (st->group_on)
        return 0;
    if ((rc = uv_prepare_init(loop, &st->group_prepare)) < 0)
        return rc;
    if ((rc = uv_check_init(loop, &st->group_check)) < 0) {
        uv_close((uv_handle_t *)&st->group_prepare, NULL);
        return rc;
    }
    st->group_prepare.data = st->group_check.data = st;
    st->log_scope = log_scope;
    st->group_on = 1;
    return 0;
}

void store_group_end(struct store *st)
{
    if (!st->group_on)
        return;
    if (st->in_write)
        log_error("store: group commit ends inside a transaction");
    st->in_write = 0;
    group_flush(st);
    uv_close((uv_handle_t *)&st->group_prepare, NULL);
    uv_close((uv_handle_t *)&st->group_check, NULL);
    st->group_on = 0;
}

int store_group_pending(const struct store *st)
{
    return st->group_open;
}

uint64_t store_group_gen(const struct store *st)
{
    return st->group_open ? st->gen : 0;
}

int store_grouped(const struct store *st)
{
    return st->group_on;
}

int store_when_durable(struct store *st, store_durable_cb fn, void *data)
{
    if (!st->group_open)
        return 1;
    if (st->nwaiters == st->cap_waiters) {
        size_t cap = st->cap_waiters ? st->cap_waiters * 2 : 16;
        struct store_waiter *w = realloc(st->waiters, cap * sizeof(*w));

        if (w == NULL)
            return -ENOMEM;
        st->waiters = w;
        st->cap_waiters = cap;
    }
    st->waiters[st->nwaiters++] = (struct store_waiter){.fn = fn, .data = data, .gen = st->gen};
    return 0;
}

void store_cancel_durable(struct store *st, store_durable_cb fn, const void *data)
{
    for (size_t i = 0; i < st->nwaiters; i++) {
        if (st->waiters[i].fn == fn && st->waiters[i].data == data)
            st->waiters[i].fn = NULL;
    }
    for (size_t i = 0; i < st->nrunning; i++) {
        if (st->running[i].fn == fn && st->running[i].data == data)
            st->running[i].fn = NULL;
    }
}

void store_commit_counts(const struct store *st, uint64_t *commits, uint64_t *txns)
{
    *commits = st->commits;
    *txns = st->txns;
}

uint64_t store_wal_bytes(struct store *st)
{
    sqlite3_file *wal = NULL;
    uint64_t n;

    /* The pager's journal is its WAL file in WAL mode. */
    if (sqlite3_file_control(st->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) == SQLITE_OK &&
        store_wal_written(wal, &n) == 0) {
        if (n < st->wal_seen) /* the WAL was closed and opened again */
            st->wal_base += st->wal_seen;
        st->wal_seen = n;
    }
    return st->wal_base + st->wal_seen;
}

/* The read transaction of an iteration (store_read_begin). Every read
 * transaction of SQLite's WAL mode takes a read lock on the WAL index and
 * releases it (two fcntl calls, dear on some machines: a fifth of a read
 * request's time here); the reads of one iteration share one instead. */
int store_read_begin(struct store *st)
{
    if (!st->group_on || st->read_open)
        return 0; /* no groups, or a read transaction is open already */
    if (read_begin(st) < 0)
        return -EIO;
    if (!st->read_open)
        return 0; /* a write transaction is open */
    uv_prepare_start(&st->group_prepare, on_group_prepare);
    uv_check_start(&st->group_check, on_group_check);
    return 0;
}

/* Opens a (deferred) read transaction unless a transaction is open: the
 * reads until read_end share its snapshot and one WAL read lock. */
static int read_begin(struct store *st)
{
    if (st->read_open || !sqlite3_get_autocommit(st->db))
        return 0;
    if (step_internal(st, st->begin_read) < 0)
        return -EIO;
    st->read_open = 1;
    return 0;
}

/* Ends the read transaction, if one is open: the next read sees what was
 * committed since. */
static void read_end(struct store *st)
{
    if (!st->read_open)
        return;
    st->read_open = 0;
    if (sqlite3_get_autocommit(st->db))
        return; /* SQLite ended it on its own (an error) */
    if (step_internal(st, st->commit) < 0 && !sqlite3_get_autocommit(st->db))
        (void)step_internal(st, st->rollback);
}

/* store_begin in group mode: a savepoint in the iteration's group, which
 * the first one opens. */
static int group_begin(struct store *st)
{
    /* a write after reads in the same iteration: the reads' snapshot ends
     * and BEGIN IMMEDIATE takes the write lock (upgrading the read
     * transaction instead could fail for good: another connection may have
     * committed since it began) */
    read_end(st);
    if (st->group_open && sqlite3_get_autocommit(st->db)) {
        /* SQLite rolled the open group back on its own (a full disk, an
         * I/O error): its waiters hear so at the next flush; a new one
         * starts */
        log_error("store: SQLite rolled back the group of %zu transactions on its own",
                  st->group_txns);
        st->group_open = 0;
    }
    if (!st->group_open) {
        if (step_internal(st, st->begin) < 0)
            return -EIO;
        st->group_open = 1;
        st->group_txns = 0;
        st->gen++;
        uv_prepare_start(&st->group_prepare, on_group_prepare);
        uv_check_start(&st->group_check, on_group_check);
    }
    if (step_internal(st, st->sp_begin) < 0)
        return -EIO;
    st->in_write = 1;
    return 0;
}

int store_begin(struct store *st)
{
    if (store_in_txn(st)) {
        log_error("store: nested transaction");
        return -EINVAL;
    }
    if (st->group_on)
        return group_begin(st);
    return step_internal(st, st->begin);
}

int store_commit(struct store *st)
{
    if (!store_in_txn(st)) {
        log_error("store: commit without a transaction");
        st->in_write = 0;
        return -EINVAL;
    }
    if (st->group_on) {
        if (step_internal(st, st->sp_release) < 0) {
            store_rollback(st);
            return -EIO;
        }
        st->in_write = 0;
        st->group_txns++;
        return 0;
    }
    if (step_internal(st, st->commit) < 0) {
        store_rollback(st); /* never leave the writer lock held */
        return -EIO;
    }
    st->commits++;
    st->txns++;
    note_written(st);
    for (size_t i = 0; i < st->nhooks; i++)
        st->hooks[i].fn(st, st->hooks[i].data);
    return 0;
}

void store_rollback(struct store *st)
{
    if (!store_in_txn(st)) {
        st->in_write = 0;
        return;
    }
    if (st->group_on) {
        /* undo this transaction only; the group goes on */
        (void)step_internal(st, st->sp_undo);
        (void)step_internal(st, st->sp_release);
        st->in_write = 0;
        return;
    }
    (void)step_internal(st, st->rollback);
}

int store_check_fault(struct store *st)
{
    int code = sqlite3_extended_errcode(st->db);

    if (!store_code_is_fault(code))
        return 0;
    note_fault(st, code);
    return 1;
}

int store_fault(const struct store *st)
{
    return st->fault;
}

/* One small write in its own transaction. */
static int probe_write(struct store *st)
{
    static const char sql[] =
        "CREATE TABLE IF NOT EXISTS store_probe (k INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
        "INSERT INTO store_probe (k, n) VALUES (1, 1)"
        " ON CONFLICT (k) DO UPDATE SET n = n + 1;";
    /* BEGIN and COMMIT of its own, outside any group: it asks whether a
     * COMMIT goes through now */
    if (step_internal(st, st->begin) < 0)
        return -EIO;
    if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        if (!store_check_fault(st))
            log_error("store: writability probe: %s", sqlite3_errmsg(st->db));
        if (!sqlite3_get_autocommit(st->db))
            (void)step_internal(st, st->rollback);
        return -EIO;
    }
    if (step_internal(st, st->commit) < 0) {
        if (!sqlite3_get_autocommit(st->db))
            (void)step_internal(st, st->rollback);
        return -EIO;
    }
    note_written(st);
    return 0;
}

int store_writable(struct store *st)
{
    uint64_t now = uv_hrtime();

    if (st->fault == 0)
        return 1;
    read_end(st);
    if (!sqlite3_get_autocommit(st->db) || now - st->probe_ns < (uint64_t)STORE_PROBE_MS * 1000000)
        return 0;
    st->probe_ns = now;
    return probe_write(st) == 0;
}

int store_txn(struct store *st, store_txn_cb fn, void *data)
{
    int rc = store_begin(st);

    if (rc < 0)
        return rc;
    rc = fn(st, data);
    if (rc != 0) {
        store_rollback(st);
        return rc;
    }
    if (!store_in_txn(st)) {
        /* fn committed or rolled back itself, or SQLite rolled back on an
         * error fn ignored: its work cannot be vouched for */
        log_error("store: transaction ended inside store_txn");
        return -EIO;
    }
    return store_commit(st);
}

int store_on_commit(struct store *st, store_commit_cb fn, void *data)
{
    if (fn == NULL)
        return -EINVAL;
    if (st->nhooks == STORE_MAX_HOOKS)
        return -ENOSPC;
    st->hooks[st->nhooks].fn = fn;
    st->hooks[st->nhooks].data = data;
    st->nhooks++;
    return 0;
}

void store_off_commit(struct store *st, store_commit_cb fn, const void *data)
{
    for (size_t i = 0; i < st->nhooks; i++) {
        if (st->hooks[i].fn == fn && st->hooks[i].data == data) {
            memmove(&st->hooks[i], &st->hooks[i + 1], (st->nhooks - i - 1) * sizeof(st->hooks[0]));
            st->nhooks--;
            return;
        }
    }
}

int store_ping(struct store *st)
{
    if (st == NULL || st->db == NULL)
        return -EIO;
    return step_internal(st, st->ping);
}
