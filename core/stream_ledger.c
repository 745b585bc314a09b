/* stream_ledger.c -- a stream consumer's rows in the service's database. See
 * stream_ledger.h.
 *
 * Owns nothing but a copy of the stream name and borrowed statements (the
 * store's cache finalizes them). The tables are created with CREATE TABLE IF
 * NOT EXISTS outside the service's migrations, as the inbox always was: they
 * belong to the runtime, not to a service's schema. Each statement is reset
 * right after its step, so the connection's error code still tells the
 * caller what failed. */
#include "stream_ledger.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include <ripple/clock.h>
#include <ripple/log.h>
#include <ripple/store.h>

static const char ledger_schema[] =
    "CREATE TABLE IF NOT EXISTS inbox ("
    " event_id TEXT PRIMARY KEY,"
    " stream TEXT NOT NULL,"
    " processed_at INTEGER NOT NULL" /* ms since the epoch */
    ") WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS inbox_by_age ON inbox(stream, processed_at);"
    "CREATE TABLE IF NOT EXISTS stream_failures ("
    " stream TEXT NOT NULL,"
    " entry_id TEXT NOT NULL,"
    " failures INTEGER NOT NULL," /* handler failures of the entry */
    " last_error TEXT NOT NULL,"
    " updated_at INTEGER NOT NULL," /* ms since the epoch */
    " PRIMARY KEY (stream, entry_id)"
    ") WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS stream_position ("
    " stream TEXT PRIMARY KEY,"
    " ms INTEGER NOT NULL," /* the highest entry id settled: ms-seq */
    " seq INTEGER NOT NULL,"
    " trimmed_reported INTEGER NOT NULL DEFAULT 0" /* entries reported lost to MAXLEN */
    ") WITHOUT ROWID;";

enum {
    L_SEEN,
    L_CLAIM,
    L_FAILURES,
    L_FAIL,
    L_FORGET,
    L_PRUNE_INBOX,
    L_PRUNE_FAILURES,
    L_POSITION,
    L_ADVANCE,
    L_SET_TRIMMED,
    L_COUNT
};

static const char *const ledger_sql[L_COUNT] = {
    [L_SEEN] = "SELECT 1 FROM inbox WHERE event_id = ?1",
    [L_CLAIM] = "INSERT INTO inbox (event_id, stream, processed_at) VALUES (?1, ?2, ?3)"
                " ON CONFLICT (event_id) DO NOTHING",
    [L_FAILURES] = "SELECT failures FROM stream_failures WHERE stream = ?2 AND entry_id = ?1",
    [L_FAIL] = "INSERT INTO stream_failures (stream, entry_id, failures, last_error, updated_at)"
               " VALUES (?2, ?1, 1, ?3, ?4) ON CONFLICT (stream, entry_id) DO UPDATE SET"
               " failures = failures + 1, last_error = excluded.last_error,"
               " updated_at = excluded.updated_at RETURNING failures",
    [L_FORGET] = "DELETE FROM stream_failures WHERE stream = ?2 AND entry_id = ?1",
    [L_PRUNE_INBOX] = "DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox"
                      " WHERE stream = ?2 AND processed_at < ?1 LIMIT ?3)",
    [L_PRUNE_FAILURES] = "DELETE FROM stream_failures WHERE stream = ?2 AND entry_id IN"
                         " (SELECT entry_id FROM stream_failures WHERE stream = ?2"
                         " AND updated_at < ?1 LIMIT ?3)",
    [L_POSITION] = "SELECT ms, seq, trimmed_reported FROM stream_position WHERE stream = ?2",
    [L_ADVANCE] = "INSERT INTO stream_position (stream, ms, seq) VALUES (?2, ?1, ?3)"
                  " ON CONFLICT (stream) DO UPDATE SET ms = excluded.ms, seq = excluded.seq"
                  " WHERE excluded.ms > ms OR (excluded.ms = ms AND excluded.seq > seq)",
    [L_SET_TRIMMED] = "INSERT INTO stream_position (stream, ms, seq, trimmed_reported)"
                      " VALUES (?2, 0, 0, ?1) ON CONFLICT (stream) DO UPDATE SET"
                      " trimmed_reported = excluded.trimmed_reported",
};

struct stream_ledger {
    char *stream;
    sqlite3_stmt *st[L_COUNT]; /* borrowed from the store's cache */
};

/* ---------------------------------------------------------------------------
 * Entry ids
 * ------------------------------------------------------------------------- */

static int parse_u64(const char *s, const char **end, uint64_t *out)
{
    uint64_t v = 0;
    const char *p = s;

    while (*p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');

        if (v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
        p++;
    }
    if (p == s)
        return -EINVAL;
    *end = p;
    *out = v;
    return 0;
}

int stream_id_parse(const char *s, struct stream_id *out)
{
    const char *p;
    struct stream_id id = {0, 0};

    if (parse_u64(s, &p, &id.ms) < 0)
        return -EINVAL;
    if (*p == '-' && parse_u64(p + 1, &p, &id.seq) < 0)
        return -EINVAL;
    if (*p != '\0')
        return -EINVAL;
    *out = id;
    return 0;
}

int stream_id_cmp(const struct stream_id *a, const struct stream_id *b)
{
    if (a->ms != b->ms)
        return a->ms < b->ms ? -1 : 1;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    return 0;
}

void stream_id_format(const struct stream_id *id, char *buf, size_t len)
{
    snprintf(buf, len, "%" PRIu64 "-%" PRIu64, id->ms, id->seq);
}

/* ---------------------------------------------------------------------------
 * Open, free
 * ------------------------------------------------------------------------- */

int stream_ledger_open(struct store *st, const char *stream, struct stream_ledger **out)
{
    struct stream_ledger *l;
    int rc = 0;

    *out = NULL;
    if (sqlite3_exec(store_db(st), ledger_schema, NULL, NULL, NULL) != SQLITE_OK) {
        log_error("consumer: cannot create the inbox and ledger tables: %s", store_errmsg(st));
        return -EIO;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL || (l->stream = strdup(stream)) == NULL) {
        free(l);
        return -ENOMEM;
    }
    for (size_t i = 0; i < L_COUNT && rc == 0; i++)
        rc = store_prepare(st, ledger_sql[i], &l->st[i]);
    if (rc < 0) {
        stream_ledger_free(l);
        return rc;
    }
    *out = l;
    return 0;
}

void stream_ledger_free(struct stream_ledger *l)
{
    if (l == NULL)
        return;
    free(l->stream);
    free(l);
}

/* ---------------------------------------------------------------------------
 * Statements: ?1 is the key (event or entry id, or a number), ?2 the stream
 * ------------------------------------------------------------------------- */

/* Binds the key and the stream of statement k and returns it. */
static sqlite3_stmt *bind_key(struct stream_ledger *l, int k, const char *key)
{
    sqlite3_stmt *s = l->st[k];

    if (key != NULL)
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, l->stream, -1, SQLITE_STATIC);
    return s;
}

/* Steps s to its end. Returns 0 or -EIO. */
static int run(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);

    while (rc == SQLITE_ROW)
        rc = sqlite3_step(s);
    store_reset(s);
    return rc == SQLITE_DONE ? 0 : -EIO;
}

/* Steps s once: 1 and *v = column 0 for a row, 0 for none, or -EIO. */
static int one_int(sqlite3_stmt *s, int64_t *v)
{
    int rc = sqlite3_step(s);

    if (rc == SQLITE_ROW)
        *v = sqlite3_column_int64(s, 0);
    store_reset(s);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -EIO;
}

int stream_ledger_seen(struct stream_ledger *l, const char *event_id)
{
    int64_t v;

    return one_int(bind_key(l, L_SEEN, event_id), &v);
}

int stream_ledger_claim(struct stream_ledger *l, const char *event_id)
{
    sqlite3_stmt *s = l->st[L_CLAIM];

    sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, l->stream, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, clock_now_ms());
    if (run(s) < 0)
        return -EIO;
    return sqlite3_changes(sqlite3_db_handle(s)) > 0;
}

int stream_ledger_failures(struct stream_ledger *l, const char *entry_id, unsigned *out)
{
    int64_t v = 0;
    int rc = one_int(bind_key(l, L_FAILURES, entry_id), &v);

    if (rc < 0)
        return rc;
    *out = rc == 1 && v > 0 ? (unsigned)v : 0;
    return 0;
}

int stream_ledger_fail(struct stream_ledger *l, const char *entry_id, const char *why,
                       unsigned *failures)
{
    sqlite3_stmt *s = bind_key(l, L_FAIL, entry_id);
    int64_t v = 0;
    int rc;

    sqlite3_bind_text(s, 3, why, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, clock_now_ms());
    /* RETURNING: the row comes first, the write completes at the end */
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        v = sqlite3_column_int64(s, 0);
        rc = sqlite3_step(s);
    }
    store_reset(s);
    if (rc != SQLITE_DONE)
        return -EIO;
    *failures = v > 0 ? (unsigned)v : 1;
    return 0;
}

int stream_ledger_forget(struct stream_ledger *l, const char *entry_id)
{
    return run(bind_key(l, L_FORGET, entry_id));
}

int stream_ledger_prune(struct stream_ledger *l, int64_t before_ms, unsigned limit)
{
    static const int which[] = {L_PRUNE_INBOX, L_PRUNE_FAILURES};

    for (size_t i = 0; i < ARRAY_SIZE(which); i++) {
        sqlite3_stmt *s = bind_key(l, which[i], NULL);

        sqlite3_bind_int64(s, 1, before_ms);
        sqlite3_bind_int(s, 3, (int)limit);
        if (run(s) < 0)
            return -EIO;
    }
    return 0;
}

/* The position row: 1 (found), 0 (none) or -EIO. */
static int position_row(struct stream_ledger *l, struct stream_id *id, uint64_t *trimmed)
{
    sqlite3_stmt *s = bind_key(l, L_POSITION, NULL);
    int rc = sqlite3_step(s);

    if (rc == SQLITE_ROW) {
        id->ms = (uint64_t)sqlite3_column_int64(s, 0);
        id->seq = (uint64_t)sqlite3_column_int64(s, 1);
        *trimmed = (uint64_t)sqlite3_column_int64(s, 2);
    }
    store_reset(s);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -EIO;
}

int stream_ledger_position(struct stream_ledger *l, struct stream_id *out)
{
    struct stream_id id = {0, 0};
    uint64_t trimmed;
    int rc = position_row(l, &id, &trimmed);

    if (rc < 0)
        return rc;
    *out = id;
    return 0;
}

int stream_ledger_advance(struct stream_ledger *l, const struct stream_id *id)
{
    sqlite3_stmt *s = bind_key(l, L_ADVANCE, NULL);

    if (id->ms > INT64_MAX || id->seq > INT64_MAX) {
        store_reset(s);
        return 0; /* not an id a service writes: leave the position */
    }
    sqlite3_bind_int64(s, 1, (int64_t)id->ms);
    sqlite3_bind_int64(s, 3, (int64_t)id->seq);
    return run(s);
}

int stream_ledger_trimmed(struct stream_ledger *l, uint64_t *out)
{
    struct stream_id id;
    uint64_t trimmed = 0;
    int rc = position_row(l, &id, &trimmed);

    if (rc < 0)
        return rc;
    *out = rc == 1 ? trimmed : 0;
    return 0;
}

int stream_ledger_set_trimmed(struct stream_ledger *l, uint64_t reported)
{
    sqlite3_stmt *s = bind_key(l, L_SET_TRIMMED, NULL);

    sqlite3_bind_int64(s, 1, reported > INT64_MAX ? INT64_MAX : (int64_t)reported);
    return run(s);
}
